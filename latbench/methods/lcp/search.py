"""LcP — layer-compensated pruning (Chin, Zhang & Marculescu, 2018), on latency tables.

1. **Global ranking.** Every filter of the network gets a metric (ℓ2, ℓ1 or Taylor, from
   :mod:`latbench.train.importance`). Filters joined by residual additions form one channel group: a channel
   of the group is removed from every layer that writes it, so its score is the sum of those layers' metrics.
2. **Naïve pruning.** Remove the lowest-scored channel (or block of ``unit`` channels, for devices that compute
   channels in blocks) until the resource — latency from the device table, FLOPs or parameters — is within
   the budget. Removing a channel shrinks the outputs of the layers writing it *and* the inputs of the layers
   reading it; the running total is updated for exactly those layers (:class:`IncrementalCost`).
   A floor keeps at least ``floor`` (10 %) of every group.
3. **Layer compensation.** Metrics of different layers are not comparable, so each layer ``l`` gets a latent
   offset ``β_l`` added to its filters' metric. ``β`` is learned by regularised (aging) evolution: the
   fitness of a ``β`` is the loss increase of the network naïvely pruned under it, on a sample of training
   images (after BN recalibration).

>>> ranking = FilterRanking.from_metrics(spec, metrics)                      # doctest: +SKIP
>>> plan = naive_prune(ranking, cost_grid, Budget("latency", 1.2))         # doctest: +SKIP
>>> plan.architecture(resolution=32)                                        # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...files import atomic_write_json, read_json
from ...models.arch import Architecture
from ...models.spec import ModelSpec
from ...search.budget import Budget, BudgetError, CostGrid, IncrementalCost


def grid_step(unit: int, full_widths) -> int:
    """The coarsest cost-grid step holding every width pruning in ``unit`` channels produces: a group whose full
    width is no multiple of the unit first drops the remainder."""
    return int(np.gcd.reduce(np.concatenate([[unit], np.asarray(list(full_widths), dtype=int)])))


@dataclass
class FilterRanking:
    """Channels of every group, least important first, and what ``β`` adds to their scores.

    ``unit_scores[g]`` holds the summed metric of group ``g``'s removable units in the order they would be
    removed (ascending); a unit is ``unit_sizes[g][k]`` channels. ``producers[g, l]`` is 1 when compensated
    layer ``l`` writes group ``g``: a unit's compensated score is ``unit_scores[g][k] + size · (producers @ β)[g]``.
    ``order[group]`` (most important first) is what :func:`~latbench.models.torch_net.materialize` keeps.
    """

    spec: ModelSpec
    unit: int
    full: np.ndarray                 # (G,) full widths
    floors: np.ndarray               # (G,) smallest widths allowed
    unit_scores: list[np.ndarray]    # per group: scores of its removable units, ascending
    unit_sizes: list[np.ndarray]     # per group: channels in each of those units
    producers: np.ndarray            # (G, P) 0/1
    layers: tuple[str, ...]          # the P compensated layers (those writing a prunable group)
    sigma: np.ndarray                # (P,) spread of each layer's metric: the scale of β
    order: dict[str, np.ndarray]

    @classmethod
    def from_metrics(cls, spec: ModelSpec, metrics: Mapping[str, np.ndarray], unit: int = 1,
                     floor: float = 0.1) -> "FilterRanking":
        """``metrics[layer]`` is the per-filter metric of every layer writing a prunable group.

        Widths stay multiples of ``unit`` (a group whose full width is not one first drops the remainder,
        e.g. 24 → 16 with 16-channel units), and at least ``floor`` of the full width (at least one unit).
        """
        if not 0.0 < floor <= 1.0:
            raise BudgetError(f"the per-layer floor must be a fraction in (0, 1], got {floor}")
        if unit < 1:
            raise BudgetError(f"the pruning unit must be a positive number of channels, got {unit}")
        groups = list(spec.groups)
        # (an imported network's squeeze-excitation kernels write their squeeze width: they are producers too)
        layers = tuple(ly.name for ly in spec.layers if ly.out_group is not None and (ly.has_weights or ly.kind == "se"))
        missing = [name for name in layers if name not in metrics]
        if missing:
            raise ValueError(f"no filter metric for layer(s) {missing[:3]} of {spec.name}; compute metrics for every "
                             "layer that writes a channel group (latbench.train.importance.layer_filter_scores)")
        full = np.array([spec.groups[g] for g in groups])
        floors = np.minimum(full, np.maximum(unit, np.ceil(floor * full / unit).astype(int) * unit))
        producers = np.zeros((len(groups), len(layers)))
        summed = [np.zeros(w) for w in full]
        sigma = np.zeros(len(layers))
        for p, name in enumerate(layers):
            g = groups.index(spec.layer(name).out_group)
            m = np.asarray(metrics[name], dtype=float)
            if m.shape != (full[g],):
                raise ValueError(f"metric of layer {name!r} has shape {m.shape}, expected ({full[g]},)")
            producers[g, p] = 1.0
            summed[g] += m
            sigma[p] = m.std() or abs(m.mean()) or 1.0
        unit_scores, unit_sizes, order = [], [], {}
        for g, name in enumerate(groups):
            ascending = np.argsort(summed[g], kind="stable")
            order[name] = ascending[::-1].copy()
            removable = full[g] - floors[g]
            first = full[g] % unit or unit
            sizes = np.array(([first] if removable > 0 else []) + [unit] * max(0, (removable - first) // unit), int)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            unit_scores.append(np.add.reduceat(summed[g][ascending], bounds[:-1]) if sizes.size else np.zeros(0))
            unit_sizes.append(sizes)
        return cls(spec, unit, full, floors, unit_scores, unit_sizes, producers, layers, sigma, order)

    @property
    def groups(self) -> list[str]:
        return list(self.spec.groups)

    @property
    def grid_step(self) -> int:
        """The coarsest cost-grid step on which every width this ranking produces lies."""
        return grid_step(self.unit, self.full)

    def removal_sequence(self, beta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Group index and size (channels) of every removable unit, in the order naïve pruning removes them."""
        shift = np.zeros(len(self.full)) if beta is None else self.producers @ np.asarray(beta)
        scores = np.concatenate([s + shift[g] * self.unit_sizes[g] for g, s in enumerate(self.unit_scores)])
        owners = np.concatenate([np.full(len(s), g) for g, s in enumerate(self.unit_scores)]).astype(int)
        sizes = np.concatenate(self.unit_sizes).astype(int)
        # Within a group scores ascend, and a stable sort keeps that order: units leave each group in turn.
        order = np.argsort(scores, kind="stable")
        return owners[order], sizes[order]


