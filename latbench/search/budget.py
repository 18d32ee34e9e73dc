"""Resource budgets for pruning searches: latency from a device table, or FLOPs / parameters, as per-layer cost
grids that support O(affected layers) updates when one channel group shrinks.

Every budget is the sum of per-layer costs, and a layer's cost depends only on its input and output widths.
:class:`CostGrid` lays each layer's cost out on the integer widths it can take (the same compiled layout the
latency :class:`~latbench.predictor.Predictor` uses), so a layer's cost is one array lookup at
``offsets[l] + Σ_g matrix[g, l] · width_g / step``. Removing channels from group ``g`` moves the index of just
the layers that read or write ``g`` by a known integer: greedy pruning updates the total without re-predicting
the network.

>>> from latbench.models import get_model
>>> spec = get_model("resnet56")
>>> grid = CostGrid.analytic(spec, "flops", 32)
>>> round(grid.total(spec.groups) / 1e6, 1)     # multiply-accumulates of the full ResNet-56
125.7
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..models.spec import ModelSpec
from ..recipe import Choice

class BudgetKind(Choice):
    """The resource a budget limits."""

    latency = "latency"    # ms, from a device table
    flops = "flops"        # multiply-accumulates
    params = "params"      # weights + BN affine parameters


BUDGET_KINDS = BudgetKind.values()
_UNITS = {"latency": "ms", "flops": "MACs", "params": "parameters"}


class BudgetError(ValueError):
    """A budget that cannot be met or does not make sense; the message gives what can be reached."""


@dataclass(frozen=True)
class Budget:
    """A limit on one resource: ``kind`` is ``latency`` (ms, from a device table), ``flops`` (multiply-
    accumulates) or ``params`` (weights + BN affine parameters)."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BudgetError(f"unknown budget kind {self.kind!r}; expected one of {BUDGET_KINDS}")
        object.__setattr__(self, "kind", BudgetKind(self.kind))
        if not np.isfinite(self.value) or self.value <= 0:
            raise BudgetError(f"a {self.kind} budget must be a positive number, got {self.value!r}")

    @property
    def unit(self) -> str:
        return _UNITS[self.kind]

    def describe(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        return f"{v:.4g} ms" if self.kind == "latency" else f"{v:.4g} {self.unit}"


def _layer_cost(kind: str, layer, cin: np.ndarray, cout: np.ndarray, hw_in: int) -> np.ndarray:
    """FLOPs (MACs) or parameters of one layer on a (cin, cout) mesh; pools cost nothing here."""
    hw_out = layer.output_hw(hw_in)
    if layer.kind == "linear":
        return cin * cout + (cout if kind == "params" else 0)
    if layer.kind not in ("conv", "pointwise", "depthwise"):
        return np.zeros(np.broadcast(cin, cout).shape)
    fan_in = layer.kernel ** 2 * (1 if layer.kind == "depthwise" else cin)
    if kind == "params":
        return fan_in * cout + 2 * cout          # conv weights + BN scale and shift (folded at export)
    return fan_in * cout * hw_out ** 2


@dataclass
class CostGrid:
    """Per-layer costs of one model at one resolution, on widths ``0, step, 2·step, …``.

    ``flat[offsets[l] + (widths / step) @ matrix[:, l]]`` is layer ``l``'s cost; the total is
    ``scale · Σ_l + offset`` (the latency calibration of the table; identity for FLOPs and parameters).
    """

    spec: ModelSpec
    kind: str
    flat: np.ndarray
    offsets: np.ndarray      # (L,) int
    matrix: np.ndarray       # (G, L) int: index step per ``step`` channels of each group
    step: int
    scale: float = 1.0
    offset: float = 0.0
    predictor: object | None = None   # latency grids: the predictor, whose table range checks widths
    resolution: int | None = None

    @classmethod
    def from_predictor(cls, predictor, resolution: int, step: int = 1) -> "CostGrid":
        """Latency (ms) from a device table through ``predictor`` (calibration included)."""
        compiled = predictor.compiled(resolution, step)
        scale, offset = predictor.calibration()
        return cls(predictor.spec, "latency", compiled.flat, compiled.offsets.astype(np.int64),
                   compiled.matrix.astype(np.int64), step, scale, offset, predictor, resolution)

    def check_range(self, widths: np.ndarray) -> None:
        """Raise :class:`~latbench.tables.table.OutOfGridError` when ``widths`` (and anything between them and
        the full widths) leave the latency table's measured grid: the compiled layout would extrapolate there."""
        if self.predictor is None:
            return
        from ..predictor import Population

        w = np.vstack([np.asarray(widths), [self.spec.groups[g] for g in self.spec.groups]]).astype(np.int64)
        n_sparse = len(self.spec.sparsifiable_layers)
        self.predictor.predict_population(Population(w, np.zeros((2, n_sparse)), np.full(2, self.resolution)))

    @classmethod
    def analytic(cls, spec: ModelSpec, kind: str, resolution: int, step: int = 1) -> "CostGrid":
        """FLOPs (multiply-accumulates) or parameters, computed from the layer shapes."""
        if kind not in ("flops", "params"):
            raise BudgetError(f"analytic costs are 'flops' or 'params', not {kind!r}")
        groups = list(spec.groups)
        hw = spec.input_hw(resolution)
        chunks, offsets = [], []
        matrix = np.zeros((len(groups), len(spec.layers)), dtype=np.int64)
        pos = 0
        for l, layer in enumerate(spec.layers):
            cin_full, cout_full = spec.channels(spec.groups, layer)
            cin = np.arange(0, cin_full + 1, step) if layer.in_group else np.array([layer.fixed_in])
            cout = np.arange(0, cout_full + 1, step) if layer.out_group else np.array([layer.fixed_out])
            if layer.kind == "depthwise" or layer.kind in ("maxpool", "avgpool"):
                cin = np.array([0])  # cost follows the (shared) output width only
            mesh = _layer_cost(kind, layer, cin[:, None].astype(float), cout[None, :].astype(float), hw[layer.name])
            if layer.in_group and cin.size > 1:
                matrix[groups.index(layer.in_group), l] += cout.size
            if layer.out_group:
                matrix[groups.index(layer.out_group), l] += 1
            chunks.append(np.broadcast_to(mesh, (cin.size, cout.size)).ravel())
            offsets.append(pos)
            pos += cin.size * cout.size
        return cls(spec, kind, np.concatenate(chunks), np.array(offsets, dtype=np.int64), matrix, step)

    @classmethod
    def for_budget(cls, spec: ModelSpec, budget: Budget, resolution: int, predictor=None,
                   step: int = 1) -> "CostGrid":
        if budget.kind == "latency":
            if predictor is None:
                raise BudgetError("a latency budget needs a device table (predictor); give --table")
            return cls.from_predictor(predictor, resolution, step)
        return cls.analytic(spec, budget.kind, resolution, step)

    def indices(self, widths: Mapping[str, int] | np.ndarray) -> np.ndarray:
        w = np.array([widths[g] for g in self.spec.groups]) if isinstance(widths, Mapping) else np.asarray(widths)
        if (w % self.step).any():
            raise BudgetError(f"widths {w.tolist()} are not multiples of the cost grid's step {self.step}")
        return (w // self.step) @ self.matrix + self.offsets

    def total(self, widths: Mapping[str, int] | np.ndarray) -> float:
        return float(self.flat[self.indices(widths)].sum() * self.scale + self.offset)

    def totals(self, widths: np.ndarray) -> np.ndarray:
        """Costs of many width vectors (N, G) at once."""
        idx = (np.asarray(widths) // self.step) @ self.matrix + self.offsets
        return self.flat[idx].sum(axis=1) * self.scale + self.offset


class IncrementalCost:
    """The running total of a :class:`CostGrid` while channel groups shrink one unit at a time."""

    def __init__(self, grid: CostGrid, widths: np.ndarray) -> None:
        self.grid = grid
        self.idx = grid.indices(widths).astype(np.int64)
        self.costs = grid.flat[self.idx].copy()
        self.raw = float(self.costs.sum())
        # Per group: the layers it touches and how far their index moves per ``step`` channels removed.
        self._touch = [(np.flatnonzero(row), row[np.flatnonzero(row)]) for row in grid.matrix]

    @property
    def value(self) -> float:
        return self.raw * self.grid.scale + self.grid.offset

    def shrink(self, group: int, channels: int) -> float:
        """Remove ``channels`` (a multiple of the grid's step) from ``group``; returns the new total."""
        if channels % self.grid.step:
            raise BudgetError(f"cannot remove {channels} channels on a cost grid with step {self.grid.step}")
        layers, moves = self._touch[group]
        new_idx = self.idx[layers] - moves * (channels // self.grid.step)
        new_costs = self.grid.flat[new_idx]
        self.raw += float(new_costs.sum() - self.costs[layers].sum())
        self.idx[layers] = new_idx
        self.costs[layers] = new_costs
        return self.value
