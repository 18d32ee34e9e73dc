"""Measured vs predicted latency of every network a pruning run measured, as predicted during the run and as
predicted by another table (e.g. the same table with another calibration fit).

    python benchmarks/prediction_check.py runs/jcw-acceptance --table tables/host-litert-resnet56-32-dense.parquet
    python benchmarks/prediction_check.py runs/jcw-acceptance --table T --device host:litert --store fresh.db

Reads the JCW fronts (``*/front.jsonl`` with ``measured_ms``) and every ``report.json`` (final JCW architectures,
LcP/naive/uniform networks) below the folder. Prints a Markdown table per group: networks, share within ±5 % and
mean error, for the predictions made during the run and for ``--table``. With ``--device`` and ``--store`` every
network is measured again into that store (use a new one: a store reuses what it holds), so that the comparison
with ``--table`` is not blurred by hours of drift between the run's measurements; the run's own measurements are
then the first columns' reference, the new ones the last columns'.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def collect(folder: Path) -> pd.DataFrame:
    from latbench.models import Architecture
    from latbench.methods.common import in_candidates
    from latbench.recipe import moved_aside

    rows = []
    for front in sorted(folder.glob("*/front.jsonl")):
        for line in front.read_text().splitlines():
            d = json.loads(line)
            if d.get("measured_ms") is not None:
                arch = Architecture.from_dict({k: d[k] for k in ("model", "resolution", "widths", "sparsity")})
                rows.append((f"{front.parent.name} front", arch, d["latency_ms"], d["measured_ms"]))
    for path in sorted(folder.rglob("report.json")):
        if moved_aside(path, folder) or in_candidates(path, folder):
            continue
        r = json.loads(path.read_text())
        if r.get("measured_ms") is not None and "method" in r:
            rows.append((f"{r['method']} final", Architecture.from_dict(r["architecture"]), r["predicted_ms"],
                         r["measured_ms"]))
    return pd.DataFrame(rows, columns=["group", "architecture", "predicted_ms", "measured_ms"])


def main(argv: list[str] | None = None) -> None:
    from latbench.models import get_model
    from latbench.predictor import Predictor
    from latbench.tables import LatencyTable

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--table", required=True, help="table whose predictions are compared as well")
    p.add_argument("--device", help="measure every network again on this device ...")
    p.add_argument("--store", help="... into this measurement store (a new file measures everything anew)")
    a = p.parse_args(argv)
    if bool(a.device) != bool(a.store):
        p.error("--device and --store go together")
    frame = collect(a.folder)
    if frame.empty:
        raise SystemExit(f"no measured networks under {a.folder}")
    table = LatencyTable.load(a.table)
    models = {arch.model for arch in frame.architecture}
    frame["repredicted_ms"] = np.nan
    frame["remeasured_ms"] = frame.measured_ms
    for model in models:
        mask = np.array([arch.model == model for arch in frame.architecture])
        archs = list(frame.architecture[mask])
        frame.loc[mask, "repredicted_ms"] = Predictor(get_model(model), table).predict(archs)
        if a.device:
            from latbench.methods.common import measure_architectures

            frame.loc[mask, "remeasured_ms"] = measure_architectures(get_model(model), archs, table, a.device, a.store)
    calibration = table.meta.get("calibration", {})
    print(f"--table {a.table}: calibration {json.dumps({m: calibration.get(m) for m in models})}\n")
    measured = f"measured again on {a.device}" if a.device else "run's measurements"
    print(f"| networks | n | during the run: within ±5 % | mean error | --table, {measured}: within ±5 % | mean error |")
    print("|---|---|---|---|---|---|")
    groups = [(g, frame[frame.group == g]) for g in sorted(frame.group.unique())] + [("all", frame)]
    for name, rows in groups:
        run = rows.measured_ms / rows.predicted_ms - 1
        new = rows.remeasured_ms / rows.repredicted_ms - 1
        print(f"| {name} | {len(rows)} | {np.mean(run.abs() <= 0.05):.0%} | {run.mean():+.1%} | "
              f"{np.mean(new.abs() <= 0.05):.0%} | {new.mean():+.1%} |")


if __name__ == "__main__":
    main()
