"""What every command group of the CLI shares: the consoles, the device help text, the errors that become
a clear message with exit code 2 (:func:`fail`), and the measurement settings."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ..devices import DeviceError, MeasureSettings
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
          FileNotFoundError)
#: The same for commands that load data, checkpoints and budgets (DataError, CheckpointError and BudgetError
#: are ValueErrors).
JOB_ERRORS = (ValueError, *ERRORS)


def fail(err: Exception) -> None:
    """Print ``err`` as one red line on stderr and exit with code 2."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    err_console.print(f"[bold red]error:[/] {escape(msg)}")      # messages may hold [brackets]
    raise typer.Exit(2)


def settings(rounds: int, runs: int, warmup: int) -> MeasureSettings:
    return MeasureSettings(warmup=warmup, rounds=rounds, runs_per_round=runs)
