"""``latbench table …``: build, inspect, test, recalibrate and import latency tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import api
from ..devices import DEFAULT_DEVICE
from ..tables.table import LatencyTable
from ..validation import CalibrationFit
from .common import DEVICE_HELP, ERRORS, FARM_HELP, GROUP_HELP, MIX_HELP, console, device_or_farm, fail

table_app = typer.Typer(no_args_is_help=True, help="Build, inspect and import latency tables.")


@table_app.command("build")
def table_build(model: List[str] = typer.Argument(..., help="zoo model name(s) or .onnx path(s) the table must cover"),
                out: Path = typer.Option(..., "--out", "-o", help="table file to write (.parquet)"),
                device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
                store: Path = typer.Option(Path(api.DEFAULT_STORE)),
                resolution: Optional[List[int]] = typer.Option(None), threads: int = typer.Option(1),
                calibrate: int = typer.Option(12, help="whole networks measured per model to fit the calibration (0: none)"),
                calibration_fit: CalibrationFit = typer.Option(CalibrationFit.line, help="line: scale + offset "
                                                                "(relative least squares); ratio: the median ratio alone"),
                channel_multiple: Optional[int] = typer.Option(
                    None, help="channel knots used when profiling (default: the device's channel block)"),
                ) -> None:
    """Build a table from the measurements in the store.

    Example: latbench table build mobilenet_v2 --resolution 224 -o tables/host-ort-mobilenet_v2.parquet
    """
    try:
        t = api.build_table([api.load_model(m) for m in model], device, store, out, resolution, threads,
                            calibrate=calibrate, channel_multiple=channel_multiple, calibration_fit=calibration_fit)
        console.print(t.summary().to_string())
        console.print(f"table written to [bold]{out}[/]")
    except ERRORS as err:
        fail(err)


@table_app.command("info")
def table_info(path: Path) -> None:
    """Show a table's provenance and grid.

    Example: latbench table info tables/host-ort-mobilenet_v2.parquet
    """
    try:
        t = LatencyTable.load(path)
    except ERRORS as err:
        fail(err)
    console.print_json(json.dumps({k: v for k, v in t.meta.items()}))
    console.print(t.summary().to_string())


@table_app.command("sparsity")
def table_sparsity(path: Path = typer.Argument(..., help="table file (.parquet)"),
                   out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the table with the test applied")) -> None:
    """Test where weight sparsity makes layers significantly faster; elsewhere use the dense latency.

    Tables built by `latbench table build` have this applied already; use it on older or imported tables.

    Example: latbench table sparsity tables/host-litert-resnet18-224-adaptive.parquet
    """
    from ..tables.sparsity import credit_table_file, summarize

    try:
        report = credit_table_file(path, out)
    except ERRORS as err:
        fail(err)
    t = Table("signature", "sparsity", "points", "median sparse/dense", "p (one-sided)", "credited")
    for sig, levels in report.items():
        for level, r in levels.items():
            t.add_row(sig, level, str(r["points"]), f"{r['median_ratio']:.3f}",
                      "-" if r["p_value"] is None else f"{r['p_value']:.2g}", "yes" if r["credited"] else "no")
    console.print(t)
    console.print(summarize(report))
    if out:
        console.print(f"table written to [bold]{out}[/]")


@table_app.command("calibrate")
def table_calibrate(path: Path = typer.Argument(..., help="table file (.parquet)"),
                    model: str = typer.Argument(..., help="zoo model whose whole networks calibrate the table"),
                    device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
                    store: Path = typer.Option(Path(api.DEFAULT_STORE)),
                    networks: int = typer.Option(24, "-n", help="whole networks to measure (the full one + random)"),
                    seed: int = typer.Option(..., help="seed of the random networks: a new one measures new networks "
                                                       "(a used one reuses the stored measurements)"),
                    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write here (default: in place)"),
                    resolution: Optional[List[int]] = typer.Option(None, help="default: those of the last calibration"),
                    fit: CalibrationFit = typer.Option(CalibrationFit.line, help="line: scale + offset (relative least "
                                                                 "squares); ratio: the median ratio alone"),
                    threads: int = typer.Option(1),
                    farm: Optional[Path] = typer.Option(None, help=FARM_HELP),
                    group: Optional[str] = typer.Option(None, help=GROUP_HELP),
                    mix_units: bool = typer.Option(False, "--mix-units", help=MIX_HELP)) -> None:
    """Refit a table's whole-network calibration on networks measured now (the device drifts; see docs/measurement.md).

    Example: latbench table calibrate tables/host-litert-resnet56-32-dense.parquet resnet56 --device host:litert --seed 7
    """
    try:
        if farm is not None:
            from ..tables.table import LatencyTable

            device = device_or_farm(device, farm, group or LatencyTable.load(path).fingerprint, mix_units)
        entry = api.recalibrate(path, api.load_model(model), device, store, n=networks, seed=seed,
                                out=out or path, threads=threads, resolutions=resolution, fit=fit)
    except ERRORS as err:
        fail(err)
    console.print_json(json.dumps(entry))


@table_app.command("import-jcw")
def table_import_jcw(directory: Path = typer.Argument(..., help="folder with runtime.npy and conv_info.log"),
                     out: Path = typer.Option(..., "--out", "-o")) -> None:
    """Import the JCW authors' published ResNet-18 phone table.

    Example: latbench table import-jcw ../shared/fixtures/jcw_resnet18 -o runs/jcw-resnet18.parquet
    """
    from ..tables.jcw import import_jcw_table

    try:
        t, frame = import_jcw_table(directory)
        t.save(out, frame)
    except ERRORS as err:
        fail(err)
    console.print(t.summary().to_string())
