"""benchmarks/results/ofar/summary.json from the folders benchmarks/ofar_acceptance.sh wrote (issue 12's format).

    python benchmarks/ofar_summary.py runs/ofar-acceptance > benchmarks/results/ofar/summary.json
    python benchmarks/ofar_summary.py --markdown benchmarks/results/ofar/summary.json   # the README's table
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _entries(report: dict | None) -> list[dict]:
    return [] if report is None else report["cohort"]


def _landing_status(entry: dict) -> str | None:
    """How the entry's network landed on its budget: the shipped stage's verdict, else the loop's (None when it
    was predicted only)."""
    landing = entry.get("shipped_landing") or entry.get("landing")
    return None if not landing else landing.get("status")


def side_by_side(ofar: dict | None, no_ta: dict | None, usnet: dict | None, lcp: list[dict]) -> list[dict]:
    """One row per (device, budget): each method's test accuracy and measured latency at that budget."""
    def by_key(report):
        return {(c["device"], c["budget_ratio"]): c for c in _entries(report)}
    rows = []
    mine, without, uniform = by_key(ofar), by_key(no_ta), by_key(usnet)
    for (device, ratio), c in sorted(mine.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        row = {"device": device, "budget_ratio": ratio, "budget_ms": c.get("budget_ms")}
        for name, entry in (("ofar", c), ("ofar_no_ta", without.get((device, ratio))),
                            ("usnet", uniform.get((device, ratio)))):
            row[name] = None if entry is None else {"test_acc": entry["test_acc"], "resolution": entry["resolution"],
                                                    "measured_ms": entry.get("measured_ms"),
                                                    "landing": _landing_status(entry)}
        same = [e for e in lcp if e["device"] == device and (
                e.get("budget_ratio") == ratio if "unreachable" in e else c.get("budget_ms") is not None
                and abs(e["budget_ms"] - c["budget_ms"]) <= 1e-9 * max(1.0, c["budget_ms"]))]
        row["lcp"] = None if not same else (
            {"unreachable": same[0]["unreachable"]} if "unreachable" in same[0] else
            {"test_acc": same[0]["test_acc"], "resolution": None, "measured_ms": same[0]["measured_ms"],
             "landing": same[0].get("landing")})
        rows.append(row)
    return rows


def main(root: str) -> dict:
    root = Path(root)
    ofar, no_ta, usnet = (_load(root / name / "report.json") for name in ("ofar", "ofar-no-ta", "usnet"))
    cohort = [{"device": c["device"], "budget_ms": c.get("budget_ms"), "resolution": c["resolution"],
               "arch": c["arch"], "test_acc": c["test_acc"], "predicted_ms": c.get("predicted_ms"),
               "measured_ms": c.get("measured_ms"), "landing": _landing_status(c)} for c in _entries(ofar)]
    ablation = {name: [{"device": c["device"], "budget_ratio": c["budget_ratio"], "test_acc": c["test_acc"],
                        "measured_ms": c.get("measured_ms")} for c in _entries(report)]
                for name, report in (("with", ofar), ("without", no_ta))}
    baselines = {"usnet": [{"device": c["device"], "budget_ratio": c["budget_ratio"], "test_acc": c["test_acc"],
                            "measured_ms": c.get("measured_ms")} for c in _entries(usnet)], "lcp": []}
    lcp_seconds = 0.0
    for folder in sorted((root / "lcp").glob("*")):
        report = _load(folder / "report.json")
        if report is None:
            if (folder / "unreachable.txt").exists():   # a budget below LcP's floor at the base resolution
                device, ratio = folder.name.rsplit("-", 1)
                baselines["lcp"].append({"device": f"host:{device}", "budget_ratio": float(ratio), "test_acc": None,
                                         "measured_ms": None,
                                         "unreachable": (folder / "unreachable.txt").read_text().strip()})
            continue
        seconds = float((folder / "seconds.txt").read_text()) if (folder / "seconds.txt").exists() else None
        lcp_seconds += seconds or 0.0
        baselines["lcp"].append({"device": report["device"], "budget_ms": report["budget"]["value"],
                                 "test_acc": report["test_accuracy"]["finetuned"],
                                 "measured_ms": report["measured_ms"], "seconds": seconds,
                                 "landing": _landing_status(report)})
    seconds = (ofar or {}).get("seconds", {})
    return {"cohort": cohort, "ablation_ta": ablation, "baselines": baselines,
            "side_by_side": side_by_side(ofar, no_ta, usnet, baselines["lcp"]),
            "seconds": {"search": seconds.get("search"), "joint_training": seconds.get("joint_training"),
                        "ofar_total": sum(v for v in seconds.values() if v) if seconds else None,
                        "lcp_total": lcp_seconds},
            "unmet": (ofar or {}).get("unmet", []),
            "unstable_rates": (ofar or {}).get("search", {}).get("unstable", [])}


def markdown(summary: dict) -> str:
    """The README's side-by-side table: test accuracy (measured ms) per method at each (device, budget)."""
    def cell(entry: dict | None) -> str:
        if entry is None:
            return "–"
        if "unreachable" in entry:
            return "unreachable at its resolution"
        ms = entry.get("measured_ms")
        res = f" @{entry['resolution']}" if entry.get("resolution") else ""
        landed = f"; {entry['landing']}" if entry.get("landing") else ""
        return f"{100 * entry['test_acc']:.2f} %{res} ({'–' if ms is None else format(ms, '.3f')} ms{landed})"
    lines = ["| device | budget | OFAR | OFAR without assistants | US-Net (uniform, sandwich) | LcP |",
             "|---|---|---|---|---|---|"]
    for row in summary["side_by_side"]:
        budget = f"{100 * row['budget_ratio']:.0f} % ({row['budget_ms']:.3f} ms)"
        lines.append(f"| {row['device']} | {budget} | " + " | ".join(
            cell(row[k]) for k in ("ofar", "ofar_no_ta", "usnet", "lcp")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
    else:
        print(json.dumps(main(sys.argv[1]), indent=2))
