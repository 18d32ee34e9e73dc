"""The README's per-model table of the real-world benchmark, from its summary (``benchmarks/realworld.py``).

    python benchmarks/realworld_table.py [benchmarks/results/realworld/summary.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

from latbench.files import read_json

HEADER = ("| model (timm) | kernels | runtime | profiling: measurements, s | full: bare sum / device-calibrated / "
          "measured ms | error (device-cal.) | variants ±10 % / ±5 % (device-cal.) | variants ±10 %: bare / own "
          "calibration |\n|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    runtime = r["runtime"].removeprefix("host:")
    if not r.get("imported"):
        return f"| {r['model']} ({r['timm']}) | – | {runtime} | not imported: {r.get('error', '')} | | | | |"
    return (f"| {r['model']} ({r['timm']}) | {r['layers']} | {runtime} | {r['measurements']}, {r['profile_s']:.0f} | "
            f"{r['full_bare_ms']:.2f} / {r['full_pred_ms']:.2f} / {r['full_meas_ms']:.2f} | {r['full_error'] * 100:+.1f} % | "
            f"{r['variants_within_10pct'] * 100:.0f} / {r['variants_within_5pct'] * 100:.0f} % | "
            f"{r['variants_bare_within_10pct'] * 100:.0f} / {r['variants_model_calibrated_within_10pct'] * 100:.0f} % |")


def table(rows: list[dict]) -> str:
    """Rows grouped by model, the runtimes of one model together (the summary lists them runtime by runtime)."""
    order = list(dict.fromkeys(r["model"] for r in rows))
    ordered = sorted(rows, key=lambda r: (order.index(r["model"]), r["runtime"] != "host:onnxruntime"))
    return "\n".join([HEADER, *map(row, ordered)])


if __name__ == "__main__":
    summary = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/realworld/summary.json")
    print(table(read_json(summary, "rerun python benchmarks/realworld.py to write it again")))
