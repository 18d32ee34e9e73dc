"""Profiling: measure every grid point of every slice a model needs, into the store, resumably."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .devices.base import Artifact, Device, Measurement
from .export import export_layer_variant, export_sparse_wrapper
from .layers import LayerPoint, LayerSignature
from .store import MeasurementStore
from .tables.grid import GridSlice, refinement_checks
from .tables.table import _COLUMNS, _slice_from_rows

import pandas as pd


@dataclass
class ProfileReport:
    slices: int = 0
    grid_points: int = 0
    measured: int = 0
    skipped: int = 0
    checks: int = 0
    knots_added: int = 0
    seconds: float = 0.0
    env_id: int = 0
    by_another: int = 0   # points another process sharing the store measured meanwhile (theirs kept)
    farm: dict | None = None   # a farm group's units, batches per unit and faults
    details: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


def environment_of(device: Device, store: MeasurementStore, reference_ms: float | None = None) -> int:
    """The store's environment for ``device``; also fixes the device's reference unit (see timing.py):
    the one already stored, else ``reference_ms`` (e.g. a table's), else a fresh measurement."""
    env = {**device.environment(), "device": device.name}
    env_id = store.environment_id(device.fingerprint(), device.backend_settings(), env)
    units = getattr(device, "units", None)
    if units:      # a farm group: the units measured into this environment (provenance of its tables)
        known = store.environment(env_id)["environment"].get("units") or {}
        store.update_environment(env_id, {"units": {**known, **units}})
    if getattr(device, "uses_reference", False):
        stored = store.environment(env_id)["environment"].get("reference_ms")
        if stored:
            device.reference_ms = float(stored)
        else:
            ours = float(reference_ms) if reference_ms else device.measure_reference_nominal()
            # Another process may have fixed the unit meanwhile: its measurements are in its unit, so adopt it.
            env = store.update_environment(env_id, {"reference_ms": ours}, replace=False)
            device.reference_ms = float(env["reference_ms"])
    return env_id


def difference(a: Measurement, b: Measurement, key: str) -> Measurement:
    """``a`` minus ``b`` (a layer inside a wrapper minus the wrapper alone): medians subtracted, the p10–p90
    band widened to the worst case (a.p10 − b.p90 … a.p90 − b.p10), all three clipped at 0; IQRs added in
    quadrature, the fewer runs and rounds, the outliers of both."""
    return Measurement(key, max(0.0, a.median_ms - b.median_ms), max(0.0, a.p10_ms - b.p90_ms),
                       max(0.0, a.p90_ms - b.p10_ms), float(np.hypot(a.iqr_ms, b.iqr_ms)), min(a.runs, b.runs),
                       min(a.rounds, b.rounds), a.outliers + b.outliers)


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def layer_artifacts(fmt: str, sig: str, point: LayerPoint) -> list[Artifact]:
    """The layer variant in format ``fmt``, or — for a sparse conv that XNNPACK runs sparse only inside a
    subgraph (``export_sparse_wrapper``) — the variant in that subgraph and the subgraph alone."""
    key, signature = f"{sig}|{point}", LayerSignature.from_key(sig)
    wrapper = export_sparse_wrapper(fmt, signature, point)
    if wrapper is None:
        return [Artifact(key, export_layer_variant(fmt, signature, point), format=fmt)]
    return [Artifact(f"{key}|{part}", model, format=fmt) for part, model in zip(("wrapped", "baseline"), wrapper)]


def measure_layer_points(device: Device, items: Sequence[tuple[str, LayerPoint]],
                         artifacts_of=None) -> list[Measurement]:
    """One batch of (signature, point) items measured on ``device``, one :class:`Measurement` each: a wrapped
    item is the difference of its two measurements, taken in the same batch. (A farm agent runs this on the
    node its phone hangs on.) ``artifacts_of(sig, point)``: default :func:`layer_artifacts` in the device's
    format."""
    artifacts_of = artifacts_of or (lambda sig, p: layer_artifacts(device.model_format, sig, p))
    per_item = [artifacts_of(sig, p) for sig, p in items]
    artifacts = [a for item in per_item for a in item]
    results = iter(device.measure(artifacts) if artifacts else [])
    out = []
    for (sig, point), parts in zip(items, per_item):
        ms = [next(results) for _ in parts]
        out.append(ms[0] if len(ms) == 1 else difference(*ms, f"{sig}|{point}"))
    return out


class Profiler:
    """Measures slices on a device into a store; every measurement is committed as soon as it exists.

    >>> from latbench.devices import open_device                       # doctest: +SKIP
    >>> Profiler(open_device("host:onnxruntime"), store).run(slices)   # doctest: +SKIP
    """

    def __init__(self, device: Device, store: MeasurementStore, batch_size: int = 16, progress: bool = True,
                 console: Console | None = None) -> None:
        self.device = device
        self.store = store
        self.batch_size = batch_size
        self.progress = progress
        self.console = console or Console(stderr=True)
        self.by_another = 0
        self.env_id = environment_of(device, store)

    def _artifacts(self, sig: str, point: LayerPoint) -> list[Artifact]:
        return layer_artifacts(self.device.model_format, sig, point)

    def measure_points(self, items: Sequence[tuple[str, LayerPoint]], bar=None, task=None) -> int:
        """Measure the (signature, point) items the store lacks; returns how many this process stored. A
        wrapped item is stored as the difference of its two measurements (taken in the same batch). Items
        another process stores meanwhile are skipped, or, when both measured one, its value is kept."""
        todo = self.store.missing(self.env_id, list(dict.fromkeys(items)))
        distributed = getattr(self.device, "measure_points_into", None)
        if distributed is not None:          # a farm group: batches over its units, stored here as they arrive
            kept = [0]

            def put(item: tuple, m: Measurement) -> None:
                stored_now = self.store.put(self.env_id, item[0], item[1], m)
                kept[0] += stored_now
                self._note_by_another(int(not stored_now))
                if bar is not None:
                    bar.advance(task, 1)

            distributed(self.store.missing(self.env_id, todo), put)
            return kept[0]
        stored = 0
        for start in range(0, len(todo), self.batch_size):
            planned = todo[start:start + self.batch_size]
            batch = self.store.missing(self.env_id, planned)
            kept = sum(self.store.put(self.env_id, sig, point, m)
                       for (sig, point), m in zip(batch, measure_layer_points(self.device, batch, self._artifacts)))
            stored += kept
            self._note_by_another(len(planned) - kept)
            if bar is not None:
                bar.advance(task, len(planned))
        return stored

    def _note_by_another(self, n: int) -> None:
        if n and not self.by_another:
            self.console.print(f"[yellow]another process is profiling into {self.store.path} too: it measured "
                               f"points this run planned; theirs are kept, not measured again nor overwritten[/]")
        self.by_another += n

    def _slice_rows(self, s: GridSlice) -> pd.DataFrame:
        recs = [(r.signature, r.point.input_hw, r.point.in_channels, r.point.out_channels, r.point.sparsity,
                 r.measurement.median_ms, r.measurement.p10_ms, r.measurement.p90_ms, r.measurement.iqr_ms,
                 r.measurement.runs)
                for r in self.store.rows(self.env_id, [s.signature.key]) if r.point.input_hw == s.input_hw]
        return pd.DataFrame.from_records(recs, columns=_COLUMNS)

    def run(self, slices: Sequence[GridSlice], adaptive: bool = False, threshold: float = 0.08,
            max_steps: int = 6, min_miss_ms: float = 0.005) -> ProfileReport:
        report = ProfileReport(slices=len(slices), env_id=self.env_id)
        t0 = time.perf_counter()
        planned = [(s.signature.key, p) for s in slices for p in s.points()]
        todo = self.store.missing(self.env_id, list(dict.fromkeys(planned)))
        report.skipped = len(set(planned)) - len(todo)
        self.console.print(f"[bold]{len(slices)}[/] slices, {len(set(planned))} grid points: "
                           f"{report.skipped} already in the store, [bold]{len(todo)}[/] to measure"
                           + (" (plus refinement checks)" if adaptive else ""))
        with _progress(self.console, self.progress) as bar:
            task = bar.add_task("profiling", total=len(todo))
            report.measured += self.measure_points(todo, bar, task)
            if adaptive:
                self._refine(list(slices), threshold, max_steps, report, bar, task, min_miss_ms)
        report.grid_points = sum(s.size() for s in slices)
        report.by_another = self.by_another
        report.seconds = time.perf_counter() - t0
        return report

    def _refine(self, slices: list[GridSlice], threshold: float, max_steps: int, report: ProfileReport, bar, task,
                min_miss_ms: float) -> None:
        """Adaptive refinement, all slices at once per step (so that a farm measures one step's checks of every
        slice in parallel): measure each slice's check points, add knots where interpolation misses, measure
        the new grid points; a slice whose checks all hit is done."""
        active = list(slices)
        for _ in range(max_steps):
            checks = {id(s): refinement_checks(s) for s in active}
            active = [s for s in active if checks[id(s)]]
            if not active:
                return
            pending = [(s.signature.key, p) for s in active for _, _, p in checks[id(s)]]
            self._measure_more(pending, report, bar, task, counts_as_checks=True)
            grown = []
            for s in active:
                insert = self._misses(s, checks[id(s)], threshold, min_miss_ms)
                for axis, values in insert.items():
                    s.knots[axis] = tuple(sorted(set(s.knots[axis]) | values))
                    report.knots_added += len(values)
                if insert:
                    grown.append(s)
            active = grown
            self._measure_more([(s.signature.key, p) for s in active for p in s.points()], report, bar, task)

    def _measure_more(self, items: list, report: ProfileReport, bar, task, counts_as_checks: bool = False) -> None:
        new = self.store.missing(self.env_id, list(dict.fromkeys(items)))
        bar.update(task, total=(bar.tasks[task].total or 0) + len(new))
        n = self.measure_points(new, bar, task)
        report.measured += n
        if counts_as_checks:
            report.checks += n

    def _misses(self, s: GridSlice, checks: list, threshold: float, min_miss_ms: float) -> dict[str, set]:
        """The knots to add to ``s``: the candidates of the checks its interpolation misses."""
        rows = self._slice_rows(s)
        grid_rows = rows.merge(pd.DataFrame([p.__dict__ for p in s.points()]),
                               on=["in_channels", "out_channels", "sparsity", "input_hw"])
        grid = _slice_from_rows(s.signature, s.input_hw, grid_rows)
        measured = {(r.in_channels, r.out_channels, r.sparsity): r.latency_ms for r in rows.itertuples()}
        insert: dict[str, set] = {}
        for axis, candidate, p in checks:
            truth = measured[(p.in_channels, p.out_channels, p.sparsity)]
            pred = grid.interpolate({a: np.array([getattr(p, a)]) for a in grid.axes})[0]
            # A miss counts when it is large relative *and* absolute: the tiniest variants (a few µs,
            # timed at the profiler's µs resolution) would otherwise refine every gap.
            if abs(pred - truth) > max(threshold * truth, min_miss_ms):
                insert.setdefault(axis, set()).add(candidate)
        return insert
