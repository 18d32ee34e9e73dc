"""The pipeline as plain functions — the same steps the command line runs.

>>> from latbench import api
>>> spec = api.load_model("resnet56")                                          # doctest: +SKIP
>>> report = api.profile(spec, "host:onnxruntime", "runs/store.db")            # doctest: +SKIP
>>> table = api.build_table(spec, "host:onnxruntime", "runs/store.db", "tables/t.parquet")  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .devices import DEFAULT_DEVICE, MeasureSettings, open_device
from .models import Architecture, ModelSpec, get_model, random_architectures
from .models.onnx_graph import spec_from_onnx
from .predictor import Predictor
from .profiling import ProfileReport, Profiler, environment_of
from .store import MeasurementStore
from .tables.grid import design_grid
from .tables.table import LatencyTable, TableError, table_from_store
from .validation import ValidationReport, validate
from .validation import calibrate as calibrate_table

DEFAULT_STORE = "runs/measurements.db"


def load_model(name_or_path: str, input_shape: Sequence[int] | None = None,
               skip_unsupported: bool = False) -> ModelSpec:
    """A zoo model by name, or the kernels of an ONNX file (``input_shape`` fixes a dynamic input;
    ``skip_unsupported`` times ops no kernel covers together as a measured remainder)."""
    if name_or_path.endswith(".onnx") or Path(name_or_path).exists():
        return spec_from_onnx(name_or_path, input_shape=input_shape, skip_unsupported=skip_unsupported)
    return get_model(name_or_path)


def load_torch_module(module, example_input, path: str | Path, skip_unsupported: bool = False) -> ModelSpec:
    """A torch ``nn.Module`` as latbench reads any CNN: exported with ``example_input`` to the ONNX file ``path``
    (torch's exporter, opset 17; written atomically), then imported from it, so that profiling, validation and
    pruned variants work on the file as on any user's ONNX model."""
    import io

    import torch

    from .files import atomic_write_bytes

    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module.eval(), (example_input,), buf, input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    atomic_write_bytes(Path(path), buf.getvalue())
    return spec_from_onnx(path, skip_unsupported=skip_unsupported)


def profile(spec: ModelSpec | Sequence[ModelSpec], device: str = DEFAULT_DEVICE, store: str | Path = DEFAULT_STORE,
            resolutions: Sequence[int] | None = None, adaptive: bool = True, threshold: float = 0.08,
            channel_points: int = 8, sparsities: Sequence[float] | None = None, threads: int = 1,
            channel_multiple: int | None = None,
            settings: MeasureSettings | None = None, progress: bool = True,
            table: str | Path | None = None) -> ProfileReport:
    """Measure every slice ``spec`` (one model or several, profiled as one grid) needs on ``device``; resumes
    from whatever ``store`` already holds. With ``table``, an existing table of this device the models will be
    added to, its slices' knots join the grid (a slice shared with its models stays one complete grid)."""
    specs = [spec] if isinstance(spec, ModelSpec) else list(spec)
    res = {s.name: tuple(resolutions) for s in specs} if resolutions else None
    dev = open_device(device, threads=threads, settings=settings)
    channel_multiple = channel_multiple or getattr(dev, "channel_multiple", 1)
    try:
        dev.prepare()
        slices = design_grid(specs, res, adaptive=adaptive, channel_points=channel_points,
                             sparsities=tuple(sparsities) if sparsities else None,
                             channel_multiple=channel_multiple, existing=_same_device_table(table, dev))
        with MeasurementStore(store) as st:
            report = Profiler(dev, st, progress=progress).run(slices, adaptive=adaptive, threshold=threshold)
        if hasattr(dev, "work_summary"):        # a farm group: who measured what, every fault
            report.farm = dev.work_summary()
        return report
    finally:
        dev.close()


def build_table(specs: Sequence[ModelSpec], device: str = DEFAULT_DEVICE, store: str | Path = DEFAULT_STORE,
                out: str | Path | None = None, resolutions: Sequence[int] | None = None, threads: int = 1,
                extra_meta: dict | None = None, calibrate: int = 12, progress: bool = True,
                channel_multiple: int | None = None, calibration_fit: str = "line") -> LatencyTable:
    """Build a table of the slices ``specs`` need from the measurements of ``device`` in ``store``.

    With ``calibrate`` > 0, that many whole networks per model are measured end to end and a
    scale and offset are fitted (``calibration_fit``, see :func:`latbench.validation.fit_calibration`); 0 keeps
    the bare layer sum.
    """
    _check_fit(calibration_fit)
    dev = open_device(device, threads=threads)
    channel_multiple = channel_multiple or getattr(dev, "channel_multiple", 1)
    try:
        with MeasurementStore(store) as st:
            env_id = environment_of(dev, st)
            res = {s.name: tuple(resolutions) for s in specs} if resolutions else None
            slices = design_grid(list(specs), res, channel_multiple=channel_multiple,
                                 existing=_same_device_table(out, dev))
            lattice = {s.key: {a: set(v) for a, v in s.lattice.items() if a != "sparsity"} for s in slices}
            meta = {"models": [s.name for s in specs], "channel_multiple": channel_multiple, **(extra_meta or {})}
            table, frame = table_from_store(st, env_id, [s.key for s in slices], meta, lattice)
            if out and Path(out).exists():
                table, frame = _merge_previous(table, frame, Path(out), {s.name for s in specs})
            for spec in specs:
                if spec.remainder:
                    table.meta.setdefault("remainder", {})[spec.name] = measure_remainder(spec, dev, st, progress)
            if calibrate:
                for spec in specs:
                    calibrate_table(spec, table, dev, st, n=calibrate, resolutions=resolutions, progress=progress,
                                    divisor=channel_multiple, fit=calibration_fit)
    finally:
        dev.close()
    if out:
        table.save(out, frame)
    return table


def _same_device_table(path: str | Path | None, device) -> LatencyTable | None:
    """The table at ``path`` when it exists and was measured on ``device`` (same fingerprint)."""
    if path is None or not Path(path).exists():
        return None
    try:
        table = LatencyTable.load(path)
    except (TableError, OSError, ValueError):
        return None
    return table if table.fingerprint == device.fingerprint() else None


def _merge_previous(table: LatencyTable, frame: pd.DataFrame, path: Path,
                    rebuilt: set[str]) -> tuple[LatencyTable, pd.DataFrame]:
    """A table of this device already at ``path`` keeps its other models: their slices, calibrations (whose
    networks teach the device's correction for models never measured whole) and remainders. A table of another
    device, or an unreadable one, is replaced."""
    try:
        previous = LatencyTable.load(path)
        old_frame = pd.read_parquet(path)
    except (TableError, OSError, ValueError):
        return table, frame
    if previous.fingerprint != table.fingerprint:
        return table, frame
    new_slices = set(zip(frame["signature"], frame["input_hw"]))
    keep = [key not in new_slices for key in zip(old_frame["signature"], old_frame["input_hw"])]
    merged = pd.concat([frame, old_frame[keep][frame.columns]], ignore_index=True)
    meta = dict(table.meta)
    meta["models"] = list(dict.fromkeys(previous.meta.get("models", []) + meta.get("models", [])))
    for key in ("calibration", "remainder"):
        kept = {k: v for k, v in (previous.meta.get(key) or {}).items() if k not in rebuilt}
        if kept or meta.get(key):
            meta[key] = {**kept, **(meta.get(key) or {})}
    return LatencyTable.from_frame(merged, meta), merged


def measure_remainder(spec: ModelSpec, device, store: MeasurementStore, progress: bool = True) -> dict:
    """Time the ops of an imported model no kernel covers (``--skip-unsupported``) as one subgraph at full width;
    the predictor adds it to every network of the model."""
    from .models.onnx_graph import load_model_graph, remainder_model
    from .validation import measure_models

    graph = remainder_model(load_model_graph(spec.source, spec.input_shape or None), spec.remainder)
    if device.model_format == "tflite":
        from .export.onnx_tflite import onnx_to_tflite

        data = onnx_to_tflite(graph)
    else:
        data = graph.SerializeToString()
    ms = float(measure_models([data], device, store, progress=progress)[0])
    return {"ms": ms, "nodes": list(spec.remainder)}


def _check_fit(fit: str) -> None:
    from .validation import CALIBRATION_FITS

    if fit not in CALIBRATION_FITS:
        raise TableError(f"unknown calibration fit {fit!r}; use one of {', '.join(CALIBRATION_FITS)}")


def recalibrate(table: str | Path, spec: ModelSpec, device: str = DEFAULT_DEVICE, store: str | Path = DEFAULT_STORE,
                n: int = 24, seed: int = 1_000_003, out: str | Path | None = None, threads: int = 1,
                resolutions: Sequence[int] | None = None, progress: bool = True, fit: str = "line") -> dict:
    """Measure ``n`` whole networks of ``spec`` now and refit the calibration of ``table`` (written to ``out``,
    default in place); the previous entry is kept under ``calibration_history``. The resolutions default to
    those of the previous calibration."""
    _check_fit(fit)
    path = Path(table)
    loaded = LatencyTable.load(path)
    previous = loaded.meta.get("calibration", {}).get(spec.name)
    resolutions = resolutions or (previous or {}).get("resolutions")
    dev = open_device(device, threads=threads)
    try:
        loaded.check_device(dev.fingerprint(), device)
        with MeasurementStore(store) as st:
            entry = calibrate_table(spec, loaded, dev, st, n=n, seed=seed, progress=progress, resolutions=resolutions,
                                    fit=fit,
                                    divisor=int(loaded.meta.get("channel_multiple", 1)))
    finally:
        dev.close()
    if previous:
        loaded.meta.setdefault("calibration_history", {}).setdefault(spec.name, []).append(previous)
    loaded.save(out or path, pd.read_parquet(path))
    return entry


MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}


