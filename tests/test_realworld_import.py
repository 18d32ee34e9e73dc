"""Issue 13: CNNs written by others (timm, exported as a user would) are read as kernels, profiled, predicted
and pruned like zoo models. Assertions follow the graphs, never absolute times."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from realworld_models import REALWORLD, realworld_onnx  # noqa: F401  (fixture)
from typer.testing import CliRunner

from latbench.cli import app
from latbench.export import export_imported_network, export_layer_variant
from latbench.layers import LayerPoint, signature_of
from latbench.models import Architecture, random_architectures
from latbench.models.onnx_graph import OnnxModelError, kernel_nodes_of, spec_from_onnx
from latbench.models.onnx_load import load_user_onnx

runner = CliRunner()


def _check_kernels_follow_the_graph(spec, arch):
    """Every kernel's input channels and size, computed from the spec at ``arch``'s widths, are those of the
    tensor its first node reads in the pruned graph (shape inference of onnx, not ours)."""
    pruned = onnx.shape_inference.infer_shapes(onnx.load_from_string(export_imported_network("onnx", spec, arch)))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(pruned.graph.input) + list(pruned.graph.value_info)}
    nodes = {n.name: n for n in pruned.graph.node}
    first = {kernel: names[0] for kernel, names in kernel_nodes_of(pruned, spec.name).items()}  # a fused pad, say
    hw = spec.input_hw(arch.resolution)
    for layer in spec.layers:
        shape = shapes[nodes[first[layer.name]].input[0]]
        cin, _ = spec.channels(arch.widths, layer)
        assert shape[1] == cin, (layer.name, shape, cin)
        if len(shape) == 4:
            assert shape[2] == hw[layer.name], (layer.name, shape, hw[layer.name])
    return pruned


KINDS = {"mobilenet_v3_small": {"se", "depthwise"}, "efficientnet_b0": {"se"}, "regnety_200mf": {"se", "conv"},
         "ghostnet": {"op"}, "densenet121": {"op", "avgpool2d"}, "resnet34": {"maxpool"}}


@pytest.mark.parametrize("family", ["mobilenet_v3_small"])
def test_mobilenet_v3_imports_with_se_and_hard_swish_kernels(realworld_onnx, family):
    spec = spec_from_onnx(realworld_onnx(REALWORLD[family]))
    acts = {layer.act for layer in spec.layers}
    assert {"hswish", "relu"} <= acts
    se = [layer for layer in spec.layers if layer.kind == "se"]
    assert len(se) == 9 and {layer.op for layer in se} == {"hsigmoid"}
    for arch in [Architecture.full(spec)] + random_architectures(spec, 2, seed=3, divisor=8):
        _check_kernels_follow_the_graph(spec, arch)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(REALWORLD))
def test_every_family_imports_and_its_pruned_variants_run(realworld_onnx, family):
    spec = spec_from_onnx(realworld_onnx(REALWORLD[family]))
    assert spec.groups and not spec.remainder
    assert KINDS.get(family, set()) <= {layer.kind for layer in spec.layers}
    arch = random_architectures(spec, 1, seed=5, min_ratio=0.5, divisor=8)[0]
    pruned = _check_kernels_follow_the_graph(spec, arch)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros(spec.input_shape, np.float32)})[0]
    assert out.shape == (1, 1000) and np.isfinite(out).all()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_every_kernel_of_real_models_builds_and_runs(realworld_onnx, fmt):
    """Each distinct kernel signature of three families, at its full-width point, as the device would time it."""
    from ai_edge_litert.interpreter import Interpreter

    seen = {}
    for family in ("mobilenet_v3_small", "ghostnet", "regnety_200mf"):
        spec = spec_from_onnx(realworld_onnx(REALWORLD[family]))
        hw = spec.input_hw(spec.base_resolution)
        for layer in spec.layers:
            cin, cout = spec.channels(spec.groups, layer)
            seen.setdefault(signature_of(layer).key, (signature_of(layer), LayerPoint(cin, cout, 0.0, hw[layer.name])))
    assert any(k.startswith("se_") for k in seen) and any("_g" in k for k in seen) and any("xconcat" in k for k in seen)
    for key, (sig, point) in sorted(seen.items()):
        data = export_layer_variant(fmt, sig, point)
        if fmt == "onnx":
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            feeds = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in session.get_inputs()}
            outs = session.run(None, feeds)
        else:
            it = Interpreter(model_content=data, num_threads=1)
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.random.rand(*d["shape"]).astype(np.float32))
            it.invoke()
            outs = [it.get_tensor(d["index"]) for d in it.get_output_details()]
        assert all(np.isfinite(o).all() for o in outs), key
        expected = point.out_channels if sig.kind not in ("se",) and not sig.channels_tied else point.in_channels
        if sig.kind != "op" or not sig.op.startswith(("split", "slice", "flatten", "softmax")):
            channel_axis = 1 if fmt == "onnx" else -1
            assert outs[0].shape[channel_axis] == expected, key


def _graph(nodes, inits=(), in_shape=(1, 4, 8, 8), out_shape=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "g", [x], [y], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _conv_then(op_node, tmp_path, name="m.onnx"):
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    model = _graph([helper.make_node("Conv", ["x", "w"], ["c"], name="stem"), op_node], [w])
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_an_unsupported_op_is_named_or_counted_into_a_measured_remainder(tmp_path):
    path = _conv_then(helper.make_node("Cos", ["c"], ["y"], name="the_cosine"), tmp_path)
    with pytest.raises(OnnxModelError, match=r"node 'the_cosine' \(Cos\).*--skip-unsupported"):
        spec_from_onnx(path)
    spec = spec_from_onnx(path, skip_unsupported=True)
    assert spec.remainder == ("the_cosine",)
    # The CLI: one clear line, no traceback; with the flag the table times the remainder and predict adds it.
    result = runner.invoke(app, ["predict", str(path), "--table", str(tmp_path / "none.parquet")])
    assert result.exit_code != 0 and "the_cosine" in result.output and "Traceback" not in result.output
    store, table = tmp_path / "s.db", tmp_path / "t.parquet"
    result = runner.invoke(app, ["profile", str(path), "--device", "host:onnxruntime", "--store", str(store),
                                 "--table", str(table), "--calibrate", "0", "--skip-unsupported", "--no-progress",
                                 "--rounds", "2", "--runs", "3", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    from latbench.tables.table import LatencyTable

    remainder = LatencyTable.load(table).meta["remainder"][spec.name]
    assert remainder["nodes"] == ["the_cosine"] and remainder["ms"] > 0
    result = runner.invoke(app, ["predict", str(path), "--table", str(table), "--skip-unsupported"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["remainder_nodes"] == 1 and out["sum_of_layers_ms"] > remainder["ms"]


def test_bad_graphs_get_errors_naming_the_node(tmp_path):
    # a dynamic spatial size: ask for --input-shape
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    model = _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [w], in_shape=(1, 4, "h", "w"))
    onnx.save(model, tmp_path / "dyn.onnx")
    result = runner.invoke(app, ["predict", str(tmp_path / "dyn.onnx"), "--table", str(tmp_path / "t.parquet")])
    assert result.exit_code != 0 and "--input-shape" in result.output and "Traceback" not in result.output
    spec = spec_from_onnx(tmp_path / "dyn.onnx", input_shape=(1, 4, 16, 16))
    assert spec.input_shape == (1, 4, 16, 16)
    # a quantized graph
    q = _graph([helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv")])
    onnx.save(q, tmp_path / "q.onnx")
    with pytest.raises(OnnxModelError, match="qconv.*quantized"):
        spec_from_onnx(tmp_path / "q.onnx")
    # a dilated conv is named, not mis-timed
    path = _conv_then(helper.make_node("Conv", ["c", "w"], ["y"], name="dilated", dilations=[2, 2]), tmp_path, "d.onnx")
    with pytest.raises(OnnxModelError, match="dilated.*dilations"):
        spec_from_onnx(path)


def test_a_torch_module_with_an_example_input_imports_like_its_onnx_file(tmp_path):
    import torch
    from torch import nn

    from latbench.api import load_torch_module

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1),
                                    nn.Hardsigmoid())
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.conv(x)
            x = x * self.se(x)
            return self.head(x.mean((2, 3)))

    spec = load_torch_module(Block().eval(), torch.zeros(1, 3, 32, 32), tmp_path / "block.onnx")
    assert [layer.kind for layer in spec.layers] == ["conv", "se", "avgpool", "linear"]
    assert spec.layers[0].act == "hswish" and spec.groups


def _two_conv_model(path, width):
    """input 3 → conv 3×3 (width) → ReLU → conv 1×1 (width → 8): two models of different widths share both
    kernels' signatures, so one table must hold one complete grid per shared slice."""
    rng = np.random.default_rng(width)
    w1 = numpy_helper.from_array(rng.standard_normal((width, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, width, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    onnx.save(_graph(nodes, [w1, w2], in_shape=(1, 3, 16, 16)), path)
    return path


def test_a_second_model_joins_a_device_table_and_is_predicted_with_the_device_correction(tmp_path):
    """Profile two models into one table (each calibrated on its own networks), then a third with --calibrate 0:
    the table keeps every model's slices and calibration, covers the shared slices for all three, and predicts
    the third with the correction learnt on the other two (a model never measured whole)."""
    store, table = tmp_path / "s.db", tmp_path / "t.parquet"
    quick = ["--device", "host:onnxruntime", "--store", str(store), "--table", str(table), "--no-progress",
             "--rounds", "2", "--runs", "3", "--warmup", "1", "--channel-multiple", "8"]
    paths = [_two_conv_model(tmp_path / f"m{w}.onnx", w) for w in (32, 64, 48)]
    for path, calibrate in zip(paths, ("4", "4", "0")):
        result = runner.invoke(app, ["profile", str(path), "--calibrate", calibrate, *quick])
        assert result.exit_code == 0, result.output
    from latbench.predictor import Predictor
    from latbench.tables.table import LatencyTable

    loaded = LatencyTable.load(table)
    specs = [spec_from_onnx(p) for p in paths]
    assert set(loaded.meta["calibration"]) == {specs[0].name, specs[1].name}
    for spec in specs:          # every model's kernels, at full and at half width, inside the one table
        arch = Architecture.full(spec)
        half = Architecture(spec.name, arch.resolution, {g: max(8, w // 2) for g, w in spec.groups.items()})
        Predictor(spec, loaded).predict([arch, half])
    third = Predictor(specs[2], loaded)
    assert third.calibration_source == "device"
    fit = third.device_calibration()
    calibrated = sum(len(loaded.meta["calibration"][s.name]["kernel_samples"]) for s in specs[:2])
    assert fit["models"] == sorted(s.name for s in specs[:2]) and fit["networks"] == calibrated >= 6
    result = runner.invoke(app, ["predict", str(paths[2]), "--table", str(table)])
    out = json.loads(result.output[result.output.index("{"):])
    assert out["calibration"] == "device" and out["model_calibrated_ms"] is None
    assert out["predicted_ms"] == pytest.approx(out["device_calibrated_ms"])
