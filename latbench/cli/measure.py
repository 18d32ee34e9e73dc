"""Measuring and predicting: ``latbench devices``, ``profile``, ``predict``, ``measure``, ``validate`` and
``demo`` (top-level commands, registered in :mod:`latbench.cli`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import api
from ..devices import DEFAULT_DEVICE
from ..files import atomic_write_text
from ..models import Architecture
from ..tables.table import LatencyTable, TableError
from rich.markup import escape

from .common import (DEVICE_HELP, ERRORS, FARM_HELP, GROUP_HELP, INPUT_SHAPE_HELP, MIX_HELP, SKIP_HELP, console,
                     device_or_farm, fail, parse_input_shape, settings)


def devices(tcp: Optional[List[str]] = typer.Option(None, help="also probe the phone at HOST:PORT (repeatable; "
                                                               "or set LATBENCH_ADB_TCP=HOST:PORT,…)"),
            phones: bool = typer.Option(True, help="look for phones (USB via libusb, --tcp addresses)")) -> None:
    """List reachable devices with their fingerprints: the host runtimes, phones on USB and at the given
    TCP addresses.

    Example: latbench devices --tcp 192.168.1.20:5555
    """
    from ..devices import list_devices

    t = Table("device", "available", "fingerprint", "detail")
    for d in list_devices(tcp or (), phones=phones):
        t.add_row(d.name, "yes" if d.available else "no", d.fingerprint,
                  ", ".join(f"{k}={v}" for k, v in d.detail.items()
                             if k in ("cpu", "cores", "version", "kernels", "threads", "error", "phone",
                                      "platform", "sdk")))
    console.print(t)


def profile(model: str = typer.Argument(..., help="zoo model name (e.g. mobilenet_v2) or path to an .onnx file"),
            device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
            store: Path = typer.Option(Path(api.DEFAULT_STORE), help="SQLite measurement store (resumed if present)"),
            resolution: Optional[List[int]] = typer.Option(None, help="input resolution(s); default: the model's"),
            adaptive: bool = typer.Option(True, help="adaptive refinement (--dense for the full JCW-style grid)"),
            dense: bool = typer.Option(False, "--dense", help="measure the full dense grid"),
            threshold: float = typer.Option(0.08, help="refine where interpolation misses a check point by more than this fraction"),
            channel_points: int = typer.Option(8, help="channel knots are c//N·i, i=1..N"),
            channel_multiple: Optional[int] = typer.Option(
                None, help="channel knots are multiples of this (default: the device's channel block, e.g. 16 for "
                           "onnxruntime on AVX-512; see docs/measurement.md)"),
            sparsity: Optional[List[float]] = typer.Option(None, help="sparsity knots (default 0,0.5,0.9 dense; 0,0.9 adaptive)"),
            threads: int = typer.Option(1, help="runtime threads"),
            rounds: int = typer.Option(5, help="interleaved rounds per measurement"),
            runs: int = typer.Option(10, help="timed runs per round"),
            warmup: int = typer.Option(5, help="untimed warm-up runs"),
            table: Optional[Path] = typer.Option(None, help="also build this table file when done"),
            calibrate: int = typer.Option(12, help="networks measured to calibrate the table (with --table)"),
            farm: Optional[Path] = typer.Option(None, help=FARM_HELP),
            group: Optional[str] = typer.Option(None, help="with --farm: profile only this device group "
                                                           "(default: every group, one table each)"),
            mix_units: bool = typer.Option(False, "--mix-units", help=MIX_HELP),
            input_shape: Optional[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
            skip_unsupported: bool = typer.Option(False, "--skip-unsupported", help=SKIP_HELP),
            progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Measure the layer variants MODEL needs on DEVICE. Resumes by default: a killed run restarted with the
    same arguments measures only what is missing.

    Example: latbench profile mobilenet_v2 --device host:onnxruntime --resolution 224 --table tables/mbv2.parquet
    """
    try:
        spec = api.load_model(model, parse_input_shape(input_shape), skip_unsupported)
        for dev, out in _profile_targets(device, farm, group, mix_units, table):
            report = api.profile(spec, dev, store, resolution, adaptive=adaptive and not dense, threshold=threshold,
                                 channel_points=channel_points, sparsities=sparsity, threads=threads,
                                 channel_multiple=channel_multiple,
                                 settings=settings(rounds, runs, warmup), progress=progress, table=out)
            console.print_json(json.dumps({**({"device": dev} if farm else {}), **report.to_dict()}))
            if out:
                api.build_table([spec], dev, store, out, resolution, threads, calibrate=calibrate,
                                channel_multiple=channel_multiple)
                console.print(f"table written to [bold]{escape(str(out))}[/]")
    except ERRORS as err:
        fail(err)


