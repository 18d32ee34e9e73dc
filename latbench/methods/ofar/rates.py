"""Step 1 of OFARPruning: the pruning rates ρ that meet each device's constraint at each resolution.

A *rate* ρ is the fraction of all channels pruned by **global BN-γ ranking** (Network Slimming): every
channel of every channel group gets a score, the lowest-scoring ``round(ρ·C)`` channels go. Channels joined
by residual additions form one group (see :class:`~latbench.models.ModelSpec`) and are pruned together, so a
group channel's score aggregates the ``|γ|`` of every BN writing it — the **mean**, so that a residual group
written by ten convs is ranked on the same scale as a group written by one (a sum would make coupled
groups look ten times as important).

A group never shrinks below its *floor*: the narrowest width the latency tables measured for it (a
narrower one could only be extrapolated), the channel multiple, and ``min_width_ratio`` of its width. The
ranking skips a channel whose group sits at its floor, so "prune ``k`` channels" is well defined for
``k = 0 … max_count`` and the kept sets are nested. Widths are rounded (half up) to the tables' channel
multiple.

The cost of the ranking order, ``cost(k)`` for every ``k``, is one vectorised prediction per resolution and
device; the rate of a constraint at a resolution is the smallest ``k`` whose cost fits (an exact scan, not a
bisection, so a table whose interpolant is not monotone in width still gets the least pruning that fits).

>>> plan = find_rates(ranking, costs, BudgetSpec(ratios=(0.7, 0.5)), resolutions=(32, 28, 24))  # doctest: +SKIP
>>> [(r.rate, [t.key for t in r.targets]) for r in plan.rates]                                   # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ...models import Architecture, ModelSpec
from ...search.budget import BudgetError, CostGrid
from ...tables.table import LatencyTable, TableError

__all__ = ["BudgetSpec", "CostModel", "GlobalRanking", "Rate", "RatePlan", "Target", "bn_gamma_scores",
           "architecture", "check_resolutions", "check_tables", "find_rates", "group_multiple", "load_cost_models",
           "round_to_multiple", "structure_floors"]


# ---- scores and the global ranking ----------------------------------------------------------------------

@torch.no_grad()
def bn_gamma_scores(net) -> dict[str, np.ndarray]:
    """Per channel of every group: the mean ``|γ|`` over the BNs of the convs writing the group
    (a :class:`~latbench.models.GraphNet`, a :class:`~latbench.supernet.DynamicNet`, or an imported model's
    :class:`~latbench.models.onnx_torch.OnnxNet` with its BN — see :mod:`latbench.models.onnx_bn`). A group
    that no conv with a BN writes (an imported graph's squeeze-excitation width) scores ``inf``: slimming has
    nothing to rank it by, so it keeps its width."""
    spec: ModelSpec = net.spec
    if spec.source:
        from ...models.onnx_channels import bn_scale_scores

        scores = bn_scale_scores(net.to_onnx(), net.channel_graph())
        return {g: (np.full(w, np.inf) if scores.get(g) is None else scores[g][:w]) for g, w in net.widths.items()}
    sums = {g: np.zeros(w) for g, w in net.widths.items()}
    writers = {g: 0 for g in net.widths}
    for layer in spec.layers:
        if layer.out_group is None or layer.kind not in ("conv", "pointwise", "depthwise"):
            continue
        if layer.kind == "depthwise":
            continue   # keeps its input's group; its input's writers score the group
        gamma = net.block(layer.name).bn.weight.detach().abs().double().cpu().numpy()
        sums[layer.out_group] += gamma[: net.widths[layer.out_group]]
        writers[layer.out_group] += 1
    return {g: s / max(1, writers[g]) for g, s in sums.items()}


def group_multiple(spec: ModelSpec, group: str, multiple: int) -> int:
    """The step of ``group``'s widths: the tables' channel multiple and, for an imported model's grouped convs,
    their number of conv groups (:attr:`ModelSpec.multiples`)."""
    return math.lcm(int(multiple), int(spec.multiples.get(group, 1)))


def round_to_multiple(width: float, full: int, multiple: int, floor: int = 1) -> int:
    """``width`` rounded half up to a multiple of ``multiple``, within ``[max(floor, multiple), full]``
    (a group narrower than ``multiple`` keeps its full width)."""
    if full <= multiple:
        return int(full)
    w = int(math.floor(width / multiple + 0.5)) * multiple
    return int(min(full, max(w, multiple, floor)))


@dataclass
class GlobalRanking:
    """The global pruning order of one set of channel scores, with per-group floors.

    ``prune_order[i] = (group index, channel)`` is the i-th channel pruned; ``max_count`` channels can go
    before every group sits at its floor. ``counts(k)``/``widths(k)``/``mask(k)`` describe the network with
    the first ``k`` of them pruned (raw kept counts / rounded widths / kept-channel mask over all groups
    in ``spec.groups`` order, at the channels' own indices)."""

    spec: ModelSpec
    scores: dict[str, np.ndarray]
    floors: dict[str, int]
    multiple: int
    prune_order: np.ndarray = field(init=False)      # (max_count, 2): group index, channel

    def __post_init__(self) -> None:
        groups = list(self.spec.groups)
        flat_scores = np.concatenate([np.asarray(self.scores[g], dtype=float) for g in groups])
        group_of = np.concatenate([np.full(self.spec.groups[g], i) for i, g in enumerate(groups)])
        channel = np.concatenate([np.arange(self.spec.groups[g]) for g in groups])
        order = np.argsort(flat_scores, kind="stable")           # ties: earlier group, lower channel first
        left = np.array([self.spec.groups[g] for g in groups])
        floor = np.array([self.floors[g] for g in groups])
        picked = []
        for i in order:
            g = group_of[i]
            if left[g] > floor[g] and np.isfinite(flat_scores[i]):      # inf: a channel slimming cannot rank
                left[g] -= 1
                picked.append((g, channel[i]))
        self.prune_order = np.array(picked, dtype=np.int64).reshape(-1, 2)

    @classmethod
    def of(cls, net, floors: Mapping[str, int], multiple: int) -> "GlobalRanking":
        """The ranking of ``net``'s current BN γ."""
        return cls(net.spec, bn_gamma_scores(net), dict(floors), multiple)

    @property
    def total(self) -> int:
        """All channels of all groups (the denominator of a rate)."""
        return int(sum(self.spec.groups.values()))

    @property
    def max_count(self) -> int:
        return int(len(self.prune_order))

    def count_of(self, rate: float) -> int:
        return int(min(self.max_count, round(rate * self.total)))

    def counts_matrix(self, ks: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw kept channels per group (N, G) after pruning the first ``k`` channels, for every ``k``."""
        groups = list(self.spec.groups)
        full = np.array([self.spec.groups[g] for g in groups])
        removed = np.zeros((self.max_count + 1, len(groups)), dtype=np.int64)
        if self.max_count:
            np.add.at(removed[1:], (np.arange(self.max_count), self.prune_order[:, 0]), 1)
            removed = np.cumsum(removed, axis=0)
        return full[None, :] - removed[np.asarray(ks, dtype=np.int64)]

    def widths_matrix(self, ks: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rounded widths (N, G) after pruning ``k`` channels, for every ``k`` of ``ks``."""
        raw = self.counts_matrix(ks)
        groups = list(self.spec.groups)
        out = np.empty_like(raw)
        for j, g in enumerate(groups):
            step = group_multiple(self.spec, g, self.multiple)
            out[:, j] = [round_to_multiple(w, self.spec.groups[g], step, self.floors[g]) for w in raw[:, j]]
        return out

    def counts(self, k: int) -> dict[str, int]:
        return dict(zip(self.spec.groups, (int(v) for v in self.counts_matrix([k])[0])))

    def widths(self, k: int) -> dict[str, int]:
        return dict(zip(self.spec.groups, (int(v) for v in self.widths_matrix([k])[0])))

    def mask(self, k: int) -> np.ndarray:
        """Kept-channel mask (bool, length ``total``) after pruning the first ``k`` channels."""
        offsets = np.cumsum([0] + [self.spec.groups[g] for g in self.spec.groups])[:-1]
        keep = np.ones(self.total, dtype=bool)
        if k:
            sel = self.prune_order[:k]
            keep[offsets[sel[:, 0]] + sel[:, 1]] = False
        return keep


# ---- costs: latency tables and FLOPs ------------------------------------------------------------------

@dataclass
class CostModel:
    """One device's cost of a structure at a resolution: latency (ms) from its table, or FLOPs (MACs).

    ``label`` names the device in reports (the table's device, e.g. ``host:litert``, or ``flops``);
    ``device`` is the table's device name (what :func:`latbench.devices.open_device` opens)."""

    label: str
    kind: str                       # "latency" | "flops"
    spec: ModelSpec
    table_path: str | None = None
    table: LatencyTable | None = None
    predictor: object | None = None

    @property
    def device(self) -> str | None:
        return None if self.table is None else str(self.table.meta.get("device", ""))

    @property
    def unit(self) -> str:
        return "ms" if self.kind == "latency" else "MACs"

    def costs(self, widths: np.ndarray, resolution: int) -> np.ndarray:
        """Cost of every width row (N, G in ``spec.groups`` order) at ``resolution``."""
        widths = np.asarray(widths, dtype=np.int64).reshape(-1, len(self.spec.groups))
        if self.kind == "flops":
            return CostGrid.analytic(self.spec, "flops", resolution).totals(widths)
        from ...predictor import Population

        n = len(widths)
        pop = Population(widths, np.zeros((n, len(self.spec.sparsifiable_layers))), np.full(n, int(resolution)))
        return self.predictor.predict_population(pop)

    def cost(self, widths: Mapping[str, int], resolution: int) -> float:
        return float(self.costs(np.array([[widths[g] for g in self.spec.groups]]), resolution)[0])

    def full(self, resolution: int) -> float:
        return self.cost(dict(self.spec.groups), resolution)

    def floors(self, resolutions: Sequence[int]) -> dict[str, int]:
        """Per group, the narrowest width the table measured at every resolution (1 for FLOPs)."""
        floors = {g: 1 for g in self.spec.groups}
        if self.kind == "flops":
            return floors
        groups = list(self.spec.groups)
        for r in resolutions:
            for _name, axis, col, lo, _hi in self.predictor.compiled(int(r), 1).ranges:
                if axis in ("in_channels", "out_channels") and col >= 0:
                    floors[groups[col]] = max(floors[groups[col]], int(math.ceil(lo - 1e-9)))
        return floors

    def describe(self, value: float) -> str:
        return f"{value:.4g} ms" if self.kind == "latency" else f"{value / 1e6:.4g} MMACs"


def check_tables(paths: Sequence[str | Path], model: str) -> list[LatencyTable]:
    """Load the tables; they must all cover ``model`` (the checkpoint's). Tables of different models are
    named with the models each covers."""
    tables = [LatencyTable.load(p) for p in paths]
    covered = {str(p): tuple(t.meta.get("models") or ()) for p, t in zip(paths, tables)}
    wrong = {p: m for p, m in covered.items() if m and model not in m}
    if wrong:
        kinds = {m for m in covered.values() if m}
        what = "tables of different models" if len(kinds) > 1 else "a table of another model"
        listing = "; ".join(f"{p} covers {list(m) or '?'}" for p, m in covered.items())
        raise TableError(f"{what}: {listing}; the checkpoint is a {model}. Give tables profiled for {model} "
                         f"(`latbench profile {model} --table …`)")
    return tables


def load_cost_models(spec: ModelSpec, table_paths: Sequence[str | Path], flops: bool = False) -> list[CostModel]:
    """One :class:`CostModel` per table (labelled by its device; the file name is added when two tables name
    the same device), plus FLOPs when asked."""
    from ...predictor import Predictor

    tables = check_tables(table_paths, spec.name)
    devices = [str(t.meta.get("device") or Path(p).stem) for p, t in zip(table_paths, tables)]
    models = []
    for p, t, d in zip(table_paths, tables, devices):
        label = d if devices.count(d) == 1 else f"{d}:{Path(p).stem}"
        models.append(CostModel(label, "latency", spec, str(p), t, Predictor(spec, t)))
    if flops:
        models.append(CostModel("flops", "flops", spec))
    if not models:
        raise BudgetError("give at least one latency table (--table) or ask for FLOPs budgets")
    return models


def check_resolutions(costs: Sequence[CostModel], resolutions: Sequence[int]) -> None:
    """Every table must cover every resolution without extrapolating: else an error naming the table,
    its device and the resolutions (input sizes of the first layer) it was profiled at."""
    from ...layers import signature_of

    problems = []
    for c in costs:
        if c.kind != "latency":
            continue
        missing = [r for r in resolutions if not c.predictor.covers(int(r))]
        if missing:
            stem = c.predictor.layers[0]
            sizes = c.table.input_sizes(signature_of(stem).key)
            problems.append(f"table {c.table_path} ({c.label}) does not cover resolution(s) {missing}: it was "
                            f"profiled at {sizes} (resolutions between them interpolate)")
    if problems:
        raise TableError("; ".join(problems) + ". Profile those resolutions (`latbench profile MODEL --resolution "
                         "R … --table …`) or drop them from --resolutions")


def structure_floors(spec: ModelSpec, costs: Sequence[CostModel], resolutions: Sequence[int], multiple: int,
                     min_width_ratio: float) -> dict[str, int]:
    """Per group the narrowest width any structure may have (see the module docstring), a multiple of
    ``multiple`` unless the group is narrower."""
    floors = {}
    for g, full in spec.groups.items():
        lo = max([1, int(math.ceil(min_width_ratio * full))] + [c.floors(resolutions)[g] for c in costs])
        step = group_multiple(spec, g, multiple)
        floors[g] = int(min(full, max(step, int(math.ceil(lo / step)) * step)))
    return floors


# ---- budgets, targets and rates -----------------------------------------------------------------------

@dataclass(frozen=True)
class BudgetSpec:
    """Budgets applied to every device: ``ratios`` of each device's full-network cost at the largest
    resolution; ``ms`` absolute latency (latency devices); ``flops`` absolute MACs (the FLOPs device)."""

    ratios: tuple[float, ...] = ()
    ms: tuple[float, ...] = ()
    flops: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ratios", "ms", "flops"):
            object.__setattr__(self, name, tuple(dict.fromkeys(float(v) for v in getattr(self, name))))
        if not (self.ratios or self.ms or self.flops):
            raise BudgetError("give at least one budget: --budget-ratio, --budget-ms or --budget-flops")
        bad = [r for r in self.ratios if not 0 < r <= 1]
        if bad:
            raise BudgetError(f"--budget-ratio must be in (0, 1], got {bad}")
        bad = [v for v in self.ms + self.flops if not np.isfinite(v) or v <= 0]
        if bad:
            raise BudgetError(f"budgets must be positive, got {bad}")

    def for_device(self, cost: CostModel, full: float) -> list[tuple[float, float | None, str]]:
        """(value, ratio or None, label) of every budget that applies to ``cost``'s device."""
        out = [(r * full, r, f"{r:g}") for r in self.ratios]
        absolute = self.ms if cost.kind == "latency" else self.flops
        out += [(v, None, f"{v:g}{'ms' if cost.kind == 'latency' else 'macs'}") for v in absolute]
        return sorted(out, key=lambda b: -b[0])          # constraints in descending order, as the paper sorts them


@dataclass(frozen=True)
class Target:
    """One (device, budget, resolution) constraint."""

    device: str
    budget: float
    ratio: float | None
    label: str
    resolution: int

    @property
    def key(self) -> str:
        return f"{self.device}/{self.label}/r{self.resolution}"

    @property
    def budget_key(self) -> str:
        return f"{self.device}/{self.label}"

    def to_dict(self) -> dict:
        return {"device": self.device, "budget": self.budget, "ratio": self.ratio, "label": self.label,
                "resolution": self.resolution}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Target":
        return cls(str(d["device"]), float(d["budget"]), None if d.get("ratio") is None else float(d["ratio"]),
                   str(d["label"]), int(d["resolution"]))


@dataclass(frozen=True)
class Rate:
    """A pruning rate: ``count`` of ``total`` channels pruned, and the constraints it was found for."""

    count: int
    rate: float
    targets: tuple[Target, ...]

    def to_dict(self) -> dict:
        return {"count": self.count, "rate": self.rate, "targets": [t.to_dict() for t in self.targets]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Rate":
        return cls(int(d["count"]), float(d["rate"]), tuple(Target.from_dict(t) for t in d["targets"]))


@dataclass
class RatePlan:
    """The rates (ascending), the budgets per device, and what each device can reach at all."""

    rates: list[Rate]
    budgets: dict[str, list[dict]]            # device → [{"value", "ratio", "label"}] (descending)
    full: dict[str, float]                    # device → full-network cost at the largest resolution
    smallest: dict[str, dict]                 # device → {"cost", "resolution"}: the floor structure's best
    floors: dict[str, int]
    multiple: int
    resolutions: tuple[int, ...]
    total: int

    def to_dict(self) -> dict:
        return {"rates": [r.to_dict() for r in self.rates], "budgets": self.budgets, "full": self.full,
                "smallest": self.smallest, "floors": self.floors, "multiple": self.multiple,
                "resolutions": list(self.resolutions), "total": self.total}

    @classmethod
    def from_dict(cls, d: Mapping) -> "RatePlan":
        return cls([Rate.from_dict(r) for r in d["rates"]], {k: list(v) for k, v in d["budgets"].items()},
                   {k: float(v) for k, v in d["full"].items()}, dict(d["smallest"]),
                   {k: int(v) for k, v in d["floors"].items()}, int(d["multiple"]),
                   tuple(int(r) for r in d["resolutions"]), int(d["total"]))

    @property
    def targets(self) -> list[Target]:
        return [t for r in self.rates for t in r.targets]


def find_rates(ranking: GlobalRanking, costs: Sequence[CostModel], budgets: BudgetSpec,
               resolutions: Sequence[int]) -> RatePlan:
    """The rate of every (device, budget, resolution) whose budget the ranking's structures can meet at
    that resolution; rates shared by several constraints are one rate. A budget that no (structure,
    resolution) meets is an error naming, per device, the smallest cost reachable."""
    resolutions = tuple(sorted({int(r) for r in resolutions}, reverse=True))
    if not resolutions:
        raise BudgetError("give at least one resolution")
    ks = np.arange(ranking.max_count + 1)
    widths = ranking.widths_matrix(ks)
    unique, inverse = np.unique(widths, axis=0, return_inverse=True)
    by_count: dict[int, list[Target]] = {}
    budgets_out, full_out, smallest, unmet = {}, {}, {}, []
    ordered = sorted(costs, key=lambda c: -c.full(resolutions[0]))       # c_1 > … > c_n
    for c in ordered:
        full = c.full(resolutions[0])
        full_out[c.label] = full
        per_res = {r: c.costs(unique, r)[np.asarray(inverse).ravel()] for r in resolutions}
        best_r = min(resolutions, key=lambda r: float(per_res[r].min()))
        smallest[c.label] = {"cost": float(per_res[best_r].min()), "resolution": int(best_r)}
        budgets_out[c.label] = []
        for value, ratio, label in budgets.for_device(c, full):
            budgets_out[c.label].append({"value": value, "ratio": ratio, "label": label})
            met = False
            for r in resolutions:
                fits = np.flatnonzero(per_res[r] <= value * (1 + 1e-9))
                if fits.size:
                    met = True
                    by_count.setdefault(int(fits[0]), []).append(Target(c.label, float(value), ratio, label, r))
            if not met:
                unmet.append((c, label, value))
    if unmet:
        lines = [f"{label} ({c.describe(v)}) on {c.label}" for c, label, v in unmet]
        reach = "; ".join(f"{c.label}: {c.describe(smallest[c.label]['cost'])} at resolution "
                          f"{smallest[c.label]['resolution']}" for c in ordered)
        raise BudgetError(f"no (structure, resolution) meets {', '.join(lines)}. The smallest reachable — every group "
                          f"at its narrowest width ({ranking.floors}) — is {reach}. Relax the budget, add a lower "
                          "resolution, or profile narrower widths / lower --min-width-ratio")
    rates = [Rate(k, k / ranking.total, tuple(by_count[k])) for k in sorted(by_count)]
    return RatePlan(rates, budgets_out, full_out, smallest, dict(ranking.floors), ranking.multiple, resolutions,
                    ranking.total)


def architecture(spec: ModelSpec, widths: Mapping[str, int], resolution: int) -> Architecture:
    return Architecture(spec.name, int(resolution), dict(widths))
