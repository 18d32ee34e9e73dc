"""benchmarks/budget_summary.py: issue 15's summary of how close every pruned network lands to its budget, from
run folders (report.json) and committed report copies of any name; in band = shipped median in [0.95, 1] × budget
with every repeat within it; over = a repeat above it."""
import json

from benchmark_scripts import load_benchmark_script


def _report(method, budget_ms, repeats, iterations=2, status="in band"):
    return {"method": method, "budget": {"kind": "latency", "value": budget_ms, "ratio": 0.5},
            "measured_ms": sorted(repeats)[len(repeats) // 2], "shipped_repeats_ms": repeats,
            "landing": {"iterations": iterations, "status": status}, "search": {"seconds": 12.5}}


def test_networks_in_band_over_budget_and_the_meta_learning_time(tmp_path):
    script = load_benchmark_script("budget_summary")
    run = tmp_path / "runs" / "lcp-0.5"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(_report("lcp", 1.0, [0.97, 0.98, 0.99])))          # in band
    committed = tmp_path / "results"
    committed.mkdir()
    (committed / "uniform-0.5.json").write_text(json.dumps(_report("uniform", 1.0, [0.96, 0.99, 1.02])))  # over
    (committed / "naive-0.5.json").write_text(json.dumps(_report("naive", 1.0, [0.90, 0.91, 0.92])))     # below
    (committed / "summary.json").write_text(json.dumps({"method": "lcp", "networks": []}))  # not a report
    aside = tmp_path / "runs" / "lcp-0.7~1"
    aside.mkdir()
    (aside / "report.json").write_text(json.dumps(_report("lcp", 1.0, [0.5])))                 # superseded
    candidate = run / "candidates" / "0123456789ab"      # a shipped landing's network: its chosen copy is run's
    candidate.mkdir(parents=True)
    (candidate / "report.json").write_text(json.dumps(_report("lcp", 1.0, [1.1, 1.2, 1.3])))
    rows, meta = script.collect([tmp_path / "runs", committed])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"lcp", "uniform", "naive"} and len(rows) == 3
    assert by["lcp"]["in_band"] and not by["lcp"]["over_budget"]
    assert by["uniform"]["over_budget"] and not by["uniform"]["in_band"]
    assert not by["naive"]["in_band"] and not by["naive"]["over_budget"]
    assert by["lcp"]["iterations"] == 2 and meta == [12.5]


def test_the_shipped_stage_counts_and_decides_the_status(tmp_path):
    script = load_benchmark_script("budget_summary")
    report = {**_report("jcw", 1.0, [0.95, 0.96, 0.97], iterations=4, status="over budget"),
              "shipped_landing": {"iterations": 3, "status": "in band"}}
    (tmp_path / "jcw-0.5.json").write_text(json.dumps(report))
    (row,), _ = script.collect([tmp_path])
    assert row["iterations"] == 4 and row["shipped_iterations"] == 3 and row["status"] == "in band"
    assert row["in_band"]


def test_a_budget_given_in_ms_gets_its_fraction_of_the_full_networks_measured_latency(tmp_path):
    script = load_benchmark_script("budget_summary")
    report = _report("lcp", 1.2, [1.15, 1.16, 1.17])
    report["budget"]["ratio"] = None                             # --budget-ms, as the LcP acceptance runs it
    report["full_latency_ms"] = {"measured": 2.4, "predicted": 2.2}
    (tmp_path / "report.json").write_text(json.dumps(report))
    rows, _ = script.collect([tmp_path])
    assert rows[0]["budget_ratio"] == 0.5
