"""BatchNormalization given back to an imported graph whose exporter folded it into the convs, and folded again.

Exporters write inference graphs: torch's exporter (eval mode) and TF's converters fold every BN into the conv
before it. Methods that need BN — Network Slimming ranks channels by BN's γ, OFARPruning recalibrates BN per
(width, resolution), and any training is steadier with it — get it back with :func:`unfold_batchnorm`: after
every conv kernel's Conv (not squeeze-excitation convs, whose 1×1 outputs are no feature maps) that no BN
reads, a BatchNormalization node is inserted whose statistics are the conv output's per-channel mean and
variance on calibration images, with ``γ = √(var + ε)`` and ``β = mean``. In eval mode the node is exactly
the identity, so the network computes what the file computes; in training mode it normalises with batch
statistics as a zoo network's BN does. γ is then the channel's output scale — the |γ| of the BN the exporter
folded, up to how well the calibration images match its training data.

:func:`fold_unfolded_batchnorm` folds exactly those nodes back (``W·γ/σ``, ``(b − μ)·γ/σ + β``) before a
network is shipped, so the shipped graph has the user's structure. The inserted nodes are recognised by
their name's suffix :data:`UNFOLDED_SUFFIX`.

>>> net = unfold_batchnorm(full_network(spec), calibration_batches)     # doctest: +SKIP
>>> model = fold_unfolded_batchnorm(net.to_onnx())                      # the user's structure again   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, shape_inference

from .spec import CONV_KINDS

UNFOLDED_SUFFIX = "/latbench_bn"
EPSILON = 1e-5
_CHUNK = 8              # images per forward when the statistics are gathered

__all__ = ["UNFOLDED_SUFFIX", "fold_unfolded_batchnorm", "has_unfolded_batchnorm", "unfold_batchnorm", "unfolded_convs"]


def unfolded_convs(model: onnx.ModelProto, spec) -> list[onnx.NodeProto]:
    """The Conv nodes of ``spec``'s conv kernels (conv, pointwise, depthwise) whose output no BN reads."""
    from .onnx_graph import _Graph, kernel_nodes_of

    kernels = kernel_nodes_of(model, spec.name)
    conv_kernels = {layer.name for layer in spec.layers if layer.kind in CONV_KINDS}
    by_name = {n.name: n for n in model.graph.node}
    graph = _Graph(model)
    out = []
    for kernel, nodes in kernels.items():
        if kernel not in conv_kernels:
            continue
        conv = next((by_name[n] for n in nodes if by_name[n].op_type == "Conv"), None)
        if conv is None:
            continue
        after = graph.only_consumer(conv.output[0])
        if after is None or after.op_type != "BatchNormalization":
            out.append(conv)
    return out


