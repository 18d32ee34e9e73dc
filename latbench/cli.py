"""The ``latbench`` command line (typer + rich)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import api
from .devices import DEFAULT_DEVICE, DeviceError, MeasureSettings
from .files import DamagedFileError, atomic_write_json, atomic_write_text
from .models import Architecture, ArchitectureError
from .models.onnx_graph import OnnxModelError
from .store import StoreError
from .tables.table import LatencyTable, TableError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure CNN layer latency on a device, build lookup tables, predict and validate.")
table_app = typer.Typer(no_args_is_help=True, help="Build, inspect and import latency tables.")
app.add_typer(table_app, name="table")
from .devices.android.cli import android_app  # noqa: E402 - registered beside the other groups

app.add_typer(android_app, name="android")
console = Console()
err_console = Console(stderr=True)

DEVICE_HELP = ("host:onnxruntime, host:litert (LiteRT with XNNPACK), host:litert:builtin (LiteRT's built-in "
               "kernels), or a phone: tcp:HOST:PORT or usb[:SERIAL], options as ?runtime=onnxruntime&cores=f0 "
               "(docs/android.md); see `latbench devices`")
_ERRORS = (DeviceError, ArchitectureError, DamagedFileError, OnnxModelError, StoreError, TableError, KeyError,
           FileNotFoundError)


def _fail(err: Exception) -> None:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    err_console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def _settings(rounds: int, runs: int, warmup: int) -> MeasureSettings:
    return MeasureSettings(warmup=warmup, rounds=rounds, runs_per_round=runs)


@app.command()
def devices(tcp: Optional[List[str]] = typer.Option(None, help="also probe the phone at HOST:PORT (repeatable; "
                                                               "or set LATBENCH_ADB_TCP=HOST:PORT,…)"),
            phones: bool = typer.Option(True, help="look for phones (USB via libusb, --tcp addresses)")) -> None:
    """List reachable devices with their fingerprints: the host runtimes, phones on USB and at the given
    TCP addresses.

    Example: latbench devices --tcp 192.168.1.20:5555
    """
    from .devices import list_devices

    t = Table("device", "available", "fingerprint", "detail")
    for d in list_devices(tcp or (), phones=phones):
        t.add_row(d.name, "yes" if d.available else "no", d.fingerprint,
                  ", ".join(f"{k}={v}" for k, v in d.detail.items()
                             if k in ("cpu", "cores", "version", "kernels", "threads", "error", "phone",
                                      "platform", "sdk")))
    console.print(t)


@app.command()
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
            progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Measure the layer variants MODEL needs on DEVICE. Resumes by default: a killed run restarted with the
    same arguments measures only what is missing.

    Example: latbench profile mobilenet_v2 --device host:onnxruntime --resolution 224 --table tables/mbv2.parquet
    """
    try:
        spec = api.load_model(model)
        report = api.profile(spec, device, store, resolution, adaptive=adaptive and not dense, threshold=threshold,
                             channel_points=channel_points, sparsities=sparsity, threads=threads,
                             channel_multiple=channel_multiple,
                             settings=_settings(rounds, runs, warmup), progress=progress)
        console.print_json(json.dumps(report.to_dict()))
        if table:
            api.build_table([spec], device, store, table, resolution, threads, calibrate=calibrate,
                            channel_multiple=channel_multiple)
            console.print(f"table written to [bold]{table}[/]")
    except _ERRORS as err:
        _fail(err)


