"""Validation: predicted vs measured latency of random whole networks, on the device itself."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from rich.console import Console

from .devices.base import Artifact, Device
from .export import export_imported_network, export_network_for
from .files import atomic_save_figure, atomic_write_json, atomic_write_text
from .recipe import Choice
from .layers import LayerPoint
from .models.arch import Architecture
from .models.spec import ModelSpec
from .models.torch_net import materialize
from .predictor import Population, Predictor
from .profiling import _progress, environment_of
from .store import MeasurementStore


def network_key(arch: Architecture, spec: ModelSpec | None = None) -> str:
    """Store key of ``arch``'s network; a ``spec`` whose input has other channels than its zoo stem (a network
    trained on grey images) keys its networks apart: their stem conv is another kernel."""
    key = "net:" + arch.model + ":" + hashlib.sha256(arch.to_json().encode()).hexdigest()[:16]
    stem = stem_channels(spec) if spec is not None else None
    return key if stem is None or stem == spec.in_channels else f"{key}|in{spec.in_channels}"


def stem_channels(spec: ModelSpec) -> int | None:
    """Input channels the zoo's stem layer is written for (None for an imported model: its graph's own)."""
    if spec.source:
        return None
    stem = next((layer for layer in spec.layers if layer.fixed_in is not None), None)
    return None if stem is None else int(stem.fixed_in)


def table_reference_ms(table) -> float | None:
    return (table.meta.get("environment") or {}).get("reference_ms")


def file_key(model: bytes) -> str:
    """Store key of an exported model file: its content, so the same bytes are measured once."""
    return "file:" + hashlib.sha256(model).hexdigest()[:24]


def _repeat_key(key: str, repeat: int) -> str:
    """The store key of the ``repeat``-th measurement of the same network (0: the first)."""
    return f"{key}#{repeat}" if repeat else key


def network_todo(spec: ModelSpec, archs: Sequence[Architecture], keys: Sequence[str], fmt: str) -> dict:
    """``{key: (input size, make the exported random-weight network)}`` for :func:`_measure_keyed` and
    :func:`measure_beside` (exported only when it must be measured)."""
    if spec.source:       # an imported model: its own graph, pruned
        return {k: (a.resolution, lambda a=a: export_imported_network(fmt, spec, a)) for k, a in zip(keys, archs)}
    return {k: (a.resolution, lambda a=a: export_network_for(fmt, materialize(a, spec), a)) for k, a in zip(keys, archs)}


def _network_env(device: Device, store: MeasurementStore, reference_ms: float | None) -> tuple[int, float]:
    """The store environment of ``device`` and the factor from its reference unit to ``reference_ms``'s."""
    env_id = environment_of(device, store, reference_ms)
    scale = reference_ms / device.reference_ms if reference_ms and getattr(device, "reference_ms", None) else 1.0
    return env_id, scale


def _network_point(hw: int) -> LayerPoint:
    return LayerPoint(0, 0, 0.0, hw)       # networks have no layer point: only their input size


def measure_networks(spec: ModelSpec, archs: Sequence[Architecture], device: Device, store: MeasurementStore,
                     batch_size: int = 8, progress: bool = True, console: Console | None = None,
                     reference_ms: float | None = None, repeat: int = 0) -> np.ndarray:
    """End-to-end latency (median ms) of each architecture; results are stored, so a rerun resumes.

    With ``reference_ms`` (a table's reference unit) the results are expressed in that unit even when
    the store's environment fixed another one. ``repeat`` > 0 measures the same networks again, under their
    own store keys (a repeated measurement, e.g. to see its spread).
    """
    fmt = device.model_format
    keys = [_repeat_key(network_key(a, spec), repeat) for a in archs]
    todo = network_todo(spec, archs, keys, fmt)
    measured = _measure_keyed(todo, device, store, batch_size, progress, console, reference_ms)
    return np.array([measured[k] for k in keys])


