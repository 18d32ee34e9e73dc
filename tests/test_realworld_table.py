"""The README's real-world table is printed from the benchmark's summary (benchmarks/realworld_table.py)."""
from benchmark_scripts import load_benchmark_script


def _row(model, runtime, error):
    return {"model": model, "timm": model + "_t", "runtime": runtime, "imported": True, "layers": 23,
            "measurements": 400, "profile_s": 61.4, "full_bare_ms": 9.2, "full_pred_ms": 7.02, "full_meas_ms": 7.07,
            "full_error": error, "variants_within_10pct": 0.95, "variants_within_5pct": 0.65,
            "variants_bare_within_10pct": 0.0, "variants_model_calibrated_within_10pct": 1.0}


def test_rows_follow_the_summary_and_pair_runtimes_per_model():
    script = load_benchmark_script("realworld_table")
    rows = [_row("a", "host:onnxruntime", -0.006), _row("b", "host:onnxruntime", 0.1),
            _row("a", "host:litert", 0.031),
            {"model": "b", "timm": "b_t", "runtime": "host:litert", "imported": False, "error": "node 'x' (Foo)"}]
    lines = script.table(rows).splitlines()
    assert lines[2] == "| a (a_t) | 23 | onnxruntime | 400, 61 | 9.20 / 7.02 / 7.07 | -0.6 % | 95 / 65 % | 0 / 100 % |"
    assert [line.split(" | ")[2] for line in lines[2:]] == ["onnxruntime", "litert", "onnxruntime", "litert"]
    assert "+3.1 %" in lines[3] and "not imported: node 'x' (Foo)" in lines[5]
