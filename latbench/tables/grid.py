"""Grid design: which points of each layer signature to measure.

A *slice* is one signature at one input size; its grid is rectilinear over the signature's variable
channel/sparsity axes. Default knots follow JCW — ``c//8·i`` for i = 1..8 on each channel axis, plus 1
so that heavily pruned layers stay inside the grid — and a few sparsities. Adaptive refinement starts
from a coarse subset of those knots and inserts a knot only where a check point measured halfway
between two knots disagrees with the interpolation by more than a threshold.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..layers import LayerPoint, LayerSignature, signature_of
from ..models.spec import ModelSpec

DENSE_SPARSITIES = (0.0, 0.5, 0.9)
COARSE_SPARSITIES = (0.0, 0.9)
SPARSITY_LATTICE = tuple(round(x, 2) for x in np.arange(0.0, 0.951, 0.05))


def channel_lattice(full: int, points: int = 8, multiple: int = 1) -> tuple[int, ...]:
    """All candidate knots of a channel axis: ``full//points · i`` for i = 1..points and ``full``, rounded
    to ``multiple`` (the smallest knot is ``multiple``, or 1 when ``multiple`` is 1)."""
    step = max(1, full // points)
    raw = {min(full, step * i) for i in range(1, points + 1)} | {full, 1}
    if multiple > 1:
        raw = {min(full, max(multiple, multiple * round(v / multiple))) for v in raw} | {full}
    return tuple(sorted(raw))


def coarse_channels(full: int, points: int = 8, multiple: int = 1) -> tuple[int, ...]:
    """The starting knots of adaptive refinement: the lattice's first, middle and last knots."""
    lattice = channel_lattice(full, points, multiple)
    return tuple(sorted({lattice[0], lattice[len(lattice) // 2], lattice[-1]}))


@dataclass
class GridSlice:
    """The knots of one (signature, input size): ``knots[axis]`` for each variable non-spatial axis, and
    ``lattice[axis]``, the values refinement may insert."""

    signature: LayerSignature
    input_hw: int
    knots: dict[str, tuple] = field(default_factory=dict)
    lattice: dict[str, tuple] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.signature.key, self.input_hw)

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.signature.variable_axes if a != "input_hw")

    def point(self, values: dict) -> LayerPoint:
        return self.signature.point(**values, input_hw=self.input_hw)

    def points(self, knots: dict[str, tuple] | None = None) -> list[LayerPoint]:
        knots = knots or self.knots
        axes = self.axes
        return [self.point(dict(zip(axes, combo))) for combo in itertools.product(*(knots[a] for a in axes))]

    def size(self) -> int:
        return int(np.prod([len(self.knots[a]) for a in self.axes])) if self.axes else 1


def _channel_multiple_of(sig: LayerSignature) -> int:
    """Channel counts a kernel can take: grouped convs keep their groups, a shuffle its groups."""
    if sig.op.startswith("shuffle"):
        return int(sig.op[len("shuffle"):] or 1)
    return sig.groups


def _merge(a: tuple, b: tuple) -> tuple:
    return tuple(sorted(set(a) | set(b)))


def design_grid(specs: list[ModelSpec], resolutions: dict[str, tuple[int, ...]] | None = None, adaptive: bool = False,
                channel_points: int = 8, sparsities: tuple[float, ...] | None = None,
                channel_multiple: int = 1, existing=None) -> list[GridSlice]:
    """The slices needed to predict every layer of ``specs`` at their resolutions.

    Layers sharing a signature and an input size share one slice, whose channel knots are the union of
    each layer's knots (so a layer is measured once however many models contain it). ``existing`` (a
    :class:`~latbench.tables.table.LatencyTable` these specs will be added to) contributes its slices' knots
    too, so that a slice two models share stays one complete grid covering both.
    """
    slices: dict[tuple[str, int], GridSlice] = {}
    for spec in specs:
        res_list = (resolutions or {}).get(spec.name, spec.resolutions)
        for res in res_list:
            hw = spec.input_hw(res)
            for layer in spec.layers:
                sig = signature_of(layer)
                s = slices.setdefault((sig.key, hw[layer.name]), GridSlice(sig, hw[layer.name]))
                s.layers.append(f"{spec.name}:{layer.name}@{res}")
                cin, cout = spec.channels(spec.groups, layer)
                full = {"in_channels": cin, "out_channels": cout}
                for axis in s.axes:
                    if axis == "sparsity":
                        lattice = (0.0,) if spec.source and not sparsities else SPARSITY_LATTICE
                        # An imported model is pruned by channels: its table spans sparsity only when asked
                        start = sparsities or ((0.0,) if spec.source else
                                               COARSE_SPARSITIES if adaptive else DENSE_SPARSITIES)
                    else:
                        multiple = math.lcm(channel_multiple, _channel_multiple_of(sig))
                        lattice = channel_lattice(full[axis], channel_points, multiple)
                        start = coarse_channels(full[axis], channel_points, multiple) if adaptive else lattice
                    s.knots[axis] = _merge(s.knots.get(axis, ()), tuple(start))
                    s.lattice[axis] = _merge(s.lattice.get(axis, ()), tuple(lattice) + tuple(start))
    for key, s in slices.items():
        old = (existing.slices if existing is not None else {}).get(key)
        for axis, knots in zip(old.axes, old.knots) if old is not None else ():
            if axis in s.knots:
                values = tuple(float(v) if axis == "sparsity" else int(v) for v in knots)
                s.knots[axis] = _merge(s.knots[axis], values)
                s.lattice[axis] = _merge(s.lattice[axis], values)
    return sorted(slices.values(), key=lambda s: s.key)


def refinement_checks(s: GridSlice) -> list[tuple[str, object, LayerPoint]]:
    """Check points for one refinement step: for each axis and each gap between neighbouring knots that
    has a lattice value inside, the lattice value nearest the gap's middle, at every combination of
    the other axes' extreme knots. Returns (axis, candidate knot, point)."""
    checks = []
    axes = s.axes
    for axis in axes:
        knots = s.knots[axis]
        others = [a for a in axes if a != axis]
        corners = list(itertools.product(*[(s.knots[o][0], s.knots[o][-1]) for o in others]))
        for lo, hi in zip(knots, knots[1:]):
            inside = [v for v in s.lattice[axis] if lo < v < hi]
            if not inside:
                continue
            mid = min(inside, key=lambda v: abs(v - (lo + hi) / 2))
            for corner in dict.fromkeys(corners):
                values = dict(zip(others, corner))
                values[axis] = mid
                checks.append((axis, mid, s.point(values)))
    return checks
