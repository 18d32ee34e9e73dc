"""SP's distributed evolutionary search (Algorithms 2–3 of Zhang & Ou): an EA manager over how the budget is
split across stages, and for every manager gene K independent stage EAs.

**Manager genes** (Algorithm 2). A gene is

* the **boundary widths**: the width of every stage's output group — what each stage passes on to the
  next (and the last one to the classifier); drawn from the search space's choices of those groups;
* the **budget split**: fractions ``f`` on the simplex. With the boundary fixed, each stage's cost at its
  narrowest interior widths ``m_i`` and at its widest ``M_i`` and the head's fixed cost ``F`` are known
  (:class:`~latbench.methods.sp.costs.StageCosts`); the slack ``S = B − F − Σ m_i`` is dealt out as
  ``b_i = m_i + f_i·S``, capped at ``M_i`` (what a capped stage cannot use goes to the others by their
  fractions). A boundary with ``S < 0`` cannot meet the budget and is never proposed. So every stage budget
  admits at least the stage's narrowest sub-network, and ``Σ b_i + F ≤ B``: any combination of stage
  results that meet their budgets meets the whole budget — exactly, since latency from a table, FLOPs
  and parameters are all sums of per-layer lookups.

The manager's fitness is the sum of the stage losses its stage EAs reach. Selection keeps the ``top``
fraction of the population; children come from uniform crossover of two parents or from mutation (every
gene redrawn with probability ``mutation_prob``; a fraction is multiplied by ``exp(N(0, 1))``), and are kept
only when feasible and new.

**Stage EAs** (Algorithm 3). Given stage ``i``'s input width (the previous boundary), output width and
budget, an EA searches the stage's **interior** groups (the groups it owns besides its output group) for
the smallest stage distillation loss within the budget: initial population drawn uniformly among the
candidates within budget, then per iteration top-k selection, mutation (each gene redrawn with
probability 0.1) and uniform crossover. The loss of a candidate is ``(1/C)·‖A_i(Y_i) − Ŷ_i‖²`` on a fixed
held-out image set: the full network (eval mode, BN recalibrated on the calibration images) gives the stage
input X̂_{i−1} —
cut to the candidate's input width — and the target Ŷ_i; the candidate's stage BN is **recalibrated** on
a fixed calibration set of stage inputs first (:func:`recalibrate_stage`), since supernet training never
let sub-networks touch the shared statistics (see :mod:`~latbench.methods.sp.training`).

The stage EAs of one manager generation are independent tasks, run on Ray actors or in this process
(:mod:`~latbench.methods.sp.parallel`); each carries its seed ``(seed, generation, member, stage)``, so
both give the same search. The state is written atomically as members finish and after every manager
generation; a rerun continues where it stopped.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
from annotated_types import Ge, Gt, Le
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...files import atomic_write_json, read_json
from ...models import Architecture, ModelSpec
from ...recipe import Opt
from ...search.budget import Budget, BudgetError
from ...supernet import (DynamicNet, OnnxSupernet, SearchSpace, StageAdaptors, SubnetBN, head_groups,
                         stage_feature_loss)
from .costs import StageCosts
from .parallel import InProcessPool, RayPool, ray_session, wait_for_actors


@dataclass(frozen=True)
class SPSearchConfig:
    """The search's settings (the paper: populations of 128, 10 iterations, mutation probability 0.1).

    ``top``: fraction of a population kept as parents; ``crossover``: fraction of children made by
    crossover (the rest by mutation). ``eval_images`` held-out images score stage sub-networks,
    ``calib_images`` (training images) recalibrate their BN; ``batch_size`` batches both.
    """

    manager_population: Annotated[int, Ge(1)] = 128
    manager_generations: Annotated[int, Ge(1)] = 10
    stage_population: Annotated[int, Ge(1)] = 128
    stage_generations: Annotated[int, Ge(1)] = 10
    top: Annotated[float, Gt(0), Le(1), Opt(help="fraction of each population kept as parents")] = 0.25
    crossover: Annotated[float, Ge(0), Le(1), Opt(help="fraction of children made by crossover")] = 0.5
    mutation_prob: Annotated[float, Gt(0), Le(1)] = 0.1
    eval_images: Annotated[int, Ge(1), Opt(help="held-out images the stage losses are measured on")] = 1024
    calib_images: Annotated[int, Ge(1), Opt(help="training images to recalibrate BN of each stage candidate")] = 256
    batch_size: Annotated[int, Ge(1), Opt(flag="search-batch-size", help="batch of the search's scoring")] = 256
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0

    def __post_init__(self) -> None:
        for name in ("manager_population", "manager_generations", "stage_population", "stage_generations",
                     "eval_images", "calib_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"search setting {name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 < self.top <= 1 or not 0 <= self.crossover <= 1 or not 0 < self.mutation_prob <= 1:
            raise ValueError(f"need 0 < top ≤ 1, 0 ≤ crossover ≤ 1, 0 < mutation_prob ≤ 1 (got {self.top}, "
                             f"{self.crossover}, {self.mutation_prob})")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ one stage
@torch.no_grad()
def recalibrate_stage(net: DynamicNet, i: int, arch: Architecture, inputs: Sequence[torch.Tensor]) -> SubnetBN:
    """BN statistics of stage ``i`` of ``arch``'s sub-network from batches of stage inputs (full width is
    fine: they are cut to the sub-network's input width), as :func:`latbench.supernet.recalibrate` does for
    a whole network: reset, then the plain mean of the batch statistics. Shared statistics are untouched."""
    device = net.device
    stats: SubnetBN = {name: (torch.zeros(c, device=device), torch.ones(c, device=device))
                       for name, c in net.stage_bn_widths(i, arch).items()}
    was_training = net.training
    net.train()
    try:
        for n, x in enumerate(inputs):
            # the core's per-stage forward with explicit statistics (as recalibrate does for a whole network)
            net._stage_calibration_step(i, x.to(device), arch, stats, 1.0 / (n + 1))
    finally:
        net.train(was_training)
    if not inputs:
        raise ValueError("recalibrate_stage: no batches")
    return stats


@dataclass(frozen=True)
class StageTask:
    """One stage EA: stage ``stage`` with input width ``in_width`` (None: the image), output width
    ``out_width``, within ``budget``, seeded by ``seed``."""

    stage: int
    in_width: int | None
    out_width: int
    budget: float
    seed: tuple[int, ...]


@dataclass
class StageResult:
    stage: int
    widths: dict[str, int]         # the stage's interior groups and its output group
    loss: float
    cost: float
    budget: float
    evaluations: int               # losses computed for this task (the rest came from the worker's cache)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageResult":
        return cls(int(d["stage"]), {k: int(v) for k, v in d["widths"].items()}, float(d["loss"]), float(d["cost"]),
                   float(d["budget"]), int(d["evaluations"]), float(d["seconds"]))


@dataclass
class StageSetup:
    """What every stage worker needs (sent once): the supernet and adaptor weights, the model, the costs."""

    spec: ModelSpec
    widths: dict[str, int]
    in_channels: int
    state: dict[str, torch.Tensor]
    adaptors: dict[str, torch.Tensor]
    costs: StageCosts
    choices: dict[str, tuple[int, ...]]
    resolution: int
    config: SPSearchConfig
    device: str = "cpu"
    onnx: bytes | None = None                      # an imported model's graph (its OnnxSupernet), else None
    order: dict[str, np.ndarray] | None = None     # and that supernet's channel order

    def build_net(self) -> "DynamicNet | OnnxSupernet":
        """The supernet with the trained weights, in eval mode, on ``device``."""
        device = torch.device(self.device)
        if self.onnx is None:
            net = DynamicNet(self.spec, self.widths, self.in_channels, device="meta").to_empty(device=device)
        else:
            net = OnnxSupernet(onnx.load_from_string(self.onnx), self.spec, self.order).to(device)
        net.load_state_dict(self.state)
        return net.eval()


@dataclass
class StageData:
    """Stage ``i``'s fixed data: full-network stage inputs (scoring and calibration) and targets Ŷ_i."""

    stage: int
    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    calibration: list[torch.Tensor]