def measure_file(path: str | Path, device: str = DEFAULT_DEVICE, store: str | Path = DEFAULT_STORE,
                 threads: int = 1, settings: MeasureSettings | None = None, progress: bool = True):
    """Measure one exported model file end to end on ``device`` with latbench's protocol (reference
    network side by side, interleaved rounds); stored by content, so measuring the same bytes again
    reads the store. Returns the stored :class:`~latbench.devices.base.Measurement`."""
    from .devices import DeviceError
    from .validation import file_key, measure_models

    path = Path(path)
    fmt = MODEL_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DeviceError(f"{path}: not a model file latbench can measure (.onnx or .tflite)")
    model = path.read_bytes()
    dev = open_device(device, threads=threads, settings=settings)
    try:
        if dev.model_format != fmt:
            raise DeviceError(f"{device} runs {dev.model_format} models, and {path} is {fmt}; export the network "
                              f"as .{dev.model_format} or pick a device that runs {fmt}")
        dev.prepare()
        with MeasurementStore(store) as st:
            measure_models([model], dev, st, progress=progress)
            env_id = environment_of(dev, st)
            return st.rows(env_id, [file_key(model)])[0].measurement
    finally:
        dev.close()


def predict(spec: ModelSpec, archs: Sequence[Architecture], table: LatencyTable | str | Path, clamp: bool = False):
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    return Predictor(spec, table, clamp=clamp).predict(archs)


