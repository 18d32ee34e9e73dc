"""ONNX → TFLite conversion: LiteRT (XNNPACK) outputs equal onnxruntime's on small CNN graphs."""
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from latbench.export.onnx_tflite import OnnxToTFLiteError, onnx_to_tflite

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter (dynamo=False)

OP_NAMES = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}


# -------------------------------------------------------------------------------------------- helpers


def _randomize(module: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters so that folding BN is really tested; eval mode."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return module.eval()


def _export(module: nn.Module, shape=(1, 8, 12, 12), seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    module = _randomize(module)
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"])
    return buf.getvalue()


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _ops(model: bytes) -> list[str]:
    unpacked = tfl.ModelT.InitFromPackedBuf(model, 0)
    codes = [code.builtinCode for code in unpacked.operatorCodes]
    return [OP_NAMES[codes[op.opcodeIndex]] for op in unpacked.subgraphs[0].operators]


def _check(model: bytes | onnx.ModelProto, seed: int = 0) -> list[str]:
    """Convert, run both, compare every output (TFLite's 4-D NHWC transposed back); the TFLite op list."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
    expected = sess.run(None, feeds)
    converted = onnx_to_tflite(model)
    it = Interpreter(model_content=converted, num_threads=1)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.ascontiguousarray(_nhwc(feeds[d["name"]])))
    it.invoke()
    outputs = {d["name"]: _nchw(it.get_tensor(d["index"])) for d in it.get_output_details()}
    for o, want in zip(sess.get_outputs(), expected):
        got = outputs[o.name]
        assert got.shape == want.shape, o.name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    return _ops(converted)


def _graph(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _rand(*shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def conv_bn(cin, cout, k=3, s=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


# ------------------------------------------------------------------------------------ conv + activations


@pytest.mark.parametrize("act, fused", [
    (nn.ReLU(), True), (nn.ReLU6(), True), (nn.Hardtanh(-1.0, 1.0), True), (nn.Hardswish(), False),
    (nn.SiLU(), False), (nn.GELU(), False), (nn.GELU(approximate="tanh"), False), (nn.LeakyReLU(0.1), False),
    (nn.PReLU(16), False), (nn.PReLU(), False), (nn.ELU(), False), (nn.Sigmoid(), False), (nn.Tanh(), False),
    (nn.Hardsigmoid(), False), (nn.Hardtanh(-0.5, 2.0), False)])
def test_conv_bn_activation(act, fused):
    ops = _check(_export(conv_bn(8, 16, act=act)))
    assert ops[:2] == ["PAD", "CONV_2D"]  # BN folded into the conv
    assert (len(ops) == 2) == fused, ops


def test_erf_gelu_becomes_one_gelu():
    ops = _check(_export(nn.Sequential(nn.Conv2d(8, 8, 1), nn.GELU())))
    assert ops == ["CONV_2D", "GELU"]


@pytest.mark.parametrize("groups, cout", [(8, 8), (8, 16), (2, 16), (4, 8)])
def test_depthwise_and_grouped_conv(groups, cout):
    ops = _check(_export(nn.Sequential(conv_bn(8, cout, 3, 2, groups, nn.ReLU()))))
    assert ops[-1] == ("DEPTHWISE_CONV_2D" if groups == 8 else "CONV_2D")


def test_asymmetric_pads_strides_and_bias():
    w, b = _rand(6, 3, 3, 3), _rand(6)
    model = _graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 1, 2], strides=[2, 2]),
                    helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                   [("x", [1, 3, 9, 10])], ["y"],
                   [("w", w), ("b", b), ("lo", np.array(-1, np.float32)), ("hi", np.array(1, np.float32))])
    assert _check(model) == ["PAD", "CONV_2D"]


def test_same_upper_auto_pad_and_standalone_batch_norm():
    c = 4
    bn = [("s", _rand(c) + 2), ("bb", _rand(c)), ("m", _rand(c)), ("v", np.abs(_rand(c)) + 0.5)]
    model = _graph([helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
                    helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("BatchNormalization", ["r", "s", "bb", "m", "v"], ["y"])],
                   [("x", [1, 3, 8, 8])], ["y"], [("w", _rand(c, 3, 3, 3))] + bn)
    assert _check(model) == ["PAD", "CONV_2D", "MUL", "ADD"]


def test_dilated_conv_is_a_clear_error():
    model = _graph([helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 2], name="dilated")],
                   [("x", [1, 3, 8, 8])], ["y"], [("w", _rand(4, 3, 3, 3))])
    with pytest.raises(OnnxToTFLiteError, match=r"'dilated' \(Conv.*dilations"):
        onnx_to_tflite(model)


# ---------------------------------------------------------------------------------------- blocks


class SqueezeExcite(nn.Module):
    def __init__(self, c, gate):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1), gate

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


@pytest.mark.parametrize("gate", [nn.Hardsigmoid(), nn.Sigmoid()])
def test_squeeze_excitation(gate):
    ops = _check(_export(nn.Sequential(conv_bn(8, 16, act=nn.ReLU()), SqueezeExcite(16, gate))))
    assert "MEAN" in ops and "TRANSPOSE" not in ops


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(8, 6, 1, act=nn.ReLU()), conv_bn(8, 10, 3, act=nn.ReLU6())

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        left, right = torch.split(y, [4, 12], dim=1)
        return torch.cat([right[:, 2:9], left * 2.0, y[:, -3:]], dim=1)


def test_concat_split_slice():
    ops = _check(_export(Branches()))
    assert {"CONCATENATION", "SPLIT_V", "STRIDED_SLICE"} <= set(ops) and "TRANSPOSE" not in ops


class Chunk(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([b, a], 1)


def test_chunk():
    assert "TRANSPOSE" not in _check(_export(Chunk()))  # torch writes two Slices


class Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups, self.conv = groups, nn.Conv2d(12, 12, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.conv(x)


@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle(groups):
    ops = _check(_export(Shuffle(groups), (1, 12, 5, 6)))
    assert ops.count("TRANSPOSE") == 1, ops


class Resize(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs)


@pytest.mark.parametrize("kwargs, op", [
    (dict(scale_factor=2, mode="nearest"), "RESIZE_NEAREST_NEIGHBOR"),
    (dict(size=(20, 30), mode="nearest"), "RESIZE_NEAREST_NEIGHBOR"),
    (dict(scale_factor=2, mode="bilinear"), "RESIZE_BILINEAR"),
    (dict(size=(17, 9), mode="bilinear"), "RESIZE_BILINEAR"),
    (dict(scale_factor=2, mode="bilinear", align_corners=True), "RESIZE_BILINEAR")])
def test_resize(kwargs, op):
    assert _check(_export(Resize(**kwargs), (1, 3, 7, 10))) == [op]


def test_resize_nearest_matched_by_sampling():
    """half_pixel + round_prefer_floor at scale ½ samples like TFLite's plain (asymmetric) nearest."""
    model = _graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                     coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor")],
                   [("x", [1, 2, 8, 6])], ["y"], [("scales", np.array([1, 1, 0.5, 0.5], np.float32))])
    assert _check(model) == ["RESIZE_NEAREST_NEIGHBOR"]


def test_resize_with_unmatched_coordinates_is_a_clear_error():
    model = _graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", name="rs",
                                     coordinate_transformation_mode="asymmetric", nearest_mode="ceil")],
                   [("x", [1, 2, 4, 4])], ["y"], [("scales", np.array([1, 1, 2, 2], np.float32))])
    with pytest.raises(OnnxToTFLiteError, match=r"'rs' \(Resize.*matches no TFLite"):
        onnx_to_tflite(model)


