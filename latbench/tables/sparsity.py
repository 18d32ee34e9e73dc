"""Does weight sparsity buy latency on this device? A significance test per layer signature.

Many runtimes run sparse weights through their dense kernels (onnxruntime; XNNPACK on x86 with AVX), so the
sparsity axis of their tables is flat — but measured point by point it is not: single-layer timings scatter by
±10 % on a busy machine, and a search that maximises accuracy under a latency constraint finds every grid point
where a sparse variant happened to time 30 % faster than its dense twin, then pays for it in accuracy.

So a table credits sparsity only where the device shows it: for each signature and sparsity level the ratios
sparse / dense over all grid points of that signature must have a median at least ``min_speedup`` below 1 and be
significantly below 1 (one-sided Wilcoxon signed-rank test on the log ratios, over at least ``min_points`` pairs:
a handful of refinement points cannot tell a speed-up from noise). Where they are not, the level's
latencies are set to the dense ones at the same point. The measurements themselves stay in the store; the
decision and its statistics are recorded in the table's provenance (``meta["sparsity_axis"]``).

>>> frame, report = credit_significant_sparsity(frame)                                 # doctest: +SKIP
>>> report["conv_k3_s1_p1_relu"]["0.9"]                                                # doctest: +SKIP
{'points': 50, 'median_ratio': 1.003, 'p_value': 0.61, 'credited': False}
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KEY = ["signature", "input_hw", "in_channels", "out_channels"]
RULE = ("sparse latency credited where the median sparse/dense ratio is <= 0.95 and one-sided Wilcoxon p < 0.01 "
        "over >= 6 grid points; elsewhere the dense latency is used")


def credit_significant_sparsity(frame: pd.DataFrame, min_speedup: float = 0.05, alpha: float = 0.01,
                                min_points: int = 6) -> tuple[pd.DataFrame, dict]:
    """Return ``frame`` with insignificant sparsity levels flattened to the dense latency, and the decisions.

    ``min_speedup``: the median sparse/dense ratio must be ≤ 1 − this; ``alpha``: significance of the one-sided
    test; a level with fewer than ``min_points`` paired points is not credited (too little evidence).
    """
    from scipy.stats import wilcoxon

    if not 0 <= min_speedup < 1 or not 0 < alpha < 1:
        raise ValueError(f"min_speedup must be in [0, 1) and alpha in (0, 1), got {min_speedup}, {alpha}")
    frame = frame.copy()
    dense = frame[frame.sparsity == 0].drop_duplicates(KEY, keep="last").set_index(KEY)["latency_ms"]
    report: dict[str, dict[str, dict]] = {}
    for (signature, level), rows in frame[frame.sparsity > 0].groupby(["signature", "sparsity"], sort=True):
        twin = dense.reindex(pd.MultiIndex.from_frame(rows[KEY]))
        paired = (twin > 0).to_numpy()  # a zero-latency dense twin (an empty layer) has nothing to compare
        if not paired.any():
            continue  # no dense twin on this grid: nothing to compare with, leave the level as measured
        # A sparse latency of 0 (a fully pruned layer in published tables) is the largest possible speed-up.
        sparse = np.maximum(rows.latency_ms.to_numpy()[paired], 1e-9)
        log_ratio = np.log(sparse / twin.to_numpy()[paired])
        median_ratio = float(np.exp(np.median(log_ratio)))
        p_value = (float(wilcoxon(log_ratio, alternative="less").pvalue)
                   if len(log_ratio) >= min_points and np.any(log_ratio != 0) else None)
        credited = median_ratio <= 1 - min_speedup and p_value is not None and p_value < alpha
        report.setdefault(str(signature), {})[f"{level:g}"] = {
            "points": int(paired.sum()), "median_ratio": round(median_ratio, 4),
            "p_value": None if p_value is None else round(p_value, 6), "credited": bool(credited)}
        if not credited:
            index = rows.index[paired]
            frame.loc[index, "latency_ms"] = twin.to_numpy()[paired]
    return frame, report


def summarize(report: dict) -> str:
    """One line: which signatures get sparsity credit at which levels."""
    credited = sorted(f"{sig}@{lvl}" for sig, levels in report.items() for lvl, r in levels.items() if r["credited"])
    total = sum(len(levels) for levels in report.values())
    if not credited:
        return f"sparsity axis flat: no speed-up at any of {total} (signature, sparsity) levels — dense latency used"
    return f"sparsity credited at {len(credited)} of {total} (signature, sparsity) levels: " + ", ".join(credited[:8]) + \
        (" …" if len(credited) > 8 else "")


def credit_table_file(path, out=None) -> dict:
    """Apply the test to an existing table file (written to ``out``, or only reported when ``out`` is None)."""
    from pathlib import Path

    from .table import LatencyTable

    table = LatencyTable.load(path)
    frame, report = credit_significant_sparsity(pd.read_parquet(Path(path)))
    if out is not None:
        meta = {**table.meta, "sparsity_axis": {"rule": RULE, "levels": report}}
        LatencyTable.from_frame(frame, meta).save(out, frame)
    return report
