"""NSGA-II building blocks in numpy, vectorised over the population, and JCW's uniform selection.

Genomes live in the unit cube [0, 1]^d. The variation operators are those of JCW's Algorithm 3:
simulated binary crossover (SBX, Deb & Agrawal 1995) and polynomial mutation (Deb & Goyal 1996) in
their classic, unbounded form, each followed by clipping to [0, 1]. Two slips of the authors' public
code are not repeated here: mutation returns the clipped genome (theirs clipped a copy and returned the
unclipped one), and crowding distance is computed for every interior point of a front (their loop
skipped one index); ``tests/test_nsga.py`` tests both and compares every operator with pymoo's.

Objectives are minimised throughout (pass ``loss``, not accuracy).
"""
from __future__ import annotations

import numpy as np


def _unit_genomes(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (individuals × genes), got shape {x.shape}")
    return x


def sbx_crossover(parent_a: np.ndarray, parent_b: np.ndarray, eta: float, rng: np.random.Generator,
                  prob_var: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Simulated binary crossover of row-paired parents, gene by gene; children clipped to [0, 1].

    Each gene is crossed with probability ``prob_var`` (otherwise both children copy their parents).
    A crossed gene draws a spread factor β from the SBX density with distribution index ``eta`` (small
    eta = children far from their parents; JCW uses 0.5) and gives
    ``c_a = ½[(1+β)a + (1−β)b]``, ``c_b = ½[(1−β)a + (1+β)b]``: child ``c_a`` stays on parent ``a``'s side.
    """
    a, b = _unit_genomes(parent_a, "parent_a"), _unit_genomes(parent_b, "parent_b")
    if a.shape != b.shape:
        raise ValueError(f"parents must have equal shapes, got {a.shape} and {b.shape}")
    if eta < 0 or not 0.0 <= prob_var <= 1.0:
        raise ValueError(f"need eta ≥ 0 and prob_var in [0, 1], got eta={eta}, prob_var={prob_var}")
    u = rng.random(a.shape)
    cross = rng.random(a.shape) < prob_var
    # Inverse CDF of the spread factor: P(β ≤ 1) = ½, density ∝ β^eta below 1 and β^−(eta+2) above.
    beta = np.where(u <= 0.5, (2.0 * u) ** (1.0 / (eta + 1.0)), (0.5 / (1.0 - u)) ** (1.0 / (eta + 1.0)))
    mid, half = 0.5 * (a + b), 0.5 * (a - b)
    child_a = np.where(cross, mid + beta * half, a)
    child_b = np.where(cross, mid - beta * half, b)
    return np.clip(child_a, 0.0, 1.0), np.clip(child_b, 0.0, 1.0)


def polynomial_mutation(x: np.ndarray, eta: float, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Polynomial mutation: each gene, with probability ``prob``, moves by δ ∈ (−1, 1) drawn from the
    polynomial density with index ``eta`` (large eta = small steps; JCW uses 15). Result clipped to [0, 1]."""
    x = _unit_genomes(x, "genomes")
    if eta < 0 or not 0.0 <= prob <= 1.0:
        raise ValueError(f"need eta ≥ 0 and prob in [0, 1], got eta={eta}, prob={prob}")
    mutate = rng.random(x.shape) < prob
    u = rng.random(x.shape)
    power = 1.0 / (eta + 1.0)
    delta = np.where(u < 0.5, (2.0 * u) ** power - 1.0, 1.0 - (2.0 * (1.0 - u)) ** power)
    return np.clip(np.where(mutate, x + delta, x), 0.0, 1.0)   # the clipped genome is what we return


def _objectives(F: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"objectives must be a 2-D array (points × objectives), got shape {F.shape}")
    if not np.all(np.isfinite(F)):
        raise ValueError("objectives contain NaN or infinite values; check the evaluator's losses and the latencies")
    return F


def non_dominated_ranks(F: np.ndarray) -> np.ndarray:
    """Pareto rank of every point (0 = non-dominated), all objectives minimised.

    Fast non-dominated sorting on a boolean dominance matrix: O(n²·m) time and memory, which suits
    populations of up to a few thousand. Equal points do not dominate each other (same rank).
    """
    F = _objectives(F)
    n = len(F)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    no_worse = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    better = np.any(F[:, None, :] < F[None, :, :], axis=2)
    dominates = no_worse & better                       # [i, j]: i dominates j
    n_dominators = dominates.sum(axis=0)
    ranks = np.full(n, -1, dtype=np.int64)
    front, rank = np.flatnonzero(n_dominators == 0), 0
    while front.size:
        ranks[front] = rank
        n_dominators -= dominates[front].sum(axis=0)
        n_dominators[front] = -1                        # ranked: never picked again
        front, rank = np.flatnonzero(n_dominators == 0), rank + 1
    return ranks


def fronts(ranks: np.ndarray) -> list[np.ndarray]:
    """Indices of each front, best first (indices ascending within a front)."""
    ranks = np.asarray(ranks)
    return [np.flatnonzero(ranks == r) for r in range(int(ranks.max()) + 1)] if ranks.size else []


def crowding_distance(F: np.ndarray, ranks: np.ndarray | None = None) -> np.ndarray:
    """NSGA-II crowding distance of every point within its own front (one front when ``ranks`` is None).

    Per objective, a point's gap to its two neighbours in the front, divided by the front's range on
    that objective, averaged over objectives; the first and last point on an objective get ``inf``; an
    objective constant over the front adds nothing. Fronts of one or two points are all ``inf``. This is
    pymoo's ``calc_crowding_distance`` convention (ties ordered by index, as its stable sort does),
    computed for all fronts at once with one lexicographic sort per objective.
    """
    F = _objectives(F)
    ranks = np.zeros(len(F), dtype=np.int64) if ranks is None else np.asarray(ranks, dtype=np.int64)
    if ranks.shape != (len(F),):
        raise ValueError(f"ranks must have shape ({len(F)},), got {ranks.shape}")
    return _batched_crowding(F[None], ranks[None])[0]


def _batched_crowding(F: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Crowding distance for K independent problems at once: ``F`` (K, n, m), ``ranks`` (K, n)."""
    k, n, m = F.shape
    if n == 0:
        return np.zeros((k, 0))
    pos = np.broadcast_to(np.arange(n), (k, n))
    rows = np.arange(k)[:, None]
    total = np.zeros((k, n))
    for j in range(m):
        order = np.lexsort((pos, F[:, :, j], ranks), axis=-1)   # by front, then value, ties by index
        r, v = ranks[rows, order], F[rows, order, j]
        same_prev = np.c_[np.zeros((k, 1), dtype=bool), r[:, 1:] == r[:, :-1]]
        same_next = np.c_[r[:, 1:] == r[:, :-1], np.zeros((k, 1), dtype=bool)]
        first = np.maximum.accumulate(np.where(same_prev, 0, pos), axis=1)        # front's first position
        last = np.minimum.accumulate(np.where(same_next, n, pos)[:, ::-1], axis=1)[:, ::-1]
        span = v[rows, last] - v[rows, first]
        gap_prev = np.where(same_prev, v - np.c_[v[:, :1], v[:, :-1]], np.inf)
        gap_next = np.where(same_next, np.c_[v[:, 1:], v[:, -1:]] - v, np.inf)
        contrib = np.where(span > 0, (gap_prev + gap_next) / np.where(span > 0, span, 1.0), 0.0)
        total[rows, order] += contrib                            # order is a permutation per row
        if j == 0:                                               # fronts of one or two points: all inf
            small_front = np.zeros((k, n), dtype=bool)
            small_front[rows, order] = (last - first + 1) <= 2
    distance = total / m
    distance[small_front] = np.inf
    return distance


def two_objective_ranks(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """Pareto ranks (0 = non-dominated) of K independent two-objective problems at once.

    ``f1``, ``f2``: (K, n). Equal to :func:`non_dominated_ranks` row by row, in O(fronts · K·n) after one
    sort per row: along (f2, f1)-sorted rows a point is non-dominated among the points left iff its
    f1 is below every f1 before it (exact duplicates share their first copy's verdict).
    """
    f1, f2 = np.atleast_2d(np.asarray(f1, dtype=float)), np.atleast_2d(np.asarray(f2, dtype=float))
    if f1.shape != f2.shape or not (np.all(np.isfinite(f1)) and np.all(np.isfinite(f2))):
        raise ValueError("two_objective_ranks needs finite objective arrays of equal shape (K, n)")
    k, n = f1.shape
    rows = np.arange(k)[:, None]
    order = np.lexsort((f1, f2), axis=-1)
    a, b = f1[rows, order], f2[rows, order]
    pos = np.broadcast_to(np.arange(n), (k, n))
    copy = np.c_[np.zeros((k, 1), dtype=bool), (a[:, 1:] == a[:, :-1]) & (b[:, 1:] == b[:, :-1])]
    leader = np.maximum.accumulate(np.where(copy, 0, pos), axis=1)   # first copy of each objective vector
    ranks_sorted = np.full((k, n), -1, dtype=np.int64)
    left = np.ones((k, n), dtype=bool)
    rank = 0
    while left.any():
        live = np.where(left, a, np.inf)
        before = np.c_[np.full((k, 1), np.inf), np.minimum.accumulate(live, axis=1)[:, :-1]]
        front = left & (a < before)[rows, leader]
        ranks_sorted[front] = rank
        left &= ~front
        rank += 1
    ranks = np.empty((k, n), dtype=np.int64)
    ranks[rows, order] = ranks_sorted
    return ranks


def latency_targets(lat_min: float, lat_max: float, n: int, rng: np.random.Generator, even: bool = False) -> np.ndarray:
    """``n`` latency targets over [lat_min, lat_max]: both ends, and ``n − 2`` drawn uniformly between
    them (``even=True``: evenly spaced instead). Sorted ascending."""
    if n < 1:
        raise ValueError(f"need at least one latency target, got {n}")
    if n == 1:
        return np.array([0.5 * (lat_min + lat_max)])
    inner = np.linspace(lat_min, lat_max, n)[1:-1] if even else rng.uniform(lat_min, lat_max, n - 2)
    return np.sort(np.r_[lat_min, inner, lat_max])


def target_preferences(loss: np.ndarray, latency: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every latency target's view of the candidates: ``ranks`` (targets, candidates), the Pareto rank on
    (loss, |latency − target|), and ``order`` (targets, candidates), the candidates best first.

    The order: by rank, within a front by crowding distance (largest first), remaining ties by closeness
    to the target, then loss, then index. Of a front's two infinite-crowding extremes the one nearest the
    target comes first, so a target's first choice is the candidate nearest to it (the best-loss one
    among equally near candidates), then the front's best-loss member, then the rest of the front by
    crowding.
    """
    loss, latency = np.asarray(loss, dtype=float), np.asarray(latency, dtype=float)
    targets = np.asarray(targets, dtype=float).reshape(-1)
    distance = np.abs(latency[None, :] - targets[:, None])              # (K, M)
    loss_k = np.broadcast_to(loss, distance.shape)
    ranks = two_objective_ranks(loss_k, distance)
    crowding = _batched_crowding(np.stack([loss_k, distance], axis=2), ranks)
    return ranks, np.lexsort((loss_k, distance, -crowding, ranks), axis=-1)


def uniform_nondominated_selection(loss: np.ndarray, latency: np.ndarray, n_select: int, rng: np.random.Generator,
                                   n_targets: int | None = None, even_targets: bool = False) -> np.ndarray:
    """JCW's uniform non-dominated sorting: pick ``n_select`` candidates spread over the latency range.

    ``n_targets`` latency targets (default ``n_select``; ``JCWSearch`` uses ⌈n_select / 4⌉) are placed
    over [min, max] of ``latency``, both ends always among them (:func:`latency_targets`); each ranks
    and orders all candidates (:func:`target_preferences`). A candidate's *level* is its best rank over all targets: level 0 are
    the candidates some target finds non-dominated. The population is filled level by level; the level
    that does not fit whole is shared out in rounds: in each round every target, in a fresh random
    order, takes its most preferred candidate of that level not taken yet. Both ends of the latency range
    are always kept (each is level 0 and the first choice of the target placed on it).
    Returns the indices of the picks.
    """
    loss, latency = np.asarray(loss, dtype=float), np.asarray(latency, dtype=float)
    if loss.ndim != 1 or loss.shape != latency.shape:
        raise ValueError(f"loss and latency must be 1-D of equal length, got {loss.shape} and {latency.shape}")
    m = len(loss)
    if not 0 < n_select <= m:
        raise ValueError(f"cannot select {n_select} of {m} candidates")
    if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(latency))):
        raise ValueError("loss and latency must be finite; check the evaluator's losses and the latency table")
    k = n_select if n_targets is None else int(n_targets)
    targets = latency_targets(float(latency.min()), float(latency.max()), k, rng, even_targets)
    ranks, order = target_preferences(loss, latency, targets)
    level = ranks.min(axis=0)
    picks: list[int] = []
    for lv in range(int(level.max()) + 1):
        members = level == lv
        room = n_select - len(picks)
        if members.sum() <= room:
            picks.extend(np.flatnonzero(members).tolist())
            continue
        queues = [row[members[row]] for row in order]     # each target's preference among this level
        taken = np.zeros(m, dtype=bool)
        cursor = np.zeros(k, dtype=np.int64)
        while room:
            for t in rng.permutation(k):
                queue = queues[t]
                while taken[queue[cursor[t]]]:             # room > 0: an untaken member always remains
                    cursor[t] += 1
                taken[queue[cursor[t]]] = True
                picks.append(int(queue[cursor[t]]))
                room -= 1
                if not room:
                    break
        break
    return np.asarray(picks, dtype=np.int64)


def rank_and_crowding_selection(F: np.ndarray, n_select: int) -> np.ndarray:
    """Plain NSGA-II survival (front by front, the last front by crowding), for comparison and baselines."""
    F = _objectives(F)
    if not 0 < n_select <= len(F):
        raise ValueError(f"cannot select {n_select} of {len(F)} candidates")
    ranks = non_dominated_ranks(F)
    crowding = crowding_distance(F, ranks)
    return np.lexsort((-crowding, ranks))[:n_select]
