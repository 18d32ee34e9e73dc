"""Summarise pruning reports (every report.json below a folder: LcP/naive/uniform jobs and the architectures
of JCW jobs) as a Markdown table.

    python benchmarks/summarize_pruning.py runs/lcp-acceptance [--plot accuracy.png]

"acc before FT" is the pruned network before fine-tuning (for JCW: the supernet's slice before ADMM
retraining); "density" is 1 − mean conv sparsity (1 for channel pruning); "meas./pred." is the measured
latency over the predicted one, "±5 %" whether it is within 5 %.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from latbench.methods.common import in_candidates
from latbench.recipe import moved_aside


def main(folder: str, plot: str | None = None) -> None:
    rows = []
    full = Path(folder, "full.txt")     # written by lcp_acceptance.sh: budgets are fractions of it
    full_ms = float(full.read_text().rsplit(":", 1)[1].split()[0]) if full.exists() else None
    for path in sorted(Path(folder).rglob("report.json")):
        if moved_aside(path, folder) or in_candidates(path, folder):
            continue
        r = json.loads(path.read_text())
        if r["budget"].get("ratio") is None and full_ms and r["budget"].get("kind") == "latency":
            r["budget"]["ratio"] = round(r["budget"]["value"] / full_ms, 3)
        if "method" not in r:          # a JCW architecture whose device measurement has not run yet
            continue
        search = r.get("search") or {}
        budget, measured, predicted = r["budget"], r["measured_ms"], r["predicted_ms"]
        rows.append({
            "budget": f"{budget['ratio']:.0%}" if budget.get("ratio") else
            f"{budget['value']:.4g}" if budget.get("value") else budget.get("label", budget["kind"]),
            "method": r["method"],
            "budget ms": budget["value"],
            "predicted ms": predicted,
            "measured ms": measured,
            "measured / budget": (measured / budget["value"]) if measured and budget["value"] else None,
            "meas./pred.": (measured / predicted) if measured and predicted else None,
            "±5 %": ("yes" if abs(measured / predicted - 1) <= 0.05 else "no") if measured and predicted else None,
            "density": r.get("density", 1.0),
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
    if plot:
        plot_accuracy(frame, plot)


def plot_accuracy(frame: pd.DataFrame, path: str) -> None:
    """Test accuracy after fine-tuning against measured latency, one line per method: methods compare at equal
    measured latency by reading across, not row by row (each lands at its own latency under a budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, rows in frame.dropna(subset=["measured ms"]).groupby("method"):
        rows = rows.sort_values("measured ms")
        ax.plot(rows["measured ms"], rows["acc after FT %"], marker="o", label=method)
    ax.set_xlabel("latency measured on the device (ms)")
    ax.set_ylabel("test accuracy after retraining (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the optional `tabulate`)."""
    def cell(v):
        return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--plot" else None)
