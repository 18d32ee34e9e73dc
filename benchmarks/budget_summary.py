"""Budget landing (issue 15): how close every pruned network of the acceptance runs lands to its budget, as
measured on the shipped file, and what LcP's meta-learning cost.

    python benchmarks/budget_summary.py runs/lcp-acceptance runs/jcw-acceptance [--out benchmarks/results/budget]

Reads every report (``report.json``, or a committed copy of one) below the given folders (LcP/naïve/uniform/SP jobs and the architectures of JCW
jobs; OFAR cohorts from their ``report.json``) and writes ``summary.json``:
``{"networks": [{"method", "budget_ratio", "budget_ms", "measured_ms", "measured_upper_ms", "iterations",
"status"}], "fraction_in_band", "over_budget", "lcp_meta_seconds"}``. A network is in band when its shipped
file's median is in [0.95, 1.00] × budget and the one-sided confidence bound of that median
(``latbench.methods.landing.upper_bound_ms``: the largest of 3 measurements, the 7th smallest of 9) within the
budget; over budget when that bound is above it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from latbench.files import atomic_write_json
from latbench.methods.landing import upper_bound_ms
from latbench.methods.common import in_candidates
from latbench.recipe import moved_aside

BAND = 0.95


def _row(method: str, budget: dict, report: dict, landing: dict | None, shipped: dict | None = None) -> dict | None:
    """One network's row; ``iterations`` counts the networks measured by the loop (``landing``) and the shipped
    files retrained and measured by its last stage (``shipped``), whose status is the outcome when it ran."""
    if budget.get("kind") != "latency" or not budget.get("value") or report.get("measured_ms") is None:
        return None
    value = float(budget["value"])
    repeats = report.get("shipped_repeats_ms") or [report["measured_ms"]]
    median, upper = float(report["measured_ms"]), upper_bound_ms(repeats)
    ratio = budget.get("ratio")
    full_ms = (report.get("full_latency_ms") or {}).get("measured")
    if ratio is None and full_ms:          # a budget given in ms (the LcP acceptance): its fraction of the full network
        ratio = round(value / float(full_ms), 4)
    return {"method": method, "budget_ratio": ratio, "budget_ms": value, "measured_ms": median,
            "measured_upper_ms": upper, "measured_over_budget": median / value,
            "iterations": (landing or {}).get("iterations", 0), "shipped_iterations": (shipped or {}).get("iterations", 0),
            "status": (shipped or landing or {}).get("status"),
            "in_band": BAND * value <= median and upper <= value, "over_budget": upper > value}


def collect(folders: list[Path]) -> tuple[list[dict], list[float]]:
    rows, meta_seconds = [], []
    for folder in folders:
        # Reports in run folders (report.json) and the copies committed under benchmarks/results (any name).
        for path in sorted(folder.rglob("*.json")):
            if moved_aside(path, folder) or in_candidates(path, folder):
                continue
            report = json.loads(path.read_text())
            if not isinstance(report, dict):
                continue
            if report.get("method") == "ofar":
                for c in report["cohort"]:
                    if c.get("measured_ms") is not None:
                        rows.append(_row("ofar", {"kind": "latency", "value": c["budget_ms"],
                                                  "ratio": c.get("budget_ratio")},
                                         {"measured_ms": c["measured_ms"],
                                          "shipped_repeats_ms": (c.get("shipped_landing") or {}).get("repeats")},
                                         c.get("landing"), c.get("shipped_landing")))
                continue
            if "method" not in report or "budget" not in report:
                continue
            row = _row(report["method"], report["budget"], report, report.get("landing"), report.get("shipped_landing"))
            if row is not None:
                rows.append(row)
            seconds = (report.get("search") or {}).get("seconds")     # the β evolution (LcP's meta-learning)
            if report["method"] == "lcp" and seconds is not None:
                meta_seconds.append(float(seconds))
    return [r for r in rows if r is not None], meta_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/budget"))
    args = ap.parse_args()
    rows, meta = collect(args.folders)
    if not rows:
        raise SystemExit(f"no measured latency-budget reports below {', '.join(map(str, args.folders))}: run the "
                         "acceptance scripts with the device first")
    summary = {"networks": rows, "fraction_in_band": sum(r["in_band"] for r in rows) / len(rows),
               "over_budget": sum(r["over_budget"] for r in rows),
               "lcp_meta_seconds": max(meta) if meta else None}
    atomic_write_json(args.out / "summary.json", summary, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "networks"}, indent=1))


if __name__ == "__main__":
    main()