@table_app.command("build")
def table_build(model: List[str] = typer.Argument(..., help="zoo model name(s) or .onnx path(s) the table must cover"),
                out: Path = typer.Option(..., "--out", "-o", help="table file to write (.parquet)"),
                device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
                store: Path = typer.Option(Path(api.DEFAULT_STORE)),
                resolution: Optional[List[int]] = typer.Option(None), threads: int = typer.Option(1),
                calibrate: int = typer.Option(12, help="whole networks measured per model to fit the calibration (0: none)"),
                calibration_fit: str = typer.Option("line", help="line: scale + offset (relative least squares); "
                                                                 "ratio: the median ratio alone"),
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
    except _ERRORS as err:
        _fail(err)


@table_app.command("info")
def table_info(path: Path) -> None:
    """Show a table's provenance and grid.

    Example: latbench table info tables/host-ort-mobilenet_v2.parquet
    """
    try:
        t = LatencyTable.load(path)
    except _ERRORS as err:
        _fail(err)
    console.print_json(json.dumps({k: v for k, v in t.meta.items()}))
    console.print(t.summary().to_string())


@table_app.command("sparsity")
def table_sparsity(path: Path = typer.Argument(..., help="table file (.parquet)"),
                   out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the table with the test applied")) -> None:
    """Test where weight sparsity makes layers significantly faster; elsewhere use the dense latency.

    Tables built by `latbench table build` have this applied already; use it on older or imported tables.

    Example: latbench table sparsity tables/host-litert-resnet18-224-adaptive.parquet
    """
    from .tables.sparsity import credit_table_file, summarize

    try:
        report = credit_table_file(path, out)
    except _ERRORS as err:
        _fail(err)
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
                    fit: str = typer.Option("line", help="line: scale + offset (relative least squares); ratio: the "
                                                         "median ratio alone"),
                    threads: int = typer.Option(1)) -> None:
    """Refit a table's whole-network calibration on networks measured now (the device drifts; see docs/measurement.md).

    Example: latbench table calibrate tables/host-litert-resnet56-32-dense.parquet resnet56 --device host:litert --seed 7
    """
    try:
        entry = api.recalibrate(path, api.load_model(model), device, store, n=networks, seed=seed,
                                out=out or path, threads=threads, resolutions=resolution, fit=fit)
    except _ERRORS as err:
        _fail(err)
    console.print_json(json.dumps(entry))


@table_app.command("import-jcw")
def table_import_jcw(directory: Path = typer.Argument(..., help="folder with runtime.npy and conv_info.log"),
                     out: Path = typer.Option(..., "--out", "-o")) -> None:
    """Import the JCW authors' published ResNet-18 phone table.

    Example: latbench table import-jcw ../shared/fixtures/jcw_resnet18 -o runs/jcw-resnet18.parquet
    """
    from .tables.jcw import import_jcw_table

    try:
        t, frame = import_jcw_table(directory)
        t.save(out, frame)
    except _ERRORS as err:
        _fail(err)
    console.print(t.summary().to_string())


@app.command()
def predict(model: str, arch: Optional[Path] = typer.Option(None, help="architecture JSON (default: the full model)"),
            table: Path = typer.Option(..., help="latency table (.parquet)"),
            clamp: bool = typer.Option(False, help="clamp queries outside the grid instead of failing"),
            breakdown: bool = typer.Option(False, help="print per-layer latencies")) -> None:
    """Predict the latency of one architecture from a table.

    Example: latbench predict mobilenet_v2 --arch arch.json --table tables/host-ort-mobilenet_v2.parquet
    """
    from .predictor import Predictor

    try:
        spec = api.load_model(model)
        a = Architecture.load(arch) if arch else Architecture.full(spec)
        p = Predictor(spec, LatencyTable.load(table), clamp=clamp)
        ms = float(p.predict(a)[0])
        if breakdown:
            console.print(p.breakdown(a).to_string())
    except _ERRORS as err:
        _fail(err)
    console.print_json(json.dumps({"model": spec.name, "resolution": a.resolution, "predicted_ms": ms}))


@app.command()
def measure(model: Path = typer.Argument(..., help="an exported model: .onnx or .tflite"),
            device: str = typer.Option(DEFAULT_DEVICE, help=DEVICE_HELP),
            store: Path = typer.Option(Path(api.DEFAULT_STORE), help="SQLite measurement store"),
            threads: int = typer.Option(1, help="runtime threads"),
            progress: bool = typer.Option(True)) -> None:
    """Measure one model file end to end with latbench's protocol; the result is stored by the file's content.

    Example: latbench measure runs/lcp/pruned.tflite --device host:litert
    """
    from dataclasses import asdict

    try:
        m = api.measure_file(model, device, store, threads, progress=progress)
    except _ERRORS as err:
        _fail(err)
    console.print_json(json.dumps({"file": str(model), "device": device, **asdict(m)}))


@app.command()
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
             progress: bool = typer.Option(True)) -> None:
    """Measure N random pruned networks end to end and compare with the table's predictions.

    Example: latbench validate mobilenet_v2 --table tables/host-ort-mobilenet_v2.parquet --n 100 --json report.json
    """
    try:
        spec = api.load_model(model)
        report = api.validate_model(spec, table, device, store, n, seed, resolution, tuple(sparsity or (0.0,)),
                                    divisor, min_ratio, threads, progress)
        summary = report.write(json_path, csv, plot, title=f"{spec.name} on {device}")
    except _ERRORS as err:
        _fail(err)
    console.print_json(json.dumps(summary))


@app.command()
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
    except _ERRORS as err:
        _fail(err)


prune_app = typer.Typer(no_args_is_help=True, help="Latency-constrained pruning of a trained checkpoint.")
app.add_typer(prune_app, name="prune")


