"""benchmarks/ofar_summary.py: issue 12's summary from the folders the acceptance script writes — each method's
entry lands in the row of its (device, budget), LcP is matched by its budget in ms, costs add up."""
import json
from pathlib import Path

from benchmark_scripts import load_benchmark_script


def _entry(device, ratio, budget_ms, acc, ms, resolution=32):
    return {"device": device, "budget_ratio": ratio, "budget_ms": budget_ms, "resolution": resolution,
            "arch": {"resolution": resolution}, "test_acc": acc, "predicted_ms": ms, "measured_ms": ms}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_summary_puts_every_method_in_the_row_of_its_device_and_budget(tmp_path):
    summary = load_benchmark_script("ofar_summary")
    budgets = {("host:litert", 0.7): 1.4, ("host:litert", 0.4): 0.8, ("host:onnxruntime", 0.7): 1.5}
    for name, acc in (("ofar", 0.9), ("ofar-no-ta", 0.8), ("usnet", 0.7)):
        cohort = [_entry(d, r, b, acc - (0.7 - r) / 10, b * 0.97, resolution=28 if r < 0.5 else 32)
                  for (d, r), b in budgets.items()]
        if name == "usnet":
            cohort = cohort[:2]                              # one (device, budget) the baseline did not reach
        _write(tmp_path / name / "report.json", {"cohort": cohort, "unmet": [],
                                                  "seconds": {"search": 10.0, "joint_training": 30.0},
                                                  "search": {"unstable": []}})
    for i, ((device, _), budget_ms) in enumerate(budgets.items()):
        folder = tmp_path / "lcp" / f"run{i}"
        _write(folder / "report.json", {"device": device, "budget": {"kind": "latency", "value": budget_ms},
                                        "test_accuracy": {"finetuned": 0.5 + i / 100}, "measured_ms": budget_ms})
        (folder / "seconds.txt").write_text("20\n")

    unreachable = tmp_path / "lcp" / "onnxruntime-0.4"
    unreachable.mkdir()
    (unreachable / "unreachable.txt").write_text("error: a latency budget of 0.7 ms is below what pruning can reach")
    budgets_with_lcp_floor = {**budgets, ("host:onnxruntime", 0.4): 0.7}
    for name in ("ofar", "ofar-no-ta"):                      # OFAR reaches it by a lower resolution
        path = tmp_path / name / "report.json"
        report = json.loads(path.read_text())
        report["cohort"].append(_entry("host:onnxruntime", 0.4, 0.7, 0.6, 0.69, resolution=20))
        path.write_text(json.dumps(report))
    budgets = budgets_with_lcp_floor

    out = summary.main(str(tmp_path))
    rows = {(r["device"], r["budget_ratio"]): r for r in out["side_by_side"]}
    assert set(rows) == set(budgets)
    low = rows[("host:litert", 0.4)]
    assert low["ofar"]["test_acc"] == 0.9 - 0.03 and low["ofar"]["resolution"] == 28
    assert low["ofar_no_ta"]["test_acc"] == 0.8 - 0.03
    assert low["lcp"]["test_acc"] == 0.51 and low["lcp"]["measured_ms"] == 0.8
    assert rows[("host:onnxruntime", 0.7)]["usnet"] is None
    assert out["seconds"]["lcp_total"] == 60.0 and out["seconds"]["ofar_total"] == 40.0
    assert len(out["ablation_ta"]["with"]) == 4 and len(out["baselines"]["lcp"]) == 4
    assert "below what pruning" in rows[("host:onnxruntime", 0.4)]["lcp"]["unreachable"]
    assert rows[("host:onnxruntime", 0.7)]["lcp"]["test_acc"] == 0.52

    table = summary.markdown(out).splitlines()
    assert len(table) == 2 + len(budgets)
    assert "| host:litert | 40 % (0.800 ms) | 87.00 % @28 (0.776 ms)" in table[3]
    assert table[-2].endswith("| – | 52.00 % (1.500 ms) |")      # no US-Net entry; LcP at 1.5 ms
    assert table[-1].endswith("| unreachable at its resolution |")


def test_each_cell_says_how_its_network_landed(tmp_path):
    summary = load_benchmark_script("ofar_summary")
    entry = {**_entry("host:litert", 0.5, 1.0, 0.8, 0.97), "landing": {"status": "over budget"},
             "shipped_landing": {"status": "in band"}}              # the shipped stage decides last
    predicted = _entry("host:litert", 0.7, 1.4, 0.85, None)           # a device that was not here: no verdict
    for name in ("ofar", "ofar-no-ta", "usnet"):
        _write(tmp_path / name / "report.json", {"cohort": [entry, predicted], "unmet": [], "seconds": {},
                                                  "search": {"unstable": []}})
    folder = tmp_path / "lcp" / "litert-0.5"
    _write(folder / "report.json", {"device": "host:litert", "budget": {"kind": "latency", "value": 1.0},
                                    "test_accuracy": {"finetuned": 0.7}, "measured_ms": 0.96,
                                    "landing": {"status": "in band"}, "shipped_landing": {"status": "no unit fits"}})
    out = summary.main(str(tmp_path))
    assert [c["landing"] for c in out["cohort"]] == ["in band", None]
    table = summary.markdown(out)
    assert "| 80.00 % @32 (0.970 ms; in band) |" in table and "| 70.00 % (0.960 ms; no unit fits) |" in table
    assert "85.00 % @32 (– ms) |" in table
