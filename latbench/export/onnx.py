"""ONNX export: whole networks through torch's exporter, single layer variants built directly.

A layer variant is written as the block the runtime executes — conv with BN folded into weight and
bias, the residual add, the activation — so that runtime fusion is inside the measurement. Building
the graph with ``onnx.helper`` takes about a millisecond, against ~35 ms for a torch export.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from ..layers import LayerPoint, LayerSignature

OPSET = 17


class ExportError(ValueError):
    """A model or layer that cannot be exported."""


def export_network(net: torch.nn.Module, resolution: int, in_channels: int = 3) -> bytes:
    """Serialise ``net`` (in eval mode) for a 1×C×R×R input; returns the ONNX bytes."""
    net = net.eval()
    dummy = torch.zeros(1, in_channels, resolution, resolution)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (dummy,), buf, input_names=["input"], output_names=["output"], opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    return buf.getvalue()


def random_layer_weights(sig: LayerSignature, point: LayerPoint, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Folded (weight, bias) for a variant: random values, the smallest magnitudes zeroed to the sparsity."""
    rng = np.random.default_rng(seed)
    cin, cout = point.in_channels, point.out_channels
    if sig.kind == "linear":
        w = rng.standard_normal((cout, cin)).astype(np.float32) / np.sqrt(cin)
    else:
        per_group_in = 1 if sig.kind == "depthwise" else cin // sig.groups
        w = rng.standard_normal((cout, per_group_in, sig.kernel, sig.kernel)).astype(np.float32)
        w /= np.sqrt(per_group_in * sig.kernel * sig.kernel)
    k = int(round(point.sparsity * w.size))
    if k:
        flat = w.reshape(-1)
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0.0
    return w.astype(np.float32), (0.1 * rng.standard_normal(cout)).astype(np.float32)