def _run_prune(make_job, run=None, summarize=None) -> None:
    """Build the job (validating its options) and run it (``run``: default ``run_lcp``), turning known
    errors into clear messages; prints ``summarize(report)`` (default: the pruning report's key figures)."""
    from .data import DataError
    from .methods.lcp.job import run_lcp
    from .search.budget import BudgetError
    from .train import CheckpointError

    try:
        job = make_job()
        report = (run or run_lcp)(job)
    except (BudgetError, DataError, CheckpointError, ValueError, *_ERRORS) as err:
        _fail(err)
    summary = summarize(report) if summarize else {
        k: report[k] for k in ("method", "budget", "predicted_ms", "measured_ms", "measured_over_budget",
                               "test_accuracy", "search_seconds")}
    console.print_json(json.dumps(summary))
    console.print(f"pruned network, exports and report.json in [bold]{job.out}[/]")


@prune_app.command("lcp")
def prune_lcp(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
              checkpoint: Path = typer.Option(..., help="trained full network (.safetensors from `latbench train`)"),
              out: Path = typer.Option(..., help="folder for the pruned network, its exports and report.json"),
              table: Optional[Path] = typer.Option(None, help="the device's latency table (needed for latency budgets)"),
              budget_ms: Optional[float] = typer.Option(None, help="latency budget in ms"),
              budget_ratio: Optional[float] = typer.Option(
                  None, help="latency budget as a fraction of the full network (measured with --device, else predicted)"),
              budget_flops: Optional[float] = typer.Option(None, help="budget in multiply-accumulates"),
              budget_params: Optional[float] = typer.Option(None, help="budget in parameters"),
              method: str = typer.Option("lcp", help="lcp (learned compensation), naive (global ranking) or "
                                                     "uniform (one width ratio): the baselines share everything else"),
              data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
              device: Optional[str] = typer.Option(None, help="measure the full and the pruned network here"),
              store: Path = typer.Option(Path(api.DEFAULT_STORE), help="measurement store for --device"),
              metric: str = typer.Option("l2", help="filter metric: l1, l2 or taylor"),
              floor: float = typer.Option(0.1, help="keep at least this fraction of every layer"),
              unit: Optional[int] = typer.Option(None, help="channels removed at a time (default: the table's "
                                                            "channel multiple)"),
              pool: int = typer.Option(64, help="evolution pool size"),
              candidates: int = typer.Option(400, help="candidates evaluated in all (pool + mutants)"),
              fitness_images: int = typer.Option(3000, help="training images the fitness loss is measured on"),
              bn_images: int = typer.Option(1024, help="images to re-estimate BN statistics of a candidate"),
              test_images: Optional[int] = typer.Option(None, help="report accuracy on the first N test images "
                                                                   "(default: all)"),
              finetune_epochs: int = typer.Option(1), finetune_lr: float = typer.Option(0.02),
              finetune_steps: Optional[int] = typer.Option(None, help="cap fine-tuning steps (quick runs)"),
              seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              progress: bool = typer.Option(True)) -> None:
    """LcP: global filter ranking with learned layer compensations, within a latency (or FLOPs/params) budget;
    fine-tunes, exports ONNX and TFLite and, with --device, measures the result against the budget.
    Interrupted runs resume (the evolution state and fine-tuning checkpoint live in --out).

    Example: latbench prune lcp --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.5 --device host:litert --out runs/lcp-50
    """
    from .methods.common import FinetuneRecipe
    from .methods.lcp.job import LcPJob

    _run_prune(lambda: LcPJob(
        model=model, checkpoint=str(checkpoint), out=str(out), table=str(table) if table else None, method=method,
        budget_ms=budget_ms, budget_ratio=budget_ratio, budget_flops=budget_flops, budget_params=budget_params,
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store), metric=metric,
        floor=floor, unit=unit, pool=pool, candidates=candidates, fitness_images=fitness_images, bn_images=bn_images,
        test_images=test_images,
        finetune=FinetuneRecipe(finetune_epochs, finetune_lr, max_steps=finetune_steps, seed=seed), seed=seed,
        threads=threads, progress=progress))