def stage_evolution(genes: Sequence[Sequence[int]], cost: Callable[[np.ndarray], np.ndarray], budget: float,
                    loss: Callable[[tuple[int, ...]], float], population: int, generations: int, top: float,
                    crossover: float, mutation_prob: float, rng: np.random.Generator) -> tuple[tuple[int, ...], float]:
    """Minimise ``loss`` over index vectors into ``genes`` (one choice list per gene) with ``cost ≤ budget``.

    ``cost`` maps an (N, genes) index array to costs. The all-zeros vector (the narrowest choices) must be
    within budget. Returns the best index vector and its loss (ties: the earlier evaluated)."""
    sizes = np.array([len(g) for g in genes], dtype=np.int64)
    tol = 1e-9 * max(1.0, abs(budget))

    def feasible(cands: np.ndarray) -> np.ndarray:
        return cost(cands) <= budget + tol

    def key(c) -> tuple[int, ...]:
        return tuple(int(v) for v in c)

    if sizes.size == 0:
        return (), loss(())
    draws = rng.integers(0, sizes, size=(max(64, 20 * population), sizes.size))
    ok = draws[feasible(draws)]
    pop: list[tuple[int, ...]] = []
    for c in ok:
        if key(c) not in pop:
            pop.append(key(c))
        if len(pop) == population:
            break
    if not pop:
        pop = [key(np.zeros(sizes.size, dtype=np.int64))]
    scores: dict[tuple[int, ...], float] = {}
    order: dict[tuple[int, ...], int] = {}          # evaluation order: breaks ties
    k = max(1, int(round(top * population)))
    for t in range(generations):
        for c in pop:
            if c not in scores:
                scores[c] = float(loss(c))
                order[c] = len(order)
        if t == generations - 1:
            break
        ranked = sorted(dict.fromkeys(pop), key=lambda c: (scores[c], order[c]))
        parents = ranked[:k]
        children: list[tuple[int, ...]] = []
        want = population - len(parents)
        tries = 0
        while len(children) < want and tries < 20 * max(1, want):
            tries += 1
            if len(parents) > 1 and rng.random() < crossover:
                a, b = rng.choice(len(parents), size=2, replace=False)
                mask = rng.random(sizes.size) < 0.5
                child = np.where(mask, parents[a], parents[b])
            else:
                child = np.array(parents[int(rng.integers(len(parents)))])
                redraw = rng.random(sizes.size) < mutation_prob
                child = np.where(redraw, rng.integers(0, sizes), child)
            c = key(child)
            if c in scores or c in children or c in parents or not feasible(np.array([c]))[0]:
                continue
            children.append(c)
        pop = parents + children
    best = min(order, key=lambda c: (scores[c], order[c]))
    return best, scores[best]


