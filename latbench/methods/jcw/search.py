"""JCW's multi-objective evolutionary search over channel widths and weight sparsity.

JCW (Zhao et al., "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices") searches
pruned networks (C, S) — a width per channel group, a weight sparsity per conv — for the accuracy ×
latency Pareto front, with latency from a device lookup table. This module is the search; the accuracy
estimate is pluggable (:class:`Evaluator`; a weight-sharing supernet in the paper, retrained on the
population every generation through the evaluator's ``update`` hook).

One generation (see docs/jcw.md):

1. offspring Q from the population P by SBX + polynomial mutation on genomes in [0, 1]^d
   (:mod:`latbench.search.nsga`),
2. genomes decoded to architectures (rounding, lower bounds, channel multiple, sparsity range),
3. latency of P ∪ Q in **one** :meth:`Predictor.predict_population` call,
4. ``evaluator.update(P ∪ Q)`` (optional), then ``evaluator.evaluate(P ∪ Q)`` → losses,
5. uniform non-dominated sorting selection → next P; the state is written, so a run can be resumed.

>>> search = JCWSearch(spec, Predictor(spec, table), evaluator, SearchConfig(population=64))  # doctest: +SKIP
>>> result = search.run("runs/jcw")          # state.json, history.jsonl, front.jsonl, frontier.png
>>> result.density_by_latency(5)             # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd
from annotated_types import Ge, Gt, Le

from ...files import atomic_save_figure, atomic_write_json, atomic_write_text, parse_json, read_json
from ...layers import signature_of
from ...models.arch import Architecture
from ...models.spec import CONV_KINDS, ModelSpec
from ...predictor import Population, Predictor
from ...recipe import Choice, Opt
from ...tables.table import LatencyTable, knot_range
from ...search import nsga

STATE_FORMAT = "latbench-jcw-search/1"
# Default survivors per latency target. With one target per survivor each target's only pick is the
# candidate nearest to it, whatever its loss: the population spreads but improves more slowly (docs/jcw.md).
PICKS_PER_TARGET = 4


class SearchError(ValueError):
    """A search that cannot run as configured, or a run directory that does not belong to it."""


# ---- configuration ----------------------------------------------------------------------------------

class SparsityWhere(Choice):
    """Where JCW searches weight sparsity (see :class:`SearchConfig`)."""

    credited = "credited"    # only where the table credits sparsity with a significant speed-up
    measured = "measured"    # the table's whole sparsity range (the paper's setting)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search (all of it except ``generations`` must match to resume a run).

    Widths: group ``g`` keeps at least ``ratio·C_max(g)`` channels, ``ratio`` being
    ``group_min_width_ratio[g]`` if given, else ``coupled_min_width_ratio`` for groups joined by a
    residual addition or written by a strided conv (see :func:`coupled_groups`), else
    ``min_width_ratio``; never fewer than the table's smallest measured channel count. Widths are
    rounded to ``channel_multiple`` (``None``: the table's ``meta["channel_multiple"]``, else 1).
    Sparsity: clipped to [0, min(max_sparsity, the table's sparsity range)], snapped to multiples of
    ``sparsity_step`` if given; ``channel_only`` fixes it at 0 (the channel-pruning baseline).
    ``sparsity_where="credited"`` searches a conv's sparsity only up to the highest level at which the table
    credits its signature with a significant speed-up (``meta["sparsity_axis"]``, see
    :mod:`latbench.tables.sparsity`; tables without that record count as credited everywhere): on a device
    where sparse kernels are no faster the search does not spend its budget on sparsity. ``"measured"``
    searches the table's whole sparsity range (the paper's setting).
    ``latency_limits`` (ms, either end ``None``): architectures outside are kept only when too few are
    inside. Operators: JCW's values (SBX eta 0.5, polynomial mutation eta 15 with per-gene probability 0.1).
    """

    population: Annotated[int, Ge(2)] = 64
    generations: Annotated[int, Ge(0)] = 30
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0
    resolution: Annotated[int | None, Ge(1), Opt(help="input resolution (default: the data's)")] = None
    channel_only: Annotated[bool, Opt(help="search widths only, sparsity fixed at 0 (baseline)")] = False
    sparsity_where: Annotated[SparsityWhere, Opt(help="credited: search a conv's sparsity only where the table "
                                                      "credits it with a significant speed-up (see `latbench table "
                                                      "sparsity`); measured: the table's whole sparsity range")
                              ] = SparsityWhere.credited
    min_width_ratio: Annotated[float, Gt(0), Le(1), Opt(help="narrowest width of a group, as a fraction")] = 0.25
    coupled_min_width_ratio: Annotated[float, Gt(0), Le(1), Opt(help="the same for groups tied by residual adds or "
                                                                     "strided convs")] = 0.5
    group_min_width_ratio: Mapping[str, float] = field(default_factory=dict)
    channel_multiple: int | None = None
    max_sparsity: Annotated[float, Ge(0), Le(1), Opt(help="largest weight sparsity of a conv")] = 0.9
    sparsity_step: Annotated[float | None, Gt(0), Opt(help="snap sparsities to multiples of this")] = None
    latency_limits: tuple[float | None, float | None] = (None, None)
    n_targets: int | None = None             # latency targets per selection; None: ⌈population / 4⌉
    crossover_eta: float = 0.5
    crossover_prob_var: float = 1.0
    mutation_eta: float = 15.0
    mutation_prob: float = 0.1
    initial: Annotated[tuple[Architecture, ...], Opt(cli=False)] = ()   # architectures placed in the first population

    def __post_init__(self) -> None:
        problems = []
        if self.population < 2:
            problems.append(f"population={self.population} (need ≥ 2)")
        if self.generations < 0:
            problems.append(f"generations={self.generations} (need ≥ 0)")
        for name in ("min_width_ratio", "coupled_min_width_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} (need a ratio in (0, 1])")
        if self.sparsity_where not in ("credited", "measured"):
            problems.append(f"sparsity_where={self.sparsity_where!r} (need 'credited' or 'measured')")
        bad = {g: r for g, r in self.group_min_width_ratio.items() if not 0.0 < r <= 1.0}
        if bad:
            problems.append(f"group_min_width_ratio {bad} (need ratios in (0, 1])")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            problems.append(f"channel_multiple={self.channel_multiple} (need ≥ 1)")
        if not 0.0 <= self.max_sparsity < 1.0:
            problems.append(f"max_sparsity={self.max_sparsity} (need [0, 1))")
        if self.sparsity_step is not None and not 0.0 < self.sparsity_step <= 1.0:
            problems.append(f"sparsity_step={self.sparsity_step} (need (0, 1])")
        lo, hi = self.latency_limits
        if lo is not None and hi is not None and lo > hi:
            problems.append(f"latency_limits={self.latency_limits} (lower above upper)")
        if self.n_targets is not None and self.n_targets < 1:
            problems.append(f"n_targets={self.n_targets} (need ≥ 1)")
        if len(self.initial) > self.population:
            problems.append(f"{len(self.initial)} initial architectures for a population of {self.population}")
        if problems:
            raise SearchError("invalid search configuration: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["group_min_width_ratio"] = dict(sorted(self.group_min_width_ratio.items()))
        d["latency_limits"] = list(self.latency_limits)
        d["initial"] = [a.to_dict() for a in self.initial]
        return d


def coupled_groups(spec: ModelSpec) -> set[str]:
    """Channel groups joined by a residual addition or written by a strided conv.

    Pruning such a group thins every block of a residual stage at once, or the downsampling layer that
    sets a stage's information budget; they get the tighter ``coupled_min_width_ratio`` by default."""
    return {layer.out_group for layer in spec.layers if layer.out_group is not None
            and (layer.residual is not None or (layer.stride > 1 and layer.kind in CONV_KINDS))}


def conv_weight_counts(spec: ModelSpec, widths: np.ndarray) -> np.ndarray:
    """Dense weight count of every sparsifiable conv (columns of ``spec.sparsifiable_layers``) for each
    row of ``widths`` (N, groups)."""
    widths = np.atleast_2d(np.asarray(widths))
    col = {g: i for i, g in enumerate(spec.groups)}
    counts = []
    for name in spec.sparsifiable_layers:
        layer = spec.layer(name)
        cin = widths[:, col[layer.in_group]] if layer.in_group is not None else np.full(len(widths), layer.fixed_in)
        cout = widths[:, col[layer.out_group]] if layer.out_group is not None else np.full(len(widths), layer.fixed_out)
        per_out = 1 if layer.kind == "depthwise" else cin
        counts.append(per_out * cout * layer.kernel ** 2)
    return np.stack(counts, axis=1).astype(float)


# ---- encoding ---------------------------------------------------------------------------------------

def credited_sparsity(table, signature: str) -> float:
    """The highest sparsity at which ``table`` credits ``signature`` with a significant speed-up (0: none;
    ``inf`` when the table carries no such record, e.g. published tables)."""
    levels = (table.meta.get("sparsity_axis") or {}).get("levels")
    if levels is None:
        return math.inf
    credited = [float(level) for level, r in levels.get(signature, {}).items() if r.get("credited")]
    return max(credited, default=0.0)


@dataclass(frozen=True, eq=False)
class ArchitectureEncoding:
    """Genome f(C, S) = (C / C_max, S) ∈ [0, 1]^d and back.

    The genome has one gene per channel group (``groups``) and, unless the search is channel-only, one
    per sparsifiable conv whose table has a sparsity range (``sparse_layers``; convs the table measured
    dense only stay at 0). Decoding rounds ``f·C_max`` to the nearest ``channel_multiple`` and clips it
    to [``min_widths``, C_max]; sparsity is clipped to [0, ``max_sparsity``] per layer and snapped to
    ``sparsity_step``. Many genomes decode to one architecture: the genome is the search state, the
    architecture (phenotype) is what is measured, evaluated and deduplicated.
    """

    spec: ModelSpec
    resolution: int
    groups: tuple[str, ...]
    full_widths: np.ndarray          # (G,)
    min_widths: np.ndarray           # (G,)
    channel_multiple: int
    sparse_layers: tuple[str, ...]   # searched sparsity genes, in spec.sparsifiable_layers order
    max_sparsity: np.ndarray         # (len(sparse_layers),)
    sparsity_step: float | None

    @classmethod
    def for_search(cls, spec: ModelSpec, predictor: Predictor, config: SearchConfig) -> ArchitectureEncoding:
        """Bounds from ``config`` intersected with what ``predictor``'s table covers at the resolution."""
        resolution = int(config.resolution or spec.base_resolution)
        hw = spec.input_hw(resolution)
        table = predictor.table
        groups = tuple(spec.groups)
        unknown = set(config.group_min_width_ratio) - set(groups)
        if unknown:
            raise SearchError(f"group_min_width_ratio names unknown groups {sorted(unknown)}; "
                              f"{spec.name} has {', '.join(groups)}")
        table_lo = dict.fromkeys(groups, 1.0)
        table_hi = dict.fromkeys(groups, math.inf)
        table_sparsity: dict[str, float] = {}
        for layer in predictor.layers:
            sig = signature_of(layer)
            for axis, group in (("in_channels", layer.in_group), ("out_channels", layer.out_group)):
                if axis in sig.variable_axes and group is not None:
                    lo, hi = knot_range(table, sig.key, hw[layer.name], axis)
                    table_lo[group], table_hi[group] = max(table_lo[group], lo), min(table_hi[group], hi)
            if layer.sparsifiable:
                _, hi = knot_range(table, sig.key, hw[layer.name], "sparsity")
                table_sparsity[layer.name] = float(hi) if np.isfinite(hi) else 0.0
                if config.sparsity_where == "credited":
                    table_sparsity[layer.name] = min(table_sparsity[layer.name], credited_sparsity(table, sig.key))
        multiple = int(config.channel_multiple or table.meta.get("channel_multiple") or 1)
        coupled = coupled_groups(spec)
        full = np.array([spec.groups[g] for g in groups], dtype=np.int64)
        mins = []
        for g, c in zip(groups, full):
            if table_hi[g] < c:
                raise SearchError(f"the table covers group {g!r} of {spec.name} only up to {table_hi[g]:g} channels, "
                                  f"below its full width {c}; measure a wider grid")
            ratio = config.group_min_width_ratio.get(
                g, config.coupled_min_width_ratio if g in coupled else config.min_width_ratio)
            lowest = max(1, math.ceil(ratio * c - 1e-9), math.ceil(table_lo[g] - 1e-9))
            mins.append(min(int(c), multiple * math.ceil(lowest / multiple)))
        step = config.sparsity_step
        sparse, caps = [], []
        if not config.channel_only:
            for name in spec.sparsifiable_layers:
                cap = min(config.max_sparsity, table_sparsity.get(name, 0.0))
                if step:
                    cap = math.floor(cap / step + 1e-9) * step
                if cap > 0:
                    sparse.append(name)
                    caps.append(cap)
        return cls(spec, resolution, groups, full, np.array(mins, dtype=np.int64), multiple, tuple(sparse),
                   np.array(caps, dtype=float), step)

    @property
    def dim(self) -> int:
        return len(self.groups) + len(self.sparse_layers)

    @property
    def _sparse_columns(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.spec.sparsifiable_layers)}
        return np.array([index[name] for name in self.sparse_layers], dtype=np.int64)

    def decode(self, genomes: np.ndarray) -> Population:
        genomes = np.asarray(genomes, dtype=float)
        if genomes.ndim != 2 or genomes.shape[1] != self.dim:
            raise SearchError(f"genomes must have shape (N, {self.dim}) for this encoding, got {genomes.shape}")
        n, g = len(genomes), len(self.groups)
        widths = np.round(genomes[:, :g] * self.full_widths / self.channel_multiple) * self.channel_multiple
        widths = np.clip(widths, self.min_widths, self.full_widths).astype(np.int64)
        sparsity = np.zeros((n, len(self.spec.sparsifiable_layers)))
        if self.sparse_layers:
            s = np.clip(genomes[:, g:], 0.0, self.max_sparsity)
            if self.sparsity_step:
                s = np.minimum(np.round(np.round(s / self.sparsity_step) * self.sparsity_step, 10), self.max_sparsity)
            sparsity[:, self._sparse_columns] = s
        return Population(widths, sparsity, np.full(n, self.resolution, dtype=np.int64))

    def encode(self, pop: Population) -> np.ndarray:
        """The genome of each architecture of ``pop``; decode(encode(p)) == p for architectures within the
        bounds whose widths are multiples of ``channel_multiple`` (or full) and sparsities on the lattice."""
        return np.hstack([pop.widths / self.full_widths, pop.sparsity[:, self._sparse_columns]])

    def encode_architectures(self, archs: Sequence[Architecture]) -> np.ndarray:
        for a in archs:
            a.validate(self.spec)
            if a.resolution != self.resolution:
                raise SearchError(f"architecture at resolution {a.resolution}; this search runs at {self.resolution}")
        return self.encode(Population.from_architectures(self.spec, archs))

    def architectures(self, pop: Population) -> list[Architecture]:
        names = self.spec.sparsifiable_layers
        return [Architecture(self.spec.name, int(r), dict(zip(self.groups, w.tolist())), dict(zip(names, s.tolist())))
                for w, s, r in zip(pop.widths, pop.sparsity, pop.resolution)]