def measure_models(models: Sequence[bytes], device: Device, store: MeasurementStore, progress: bool = True,
                   console: Console | None = None, reference_ms: float | None = None, repeat: int = 0) -> np.ndarray:
    """End-to-end latency (median ms) of exported model files in the device's format, keyed by content:
    what is measured is exactly the file that is shipped (its weights, its zero pattern). ``repeat``: as for
    :func:`measure_networks`."""
    keys = [_repeat_key(file_key(m), repeat) for m in models]
    todo = {k: (0, lambda m=m: m) for k, m in zip(keys, models)}
    measured = _measure_keyed(todo, device, store, 8, progress, console, reference_ms)
    return np.array([measured[k] for k in keys])


def _measure_keyed(todo: dict, device: Device, store: MeasurementStore, batch_size: int, progress: bool,
                   console: Console | None, reference_ms: float | None) -> dict[str, float]:
    """Measure ``{key: (input size, make model bytes)}`` end to end, skipping what the store holds;
    returns every key's median in the unit of ``reference_ms`` (default the device's own)."""
    console = console or Console(stderr=True)
    env_id, scale = _network_env(device, store, reference_ms)
    point = _network_point
    missing = [k for k, (hw, _) in todo.items() if not store.has(env_id, k, point(hw))]
    fmt = device.model_format
    with _progress(console, progress) as bar:
        task = bar.add_task("networks", total=len(missing))
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            artifacts = [Artifact(k, todo[k][1](), kind="network", format=fmt) for k in batch]
            for k, m in zip(batch, device.measure(artifacts)):
                store.put(env_id, k, point(todo[k][0]), m)
            bar.advance(task, len(batch))
    medians = {r.signature: r.measurement.median_ms for r in store.rows(env_id, todo)}
    return {k: medians[k] * scale for k in todo}


def measure_beside(todo: dict, anchor: tuple[str, int, object], device: Device, store: MeasurementStore,
                   progress: bool = True, console: Console | None = None,
                   reference_ms: float | None = None) -> dict[str, tuple[float, float]]:
    """Measure each ``{key: (input size, make model bytes)}`` in one batch with ``anchor`` = ``(key, input size,
    make model bytes)`` (their runs interleaved round by round), so that slow drift of the device cancels in
    their ratio; returns ``{key: (its median, the anchor's median beside it)}`` in the unit of
    ``reference_ms``. Both are stored (the anchor as ``ANCHOR@KEY``): a rerun measures only missing pairs."""
    console = console or Console(stderr=True)
    env_id, scale = _network_env(device, store, reference_ms)
    point = _network_point
    anchor_key, anchor_hw, make_anchor = anchor
    own = lambda k: f"{k}|beside:{anchor_key}"  # noqa: E731 - keys of their own: never mixed with lone runs
    pair = lambda k: f"{anchor_key}|anchor-of:{k}"  # noqa: E731
    missing = [k for k, (hw, _) in todo.items() if not store.has(env_id, own(k), point(hw))]
    fmt = device.model_format
    with _progress(console, progress) as bar:
        task = bar.add_task("networks beside the anchor", total=len(missing))
        anchor_model = make_anchor() if missing else None
        for k in missing:
            beside, item = device.measure([Artifact(pair(k), anchor_model, kind="network", format=fmt),
                                           Artifact(own(k), todo[k][1](), kind="network", format=fmt)])
            # A pair is one observation: stored together or not at all.
            store.put_together(env_id, [(own(k), point(todo[k][0]), item), (pair(k), point(anchor_hw), beside)])
            bar.advance(task, 1)
    medians = {r.signature: r.measurement.median_ms
               for r in store.rows(env_id, [*map(own, todo), *map(pair, todo)])}
    return {k: (medians[own(k)] * scale, medians[pair(k)] * scale) for k in todo}