@torch.no_grad()
def _output_moments(net, names: list[str], batches: Iterable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance of the tensors ``names`` of ``net`` (an OnnxNet, run in eval mode) over
    every position of every image of ``batches``."""
    device = next(net.parameters()).device
    sums = {name: 0.0 for name in names}
    squares = {name: 0.0 for name in names}
    counts = {name: 0 for name in names}
    was_training = net.training
    net.eval()
    try:
        for batch in batches:
            # every conv output of a chunk is held at once: a few images at a time keep 224-px nets in memory
            for x in (batch if isinstance(batch, torch.Tensor) else batch[0]).split(_CHUNK):
                outs = net._execute(x.to(device), net.nodes, net.input_name, names, net._readers, net._own_lookup)
                for name, y in zip(names, outs if isinstance(outs, tuple) else (outs,)):
                    y = y.double().transpose(0, 1).reshape(y.shape[1], -1)
                    sums[name] = sums[name] + y.sum(1)
                    squares[name] = squares[name] + (y * y).sum(1)
                    counts[name] += y.shape[1]
    finally:
        net.train(was_training)
    if not any(counts.values()):
        raise ValueError("unfold_batchnorm: no calibration batches")
    moments = {}
    for name in names:
        mean = (sums[name] / counts[name]).cpu().numpy()
        var = np.maximum((squares[name] / counts[name]).cpu().numpy() - mean ** 2, 0.0)
        moments[name] = (mean, var)
    return moments


def unfold_batchnorm(net, batches: Iterable | None, epsilon: float = EPSILON):
    """``net`` (an :class:`~latbench.models.onnx_torch.OnnxNet` of an imported model) with a BatchNormalization
    after every conv kernel's Conv that has none, calibrated on ``batches`` so that in eval mode the network
    computes exactly what it computed (see the module docstring). Returns a new OnnxNet; ``net`` is untouched.
    A graph whose conv kernels all have their BN is returned as a copy. ``batches`` None gives the nodes only
    (mean 0, variance 1): the layout a checkpoint's trained BN is loaded into."""
    from .onnx_torch import OnnxNet

    model = net.to_onnx()
    convs = unfolded_convs(model, net.spec)
    if not convs:
        return OnnxNet(model, net.spec, net.widths)
    if batches is None:
        dims = {t.name: t.dims for t in model.graph.initializer}
        width = {c.output[0]: int(dims[c.input[1]][0]) for c in convs}       # a Conv's weight: (out, in/g, kh, kw)
        moments = {y: (np.zeros(n), np.ones(n)) for y, n in width.items()}
    else:
        moments = _output_moments(net, [c.output[0] for c in convs], batches)
    graph = model.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    inserted: dict[str, onnx.NodeProto] = {}
    for conv in convs:
        y = conv.output[0]
        mean, var = moments[y]
        stem = f"{conv.name}{UNFOLDED_SUFFIX}"
        pre = f"{y}{UNFOLDED_SUFFIX}/input"
        params = {"scale": np.sqrt(var + epsilon), "bias": mean, "mean": mean, "var": var}
        tensors = []
        for role, value in params.items():
            name = f"{stem}.{role}"
            if name in names:
                raise ValueError(f"the graph already has a tensor {name!r}; it cannot take latbench's BN nodes")
            tensors.append(numpy_helper.from_array(value.astype(np.float32), name))
        graph.initializer.extend(tensors)
        conv.output[0] = pre
        inserted[conv.name] = helper.make_node("BatchNormalization", [pre] + [t.name for t in tensors], [y],
                                               name=stem, epsilon=float(epsilon), momentum=0.9)
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name in inserted:
            nodes.append(inserted[node.name])
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    model = shape_inference.infer_shapes(model, strict_mode=True)
    return OnnxNet(model, net.spec, net.widths)


def has_unfolded_batchnorm(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds BN nodes :func:`unfold_batchnorm` inserted (a network trained with them)."""
    return any(n.op_type == "BatchNormalization" and n.name.endswith(UNFOLDED_SUFFIX) for n in model.graph.node)


def fold_unfolded_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every BN node :func:`unfold_batchnorm` inserted folded into its conv (the node
    is recognised by its name, which pruning keeps; its tensors may carry pruning's suffixes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    bns = [n for n in graph.node if n.op_type == "BatchNormalization" and n.name.endswith(UNFOLDED_SUFFIX)]
    if not bns:
        return out
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    dropped: set[str] = set()
    for bn in bns:
        conv = producer[bn.input[0]]
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), EPSILON)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(
            (w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32), conv.input[1]))
        if len(conv.input) > 2 and conv.input[2]:
            b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32),
                                                                  conv.input[2]))
        else:
            name = f"{conv.name}{UNFOLDED_SUFFIX}.folded_bias"
            graph.initializer.append(numpy_helper.from_array(((0 - mean) * scale + beta).astype(np.float32), name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = name
        conv.output[0] = bn.output[0]
        dropped.update(bn.input[1:5])
    keep = [n for n in graph.node if n not in bns]
    del graph.node[:]
    graph.node.extend(keep)
    still_read = {i for n in graph.node for i in n.input}
    left = [t for t in graph.initializer if t.name not in dropped or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(left)
    del graph.value_info[:]
    return shape_inference.infer_shapes(out, strict_mode=True)