# ---- evaluators -------------------------------------------------------------------------------------

@runtime_checkable
class Evaluator(Protocol):
    """Accuracy side of the search: a loss (lower is better; e.g. 1 − top-1 accuracy) per architecture.

    An evaluator may also define ``update(archs)``: it is called once per generation with P ∪ Q before
    ``evaluate``, which is where a weight-sharing supernet is trained on the current population (JCW's
    Algorithm 4)."""

    def evaluate(self, archs: Sequence[Architecture]) -> np.ndarray: ...


@dataclass
class SyntheticEvaluator:
    """A known, smooth stand-in for a trained network's loss, for tests, benchmarks and dry runs.

    loss = Σ_l share_l · [(1 − k_l)² + sparsity_cost · s_l²] over sparsifiable convs, where ``share_l``
    is the layer's share of the full network's conv weights, ``k_l`` the fraction of its dense weights
    that its channel widths keep and ``s_l`` its weight sparsity. 0 for the full dense network; removing
    weights by sparsity costs less than removing them by channels (``sparsity_cost`` < 1), the premise
    under which joint channel and weight pruning pays off where sparse kernels are fast.
    """

    spec: ModelSpec
    sparsity_cost: float = 0.5

    def evaluate(self, archs: Sequence[Architecture]) -> np.ndarray:
        pop = Population.from_architectures(self.spec, archs)
        full = conv_weight_counts(self.spec, np.array([list(self.spec.groups.values())]))[0]
        kept = conv_weight_counts(self.spec, pop.widths) / full
        return ((1.0 - kept) ** 2 + self.sparsity_cost * pop.sparsity ** 2) @ (full / full.sum())


