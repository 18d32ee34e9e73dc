"""How well does a whole network's measured latency repeat on this machine? (issue 13: the ground truth that the
±10 % / ±5 % targets are scored against.)

Each real-world model of ``benchmarks/realworld.py`` (timm 1.0.31, random weights, 224×224) is measured whole with
latbench's protocol (reference network side by side, interleaved rounds, medians) ``repeats`` times, in a new
random model order each pass and ``pause_s`` seconds apart, so that one model's repeats are minutes apart, as a
table's kernels and the networks it is checked against are in practice. Per model and runtime: every repeat's
median, the spread (slowest / fastest − 1) and how many repeats lie within ±5 / ±10 % of the model's median of
repeats; over all models, the same fractions. No prediction can be scored within ±10 % more often than the
measurement itself repeats within it.

    python benchmarks/network_repeatability.py        # both host runtimes, 6 repeats a minute apart: ≈ 15 min
    python benchmarks/network_repeatability.py --set reference=false --set runtimes='["host:onnxruntime"]' \
        --set summary=benchmarks/results/realworld/repeatability-raw.json     # raw medians, no reference
    python benchmarks/network_repeatability.py \
        --set runtimes='["host:onnxruntime","host:onnxruntime?reference=large","host:litert","host:litert?reference=large"]' \
        --set summary=benchmarks/results/realworld/repeatability-references.json   # both references, same passes

Writes ``benchmarks/results/realworld/repeatability.json``. The repeats are stored (``#r`` keys in the SQLite
store under ``out``), so a rerun resumes.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge

from latbench.cli.options import script_main
from latbench.files import atomic_write_json
from latbench.recipe import Opt, resolved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass(frozen=True, kw_only=True)
class Repeatability:
    models: Annotated[tuple[str, ...], Opt(help="families of tests/realworld_models.py (default: all)")] = ()
    runtimes: Annotated[tuple[str, ...], Opt(help="host devices, measured in the same passes (e.g. "
                                                  "host:onnxruntime?reference=large beside host:onnxruntime)")] = (
        "host:onnxruntime", "host:litert")
    repeats: Annotated[int, Ge(2), Opt(help="measurements of each network")] = 6
    pause_s: Annotated[float, Ge(0), Opt(help="seconds between two passes over the models")] = 60.0
    reference: Annotated[bool, Opt(help="time the reference network side by side and normalise by it (latbench's "
                                       "protocol); false: raw medians")] = True
    seed: int = 0
    out: str = "runs/repeatability"
    summary: str = "benchmarks/results/realworld/repeatability.json"


def spread(medians: np.ndarray) -> dict:
    """One model's repeats: the spread (slowest / fastest − 1) and the fractions within ±5 / ±10 % of their
    median."""
    medians = np.asarray(medians, dtype=float)
    deviation = np.abs(medians / np.median(medians) - 1)
    return {"medians_ms": [round(float(m), 4) for m in medians], "spread": float(medians.max() / medians.min() - 1),
            "within_5pct": float(np.mean(deviation <= 0.05)), "within_10pct": float(np.mean(deviation <= 0.10))}


def pooled(rows: list[dict]) -> dict:
    """Over every model's repeats: the fractions within ±5 / ±10 % of their own model's median, and the worst
    spread."""
    deviations = np.concatenate([np.abs(np.asarray(r["medians_ms"]) / np.median(r["medians_ms"]) - 1) for r in rows])
    return {"models": len(rows), "measurements": int(deviations.size),
            "within_5pct": float(np.mean(deviations <= 0.05)), "within_10pct": float(np.mean(deviations <= 0.10)),
            "median_spread": float(np.median([r["spread"] for r in rows])),
            "worst_spread": max(r["spread"] for r in rows)}


def _specs(names: list[str], folder: Path) -> dict:
    """Each model imported from its exported file (exported once, then reused)."""
    from realworld_models import exported_family

    from latbench import api

    return {name: api.load_model(str(exported_family(name, folder))) for name in names}


def _run(exp: Repeatability, specs: dict, out: Path) -> list[dict]:
    """Every pass measures every model on every device (in a new random order), so that the devices' figures
    come from the same minutes."""
    from contextlib import ExitStack

    from latbench.devices import MeasureSettings, open_device
    from latbench.export import export_imported_network
    from latbench.models import Architecture
    from latbench.store import MeasurementStore
    from latbench.validation import measure_models

    rng = np.random.default_rng(exp.seed)
    medians = {(d, n): [] for d in exp.runtimes for n in specs}
    with ExitStack() as stack:
        devices, stores, models = {}, {}, {}
        for spec in exp.runtimes:
            dev = devices[spec] = open_device(spec, settings=MeasureSettings(reference=exp.reference))
            stack.callback(dev.close)
            dev.prepare()
            folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "-", spec)
            stores[spec] = stack.enter_context(MeasurementStore(folder / "measurements.db"))
            # the full network exactly as benchmarks/realworld.py measures it: the imported graph at full width
            models[spec] = {n: export_imported_network(dev.model_format, s, Architecture.full(s))
                            for n, s in specs.items()}
        items = list(medians)
        for r in range(exp.repeats):
            if r:
                time.sleep(exp.pause_s)
            for i in rng.permutation(len(items)):
                spec, name = items[i]
                [ms] = measure_models([models[spec][name]], devices[spec], stores[spec], progress=False, repeat=r)
                medians[spec, name].append(float(ms))
            print(f"pass {r + 1}/{exp.repeats} done", flush=True)
    return [{"model": n, "runtime": d, **spread(np.array(m))} for (d, n), m in medians.items()]


def main(exp: Repeatability) -> None:
    from realworld_models import benchmark_families

    names = benchmark_families(exp.models)
    out = ROOT / exp.out
    specs = _specs(names, out / "models")
    rows = _run(exp, specs, out)
    totals = {d: pooled([r for r in rows if r["runtime"] == d]) for d in exp.runtimes}
    atomic_write_json(ROOT / exp.summary, {"totals": totals, "models": rows, "settings": resolved(exp)}, indent=1)
    print({d: {k: round(v, 3) for k, v in t.items()} for d, t in totals.items()})


if __name__ == "__main__":
    script_main(Repeatability, main, doc=__doc__)