@pytest.mark.parametrize("pool, ops", [
    (nn.MaxPool2d(3, 2, 1), ["PADV2", "MAX_POOL_2D"]),
    (nn.MaxPool2d(2), ["MAX_POOL_2D"]),
    (nn.AvgPool2d(2), ["AVERAGE_POOL_2D"]),
    (nn.AvgPool2d(3, 2, 1), ["PAD", "AVERAGE_POOL_2D"]),  # count_include_pad=True
    (nn.AvgPool2d(3, 1, 1, count_include_pad=False), ["AVERAGE_POOL_2D"]),  # TFLite SAME
    (nn.AvgPool2d(3, 2, 1, count_include_pad=False), ["PAD", "AVERAGE_POOL_2D", "MUL"]),  # SAME differs
    (nn.AdaptiveMaxPool2d(1), ["MAX_POOL_2D"]),  # torch writes a MaxPool over the whole map
])
def test_pools(pool, ops):
    assert _check(_export(pool, (1, 4, 10, 10))) == ops


def test_global_pools_and_reduce_mean():
    model = _graph([helper.make_node("GlobalMaxPool", ["x"], ["a"]),
                    helper.make_node("ReduceMean", ["x"], ["b"], axes=[2, 3], keepdims=1),
                    helper.make_node("ReduceMean", ["x"], ["c"], axes=[-1, -2], keepdims=0),
                    helper.make_node("GlobalAveragePool", ["x"], ["d"]),
                    helper.make_node("Add", ["a", "b"], ["y"])],
                   [("x", [1, 5, 6, 7])], ["y", "c", "d"])
    assert _check(model).count("MEAN") == 3


