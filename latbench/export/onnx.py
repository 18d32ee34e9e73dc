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
        per_group_in = 1 if sig.kind == "depthwise" else cin
        w = rng.standard_normal((cout, per_group_in, sig.kernel, sig.kernel)).astype(np.float32)
        w /= np.sqrt(per_group_in * sig.kernel * sig.kernel)
    k = int(round(point.sparsity * w.size))
    if k:
        flat = w.reshape(-1)
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0.0
    return w.astype(np.float32), (0.1 * rng.standard_normal(cout)).astype(np.float32)


def layer_variant_onnx(sig: LayerSignature, point: LayerPoint, seed: int = 0) -> bytes:
    """A one-layer ONNX model of ``sig`` at ``point`` (batch 1, NCHW float32)."""
    sig.check_point(point)
    cin, cout, hw = point.in_channels, point.out_channels, point.input_hw
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])]
    inits, nodes = [], []
    if sig.kind in ("maxpool", "avgpool"):
        if sig.kind == "maxpool":
            nodes.append(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[sig.kernel] * 2,
                                          strides=[sig.stride] * 2, pads=[sig.padding] * 4))
            out_shape = [1, cout, sig.output_hw(hw), sig.output_hw(hw)]
        else:
            nodes.append(helper.make_node("GlobalAveragePool", ["x"], ["p"]))
            nodes.append(helper.make_node("Flatten", ["p"], ["y"], axis=1))
            out_shape = [1, cout]
    elif sig.kind == "linear":
        w, b = random_layer_weights(sig, point, seed)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin])]
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes.append(helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1))
        out_shape = [1, cout]
    else:
        w, b = random_layer_weights(sig, point, seed)
        inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        ohw = sig.output_hw(hw)
        out_shape = [1, cout, ohw, ohw]
        group = cin if sig.kind == "depthwise" else 1
        y = "conv"
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], [y], kernel_shape=[sig.kernel] * 2,
                                      strides=[sig.stride] * 2, pads=[sig.padding] * 4, group=group))
        if sig.residual:
            inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, out_shape))
            nodes.append(helper.make_node("Add", [y, "r"], ["sum"]))
            y = "sum"
        if sig.act == "relu":
            nodes.append(helper.make_node("Relu", [y], ["y"]))
        elif sig.act == "relu6":
            inits += [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
            nodes.append(helper.make_node("Clip", [y, "lo", "hi"], ["y"]))
        else:
            nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(nodes, sig.key, inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="latbench")
    model.ir_version = 8
    return model.SerializeToString()
