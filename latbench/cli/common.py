"""What every command group of the CLI shares: the consoles, the device help text, the errors that become
a clear message with exit code 2 (:func:`fail`), and the measurement settings."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ..devices import DeviceError, MeasureSettings
from ..distributed import RayUnavailableError
from ..farm.spec import FarmError
from ..files import DamagedFileError
from ..models import ArchitectureError
from ..models.onnx_graph import OnnxModelError
from ..store import StoreError
from ..tables.table import TableError

console = Console()
err_console = Console(stderr=True)

DEVICE_HELP = ("host:onnxruntime, host:litert (LiteRT with XNNPACK), host:litert:builtin (LiteRT's built-in "
               "kernels), or a phone: tcp:HOST:PORT or usb[:SERIAL], options as ?runtime=onnxruntime&cores=f0 "
               "(docs/android.md); see `latbench devices`")
#: Errors a command turns into a message (:func:`fail`) instead of a traceback.
ERRORS = (DeviceError, ArchitectureError, DamagedFileError, OnnxModelError, StoreError, TableError, KeyError,
          FileNotFoundError, FarmError, RayUnavailableError)
#: The same for commands that load data, checkpoints and budgets (DataError, CheckpointError and BudgetError
#: are ValueErrors).
JOB_ERRORS = (ValueError, *ERRORS)


FARM_HELP = ("a farm file (TOML): measure on its devices, the work spread over one device group's units "
             "(README, \"Many phones\"); replaces --device")
GROUP_HELP = "with --farm: the device group (fingerprint) to use (default: the only one, or the table's)"
MIX_HELP = "with --farm: keep units that differ from their group on the shared reference points"


def device_or_farm(device: str, farm, group: str | None = None, mix_units: bool = False) -> str:
    """``device``, or the farm group the ``--farm`` options name (``farm:FILE?group=…``)."""
    if farm is None:
        return device
    from ..farm.device import farm_device_spec

    return farm_device_spec(farm, group, mix_units)


def fail(err: Exception) -> None:
    """Print ``err`` as one red line on stderr and exit with code 2."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    err_console.print(f"[bold red]error:[/] {escape(msg)}")      # messages may hold [brackets]
    raise typer.Exit(2)


def settings(rounds: int, runs: int, warmup: int) -> MeasureSettings:
    return MeasureSettings(warmup=warmup, rounds=rounds, runs_per_round=runs)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape 1,3,224,224`` → (1, 3, 224, 224); a clear error for anything else."""
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise typer.BadParameter(f"--input-shape {text!r}: give N,C,H,W as four positive integers, e.g. 1,3,224,224")
    return shape


INPUT_SHAPE_HELP = "an ONNX model's input N,C,H,W when its graph leaves sizes dynamic, e.g. 1,3,224,224"
SKIP_HELP = ("ONNX ops no kernel covers are timed together as one measured remainder of the network "
             "(default: stop and name the op)")