def _const(name: str, value, dtype=np.float32):
    """An initializer ``name`` holding ``value`` (float32 unless ``dtype`` says otherwise)."""
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _act_nodes(act: str, x: str, y: str, channels: int, rng: np.random.Generator) -> tuple[list, list]:
    """(nodes, initializers) computing ``y = act(x)`` the way torch's exporter writes each activation."""
    if act == "none":
        return [helper.make_node("Identity", [x], [y])], []
    if act == "relu6":
        return [helper.make_node("Clip", [x, f"{y}_lo", f"{y}_hi"], [y])], [_const(f"{y}_lo", 0.0), _const(f"{y}_hi", 6.0)]
    simple = {"relu": "Relu", "hswish": "HardSwish", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if act in simple:
        return [helper.make_node(simple[act], [x], [y])], []
    if act == "hsigmoid":
        return [helper.make_node("HardSigmoid", [x], [y], alpha=1.0 / 6.0, beta=0.5)], []
    if act == "leakyrelu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=0.01)], []
    if act == "prelu":
        slope = _const(f"{y}_slope", 0.25 + 0.01 * rng.standard_normal((channels, 1, 1)))
        return [helper.make_node("PRelu", [x, slope.name], [y])], [slope]
    if act == "silu":
        return [helper.make_node("Sigmoid", [x], [f"{y}_s"]), helper.make_node("Mul", [x, f"{y}_s"], [y])], []
    if act == "gelu":   # x · 0.5 · (1 + erf(x / √2)), as torch writes GELU below opset 20
        nodes = [helper.make_node("Div", [x, f"{y}_r2"], [f"{y}_d"]), helper.make_node("Erf", [f"{y}_d"], [f"{y}_e"]),
                 helper.make_node("Add", [f"{y}_e", f"{y}_one"], [f"{y}_a"]),
                 helper.make_node("Mul", [x, f"{y}_a"], [f"{y}_m"]), helper.make_node("Mul", [f"{y}_m", f"{y}_half"], [y])]
        return nodes, [_const(f"{y}_r2", np.sqrt(2.0)), _const(f"{y}_one", 1.0), _const(f"{y}_half", 0.5)]
    raise ExportError(f"no ONNX form for activation {act!r}")


def _op_kernel(sig: LayerSignature, point: LayerPoint, rng: np.random.Generator) -> tuple[list, list, list, list]:
    """(inputs, nodes, initializers, output shape) of an "op" kernel of an imported network."""
    c, hw = point.in_channels, point.input_hw
    name, *params = sig.op.split("-")
    shape = [1, c, hw, hw]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    inputs, nodes, inits = [x], [], []
    act = params[-1] if params and params[-1] in ACTIVATION_NAMES else "none"
    out_shape, y = list(shape), "pre"
    base = name.rstrip("0123456789")
    count = int(name[len(base):]) if name[len(base):] else 0
    if base == "bn":
        inits += [_const("scale", 1 + 0.1 * rng.standard_normal(c)), _const("bias", 0.1 * rng.standard_normal(c)),
                  _const("mean", 0.1 * rng.standard_normal(c)), _const("var", 1 + 0.1 * rng.random(c))]
        nodes.append(helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], [y]))
    elif base in ("add", "sub", "mul", "div", "max", "min"):
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node(base.capitalize(), ["x", "r"], [y]))
    elif base == "mulbc":
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, c, 1, 1]))
        nodes.append(helper.make_node("Mul", ["x", "r"], [y]))
    elif base in ("addc", "subc", "mulc", "divc", "maxc", "minc"):
        inits.append(_const("k", 1.5))
        nodes.append(helper.make_node(base[:-1].capitalize(), ["x", "k"], [y]))
    elif base == "concat":
        widths = [c // count + (i < c % count) for i in range(count)]
        inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, w, hw, hw]) for i, w in enumerate(widths)]
        nodes.append(helper.make_node("Concat", [i.name for i in inputs], [y], axis=1))
    elif base == "split":
        widths = [c // count + (i < c % count) for i in range(count)]
        inits.append(_const("sizes", widths, np.int64))
        outs = [f"part{i}" for i in range(count)]
        nodes.append(helper.make_node("Split", ["x", "sizes"], outs, axis=1))
        return inputs, nodes, inits, [(outs[i], [1, w, hw, hw]) for i, w in enumerate(widths)]
    elif base == "slice":
        kept = max(1, int(round(c * int(params[0][1:]) / 100)))
        inits += [_const("starts", [0], np.int64), _const("ends", [kept], np.int64), _const("axes", [1], np.int64)]
        nodes.append(helper.make_node("Slice", ["x", "starts", "ends", "axes"], [y]))
        out_shape = [1, kept, hw, hw]
    elif base == "shuffle":
        if c % count:
            raise ExportError(f"{sig.key}: {c} channels do not split into {count} shuffle groups")
        inits += [_const("s5", [1, count, c // count, hw, hw], np.int64), _const("s4", shape, np.int64)]
        nodes += [helper.make_node("Reshape", ["x", "s5"], ["r5"]),
                  helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", ["t5", "s4"], [y])]
    elif base == "flatten":
        nodes.append(helper.make_node("Flatten", ["x"], [y], axis=1))
        out_shape = [1, c * hw * hw]
    elif base == "reshape":
        inits.append(_const("s3", [1, c, hw * hw], np.int64))
        nodes.append(helper.make_node("Reshape", ["x", "s3"], [y]))
        out_shape = [1, c, hw * hw]
    elif base == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ["x"], [y]))
        out_shape = [1, c, 1, 1]
    elif base == "resize":
        mode, factor = params[0], float(params[1][1:])
        inits.append(_const("scales", [1, 1, factor, factor]))
        extra = ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} if mode == "nearest"
                 else {"coordinate_transformation_mode": "pytorch_half_pixel"})
        nodes.append(helper.make_node("Resize", ["x", "", "scales"], [y], mode=mode, **extra))
        out_shape = [1, c, int(hw * factor), int(hw * factor)]
    elif base == "pad":
        before, after = int(params[0]), int(params[1])
        inits.append(_const("pads", [0, 0, before, before, 0, 0, after, after], np.int64))
        nodes.append(helper.make_node("Pad", ["x", "pads"], [y], mode="constant"))
        out_shape = [1, c, hw + before + after, hw + before + after]
    elif base == "softmax":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c])]
        nodes.append(helper.make_node("Softmax", ["x"], [y], axis=1))
        out_shape = [1, c]
    elif base == "act":
        act = params[0]
        nodes.append(helper.make_node("Identity", ["x"], [y]))
    else:
        raise ExportError(f"{sig.key}: no kernel builder for op {sig.op!r}")
    more, more_inits = _act_nodes(act, y, "y", out_shape[1], rng)
    return inputs, nodes + more, inits + more_inits, [("y", out_shape)]