class StageWorker:
    """Runs stage EAs for one stage (a Ray actor, or a plain object in this process). Losses are cached
    per candidate (stage widths incl. input width): the cache saves time and never changes a result."""

    def __init__(self, setup: StageSetup, data: StageData) -> None:
        self.setup, self.data, self.i = setup, data, data.stage
        self.net = setup.build_net()
        self.adaptors = StageAdaptors.for_net(self.net)
        self.adaptors.load_state_dict(setup.adaptors)
        self.adaptors.eval()
        stage = self.net.stages[self.i]
        self.stage = stage
        self.interior = [g for g in stage.groups if g != stage.output_group]
        self.groups = list(setup.spec.groups)
        self.cache: dict[tuple, float] = {}
        self.computed = 0

    def ping(self) -> bool:
        return True

    def widths(self, in_width: int | None, out_width: int, interior: Sequence[int]) -> dict[str, int]:
        w = dict(self.setup.widths)
        if self.stage.input_group is not None:
            w[self.stage.input_group] = int(in_width)
        w[self.stage.output_group] = int(out_width)
        w.update({g: int(v) for g, v in zip(self.interior, interior)})
        return w

    @torch.no_grad()
    def loss(self, widths: Mapping[str, int]) -> float:
        """Stage distillation loss of the stage sub-network at ``widths`` (BN recalibrated first)."""
        key = tuple(widths[g] for g in ([self.stage.input_group] if self.stage.input_group else []) +
                    list(self.stage.groups))
        if key in self.cache:
            return self.cache[key]
        arch = Architecture(self.setup.spec.name, self.setup.resolution, widths)
        stats = recalibrate_stage(self.net, self.i, arch, self.data.calibration)
        total, n = 0.0, 0
        device = self.net.device
        for x, target in zip(self.data.inputs, self.data.targets):
            target = target.to(device)
            y = self.net.forward_stage(self.i, x.to(device), arch, bn=stats)
            channels = self.net.stage_channels(self.i, arch)
            total += float(stage_feature_loss(y, target, lambda v: self.adaptors(self.i, v, channels))) * target.numel()
            n += target.numel()
        self.cache[key] = total / n
        self.computed += 1
        return self.cache[key]

    def run(self, task: StageTask) -> StageResult:
        t0 = time.perf_counter()
        self.computed = 0
        cfg = self.setup.config
        genes = [self.setup.choices[g] for g in self.interior]
        base = np.array([self.widths(task.in_width, task.out_width, [c[0] for c in genes])[g] for g in self.groups])
        cols = [self.groups.index(g) for g in self.interior]
        costs = self.setup.costs

        def cost(idx: np.ndarray) -> np.ndarray:
            w = np.repeat(base[None, :], len(idx), axis=0)
            for j, col in enumerate(cols):
                w[:, col] = np.asarray(genes[j])[idx[:, j]]
            return np.atleast_1d(costs.stage(self.i, w))

        def loss(idx: tuple[int, ...]) -> float:
            return self.loss(self.widths(task.in_width, task.out_width, [genes[j][v] for j, v in enumerate(idx)]))

        best, best_loss = stage_evolution(genes, cost, task.budget, loss, cfg.stage_population, cfg.stage_generations,
                                          cfg.top, cfg.crossover, cfg.mutation_prob,
                                          np.random.default_rng(list(task.seed)))
        widths = self.widths(task.in_width, task.out_width, [genes[j][v] for j, v in enumerate(best)])
        mine = {g: widths[g] for g in self.stage.groups}
        stage_cost = float(cost(np.array([best], dtype=np.int64).reshape(1, len(genes)))[0])
        return StageResult(self.i, mine, best_loss, stage_cost, task.budget, self.computed, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ the manager
@dataclass
class Gene:
    """A manager gene: boundary widths (per stage) and budget fractions; evaluated: stage budgets, results."""

    boundary: tuple[int, ...]
    fractions: tuple[float, ...]
    budgets: tuple[float, ...]
    results: list[StageResult | None] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.results) and all(r is not None for r in self.results)

    @property
    def fitness(self) -> float:
        return float(sum(r.loss for r in self.results)) if self.done else float("inf")

    def key(self) -> tuple:
        return self.boundary, tuple(round(f, 12) for f in self.fractions)

    def to_dict(self) -> dict:
        return {"boundary": list(self.boundary), "fractions": list(self.fractions), "budgets": list(self.budgets),
                "results": [r.to_dict() if r is not None else None for r in self.results],
                "fitness": self.fitness if self.done else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Gene":
        return cls(tuple(int(v) for v in d["boundary"]), tuple(float(v) for v in d["fractions"]),
                   tuple(float(v) for v in d["budgets"]),
                   [StageResult.from_dict(r) if r is not None else None for r in d["results"]])


@dataclass
class SearchResult:
    arch: Architecture
    fitness: float
    stage_losses: list[float]
    stage_costs: list[float]
    stage_budgets: list[float]
    fixed_cost: float
    cost: float
    budget: Budget
    history: list[dict]
    evaluations: int
    seconds: float
    parallel: str

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "fitness": self.fitness, "stage_losses": self.stage_losses,
                "stage_costs": self.stage_costs, "stage_budgets": self.stage_budgets, "fixed_cost": self.fixed_cost,
                "cost": self.cost, "budget": {"kind": self.budget.kind, "value": self.budget.value},
                "history": self.history, "evaluations": self.evaluations, "seconds": self.seconds,
                "parallel": self.parallel}