def validate_model(spec: ModelSpec, table: LatencyTable | str | Path, device: str = DEFAULT_DEVICE,
                   store: str | Path = DEFAULT_STORE, n: int = 100, seed: int = 0,
                   resolutions: Sequence[int] | None = None, sparsities: Sequence[float] = (0.0,),
                   divisor: int | None = None, min_ratio: float = 0.25, threads: int = 1,
                   progress: bool = True) -> ValidationReport:
    """Predict and measure ``n`` random architectures (plus the full network) end to end."""
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    dev = open_device(device, threads=threads)
    try:
        table.check_device(dev.fingerprint(), device)
        divisor = divisor or int(table.meta.get("channel_multiple", 1))
        predictor = Predictor(spec, table)
        # By default the model's resolutions that the table holds: a table profiled at one resolution
        # validates at that one.
        res = tuple(resolutions) if resolutions else predictor.covered_resolutions()
        archs = [Architecture.full(spec, max(res))] + random_architectures(
            spec, n - 1, seed=seed, min_ratio=min_ratio, sparsities=tuple(sparsities), resolutions=res,
            divisor=divisor)
        with MeasurementStore(store) as st:
            return validate(spec, predictor, dev, st, archs, progress=progress)
    finally:
        dev.close()


__all__ = ["load_model", "profile", "build_table", "measure_file", "predict", "validate_model", "DEFAULT_STORE", "TableError"]