class FlattenLinear(nn.Module):
    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled
        self.fc = nn.Linear(8 if pooled else 8 * 3 * 4, 5)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, 1) if self.pooled else x
        return F.softmax(self.fc(torch.flatten(x, 1)), dim=1)


@pytest.mark.parametrize("pooled", [True, False])
def test_flatten_linear_softmax(pooled):
    ops = _check(_export(FlattenLinear(pooled), (1, 8, 3, 4)))
    assert ops == (["MEAN", "FULLY_CONNECTED", "SOFTMAX"] if pooled
                   else ["TRANSPOSE", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"])


def test_gemm_matmul_squeeze_unsqueeze():
    model = _graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                    helper.make_node("Squeeze", ["p", "axes"], ["s"]),
                    helper.make_node("Gemm", ["s", "w", "b"], ["g"], transB=0, alpha=0.5, beta=2.0),
                    helper.make_node("Relu", ["g"], ["r"]),
                    helper.make_node("MatMul", ["r", "m"], ["mm"]),
                    helper.make_node("Unsqueeze", ["mm", "axes"], ["u"]),
                    helper.make_node("Mul", ["x", "u"], ["y"])],
                   [("x", [1, 6, 4, 4])], ["y"],
                   [("axes", np.array([2, 3])), ("w", _rand(6, 7)), ("b", _rand(7)), ("m", _rand(7, 6))])
    assert "TRANSPOSE" not in _check(model)


def test_pad_transpose_reshape_and_dropout():
    model = _graph([helper.make_node("Pad", ["x", "pads", "val"], ["p"]),
                    helper.make_node("Pad", ["p", "pads2"], ["q"], mode="reflect"),
                    helper.make_node("Dropout", ["q"], ["d"]),
                    helper.make_node("Identity", ["d"], ["i"]),
                    helper.make_node("Transpose", ["i"], ["t"], perm=[0, 3, 1, 2]),
                    helper.make_node("Reshape", ["t", "shape"], ["y"])],
                   [("x", [1, 3, 4, 5])], ["y"],
                   [("pads", np.array([0, 0, 1, 2, 0, 0, 3, 0])), ("val", np.array(1.5, np.float32)),
                    ("pads2", np.array([0, 0, 1, 1, 0, 0, 1, 1])), ("shape", np.array([1, -1, 6]))])
    _check(model)


def test_broadcasting_constants_and_layouts():
    """Constants of every rank, a lower-rank activation, a constant in a concat, softmax over channels,
    MatMul over W, a pool with asymmetric pads and non-square kernel, and a transposed 4-D output."""
    c = 4
    model = _graph([helper.make_node("Sub", ["one", "x"], ["a"]),  # constant first
                    helper.make_node("Div", ["a", "per_w"], ["b"]),  # [W] broadcasts along W
                    helper.make_node("Mul", ["b", "per_c"], ["d"]),  # [C, 1, 1]
                    helper.make_node("Add", ["d", "z"], ["e"]),  # a rank-3 activation
                    helper.make_node("Concat", ["e", "k"], ["f"], axis=1),
                    helper.make_node("Softmax", ["f"], ["g"], axis=1),
                    helper.make_node("MaxPool", ["g"], ["h"], kernel_shape=[2, 3], pads=[0, 1, 1, 0], strides=[1, 2]),
                    helper.make_node("MatMul", ["h", "m"], ["i"]),
                    helper.make_node("Transpose", ["i"], ["y"], perm=[0, 1, 3, 2])],
                   [("x", [1, c, 5, 6]), ("z", [c, 1, 6])], ["y"],
                   [("one", np.array(1.0, np.float32)), ("per_w", np.abs(_rand(6)) + 1), ("per_c", _rand(c, 1, 1)),
                    ("k", _rand(1, 2, 5, 6)), ("m", _rand(3, 7))])
    _check(model)