class BudgetSplitter:
    """Turns a manager gene's boundary and fractions into stage budgets (see the module docstring)."""

    def __init__(self, spec: ModelSpec, stages, costs: StageCosts, choices: Mapping[str, Sequence[int]],
                 budget: Budget) -> None:
        self.spec, self.stages, self.costs, self.budget = spec, stages, costs, budget
        self.groups = list(spec.groups)
        self.boundary_groups = [s.output_group for s in stages]
        self.boundary_choices = [tuple(choices[g]) for g in self.boundary_groups]
        self.small = np.array([choices[g][0] for g in self.groups], dtype=np.int64)
        self.large = np.array([choices[g][-1] for g in self.groups], dtype=np.int64)

    def _with(self, base: np.ndarray, boundary: Sequence[int]) -> np.ndarray:
        w = base.copy()
        for g, v in zip(self.boundary_groups, boundary):
            w[self.groups.index(g)] = v
        return w

    def split(self, boundary: Sequence[int], fractions: Sequence[float]) -> tuple[float, ...] | None:
        """Stage budgets, or None when this boundary cannot meet the budget."""
        lo, hi = self._with(self.small, boundary), self._with(self.large, boundary)
        k = len(self.stages)
        m = np.array([self.costs.stage(i, lo) for i in range(k)])
        big = np.maximum(np.array([self.costs.stage(i, hi) for i in range(k)]), m)
        slack = self.budget.value - self.costs.fixed(lo) - m.sum()
        if slack < -1e-9 * abs(self.budget.value):
            return None
        f = np.asarray(fractions, dtype=float)
        alloc = m + f * max(0.0, slack)
        capped = np.zeros(k, dtype=bool)
        for _ in range(k):
            over = (alloc > big) & ~capped
            if not over.any():
                break
            excess = float((alloc[over] - big[over]).sum())
            alloc[over] = big[over]
            capped |= over
            free = ~capped
            if not free.any() or f[free].sum() <= 0:
                break
            alloc[free] += excess * f[free] / f[free].sum()
        return tuple(float(a) for a in alloc)