@dataclass(frozen=True)
class PrunePlan:
    """Widths chosen by naïve pruning and the resource they use."""

    spec: ModelSpec
    widths: dict[str, int]
    cost: float
    removed_units: int

    def architecture(self, resolution: int) -> Architecture:
        return Architecture(self.spec.name, resolution, self.widths)


def reachable_minimum(ranking: FilterRanking, grid: CostGrid) -> float:
    """The resource used when every group is at its floor: no budget below it can be met."""
    grid.check_range(ranking.floors)
    return grid.total(ranking.floors)


def naive_prune(ranking: FilterRanking, grid: CostGrid, budget: Budget, beta: np.ndarray | None = None) -> PrunePlan:
    """Remove the lowest-ranked units until ``grid``'s total is within ``budget`` (incremental updates)."""
    floor_cost = reachable_minimum(ranking, grid)
    if budget.value < floor_cost:
        raise BudgetError(
            f"a {budget.kind} budget of {budget.describe()} is below what pruning {ranking.spec.name} can reach: "
            f"with every layer at its floor the network needs {budget.describe(floor_cost)}; raise the budget to "
            f"at least that or lower the per-layer floor (--floor)")
    widths = ranking.full.copy()
    running = IncrementalCost(grid, widths)
    removed = 0
    if running.value > budget.value:
        for g, size in zip(*ranking.removal_sequence(beta)):
            widths[g] -= size
            removed += 1
            if running.shrink(g, size) <= budget.value:
                break
    return PrunePlan(ranking.spec, dict(zip(ranking.groups, widths.tolist())), grid.total(widths), removed)


