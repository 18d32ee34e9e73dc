"""Per-layer interpolation error of a table: measure the layers of random architectures (off the grid)
on the device and compare each with the table's interpolated value.

Run: python benchmarks/interpolation_error.py mobilenet_v2 TABLE.parquet STORE.db [N_ARCHS]
The measurements go into STORE (same environment as the table), so the run is resumable.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from latbench.devices import open_device
from latbench.layers import layer_points
from latbench.models import get_model, random_architectures
from latbench.profiling import Profiler
from latbench.store import MeasurementStore
from latbench.tables.table import LatencyTable


def main(model: str, table_path: str, store_path: str, n_archs: int = 3) -> dict:
    spec = get_model(model)
    table = LatencyTable.load(table_path)
    res = spec.base_resolution
    archs = random_architectures(spec, n_archs, seed=99, resolutions=(res,),
                                 divisor=int(table.meta.get("channel_multiple", 1)))
    items, predicted = [], []
    for a in archs:
        for layer, sig, p in layer_points(spec, a.widths, a.sparsity, res):
            items.append((sig.key, p))
            predicted.append(table.lookup(sig.key, p))
    with MeasurementStore(store_path) as st:
        prof = Profiler(open_device(), st, progress=False)
        prof.measure_points(items)
        stored = {(r.signature, r.point): r.measurement.median_ms for r in st.rows(prof.env_id)}
    measured = np.array([stored[i] for i in items])
    err = (np.array(predicted) - measured) / measured
    out = {"model": model, "table": table_path, "layers": int(err.size), "mean_error": float(err.mean()),
           "std_error": float(err.std()), "within_5pct": float((np.abs(err) <= 0.05).mean()),
           "within_10pct": float((np.abs(err) <= 0.10).mean())}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 3)
