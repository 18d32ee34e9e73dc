"""Parsers of benchmark_model / onnxruntime_perf_test output: the verbatim public fixtures in
../shared/fixtures/device_outputs and samples written here from the same formats (log prefixes,
scientific notation, mixed units)."""

import pytest

from latbench.devices.android.parsers import (REGULAR_RUNS, ParseError, RunStats, parse_benchmark_model,
                                              parse_perf_test, strip_prefix)

from conftest import SHARED

OUTPUTS = SHARED / "fixtures" / "device_outputs"


def fixture(name: str) -> str:
    path = OUTPUTS / name
    if not path.exists():
        pytest.skip(f"device output fixtures not found at {OUTPUTS} (they live in ../shared beside the checkout)")
    return path.read_text()


# ------------------------------------------------------------------------------ verbatim fixtures

def test_tf28_op_profiling_with_scientific_notation():
    r = parse_benchmark_model(fixture("tflite_cpu_opprof_tf28_NobuoTsukamoto_meta-tensorflow-lite.txt"))
    assert [s.count for s in r.runs] == [1, 50]
    assert r.regular.avg_us == pytest.approx(2.95034e6) and r.regular.std_us == 109798
    assert r.inference_avg_us == pytest.approx(2.95034e6) and r.warmup_avg_us == pytest.approx(3.51239e6)
    assert r.init_us == 17187 and r.first_us == 3512391
    assert r.latency_ms == pytest.approx(2950.34)
    prof = r.profiles[REGULAR_RUNS]
    assert len(prof.rows) == 31                          # "Number of nodes executed: 31"
    assert prof.rows[0].node_type == "CONV_2D" and prof.rows[0].avg_ms == pytest.approx(60.957)
    assert prof.rows[-1].name == "[MobilenetV1/Predictions/Reshape_1]:30" and prof.rows[-1].times_called == 1
    assert prof.timings.avg_us == pytest.approx(2.9499e6)
    # The nodes' average times add up to the profiled run time (the profiler's own total).
    assert r.ops_ms == pytest.approx(prof.timings.avg_us / 1e3, rel=1e-4)
    init = r.profiles["Profiling Info for Benchmark Initialization"]
    assert [row.node_type for row in init.rows] == ["AllocateTensors"]


def test_nnapi_op_profile_excerpt_with_delegate_nodes():
    r = parse_benchmark_model(fixture("tflite_android_nnapi_opprof_lp6m_yolov5s_android.txt"))
    prof = r.profiles[REGULAR_RUNS]
    assert len(prof.rows) == 11                          # "11 nodes observed"
    delegate = [row for row in prof.rows if row.node_type == "TfLiteNnapiDelegate"]
    assert len(delegate) == 3 and sum(row.avg_ms for row in delegate) == pytest.approx(149.486)
    assert r.ops_ms == pytest.approx(158.716) and r.latency_ms == pytest.approx(158.715)
    assert r.profiles["Profiling Info for Benchmark Initialization"].timings.count == 1


def test_android_cpu_summary():
    r = parse_benchmark_model(fixture("tflite_android_cpu_summary_lp6m_yolov5s_android.txt"))
    assert r.regular == RunStats(50, 249684, 1442, 247067, 254474, 249042, 250889)
    assert r.latency_ms == pytest.approx(249.684) and r.first_us == 360262
    with pytest.raises(ParseError, match="op profile"):
        r.ops_ms


def test_tf1x_average_inference_timings():
    r = parse_benchmark_model(fixture("tflite_tf1x_old_format_yuenshome_issue77.txt"))
    assert r.inference_avg_us == pytest.approx(66767.6) and r.warmup_avg_us == pytest.approx(76605.9)
    assert r.init_us == 9933 and r.latency_ms == pytest.approx(66.7676)
    assert [s.count for s in r.runs] == [7, 15]


def test_tf21_output_without_a_timings_summary_uses_the_regular_runs():
    r = parse_benchmark_model(fixture("tflite_tf21_nnmeter_issue83_partial.txt"))
    assert r.inference_avg_us is None
    assert r.regular.count == 50 and r.latency_ms == pytest.approx(137.144)


def test_perf_test_with_statistics_in_seconds_and_milliseconds():
    r = parse_perf_test(fixture("ort_perf_test_pixel6_lutnn_blink-mm.txt"))
    assert r.average_ms == pytest.approx(19.918) and r.requests == 100
    assert r.session_creation_ms == pytest.approx(50.8382)
    assert r.latencies_ms["p50"] == pytest.approx(19.9047) and r.latencies_ms["min"] == pytest.approx(19.7812)
    assert r.latencies_ms["p999"] == pytest.approx(20.2704)
    assert r.latencies_ms["min"] <= r.latencies_ms["p50"] <= r.latencies_ms["p90"] <= r.latencies_ms["max"]


