"""Markdown summary of benchmarks/results (acceptance runs and predictor throughput), for the README."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(results: Path):
    for device, label in (("host:onnxruntime", ""), ("host:litert", "host-litert-")):
        for model in ("mobilenet_v2", "resnet18"):
            for mode in ("dense", "adaptive"):
                prof = results / f"{label}{model}-{mode}-profile.json"
                val = results / f"{label}{model}-{mode}-validation.json"
                if prof.exists() and val.exists():
                    yield device, model, mode, json.loads(prof.read_text()), json.loads(val.read_text())


def main(results: Path = Path("benchmarks/results")) -> str:
    lines = ["| model (1 thread, 224×224) | grid | measurements | profiling time | "
             "±5 % | ±10 % | RMSE | MAPE | bare sum ±10 % |", "|---|---|---|---|---|---|---|---|---|"]
    for device, model, mode, p, v in _rows(results):
        lines.append(f"| {model} on {device} | {mode} | {p['measured']} | {p['seconds'] / 60:.1f} min | "
                     f"{v['within_5pct']:.0%} | {v['within_10pct']:.0%} | {v['rmse_ms']:.3f} ms | "
                     f"{v['mape']:.1%} | {v['uncalibrated']['within_10pct']:.0%} |")
    thr = results / "predictor_throughput.json"
    if thr.exists():
        t = json.loads(thr.read_text())
        lines += ["", f"Predictor, MobileNetV2 populations of {t['population']:,} on one core: "
                      f"{t['channels_only']['archs_per_s'] / 1e6:.2f} M architectures/s (widths only), "
                      f"{t['with_sparsity']['archs_per_s'] / 1e6:.2f} M/s (widths and per-layer sparsity)."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/results")))