@prune_app.command("ofar")
def prune_ofar(model: str = typer.Option("resnet20", help="zoo model of the checkpoint"),
               checkpoint: Path = typer.Option(..., help="trained full network (.safetensors from `latbench train`)"),
               out: Path = typer.Option(..., help="folder for every phase, the cohort's exports and report.json"),
               table: Optional[List[Path]] = typer.Option(None, help="a device's latency table (repeatable: one "
                                                                     "per device of the cohort)"),
               budget_ratio: Optional[List[float]] = typer.Option(
                   None, help="budget as a fraction of each device's full-network cost at the largest resolution "
                              "(repeatable)"),
               budget_ms: Optional[List[float]] = typer.Option(None, help="latency budget in ms for every table's "
                                                                          "device (repeatable)"),
               budget_flops: Optional[List[float]] = typer.Option(None, help="FLOPs budget in MACs (repeatable; "
                                                                             "implies --flops)"),
               flops: bool = typer.Option(False, "--flops", help="FLOPs as one more 'device' (ratios apply to it)"),
               resolutions: Optional[List[int]] = typer.Option(
                   None, help="input resolutions (repeatable; default 32 28 24 20 for 32×32 data, 224 192 160 128 "
                              "for 224)"),
               tau: float = typer.Option(0.95, help="mask similarity threshold τ in (0, 1]"),
               similarity: str = typer.Option("cosine", help="cosine, dice, or eq3 (the paper's Eq. 3 as printed)"),
               patience: int = typer.Option(1, help="epochs in a row a rate's similarity must reach τ"),
               sparsity: float = typer.Option(1e-4, help="Network Slimming's s: L1 weight on the BN γ"),
               search_epochs: int = typer.Option(20, help="most epochs of the search stage (stops earlier when "
                                                          "every rate has its structure)"),
               search_lr: float = typer.Option(0.5, help="search-stage learning rate (constant)"),
               joint_epochs: int = typer.Option(10), joint_lr: float = typer.Option(0.05),
               steps_per_epoch: Optional[int] = typer.Option(None, help="cap the steps of every epoch of both "
                                                                        "stages (quick runs)"),
               batch_size: int = typer.Option(128),
               bn_mode: str = typer.Option("recalibrated", help="recalibrated (US-Net: statistics per structure "
                                                                "and resolution after training) or private "
                                                                "(S-Net: a BN per structure)"),
               assistants: bool = typer.Option(True, help="--no-assistants: distil every network from the "
                                                          "teacher directly (the ablation)"),
               temperature: float = typer.Option(1.0, help="distillation temperature"),
               min_width_ratio: float = typer.Option(0.1, help="no group narrower than this fraction"),
               multiple: Optional[int] = typer.Option(None, help="round widths to this multiple (default: the "
                                                                 "tables' channel multiple)"),
               data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
               train_images: Optional[int] = typer.Option(None, help="train on the first N training images"),
               val_images: Optional[int] = typer.Option(None, help="select on the first N validation images"),
               test_images: Optional[int] = typer.Option(None, help="report accuracy on the first N test images"),
               bn_images: int = typer.Option(1024, help="images to recalibrate BN per (structure, resolution)"),
               store: Path = typer.Option(Path(api.DEFAULT_STORE), help="measurement store"),
               measure: bool = typer.Option(True, help="measure each choice on its device when that is a host "
                                                       "runtime here (--no-measure: predict all)"),
               torch_device: str = typer.Option("cpu", help="torch device for training (cpu, cuda, mps)"),
               pool: str = typer.Option("search", help="search (OFARPruning's PNP) or uniform (the US-Net/MutualNet "
                                                       "baseline: uniform width multipliers, no search stage; use "
                                                       "with --no-assistants)"),
               seed: int = typer.Option(0),
               threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
               progress: bool = typer.Option(True)) -> None:
    """OFARPruning: one training for a cohort of devices and budgets — rates per device and resolution,
    Network-Slimming search with the Pruned Network Pool, joint teacher→assistants→student training over
    resolutions, then per (device, budget) the most accurate (structure, resolution) that fits, exported
    (ONNX + TFLite), measured where the device is here and predicted elsewhere. Interrupted runs resume.

    Example: latbench prune ofar --checkpoint runs/r20.safetensors --table tables/litert.parquet --table
    tables/ort.parquet --budget-ratio 0.7 --budget-ratio 0.5 --resolutions 32 --resolutions 28 --out runs/ofar
    """
    from .methods.ofar import JointConfig, SearchConfig
    from .methods.ofar.job import OFARJob, run_ofar

    _run_prune(lambda: OFARJob(
        model=model, checkpoint=str(checkpoint), out=str(out), tables=tuple(str(t) for t in table or ()),
        budget_ratios=tuple(budget_ratio or ()), budgets_ms=tuple(budget_ms or ()),
        budgets_flops=tuple(budget_flops or ()), flops=flops, resolutions=tuple(resolutions) if resolutions else None,
        search=SearchConfig(epochs=search_epochs, lr=search_lr, sparsity=sparsity, tau=tau, similarity=similarity,
                            patience=patience, batch_size=batch_size, steps_per_epoch=steps_per_epoch, seed=seed),
        joint=JointConfig(epochs=joint_epochs, lr=joint_lr, batch_size=batch_size, temperature=temperature,
                          assistants=assistants, bn_mode=bn_mode, steps_per_epoch=steps_per_epoch, seed=seed),
        min_width_ratio=min_width_ratio, multiple=multiple, data=data, data_dir=str(data_dir) if data_dir else None,
        train_images=train_images, val_images=val_images, test_images=test_images, bn_images=bn_images,
        store=str(store), measure=measure, torch_device=torch_device, threads=threads, progress=progress, pool=pool),
        run=run_ofar, summarize=lambda r: {"method": r["method"], "pnp": len(r["search"]["pnp"]),
                                           "unstable_rates": len(r["search"]["unstable"]),
                                           "cohort": [{k: c.get(k) for k in ("device", "budget_label", "resolution",
                                                                             "val_acc", "test_acc", "predicted_ms",
                                                                             "measured_ms")} for c in r["cohort"]],
                                           "unmet": len(r["unmet"])})