# ------------------------------------------------------------------------------ own samples

TF2_LINES = [
    "count=20 first=1532 curr=1488 min=1470 max=1532 avg=1490.5 std=14",
    "Inference timings in us: Init: 2104, First inference: 1800, Warmup (avg): 1532, Inference (avg): 1490.5",
]
PREFIXES = {
    "logcat threadtime": "03-14 10:22:31.456  4321  4321 I tflite  : ",
    "logcat brief": "I/tflite  ( 4321): ",
    "absl": "I0314 10:22:31.456789  4321 benchmark_tflite_model.cc:123] ",
    "INFO": "INFO: ",
    "logcat + INFO": "03-14 10:22:31.456  4321  4321 I tflite  : INFO: ",
}


@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
def test_log_prefixes_are_stripped(prefix):
    r = parse_benchmark_model("\n".join(prefix + line for line in TF2_LINES))
    assert r.regular.count == 20 and r.latency_ms == pytest.approx(1.4905) and r.init_us == 2104


def test_op_table_rows_keep_their_tabs_behind_a_logcat_prefix():
    prefix = PREFIXES["logcat threadtime"]
    table = [
        "Operator-wise Profiling Info for Regular Benchmark Runs:",
        "============================== Run Order ==============================",
        "\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]",
        "\t                     PAD\t            0.000\t    0.021\t    0.020\t 10.000%\t 10.000%\t     0.000\t        1\t[pad]:0",
        "\t                 CONV_2D\t            0.021\t    0.190\t    0.180\t 90.000%\t100.000%\t     0.000\t        1\t[conv]:1",
        "",
        "============================== Summary by node type ==============================",
        "\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]",
        "\t                 CONV_2D\t        1\t     0.180\t    90.000%\t    90.000%\t     0.000\t        1",
        "",
        "Timings (microseconds): count=20 first=211 curr=199 min=195 max=230 avg=200.2 std=8",
    ]
    r = parse_benchmark_model("\n".join(prefix + line for line in TF2_LINES + table))
    rows = r.profiles[REGULAR_RUNS].rows
    assert [row.node_type for row in rows] == ["PAD", "CONV_2D"]   # the summary table is not counted twice
    assert r.ops_ms == pytest.approx(0.2) and r.profiles[REGULAR_RUNS].timings.avg_us == pytest.approx(200.2)


def test_a_single_timed_run_has_only_curr():
    r = parse_benchmark_model("count=1 curr=3512391\n")
    assert r.regular.avg_us == 3512391 and r.latency_ms == pytest.approx(3512.391)


@pytest.mark.parametrize("line,ms", [("Average inference time cost: 0.512 ms", 0.512),
                                     ("Average inference time cost: 1.5e-03 s", 1.5),
                                     ("Average inference time cost: 731 us", 0.731)])
def test_perf_test_units(line, ms):
    assert parse_perf_test(f"Total inference requests: 10\n{line}\n").average_ms == pytest.approx(ms)


def test_perf_test_without_an_average_falls_back_to_p50_and_keeps_mixed_units():
    text = "INFO: Runs:20\nINFO: Min Latency: 950 us\nINFO: P50 Latency: 0.001 s\nINFO: Max Latency: 1.2 ms\n"
    r = parse_perf_test(text)
    assert r.requests == 20 and r.average_ms == pytest.approx(1.0)
    assert r.latencies_ms == pytest.approx({"min": 0.95, "p50": 1.0, "max": 1.2})


@pytest.mark.parametrize("text", ["", "STARTING!\nFailed to load model /x.tflite\nAborted\n",
                                  "ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'\n"])
def test_output_without_timings_is_a_clear_error(text):
    with pytest.raises(ParseError, match="no benchmark_model timings"):
        parse_benchmark_model(text)
    with pytest.raises(ParseError, match="no onnxruntime_perf_test timings"):
        parse_perf_test(text)


def test_a_latency_line_without_a_unit_is_refused():
    with pytest.raises(ParseError, match="no time unit"):
        parse_perf_test("Average inference time cost: 12.5\n")


def test_strip_prefix_leaves_plain_lines_alone():
    assert strip_prefix("count=5 avg=3") == "count=5 avg=3"
    assert strip_prefix("\tCONV_2D\t0.1") == "\tCONV_2D\t0.1"
