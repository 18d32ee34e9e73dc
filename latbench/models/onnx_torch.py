"""An imported ONNX graph as a trainable torch module, its tensors tied to the graph's initializers.

The pruning methods fine-tune the networks they cut. For a zoo model that network is a :class:`GraphNet`; for
a user's ONNX file (issue 13) it is :class:`OnnxNet`: the (pruned) graph executed node by node in torch. Every
float initializer a Conv, Gemm, MatMul, BatchNormalization or PRelu reads as a weight becomes a parameter
(BN running statistics become buffers, updated in training mode as torch's BN does); other constants stay
constants. :meth:`OnnxNet.to_onnx` writes the current values back into a copy of the graph, so the file that
is exported after training is the user's own graph with trained weights — no re-export through torch, no
change of structure.

The graph's batch size is 1 (:func:`~latbench.models.onnx_load.load_user_onnx` fixes it); the module runs any
batch size: a Reshape whose first target dimension is that 1 keeps the batch instead.

Only the ops latbench's kernel detection accepts are executed (plus the pass-throughs the loader removes);
anything else is an :class:`~latbench.models.onnx_graph.OnnxModelError` naming the node, raised when the
module is built, not in the middle of training.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from .onnx_graph import OnnxModelError

# Node inputs (by position) that hold trainable weights when they are initializers.
_WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2), "PRelu": (1,)}
_BN_STATS = (3, 4)          # BatchNormalization's running mean and variance: buffers, not parameters


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _key(name: str, taken: set[str]) -> str:
    """A module attribute name for an initializer name (torch forbids dots; names must be unique)."""
    base = re.sub(r"\W", "_", name) or "t"
    if base[0].isdigit():
        base = "t_" + base
    key, i = base, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


class OnnxNet(nn.Module):
    """``model`` (static shapes, batch 1, as :func:`load_user_onnx` returns it) executed in torch.

    >>> net = OnnxNet(onnx.load("pruned.onnx"))           # doctest: +SKIP
    >>> loss = F.cross_entropy(net(images), labels)        # doctest: +SKIP
    >>> onnx.save(net.to_onnx(), "trained.onnx")           # doctest: +SKIP
    """

    def __init__(self, model: onnx.ModelProto, spec=None, widths: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.model = model
        # What the zoo's GraphNet carries too: the imported model's spec and this network's group widths.
        self.spec, self.widths = spec, dict(widths or (spec.groups if spec is not None else {}))
        self._bn_forwards: int | None = None      # counting forwards: BN statistics as a cumulative average
        self._program = None                      # a pruned variant being run (OnnxSupernet)
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        self.input_name = next(i.name for i in graph.input if i.name not in inits)
        self.output_names = [o.name for o in graph.output]
        self.nodes = list(graph.node)
        trainable, stats = set(), set()
        for node in self.nodes:
            if node.op_type not in _OPS:
                raise OnnxModelError(f"node {node.name!r} ({node.op_type}) cannot be trained by latbench: no torch "
                                     "op for it (the graph's kernels are what latbench can prune and retrain)")
            for i in _WEIGHT_INPUTS.get(node.op_type, ()):
                if i < len(node.input) and node.input[i] in inits:
                    trainable.add(node.input[i])
            if node.op_type == "BatchNormalization":
                stats.update(node.input[i] for i in _BN_STATS if node.input[i] in inits)
        self.params = nn.ParameterDict()
        self.consts: dict[str, np.ndarray] = {}          # non-float constants (shapes, axes): plain arrays
        taken: set[str] = set()
        self._tensor_keys: dict[str, str] = {}            # initializer name → parameter or buffer attribute
        for name, tensor in inits.items():
            value = numpy_helper.to_array(tensor)
            if not np.issubdtype(value.dtype, np.floating):
                self.consts[name] = value
                continue
            t = torch.from_numpy(value.astype(np.float32, copy=True))
            key = _key(name, taken)
            self._tensor_keys[name] = key
            if name in trainable and name not in stats:
                self.params[key] = nn.Parameter(t)
            else:
                self.register_buffer(key, t)
        self._readers: dict[str, int] = {}
        for node in self.nodes:
            for i in node.input:
                self._readers[i] = self._readers.get(i, 0) + 1

    # ---- values ----------------------------------------------------------------------------------------------

    def tensor(self, name: str) -> torch.Tensor:
        """The current value of initializer ``name`` (a parameter or a buffer)."""
        key = self._tensor_keys[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def _const(self, name: str) -> np.ndarray | None:
        """A constant input's value as a numpy array (``None`` when the input is absent)."""
        if not name:
            return None
        if self._program is not None and name in self._program.consts:   # a pruned variant's own constants
            return self._program.consts[name]
        if name in self.consts:
            return self.consts[name]
        if name in self._tensor_keys:
            return self.tensor(name).detach().numpy()
        raise OnnxModelError(f"input {name!r} must be a constant here (the graph computes it at run time)")

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        try:
            return self._run(x)
        finally:
            if self._bn_forwards is not None and self.training:
                self._bn_forwards += 1

    def _run(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self._execute(x, self.nodes, self.input_name, self.output_names, self._readers, self._own_lookup)

    def _own_lookup(self, name: str) -> torch.Tensor | None:
        """An initializer's tensor here (``None``: a constant that :meth:`_const` reads)."""
        return self.tensor(name) if name in self._tensor_keys else None

    def _execute(self, x: torch.Tensor, nodes, input_name: str, output_names, readers: Mapping[str, int],
                 tensor: Callable[[str], torch.Tensor | None]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run ``nodes`` on ``x``; ``tensor(name)`` gives an initializer's tensor (``None``: a constant that
        :meth:`_const` reads)."""
        values: dict[str, torch.Tensor] = {input_name: x}
        left = dict(readers)
        for node in nodes:
            args = []
            for n in node.input:
                if not n:
                    args.append(None)
                elif n in values:
                    args.append(values[n])
                else:
                    t = tensor(n)
                    args.append(n if t is None else t)
            outs = _OPS[node.op_type](self, node, args)
            for name, value in zip(node.output, outs if isinstance(outs, (list, tuple)) else (outs,)):
                values[name] = value
            for n in node.input:       # release tensors no later node reads (deep nets stay flat in memory)
                left[n] = left.get(n, 1) - 1
                if left[n] == 0 and n not in output_names and n != input_name:
                    values.pop(n, None)
        outputs = tuple(values[n] for n in output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def to_onnx(self) -> onnx.ModelProto:
        """A copy of the graph with every initializer set to its current value here (weights, BN statistics)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        for tensor in out.graph.initializer:
            if tensor.name in self._tensor_keys:
                value = self.tensor(tensor.name).detach().cpu().numpy()
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                tensor.CopyFrom(numpy_helper.from_array(value.astype(dtype), tensor.name))
        return out

    def filter_weight(self, layer: str) -> torch.Tensor:
        """The weight whose rows are the filters of kernel ``layer``'s output channels: its conv's, or for a
        squeeze-excitation kernel (named after its pooling node) the first conv/fc after that node — the
        one that writes the squeeze width."""
        name, transposed = filter_source(self.nodes, layer)
        w = self.tensor(name)
        return w.t() if transposed else w

    def channel_graph(self):
        """The channel groups of this graph (:func:`~latbench.models.onnx_channels.analyse_channels`); the
        structure never changes with training, so it is analysed once."""
        if getattr(self, "_channels", None) is None:
            from .onnx_channels import analyse_channels

            self._channels = analyse_channels(self.model)
        return self._channels

    def batch_norms(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(running mean, running variance) of every BatchNormalization node."""
        return [(self.tensor(n.input[3]), self.tensor(n.input[4])) for n in self.nodes
                if n.op_type == "BatchNormalization" and n.input[3] in self._tensor_keys]

    def batch_norm_scales(self) -> list[torch.Tensor]:
        """The γ (a parameter) of every BatchNormalization node: what Network Slimming penalises."""
        return [self.tensor(n.input[1]) for n in self.nodes
                if n.op_type == "BatchNormalization" and self._tensor_keys.get(n.input[1]) in self.params]

    @torch.no_grad()
    def cumulative_bn(self, on: bool) -> None:
        """On: reset BN statistics and average them over the following training-mode forwards (torch's
        ``momentum=None``), to re-estimate them for a pruned network; off: back to the graph's momentum."""
        self._bn_forwards = 0 if on else None
        if on:
            for mean, var in self.batch_norms():
                mean.zero_()
                var.fill_(1.0)


def filter_source(nodes, layer: str) -> tuple[str, bool]:
    """(initializer, transposed) of the weight holding kernel ``layer``'s filters among ``nodes`` (see
    :meth:`OnnxNet.filter_weight`); ``transposed``: the filters are its columns (Gemm without transB, MatMul)."""
    node = next((n for n in nodes if n.name == layer), None)
    if node is None:
        raise KeyError(f"no node {layer!r} in this graph")
    if node.op_type != "Conv":
        readers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        frontier, seen = list(node.output), set()
        while frontier:
            nxt = [n for t in frontier for n in readers.get(t, []) if n.name not in seen]
            hit = next((n for n in nxt if n.op_type in ("Conv", "Gemm", "MatMul")), None)
            if hit is not None:
                node = hit
                break
            seen.update(n.name for n in nxt)
            frontier = [o for n in nxt for o in n.output]
        else:
            raise KeyError(f"no conv or fc follows node {layer!r}")
    transposed = node.op_type == "Gemm" and not _attrs(node).get("transB", 0) or node.op_type == "MatMul"
    return node.input[1], transposed


def full_network(spec) -> OnnxNet:
    """The imported model ``spec`` came from, with the file's own weights (its ``source``)."""
    from pathlib import Path

    from .onnx_graph import load_model_graph

    return OnnxNet(load_model_graph(Path(spec.source), spec.input_shape or None), spec, spec.groups)


@torch.no_grad()
def materialize_imported(arch, spec, parent: OnnxNet | None = None,
                         importance: Mapping[str, np.ndarray] | None = None) -> OnnxNet:
    """The imported model cut to ``arch`` (:func:`latbench.models.materialize` for a model with a
    ``source``): the graph of ``parent`` (default: the file itself) with every group at its width, keeping the
    first channels of ``importance[group]`` (most important first; default the graph's own L1·|γ| ranking),
    weights sliced by :func:`~latbench.models.onnx_channels.prune_onnx`; ``arch``'s sparsity as real zeros."""
    from .onnx_channels import kept_channels, prune_onnx
    from .torch_net import apply_sparsity

    arch.validate(spec)
    parent = parent if parent is not None else full_network(spec)
    graph = parent.channel_graph()
    keep = {g: kept_channels(importance[g], w, graph.groups[g].width, graph.groups[g].multiple)
            for g, w in arch.widths.items() if importance is not None and g in importance and w < spec.groups[g]}
    net = OnnxNet(prune_onnx(parent.to_onnx(), graph, arch.widths, keep), spec, arch.widths)
    for layer, sparsity in arch.sparsity.items():
        apply_sparsity(net.filter_weight(layer), sparsity)
    return net.eval()


# ---- ops: (net, node, inputs) → output(s); a constant input arrives as its tensor, an absent one as None ---------

def _pair(values, default):
    return tuple(values) if values else default


def _padded(x: torch.Tensor, pads, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """ONNX 2-D pads (top, left, bottom, right): symmetric ones for the op itself, the rest padded here."""
    t, l, b, r = pads
    if t == b and l == r:
        return x, (t, l)
    return F.pad(x, (l, r, t, b), value=value), (0, 0)


def _auto_pads(attrs: dict, x: torch.Tensor, kernel, strides, dilations) -> list[int]:
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return list(attrs.get("pads", [0, 0, 0, 0]))
    if mode == "VALID":
        return [0, 0, 0, 0]
    pads = []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2) if mode == "SAME_UPPER" else (total - total // 2, total // 2))
    return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]


def _conv(net, node, a):
    at = _attrs(node)
    w = a[1]
    kernel = w.shape[2:]
    strides, dilations = _pair(at.get("strides"), (1, 1)), _pair(at.get("dilations"), (1, 1))
    x, padding = _padded(a[0], _auto_pads(at, a[0], kernel, strides, dilations))
    return F.conv2d(x, w, a[2] if len(a) > 2 else None, strides, padding, dilations, at.get("group", 1))


def _batchnorm(net, node, a):
    at = _attrs(node)
    momentum = 1.0 - at.get("momentum", 0.9) if net._bn_forwards is None else 1.0 / (net._bn_forwards + 1)
    return F.batch_norm(a[0], a[3], a[4], a[1], a[2], training=net.training, momentum=momentum,
                        eps=at.get("epsilon", 1e-5))


def _gemm(net, node, a):
    at = _attrs(node)
    A = a[0].transpose(-1, -2) if at.get("transA", 0) else a[0]
    B = a[1].transpose(-1, -2) if at.get("transB", 0) else a[1]
    y = at.get("alpha", 1.0) * (A @ B)
    if len(a) > 2 and a[2] is not None:
        y = y + at.get("beta", 1.0) * a[2]
    return y


def _clip(net, node, a):
    at = _attrs(node)
    lo = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return torch.clamp(a[0], lo, hi)


def _hardsigmoid(net, node, a):
    at = _attrs(node)
    return torch.clamp(at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0.0, 1.0)


def _prelu(net, node, a):
    return torch.where(a[0] >= 0, a[0], a[0] * a[1])


def _pool(kind: str):
    def run(net, node, a):
        at = _attrs(node)
        kernel = tuple(at["kernel_shape"])
        strides = _pair(at.get("strides"), (1, 1))
        dilations = _pair(at.get("dilations"), (1, 1))
        pads = _auto_pads(at, a[0], kernel, strides, dilations)
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            x, padding = _padded(a[0], pads, value=float("-inf"))
            return F.max_pool2d(x, kernel, strides, padding, dilations, ceil_mode=ceil)
        include = bool(at.get("count_include_pad", 0))
        t, l, b, r = pads
        if (t != b or l != r) and not include:
            raise OnnxModelError(f"node {node.name!r}: AveragePool with asymmetric pads that exclude the padding "
                                 "from the count has no torch equivalent here")
        x, padding = _padded(a[0], pads)
        return F.avg_pool2d(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)
    return run


def _reshape(net, node, a):
    shape = [int(d) for d in net._const(node.input[1])]
    x = a[0]
    if not _attrs(node).get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if shape and shape[0] == 1 and x.shape[0] != 1:
        shape[0] = x.shape[0]      # the graph's batch of 1: keep the batch the module runs with
    return x.reshape(shape)


def _flatten(net, node, a):
    axis = _attrs(node).get("axis", 1)
    x = a[0]
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _concat(net, node, a):
    return torch.cat([t for t in a if t is not None], dim=_attrs(node)["axis"])


def _split(net, node, a):
    at = _attrs(node)
    axis = at.get("axis", 0)
    size = a[0].shape[axis]
    sizes = net._const(node.input[1]) if len(node.input) > 1 and node.input[1] else at.get("split")
    if sizes is None:
        n = at.get("num_outputs", len(node.output))
        part = -(-size // n)
        sizes = [part] * (n - 1) + [size - part * (n - 1)]
    return torch.split(a[0], [int(s) for s in sizes], dim=axis)


def _slice(net, node, a):
    x = a[0]
    if len(node.input) > 1:
        starts, ends = net._const(node.input[1]), net._const(node.input[2])
        axes = net._const(node.input[3]) if len(node.input) > 3 and node.input[3] else range(len(starts))
        steps = net._const(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    else:                                    # opset < 10: attributes
        at = _attrs(node)
        starts, ends = at["starts"], at["ends"]
        axes, steps = at.get("axes", range(len(starts))), [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax, dim = int(ax) % x.dim(), x.shape[int(ax) % x.dim()]
        if int(st) <= 0:
            raise OnnxModelError(f"node {node.name!r}: Slice with step {int(st)} is not supported")
        index[ax] = slice(int(max(min(s, dim), -dim)), int(max(min(e, dim), -dim - 1)), int(st))
    return x[tuple(index)]


def _axes(net, node, x_dim: int):
    at = _attrs(node)
    axes = net._const(node.input[1]) if len(node.input) > 1 and node.input[1] else at.get("axes")
    return None if axes is None else [int(v) for v in axes]


def _squeeze(net, node, a):
    axes = _axes(net, node, a[0].dim())
    if axes is None:
        return a[0].squeeze()
    return a[0].squeeze(tuple(ax % a[0].dim() for ax in axes))


def _unsqueeze(net, node, a):
    out = a[0]
    axes = _axes(net, node, a[0].dim())
    rank = a[0].dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        out = out.unsqueeze(ax)
    return out


def _reduce(fn: Callable):
    def run(net, node, a):
        at = _attrs(node)
        axes = _axes(net, node, a[0].dim())
        keep = bool(at.get("keepdims", 1))
        if axes is None:
            axes = list(range(a[0].dim())) if not at.get("noop_with_empty_axes", 0) else []
        if not axes:
            return a[0]
        return fn(a[0], dim=tuple(ax % a[0].dim() for ax in axes), keepdim=keep)
    return run


def _resize(net, node, a):
    at = _attrs(node)
    mode = at.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = at.get("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    x = a[0]
    if node.op_type == "Upsample":
        scales = net._const(node.input[1]) if len(node.input) > 1 else at["scales"]
        sizes = None
    else:
        scales = net._const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = net._const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    size = tuple(int(s) for s in sizes[-2:]) if sizes is not None and len(sizes) else None
    if size is None:
        size = tuple(int(np.floor(d * float(s))) for d, s in zip(x.shape[-2:], scales[-2:]))
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    torch_mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode)
    if torch_mode is None:
        raise OnnxModelError(f"node {node.name!r}: Resize mode {mode!r} is not supported")
    return F.interpolate(x, size=size, mode=torch_mode, align_corners=coord == "align_corners")


def _pad(net, node, a):
    at = _attrs(node)
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = net._const(node.input[1]) if len(node.input) > 1 and node.input[1] else at["pads"]
    value = net._const(node.input[2]) if len(node.input) > 2 and node.input[2] else at.get("value", 0.0)
    value = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
    rank = a[0].dim()
    begins, ends = [int(p) for p in pads[:rank]], [int(p) for p in pads[rank:]]
    order = [v for d in reversed(range(rank)) for v in (begins[d], ends[d])]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    if torch_mode != "constant":
        return F.pad(a[0], order[:4], mode=torch_mode)
    return F.pad(a[0], order, value=value)


def _softmax(net, node, a):
    return torch.softmax(a[0], dim=_attrs(node).get("axis", -1))


def _gelu(net, node, a):
    approx = _attrs(node).get("approximate", b"none")
    return F.gelu(a[0], approximate=approx.decode() if isinstance(approx, bytes) else approx)


def _leaky(net, node, a):
    return F.leaky_relu(a[0], _attrs(node).get("alpha", 0.01))


def _elu(net, node, a):
    return F.elu(a[0], _attrs(node).get("alpha", 1.0))


def _transpose(net, node, a):
    perm = _attrs(node).get("perm") or list(reversed(range(a[0].dim())))
    return a[0].permute(*perm)


_OPS: Mapping[str, Callable] = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "Gemm": _gemm,
    "MatMul": lambda net, node, a: torch.matmul(a[0], a[1]),
    "Relu": lambda net, node, a: torch.relu(a[0]), "Sigmoid": lambda net, node, a: torch.sigmoid(a[0]),
    "Tanh": lambda net, node, a: torch.tanh(a[0]), "HardSwish": lambda net, node, a: F.hardswish(a[0]),
    "HardSigmoid": _hardsigmoid, "Clip": _clip, "PRelu": _prelu, "LeakyRelu": _leaky, "Elu": _elu,
    "Erf": lambda net, node, a: torch.erf(a[0]), "Gelu": _gelu,
    "Add": lambda net, node, a: a[0] + a[1], "Sub": lambda net, node, a: a[0] - a[1],
    "Mul": lambda net, node, a: a[0] * a[1], "Div": lambda net, node, a: a[0] / a[1],
    "GlobalAveragePool": lambda net, node, a: a[0].mean(dim=(2, 3), keepdim=True),
    "GlobalMaxPool": lambda net, node, a: a[0].amax(dim=(2, 3), keepdim=True),
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "ReduceMean": _reduce(torch.mean), "ReduceMax": _reduce(torch.amax),
    "Resize": _resize, "Upsample": _resize, "Pad": _pad, "Softmax": _softmax,
    "Identity": lambda net, node, a: a[0], "Dropout": lambda net, node, a: a[0],
}


__all__ = ["OnnxNet", "full_network", "materialize_imported"]
