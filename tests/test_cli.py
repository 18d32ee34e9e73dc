import json

import numpy as np
import pandas as pd
import pytest

from typer.testing import CliRunner

from latbench.cli import app
from latbench.models import Architecture, get_model
from latbench.store import MeasurementStore
from latbench.tables import LatencyTable
from latbench.validation import network_key

runner = CliRunner()


def test_every_command_has_help_with_an_example():
    for cmd in (["demo"], ["devices"], ["profile"], ["predict"], ["measure"], ["validate"], ["table", "build"], ["table", "info"],
                ["table", "import-jcw"]):
        res = runner.invoke(app, cmd + ["--help"])
        assert res.exit_code == 0 and "Example" in res.output, cmd


def test_predict_with_the_jcw_table_and_clear_errors(tmp_path, jcw_dir):
    table = tmp_path / "jcw.parquet"
    assert runner.invoke(app, ["table", "import-jcw", str(jcw_dir), "-o", str(table)]).exit_code == 0
    spec = get_model("resnet18")
    arch = tmp_path / "a.json"
    arch.write_text(Architecture.full(spec, 224).to_json())
    res = runner.invoke(app, ["predict", "resnet18", "--arch", str(arch), "--table", str(table)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["predicted_ms"] > 390
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**Architecture.full(spec).to_dict(), "widths": {"stage1": 5}}))
    res = runner.invoke(app, ["predict", "resnet18", "--arch", str(bad), "--table", str(table)])
    assert res.exit_code == 2 and "missing groups" in res.output
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(table.read_bytes()[:500])
    res = runner.invoke(app, ["predict", "resnet18", "--table", str(trunc)])
    assert res.exit_code == 2 and "corrupt or truncated" in res.output


def test_profile_refuses_a_corrupt_onnx_file_and_unknown_devices(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    res = runner.invoke(app, ["profile", str(bad), "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output
    res = runner.invoke(app, ["profile", "resnet56", "--device", "bluetooth:phone", "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "unknown device" in res.output


def test_validate_refuses_a_table_from_another_device(tmp_path, jcw_dir):
    table = tmp_path / "jcw.parquet"
    runner.invoke(app, ["table", "import-jcw", str(jcw_dir), "-o", str(table)])
    res = runner.invoke(app, ["validate", "resnet18", "--table", str(table), "--n", "2", "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "not on host:onnxruntime" in res.output


TINY_GRID = ["resnet56", "--resolution", "32", "--dense", "--channel-points", "2", "--sparsity", "0",
             "--rounds", "1", "--runs", "3", "--warmup", "1", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("device,provenance", [("host:onnxruntime", "host-ort-"), ("host:litert", "ai-edge-litert")])
def test_profile_table_validate_end_to_end_on_the_host(tmp_path, device, provenance):
    store, table = str(tmp_path / "s.db"), str(tmp_path / "t.parquet")
    res = runner.invoke(app, ["profile", *TINY_GRID, "--device", device, "--store", store, "--table", table,
                              "--calibrate", "3"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "r"
    # The README's order: profile at one resolution, then validate without naming it (the table's own).
    res = runner.invoke(app, ["validate", "resnet56", "--device", device, "--table", table, "--n", "4",
                              "--store", store, "--json", str(out) + ".json",
                              "--csv", str(out) + ".csv", "--plot", str(out) + ".png", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 4 and 0 <= report["within_5pct"] <= report["within_10pct"] <= 1
    assert len(report["worst"]) == 4
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # The summary is computed from the pairs written to the CSV, and the measurements are the stored ones.
    pairs = pd.read_csv(tmp_path / "r.csv")
    assert len(pairs) == 4 and (pairs.measured_ms > 0).all() and (pairs.predicted_ms > 0).all()
    error = pairs.predicted_ms - pairs.measured_ms
    assert report["rmse_ms"] == pytest.approx(float(np.sqrt(np.mean(error ** 2))))
    assert report["within_10pct"] == pytest.approx(float(((error / pairs.measured_ms).abs() <= 0.10).mean()))
    with MeasurementStore(store) as st:
        stored = {r.signature: r.measurement.median_ms for env, _, _ in st.environments() for r in st.rows(env)}
    assert [stored[network_key(Architecture.from_json(a))] for a in pairs.arch] == pytest.approx(list(pairs.measured_ms))
    info = runner.invoke(app, ["table", "info", table])
    assert "calibration" in info.output and provenance in info.output
    # Refitting the calibration on new networks keeps the previous fit in the history.
    before = LatencyTable.load(table).meta["calibration"]["resnet56"]
    res = runner.invoke(app, ["table", "calibrate", table, "resnet56", "--device", device, "--store", store,
                              "-n", "3", "--seed", "5", "-o", str(tmp_path / "t2.parquet")])
    assert res.exit_code == 0, res.output
    after = LatencyTable.load(tmp_path / "t2.parquet").meta
    assert after["calibration"]["resnet56"]["seed"] == 5 and after["calibration"]["resnet56"]["resolutions"] == [32]
    assert after["calibration_history"]["resnet56"] == [before]
    assert LatencyTable.load(table).meta["calibration"]["resnet56"] == before      # the source is untouched


def test_profile_accepts_any_onnx_cnn_file(tmp_path):
    from latbench.export.onnx import export_network
    from latbench.models import materialize

    spec = get_model("mobilenet_v1")
    arch = Architecture.full(spec, 160)
    model = tmp_path / "mbv1.onnx"
    model.write_bytes(export_network(materialize(arch, spec), 160))
    res = runner.invoke(app, ["profile", str(model), "--dense", "--channel-points", "1", "--sparsity", "0",
                              "--rounds", "1", "--runs", "2", "--warmup", "1", "--store", str(tmp_path / "s.db"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    # 29 layers, of which identical (signature, input size) pairs are measured once.
    assert 0 < report["slices"] < 29 and report["measured"] == report["grid_points"]


def test_measure_one_exported_file_with_the_protocol_and_the_store(tmp_path):
    from latbench.export import export_network_for
    from latbench.models import materialize

    spec = get_model("resnet20")
    arch = Architecture.full(spec, 32)
    model = tmp_path / "r20.tflite"
    model.write_bytes(export_network_for("tflite", materialize(arch, spec), arch))
    args = ["measure", str(model), "--device", "host:litert", "--store", str(tmp_path / "s.db"), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)
    assert first["p10_ms"] <= first["median_ms"] <= first["p90_ms"] and first["runs"] > 0
    again = json.loads(runner.invoke(app, args).stdout)          # the same bytes: read from the store
    assert again == first
    wrong = runner.invoke(app, ["measure", str(model), "--device", "host:onnxruntime", "--store",
                                str(tmp_path / "s.db")])
    assert wrong.exit_code == 2 and "runs onnx models" in wrong.output and "Traceback" not in wrong.output
    text = tmp_path / "notes.txt"
    text.write_text("x")
    bad = runner.invoke(app, ["measure", str(text), "--store", str(tmp_path / "s.db")])
    assert bad.exit_code == 2 and ".onnx or .tflite" in bad.output
