"""How fast is LcP's naïve pruning? Filter-by-filter on MobileNetV2-224 (≈17k filters) and ResNet-56, with
incremental cost updates against re-predicting the whole network after every removed filter.

    python benchmarks/lcp_naive_speed.py [--out benchmarks/results/lcp_naive_speed.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from latbench.models import get_model
from latbench.predictor import Population, Predictor
from latbench.search.budget import Budget, CostGrid
from latbench.methods.lcp.search import FilterRanking, naive_prune
from latbench.tables.table import LatencyTable

ROOT = Path(__file__).resolve().parents[1]


def metrics_for(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {ly.name: rng.random(spec.groups[ly.out_group]) for ly in spec.layers
            if ly.out_group and ly.has_weights}


def median_seconds(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def case(name, spec, grid, unit, ratio, predictor=None, resolution=None):
    ranking = FilterRanking.from_metrics(spec, metrics_for(spec), unit=unit)
    budget = Budget(grid.kind, ratio * grid.total(ranking.full))
    plan = naive_prune(ranking, grid, budget)
    row = {"case": name, "filters": int(ranking.full.sum()), "unit": unit, "budget_ratio": ratio,
           "removed_units": plan.removed_units,
           "incremental_s": median_seconds(lambda: naive_prune(ranking, grid, budget))}
    row["incremental_us_per_removal"] = 1e6 * row["incremental_s"] / max(1, plan.removed_units)
    if predictor is not None:
        # The alternative: one full prediction per removed unit (timed on 200 removals, extrapolated).
        seq = ranking.removal_sequence()[0][:200]
        widths = ranking.full.copy()
        n_sparse = len(spec.sparsifiable_layers)

        def full_repredict():
            w = widths.copy()
            for g in seq:
                w[g] -= min(unit, w[g] - ranking.floors[g]) or 0
                predictor.predict_population(Population(w[None], np.zeros((1, n_sparse)), np.array([resolution])))
        per = median_seconds(full_repredict, 3) / len(seq)
        row["repredict_us_per_removal"] = 1e6 * per
        row["speedup"] = row["repredict_us_per_removal"] / row["incremental_us_per_removal"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lcp_naive_speed.json")
    args = parser.parse_args()
    rows = []
    mbv2 = get_model("mobilenet_v2")
    rows.append(case("mobilenet_v2-224 FLOPs, per filter", mbv2, CostGrid.analytic(mbv2, "flops", 224), 1, 0.5))
    pred = Predictor(mbv2, LatencyTable.load(ROOT / "tables/host-ort-mobilenet_v2-224-adaptive.parquet"))
    rows.append(case("mobilenet_v2-224 latency (ORT table), 16-channel units", mbv2,
                     CostGrid.from_predictor(pred, 224, 8), 16, 0.5, pred, 224))
    r56 = get_model("resnet56")
    pred = Predictor(r56, LatencyTable.load(ROOT / "tables/host-litert-resnet56-32-dense.parquet"))
    rows.append(case("resnet56-32 latency (LiteRT table), 8-channel units", r56,
                     CostGrid.from_predictor(pred, 32, 8), 8, 0.3, pred, 32))
    rows.append(case("resnet56-32 FLOPs, per filter", r56, CostGrid.analytic(r56, "flops", 32), 1, 0.3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