# ---- results ----------------------------------------------------------------------------------------

@dataclass
class GenerationRecord:
    """The population after selection in one generation (generation 0: the initial population)."""

    generation: int
    widths: np.ndarray       # (N, groups)
    sparsity: np.ndarray     # (N, sparsifiable convs)
    latency_ms: np.ndarray
    loss: np.ndarray

    def to_json(self) -> str:
        return json.dumps({"generation": self.generation, "widths": self.widths.tolist(),
                           "sparsity": self.sparsity.tolist(), "latency_ms": self.latency_ms.tolist(),
                           "loss": self.loss.tolist()})

    @classmethod
    def from_dict(cls, d: Mapping) -> GenerationRecord:
        return cls(int(d["generation"]), np.array(d["widths"], dtype=np.int64), np.array(d["sparsity"], dtype=float),
                   np.array(d["latency_ms"], dtype=float), np.array(d["loss"], dtype=float))

    @property
    def density(self) -> np.ndarray:
        """1 − mean sparsity over the sparsifiable convs, per architecture."""
        return 1.0 - self.sparsity.mean(axis=1)

    def front(self) -> np.ndarray:
        """Indices of the distinct non-dominated architectures on (loss, latency), by latency."""
        _, first = np.unique(np.hstack([self.widths, self.sparsity]), axis=0, return_index=True)
        F = np.column_stack([self.loss[first], self.latency_ms[first]])
        best = first[nsga.non_dominated_ranks(F) == 0]
        return best[np.argsort(self.latency_ms[best], kind="stable")]


