import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper

from latbench.export.onnx import export_network
from latbench.layers import signature_of
from latbench.models import get_model, materialize, random_architectures
from latbench.models.onnx_graph import OnnxModelError, spec_from_onnx


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "mobilenet_v1", "resnet56"])
def test_layers_read_from_an_exported_network_match_the_zoo(tmp_path, name):
    spec = get_model(name)
    arch = random_architectures(spec, 1, seed=4)[0]
    path = tmp_path / "m.onnx"
    path.write_bytes(export_network(materialize(arch, spec), arch.resolution))
    imported = spec_from_onnx(path)
    hw_a, hw_b = spec.input_hw(arch.resolution), imported.input_hw(arch.resolution)
    ours = sorted((signature_of(l).key, hw_a[l.name], spec.channels(arch.widths, l)) for l in spec.layers)
    theirs = sorted((signature_of(l).key, hw_b[l.name], imported.channels(imported.groups, l)) for l in imported.layers)
    assert ours == theirs


def test_corrupt_and_non_cnn_onnx_files_get_a_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"this is not protobuf at all \x00\xff")
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        spec_from_onnx(tmp_path / "bad.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    mlp = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "mlp", [x], [y]))
    onnx.save(mlp, tmp_path / "mlp.onnx")
    with pytest.raises(OnnxModelError, match="not a CNN"):
        spec_from_onnx(tmp_path / "mlp.onnx")
    with pytest.raises(OnnxModelError, match="does not exist"):
        spec_from_onnx(tmp_path / "missing.onnx")


@pytest.mark.parametrize("location, message", [("missing-weights.bin", "which is missing"),
                                               ("../../etc/passwd", "outside the model's folder"),
                                               ("../outside/weights.bin", "outside the model's folder"),
                                               ("/nonexistent/weights.bin", "outside the model's folder")])
def test_external_data_outside_the_folder_is_not_followed_and_missing_data_is_named(tmp_path, location, message):
    """Weights are read (pruned variants slice them), but only from files next to the model: a path outside its
    folder is refused without being opened, a missing file is named with what to do."""
    spec = get_model("resnet56")
    arch = random_architectures(spec, 1, seed=2)[0]
    model = onnx.load_from_string(export_network(materialize(arch, spec), arch.resolution))
    external = 0
    for t in model.graph.initializer:
        if t.raw_data or t.float_data:
            external_data_helper.set_external_data(t, location, offset=0, length=max(len(t.raw_data), 4))
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            external += 1
    assert external > 0
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxModelError, match=f"keeps its data in .*{message}"):
        spec_from_onnx(path)


def _pad_conv(tmp_path, pads=(0, 1), mode="constant", value=None, second_reader=False, name="m.onnx"):
    """x (1×8×16×16) → Pad(before, after) → Conv 3×3 stride 2 (no padding of its own) [→ a Relu of the pad too]."""
    import numpy as np
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, pads[0], pads[0], 0, 0, pads[1], pads[1]], np.int64), "p")]
    pad_inputs = ["x", "p"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "v"))
        pad_inputs.append("v")
    nodes = [helper.make_node("Pad", pad_inputs, ["xp"], name="pad", mode=mode),
             helper.make_node("Conv", ["xp", "w"], ["c"], name="conv", strides=[2, 2])]
    outputs = ["c"]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["xp"], ["r"], name="relu"))
        outputs.append("r")
    graph = helper.make_graph(nodes, "padconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_zero_pad_before_a_conv_is_fused_into_the_conv_as_the_runtimes_run_it(tmp_path):
    """TF 'SAME' exports write Pad(0, 1) + Conv(VALID): onnxruntime and XNNPACK fold the pad into the conv, so it is
    one conv kernel with the symmetric padding that gives the same output (8×8), not a pad kernel of its own."""
    spec = spec_from_onnx(_pad_conv(tmp_path))
    [conv] = spec.layers
    assert (conv.kind, conv.padding, conv.stride) == ("conv", 1, 2)
    assert spec.input_hw(16)[conv.name] == 16 and conv.output_hw(16) == 8
    # A pad the conv cannot absorb stays a kernel of its own: reflect, non-zero, or read by another node too.
    for kwargs in ({"mode": "reflect"}, {"value": 1.0}, {"second_reader": True}):
        spec = spec_from_onnx(_pad_conv(tmp_path, name="other.onnx", **kwargs))
        assert any(layer.op.startswith("pad-0-1") for layer in spec.layers), kwargs
