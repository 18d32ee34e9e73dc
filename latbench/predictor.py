"""Whole-network latency prediction: the sum of every layer's table lookup, vectorised over populations.

Searches call this millions of times, so a model is *compiled* once per resolution: every layer's
interpolant is evaluated on the integer channel counts it can take and on the sparsity lattice of the
table, and laid out in one flat array. A population is then two gathers and a linear blend per layer,
with the flat indices of all layers computed by one matrix product from the width matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Sequence

import numpy as np
import pandas as pd

from .layers import signature_of
from .models.arch import Architecture, ArchitectureError
from .models.spec import ModelSpec
from .tables.table import LatencyTable, OutOfGridError, TableError, knot_range, resample_signature


# Kernel categories the device calibration scales separately: a kernel timed alone and inside a network differ
# by an amount that depends on what it is (dense convs ≈ 1, memory-bound 1×1 / depthwise kernels less).
KERNEL_CATEGORIES = ("conv", "pointwise", "depthwise", "se", "op", "other")


def kernel_category(layer) -> str:
    if layer.kind == "conv":
        return "conv" if layer.groups == 1 else "depthwise"    # grouped convs behave like depthwise ones
    return layer.kind if layer.kind in KERNEL_CATEGORIES else "other"


@dataclass
class Population:
    """Architectures as arrays: ``widths`` (N, groups), ``sparsity`` (N, sparsifiable convs), ``resolution`` (N,).
    Columns follow ``spec.groups`` and ``spec.sparsifiable_layers``."""

    widths: np.ndarray
    sparsity: np.ndarray
    resolution: np.ndarray

    @classmethod
    def from_architectures(cls, spec: ModelSpec, archs: Sequence[Architecture]) -> "Population":
        groups, layers = list(spec.groups), list(spec.sparsifiable_layers)
        w = np.array([[a.widths[g] for g in groups] for a in archs], dtype=np.int64).reshape(len(archs), len(groups))
        s = np.array([[a.sparsity.get(name, 0.0) for name in layers] for a in archs], dtype=float).reshape(
            len(archs), len(layers))
        r = np.array([a.resolution for a in archs], dtype=np.int64)
        return cls(w, s, r)

    def __len__(self) -> int:
        return len(self.resolution)


def _lattice_step(values: np.ndarray) -> float:
    cents = [int(round(v * 100)) for v in values if v > 0]
    step = 0
    for c in cents:
        step = gcd(step, c)
    return (step or 100) / 100


@dataclass
class _Compiled:
    """Layers are laid out sparsifiable first, in the order of the population's sparsity columns, so
    that column ``l < n_sparse`` of the index matrix pairs with sparsity column ``l`` without a gather."""

    flat: np.ndarray            # all layers' dense grids, float64
    delta: np.ndarray           # flat[i + 1] − flat[i] along each sparsity lattice (0 at its end)
    offsets: np.ndarray         # (L,) start of each layer's grid in ``flat``
    matrix: np.ndarray          # (G, L) width → flat-index contribution
    n_sparse: int               # leading layers with a sparsity axis
    sp_inv_step: np.ndarray     # (n_sparse,) 1/lattice step
    sp_max_index: np.ndarray    # (n_sparse,) last lattice index

    @property
    def sp_last_cell(self) -> np.ndarray:
        """Index of the last lattice cell's lower end (a sparsity on the last knot blends with weight 1)."""
        return np.maximum(self.sp_max_index - 1, 0).astype(np.intp)
    ranges: list                # per layer: (name, axis, column, lo, hi) checks
    layers: tuple = ()          # layer names in the layout's order