def fill_back(ranking: FilterRanking, grid: CostGrid, budget: Budget, plan: PrunePlan,
              beta: np.ndarray | None = None) -> PrunePlan:
    """``plan`` (naïve pruning with ``beta``) grown by the best-ranked removed units that still fit within
    ``budget``: naïve pruning stops at the first removal that meets the budget, and when that removal was a
    large unit (a residual stage's channels touch many layers) the budget left unused can hold smaller,
    lower-ranked units. Widening a group by one unit restores its best-ranked removed unit, so the ranking's
    order within each group is kept. The closed loop grows networks this way (issue 15)."""
    owners, sizes = ranking.removal_sequence(beta)
    removed = plan.removed_units
    widths = np.array([plan.widths[g] for g in ranking.groups])
    cost, added = grid.total(widths), 0
    for g, size in zip(owners[:removed][::-1], sizes[:removed][::-1]):
        if widths[g] + size > ranking.full[g]:
            continue
        widths[g] += size
        grown = grid.total(widths)
        if grown <= budget.value:
            cost, added = grown, added + 1
        else:
            widths[g] -= size
    return PrunePlan(ranking.spec, dict(zip(ranking.groups, widths.tolist())), cost, removed - added)


def uniform_prune(ranking: FilterRanking, grid: CostGrid, budget: Budget, resolution_steps: int = 2000,
                  fill: bool = True) -> PrunePlan:
    """Baseline: one width ratio for every group (rounded down to the unit, at least the floor), the largest
    ratio whose network is within the budget. With ``fill`` the rounding's leftover budget is spent as evenly
    as the unit allows: in one pass from the group kept narrowest relative to its full width (the widest first
    among equals), each group gains one unit if it still fits — no group strays more than a unit from the
    ratio. Without it the next ratio up can cost a whole stage's unit at once, and the baseline would be
    compared at a lower latency than the methods it is a baseline for (issue 15)."""
    if budget.value < reachable_minimum(ranking, grid):
        naive_prune(ranking, grid, budget)  # raises the explanatory error
    ratios = np.linspace(1.0, 0.0, resolution_steps + 1)
    u = ranking.unit
    rounded = np.floor(ratios[:, None] * ranking.full / u) * u
    widths = np.where(ratios[:, None] == 1.0, ranking.full, np.maximum(ranking.floors, rounded)).astype(int)
    costs = grid.totals(widths)
    ok = np.flatnonzero(costs <= budget.value)
    best = (widths[ok[0]] if ok.size else ranking.floors).copy()
    cost = grid.total(best)
    if fill:       # one pass: each group gains at most one unit, so none strays more than a unit from the ratio
        for g in np.lexsort((-ranking.full, best / ranking.full)):      # narrowest share first; widest on ties
            step = min(u, ranking.full[g] - best[g])
            best[g] += step
            grown = grid.total(best)
            if grown <= budget.value:
                cost = grown
            else:                          # this group's unit does not fit: a cheaper one further on may
                best[g] -= step
    return PrunePlan(ranking.spec, dict(zip(ranking.groups, best.tolist())), cost,
                     int(np.ceil((ranking.full - best) / u).sum()))


# ----------------------------------------------------------------------------------------------- evolution


@dataclass(frozen=True)
class EvolutionConfig:
    """Regularised (aging) evolution of the layer compensations, with the paper's settings by default:
    a pool of 64, 400 candidates in all (64 random + 336 mutants), tournaments of ``sample`` pool members,
    each mutant changing a random ``mutate_fraction`` of the layers by N(0, α·σ_l), α falling linearly from
    ``alpha_start`` to ``alpha_end``."""

    pool: int = 64
    candidates: int = 400
    sample: int = 16
    mutate_fraction: float = 0.1
    alpha_start: float = 1.0
    alpha_end: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.sample <= self.pool <= self.candidates:
            raise ValueError(f"need 1 ≤ sample ≤ pool ≤ candidates, got {self.sample}, {self.pool}, {self.candidates}")
        if not 0 < self.mutate_fraction <= 1:
            raise ValueError(f"mutate_fraction must be in (0, 1], got {self.mutate_fraction}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Candidate:
    beta: np.ndarray
    fitness: float
    widths: dict[str, int]
    cost: float

    def to_dict(self) -> dict:
        return {"beta": self.beta.tolist(), "fitness": self.fitness, "widths": self.widths, "cost": self.cost}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Candidate":
        return cls(np.array(d["beta"], dtype=float), float(d["fitness"]), {k: int(v) for k, v in d["widths"].items()},
                   float(d["cost"]))


@dataclass
class EvolutionResult:
    best: Candidate
    history: list[Candidate]
    seconds: float
    prune_seconds: float          # total time spent in naïve pruning
    fitness_seconds: float        # total time spent evaluating fitness
    evaluations: int              # distinct architectures whose fitness was computed

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict(), "seconds": self.seconds, "prune_seconds": self.prune_seconds,
                "fitness_seconds": self.fitness_seconds, "evaluations": self.evaluations,
                "candidates": len(self.history),
                "prune_ms_per_candidate": 1e3 * self.prune_seconds / max(1, len(self.history)),
                "history": [{"fitness": c.fitness, "cost": c.cost} for c in self.history]}


