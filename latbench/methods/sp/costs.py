"""Whole-network budgets split into stage budgets that add up exactly.

Every budget latbench offers is a sum of per-layer costs, each a function of the layer's input and output
widths only (:class:`~latbench.search.budget.CostGrid`: latency from a device table through the
:class:`~latbench.predictor.Predictor`'s compiled per-layer grids, or FLOPs / parameters). Charge every
layer to the stage it belongs to and the head (global pool + classifier) to a fixed part::

    total(w) = Σ_i stage_i(w) + fixed(w)
    stage_i(w) = scale · Σ_{l ∈ stage i} cost_l(w_in(l), w_out(l))
    fixed(w)   = scale · Σ_{l ∈ head} cost_l(w) + offset          (the table's whole-network calibration)

Stage ``i``'s layers read and write only its own groups and its input group (the previous stage's output
group), and the head reads only the last stage's output group. Once the **boundary widths** (every stage's
output group) are fixed, ``stage_i`` depends only on stage ``i``'s interior groups and ``fixed`` is a
constant, so stage budgets summing to ``total − fixed`` bound the network exactly.

>>> costs = StageCosts.from_grid(CostGrid.analytic(spec, "flops", 32), stages_of(spec))       # doctest: +SKIP
>>> costs.stage(0, widths) + costs.stage(1, widths) + costs.stage(2, widths) + costs.fixed(widths)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ...search.budget import CostGrid
from ...supernet import Stage


def grid_layers(grid: CostGrid) -> list[str]:
    """The layer behind each column of ``grid`` (its compiled layout).

    Analytic grids lay out ``spec.layers`` in order. Latency grids use the predictor's layout: its layers
    (all of them, or the convolutions only for a convolutions-scope table) with the sparsifiable ones first,
    in ``spec.sparsifiable_layers`` order. The layout is checked against the grid: every column may only
    move with the groups its layer reads or writes.
    """
    spec = grid.spec
    if grid.predictor is None:
        layers = list(spec.layers)
    else:
        sp_cols = {name: i for i, name in enumerate(spec.sparsifiable_layers)}
        pl = list(grid.predictor.layers)
        layers = sorted(pl, key=lambda ly: sp_cols.get(ly.name, len(sp_cols) + pl.index(ly)))
    if len(layers) != len(grid.offsets):
        raise RuntimeError(f"cost grid of {spec.name} has {len(grid.offsets)} columns for {len(layers)} layers: "
                           "the predictor's layout changed; update latbench.methods.sp.costs.grid_layers")
    groups = list(spec.groups)
    for col, layer in enumerate(layers):
        moving = {groups[g] for g in np.flatnonzero(grid.matrix[:, col])}
        if not moving <= {layer.in_group, layer.out_group}:
            raise RuntimeError(f"cost grid column {col} moves with groups {sorted(moving)}, not those of layer "
                               f"{layer.name!r}: the predictor's layout changed; update grid_layers")
    return [layer.name for layer in layers]


@dataclass
class StageCosts:
    """Per-stage and fixed (head + calibration offset) parts of a :class:`CostGrid`'s total (see the module
    docstring). Widths are ``{group: width}`` mappings or arrays ``(G,)`` / ``(N, G)`` in ``spec.groups``
    order; results are floats or ``(N,)`` arrays."""

    kind: str
    groups: tuple[str, ...]
    flat: np.ndarray
    offsets: np.ndarray
    matrix: np.ndarray
    step: int
    scale: float
    offset: float
    columns: tuple[np.ndarray, ...]      # per stage: its layers' columns
    fixed_columns: np.ndarray            # the head's columns

    @classmethod
    def from_grid(cls, grid: CostGrid, stages: Sequence[Stage]) -> "StageCosts":
        names = grid_layers(grid)
        owner = {name: s.index for s in stages for name in s.layers}
        columns = tuple(np.array([c for c, n in enumerate(names) if owner.get(n) == s.index], dtype=np.int64)
                        for s in stages)
        fixed = np.array([c for c, n in enumerate(names) if n not in owner], dtype=np.int64)
        return cls(grid.kind, tuple(grid.spec.groups), grid.flat, grid.offsets, grid.matrix, grid.step,
                   float(grid.scale), float(grid.offset), columns, fixed)

    def _widths(self, widths: Mapping[str, int] | np.ndarray) -> tuple[np.ndarray, bool]:
        if isinstance(widths, Mapping):
            w = np.array([widths[g] for g in self.groups], dtype=np.int64)
        else:
            w = np.asarray(widths, dtype=np.int64)
        single = w.ndim == 1
        w = np.atleast_2d(w)
        if (w % self.step).any():
            raise ValueError(f"widths are not multiples of the cost grid's step {self.step}")
        return w, single

    def _sum(self, widths, cols: np.ndarray) -> np.ndarray | float:
        w, single = self._widths(widths)
        idx = (w // self.step) @ self.matrix[:, cols] + self.offsets[cols]
        out = self.flat[idx].sum(axis=1) * self.scale
        return float(out[0]) if single else out

    def stage(self, i: int, widths) -> np.ndarray | float:
        """Stage ``i``'s cost: its layers' costs times the calibration scale."""
        return self._sum(widths, self.columns[i])

    def fixed(self, widths) -> np.ndarray | float:
        """The head's cost times the scale, plus the calibration offset (a constant given the last
        boundary width)."""
        out = self._sum(widths, self.fixed_columns)
        return out + self.offset

    def total(self, widths) -> np.ndarray | float:
        """Σ stages + fixed: equals the grid's total."""
        return sum(self.stage(i, widths) for i in range(len(self.columns))) + self.fixed(widths)


__all__ = ["StageCosts", "grid_layers"]