@prune_app.command("jcw")
def prune_jcw(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
              checkpoint: Path = typer.Option(..., help="trained full network (.safetensors from `latbench train`)"),
              table: Path = typer.Option(..., help="the device's latency table (the search's latency objective)"),
              out: Path = typer.Option(..., help="folder for the search, the supernet, one folder per retrained "
                                                 "architecture and summary.json"),
              budget_ms: Optional[List[float]] = typer.Option(
                  None, help="latency budget in ms (repeatable): the most accurate front member within it"),
              budget_ratio: Optional[List[float]] = typer.Option(
                  None, help="budget as a fraction of the full network's latency (measured with --device, else "
                             "predicted; repeatable)"),
              pick: Optional[int] = typer.Option(None, help="retrain N front members spread over its latency "
                                                            "range (0: search only)"),
              channel_only: bool = typer.Option(False, help="search widths only, sparsity fixed at 0 (baseline)"),
              sparsity_where: str = typer.Option(
                  "credited", help="credited: search a conv's sparsity only where the table credits it with a "
                                   "significant speed-up (see `latbench table sparsity`); measured: the table's "
                                   "whole sparsity range"),
              data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
              device: Optional[str] = typer.Option(None, help="measure the full network and every retrained one"),
              store: Path = typer.Option(Path(api.DEFAULT_STORE), help="measurement store for --device"),
              measure_front: bool = typer.Option(False, help="with --device, also measure every front member"),
              population: int = typer.Option(32), generations: int = typer.Option(20),
              min_width_ratio: float = typer.Option(0.25, help="narrowest width of a group, as a fraction"),
              coupled_min_width_ratio: float = typer.Option(0.5, help="the same for groups tied by residual adds "
                                                                       "or strided convs"),
              max_sparsity: float = typer.Option(0.9, help="largest weight sparsity of a conv"),
              sparsity_step: Optional[float] = typer.Option(None, help="snap sparsities to multiples of this"),
              anchor: bool = typer.Option(True, help="start the population with the full and the narrowest network"),
              supernet_steps: int = typer.Option(100, help="supernet SGD steps per generation"),
              supernet_lr: float = typer.Option(0.01), supernet_batch_size: int = typer.Option(128),
              warm_start: bool = typer.Option(False, help="continue the supernet across generations (default: "
                                                          "restart each generation from the parent)"),
              objective: str = typer.Option("loss", help="search objective: loss (cross-entropy) or error"),
              eval_images: int = typer.Option(1000, help="held-out training images each candidate is scored on"),
              bn_batches: int = typer.Option(2, help="batches to recalibrate BN of each candidate"),
              admm_dense_epochs: int = typer.Option(1), admm_epochs: int = typer.Option(2),
              admm_finetune_epochs: int = typer.Option(1),
              admm_steps_per_epoch: Optional[int] = typer.Option(None, help="cap steps per epoch of every phase"),
              admm_lr: float = typer.Option(0.01), admm_finetune_lr: Optional[float] = typer.Option(None),
              admm_batch_size: int = typer.Option(128),
              admm_rho: float = typer.Option(0.01, help="ADMM penalty ρ"),
              admm_rho_growth: float = typer.Option(1.0, help="multiply ρ after every U/Z update (short runs need "
                                                              "a growing or larger ρ; docs/jcw-training.md)"),
              admm_rho_max: Optional[float] = typer.Option(None),
              admm_update_every: Optional[int] = typer.Option(None, help="U/Z update every N steps (default: "
                                                                         "every epoch)"),
              bn_images: int = typer.Option(512, help="images to recalibrate BN of a slice before retraining"),
              test_images: Optional[int] = typer.Option(None, help="report accuracy on the first N test images "
                                                                   "(default: all)"),
              torch_device: str = typer.Option("cpu", help="torch device for the supernet and the retraining "
                                                           "(cpu, cuda, mps)"),
              threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              seed: int = typer.Option(0), progress: bool = typer.Option(True)) -> None:
    """JCW: evolutionary search of channel widths and weight sparsity for the accuracy × latency front
    (a weight-sharing supernet scores candidates), then ADMM retraining of the chosen architectures,
    ONNX + sparse TFLite export and, with --device, measurement against the prediction.
    Interrupted runs resume (search state, supernet and ADMM checkpoints live in --out).

    Example: latbench prune jcw --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.7 --budget-ratio 0.5 --device host:litert --out runs/jcw
    """
    from .methods.jcw.evaluator import SupernetConfig
    from .methods.jcw.job import JCWJob, run_jcw
    from .methods.jcw.search import SearchConfig
    from .train.admm import ADMMConfig

    _run_prune(lambda: JCWJob(
        model=model, checkpoint=str(checkpoint), table=str(table), out=str(out), budgets_ms=tuple(budget_ms or ()),
        budget_ratios=tuple(budget_ratio or ()), pick=pick,
        search=SearchConfig(population=population, generations=generations, seed=seed, channel_only=channel_only,
                            sparsity_where=sparsity_where,
                            min_width_ratio=min_width_ratio, coupled_min_width_ratio=coupled_min_width_ratio,
                            max_sparsity=max_sparsity, sparsity_step=sparsity_step),
        supernet=SupernetConfig(steps_per_generation=supernet_steps, lr=supernet_lr, batch_size=supernet_batch_size,
                                warm_start=warm_start, objective=objective, eval_size=eval_images,
                                bn_batches=bn_batches, bn_batch_size=min(128, supernet_batch_size), seed=seed),
        admm=ADMMConfig(dense_epochs=admm_dense_epochs, admm_epochs=admm_epochs, finetune_epochs=admm_finetune_epochs,
                        steps_per_epoch=admm_steps_per_epoch, lr=admm_lr, finetune_lr=admm_finetune_lr,
                        batch_size=admm_batch_size, rho=admm_rho, rho_growth=admm_rho_growth, rho_max=admm_rho_max,
                        update_every=admm_update_every, eval_size=eval_images, seed=seed, progress=progress),
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store),
        measure_front=measure_front, anchor=anchor, bn_images=bn_images, test_images=test_images,
        torch_device=torch_device, threads=threads, progress=progress),
        run=run_jcw, summarize=lambda s: {"method": s["method"], "front": s["front"]["size"],
                                          "front_latency_ms": s["front"]["latency_ms"],
                                          "full_latency_ms": s["full_latency_ms"], "architectures": s["architectures"]})


