"""``latbench farm status FILE``: every device of a farm, asked on its own node."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .common import JOB_ERRORS, console, fail

farm_app = typer.Typer(no_args_is_help=True, help="Drive many phones and hosts at once on Ray.")


@farm_app.command("status")
def farm_status_cmd(path: Path = typer.Argument(..., help="farm description (TOML: ray_address, [[nodes]])"),
                    timeout: float = typer.Option(60.0, help="seconds to wait for each device's agent"),
                    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON")) -> None:
    """Every device of the farm: its node, fingerprint, what it reports about itself, busy or idle, last error.

    Example: latbench farm status farm.toml
    """
    from ..distributed import RayUnavailableError
    from ..farm import farm_status, load_farm

    try:
        rows = farm_status(load_farm(path), timeout=timeout)
    except (RayUnavailableError, *JOB_ERRORS) as err:
        fail(err)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table("node", "device", "fingerprint", "state", "last error", "reports")
    for r in rows:
        state = "gone" if r["host"] is None else "busy" if r["busy"] else "idle" if r["fingerprint"] else "absent"
        table.add_row(r["node"], r["spec"], r["fingerprint"] or "—", state, r["last_error"] or "",
                      ", ".join(sorted(r.get("telemetry") or {}))[:60])
    console.print(table)


__all__ = ["farm_app"]
