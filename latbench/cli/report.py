"""``latbench report show DIR``: what a run was made from — its resolved recipe and the hashes of its inputs —
and its headline figures."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..files import read_json
from .common import JOB_ERRORS, console, fail

report_app = typer.Typer(no_args_is_help=True, help="Inspect what runs were made from.")

#: The figures shown from a job's report (those it has).
HEADLINE = ("method", "budget", "predicted_ms", "measured_ms", "measured_over_budget", "test_accuracy", "seconds",
            "test_acc", "complete")


def _record_of(path: Path) -> tuple[Path, Path | None]:
    """The recipe record of a job folder (``DIR/recipe.json``) or of a training checkpoint (``X.recipe.json``),
    and the report beside it."""
    from ..train.job import recipe_path

    if path.is_dir():
        report = next((p for p in (path / "report.json", path / "summary.json") if p.exists()), None)
        return path / "recipe.json", report
    history = path.with_suffix(".json")
    return recipe_path(path), history if history.exists() else None


@report_app.command("show")
def report_show(path: Path = typer.Argument(..., help="a job's output folder, or a checkpoint from `latbench train`"),
                as_json: bool = typer.Option(False, "--json", help="print the record as one JSON document")) -> None:
    """Print the resolved recipe a run was made from (every field, defaults included), the SHA-256 of the
    checkpoint and tables it read, and its headline figures.

    Example: latbench report show runs/lcp-acceptance/lcp-0.5
    """
    try:
        record_path, report_path = _record_of(path)
        if not record_path.exists():
            raise FileNotFoundError(f"{path} has no recipe record ({record_path.name}): it was made before runs "
                                    f"recorded their recipes, or is not a run's output; rerun its job to record it")
        record = read_json(record_path, recover="rerun the job to write it again")
        report = read_json(report_path, recover="rerun the job to write it again") if report_path else {}
    except JOB_ERRORS as err:
        fail(err)
    figures = {k: report[k] for k in HEADLINE if k in report}
    if as_json:
        console.print_json(json.dumps({**record, "figures": figures}))
        return
    console.print(f"[bold]{record['kind']}[/] run in {path}  (recipe digest {record['digest']})")
    for name, files in record.get("inputs", {}).items():
        for file, digest in files.items():
            console.print(f"  {name}: {file}  sha256 {digest or '(missing)'}")
    console.print("[bold]recipe[/] (resolved, defaults included):")
    console.print_json(json.dumps(record["recipe"]))
    if figures:
        console.print("[bold]figures[/]:")
        console.print_json(json.dumps(figures))


__all__ = ["report_app"]
