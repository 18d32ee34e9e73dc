"""Latency tables: n-linear interpolation grids built from measurements, stored as Parquet.

A table holds *slices*, one per (layer signature, input size); each slice is a rectilinear grid over
that signature's variable axes (in-channels, out-channels, weight sparsity). Between input sizes of
the same signature it interpolates linearly, which together is n-linear over (in, out, sparsity,
input size): tri-linear over channels × sparsity as in JCW, plus the resolution axis.

Files are Parquet (one row per grid point) with the provenance as JSON in the file's key-value
metadata — never pickle, so a table from a stranger cannot run code.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..files import atomic_output
from ..layers import AXES, LayerPoint, LayerSignature

FORMAT = "latbench-table/1"
_META_KEY = b"latbench"
_COLUMNS = ["signature", "input_hw", "in_channels", "out_channels", "sparsity", "latency_ms", "p10_ms", "p90_ms",
            "iqr_ms", "runs"]


class TableError(ValueError):
    """A table file that cannot be used, or a table that does not fit the request."""


class OutOfGridError(TableError):
    """A query outside the measured grid (pass ``clamp=True`` to clamp to the grid's edge instead)."""


def interp_matrix(knots: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The (len(x), len(knots)) matrix of linear-interpolation weights of ``x`` on ``knots``."""
    knots = np.asarray(knots, dtype=float)
    x = np.asarray(x, dtype=float)
    m = np.zeros((x.size, knots.size))
    if knots.size == 1:
        m[:, 0] = 1.0
        return m
    hi = np.clip(np.searchsorted(knots, x, side="right"), 1, knots.size - 1)
    lo = hi - 1
    w = np.clip((x - knots[lo]) / (knots[hi] - knots[lo]), 0.0, 1.0)
    rows = np.arange(x.size)
    m[rows, lo] += 1.0 - w
    m[rows, hi] += w
    return m


@dataclass
class TableSlice:
    signature: str
    input_hw: int
    axes: tuple[str, ...]
    knots: tuple[np.ndarray, ...]
    values: np.ndarray
    spread: np.ndarray | None = None

    def check_range(self, axis: str, x: np.ndarray, clamp: bool, layer: str | None) -> np.ndarray:
        k = self.knots[self.axes.index(axis)]
        lo, hi = k[0], k[-1]
        if clamp:
            return np.clip(x, lo, hi)
        bad = (x < lo - 1e-9) | (x > hi + 1e-9)
        if np.any(bad):
            v = np.asarray(x)[bad].flat[0]
            who = f"layer {layer!r} ({self.signature} at {self.input_hw}×{self.input_hw})" if layer else \
                f"{self.signature} at {self.input_hw}×{self.input_hw}"
            raise OutOfGridError(f"{who}: {axis}={v:g} is outside the measured grid [{lo:g}, {hi:g}]; "
                                 "measure a wider grid or pass clamp=True")
        return x

    def interpolate(self, coords: Mapping[str, np.ndarray], clamp: bool = False, layer: str | None = None) -> np.ndarray:
        """Vectorised n-linear interpolation at points given per axis (arrays of equal length)."""
        if not self.axes:
            n = len(next(iter(coords.values()))) if coords else 1
            return np.full(n, float(self.values))
        weights = [interp_matrix(k, self.check_range(a, np.asarray(coords[a], dtype=float), clamp, layer))
                   for a, k in zip(self.axes, self.knots)]
        letters = "abcd"[: len(self.axes)]
        expr = f"{letters},{','.join('z' + c for c in letters)}->z"
        return np.einsum(expr, np.asarray(self.values, dtype=float), *weights)

    def resample(self, points: Mapping[str, np.ndarray], clamp: bool = False, layer: str | None = None) -> np.ndarray:
        """The grid's n-linear interpolant evaluated on a new rectilinear grid (one array per axis)."""
        result = np.asarray(self.values, dtype=float)
        for i, axis in enumerate(self.axes):
            x = self.check_range(axis, np.asarray(points[axis], dtype=float), clamp, layer)
            m = interp_matrix(self.knots[i], x)
            result = np.moveaxis(np.tensordot(m, np.moveaxis(result, i, 0), axes=(1, 0)), 0, i)
        return result


@dataclass
class LatencyTable:
    """A latency lookup table with its provenance.

    >>> table = LatencyTable.load("tables/host-ort-mobilenet_v2.parquet")          # doctest: +SKIP
    >>> table.lookup("pointwise_k1_s1_p0_relu6", LayerPoint(32, 192, 0.0, 56))       # doctest: +SKIP
    """

    slices: dict[tuple[str, int], TableSlice]
    meta: dict = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict) -> "LatencyTable":
        missing = set(_COLUMNS[:6]) - set(frame.columns)
        if missing:
            raise TableError(f"table has no column(s) {sorted(missing)}; it was not written by latbench")
        slices = {}
        for (sig_key, hw), rows in frame.groupby(["signature", "input_hw"], sort=True):
            sig = LayerSignature.from_key(str(sig_key))
            slices[(str(sig_key), int(hw))] = _slice_from_rows(sig, int(hw), rows)
        return cls(slices, dict(meta))

    def frame(self) -> pd.DataFrame:
        records = []
        for s in self.slices.values():
            sig = LayerSignature.from_key(s.signature)
            grids = np.meshgrid(*s.knots, indexing="ij") if s.axes else []
            flat = {a: g.ravel() for a, g in zip(s.axes, grids)}
            vals = np.asarray(s.values).ravel()
            spread = np.asarray(s.spread).ravel() if s.spread is not None else np.full(vals.size, np.nan)
            for i in range(vals.size):
                p = sig.point(**{a: flat[a][i] for a in s.axes}, input_hw=s.input_hw)
                records.append((s.signature, s.input_hw, p.in_channels, p.out_channels, p.sparsity, vals[i],
                                np.nan, np.nan, spread[i], 0))
        return pd.DataFrame.from_records(records, columns=_COLUMNS)

    # ---- files --------------------------------------------------------------------------------------
    def save(self, path: str | Path, frame: pd.DataFrame | None = None) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        table = pa.Table.from_pandas(frame if frame is not None else self.frame(), preserve_index=False)
        meta = {**self.meta, "format": FORMAT}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
        with atomic_output(path) as tmp:   # a crash never leaves half a table under the real name
            pq.write_table(table, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise TableError(f"table {path} does not exist; build one with `latbench table build`")
        try:
            pt = pq.read_table(path)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for corrupt or truncated files
            raise TableError(f"table {path} is corrupt or truncated ({err}); rebuild it with `latbench table build` "
                             "(the measurements in the store are untouched)") from err
        raw = (pt.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise TableError(f"{path} is a Parquet file but not a latbench table (no provenance metadata)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise TableError(f"{path} has table format {meta.get('format')!r}; this latbench reads {FORMAT!r}")
        try:
            return cls.from_frame(pt.to_pandas(), meta)
        except (ValueError, KeyError) as err:
            raise TableError(f"table {path} is inconsistent: {err}") from err

    # ---- queries ------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    def check_device(self, fingerprint: str, what: str = "this device") -> None:
        if self.fingerprint != fingerprint:
            raise TableError(f"the table was measured on {self.meta.get('device', '?')} (fingerprint {self.fingerprint}),"
                             f" not on {what} (fingerprint {fingerprint}); profile {what} or pass the matching table")

    def signatures(self) -> set[str]:
        return {k[0] for k in self.slices}

    def input_sizes(self, signature: str) -> list[int]:
        return sorted(hw for sig, hw in self.slices if sig == signature)

    def lookup_many(self, signature: str, input_hw: int, coords: Mapping[str, np.ndarray], clamp: bool = False,
                    layer: str | None = None) -> np.ndarray:
        """Latency (ms) of ``signature`` at ``input_hw`` for many channel/sparsity points at once."""
        sizes = self.input_sizes(signature)
        who = f"layer {layer!r} " if layer else ""
        if not sizes:
            raise TableError(f"{who}signature {signature} is not in the table; profile the model first "
                             f"(`latbench profile`) and rebuild the table")
        if input_hw in sizes:
            return self._slice_values(signature, input_hw, coords, clamp, layer)
        if input_hw < sizes[0] or input_hw > sizes[-1]:
            if not clamp:
                raise OutOfGridError(f"{who}({signature}): input_hw={input_hw} is outside the measured input sizes "
                                     f"{sizes}; profile this resolution or pass clamp=True")
            return self._slice_values(signature, sizes[0] if input_hw < sizes[0] else sizes[-1], coords, clamp, layer)
        hi = next(s for s in sizes if s > input_hw)
        lo = max(s for s in sizes if s < input_hw)
        w = (input_hw - lo) / (hi - lo)
        return (1 - w) * self._slice_values(signature, lo, coords, clamp, layer) + \
            w * self._slice_values(signature, hi, coords, clamp, layer)

    def _slice_values(self, signature, hw, coords, clamp, layer):
        s = self.slices[(signature, hw)]
        return s.interpolate({a: coords[a] for a in s.axes}, clamp, layer)

    def lookup(self, signature: str, point: LayerPoint, clamp: bool = False, layer: str | None = None) -> float:
        coords = {a: np.array([getattr(point, a)]) for a in AXES}
        return float(self.lookup_many(signature, point.input_hw, coords, clamp, layer)[0])

    def summary(self) -> pd.DataFrame:
        rows = [(s.signature, s.input_hw, "×".join(str(len(k)) for k in s.knots) or "1", int(np.size(s.values)),
                 float(np.min(s.values)), float(np.max(s.values))) for s in self.slices.values()]
        return pd.DataFrame(rows, columns=["signature", "input_hw", "grid", "points", "min_ms", "max_ms"])


def _slice_from_rows(sig: LayerSignature, hw: int, rows: pd.DataFrame) -> TableSlice:
    """Build the largest complete rectilinear grid the rows contain (off-grid check points are dropped)."""
    axes = tuple(a for a in sig.variable_axes if a != "input_hw")
    rows = rows.drop_duplicates(subset=list(axes) or ["input_hw"], keep="last")
    if not axes:
        return TableSlice(sig.key, hw, (), (), np.asarray(float(rows["latency_ms"].iloc[-1])))
    while True:
        knots = [np.sort(rows[a].unique()) for a in axes]
        full = int(np.prod([len(k) for k in knots]))
        if len(rows) == full:
            break
        # Drop the knot whose hyperplane is least complete; check points measured by refinement that
        # were not adopted as knots end here. Interior knots go first: the extremes are the slice's range (a
        # slice two models refined separately has interior knots only one of them measured across).
        worst = None
        for interior in (True, False):
            for a, k in zip(axes, knots):
                expected = full // len(k)
                counts = rows.groupby(a).size()
                if interior:
                    counts = counts[(counts.index != k[0]) & (counts.index != k[-1])]
                if counts.empty:
                    continue
                v = counts.idxmin()
                gap = 1 - counts[v] / expected
                if gap > 0 and (worst is None or gap > worst[0]):
                    worst = (gap, a, v)
            if worst is not None:
                break
        if worst is None:
            break
        rows = rows[rows[worst[1]] != worst[2]]
        if rows.empty:
            raise TableError(f"{sig.key} at {hw}: the measurements do not form a grid")
    rows = rows.sort_values(list(axes))
    shape = tuple(len(k) for k in knots)
    spread = rows["iqr_ms"].to_numpy(float).reshape(shape) if "iqr_ms" in rows else None
    return TableSlice(sig.key, hw, axes, tuple(np.asarray(k, dtype=float) for k in knots),
                      rows["latency_ms"].to_numpy(float).reshape(shape), spread)


def table_from_store(store, env_id: int, signatures: Iterable[tuple[str, int]] | None = None,
                     extra_meta: dict | None = None, lattice: Mapping[tuple[str, int], Mapping[str, tuple]] | None = None,
                     sparsity_credit: bool = True) -> tuple[LatencyTable, pd.DataFrame]:
    """Build a table from the measurements of one device environment (optionally only some slices, and
    only points whose values lie on ``lattice[slice][axis]``, e.g. channel multiples of 8).

    With ``sparsity_credit`` (the default) sparse latencies that are not significantly below the dense ones
    are replaced by them (:func:`latbench.tables.sparsity.credit_significant_sparsity`)."""
    wanted = set(signatures) if signatures is not None else None
    records = []
    for r in store.rows(env_id):
        if r.signature.startswith("net:"):
            continue
        if wanted is not None and (r.signature, r.point.input_hw) not in wanted:
            continue
        allowed = (lattice or {}).get((r.signature, r.point.input_hw), {})
        if any(getattr(r.point, axis) not in values for axis, values in allowed.items()):
            continue
        m = r.measurement
        records.append((r.signature, r.point.input_hw, r.point.in_channels, r.point.out_channels, r.point.sparsity,
                        m.median_ms, m.p10_ms, m.p90_ms, m.iqr_ms, m.runs))
    if not records:
        raise TableError("the store has no layer measurements for this device; run `latbench profile` first")
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    sparsity_meta = {}
    if sparsity_credit:
        from .sparsity import RULE, credit_significant_sparsity

        frame, report = credit_significant_sparsity(frame)
        sparsity_meta = {"sparsity_axis": {"rule": RULE, "levels": report}}
    env = store.environment(env_id)
    from .. import __version__

    meta = {"fingerprint": env["fingerprint"], "device": env["environment"].get("device", ""),
            "backend": env["settings"], "environment": env["environment"], "latbench_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": "measured", "statistic": "median", **sparsity_meta, **(extra_meta or {})}
    table = LatencyTable.from_frame(frame, meta)
    return table, frame


def resample_signature(table: LatencyTable, signature: str, input_hw: int, points: Mapping[str, np.ndarray]) -> np.ndarray:
    """The table's interpolant for ``signature`` at ``input_hw`` on a rectilinear grid of ``points``
    (clamped to the grid; callers check ranges themselves)."""
    sizes = table.input_sizes(signature)
    if not sizes:
        raise TableError(f"signature {signature} is not in the table; profile the model and rebuild the table")
    hw = min(max(input_hw, sizes[0]), sizes[-1])
    if hw in sizes:
        s = table.slices[(signature, hw)]
        return s.resample({a: points[a] for a in s.axes}, clamp=True)
    hi = next(x for x in sizes if x > hw)
    lo = max(x for x in sizes if x < hw)
    w = (hw - lo) / (hi - lo)
    a, b = table.slices[(signature, lo)], table.slices[(signature, hi)]
    return (1 - w) * a.resample({k: points[k] for k in a.axes}, clamp=True) + \
        w * b.resample({k: points[k] for k in b.axes}, clamp=True)


def knot_range(table: LatencyTable, signature: str, input_hw: int, axis: str) -> tuple[float, float]:
    """The interval covered on ``axis`` by every slice used for ``input_hw`` (the intersection)."""
    sizes = table.input_sizes(signature)
    used = [s for s in sizes if s == input_hw] or [max([s for s in sizes if s < input_hw], default=sizes[0]),
                                                     min([s for s in sizes if s > input_hw], default=sizes[-1])]
    lo, hi = -np.inf, np.inf
    for hw in used:
        s = table.slices[(signature, hw)]
        if axis in s.axes:
            k = s.knots[s.axes.index(axis)]
            lo, hi = max(lo, k[0]), min(hi, k[-1])
    return lo, hi
