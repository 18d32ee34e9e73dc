"""Predictor throughput on MobileNetV2 populations (architectures per second, one core).

Uses a table built by `benchmarks/acceptance.sh` when present (host, dense or adaptive), else the
table of the demo run. Populations carry random widths and, for the sparse case, random sparsities.
Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/predictor_throughput.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from latbench.models import get_model
from latbench.predictor import Population, Predictor
from latbench.tables.table import LatencyTable


def population(spec, n, sparse, seed=0, resolution=224):
    rng = np.random.default_rng(seed)
    full = np.array(list(spec.groups.values()))
    widths = np.maximum(8, (rng.uniform(0.25, 1.0, (n, full.size)) * full / 8).round().astype(np.int64) * 8)
    widths = np.minimum(widths, full)
    sp = rng.uniform(0, 0.9, (n, len(spec.sparsifiable_layers))) if sparse else np.zeros((n, len(spec.sparsifiable_layers)))
    return Population(widths, sp, np.full(n, resolution))


def main(table_path: str) -> None:
    spec = get_model("mobilenet_v2")
    pred = Predictor(spec, LatencyTable.load(table_path))
    n = 1_000_000
    results = {}
    for sparse in (False, True):
        pop = population(spec, n, sparse)
        pred.predict_population(Population(pop.widths[:10], pop.sparsity[:10], pop.resolution[:10]))  # compile
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            pred.predict_population(pop)
            times.append(time.perf_counter() - t0)
        results["with_sparsity" if sparse else "channels_only"] = {"archs_per_s": n / float(np.median(times)),
                                                                    "seconds_per_million": float(np.median(times))}
    print(json.dumps({"model": "mobilenet_v2", "population": n, "table": table_path, **results}, indent=2))


if __name__ == "__main__":
    default = next((str(p) for p in sorted(Path("tables").glob("host-ort-mobilenet_v2-224-*.parquet"))), None)
    main(sys.argv[1] if len(sys.argv) > 1 else default)
