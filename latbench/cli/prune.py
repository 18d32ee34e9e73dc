"""``latbench prune lcp|ofar|jcw|sp`` and ``latbench prune --config RECIPE``: the four pruning methods' jobs
(:mod:`latbench.methods`). Every option is generated from the method's job dataclass
(:mod:`latbench.cli.options`), so a recipe in ``search/`` and the command line take the same settings."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from ..recipe import RecipeError, build_job, read_recipe
from .common import JOB_ERRORS, console, fail
from .options import CONFIG_HELP, SET_HELP, cli_options, job_command, job_data

prune_app = typer.Typer(no_args_is_help=True, help="Latency-constrained pruning of a trained checkpoint.")


def _single_budget_summary(report: dict) -> dict:
    return {k: report.get(k) for k in ("method", "budget", "predicted_ms", "measured_ms", "measured_over_budget",
                                       "test_accuracy", "search_seconds", "seconds", "retrain_from") if k in report}


def _ofar_summary(r: dict) -> dict:
    return {"method": r["method"], "pnp": len(r["search"]["pnp"]), "unstable_rates": len(r["search"]["unstable"]),
            "cohort": [{k: c.get(k) for k in ("device", "budget_label", "resolution", "val_acc", "test_acc",
                                              "predicted_ms", "measured_ms")} for c in r["cohort"]],
            "unmet": len(r["unmet"])}


def _jcw_summary(s: dict) -> dict:
    return {"method": s["method"], "front": s["front"]["size"], "front_latency_ms": s["front"]["latency_ms"],
            "full_latency_ms": s["full_latency_ms"], "architectures": s["architectures"]}


@dataclass(frozen=True)
class MethodJob:
    """A pruning command: its job dataclass, the function that runs it and the summary it prints."""

    job: type
    run: Callable[[Any], dict]
    summarize: Callable[[dict], dict]
    recipe_methods: tuple[str, ...]          # the values of a recipe's ``method`` key this command runs


def method_job(command: str) -> MethodJob:
    """The job of ``latbench prune COMMAND`` (imported on demand: the methods pull in torch)."""
    if command == "lcp":
        from ..methods.lcp.job import METHODS, LcPJob, run_lcp
        return MethodJob(LcPJob, run_lcp, _single_budget_summary, METHODS)
    if command == "sp":
        from ..methods.sp.job import SPJob, run_sp
        return MethodJob(SPJob, run_sp, _single_budget_summary, ("sp",))
    if command == "jcw":
        from ..methods.jcw.job import JCWJob, run_jcw
        return MethodJob(JCWJob, run_jcw, _jcw_summary, ("jcw",))
    if command == "ofar":
        from ..methods.ofar.job import OFARJob, run_ofar
        return MethodJob(OFARJob, run_ofar, _ofar_summary, ("ofar",))
    raise KeyError(command)


COMMANDS = ("lcp", "ofar", "jcw", "sp")


def command_for_method(method: Any, source: str) -> str:
    """The command that runs a recipe whose ``method`` is ``method``."""
    for command in COMMANDS:
        if method in method_job(command).recipe_methods:
            return command
    allowed = [m for c in COMMANDS for m in method_job(c).recipe_methods]
    raise RecipeError(f"{source}: 'method' must name the pruning method, one of {', '.join(allowed)} "
                      f"(got {method!r})")


def _recipe_prepare(command: str) -> Callable[[dict, str], dict]:
    """Checks a recipe's ``method`` key against ``command`` (and drops it where the job has no such field)."""
    def prepare(data: dict, source: str) -> dict:
        if "method" not in data:
            return data
        method = data["method"]
        target = command_for_method(method, source)
        if target != command:
            raise RecipeError(f"{source} is a recipe for {method}: run it with `latbench prune --config {source}` "
                              f"or `latbench prune {target} --config …`")
        if command != "lcp":                      # LcP's method field picks the baseline; the others have none
            data = {k: v for k, v in data.items() if k != "method"}
        return data
    return prepare


def execute(command: str, job) -> None:
    """Run ``job`` with ``command``'s method, turning known errors into clear messages; prints the summary."""
    method = method_job(command)
    try:
        report = method.run(job)
    except JOB_ERRORS as err:
        fail(err)
    console.print_json(json.dumps(method.summarize(report), default=str))
    console.print(f"everything the job wrote (report, exports, recipe.json) is in [bold]{job.out}[/]")