class Predictor:
    """Predict the latency of architectures of ``spec`` from ``table``.

    >>> pred = Predictor(get_model("mobilenet_v2"), LatencyTable.load(path))   # doctest: +SKIP
    >>> pred.predict([Architecture.full(spec)])                                # doctest: +SKIP
    array([10.9])

    Queries outside the table's grid raise :class:`OutOfGridError` naming the layer and axis, unless
    ``clamp=True``.
    """

    def __init__(self, spec: ModelSpec, table: LatencyTable, clamp: bool = False) -> None:
        self.spec = spec
        self.table = table
        self.clamp = clamp
        self._compiled: dict[tuple[int, int], _Compiled] = {}
        # A table of convolutions only (e.g. the imported JCW table) predicts the convolutions' sum.
        conv_only = table.meta.get("scope") == "convolutions"
        self.layers = tuple(layer for layer in spec.layers if not conv_only or layer.sparsifiable)
        missing = {signature_of(layer).key for layer in self.layers} - table.signatures()
        if missing:
            raise TableError(f"the table has no measurements for {len(missing)} layer signature(s) of {spec.name!r} "
                             f"(e.g. {sorted(missing)[0]}); profile {spec.name} on this device and rebuild the table")

    def covers(self, resolution: int) -> bool:
        """Whether every layer's input size at ``resolution`` lies within the table's measured sizes."""
        hw = self.spec.input_hw(resolution)
        for layer in self.layers:
            sizes = self.table.input_sizes(signature_of(layer).key)
            if not sizes or not sizes[0] <= hw[layer.name] <= sizes[-1]:
                return False
        return True

    def covered_resolutions(self, candidates: Sequence[int] | None = None) -> tuple[int, ...]:
        """The resolutions (of ``candidates``, default the model's own) that the table predicts without
        extrapolating; raises :class:`TableError` naming the table's sizes when there are none."""
        candidates = tuple(candidates or self.spec.resolutions)
        covered = tuple(r for r in candidates if self.covers(r))
        if not covered:
            sizes = sorted({s for layer in self.layers for s in self.table.input_sizes(signature_of(layer).key)})
            raise TableError(f"the table covers none of {self.spec.name}'s resolutions {list(candidates)} (its layer "
                             f"input sizes are {sizes}); profile one of them or pass --resolution")
        return covered

    def calibration(self, source: str | None = None) -> tuple[float, float]:
        """(scale, offset_ms) from the sum of lookups to the whole network (identity when nothing is fitted).

        It carries what no single layer shows: the session's dispatch, layout conversions between layers,
        cache effects of a whole network (see docs/measurement.md). ``source`` picks the fit: ``"model"``, this
        model's own networks (``latbench table calibrate``); ``"device"``, whole networks of the *other* models the
        table was calibrated on (:func:`latbench.validation.fit_device_calibration`: a scale, a cost per kernel
        and one per network, so it transfers to a model never measured whole); ``"none"``, the bare sum;
        default: the model's own fit when there is one, else the device's.
        """
        source = source or self.calibration_source
        if source == "model":
            entry = self.table.meta.get("calibration", {}).get(self.spec.name)
            if not entry:
                raise TableError(f"the table has no calibration on {self.spec.name}'s own networks; run "
                                 f"latbench table calibrate TABLE {self.spec.name} --device …")
            return float(entry["scale"]), float(entry["offset_ms"])
        if source == "device":
            # per-category scales folded into one scale at the full network (what cost grids use; predict()
            # applies them per category exactly)
            fit = self._device_fit_or_raise()
            full = Population.from_architectures(self.spec, [Architecture.full(self.spec)])
            sums = self.kernel_sums(full)[0]
            return float(sums @ self._device_scales(fit) / max(sums.sum(), 1e-12)), fit["offset_ms"]
        return 1.0, 0.0

    def _device_fit_or_raise(self) -> dict:
        fit = self.device_calibration()
        if fit is None:
            raise TableError("the table has whole-network samples of fewer than 2 other models; calibrate it on "
                             "more models (latbench table calibrate TABLE MODEL --device …)")
        return fit

    @staticmethod
    def _device_scales(fit: dict) -> np.ndarray:
        return np.array([fit["scales"].get(c, 1.0) for c in KERNEL_CATEGORIES])

    @property
    def calibration_source(self) -> str:
        """``"model"``, ``"device"`` or ``"none"``: the fit :meth:`calibration` uses by default."""
        if self.table.meta.get("calibration", {}).get(self.spec.name):
            return "model"
        return "device" if self.device_calibration() is not None else "none"

    def device_calibration(self) -> dict | None:
        """The device's fit on every other model's calibration networks (cached), or None with fewer than 2."""
        if not hasattr(self, "_device_fit"):
            from .validation import fit_device_calibration

            self._device_fit = fit_device_calibration(self.table, exclude=self.spec.name)
        return self._device_fit

    def _compile(self, resolution: int, step: int = 1) -> _Compiled:
        """Lay out every layer's grid on the channel counts ``0, step, 2·step, …`` (``step`` divides every
        width of the population: 8 for the usual multiples of 8, which keeps the arrays cache-sized)."""
        spec = self.spec
        groups = list(spec.groups)
        sp_cols = {name: i for i, name in enumerate(spec.sparsifiable_layers)}
        hw = spec.input_hw(resolution)
        chunks, deltas, offsets, ranges = [], [], [], []
        layout = sorted(self.layers, key=lambda ly: sp_cols.get(ly.name, len(sp_cols) + self.layers.index(ly)))
        n_sparse = sum(1 for ly in layout if ly.name in sp_cols)
        L = len(layout)
        matrix = np.zeros((len(groups), L))
        sp_inv, sp_max = np.zeros(n_sparse), np.zeros(n_sparse)
        pos = 0
        for l, layer in enumerate(layout):
            sig = signature_of(layer)
            axes = sig.variable_axes
            sizes = self.table.input_sizes(sig.key)
            if not self.clamp and not sizes[0] <= hw[layer.name] <= sizes[-1]:
                raise OutOfGridError(f"layer {layer.name!r} of {self.spec.name} at resolution {resolution}: input "
                                     f"{hw[layer.name]}×{hw[layer.name]} is outside the table's sizes {sizes}; "
                                     "profile this resolution or use clamp=True")
            cin_full, cout_full = spec.channels(spec.groups, layer)
            points = {"in_channels": np.arange(0, cin_full + 1, step), "out_channels": np.arange(0, cout_full + 1, step)}
            has_sp = "sparsity" in axes
            if has_sp:
                lo, hi = knot_range(self.table, sig.key, hw[layer.name], "sparsity")
                knots = np.concatenate([self.table.slices[k].knots[self.table.slices[k].axes.index("sparsity")]
                                        for k in self.table.slices if k[0] == sig.key])
                sp_step = _lattice_step(knots)
                points["sparsity"] = np.round(np.arange(0.0, hi + 1e-9, sp_step), 6)
            grid = resample_signature(self.table, sig.key, hw[layer.name], points)
            # Lay out as (in, out, sparsity) with size-1 axes where the signature has none.
            shape_in = len(points["in_channels"]) if "in_channels" in axes else 1
            shape_out = len(points["out_channels"]) if "out_channels" in axes else 1
            shape_sp = len(points["sparsity"]) if has_sp else 1
            grid = np.asarray(grid, dtype=float).reshape(shape_in, shape_out, shape_sp)
            strides = (shape_out * shape_sp, shape_sp, 1)
            in_offset = 0
            if "in_channels" in axes:
                # A concatenated input (imported networks) reads several groups and fixed channels: its width is
                # their sum, still linear in the width matrix.
                cols = tuple(groups.index(g) for g in (layer.in_group, *layer.in_extra))
                for col in cols:
                    matrix[col, l] += strides[0]
                in_offset = layer.in_offset // step * strides[0]
                ranges.append((layer.name, "in_channels", cols[0] if len(cols) == 1 and not layer.in_offset
                               else (cols, layer.in_offset), *knot_range(self.table, sig.key, hw[layer.name], "in_channels")))
            if "out_channels" in axes:
                matrix[groups.index(layer.out_group), l] += strides[1]
                ranges.append((layer.name, "out_channels", groups.index(layer.out_group),
                               *knot_range(self.table, sig.key, hw[layer.name], "out_channels")))
            if has_sp:
                sp_inv[l] = 1.0 / sp_step
                sp_max[l] = shape_sp - 1
                ranges.append((layer.name, "sparsity", -1 - sp_cols[layer.name], 0.0, points["sparsity"][-1]))
            delta = np.zeros_like(grid)
            delta[..., :-1] = np.diff(grid, axis=-1)
            chunks.append(grid.ravel())
            deltas.append(delta.ravel())
            offsets.append(pos + in_offset)
            pos += grid.size
        return _Compiled(np.concatenate(chunks), np.concatenate(deltas), np.array(offsets, dtype=float), matrix,
                         n_sparse, sp_inv, sp_max, ranges, tuple(layer.name for layer in layout))

    def compiled(self, resolution: int, step: int = 1) -> _Compiled:
        key = (int(resolution), int(step))
        if key not in self._compiled:
            self._compiled[key] = self._compile(*key)
        return self._compiled[key]

    def _step(self, widths: np.ndarray) -> int:
        """8 when every full width and every width of the population is a multiple of 8, else 1."""
        full = np.array(list(self.spec.groups.values()))
        offsets = np.array([layer.in_offset for layer in self.layers])
        if widths.size and not (full % 8).any() and not (widths % 8).any() and not (offsets % 8).any():
            return 8
        return 1

    def _check(self, c: _Compiled, widths: np.ndarray, sparsity: np.ndarray, resolution: int) -> None:
        # Column extremes once, then each layer's range against them: O(groups), not O(N · layers).
        w_lo, w_hi = widths.min(axis=0), widths.max(axis=0)
        s_lo = sparsity.min(axis=0) if sparsity.size else None
        s_hi = sparsity.max(axis=0) if sparsity.size else None
        for name, axis, col, lo, hi in c.ranges:
            if isinstance(col, tuple):          # a concatenation: the sum of its groups and fixed channels
                total = widths[:, list(col[0])].sum(axis=1) + col[1]
                vmin, vmax = total.min(), total.max()
            else:
                vmin, vmax = (w_lo[col], w_hi[col]) if col >= 0 else (s_lo[-1 - col], s_hi[-1 - col])
            if vmin < lo - 1e-9 or vmax > hi + 1e-9:
                bad = vmin if vmin < lo - 1e-9 else vmax
                raise OutOfGridError(f"layer {name!r} of {self.spec.name} at resolution {resolution}: {axis}={bad:g} "
                                     f"is outside the table's grid [{lo:g}, {hi:g}]; measure a wider grid or use clamp=True")

    def predict_population(self, pop: Population, chunk: int = 1024, calibrated: bool = True,
                           source: str | None = None) -> np.ndarray:
        """Latency (ms) of every architecture in ``pop``; ``calibrated=False`` gives the bare sum of lookups,
        ``source`` picks the calibration (:meth:`calibration`)."""
        n = len(pop)
        if pop.widths.shape != (n, len(self.spec.groups)):
            raise ArchitectureError(f"widths must have shape (N, {len(self.spec.groups)}) for {self.spec.name!r}, "
                                    f"got {pop.widths.shape}")
        full = np.array(list(self.spec.groups.values()))
        if n and ((pop.widths.min(axis=0) < 1).any() or (pop.widths.max(axis=0) > full).any()):
            raise ArchitectureError(f"widths outside 1..full width for {self.spec.name!r}")
        if calibrated and (source or self.calibration_source) == "device":
            fit = self._device_fit_or_raise()      # per-category scales: the sums by category, range-checked
            return self.kernel_sums(pop) @ self._device_scales(fit) + fit["offset_ms"]
        out = np.empty(n)
        resolutions = np.unique(pop.resolution)
        for res in resolutions:
            if resolutions.size == 1:
                widths, sparsity, rows = pop.widths, pop.sparsity, slice(None)
            else:
                rows = np.flatnonzero(pop.resolution == res)
                widths, sparsity = pop.widths[rows], pop.sparsity[rows]
            step = self._step(widths)
            c = self.compiled(int(res), step)
            if not self.clamp:
                self._check(c, widths, sparsity, int(res))
            part = np.empty(len(widths))
            for start in range(0, len(widths), chunk):
                end = start + chunk
                part[start:end] = self._predict_rows(c, widths[start:end] // step, sparsity[start:end])
            out[rows] = part
        out += self.remainder_ms
        if calibrated:
            scale, offset = self.calibration(source)
            out = out * scale + offset
        return out

    @property
    def remainder_ms(self) -> float:
        """The measured time of the ops no kernel covers (``--skip-unsupported``), the same for every width."""
        if not self.spec.remainder:
            return 0.0
        entry = (self.table.meta.get("remainder") or {}).get(self.spec.name)
        if entry is None:
            raise TableError(f"{self.spec.name} has {len(self.spec.remainder)} op(s) no kernel covers, timed as a "
                             "remainder when its table is built; rebuild the table with --skip-unsupported")
        return float(entry["ms"])

    @staticmethod
    def _predict_rows(c: _Compiled, widths: np.ndarray, sparsity: np.ndarray, by: np.ndarray | None = None) -> np.ndarray:
        """The sum of lookups per row, or with ``by`` (layers × K, in the compiled layout) K partial sums."""
        idx = widths.astype(float) @ c.matrix + c.offsets          # exact: integers far below 2**53
        reduce = (lambda v: v.sum(axis=1)) if by is None else (lambda v: v @ by[:v.shape[1]])  # noqa: E731
        if c.n_sparse and sparsity.size and np.any(sparsity):
            pos = sparsity * c.sp_inv_step
            lo = np.minimum(pos.astype(np.intp), c.sp_last_cell)   # truncation == floor: pos ≥ 0
            i = idx.astype(np.intp)
            i[:, :c.n_sparse] += lo
            blend = reduce((pos - lo) * np.take(c.delta, i[:, :c.n_sparse]))
            return reduce(np.take(c.flat, i)) + blend
        return reduce(np.take(c.flat, idx.astype(np.intp)))

    def kernel_sums(self, pop: Population) -> np.ndarray:
        """(N, len(KERNEL_CATEGORIES)): each architecture's sum of lookups per kernel category (what the device
        calibration scales separately), the remainder counted with "op"."""
        out = np.zeros((len(pop), len(KERNEL_CATEGORIES)))
        for res in np.unique(pop.resolution):
            rows = np.flatnonzero(pop.resolution == res)
            widths, sparsity = pop.widths[rows], pop.sparsity[rows]
            step = self._step(widths)
            c = self.compiled(int(res), step)
            if not self.clamp:
                self._check(c, widths, sparsity, int(res))
            by = np.zeros((len(c.layers), len(KERNEL_CATEGORIES)))
            for i, name in enumerate(c.layers):
                by[i, KERNEL_CATEGORIES.index(kernel_category(self.spec.layer(name)))] = 1.0
            out[rows] = self._predict_rows(c, widths // step, sparsity, by)
        out[:, KERNEL_CATEGORIES.index("op")] += self.remainder_ms
        return out

    def predict(self, archs: Sequence[Architecture] | Architecture, calibrated: bool = True,
                source: str | None = None) -> np.ndarray:
        if isinstance(archs, Architecture):
            archs = [archs]
        for a in archs:
            a.validate(self.spec)
        return self.predict_population(Population.from_architectures(self.spec, archs), calibrated=calibrated,
                                       source=source)

    def breakdown(self, arch: Architecture) -> pd.DataFrame:
        """Per-layer latency of one architecture (slow path, for reports)."""
        from .layers import layer_points

        arch.validate(self.spec)
        rows = []
        for layer, sig, point in layer_points(self.spec, arch.widths, arch.sparsity, arch.resolution):
            if layer not in self.layers:
                continue
            ms = self.table.lookup(sig.key, point, clamp=self.clamp, layer=layer.name)
            rows.append((layer.name, sig.key, point.in_channels, point.out_channels, point.sparsity, point.input_hw, ms))
        return pd.DataFrame(rows, columns=["layer", "signature", "in_channels", "out_channels", "sparsity", "input_hw",
                                           "latency_ms"])
