"""The ``latbench`` command line (typer + rich), one module per command group:

* :mod:`.measure` — ``devices``, ``profile``, ``predict``, ``measure``, ``validate``, ``demo``;
* :mod:`.train` — ``train``, ``evaluate``;
* :mod:`.table` — ``table build|info|sparsity|calibrate|import-jcw``;
* :mod:`.android` — ``android setup|info|stop|clean``;
* :mod:`.prune` — ``prune lcp|ofar|jcw|sp`` (the jobs of :mod:`latbench.methods`);
* :mod:`.common` — the consoles, the device help text and :func:`~.common.fail` (errors → one line, exit 2).

Heavy modules (torch, the methods) are imported inside the commands, so ``latbench --help`` stays quick.
"""
from __future__ import annotations

import typer

from . import android, measure, prune, table, train

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure CNN layer latency on a device, build lookup tables, predict and validate.")
for _command in measure.COMMANDS:
    app.command()(_command)
app.command("train")(train.train_cmd)
app.command("evaluate")(train.evaluate_cmd)
app.add_typer(table.table_app, name="table")
app.add_typer(android.android_app, name="android")
app.add_typer(prune.prune_app, name="prune")


def main() -> None:
    app()


__all__ = ["app", "main"]
