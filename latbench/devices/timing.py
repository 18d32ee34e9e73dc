"""The measurement protocol shared by all backends: warm-up, interleaved randomised rounds, robust stats.

Timings here drift by several percent over minutes and show rare spikes of +40 %. Interleaving the
artifacts of a batch round by round spreads any drift over all of them instead of biasing the ones
measured during a slow minute; the median ignores spikes, and samples beyond 3 IQRs above the upper
quartile are counted as outliers (and reported) before the statistics are taken.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .base import MeasureSettings, Measurement


def robust_stats(key: str, samples_ms: np.ndarray, rounds: int) -> Measurement:
    samples = np.asarray(samples_ms, dtype=float)
    q1, q3 = np.percentile(samples, [25, 75])
    keep = samples <= q3 + 3.0 * (q3 - q1)
    kept = samples[keep]
    p10, med, p90 = np.percentile(kept, [10, 50, 90])
    k1, k3 = np.percentile(kept, [25, 75])
    return Measurement(key, float(med), float(p10), float(p90), float(k3 - k1), int(kept.size), rounds,
                       int((~keep).sum()))


def interleaved_rounds(n_items: int, settings: MeasureSettings,
                       run_round: Callable[[int, int], np.ndarray]) -> list[np.ndarray]:
    """Call ``run_round(item, runs)`` for every item in every round, in a fresh random order each round.

    Returns the concatenated samples (ms) per item; warm-up is the first call per item.
    """
    rng = np.random.default_rng(settings.seed)
    for item in range(n_items):
        if settings.warmup:
            run_round(item, settings.warmup)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_items)]
    for _ in range(settings.rounds):
        for item in rng.permutation(n_items):
            samples[item].append(np.asarray(run_round(int(item), settings.runs_per_round), dtype=float))
    return [np.concatenate(s) for s in samples]


def measure_interleaved(keys: Sequence[str], settings: MeasureSettings,
                        run_round: Callable[[int, int], np.ndarray]) -> list[Measurement]:
    samples = interleaved_rounds(len(keys), settings, run_round)
    return [robust_stats(k, s, settings.rounds) for k, s in zip(keys, samples)]