@prune_app.command("sp")
def prune_sp(model: str = typer.Option("resnet56", help="zoo model of the checkpoint"),
             checkpoint: Path = typer.Option(..., help="trained full network (.safetensors from `latbench train`)"),
             out: Path = typer.Option(..., help="folder for the supernet, the search, the pruned network, its exports "
                                                "and report.json"),
             table: Optional[Path] = typer.Option(None, help="the device's latency table (needed for latency budgets)"),
             budget_ms: Optional[float] = typer.Option(None, help="latency budget in ms"),
             budget_ratio: Optional[float] = typer.Option(
                 None, help="latency budget as a fraction of the full network (measured with --device, else predicted)"),
             budget_flops: Optional[float] = typer.Option(None, help="budget in multiply-accumulates"),
             budget_params: Optional[float] = typer.Option(None, help="budget in parameters"),
             data: str = typer.Option("fashion-mnist"), data_dir: Optional[Path] = typer.Option(None),
             device: Optional[str] = typer.Option(None, help="measure the full and the pruned network here"),
             store: Path = typer.Option(Path(api.DEFAULT_STORE), help="measurement store for --device"),
             torch_device: str = typer.Option("cpu", help="torch device for supernet training, the search and "
                                                          "retraining (cpu, cuda, mps)"),
             unit: Optional[int] = typer.Option(None, help="channel step of the search space (default: the table's "
                                                           "channel multiple, else 1)"),
             order: str = typer.Option("l1", help="channel importance (l1 or l2 filter norms): sub-networks keep the "
                                                  "first, most important channels"),
             train_images: Optional[int] = typer.Option(None, help="train the supernet on the first N training "
                                                                   "images only (quick runs)"),
             supernet_epochs: int = typer.Option(1), supernet_lr: float = typer.Option(0.05),
             supernet_batch_size: int = typer.Option(128),
             supernet_steps: Optional[int] = typer.Option(None, help="cap supernet steps per epoch (quick runs)"),
             supernet_random: int = typer.Option(1, help="random stage sub-networks per stage and step (besides "
                                                         "the smallest)"),
             manager_population: int = typer.Option(128), manager_generations: int = typer.Option(10),
             stage_population: int = typer.Option(128), stage_generations: int = typer.Option(10),
             top: float = typer.Option(0.25, help="fraction of each population kept as parents"),
             mutation_prob: float = typer.Option(0.1),
             eval_images: int = typer.Option(1024, help="held-out images the stage losses are measured on"),
             calib_images: int = typer.Option(256, help="training images to recalibrate BN of each stage candidate"),
             retrain_from: str = typer.Option("inherited", help="inherited (supernet weights) or scratch"),
             finetune_epochs: int = typer.Option(1), finetune_lr: float = typer.Option(0.02),
             finetune_steps: Optional[int] = typer.Option(None, help="cap retraining steps (quick runs)"),
             bn_images: int = typer.Option(1024, help="images to recalibrate BN of the chosen network"),
             test_images: Optional[int] = typer.Option(None, help="report accuracy on the first N test images "
                                                                  "(default: all)"),
             ray: Optional[bool] = typer.Option(None, "--ray/--no-ray",
                                                help="run the stage EAs on Ray actors (default: when Ray is installed; "
                                                     "--no-ray runs them in this process with the same result)"),
             ray_address: Optional[str] = typer.Option(None, help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto; "
                                                                  "default: a local instance on 127.0.0.1)"),
             actors_per_stage: int = typer.Option(1, help="Ray actors per stage (more on a cluster)"),
             seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None, help="torch threads (default: "
                                                                                          "torch's)"),
             progress: bool = typer.Option(True)) -> None:
    """SP: stage-wise channel pruning. Trains a stage-wise supernet (Algorithm 1), searches per-stage widths with
    a distributed evolutionary search within a latency (or FLOPs/params) budget (Algorithms 2–3; stage EAs on
    Ray or in process), retrains the chosen network, exports ONNX and TFLite and, with --device, measures it.
    Interrupted runs resume (supernet, search state and retraining checkpoint live in --out).

    Example: latbench prune sp --model resnet56 --checkpoint runs/r56.safetensors
    --table tables/host-litert-resnet56-32-dense.parquet --budget-ratio 0.5 --device host:litert --out runs/sp-50
    """
    from .methods.common import FinetuneRecipe
    from .methods.sp.job import SPJob, run_sp
    from .methods.sp.search import SPSearchConfig
    from .methods.sp.training import StageTrainConfig

    _run_prune(lambda: SPJob(
        model=model, checkpoint=str(checkpoint), out=str(out), table=str(table) if table else None,
        budget_ms=budget_ms, budget_ratio=budget_ratio, budget_flops=budget_flops, budget_params=budget_params,
        data=data, data_dir=str(data_dir) if data_dir else None, device=device, store=str(store),
        torch_device=torch_device, unit=unit, order=order, train_images=train_images,
        supernet=StageTrainConfig(epochs=supernet_epochs, lr=supernet_lr, batch_size=supernet_batch_size,
                                  steps_per_epoch=supernet_steps, n_random=supernet_random, seed=seed),
        search=SPSearchConfig(manager_population=manager_population, manager_generations=manager_generations,
                              stage_population=stage_population, stage_generations=stage_generations, top=top,
                              mutation_prob=mutation_prob, eval_images=eval_images, calib_images=calib_images,
                              seed=seed),
        retrain=FinetuneRecipe(finetune_epochs, finetune_lr, max_steps=finetune_steps, seed=seed),
        retrain_from=retrain_from, bn_images=bn_images, test_images=test_images, ray=ray, ray_address=ray_address,
        actors_per_stage=actors_per_stage, threads=threads, progress=progress),
        run=run_sp, summarize=lambda s: {k: s[k] for k in ("method", "budget", "predicted_ms", "measured_ms",
                                                           "measured_over_budget", "test_accuracy", "retrain_from",
                                                           "seconds")})


