"""Summarise pruning reports (report.json in each sub-folder) as a Markdown table.

    python benchmarks/summarize_pruning.py runs/lcp-acceptance
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def main(folder: str) -> None:
    rows = []
    for path in sorted(Path(folder).glob("*/report.json")):
        r = json.loads(path.read_text())
        search = r.get("search") or {}
        rows.append({
            "budget": f"{r['budget']['ratio']:.0%}" if r["budget"].get("ratio") else f"{r['budget']['value']:.4g}",
            "method": r["method"],
            "budget ms": r["budget"]["value"],
            "predicted ms": r["predicted_ms"],
            "measured ms": r["measured_ms"],
            "measured / budget": (r["measured_ms"] / r["budget"]["value"]) if r["measured_ms"] else None,
            "MMACs": r["flops"] / 1e6,
            "acc before FT %": 100 * r["test_accuracy"]["pruned"],
            "acc after FT %": 100 * r["test_accuracy"]["finetuned"],
            "search s": search.get("seconds", r["search_seconds"]),
            "naive prune ms/cand.": search.get("prune_ms_per_candidate"),
        })
    if not rows:
        raise SystemExit(f"no report.json under {folder}")
    frame = pd.DataFrame(rows).sort_values(["budget", "method"], ascending=[False, True])
    print(markdown(frame))


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the optional `tabulate`)."""
    def cell(v):
        return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1])
