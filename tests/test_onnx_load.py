"""latbench.models.onnx_load: users' ONNX files become static, folded float32 inference graphs, and every
file latbench cannot use is refused with an OnnxModelError that says why."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from latbench.models.onnx_load import OnnxModelError, load_user_onnx
from latbench.models.onnx_graph import OnnxModelError as GraphError
from realworld_models import REALWORLD, realworld_onnx  # noqa: F401  (a fixture)

RNG = np.random.default_rng(0)
FLOAT = TensorProto.FLOAT


def _init(name, shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array)))


def _model(nodes, inits, in_shape=(1, 3, 8, 8), out_shape=None, opset=17, in_type=FLOAT, out="y"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, list(in_shape))],
                              [helper.make_tensor_value_info(out, FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _save(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _run(model_or_path, x):
    src = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else model_or_path.SerializeToString()
    session = ort.InferenceSession(str(src) if isinstance(src, os.PathLike) else src,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _same_outputs(path, loaded, shape=(1, 3, 8, 8)):
    x = RNG.standard_normal(shape).astype(np.float32)
    for a, b in zip(_run(path, x), _run(loaded, x)):
        np.testing.assert_array_equal(a, b)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _assert_weights_direct(model):
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul", "BatchNormalization"):
            assert all(i in inits for i in node.input[1:] if i), (node.name, list(node.input))


def _assert_static(model):
    """value_info (or the graph outputs) give a static shape for every node output."""
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    for node in model.graph.node:
        for out in node.output:
            dims = known[out].type.tensor_type.shape.dim
            assert dims and all(d.HasField("dim_value") for d in dims), out


def test_error_class_is_onnx_graphs():
    assert OnnxModelError is GraphError and issubclass(OnnxModelError, ValueError)


def test_identity_chains_to_initializers_become_direct_weights(tmp_path):
    """As torch's exporter writes de-duplicated equal weights: two convs reach one initializer through
    Identity chains; afterwards each conv reads its own initializer."""
    w, b = _init("w", (3, 3, 3, 3)), _init("b", (3,))
    nodes = [helper.make_node("Identity", ["w"], ["w1"]), helper.make_node("Identity", ["w1"], ["w2"]),
             helper.make_node("Identity", ["w"], ["w3"]), helper.make_node("Identity", ["b"], ["b1"]),
             helper.make_node("Conv", ["x", "w2", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w3", "b"], ["y"], pads=[1, 1, 1, 1])]
    path = _save(_model(nodes, [w, b]), tmp_path)
    loaded = load_user_onnx(path)
    assert _ops(loaded) == ["Conv", "Relu", "Conv"]
    _assert_weights_direct(loaded)
    first, second = (n for n in loaded.graph.node if n.op_type == "Conv")
    assert first.input[1] != second.input[1]            # each conv owns its weight
    assert {t.name for t in loaded.graph.initializer} == {*first.input[1:], *second.input[1:]}   # no unused ones
    _assert_static(loaded)
    _same_outputs(path, loaded)


def test_constant_nodes_become_initializers(tmp_path):
    nodes = [_const("w", RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             helper.make_node("Constant", [], ["lo"], value_float=0.0),
             _const("hi", np.array(6.0, dtype=np.float32)),
             helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("Clip", ["h", "lo", "hi"], ["y"])]
    path = _save(_model(nodes, []), tmp_path)
    loaded = load_user_onnx(path)
    assert _ops(loaded) == ["Conv", "Clip"]
    assert {t.name for t in loaded.graph.initializer} == {"w", "lo", "hi"}
    _assert_weights_direct(loaded)
    _same_outputs(path, loaded)


def _flatten_chain_model(batch="N"):
    """Conv → flatten as torch writes x.view(x.size(0), -1): Shape→Gather→Unsqueeze→Concat→Reshape → Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["h"], ["s"]),
             _const("zero", np.array(0, dtype=np.int64)),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             _const("axes", np.array([0], dtype=np.int64)),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             _const("minus1", np.array([-1], dtype=np.int64)),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["h", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], transB=1)]
    return _model(nodes, [_init("w", (2, 3, 3, 3)), _init("fc", (5, 2 * 8 * 8)), _init("fcb", (5,))],
                  in_shape=(batch, 3, 8, 8), out_shape=[batch, 5])


def test_shape_chain_flatten_folds_to_a_constant_reshape(tmp_path):
    path = _save(_flatten_chain_model(), tmp_path)
    loaded = load_user_onnx(path)
    assert _ops(loaded) == ["Conv", "Reshape", "Gemm"]
    reshape = loaded.graph.node[1]
    shape = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}[reshape.input[1]]
    assert shape.tolist() == [1, -1]
    _assert_weights_direct(loaded)
    _assert_static(loaded)
    _same_outputs(path, loaded)


def test_symbolic_batch_becomes_one(tmp_path):
    path = _save(_flatten_chain_model(batch="batch_size"), tmp_path)
    loaded = load_user_onnx(path)
    dims = [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 8, 8]
    assert [d.dim_value for d in loaded.graph.output[0].type.tensor_type.shape.dim] == [1, 5]
    assert loaded.graph.output[0].name == "y"


def _dynamic_hw_model():
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["h"], ["y"])]
    return _model(nodes, [_init("w", (4, 3, 3, 3))], in_shape=("N", 3, "H", "W"))


