"""``latbench android …``: install the phone-side tools, inspect a phone, stop or clean up runs."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

import typer

from ..devices.base import DeviceError
from .common import console, err_console, fail

android_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect Android phones (over ADB, no adb server).")
PHONE_HELP = "the phone: tcp:HOST:PORT or usb[:SERIAL] (see `latbench devices`)"


@contextlib.contextmanager
def _phone(device: str) -> Iterator:
    """The phone ``device``, open for the ``with`` block and closed after it; a :class:`DeviceError` (opening
    it or in the block) becomes a clear message and exit code 2."""
    from ..devices.android import open_android

    try:
        dev = open_android(device, log=lambda msg: err_console.print(f"[yellow]{msg}[/]"))
        try:
            yield dev
        finally:
            dev.close()
    except DeviceError as err:
        fail(err)


@android_app.command("setup")
def setup(device: str = typer.Option(..., help=PHONE_HELP),
          benchmark_model: Optional[Path] = typer.Option(None, help="TFLite benchmark_model binary for the phone "
                                                                  "(e.g. android_aarch64_benchmark_model)"),
          perf_test: Optional[Path] = typer.Option(None, help="folder with onnxruntime_perf_test and its .so files")
          ) -> None:
    """Push the benchmark tools and the runner script to /data/local/tmp/latbench/ on the phone (once).

    Example: latbench android setup --device usb --benchmark-model ~/Downloads/android_aarch64_benchmark_model
    """
    with _phone(device) as dev:
        written = dev.install(benchmark_model, perf_test)
        fingerprints = {}
        for runtime, given in (("tflite", benchmark_model), ("onnxruntime", perf_test)):
            if given is not None:   # check each installed tool and show the fingerprint it gives
                dev.use_runtime(runtime)
                dev.prepare()
                fingerprints[dev.options.tool] = dev.fingerprint()
        console.print_json(json.dumps({"device": dev.name, "installed": written, "tools": dev.installed_tools(),
                                       "fingerprints": fingerprints}))


@android_app.command("info")
def info(device: str = typer.Option(..., help=PHONE_HELP)) -> None:
    """Show what the phone is (model, SoC, CPU clusters, big-core mask) and its state (temperatures,
    frequencies, governors), and which tools are installed.

    Example: latbench android info --device tcp:192.168.1.20:5555
    """
    with _phone(device) as dev:
        f = dev.facts
        snap = dev.snapshot()
        tools = dev.installed_tools()
        out = {"device": dev.name, "model": f.model, "platform": f.platform, "sdk": f.sdk,
               "clusters": [{"max_khz": khz, "cpus": cpus} for khz, cpus in f.clusters()],
               "big_cores": f.big_cores(), "pinned_mask": dev.mask, "tools": tools,
               "state": snap.summary(f.cpus, f.cpu_zones()),
               "thermal_zones": {str(z): t for z, t in f.zone_types.items()}}
        if any(tools.values()):
            try:
                out["fingerprint"] = dev.fingerprint()
            except DeviceError as err:
                out["fingerprint_error"] = str(err)
        console.print_json(json.dumps(out))


@android_app.command("stop")
def stop(device: str = typer.Option(..., help=PHONE_HELP)) -> None:
    """Stop a runner (and its benchmark) left on the phone by an interrupted profile.

    Example: latbench android stop --device usb
    """
    with _phone(device) as dev:
        console.print(dev.stop_leftovers().strip() or "nothing was running")


@android_app.command("clean")
def clean(device: str = typer.Option(..., help=PHONE_HELP),
          everything: bool = typer.Option(False, "--all", help="also remove the tools (all of /data/local/tmp/latbench)")
          ) -> None:
    """Delete pushed models and batch folders from the phone (only inside /data/local/tmp/latbench).

    Example: latbench android clean --device usb --all
    """
    with _phone(device) as dev:
        dev.clean(everything)
        console.print(f"cleaned {dev.options.root}{'' if everything else ' (models, batches)'} on {dev.name}")
