"""The ``latbench`` command line (typer + rich), one module per command group:

* :mod:`.measure` — ``devices``, ``profile``, ``predict``, ``measure``, ``validate``, ``demo``;
* :mod:`.train` — ``train``, ``evaluate``;
* :mod:`.table` — ``table build|info|sparsity|calibrate|import-jcw``;
* :mod:`.android` — ``android setup|info|stop|clean``;
* :mod:`.prune` — ``prune lcp|ofar|jcw|sp`` and ``prune --config RECIPE`` (the jobs of :mod:`latbench.methods`);
* :mod:`.report` — ``report show`` (the recipe a run was made from);
* :mod:`.farm` — ``farm status`` (a device farm on Ray);
* :mod:`.options` — options generated from a job dataclass (:mod:`latbench.recipe`);
* :mod:`.common` — the consoles, the device help text and :func:`~.common.fail` (errors → one line, exit 2).

Heavy modules are imported inside the commands where they can be; the commands generated from job
dataclasses (``train``, ``prune``) need those dataclasses when the CLI is built.
"""
from __future__ import annotations

import typer

from . import android, farm, measure, prune, report, table, train

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Measure CNN layer latency on a device, build lookup tables, predict and validate.")
for _command in measure.COMMANDS:
    app.command()(_command)
app.command("train")(train.train_cmd)
app.command("evaluate")(train.evaluate_cmd)
app.add_typer(table.table_app, name="table")
app.add_typer(android.android_app, name="android")
app.add_typer(prune.prune_app, name="prune")
app.add_typer(report.report_app, name="report")
app.add_typer(farm.farm_app, name="farm")


def main() -> None:
    app()


__all__ = ["app", "main"]