def test_symbolic_hw_without_input_shape_is_refused(tmp_path):
    path = _save(_dynamic_hw_model(), tmp_path)
    with pytest.raises(OnnxModelError, match=r"'x'.*symbolic.*--input-shape 1,3,224,224") as err:
        load_user_onnx(path)
    assert str(path) in str(err.value)


def test_symbolic_hw_with_input_shape(tmp_path):
    path = _save(_dynamic_hw_model(), tmp_path)
    loaded = load_user_onnx(path, input_shape=(1, 3, 32, 24))
    assert [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 24]
    _assert_static(loaded)
    out = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in loaded.graph.value_info}
    assert out["h"] == [1, 4, 16, 12]
    _same_outputs(path, loaded, shape=(1, 3, 32, 24))


def test_input_shape_must_match_fixed_dims(tmp_path):
    path = _save(_dynamic_hw_model(), tmp_path)
    with pytest.raises(OnnxModelError, match=r"does not match.*axis 1 is fixed to 3"):
        load_user_onnx(path, input_shape=(1, 1, 32, 32))
    with pytest.raises(OnnxModelError, match="4 positive integers"):
        load_user_onnx(path, input_shape=(3, 32, 32))


def test_input_must_be_a_float_image(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=FLOAT)]
    path = _save(_model(nodes, [], in_type=TensorProto.UINT8), tmp_path)
    with pytest.raises(OnnxModelError, match="'x' is UINT8, not FLOAT"):
        load_user_onnx(path)
    path = _save(_model([helper.make_node("Relu", ["x"], ["y"])], [], in_shape=(1, 16)), tmp_path, "flat.onnx")
    with pytest.raises(OnnxModelError, match="not an image tensor"):
        load_user_onnx(path)


def test_quantized_graph_is_refused(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant_in"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
             numpy_helper.from_array(np.array(0, dtype=np.uint8), "z")]
    path = _save(_model(nodes, inits), tmp_path)
    with pytest.raises(OnnxModelError, match=r"'quant_in' is a QuantizeLinear.*quantized models are not supported"
                                             r".*export the float model"):
        load_user_onnx(path)


def _conv_model():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, [_init("w", (8, 3, 3, 3)), _init("b", (8,))])


def test_external_data_next_to_the_model(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(_conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_user_onnx(path)
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    _same_outputs(path, loaded)


def test_missing_external_data_names_tensor_and_file(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(_conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(OnnxModelError, match=r"tensor 'w'.*'ext.onnx.data', which is missing.*copy the .data file "
                                             r"next to the model"):
        load_user_onnx(path)


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "ext.onnx"
    onnx.save_model(_conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    os.replace(tmp_path / "model" / "ext.onnx.data", tmp_path / "ext.onnx.data")
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../ext.onnx.data"
    onnx.save(model, str(path))
    with pytest.raises(OnnxModelError, match="outside the model's folder"):
        load_user_onnx(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(OnnxModelError, match="nope.onnx does not exist"):
        load_user_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf \xff\xff\xff")
    with pytest.raises(OnnxModelError, match="bad.onnx is not"):
        load_user_onnx(bad)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(_conv_model().SerializeToString()[:50])
    with pytest.raises(OnnxModelError, match="cut.onnx"):
        load_user_onnx(truncated)


def test_node_names_unique_and_non_empty(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Relu", ["r"], ["r2"], name="act"),
             helper.make_node("Sigmoid", ["r2"], ["y"])]
    path = _save(_model(nodes, [_init("w", (3, 3, 3, 3))]), tmp_path)
    names = [n.name for n in load_user_onnx(path).graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names[0] == "Conv_0" and names[1] == "act" and names[3] == "Sigmoid_3"


def test_identity_and_dropout_on_activations_removed_output_name_kept(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["h"], ["h1"]),
             helper.make_node("Dropout", ["h1"], ["d"], name="drop"),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    path = _save(_model(nodes, [_init("w", (3, 3, 3, 3))]), tmp_path)
    loaded = load_user_onnx(path)
    assert _ops(loaded) == ["Conv", "Relu"]
    assert loaded.graph.node[1].output[0] == "y" and loaded.graph.output[0].name == "y"
    assert list(loaded.graph.node[1].input) == list(loaded.graph.node[0].output)
    _same_outputs(path, loaded)


@pytest.mark.slow
def test_timm_resnet34_weights_are_initializers(realworld_onnx):
    """torch's exporter de-duplicates ResNet-34's equal initializers and reaches them through Identity nodes."""
    path = realworld_onnx("resnet34")
    raw = onnx.load(str(path))
    assert "Identity" in _ops(raw)
    loaded = load_user_onnx(path)
    assert "Identity" not in _ops(loaded)
    inits = {t.name for t in loaded.graph.initializer}
    convs = [n for n in loaded.graph.node if n.op_type == "Conv"]
    assert len(convs) == 36 and all(n.input[1] in inits for n in convs)
    _assert_weights_direct(loaded)
    _assert_static(loaded)
    _same_outputs(path, loaded, shape=(1, 3, 224, 224))


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(REALWORLD))
def test_timm_models_load_normalised(realworld_onnx, family):
    """Every real-world export loads into the normalised form and computes what the export computes."""
    path = realworld_onnx(family)
    loaded = load_user_onnx(path)
    ops = set(_ops(loaded))
    assert not ops & {"Identity", "Constant", "Shape", "Dropout"}, ops
    _assert_weights_direct(loaded)
    _assert_static(loaded)
    _same_outputs(path, loaded, shape=(1, 3, 224, 224))
