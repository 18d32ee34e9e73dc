"""The measurement protocol shared by all backends: warm-up, interleaved randomised rounds, a reference
timed side by side, robust statistics.

On a shared machine the speed of the CPU itself changes by 10–40 % over seconds (measured here: the
same network's median of 30 runs moved between 6.3 and 7.9 ms from one round to the next, CPU time
as much as wall time, so it is not steal time but contention for caches and memory). Latency is
therefore measured *side by side with a fixed reference network*: within a round the reference and
the artifact alternate run by run, and each sample is divided by that round's reference median. The
ratio is stable (CV 1–4 % per round against 5–20 % for raw times) and is converted back to
milliseconds with the reference's *nominal* latency, measured once per device environment and stored
with it, so that every table and every validation of one environment share the same unit.

Rounds interleave the artifacts of a batch in a new random order each time; the median ignores
spikes, and samples beyond 3 IQRs above the upper quartile are counted as outliers and dropped.
With ``MeasureSettings.warm`` each timed sample follows that many untimed runs of the same artifact
(reference, artifact × warm, artifact timed): the sample no longer starts from the reference's cache state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .base import MeasureSettings, Measurement

RunFn = Callable[[int, int], np.ndarray]


def robust_stats(key: str, samples_ms: np.ndarray, rounds: int) -> Measurement:
    samples = np.asarray(samples_ms, dtype=float)
    q1, q3 = np.percentile(samples, [25, 75])
    keep = samples <= q3 + 3.0 * (q3 - q1)
    kept = samples[keep]
    p10, med, p90 = np.percentile(kept, [10, 50, 90])
    k1, k3 = np.percentile(kept, [25, 75])
    return Measurement(key, float(med), float(p10), float(p90), float(k3 - k1), int(kept.size), rounds,
                       int((~keep).sum()))


@dataclass
class RoundSamples:
    """Per item: the timed samples of each round, and the reference median measured just before it."""

    samples: list[list[np.ndarray]]
    reference: list[list[float]]
    spans: list[list[slice]]   # per item: the run indices of each kept round's timed samples, counting every
                               # run of the item in execution order (warm-up and warm runs included)


def interleaved_rounds(n_items: int, settings: MeasureSettings, run_round: RunFn,
                       reference: Callable[[int], np.ndarray] | None = None) -> RoundSamples:
    """Call ``run_round(item, runs)`` for every item in every round, in a fresh random order each round,
    with ``reference(runs)`` timed right before each call. Warm-up is the first call per item."""
    rng = np.random.default_rng(settings.seed)
    if reference is not None:
        reference(settings.warmup or 1)
    for item in range(n_items):
        if settings.warmup:
            run_round(item, settings.warmup)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_items)]
    refs: list[list[float]] = [[] for _ in range(n_items)]
    spans: list[list[slice]] = [[] for _ in range(n_items)]
    done = [settings.warmup] * n_items
    m = settings.runs_per_round
    best_ref = np.inf
    for _ in range(settings.rounds):
        for item in rng.permutation(n_items):
            item = int(item)
            if reference is None:
                refs[item].append(1.0)
                samples[item].append(np.asarray(run_round(item, m), dtype=float))
                spans[item].append(slice(done[item], done[item] + m))
                done[item] += m
                continue
            stride = settings.warm + 1          # runs of the item per timed sample
            for attempt in range(settings.max_retries + 1):
                ref_med, item_times = _alternate(item, m, run_round, reference, settings.warm)
                done[item] += m * stride
                best_ref = min(best_ref, ref_med)
                # Under heavy contention the reference no longer tracks the artifact (big working sets
                # suffer more): a round whose reference ran far slower than the batch's best is redone.
                if ref_med <= best_ref * (1.0 + settings.max_slowdown) or attempt == settings.max_retries:
                    break
            refs[item].append(ref_med)
            samples[item].append(item_times)
            spans[item].append(slice(done[item] - m * stride + settings.warm, done[item], stride))
    return RoundSamples(samples, refs, spans)


def _alternate(item: int, runs: int, run_round: RunFn, reference: Callable[[int], np.ndarray], warm: int = 0):
    """Alternate run by run: reference, artifact, reference, … Both then always start from the same
    cache state, and a slow second hits both (measured: per-round ratio CV 1–4 %; timing the reference
    in a block before the artifact gave 10–30 %). ``warm`` untimed runs of the artifact precede each
    timed one."""
    ref_times, item_times = np.empty(runs), np.empty(runs)
    for r in range(runs):
        ref_times[r] = reference(1)[0]
        if warm:
            run_round(item, warm)
        item_times[r] = run_round(item, 1)[0]
    return float(np.median(ref_times)), item_times


def normalised(rounds: list[np.ndarray], refs: list[float], nominal_ms: float | None) -> np.ndarray:
    """Samples divided by their round's reference median, times the reference's nominal latency."""
    if nominal_ms is None:
        return np.concatenate(rounds)
    return np.concatenate([r / ref * nominal_ms for r, ref in zip(rounds, refs)])


def split_rounds(samples: np.ndarray, spans: list[slice]) -> list[np.ndarray]:
    """Per-run samples recorded in execution order (warm-up, warm runs and redone rounds included) → the
    timed samples of each kept round."""
    samples = np.asarray(samples)
    return [samples[span] for span in spans]


def measure_interleaved(keys: Sequence[str], settings: MeasureSettings, run_round: RunFn,
                        reference: Callable[[int], np.ndarray] | None = None,
                        nominal_ms: float | None = None) -> tuple[list[Measurement], RoundSamples]:
    rs = interleaved_rounds(len(keys), settings, run_round, reference)
    stats = [robust_stats(k, normalised(s, r, nominal_ms if reference else None), settings.rounds)
             for k, s, r in zip(keys, rs.samples, rs.reference)]
    return stats, rs