@dataclass
class SearchTiming:
    """Wall time by part (s). ``operators``: variation, decoding and selection; ``io``: state files."""

    latency_s: float = 0.0
    evaluate_s: float = 0.0
    update_s: float = 0.0
    operators_s: float = 0.0
    io_s: float = 0.0
    total_s: float = 0.0
    latency_calls: int = 0
    architectures_predicted: int = 0

    def shares(self) -> dict[str, float]:
        total = self.total_s or 1.0
        parts = ("latency_s", "evaluate_s", "update_s", "operators_s", "io_s")
        return {k[:-2]: getattr(self, k) / total for k in parts}


@dataclass
class SearchResult:
    encoding: ArchitectureEncoding
    history: list[GenerationRecord]
    timing: SearchTiming
    full_latency_ms: float           # the full dense network, for relative latency

    @property
    def final(self) -> GenerationRecord:
        return self.history[-1]

    def front_architectures(self, record: GenerationRecord | None = None) -> list[Architecture]:
        record = record or self.final
        idx = record.front()
        return self.encoding.architectures(Population(record.widths[idx], record.sparsity[idx],
                                                      np.full(len(idx), self.encoding.resolution)))

    def front_frame(self, record: GenerationRecord | None = None) -> pd.DataFrame:
        """The Pareto set: one row per architecture with latency, loss and densities, by latency."""
        record = record or self.final
        idx = record.front()
        pop = Population(record.widths[idx], record.sparsity[idx], np.full(len(idx), self.encoding.resolution))
        return self.frame(pop, record.latency_ms[idx], record.loss[idx])

    def frame(self, pop: Population, latency_ms: np.ndarray, loss: np.ndarray) -> pd.DataFrame:
        """One row per architecture of ``pop`` (the front's columns): predicted latency, absolute and relative to
        the full network, the search's loss, density (1 − mean sparsity) and weight density (share of the dense
        conv weights kept nonzero)."""
        latency_ms = np.asarray(latency_ms, dtype=float)
        counts = conv_weight_counts(self.encoding.spec, pop.widths)
        kept = ((1.0 - pop.sparsity) * counts).sum(axis=1) / counts.sum(axis=1)
        return pd.DataFrame({"architecture": self.encoding.architectures(pop), "latency_ms": latency_ms,
                             "relative_latency": latency_ms / self.full_latency_ms, "loss": np.asarray(loss, float),
                             "density": 1.0 - pop.sparsity.mean(axis=1), "weight_density": kept})

    def write_front(self, path: str | Path) -> Path:
        """The final Pareto set as JSON lines: the architecture's fields plus latency, loss and density."""
        path = Path(path)
        rows = self.front_frame()
        lines = [json.dumps({**row.architecture.to_dict(), "latency_ms": float(row.latency_ms), "loss": float(row.loss),
                             "density": float(row.density), "weight_density": float(row.weight_density)}) + "\n"
                 for row in rows.itertuples(index=False)]
        return atomic_write_text(path, "".join(lines))

    def density_by_latency(self, bins: int | Sequence[float] = 5, relative: bool = True) -> pd.DataFrame:
        """Mean density (1 − mean sparsity) of the final front in latency bins.

        ``bins``: a number of equal-width bins over the front's latency range, or explicit edges.
        ``relative``: latency as a fraction of the full dense network's (comparable across devices).
        Also reports the weight density (share of the dense conv weights kept nonzero) and the loss."""
        front = self.front_frame()
        x = front.relative_latency.to_numpy() if relative else front.latency_ms.to_numpy()
        edges = np.linspace(x.min(), x.max(), int(bins) + 1) if np.isscalar(bins) else np.asarray(bins, dtype=float)
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        inside = (x >= edges[0]) & (x <= edges[-1])
        rows = []
        for b in range(len(edges) - 1):
            sel = front[inside & (which == b)]
            rows.append({"latency_lo": edges[b], "latency_hi": edges[b + 1], "n": len(sel),
                         "mean_density": sel.density.mean() if len(sel) else np.nan,
                         "mean_weight_density": sel.weight_density.mean() if len(sel) else np.nan,
                         "mean_loss": sel.loss.mean() if len(sel) else np.nan})
        return pd.DataFrame(rows)

    def plot_frontier(self, path: str | Path, generations: Sequence[int] | None = None, title: str = "") -> Path:
        """Loss against latency, one colour per generation (JCW's Fig. 1): each chosen generation's
        population as dots and its Pareto front as a step line. Default: up to 8 generations, evenly spaced."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        last = self.final.generation
        if generations is None:
            generations = sorted({round(float(g)) for g in np.linspace(0, last, min(8, last + 1))})
        by_gen = {r.generation: r for r in self.history}
        missing = [g for g in generations if g not in by_gen]
        if missing:
            raise SearchError(f"generations {missing} are not in this search's history (0..{last})")
        cmap = plt.get_cmap("viridis")
        fig, ax = plt.subplots(figsize=(6.5, 4.8))
        for g in generations:
            r = by_gen[g]
            colour = cmap(g / max(last, 1))
            ax.scatter(r.latency_ms, r.loss, s=9, color=colour, alpha=0.35, linewidths=0)
            f = r.front()
            ax.step(r.latency_ms[f], r.loss[f], where="post", color=colour, lw=1.4, label=f"generation {g}")
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel("loss")
        ax.set_title(title or f"{self.encoding.spec.name}: population and front by generation", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        atomic_save_figure(path, fig, dpi=120)
        plt.close(fig)
        return Path(path)


# ---- the search -------------------------------------------------------------------------------------

class _Stopwatch:
    """Adds the wall time of a ``with`` block to one field of a :class:`SearchTiming`."""

    def __init__(self, timing: SearchTiming, field_name: str) -> None:
        self.timing, self.field = timing, field_name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        setattr(self.timing, self.field, getattr(self.timing, self.field) + time.perf_counter() - self.start)


class JCWSearch:
    """JCW's evolutionary search of (widths, sparsity) for the loss × latency Pareto front.

    ``predictor`` gives latency from a device table (e.g. the imported JCW phone table or a host table);
    ``evaluator`` gives losses (:class:`Evaluator`). See the module docstring and docs/jcw.md.
    """

    def __init__(self, spec: ModelSpec, predictor: Predictor, evaluator: Evaluator,
                 config: SearchConfig | None = None) -> None:
        if not callable(getattr(evaluator, "evaluate", None)):
            raise SearchError(f"the evaluator {type(evaluator).__name__} has no evaluate(archs) method")
        if predictor.spec.name != spec.name:
            raise SearchError(f"the predictor is for {predictor.spec.name!r}, the search for {spec.name!r}")
        self.spec, self.predictor, self.evaluator = spec, predictor, evaluator
        self.config = config or SearchConfig()
        self.encoding = ArchitectureEncoding.for_search(spec, predictor, self.config)
        full = Population(self.encoding.full_widths[None, :], np.zeros((1, len(spec.sparsifiable_layers))),
                          np.array([self.encoding.resolution]))
        self.full_latency_ms = float(predictor.predict_population(full)[0])   # also checks the resolution
        self.initial_genomes = self.encoding.encode_architectures(list(self.config.initial)) if self.config.initial \
            else np.zeros((0, self.encoding.dim))

    # -- one generation's parts -----------------------------------------------------------------------
    def initial_population(self, rng: np.random.Generator) -> np.ndarray:
        """Genomes uniform in [0, 1]^d; ``config.initial`` architectures take the first rows."""
        genomes = rng.random((self.config.population, self.encoding.dim))
        genomes[: len(self.initial_genomes)] = self.initial_genomes
        return genomes

    def offspring(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """N children: parents paired at random (a shuffled population, consecutive pairs), SBX per pair,
        then polynomial mutation of every child."""
        n, cfg = len(parents), self.config
        order = rng.permutation(n)
        if n % 2:
            order = np.r_[order, rng.integers(n)]
        a, b = parents[order[0::2]], parents[order[1::2]]
        child_a, child_b = nsga.sbx_crossover(a, b, cfg.crossover_eta, rng, cfg.crossover_prob_var)
        children = np.vstack([child_a, child_b])[:n]
        return nsga.polynomial_mutation(children, cfg.mutation_eta, cfg.mutation_prob, rng)

    def select(self, pop: Population, latency: np.ndarray, loss: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Indices of the N survivors among the candidates.

        Distinct architectures within ``latency_limits`` are selected by uniform non-dominated sorting;
        if there are fewer than N of them, all are kept and the rest is filled with the distinct ones
        closest to the limits, then duplicates (by distance to the limits, then loss)."""
        n = self.config.population
        _, first = np.unique(np.hstack([pop.widths, pop.sparsity]), axis=0, return_index=True)
        lo, hi = self.config.latency_limits
        violation = np.maximum(0.0, (lo if lo is not None else -np.inf) - latency) + \
            np.maximum(0.0, latency - (hi if hi is not None else np.inf))
        eligible = first[violation[first] == 0]
        if len(eligible) >= n:
            targets = self.config.n_targets or math.ceil(n / PICKS_PER_TARGET)
            picks = nsga.uniform_nondominated_selection(loss[eligible], latency[eligible], n, rng, targets)
            return eligible[picks]
        duplicate = np.ones(len(latency), dtype=bool)
        duplicate[first] = False
        rest = np.setdiff1d(np.arange(len(latency)), eligible)
        rest = rest[np.lexsort((loss[rest], violation[rest], duplicate[rest]))]
        return np.r_[eligible, rest[: n - len(eligible)]]

    def _evaluate(self, genomes: np.ndarray, timing: SearchTiming,
                  update: bool) -> tuple[Population, np.ndarray, np.ndarray]:
        with _Stopwatch(timing, "operators_s"):
            pop = self.encoding.decode(genomes)
        with _Stopwatch(timing, "latency_s"):
            latency = self.predictor.predict_population(pop)     # the whole of P ∪ Q in one call
        timing.latency_calls += 1
        timing.architectures_predicted += len(pop)
        with _Stopwatch(timing, "operators_s"):
            archs = self.encoding.architectures(pop)
        hook = getattr(self.evaluator, "update", None)
        if update and callable(hook):
            with _Stopwatch(timing, "update_s"):
                hook(archs)
        with _Stopwatch(timing, "evaluate_s"):
            loss = np.asarray(self.evaluator.evaluate(archs), dtype=float)
        if loss.shape != (len(archs),) or not np.all(np.isfinite(loss)):
            raise SearchError(f"{type(self.evaluator).__name__}.evaluate returned {loss.shape} values "
                              f"(NaN/inf: {int(np.sum(~np.isfinite(loss))) if loss.size else 0}); "
                              f"expected {len(archs)} finite losses")
        return pop, latency, loss

    # -- between front members -----------------------------------------------------------------------
    def between(self, low: Architecture, high: Architecture, target_ms: float,
                sparsity_unit: float = 0.05) -> tuple[Population, float]:
        """``low`` grown by the units ``high`` has more of, one at a time while the prediction stays within
        ``target_ms`` (``low`` itself when no unit fits), and its prediction.

        A front has gaps (nine to thirteen members over a 3× latency range); a budget that falls in one gets the
        member below it grown towards the member above: a unit widens one channel group by the search's channel
        multiple towards ``high``'s width, or lowers one layer's sparsity by ``sparsity_step`` (``sparsity_unit``
        when the search's sparsity is continuous) towards ``high``'s. Growing never removes capacity: where
        ``high`` is narrower or sparser than ``low``, ``low`` is kept (taking ``high``'s higher sparsity costs
        accuracy and, on a device whose sparse kernels are no faster, buys no latency). Each round
        takes the largest unit that still fits: coarse units (a stage group whose width every block shares)
        first while there is room, finer ones after, so the gap fills to within a fraction of a percent of the
        target (cheapest-first spends the fine units early and then stops short by a coarse unit, 5 % on
        ResNet-56). Each round predicts all its candidates in one call."""
        encoding = self.encoding
        genomes = encoding.encode_architectures([low, high])
        groups = len(encoding.groups)
        current = genomes[0].copy()
        goal = np.r_[np.maximum(genomes[0, :groups], genomes[1, :groups]),       # wider
                     np.minimum(genomes[0, groups:], genomes[1, groups:])]       # less sparse
        unit = np.empty(encoding.dim)
        unit[:groups] = encoding.channel_multiple / encoding.full_widths
        unit[groups:] = encoding.sparsity_step or sparsity_unit
        latency = float(self.predictor.predict_population(encoding.decode(current[None, :]))[0])
        while True:
            genes = np.flatnonzero(~np.isclose(current, goal))
            if not genes.size:
                break
            candidates = np.repeat(current[None, :], len(genes), axis=0)
            gap = goal[genes] - current[genes]
            candidates[np.arange(len(genes)), genes] += np.sign(gap) * np.minimum(unit[genes], np.abs(gap))
            predicted = self.predictor.predict_population(encoding.decode(candidates))
            fits = np.flatnonzero(predicted <= target_ms)
            if not fits.size:
                break
            k = fits[np.argmax(predicted[fits])]
            current, latency = candidates[k], float(predicted[k])
        return encoding.decode(current[None, :]), latency

    # -- run ------------------------------------------------------------------------------------------
    def run(self, out_dir: str | Path | None = None, resume: bool = True, progress: bool = False) -> SearchResult:
        """Run (or, with ``out_dir`` holding an earlier run of the same configuration, continue) the search.

        ``out_dir`` receives ``state.json`` (generation, genomes, RNG state) and ``history.jsonl`` after
        every generation, and ``front.jsonl`` + ``frontier.png`` at the end. ``resume=False`` starts over.
        A run resumed with a larger ``generations`` continues where it stopped; a resumed run draws the
        same random numbers as an uninterrupted one, so (with a deterministic evaluator) it ends the same.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cfg = self.config
        out = Path(out_dir) if out_dir is not None else None
        rng = np.random.default_rng(cfg.seed)
        saved = self._load_state(out) if out is not None and resume else None
        clock = _RunClock(saved.timing if saved else SearchTiming())
        timing = clock.timing
        if saved is not None:
            genomes, generation, history = saved.genomes, saved.generation, saved.history
            rng.bit_generator.state = saved.rng_state
        else:
            with _Stopwatch(timing, "operators_s"):
                genomes = self.initial_population(rng)
            pop, latency, loss = self._evaluate(genomes, timing, update=False)
            generation = 0
            history = [GenerationRecord(0, pop.widths, pop.sparsity, latency, loss)]
            self._checkpoint(out, genomes, history, rng, clock, fresh=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("JCW search", total=cfg.generations, completed=min(generation, cfg.generations))
            while generation < cfg.generations:
                generation += 1
                with _Stopwatch(timing, "operators_s"):
                    candidates = np.vstack([genomes, self.offspring(genomes, rng)])
                pop, latency, loss = self._evaluate(candidates, timing, update=True)
                with _Stopwatch(timing, "operators_s"):
                    keep = self.select(pop, latency, loss, rng)
                genomes = candidates[keep]
                record = GenerationRecord(generation, pop.widths[keep], pop.sparsity[keep], latency[keep], loss[keep])
                history.append(record)
                self._checkpoint(out, genomes, history, rng, clock)
                bar.update(task, advance=1, description=(
                    f"JCW gen {generation}: front {len(record.front())}, best loss {record.loss.min():.4f}, "
                    f"latency {timing.shares()['latency']:.1%} of time"))
        result = SearchResult(self.encoding, history, timing, self.full_latency_ms)
        if out is not None:
            result.write_front(out / "front.jsonl")
            result.plot_frontier(out / "frontier.png")
        return result

    # -- state files ----------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """What a run directory must match to be resumed by this search."""
        config = self.config.to_dict()
        config.pop("generations")
        return {"format": STATE_FORMAT, "model": self.spec.name, "table": self.predictor.table.fingerprint,
                "genes": self.encoding.dim, "config": json.loads(json.dumps(config))}

    def _checkpoint(self, out: Path | None, genomes: np.ndarray, history: list[GenerationRecord],
                    rng: np.random.Generator, clock: _RunClock, fresh: bool = False) -> None:
        """Append the generation to history.jsonl, then replace state.json atomically (a crash between the
        two leaves an extra history line, which resuming drops)."""
        if out is not None:
            with _Stopwatch(clock.timing, "io_s"):
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "history.jsonl", "w" if fresh else "a") as fh:
                    fh.write(history[-1].to_json() + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                clock.tick()
                state = {**self._identity(), "generation": history[-1].generation, "genomes": genomes.tolist(),
                         "rng": rng.bit_generator.state, "timing": asdict(clock.timing)}
                atomic_write_json(out / "state.json", state)
        clock.tick()

    def _load_state(self, out: Path) -> _SavedState | None:
        path = out / "state.json"
        if not path.exists():
            return None
        recover = f"delete {out} or run with resume=False to start over"
        state = read_json(path, recover)
        identity = self._identity()
        # Runs saved before ``sparsity_where`` existed searched the table's whole sparsity range.
        saved_config = {"sparsity_where": "measured", **state.get("config", {})}
        differ = sorted(k for k in identity if k != "config" and state.get(k) != identity[k])
        differ += sorted(f"config.{k}" for k in identity["config"] if saved_config.get(k) != identity["config"][k])
        if differ:
            raise SearchError(f"{out} holds a different search (differs in {', '.join(differ)}); "
                              "use another directory or resume=False to start over")
        generation = int(state["generation"])
        history_path = out / "history.jsonl"
        lines = history_path.read_text().splitlines() if history_path.exists() else []
        history = [GenerationRecord.from_dict(parse_json(line, f"{history_path}, line {n}", recover))
                   for n, line in enumerate(lines[: generation + 1], start=1)]
        if [r.generation for r in history] != list(range(generation + 1)):
            raise SearchError(f"{history_path} does not hold generations 0..{generation} of {path}; "
                              "delete the directory or run with resume=False")
        if len(lines) > generation + 1:    # appended after the last state was written: that generation is redone
            atomic_write_text(history_path, "".join(line + "\n" for line in lines[: generation + 1]))
        genomes = np.array(state["genomes"], dtype=float)
        if genomes.shape != (self.config.population, self.encoding.dim):
            raise SearchError(f"{path}: genomes of shape {genomes.shape}, expected "
                              f"({self.config.population}, {self.encoding.dim})")
        return _SavedState(genomes, generation, history, SearchTiming(**state["timing"]), state["rng"])


@dataclass
class _SavedState:
    genomes: np.ndarray
    generation: int
    history: list[GenerationRecord]
    timing: SearchTiming
    rng_state: dict


class _RunClock:
    """Keeps ``timing.total_s`` = time of earlier sessions (a resumed run) + wall time of this one."""

    def __init__(self, timing: SearchTiming) -> None:
        self.timing, self.before, self.start = timing, timing.total_s, time.perf_counter()

    def tick(self) -> None:
        self.timing.total_s = self.before + time.perf_counter() - self.start


# ---- acceptance experiment --------------------------------------------------------------------------

def density_experiment(spec: ModelSpec, table: LatencyTable | str | Path, evaluator: Evaluator,
                       config: SearchConfig | None = None, bins: int | Sequence[float] = 5,
                       out_dir: str | Path | None = None, clamp: bool = False,
                       progress: bool = False) -> tuple[SearchResult, pd.DataFrame]:
    """Search ``spec`` on ``table`` (a phone or host table, or its path) and summarise the front's mean
    density (1 − mean sparsity) in bins of relative latency (fraction of the full dense network's).

    Where sparse kernels pay (JCW's phone table) the front mixes channel and weight pruning (density < 1);
    where the table's sparsity axis is flat (this host's) weight sparsity buys no latency and the front
    stays dense."""
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    search = JCWSearch(spec, Predictor(spec, table, clamp=clamp), evaluator, config)
    result = search.run(out_dir, progress=progress)
    return result, result.density_by_latency(bins, relative=True)