_DOCS = {
    "lcp": """LcP: global filter ranking with learned layer compensations, within a latency (or FLOPs/params)
    budget; fine-tunes, exports ONNX and TFLite and, with --device, measures the result against the budget.
    --method naive|uniform runs the baselines with everything else shared. Interrupted runs resume (the
    evolution state and fine-tuning checkpoint live in --out).

    Example: latbench prune lcp --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.5 --device host:litert --out runs/lcp-50
    """,
    "ofar": """OFARPruning: one training for a cohort of devices and budgets — rates per device and resolution,
    Network-Slimming search with the Pruned Network Pool, joint teacher→assistants→student training over
    resolutions, then per (device, budget) the most accurate (structure, resolution) that fits, exported
    (ONNX + TFLite), measured where the device is here and predicted elsewhere. Interrupted runs resume.

    Example: latbench prune ofar --checkpoint runs/r20.safetensors --table tables/litert.parquet --table
    tables/ort.parquet --budget-ratio 0.7 --budget-ratio 0.5 --resolutions 32 --resolutions 28 --out runs/ofar
    """,
    "jcw": """JCW: evolutionary search of channel widths and weight sparsity for the accuracy × latency front
    (a weight-sharing supernet scores candidates), then ADMM retraining of the chosen architectures,
    ONNX + sparse TFLite export and, with --device, measurement against the prediction.
    Interrupted runs resume (search state, supernet and ADMM checkpoints live in --out).

    Example: latbench prune jcw --checkpoint runs/r56.safetensors --table tables/host-litert-resnet56-32-dense.parquet
    --budget-ratio 0.7 --budget-ratio 0.5 --device host:litert --out runs/jcw
    """,
    "sp": """SP: stage-wise channel pruning. Trains a stage-wise supernet (Algorithm 1), searches per-stage widths
    with a distributed evolutionary search within a latency (or FLOPs/params) budget (Algorithms 2–3; stage
    EAs on Ray or in process), retrains the chosen network, exports ONNX and TFLite and, with --device,
    measures it. Interrupted runs resume (supernet, search state and retraining checkpoint live in --out).

    Example: latbench prune sp --model resnet56 --checkpoint runs/r56.safetensors
    --table tables/host-litert-resnet56-32-dense.parquet --budget-ratio 0.5 --device host:litert --out runs/sp-50
    """,
}


def _register(command: str) -> None:
    method = method_job(command)
    prune_app.command(command)(job_command(
        method.job, lambda job: execute(command, job), prepare=_recipe_prepare(command),
        doc=_DOCS[command] + "    Every option can also come from a recipe: --config FILE (see search/), single "
                             "fields overridden with --set KEY=VALUE.\n"))


for _command in COMMANDS:
    _register(_command)


@prune_app.callback(invoke_without_command=True)
def prune_recipe(ctx: typer.Context,
                 config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + " (its 'method' key "
                                                                                           "names the method)"),
                 set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Latency-constrained pruning of a trained checkpoint: `latbench prune METHOD …`, or a recipe:
    `latbench prune --config search/lcp-resnet56-50.toml [--set budget_ratio=0.3]`."""
    if ctx.invoked_subcommand is not None:
        if config is not None or set_:
            fail(ValueError("give --config/--set after the method (`latbench prune lcp --config …`) or without "
                            "one (`latbench prune --config …`)"))
        return
    if config is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    try:
        method = read_recipe(config).get("method")
        if method is None:
            raise RecipeError(f"{config}: a pruning recipe names its method: add method = \"lcp\" (or naive, "
                              f"uniform, jcw, sp, ofar)")
        command = command_for_method(method, str(config))
        job_class = method_job(command).job
        data, source = job_data(job_class, config, set_, {}, cli_options(job_class))
        data = _recipe_prepare(command)(data, source)
        job = build_job(job_class, data, source)
    except RecipeError as err:
        fail(err)
    execute(command, job)


__all__ = ["COMMANDS", "MethodJob", "command_for_method", "execute", "method_job", "prune_app"]