def test_older_and_newer_opsets():
    old = _graph([helper.make_node("Upsample", ["x", "scales"], ["u"], mode="nearest"),
                  helper.make_node("Split", ["u"], ["s0", "s1"], axis=1, split=[1, 3]),
                  helper.make_node("Clip", ["s1"], ["c"], min=0.0, max=6.0),
                  helper.make_node("ReduceMean", ["c"], ["r"], axes=[1], keepdims=1),
                  helper.make_node("Mul", ["s0", "r"], ["y"])],
                 [("x", [1, 4, 3, 3])], ["y"], [("scales", np.array([1, 1, 2, 2], np.float32))], opset=9)
    _check(old)
    new = _graph([helper.make_node("Split", ["x"], ["s0", "s1"], axis=1, num_outputs=2),
                  helper.make_node("ReduceMean", ["s0", "axes"], ["r"], keepdims=0),
                  helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
                  helper.make_node("Add", ["s1", "u"], ["y"])],
                 [("x", [1, 4, 3, 3])], ["y"], [("axes", np.array([2, 3]))], opset=18)
    _check(new)


class ResidualBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(8, 8, act=nn.ReLU()), conv_bn(8, 8)

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + x)


def test_residual_add_fuses_relu():
    ops = _check(_export(ResidualBlock()))
    assert ops == ["PAD", "CONV_2D", "PAD", "CONV_2D", "ADD"]


class MobileNetV3Block(nn.Module):
    def __init__(self, c=16, e=48):
        super().__init__()
        self.expand = conv_bn(c, e, 1, act=nn.Hardswish())
        self.dw = conv_bn(e, e, 5, 1, e, nn.Hardswish())
        self.se = SqueezeExcite(e, nn.Hardsigmoid())
        self.project = conv_bn(e, c, 1)

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class GhostModule(nn.Module):
    def __init__(self, cin=16, cout=24):
        super().__init__()
        self.cout, init = cout, -(-cout // 2)
        self.primary = conv_bn(cin, init, 1, act=nn.ReLU())
        self.cheap = conv_bn(init, init, 3, 1, init, nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        self.g1, self.dw = GhostModule(16, 32), conv_bn(32, 32, 3, 2, 32)
        self.se, self.g2 = SqueezeExcite(32, nn.Hardsigmoid()), GhostModule(32, 16)
        self.shortcut = nn.Sequential(conv_bn(16, 16, 3, 2, 16), conv_bn(16, 16, 1))

    def forward(self, x):
        return self.g2(self.se(self.dw(self.g1(x)))) + self.shortcut(x)


@pytest.mark.parametrize("block", [MobileNetV3Block, GhostBottleneck])
def test_mobile_blocks(block):
    ops = _check(_export(block(), (1, 16, 16, 16)))
    assert "TRANSPOSE" not in ops


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("node, inputs, init", [
    (helper.make_node("Erf", ["x"], ["y"], name="lonely_erf"), [("x", [1, 2, 3, 3])], []),
    (helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4, name="rnn"), [("x", [5, 1, 3])],
     [("W", _rand(1, 16, 3)), ("R", _rand(1, 16, 4))]),
    (helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv"),
     [("x", [1, 2, 3, 3])], [("s", np.float32(1)), ("z", np.uint8(0)), ("w", np.ones((2, 2, 1, 1), np.uint8))]),
])
def test_unsupported_op_names_the_node(node, inputs, init):
    model = _graph([node], inputs, ["y"], init)
    with pytest.raises(OnnxToTFLiteError, match=rf"'{node.name}' \({node.op_type}"):
        onnx_to_tflite(model)


def test_native_gelu_op():
    model = _graph([helper.make_node("Gelu", ["x"], ["a"]), helper.make_node("Gelu", ["a"], ["y"], approximate="tanh")],
                   [("x", [1, 3, 4, 4])], ["y"], opset=20)
    assert _check(model) == ["GELU", "GELU"]


def test_conv1d_and_dynamic_shapes_are_clear_errors():
    conv1d = _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c1d")], [("x", [1, 3, 8])], ["y"],
                    [("w", _rand(4, 3, 3))])
    with pytest.raises(OnnxToTFLiteError, match=r"'c1d' \(Conv.*rank-4"):
        onnx_to_tflite(conv1d)
    dynamic = _graph([helper.make_node("Relu", ["x"], ["y"])], [("x", ["batch", 3, 4, 4])], ["y"])
    with pytest.raises(OnnxToTFLiteError, match="static shapes"):
        onnx_to_tflite(dynamic.SerializeToString())