ACTIVATION_NAMES = ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "gelu", "leakyrelu", "prelu", "tanh")


def layer_variant_onnx(sig: LayerSignature, point: LayerPoint, seed: int = 0) -> bytes:
    """A one-layer ONNX model of ``sig`` at ``point`` (batch 1, NCHW float32)."""
    sig.check_point(point)
    cin, cout, hw = point.in_channels, point.out_channels, point.input_hw
    rng = np.random.default_rng(seed + 7919)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])]
    inits, nodes = [], []
    outputs = None
    if sig.kind == "op":
        inputs, nodes, inits, outputs = _op_kernel(sig, point, rng)
    elif sig.kind == "se":
        # x · gate(W2 · act(W1 · mean(x))): the squeeze width is the out_channels axis, the output keeps cin
        mid = cout
        w1, w2 = ((rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for s in ((mid, cin, 1, 1), (cin, mid, 1, 1)))
        inits += [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(0.1 * rng.standard_normal(mid).astype(np.float32), "b1"),
                  numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(0.1 * rng.standard_normal(cin).astype(np.float32), "b2")]
        nodes += [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Conv", ["p", "w1", "b1"], ["s"])]
        more, more_inits = _act_nodes(sig.act, "s", "sa", mid, rng)
        nodes += more + [helper.make_node("Conv", ["sa", "w2", "b2"], ["e"])]
        inits += more_inits
        gate = {"sigmoid": helper.make_node("Sigmoid", ["e"], ["gate"]),
                "hsigmoid": helper.make_node("HardSigmoid", ["e"], ["gate"], alpha=1.0 / 6.0, beta=0.5)}.get(sig.op)
        if gate is None:
            raise ExportError(f"{sig.key}: unknown squeeze-excitation gate {sig.op!r}")
        nodes += [gate, helper.make_node("Mul", ["x", "gate"], ["y"])]
        outputs = [("y", [1, cin, hw, hw])]
    elif sig.kind in ("maxpool", "avgpool", "avgpool2d"):
        if sig.kind == "maxpool":
            nodes.append(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[sig.kernel] * 2,
                                          strides=[sig.stride] * 2, pads=[sig.padding] * 4))
            out_shape = [1, cout, sig.output_hw(hw), sig.output_hw(hw)]
        elif sig.kind == "avgpool2d":
            nodes.append(helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[sig.kernel] * 2,
                                          strides=[sig.stride] * 2, pads=[sig.padding] * 4,
                                          count_include_pad=1 if sig.padding else 0))
            out_shape = [1, cout, sig.output_hw(hw), sig.output_hw(hw)]
        else:
            nodes.append(helper.make_node("GlobalAveragePool", ["x"], ["p"]))
            nodes.append(helper.make_node("Flatten", ["p"], ["y"], axis=1))
            out_shape = [1, cout]
        outputs = [("y", out_shape)]
    elif sig.kind == "linear":
        w, b = random_layer_weights(sig, point, seed)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin])]
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes.append(helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1))
        outputs = [("y", [1, cout])]
    else:
        w, b = random_layer_weights(sig, point, seed)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        ohw = sig.output_hw(hw)
        out_shape = [1, cout, ohw, ohw]
        group = cin if sig.kind == "depthwise" else sig.groups
        y = "conv"
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], [y], kernel_shape=[sig.kernel] * 2,
                                      strides=[sig.stride] * 2, pads=[sig.padding] * 4, group=group))
        if sig.residual:
            inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, out_shape))
            nodes.append(helper.make_node("Add", [y, "r"], ["sum"]))
            y = "sum"
        more, more_inits = _act_nodes(sig.act, y, "y", cout, rng)
        nodes += more
        inits += more_inits
        outputs = [("y", out_shape)]
    graph = helper.make_graph(nodes, sig.key, inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="latbench")
    model.ir_version = 8
    return model.SerializeToString()