Fitness = Callable[[PrunePlan], float]


def learn_compensation(ranking: FilterRanking, grid: CostGrid, budget: Budget, fitness: Fitness,
                       config: EvolutionConfig = EvolutionConfig(), state: str | Path | None = None,
                       progress: bool = True) -> EvolutionResult:
    """Find the ``β`` whose naïvely pruned network loses the least (lower fitness is better).

    With ``state``, every evaluated candidate is written to that JSON file and a rerun continues from it
    (the random stream is restored too, so an interrupted search ends where an uninterrupted one would).
    """
    rng = np.random.default_rng(config.seed)
    history: list[Candidate] = []
    path = Path(state) if state else None
    spent: dict = {}   # time already spent by an interrupted run: the report gives the search's whole cost
    if path and path.exists():
        saved = read_json(path, recover="delete it to restart the search (or choose another --out)")
        if saved.get("config") != config.to_dict() or saved.get("budget") != [budget.kind, budget.value]:
            raise ValueError(f"{path} holds a search with other settings; delete it or choose another --out")
        history = [Candidate.from_dict(c) for c in saved["history"]]
        rng.bit_generator.state = saved["rng"]
        spent = saved.get("timers", {})
    cache: dict[tuple, float] = {tuple(sorted(c.widths.items())): c.fitness for c in history}
    sigma = ranking.sigma
    timers = {"prune": spent.get("prune", 0.0), "fitness": spent.get("fitness", 0.0)}
    start = time.perf_counter() - spent.get("total", 0.0)

    def evaluate(beta: np.ndarray) -> Candidate:
        t0 = time.perf_counter()
        plan = naive_prune(ranking, grid, budget, beta)
        t1 = time.perf_counter()
        key = tuple(sorted(plan.widths.items()))
        if key not in cache:  # different β often give the same network: its loss is computed once
            cache[key] = float(fitness(plan))
        timers["prune"] += t1 - t0
        timers["fitness"] += time.perf_counter() - t1
        return Candidate(beta, cache[key], plan.widths, plan.cost)

    columns = (TextColumn("[bold]LcP β evolution"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("best loss increase {task.fields[best]}"))
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("lcp", total=config.candidates, completed=len(history), best="–")
        while len(history) < config.candidates:
            i = len(history)
            if i < config.pool:
                beta = rng.normal(0.0, sigma)
            else:
                pool = history[-config.pool:]                       # aging: the newest `pool` candidates
                picks = rng.choice(len(pool), size=config.sample, replace=False)
                parent = min((pool[j] for j in picks), key=lambda c: c.fitness)
                progress_frac = (i - config.pool) / max(1, config.candidates - config.pool - 1)
                alpha = config.alpha_start + (config.alpha_end - config.alpha_start) * progress_frac
                n_mut = max(1, int(round(config.mutate_fraction * len(sigma))))
                layers = rng.choice(len(sigma), size=n_mut, replace=False)
                beta = parent.beta.copy()
                beta[layers] += rng.normal(0.0, alpha * sigma[layers])
            history.append(evaluate(beta))
            if path:
                atomic_write_json(path, {"config": config.to_dict(), "budget": [budget.kind, budget.value],
                                         "history": [c.to_dict() for c in history],
                                         "rng": rng.bit_generator.state,
                                         "timers": {**timers, "total": time.perf_counter() - start}})
            bar.update(task, completed=len(history), best=f"{min(c.fitness for c in history):.4f}")
    best = min(history, key=lambda c: c.fitness)
    return EvolutionResult(best, history, time.perf_counter() - start, timers["prune"], timers["fitness"],
                           len(cache))