def _profile_targets(device: str, farm: Optional[Path], group: Optional[str], mix_units: bool,
                     table: Optional[Path]) -> list[tuple[str, Optional[Path]]]:
    """(device, table) pairs to profile: the device; or each device group of the farm (one table each: a
    ``{group}`` in the table path becomes the group's fingerprint)."""
    if farm is None:
        return [(device, table)]
    from ..farm import load_farm
    from ..farm.device import farm_groups
    from ..farm.spec import FarmError

    fingerprints = [group] if group else [g.fingerprint for g in farm_groups(load_farm(farm))[0]]
    if not fingerprints:
        raise FarmError(f"no device of {farm} could be opened: see `latbench farm status {farm}`")
    if table and len(fingerprints) > 1 and "{group}" not in str(table):
        raise FarmError(f"{farm} has {len(fingerprints)} device groups ({', '.join(fingerprints)}), which would all "
                        f"write the one table {table}: put {{group}} in the path (e.g. tables/{{group}}.parquet) or "
                        "pick one with --group")
    return [(device_or_farm(device, farm, fp, mix_units), Path(str(table).replace("{group}", fp)) if table else None)
            for fp in fingerprints]


def predict(model: str, arch: Optional[Path] = typer.Option(None, help="architecture JSON (default: the full model)"),
            table: Path = typer.Option(..., help="latency table (.parquet)"),
            clamp: bool = typer.Option(False, help="clamp queries outside the grid instead of failing"),
            breakdown: bool = typer.Option(False, help="print per-layer latencies"),
            input_shape: Optional[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
            skip_unsupported: bool = typer.Option(False, "--skip-unsupported", help=SKIP_HELP)) -> None:
    """Predict the latency of one architecture from a table.

    Example: latbench predict mobilenet_v2 --arch arch.json --table tables/host-ort-mobilenet_v2.parquet
    """
    from ..predictor import Predictor

    try:
        spec = api.load_model(model, parse_input_shape(input_shape), skip_unsupported)
        a = Architecture.load(arch) if arch else Architecture.full(spec)
        p = Predictor(spec, LatencyTable.load(table), clamp=clamp)
        ms = float(p.predict(a)[0])
        bare = float(p.predict(a, calibrated=False)[0])
        # The three figures: the bare sum of kernel lookups, the device's correction learnt on other models'
        # networks, and this model's own calibration (each only when the table has it).
        figures = {"sum_of_layers_ms": bare}
        for source in ("device", "model"):
            try:
                figures[f"{source}_calibrated_ms"] = float(p.predict(a, source=source)[0])
            except TableError:
                figures[f"{source}_calibrated_ms"] = None
        if breakdown:
            console.print(p.breakdown(a).to_string())
    except ERRORS as err:
        fail(err)
    console.print_json(json.dumps({"model": spec.name, "resolution": a.resolution, "predicted_ms": ms,
                                   "calibration": p.calibration_source, **figures,
                                   "remainder_nodes": len(spec.remainder)}))


def measure(model: Path = typer.Argument(..., help="an exported model: .onnx or .tflite"),
            device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
            store: Path = typer.Option(Path(api.DEFAULT_STORE), help="SQLite measurement store"),
            threads: int = typer.Option(1, help="runtime threads"),
            farm: Optional[Path] = typer.Option(None, help=FARM_HELP),
            group: Optional[str] = typer.Option(None, help=GROUP_HELP),
            progress: bool = typer.Option(True)) -> None:
    """Measure one model file end to end with latbench's protocol; the result is stored by the file's content.

    Example: latbench measure runs/lcp/pruned.tflite --device host:litert
    """
    from dataclasses import asdict

    try:
        device = device_or_farm(device, farm, group)
        m = api.measure_file(model, device, store, threads, progress=progress)
    except ERRORS as err:
        fail(err)
    console.print_json(json.dumps({"file": str(model), "device": device, **asdict(m)}))


def validate(model: str, table: Path = typer.Option(..., help="latency table to check"),
             device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
             store: Path = typer.Option(Path(api.DEFAULT_STORE)),
             n: int = typer.Option(100, help="networks to measure (the full network + n-1 random ones)"),
             seed: int = typer.Option(0),
             resolution: Optional[List[int]] = typer.Option(None, help="default: the model's resolutions the table "
                                                                       "holds"),
             sparsity: Optional[List[float]] = typer.Option(None, help="sparsities to sample from (default 0)"),
             divisor: Optional[int] = typer.Option(None, help="round sampled widths to multiples of this "
                                                               "(default: the table's channel multiple)"),
             min_ratio: float = typer.Option(0.25, help="smallest width as a fraction of the full width"),
             threads: int = typer.Option(1),
             json_path: Optional[Path] = typer.Option(None, "--json", help="write the JSON report here"),
             csv: Optional[Path] = typer.Option(None, help="write all (predicted, measured) pairs here"),
             plot: Optional[Path] = typer.Option(None, help="write the predicted-vs-measured scatter plot (PNG)"),
             farm: Optional[Path] = typer.Option(None, help=FARM_HELP),
             group: Optional[str] = typer.Option(None, help=GROUP_HELP),
             mix_units: bool = typer.Option(False, "--mix-units", help=MIX_HELP),
             input_shape: Optional[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
             skip_unsupported: bool = typer.Option(False, "--skip-unsupported", help=SKIP_HELP),
             progress: bool = typer.Option(True)) -> None:
    """Measure N random pruned networks end to end and compare with the table's predictions.

    Example: latbench validate mobilenet_v2 --table tables/host-ort-mobilenet_v2.parquet --n 100 --json report.json
    """
    try:
        spec = api.load_model(model, parse_input_shape(input_shape), skip_unsupported)
        if farm is not None:
            device = device_or_farm(device, farm, group or LatencyTable.load(table).fingerprint, mix_units)
        report = api.validate_model(spec, table, device, store, n, seed, resolution, tuple(sparsity or (0.0,)),
                                    divisor, min_ratio, threads, progress)
        summary = report.write(json_path, csv, plot, title=f"{spec.name} on {device}")
    except ERRORS as err:
        fail(err)
    console.print_json(json.dumps(summary))


def demo(out: Path = typer.Option(Path("runs/demo"), help="folder for the store, table and report"),
         model: str = typer.Option("resnet56", help="zoo model"),
         n: int = typer.Option(30, help="validation networks"),
         progress: bool = typer.Option(True)) -> None:
    """The whole pipeline on the host CPU, no phone: profile → table → predict → validate.

    Example: latbench demo --out runs/demo
    """
    try:
        spec = api.load_model(model)
        store = out / "measurements.db"
        res = [spec.base_resolution]
        console.rule(f"1/4 profile {spec.name} at {res[0]}×{res[0]} on {DEFAULT_DEVICE}")
        report = api.profile(spec, DEFAULT_DEVICE, store, res, adaptive=True, progress=progress)
        console.print_json(json.dumps(report.to_dict()))
        console.rule("2/4 build the table")
        table_path = out / f"host-ort-{spec.name}.parquet"
        table = api.build_table([spec], DEFAULT_DEVICE, store, table_path, res)
        console.print(f"{len(table.slices)} slices → {table_path}")
        console.rule("3/4 predict")
        full = Architecture.full(spec, res[0])
        atomic_write_text(out / "full_arch.json", full.to_json())
        console.print(f"full {spec.name}: predicted {float(api.predict(spec, [full], table)[0]):.3f} ms")
        console.rule(f"4/4 validate on {n} networks")
        rep = api.validate_model(spec, table, DEFAULT_DEVICE, store, n, resolutions=res, progress=progress)
        summary = rep.write(out / "validation.json", out / "validation.csv", out / "validation.png",
                            title=f"{spec.name} on {DEFAULT_DEVICE}")
        console.print_json(json.dumps({k: v for k, v in summary.items() if k != "worst"}))
        console.print(f"report, pairs and plot in [bold]{out}[/]")
    except ERRORS as err:
        fail(err)


COMMANDS = (devices, profile, predict, measure, validate, demo)
