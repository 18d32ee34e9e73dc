
import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.devices import Artifact, DeviceError, MeasureSettings, list_devices, open_device
from latbench.export import export_layer_variant, export_network_for
from latbench.layers import LayerPoint, LayerSignature
from latbench.models import Architecture, get_model, materialize

runner = CliRunner()
QUICK = MeasureSettings(warmup=1, rounds=2, runs_per_round=3)
from test_cli import TINY_GRID  # noqa: E402  (pytest puts tests/ on sys.path)


def test_litert_measures_layer_variants_and_a_sparse_network():
    spec = get_model("resnet56")
    conv, dw = LayerSignature("conv", 3, 1, 1, "relu", residual=True), LayerSignature("depthwise", 3, 2, 1, "relu6")
    variants = {"conv8": (conv, LayerPoint(8, 8, 0.0, 32)), "conv16-sparse": (conv, LayerPoint(16, 16, 0.5, 32)),
                "dw32": (dw, LayerPoint(32, 32, 0.0, 16))}
    artifacts = [Artifact(k, export_layer_variant("tflite", sig, p), format="tflite")
                 for k, (sig, p) in variants.items()]
    arch = Architecture(spec.name, 32, dict(spec.groups), {spec.layers[1].name: 0.5})
    artifacts.append(Artifact("net", export_network_for("tflite", materialize(arch, spec), arch), kind="network",
                              format="tflite"))
    dev = open_device("host:litert", settings=QUICK)
    try:
        results = dev.measure(artifacts)
        with pytest.raises(DeviceError, match="runs tflite models"):
            dev.measure([Artifact("x", b"onnx bytes", format="onnx")])
    finally:
        dev.close()
    assert [m.key for m in results] == [*variants, "net"]
    assert all(m.median_ms > 0 and m.runs + m.outliers == QUICK.rounds * QUICK.runs_per_round for m in results)
    assert dev.reference_ms and dev.reference_ms > 0
    assert results[-1].median_ms > results[0].median_ms  # the whole network costs more than one of its convs


def test_xnnpack_and_builtin_kernels_are_different_environments():
    xnn, builtin = open_device("host:litert"), open_device("host:litert:builtin")
    assert open_device("host:litert", kernels="builtin").fingerprint() == builtin.fingerprint()
    assert xnn.fingerprint() != builtin.fingerprint() != open_device("host:onnxruntime").fingerprint()
    assert xnn.fingerprint().startswith("host-litert-") and builtin.name == "host:litert:builtin"
    assert (xnn.environment()["kernels"], builtin.environment()["kernels"]) == ("xnnpack", "builtin")
    assert xnn.model_format == "tflite" and builtin.channel_multiple == 1
    with pytest.raises(DeviceError, match="contradicts"):
        open_device("host:litert:builtin", kernels="xnnpack")
    names = {d.name: d for d in list_devices()}
    assert {"host:onnxruntime", "host:litert", "host:litert:builtin"} <= set(names)
    assert names["host:litert"].available and names["host:litert"].fingerprint == xnn.fingerprint()
    res = runner.invoke(app, ["devices"])
    assert res.exit_code == 0 and "host:litert:builtin" in res.output


def test_validate_on_litert_refuses_an_onnxruntime_table(tmp_path):
    store, table = str(tmp_path / "s.db"), str(tmp_path / "t.parquet")
    res = runner.invoke(app, ["profile", *TINY_GRID, "--calibrate", "0", "--store", store, "--table", table])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", "resnet56", "--device", "host:litert", "--table", table, "--n", "2",
                              "--resolution", "32", "--store", store, "--no-progress"])
    assert res.exit_code == 2 and "measured on" in res.output and "not on host:litert" in res.output