def _normalise(f: np.ndarray) -> tuple[float, ...]:
    f = np.maximum(np.asarray(f, dtype=float), 1e-6)
    return tuple(float(v) for v in f / f.sum())


class Manager:
    """Algorithm 2's EA over :class:`Gene` s (initial population, breeding); evaluation is the caller's."""

    def __init__(self, splitter: BudgetSplitter, config: SPSearchConfig) -> None:
        self.splitter, self.config = splitter, config
        self.k = len(splitter.stages)

    def _gene(self, boundary_idx: Sequence[int], fractions: Sequence[float]) -> Gene | None:
        boundary = tuple(int(self.splitter.boundary_choices[i][j]) for i, j in enumerate(boundary_idx))
        fractions = _normalise(np.asarray(fractions))
        budgets = self.splitter.split(boundary, fractions)
        return None if budgets is None else Gene(boundary, fractions, budgets, [None] * self.k)

    def _index(self, gene: Gene) -> list[int]:
        return [self.splitter.boundary_choices[i].index(w) for i, w in enumerate(gene.boundary)]

    def initial(self) -> list[Gene]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0])
        sizes = [len(c) for c in self.splitter.boundary_choices]
        pop: list[Gene] = []
        for _ in range(100 * cfg.manager_population):
            gene = self._gene([int(rng.integers(s)) for s in sizes], rng.dirichlet(np.ones(self.k)))
            if gene is not None and gene.key() not in {g.key() for g in pop}:
                pop.append(gene)
            if len(pop) == cfg.manager_population:
                break
        if not pop:       # only the narrowest boundary fits: the job checked that it does
            gene = self._gene([0] * self.k, np.full(self.k, 1.0 / self.k))
            if gene is None:
                raise BudgetError(f"no split of the {self.splitter.budget.kind} budget "
                                  f"{self.splitter.budget.describe()} over the stages fits even the narrowest widths")
            pop.append(gene)
        return pop

    def breed(self, pop: list[Gene], generation: int) -> list[Gene]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, generation])
        ranked = sorted(pop, key=lambda g: g.fitness)          # stable: ties keep population order
        parents = ranked[:max(1, int(round(cfg.top * cfg.manager_population)))]
        sizes = [len(c) for c in self.splitter.boundary_choices]
        seen = {g.key() for g in pop}
        children: list[Gene] = []
        want = cfg.manager_population - len(parents)
        tries = 0
        while len(children) < want and tries < 50 * max(1, want):
            tries += 1
            if len(parents) > 1 and rng.random() < cfg.crossover:
                a, b = (parents[int(j)] for j in rng.choice(len(parents), size=2, replace=False))
                ia, ib = self._index(a), self._index(b)
                idx = [ia[i] if rng.random() < 0.5 else ib[i] for i in range(self.k)]
                frac = [a.fractions[i] if rng.random() < 0.5 else b.fractions[i] for i in range(self.k)]
            else:
                p = parents[int(rng.integers(len(parents)))]
                idx = [int(rng.integers(sizes[i])) if rng.random() < cfg.mutation_prob else j
                       for i, j in enumerate(self._index(p))]
                frac = [f * float(np.exp(rng.normal())) if rng.random() < cfg.mutation_prob else f
                        for f in p.fractions]
            child = self._gene(idx, frac)
            if child is None or child.key() in seen:
                continue
            seen.add(child.key())
            children.append(child)
        return [Gene(g.boundary, g.fractions, g.budgets, list(g.results)) for g in parents] + children