@app.command("train")
def train_cmd(model: str = typer.Option("resnet56", help="zoo model (resnet20, resnet56, mobilenet_v2_cifar, …)"),
              data: str = typer.Option("fashion-mnist",
                                       help="data set: fashion-mnist, mnist, cifar10, cifar100 or imagefolder"),
              data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files (default: its usual place)"),
              epochs: int = typer.Option(3), lr: float = typer.Option(0.1, help="peak learning rate"),
              schedule: str = typer.Option("onecycle", help="onecycle, cosine or constant"),
              batch_size: int = typer.Option(128), weight_decay: float = typer.Option(5e-4),
              label_smoothing: float = typer.Option(0.0), seed: int = typer.Option(0),
              val_size: int = typer.Option(5000, help="last N training images held out as validation set"),
              out: Path = typer.Option(..., help="checkpoint to write (.safetensors); the history goes beside it (.json)"),
              resume: bool = typer.Option(False, help="continue the unfinished run saved in --out"),
              checkpoint_every: int = typer.Option(100, help="also checkpoint every N steps (0: per epoch only)"),
              max_steps: Optional[int] = typer.Option(None, help="stop after this many steps (resume later)"),
              steps_per_epoch: Optional[int] = typer.Option(None, help="cap batches per epoch (quick runs)"),
              threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Train a zoo model from scratch on an image data set; writes a safetensors checkpoint and a JSON
    history, prints validation and test accuracy.

    Example: latbench train --model resnet56 --data fashion-mnist --epochs 3 --out runs/r56-fmnist.safetensors
    """
    import torch

    from .data import DataError, load_dataset
    from .models import build, get_model
    from .train import CheckpointError, evaluate, train
    from .train.loop import cpu_cores

    try:
        splits = load_dataset(data, data_dir, val_size)
        torch.set_num_threads(threads or cpu_cores())      # the application's choice (the loop leaves it alone)
        torch.manual_seed(seed)
        net = build(get_model(model, num_classes=splits.num_classes), in_channels=splits.in_channels)
        history = train(net, splits, epochs, lr, batch_size=batch_size, schedule=schedule, weight_decay=weight_decay,
                        label_smoothing=label_smoothing, seed=seed, steps_per_epoch=steps_per_epoch, checkpoint=out,
                        checkpoint_every=checkpoint_every, resume=resume, max_steps=max_steps,
                        meta={"dataset": splits.describe()}, progress=progress,
                        log=None if progress else lambda line: print(line, file=sys.stderr, flush=True))
        result = {"model": net.spec.name, "data": splits.name, "checkpoint": str(out), **history.to_dict()}
        if history.complete:
            result["test_loss"], result["test_acc"] = evaluate(net, splits.test)
        history_path = out.with_suffix(".json")
        atomic_write_json(history_path, result, indent=2)
    except (DataError, CheckpointError, ValueError, *_ERRORS) as err:
        _fail(err)
    last = history.epochs[-1] if history.epochs else None
    console.print_json(json.dumps({k: result[k] for k in ("model", "data", "checkpoint", "step", "total_steps", "complete")}
                                  | ({"val_acc": last.val_acc, "images_per_s": last.images_per_s} if last else {})
                                  | ({"test_acc": result["test_acc"]} if "test_acc" in result else {})))
    console.print(f"checkpoint [bold]{out}[/], history [bold]{history_path}[/]")


@app.command("evaluate")
def evaluate_cmd(checkpoint: Path = typer.Argument(..., help="checkpoint from `latbench train` or a pruning method"),
                 data: Optional[str] = typer.Option(None, help="data set (default: the one recorded in the checkpoint)"),
                 data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files"),
                 split: str = typer.Option("test", help="test or val"),
                 val_size: int = typer.Option(5000, help="validation split size (must match training for --split val)"),
                 threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)")) -> None:
    """Accuracy and loss of a checkpointed (possibly pruned) network on a data split.

    Example: latbench evaluate runs/r56-fmnist.safetensors --split test
    """
    import torch

    from .data import DataError, load_dataset
    from .train import CheckpointError, evaluate, load_checkpoint
    from .train.loop import cpu_cores

    try:
        net, arch, meta = load_checkpoint(checkpoint)
        name = data or (meta.get("dataset") or {}).get("name")
        if not name:
            raise DataError(f"{checkpoint} does not record its data set; pass --data")
        splits = load_dataset(name, data_dir, val_size)
        if split not in ("test", "val") or (split == "val" and splits.val is None):
            raise DataError(f"split {split!r} is not available: use test, or val with --val-size > 0")
        torch.set_num_threads(threads or cpu_cores())
        loss, acc = evaluate(net, splits.test if split == "test" else splits.val)
    except (DataError, CheckpointError, ValueError, *_ERRORS) as err:
        _fail(err)
    console.print_json(json.dumps({"checkpoint": str(checkpoint), "model": arch.model, "data": splits.name,
                                   "split": split, "loss": loss, "accuracy": acc, "widths": arch.widths}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