@dataclass
class ValidationReport:
    frame: pd.DataFrame

    def summary(self) -> dict:
        f = self.frame
        err = (f.predicted_ms - f.measured_ms) / f.measured_ms
        worst = f.assign(error=err).reindex(err.abs().sort_values(ascending=False).index).head(5)
        raw_err = (f.sum_of_layers_ms - f.measured_ms) / f.measured_ms
        return {"n": int(len(f)), "within_5pct": float((err.abs() <= 0.05).mean()),
                "within_10pct": float((err.abs() <= 0.10).mean()),
                "rmse_ms": float(np.sqrt(np.mean((f.predicted_ms - f.measured_ms) ** 2))),
                "mape": float(err.abs().mean()), "mean_error": float(err.mean()),
                "uncalibrated": {"within_5pct": float((raw_err.abs() <= 0.05).mean()),
                                 "within_10pct": float((raw_err.abs() <= 0.10).mean()),
                                 "mean_error": float(raw_err.mean())},
                "measured_ms_range": [float(f.measured_ms.min()), float(f.measured_ms.max())],
                "worst": [{"arch": json.loads(r.arch), "predicted_ms": float(r.predicted_ms),
                           "measured_ms": float(r.measured_ms), "error": float(r.error)} for r in worst.itertuples()]}

    def write(self, json_path: str | Path | None = None, csv_path: str | Path | None = None,
              plot_path: str | Path | None = None, title: str = "") -> dict:
        summary = self.summary()
        if json_path:
            atomic_write_json(json_path, summary, indent=2)
        if csv_path:
            atomic_write_text(csv_path, self.frame.to_csv(index=False))
        if plot_path:
            self.plot(plot_path, title, summary)
        return summary

    def plot(self, path: str | Path, title: str, summary: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        f = self.frame
        fig, ax = plt.subplots(figsize=(5.5, 5))
        lo, hi = float(min(f.measured_ms.min(), f.predicted_ms.min())), float(max(f.measured_ms.max(), f.predicted_ms.max()))
        xs = np.linspace(lo * 0.95, hi * 1.05, 10)
        ax.plot(xs, xs, "k-", lw=1, label="exact")
        ax.fill_between(xs, xs * 0.95, xs * 1.05, color="tab:green", alpha=0.25, label="±5 %")
        ax.fill_between(xs, xs * 0.90, xs * 1.10, color="tab:green", alpha=0.10, label="±10 %")
        ax.scatter(f.measured_ms, f.predicted_ms, s=12, c="tab:blue")
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms)")
        ax.set_title(f"{title}\n n={summary['n']}  ±5 %: {summary['within_5pct']:.0%}  ±10 %: "
                     f"{summary['within_10pct']:.0%}  RMSE {summary['rmse_ms']:.3f} ms", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        atomic_save_figure(path, fig, dpi=120)
        plt.close(fig)


def validate(spec: ModelSpec, predictor: Predictor, device: Device, store: MeasurementStore,
             archs: Sequence[Architecture], progress: bool = True) -> ValidationReport:
    predicted = predictor.predict(archs)
    raw = predictor.predict(archs, calibrated=False)
    measured = measure_networks(spec, archs, device, store, progress=progress,
                                reference_ms=table_reference_ms(predictor.table))
    frame = pd.DataFrame({"arch": [a.to_json() for a in archs], "resolution": [a.resolution for a in archs],
                          "predicted_ms": predicted, "sum_of_layers_ms": raw, "measured_ms": measured})
    return ValidationReport(frame)


class CalibrationFit(Choice):
    """How a table's whole-network calibration is fitted (:func:`fit_calibration`)."""

    line = "line"      # scale + offset, relative least squares
    ratio = "ratio"    # the median ratio alone


CALIBRATION_FITS = CalibrationFit.values()


def fit_calibration(raw: np.ndarray, measured: np.ndarray, fit: str = "line") -> tuple[float, float]:
    """(scale, offset_ms) mapping sums of lookups ``raw`` to ``measured`` whole-network latencies.

    ``"ratio"``: the median of measured / raw, no offset. ``"line"``: scale and offset minimising the squared
    *relative* errors, Σ((scale·raw + offset − measured) / measured)², so the full network, far from the
    others, does not pull the line as an ordinary least-squares fit does. The offset carries what every
    layer timed alone pays once and the network pays once in all (e.g. −0.11 ms over ResNet-56's 57 layers on
    LiteRT); a pure scale spreads it proportionally, which over-predicts narrow pruned networks. Falls back to
    ``"ratio"`` when the sums span less than 1.5× or the line would not be increasing.
    """
    if fit not in CALIBRATION_FITS:
        raise ValueError(f"unknown calibration fit {fit!r}; use one of {', '.join(CALIBRATION_FITS)}")
    raw, measured = np.asarray(raw, float), np.asarray(measured, float)
    ratio = float(np.median(measured / raw))
    if fit == "ratio" or len(raw) < 4 or raw.max() < 1.5 * raw.min():
        return ratio, 0.0
    design = np.column_stack([raw / measured, 1.0 / measured])
    (scale, offset), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    if scale <= 0 or scale * raw.min() + offset <= 0:
        return ratio, 0.0
    return float(scale), float(offset)


#: Strengths tried for pulling the per-category scales of a device fit towards one common scale (0: free
#: scales; 1e6: one scale for every category); the one that predicts best the models left out wins.
SHRINKAGE_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 1e6)