# ------------------------------------------------------------------------------------------------ driver
@torch.no_grad()
def stage_data(net: DynamicNet, images: torch.Tensor, calibration: torch.Tensor, batch_size: int) -> list[StageData]:
    """Per stage: the full network's stage inputs and outputs on ``images``, and its stage inputs on
    ``calibration`` images, in batches, on the CPU (they travel to workers).

    The full network runs in eval mode with its BN **recalibrated on the calibration images**, the images every
    candidate is recalibrated on: targets and candidates then normalise with statistics of the same images.
    (With the shared running statistics instead, a short or lagging supernet run made the full network's own
    stage loss larger than the narrowest one's.)"""
    from ...supernet import recalibrate

    was = net.training
    device = net.device
    batches = [calibration[s:s + batch_size] for s in range(0, len(calibration), batch_size)]
    full_bn = recalibrate(net, None, batches)
    net.eval()
    try:
        def run(x: torch.Tensor) -> list[list[torch.Tensor]]:
            per_stage: list[list[torch.Tensor]] = [[] for _ in range(len(net.stages) + 1)]
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size].to(device)
                _, outs = net(xb, bn=full_bn, return_stages=True)
                for i, t in enumerate([xb] + outs):
                    per_stage[i].append(t.detach().cpu())
            return per_stage

        scored, cal = run(images), run(calibration)
    finally:
        net.train(was)
    return [StageData(i, scored[i], scored[i + 1], cal[i]) for i in range(len(net.stages))]


def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """SHA-256 of tensors' shapes and bytes: a saved search is resumed only for the same supernet and images."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _setup(net: DynamicNet, adaptors: StageAdaptors, costs: StageCosts, space: SearchSpace, resolution: int,
           config: SPSearchConfig, device: str) -> StageSetup:
    imported = isinstance(net, OnnxSupernet)
    return StageSetup(net.spec, dict(net.widths), net.in_channels,
                      {k: v.detach().cpu() for k, v in net.state_dict().items()},
                      {k: v.detach().cpu() for k, v in adaptors.state_dict().items()}, costs,
                      {g: tuple(c) for g, c in space.choices.items()}, resolution, config, device,
                      net.model.SerializeToString() if imported else None, dict(net.order) if imported else None)


def search(net: DynamicNet, adaptors: StageAdaptors, space: SearchSpace, costs: StageCosts, budget: Budget,
           images: torch.Tensor, calibration: torch.Tensor, config: SPSearchConfig = SPSearchConfig(), *,
           resolution: int | None = None, use_ray: bool = False, ray_address: str | None = None,
           actors_per_stage: int = 1, state: str | Path | None = None, worker_device: str = "cpu",
           progress: bool = True) -> SearchResult:
    """Run SP's search for ``budget`` (whose cost model is ``costs``) on the trained supernet.

    ``images`` (held-out, normalised) score stage sub-networks; ``calibration`` images recalibrate their BN.
    With ``use_ray`` the stage EAs run on Ray actors (``ray_address`` or a local instance), else in this
    process — the same result for the same seed. ``state``: JSON file written atomically as manager
    members finish; a rerun with the same settings continues from it (a finished search is returned at
    once). ``worker_device``: where workers run their forwards."""
    resolution = resolution or int(images.shape[-1])
    stages = net.stages
    splitter = BudgetSplitter(net.spec, stages, costs, space.choices, budget)
    manager = Manager(splitter, config)
    path = Path(state) if state else None
    settings = {"config": config.to_dict(), "budget": [budget.kind, budget.value], "model": net.spec.name,
                "choices": {g: list(c) for g, c in space.choices.items()},
                "supernet": fingerprint(list(net.state_dict().values()) + list(adaptors.state_dict().values())),
                "images": fingerprint([images]), "calibration": fingerprint([calibration])}
    generation, pop, history, spent, evaluations = 0, None, [], 0.0, 0
    if path and path.exists():
        saved = read_json(path, recover="delete it to restart the search (or choose another --out)")
        if saved.get("settings") != settings:
            what = [k for k in settings if saved.get("settings", {}).get(k) != settings[k]]
            raise ValueError(f"{path} holds a search with other settings ({', '.join(what)}: e.g. another budget, "
                             "or a retrained supernet); delete it to search again, or choose another --out")
        generation, history = int(saved["generation"]), list(saved["history"])
        pop = [Gene.from_dict(g) for g in saved["population"]]
        spent, evaluations = float(saved["seconds"]), int(saved["evaluations"])
        if saved.get("complete"):
            return _result(saved, net.spec, resolution, budget, costs)
    start = time.perf_counter() - spent
    last_save = [0.0]

    def save(complete: bool = False, force: bool = True) -> dict:
        now = time.perf_counter()
        payload = {"settings": settings, "generation": generation, "population": [g.to_dict() for g in pop],
                   "history": history, "seconds": now - start, "evaluations": evaluations, "complete": complete,
                   "parallel": pool_name[0]}
        if path and (force or now - last_save[0] > 1.0):
            atomic_write_json(path, payload)
            last_save[0] = now
        return payload

    if pop is None:
        pop = manager.initial()
    pool_name = ["ray" if use_ray else "in-process"]
    setup = _setup(net, adaptors, costs, space, resolution, config, worker_device)
    data = stage_data(net, images, calibration, config.batch_size)

    def run(pool) -> dict:
        nonlocal pop, generation
        columns = (TextColumn("[bold]SP search[/] gen {task.fields[gen]}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("best Σ stage loss {task.fields[best]}"))
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task_id = bar.add_task("sp", total=config.manager_generations * len(stages) * config.manager_population,
                                   completed=0, gen=generation + 1, best="–")
            while True:
                if generation >= config.manager_generations:
                    break
                tasks, where = [], []
                for j, gene in enumerate(pop):
                    for i, result in enumerate(gene.results):
                        if result is None:
                            tasks.append(StageTask(i, gene.boundary[i - 1] if i > 0 else None, gene.boundary[i],
                                                   gene.budgets[i], (config.seed, 2, generation, j, i)))
                            where.append((j, i))

                def on_result(index: int, result: StageResult) -> None:
                    nonlocal evaluations
                    j, i = where[index]
                    pop[j].results[i] = result
                    evaluations += result.evaluations
                    bar.update(task_id, advance=1)
                    save(force=False)

                bar.update(task_id, gen=generation + 1)
                pool.run(tasks, on_result)
                best = min(pop, key=lambda g: g.fitness)
                history.append({"generation": generation, "best": best.fitness,
                                "mean": float(np.mean([g.fitness for g in pop])), "population": len(pop),
                                "evaluations": evaluations, "seconds": time.perf_counter() - start})
                bar.update(task_id, best=f"{best.fitness:.4f}")
                generation += 1
                if generation >= config.manager_generations:
                    break
                pop = manager.breed(pop, generation)
                save()
        return save(complete=True)

    if use_ray:
        with ray_session(ray_address) as ray:
            stage_refs = ray.put(setup)
            pool = RayPool(ray, StageWorker, [(stage_refs, d) for d in data], actors_per_stage)
            try:
                wait_for_actors(pool)
                saved = run(pool)
            finally:
                pool.close()
    else:
        pool = InProcessPool(lambda i: StageWorker(setup, data[i]), len(stages))
        saved = run(pool)
    return _result(saved, net.spec, resolution, budget, costs)


def _result(saved: Mapping, spec: ModelSpec, resolution: int, budget: Budget, costs: StageCosts) -> SearchResult:
    pop = [Gene.from_dict(g) for g in saved["population"]]
    best = min(pop, key=lambda g: g.fitness)
    widths: dict[str, int] = {g: spec.groups[g] for g in head_groups(spec)}      # no stage's: full width
    for r in best.results:
        widths.update(r.widths)
    missing = set(spec.groups) - set(widths)
    if missing:
        raise RuntimeError(f"the search left groups {sorted(missing)} without a width")
    arch = Architecture(spec.name, resolution, widths)
    total = float(costs.total(arch.widths))
    if total > budget.value * (1 + 1e-9):
        raise RuntimeError(f"internal error: the chosen network costs {budget.describe(total)} over the budget "
                           f"{budget.describe()}")
    return SearchResult(arch, best.fitness, [r.loss for r in best.results], [r.cost for r in best.results],
                        list(best.budgets), float(costs.fixed(arch.widths)), total, budget, list(saved["history"]),
                        int(saved["evaluations"]), float(saved["seconds"]), str(saved.get("parallel", "in-process")))


__all__ = ["BudgetSplitter", "Gene", "Manager", "SPSearchConfig", "SearchResult", "StageData", "StageResult",
           "StageSetup", "StageTask", "StageWorker", "recalibrate_stage", "search", "stage_data", "stage_evolution"]