def _category_fit(sums: np.ndarray, measured: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
    """measured ≈ Σ_c (common + d_c)·sum_c + offset by relative least squares, with ``shrinkage``·N·Σ d_c²
    added (N networks): per-category scales pulled towards one common scale. Returns (scales, offset);
    categories absent from ``sums`` keep scale 1 (the lookup as timed: nothing says otherwise)."""
    present = np.flatnonzero(sums.max(axis=0) > 0)
    rel = sums[:, present] / measured[:, None]
    n, k = rel.shape
    design = np.column_stack([rel.sum(axis=1), rel, 1.0 / measured])       # common, d_c, offset
    target = np.ones(n)
    if shrinkage > 0:
        penalty = np.zeros((k, k + 2))
        penalty[:, 1:k + 1] = np.eye(k) * np.sqrt(shrinkage * n)
        design, target = np.vstack([design, penalty]), np.concatenate([target, np.zeros(k)])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    scales = np.ones(sums.shape[1])
    scales[present] = coef[0] + coef[1:k + 1]
    return scales, float(coef[-1])


def _choose_shrinkage(per_model: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The :data:`SHRINKAGE_GRID` strength whose fits on all models but one predict the one left out best (mean
    relative error over its networks, every model in turn): the only way the fit is judged is the way it is used,
    on a model it has not seen. With one model there is nothing to leave out: 0."""
    if len(per_model) < 2:
        return 0.0
    best = None
    for strength in SHRINKAGE_GRID:
        errors = []
        for left in per_model:
            rest = [per_model[m] for m in per_model if m != left]
            scales, offset = _category_fit(np.vstack([s for s, _ in rest]), np.concatenate([y for _, y in rest]),
                                           strength)
            sums, measured = per_model[left]
            errors.append(np.abs((sums @ scales + offset) / measured - 1))
        score = float(np.mean(np.concatenate(errors)))
        if best is None or score < best[0] - 1e-12:       # ties: the weaker pull
            best = (score, strength)
    return best[1]


def fit_device_calibration(table, exclude: str | None = None, min_models: int = 2) -> dict | None:
    """A device's own correction from kernel lookups to a whole network, learnt across models.

    Every model's calibration entry keeps, per network, its sums of lookups by kernel category
    (:data:`latbench.predictor.KERNEL_CATEGORIES`) and the measured latency. Over the models other than
    ``exclude`` this fits measured ≈ Σ_c scale_c · sum_c + offset by relative least squares: how much a kernel
    timed alone differs from the same kernel inside a network depends on what it is (on onnxruntime a dense 3×3
    conv ≈ 1, memory-bound 1×1 and depthwise kernels ≈ 0.8; benchmarks/realworld.py), so one scale does not carry
    from a ResNet to a MobileNet. The scales are pulled towards one common scale as strongly as leaving each
    fitted model out in turn shows it pays (``shrinkage``, from :data:`SHRINKAGE_GRID`): a category few models
    have (squeeze-excitation, ops) otherwise takes whatever scale fits those few, e.g. SE at 0.15 or 0.69 of its
    lookups depending on which one model is left out. Categories no other model has keep scale 1. Returns None
    when fewer than ``min_models`` models have samples.
    """
    from .predictor import KERNEL_CATEGORIES

    per_model: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, entry in (table.meta.get("calibration") or {}).items():
        if name == exclude or not entry.get("kernel_samples"):
            continue
        data = np.array(entry["kernel_samples"], dtype=float)
        per_model[name] = (data[:, :-1], data[:, -1])
    if len(per_model) < max(1, min_models):
        return None
    sums = np.vstack([s for s, _ in per_model.values()])
    measured = np.concatenate([y for _, y in per_model.values()])
    shrinkage = _choose_shrinkage(per_model)
    fitted_scales, offset = _category_fit(sums, measured, shrinkage)
    scales = {c: float(fitted_scales[i]) for i, c in enumerate(KERNEL_CATEGORIES)}
    fitted = sums @ np.array([scales[c] for c in KERNEL_CATEGORIES]) + offset
    return {"scales": scales, "offset_ms": offset, "shrinkage": shrinkage, "models": sorted(per_model),
            "networks": len(measured), "fit_error": float(np.sqrt(np.mean(((fitted - measured) / measured) ** 2)))}


def calibration_architectures(spec: ModelSpec, n: int, seed: int, resolutions: Sequence[int],
                              divisor: int = 8) -> list[Architecture]:
    """The full network, then half of the rest with every group's width uniform in [0.25, 1]·c (what validation
    draws), then narrow ones: widths uniform in [0.25, r]·c with r from 0.25 (the narrowest network) to 0.75.
    Pruned networks are narrower than random ones; measured on ResNet-56 / LiteRT, networks below the random
    ones' range ran 5–11 % faster than a calibration fitted on random networks alone predicted."""
    from .models.arch import random_architectures

    res = tuple(resolutions)
    n_random = n // 2
    archs = [Architecture.full(spec, max(res))] + random_architectures(spec, n_random, seed=seed, resolutions=res,
                                                                             divisor=divisor)
    seen = set(archs)
    for k, r in enumerate(np.linspace(0.25, 0.75, n - 1 - n_random)):
        # Near 0.25 every draw rounds to the narrowest network: try a few seeds for a new one, else skip.
        for attempt in range(8):
            arch = random_architectures(spec, 1, seed=seed + 1 + 8 * k + attempt, resolutions=res, divisor=divisor,
                                        max_ratio=float(r))[0]
            if arch not in seen:
                seen.add(arch)
                archs.append(arch)
                break
    return archs


def calibrate(spec: ModelSpec, table, device: Device, store: MeasurementStore, n: int = 12, seed: int = 1_000_003,
              resolutions: Sequence[int] | None = None, progress: bool = True, divisor: int = 8,
              fit: str = "line") -> dict:
    """Measure ``n`` whole networks (:func:`calibration_architectures`, drawn with a seed no validation uses)
    and record in ``table.meta['calibration']`` the map from the sum of lookups to them
    (:func:`fit_calibration`; the entry keeps the median ratio too)."""
    res = tuple(resolutions or spec.resolutions)
    archs = calibration_architectures(spec, n, seed, res, divisor)
    raw = Predictor(spec, table).predict(archs, calibrated=False)
    measured = measure_networks(spec, archs, device, store, progress=progress, reference_ms=table_reference_ms(table))
    ratios = measured / raw
    scale, offset = fit_calibration(raw, measured, fit)
    predictor = Predictor(spec, table)
    sums = predictor.kernel_sums(Population.from_architectures(spec, archs))
    entry = {"fit": fit if offset else "ratio", "scale": scale, "offset_ms": offset, "median_ratio": float(np.median(ratios)),
             "networks": len(archs), "resolutions": list(res), "seed": seed,
             "ratio_spread": [float(ratios.min()), float(ratios.max())],
             # what fit_device_calibration learns from to predict other models: (sum of lookups, measured) pairs
             "kernel_samples": [[*map(float, row), float(m)] for row, m in zip(sums, measured)],
             "fitted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    table.meta.setdefault("calibration", {})[spec.name] = entry
    return entry
