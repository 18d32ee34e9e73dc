"""ONNX CNN graphs → TFLite flatbuffers, without TensorFlow.

Takes a float32 inference graph (batch 1, static shapes) in ONNX's NCHW and writes it with the
flatbuffer writer of :mod:`latbench.export.tflite` in TFLite's NHWC, the way a TFLite-native CNN looks:
BatchNorm folded into the preceding conv, Relu/Relu6/Relu_n1_to_1 fused into the producing conv, add,
mul or fully-connected op, explicit PAD + ``VALID`` for padded convs and pools (PADV2 with the lowest
float before a max-pool), the GELU that torch writes with Erf for opset < 20 rewritten to one GELU.

Layouts. Every ONNX tensor maps to a TFLite tensor holding it transposed by a permutation ``perm``
(``tflite = onnx.transpose(perm)``): ``(0, 2, 3, 1)`` — NHWC — for 4-D activations, identity otherwise.
Elementwise ops keep their input's layout, an ONNX Transpose only changes ``perm`` (no op), and a
TRANSPOSE is written only where an op needs another layout (a conv needs NHWC, a Reshape needs the
axes it merges or splits to be neighbours in order). A Reshape is written in the current layout when
it can be: a channel shuffle ``[1,C,H,W] → [1,g,C/g,H,W] → Transpose → [1,C,H,W]`` becomes RESHAPE →
TRANSPOSE → RESHAPE in NHWC. The graph's 4-D inputs and outputs are NHWC (``[1,C,H,W]`` becomes
``[1,H,W,C]``), other ranks keep ONNX's order; tensors keep ONNX's names.

Nodes whose inputs are all constants are evaluated with ONNX's reference evaluator (shape arithmetic
torch exports), and Shape of an activation is its static shape. Anything else not converted raises
:class:`OnnxToTFLiteError` naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .tflite import (_OP, _OPT, _GraphBuilder, _conv2d, _depthwise_conv2d, _fully_connected, _global_avg_pool,
                     _max_pool, _pad)

_ACT = tfl.ActivationFunctionType
NHWC = (0, 2, 3, 1)
_LOWEST = float(np.finfo(np.float32).min)


class OnnxToTFLiteError(ValueError):
    """An ONNX graph or node that cannot be written as TFLite; the message names the node and op."""


class _Unsupported(Exception):
    """Raised by a node converter; the converter loop adds the node's name and op type."""


@dataclass(frozen=True)
class _Value:
    """An ONNX tensor as a TFLite tensor: ``tflite = onnx.transpose(perm)``."""

    tensor: int
    perm: tuple[int, ...]


def _default_perm(rank: int) -> tuple[int, ...]:
    return NHWC if rank == 4 else tuple(range(rank))


def _inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, i: int) -> str:
    """The name of input ``i``, ``""`` when absent (optional inputs)."""
    return node.input[i] if len(node.input) > i else ""


# -------------------------------------------------------------------------------------------- context


class _Context:
    """The state of one conversion: ONNX constants and values, consumers, and the TFLite graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.g = _GraphBuilder()
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.values: dict[str, _Value] = {}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.skipped: set[int] = set()  # id() of nodes already written by a fused producer
        self._layouts: dict[tuple[int, tuple[int, ...]], int] = {}

    def index_consumers(self, nodes: list[onnx.NodeProto]) -> None:
        self.consumers = {}
        for node in nodes:
            for name in set(node.input):
                if name:
                    self.consumers.setdefault(name, []).append(node)

    # ---- lookups

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def require_const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise _Unsupported(f"{what} {name!r} must be a constant")
        return self.consts[name]

    def value(self, name: str) -> _Value:
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            array = self.consts[name].astype(np.float32)
            self.values[name] = _Value(self.g.const(name, array), tuple(range(array.ndim)))
            return self.values[name]
        raise _Unsupported(f"input {name!r} is neither a graph input, a constant nor a converted output")

    def shape(self, name: str) -> list[int]:
        """The ONNX shape of a value or constant."""
        if name in self.consts:
            return list(self.consts[name].shape)
        v = self.value(name)
        tfl_shape = self.g.shape(v.tensor)
        return [tfl_shape[k] for k in _inverse(v.perm)]

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The only node reading ``name``, if it is not also a graph output (then it can be fused away)."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    # ---- writing

    def set(self, name: str, tensor: int, perm) -> None:
        self.values[name] = _Value(tensor, tuple(perm))

    def tensor(self, name: str, onnx_shape, perm) -> int:
        """A new activation tensor holding the ONNX tensor of ``onnx_shape`` in layout ``perm``."""
        return self.g.tensor(name, [onnx_shape[a] for a in perm])

    def in_layout(self, v: _Value, perm) -> int:
        """``v``'s tensor in layout ``perm``: a TRANSPOSE, or a RESHAPE when only size-1 axes move."""
        perm = tuple(perm)
        if v.perm == perm:
            return v.tensor
        key = (v.tensor, perm)
        if key not in self._layouts:
            src = [v.perm.index(a) for a in perm]
            shape = self.g.shape(v.tensor)
            out_shape = [shape[i] for i in src]
            name = f"{self.g.tensors[v.tensor].name}/{''.join(map(str, perm))}"
            moved = [i for i in src if shape[i] != 1]
            if moved == sorted(moved):
                self._layouts[key] = self.reshape_op(name, v.tensor, out_shape)
            else:
                y = self.g.tensor(name, out_shape)
                axes = self.g.shared_const(f"perm_{'_'.join(map(str, src))}", np.array(src, np.int32))
                self.g.op(_OP.TRANSPOSE, [v.tensor, axes], [y], _OPT.TransposeOptions, tfl.TransposeOptionsT())
                self._layouts[key] = y
        return self._layouts[key]

    def reshape_op(self, name: str, x: int, shape) -> int:
        if self.g.shape(x) == list(shape):
            return x
        y = self.g.tensor(name, shape)
        new_shape = self.g.shared_const(f"shape_{'_'.join(map(str, shape))}", np.array(shape, np.int32))
        self.g.op(_OP.RESHAPE, [x, new_shape], [y], _OPT.ReshapeOptions, tfl.ReshapeOptionsT(newShape=list(shape)))
        return y

    def operand(self, name: str, rank: int, perm) -> int:
        """``name`` broadcast (ONNX rules: leading 1s) to ``rank`` axes, in layout ``perm``."""
        if name in self.consts:
            array = self.consts[name].astype(np.float32)
            if array.size == 1:
                return self.g.shared_const(f"scalar_{array.item():g}", array.reshape(()))
            array = array.reshape((1,) * (rank - array.ndim) + array.shape)
            return self.g.const(f"{name}/{''.join(map(str, perm))}", array.transpose(perm))
        v = self.value(name)
        if len(v.perm) < rank:
            shape = [1] * (rank - len(v.perm)) + self.shape(name)
            identity = tuple(range(len(v.perm)))
            t = self.reshape_op(f"{name}/rank{rank}", self.in_layout(v, identity), shape)
            v = _Value(t, tuple(range(rank)))
        return self.in_layout(v, perm)

    def take_activation(self, name: str) -> tuple[int, str]:
        """(fused activation, output name): the Relu/Clip reading only ``name`` is fused into its producer."""
        node = self.sole_consumer(name)
        act = _fusable_activation(self, node) if node is not None else None
        if act is None:
            return _ACT.NONE, name
        self.skipped.add(id(node))
        return act, node.output[0]

    def fuse_into_last_op(self, act: int) -> None:
        """Set the fused activation of the op just written (the shared helpers take only none/relu/relu6)."""
        self.g.operators[-1].builtinOptions.fusedActivationFunction = act


def _clip_bounds(ctx: _Context, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    if ctx.opset < 11:
        return _attr(node, "min"), _attr(node, "max")
    bounds = []
    for i in (1, 2):
        name = _input(node, i)
        if name and name not in ctx.consts:
            raise _Unsupported(f"bound {name!r} must be a constant")
        bounds.append(float(ctx.consts[name]) if name else None)
    return bounds[0], bounds[1]


_CLIP_ACTS = {(0.0, 6.0): _ACT.RELU6, (-1.0, 1.0): _ACT.RELU_N1_TO_1, (0.0, None): _ACT.RELU}


def _fusable_activation(ctx: _Context, node: onnx.NodeProto) -> int | None:
    if node.op_type == "Relu":
        return _ACT.RELU
    if node.op_type == "Clip":
        try:
            return _CLIP_ACTS.get(_clip_bounds(ctx, node))
        except _Unsupported:
            return None
    return None


# ------------------------------------------------------------------------------- constant evaluation


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one all-constant node with ONNX's reference evaluator (shape arithmetic, Constant…)."""
    feeds = {name: array for name, array in zip(node.input, inputs) if name}
    return ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)


def _fold(ctx: _Context, node: onnx.NodeProto) -> bool:
    """Evaluate ``node`` if all its inputs are constants (or it is a Shape); whether it was."""
    if node.op_type == "Shape" and node.input[0] not in ctx.consts:
        shape = np.array(ctx.shape(node.input[0]), np.int64)
        ctx.consts[node.output[0]] = shape[_attr(node, "start", 0):_attr(node, "end", len(shape))]
        return True
    if not all(name in ctx.consts for name in node.input if name):
        return False
    try:
        outputs = _evaluate(node, [ctx.const(name) for name in node.input], ctx.opset)
    except Exception as err:  # the evaluator's own message says what it cannot do
        raise _Unsupported(f"cannot evaluate constant node: {err}") from err
    for name, array in zip(node.output, outputs):
        if name:
            ctx.consts[name] = np.asarray(array)
    return True


# --------------------------------------------------------------------------------------------- GELU


def _scalar(ctx: _Context, name: str) -> float | None:
    array = ctx.const(name)
    return float(array) if array is not None and array.size == 1 else None


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _match_gelu(ctx: _Context, producers: dict[str, onnx.NodeProto],
                erf: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, str] | None:
    """The nodes of ``x·0.5·(1 + erf(x/√2))`` around ``erf`` (torch's opset < 20 GELU), its x and output."""
    scale = producers.get(erf.input[0])
    if scale is None or ctx.sole_consumer(scale.output[0]) is not erf:
        return None
    x = scale.input[0]
    c = _scalar(ctx, scale.input[1])
    if c is None or not ((scale.op_type == "Div" and np.isclose(c, np.sqrt(2)))
                         or (scale.op_type == "Mul" and np.isclose(c, np.sqrt(0.5)))):
        return None
    add = ctx.sole_consumer(erf.output[0])
    if add is None or add.op_type != "Add" or not np.isclose(_scalar(ctx, _other(add, erf.output[0])) or 0, 1):
        return None
    mul = ctx.sole_consumer(add.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    partner = _other(mul, add.output[0])
    if partner == x:  # (x · (1 + erf)) · 0.5
        half = ctx.sole_consumer(mul.output[0])
        if half is None or half.op_type != "Mul" or _scalar(ctx, _other(half, mul.output[0])) != 0.5:
            return None
        return [scale, erf, add, mul, half], x, half.output[0]
    half = producers.get(partner)  # (x · 0.5) · (1 + erf)
    if (half is None or half.op_type != "Mul" or ctx.sole_consumer(partner) is not mul or x not in half.input
            or _scalar(ctx, _other(half, x)) != 0.5):
        return None
    return [scale, erf, add, half, mul], x, mul.output[0]


def _fuse_erf_gelu(ctx: _Context, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` with every Erf-pattern GELU replaced by one ONNX Gelu node (written as TFLite GELU)."""
    ctx.index_consumers(nodes)
    producers = {o: n for n in nodes for o in n.output}
    replaced: dict[int, onnx.NodeProto | None] = {}
    for node in nodes:
        if node.op_type != "Erf" or id(node) in replaced:
            continue
        match = _match_gelu(ctx, producers, node)
        if match is None:
            continue
        pattern, x, out = match
        for n in pattern:
            replaced[id(n)] = None
        last = max(pattern, key=nodes.index)  # the Gelu goes where the pattern's output was computed
        replaced[id(last)] = helper.make_node("Gelu", [x], [out], name=f"{node.name or out}/gelu")
    result = [replaced[id(n)] if id(n) in replaced else n for n in nodes]
    return [n for n in result if n is not None]


# ------------------------------------------------------------------------------------------ helpers


def _pad_op(g: _GraphBuilder, x: int, paddings, value: float = 0.0, mode: str = "constant") -> int:
    """PAD / PADV2 (``value``) / MIRROR_PAD (reflect) of ``paddings`` [[before, after], …] per TFLite axis."""
    shape = [d + a + b for d, (a, b) in zip(g.shape(x), paddings)]
    key = "_".join(f"{a}_{b}" for a, b in paddings)
    pads = g.shared_const(f"paddings_{key}", np.array(paddings, np.int32))
    y = g.tensor(f"{g.tensors[x].name}/pad", shape)
    if mode == "reflect":
        options = tfl.MirrorPadOptionsT(mode=tfl.MirrorPadMode.REFLECT)
        g.op(_OP.MIRROR_PAD, [x, pads], [y], _OPT.MirrorPadOptions, options)
    elif value != 0.0:
        fill = g.shared_const(f"pad_value_{value:g}", np.array(value, np.float32))
        g.op(_OP.PADV2, [x, pads, fill], [y], _OPT.PadV2Options, tfl.PadV2OptionsT())
    else:
        g.op(_OP.PAD, [x, pads], [y], _OPT.PadOptions, tfl.PadOptionsT())
    return y


def _pad_hw(g: _GraphBuilder, x: int, pads, value: float = 0.0) -> int:
    """Explicit padding of an NHWC tensor by ONNX ``pads`` (top, left, bottom, right)."""
    if not any(pads):
        return x
    if len(set(pads)) == 1:
        return _pad(g, x, int(pads[0]), value)
    top, left, bottom, right = (int(p) for p in pads)
    return _pad_op(g, x, [[0, 0], [top, bottom], [left, right], [0, 0]], value)


def _spatial(node: onnx.NodeProto, in_hw, kernel) -> tuple[tuple[int, int], list[int]]:
    """(strides, pads [top, left, bottom, right]) of a conv or pool, ``auto_pad`` resolved."""
    strides = tuple(_attr(node, "strides", [1, 1]))
    if len(strides) != 2 or len(kernel) != 2:
        raise _Unsupported("only 2-D convolutions and pools (4-D NCHW tensors) are supported")
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        pads = list(_attr(node, "pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
        return strides, pads
    totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, s, k in zip(in_hw, strides, kernel)]
    before = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return strides, before + [t - b for t, b in zip(totals, before)]


def _check_dilations(node: onnx.NodeProto) -> None:
    dilations = _attr(node, "dilations", [1, 1])
    if any(d != 1 for d in dilations):
        raise _Unsupported(f"dilations {list(dilations)} are unsupported (only 1)")


def _square_stride(strides) -> int:
    if strides[0] != strides[1]:
        raise _Unsupported(f"non-square strides {list(strides)} are unsupported")
    return int(strides[0])


def _require_rank(ctx: _Context, name: str, rank: int, what: str) -> list[int]:
    shape = ctx.shape(name)
    if len(shape) != rank:
        raise _Unsupported(f"{what} needs a rank-{rank} input, got shape {shape}")
    return shape


# --------------------------------------------------------------------------------------- conv / BN


def _bn_scale_shift(ctx: _Context, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference) as ``y = x·scale + shift`` per channel, float64."""
    gamma, beta, mean, var = (ctx.require_const(n, "BatchNormalization parameter").astype(np.float64)
                              for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _fold_following_bn(ctx: _Context, out: str, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Fold a BatchNormalization that alone reads the conv output ``out`` into the conv's weight and bias."""
    bn = ctx.sole_consumer(out)
    if bn is None or bn.op_type != "BatchNormalization" or bn.input[0] != out or len(bn.output) > 1 \
            or not all(n in ctx.consts for n in bn.input[1:5]):
        return w, b, out
    scale, shift = _bn_scale_shift(ctx, bn)
    ctx.skipped.add(id(bn))
    w = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
    return w, (b.astype(np.float64) * scale + shift).astype(np.float32), bn.output[0]


def _conv(ctx: _Context, node: onnx.NodeProto) -> None:
    x_name = node.input[0]
    _, cin, h, w_ = _require_rank(ctx, x_name, 4, "Conv")
    w = ctx.require_const(node.input[1], "weight").astype(np.float32)
    cout, cin_per_group, kh, kw = w.shape
    bias = ctx.const(_input(node, 2))
    bias = np.zeros(cout, np.float32) if bias is None else bias.astype(np.float32)
    _check_dilations(node)
    strides, pads = _spatial(node, (h, w_), (kh, kw))
    stride = _square_stride(strides)
    groups = _attr(node, "group", 1)
    w, bias, out = _fold_following_bn(ctx, node.output[0], w, bias)
    act, out = ctx.take_activation(out)
    x = _pad_hw(ctx.g, ctx.in_layout(ctx.value(x_name), NHWC), pads)
    if groups > 1 and groups == cin and cin_per_group == 1:
        y = _depthwise_conv2d(ctx.g, out, x, w, bias, stride, "none", False)
        ctx.g.operators[-1].builtinOptions.depthMultiplier = cout // cin
    elif cin_per_group * groups == cin:
        # A grouped conv (1 < groups < C) is one CONV_2D whose filter has C/groups input channels: TFLite's
        # builtin kernel and XNNPACK (LiteRT ≥ 2.9) infer the groups from the filter depth.
        y = _conv2d(ctx.g, out, x, w, bias, stride, "none", False)
    else:
        raise _Unsupported(f"weight {list(w.shape)} does not match {cin} input channels in {groups} groups")
    ctx.fuse_into_last_op(act)
    ctx.set(out, y, NHWC)


def _batch_norm(ctx: _Context, node: onnx.NodeProto) -> None:
    """A BatchNormalization not folded into a conv: MUL and ADD by per-channel constants."""
    if len(node.output) > 1 and any(node.output[1:]):
        raise _Unsupported("training-mode outputs (running mean/var) are unsupported")
    scale, shift = _bn_scale_shift(ctx, node)
    x = ctx.value(node.input[0])
    rank = len(x.perm)
    shape = ctx.shape(node.input[0])
    per_channel = (1, -1) + (1,) * (rank - 2)
    consts = [np.reshape(c.astype(np.float32), per_channel).transpose(x.perm) for c in (scale, shift)]
    scaled = ctx.tensor(f"{node.output[0]}/scale", shape, x.perm)
    ctx.g.op(_OP.MUL, [x.tensor, ctx.g.const(f"{node.output[0]}/bn_scale", consts[0])], [scaled],
             _OPT.MulOptions, tfl.MulOptionsT())
    act, out = ctx.take_activation(node.output[0])
    y = ctx.tensor(out, shape, x.perm)
    ctx.g.op(_OP.ADD, [scaled, ctx.g.const(f"{node.output[0]}/bn_shift", consts[1])], [y], _OPT.AddOptions,
             tfl.AddOptionsT(fusedActivationFunction=act))
    ctx.set(out, y, x.perm)


# --------------------------------------------------------------------------------------- elementwise


_BINARY = {"Add": (_OP.ADD, _OPT.AddOptions, tfl.AddOptionsT), "Sub": (_OP.SUB, _OPT.SubOptions, tfl.SubOptionsT),
           "Mul": (_OP.MUL, _OPT.MulOptions, tfl.MulOptionsT), "Div": (_OP.DIV, _OPT.DivOptions, tfl.DivOptionsT)}


def _binary(ctx: _Context, node: onnx.NodeProto) -> None:
    code, options_type, options = _BINARY[node.op_type]
    a, b = node.input
    shape = list(np.broadcast_shapes(tuple(ctx.shape(a)), tuple(ctx.shape(b))))
    rank = len(shape)
    # Keep the layout of a full-rank activation operand (NHWC for 4-D) so that no TRANSPOSE is needed.
    dynamic = [ctx.values[n].perm for n in (a, b) if n in ctx.values and len(ctx.values[n].perm) == rank]
    perm = dynamic[0] if dynamic else _default_perm(rank)
    inputs = [ctx.operand(n, rank, perm) for n in (a, b)]
    act, out = ctx.take_activation(node.output[0])
    y = ctx.tensor(out, shape, perm)
    ctx.g.op(code, inputs, [y], options_type, options(fusedActivationFunction=act))
    ctx.set(out, y, perm)


def _unary_op(ctx: _Context, node: onnx.NodeProto, code: int, options_type: int = _OPT.NONE, options=None) -> None:
    """An elementwise op on the input in whatever layout it has."""
    x = ctx.value(node.input[0])
    y = ctx.tensor(node.output[0], ctx.shape(node.input[0]), x.perm)
    ctx.g.op(code, [x.tensor], [y], options_type, options)
    ctx.set(node.output[0], y, x.perm)


def _unary(code: int, options_type: int = _OPT.NONE, options: Callable | None = None):
    def convert(ctx: _Context, node: onnx.NodeProto) -> None:
        _unary_op(ctx, node, code, options_type, options() if options else None)
    return convert


def _scalar_op(ctx: _Context, code: int, x: _Value, shape, value: float, name: str, options_type: int, options):
    y = ctx.tensor(name, shape, x.perm)
    c = ctx.g.shared_const(f"scalar_{value:g}", np.array(value, np.float32))
    ctx.g.op(code, [x.tensor, c], [y], options_type, options)
    return _Value(y, x.perm)


def _clip(ctx: _Context, node: onnx.NodeProto) -> None:
    low, high = _clip_bounds(ctx, node)
    if (low, high) == (0.0, 1.0):
        return _unary_op(ctx, node, _OP.RELU_0_TO_1)
    act = _CLIP_ACTS.get((low, high))
    if act is not None:
        code = {_ACT.RELU6: _OP.RELU6, _ACT.RELU_N1_TO_1: _OP.RELU_N1_TO_1, _ACT.RELU: _OP.RELU}[act]
        return _unary_op(ctx, node, code)
    x, shape, out = ctx.value(node.input[0]), ctx.shape(node.input[0]), node.output[0]
    options = tfl.MaximumMinimumOptionsT()
    if low is not None:
        x = _scalar_op(ctx, _OP.MAXIMUM, x, shape, low, f"{out}/max" if high is not None else out,
                       _OPT.MaximumMinimumOptions, options)
    if high is not None:
        x = _scalar_op(ctx, _OP.MINIMUM, x, shape, high, out, _OPT.MaximumMinimumOptions, options)
    ctx.values[out] = x


def _hard_sigmoid(ctx: _Context, node: onnx.NodeProto) -> None:
    """max(0, min(1, alpha·x + beta)) as MUL, ADD and RELU_0_TO_1."""
    alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    x, shape, out = ctx.value(node.input[0]), ctx.shape(node.input[0]), node.output[0]
    x = _scalar_op(ctx, _OP.MUL, x, shape, alpha, f"{out}/scaled", _OPT.MulOptions, tfl.MulOptionsT())
    x = _scalar_op(ctx, _OP.ADD, x, shape, beta, f"{out}/shifted", _OPT.AddOptions, tfl.AddOptionsT())
    y = ctx.tensor(out, shape, x.perm)
    ctx.g.op(_OP.RELU_0_TO_1, [x.tensor], [y])
    ctx.set(out, y, x.perm)


def _gelu(ctx: _Context, node: onnx.NodeProto) -> None:
    approximate = _attr(node, "approximate", "none") == "tanh"
    _unary_op(ctx, node, _OP.GELU, _OPT.GeluOptions, tfl.GeluOptionsT(approximate=approximate))


def _leaky_relu(ctx: _Context, node: onnx.NodeProto) -> None:
    alpha = _attr(node, "alpha", 0.01)
    _unary_op(ctx, node, _OP.LEAKY_RELU, _OPT.LeakyReluOptions, tfl.LeakyReluOptionsT(alpha=alpha))


def _elu(ctx: _Context, node: onnx.NodeProto) -> None:
    if not np.isclose(_attr(node, "alpha", 1.0), 1.0):
        raise _Unsupported("TFLite ELU has no alpha; only alpha = 1 is supported")
    _unary_op(ctx, node, _OP.ELU)


def _prelu(ctx: _Context, node: onnx.NodeProto) -> None:
    """PRELU with the slope in the input's layout; a per-channel NHWC slope is stored as ``[1, 1, C]``."""
    x = ctx.value(node.input[0])
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    slope = ctx.require_const(node.input[1], "slope").astype(np.float32)
    slope = slope.reshape((1,) * (rank - slope.ndim) + slope.shape).transpose(x.perm)[0]  # no batch axis
    slope = np.ascontiguousarray(np.broadcast_to(slope, slope.shape[:-1] + (ctx.g.shape(x.tensor)[-1],)))
    y = ctx.tensor(node.output[0], shape, x.perm)
    ctx.g.op(_OP.PRELU, [x.tensor, ctx.g.const(f"{node.output[0]}/slope", slope)], [y])
    ctx.set(node.output[0], y, x.perm)


def _erf(ctx: _Context, node: onnx.NodeProto) -> None:
    raise _Unsupported("Erf is only supported inside the GELU pattern x·0.5·(1 + erf(x/√2)); TFLite has no ERF")


def _identity(ctx: _Context, node: onnx.NodeProto) -> None:
    if node.op_type == "Dropout" and len(node.output) > 1 and ctx.consumers.get(node.output[1]):
        raise _Unsupported("the dropout mask output is unsupported (inference graphs only)")
    ctx.values[node.output[0]] = ctx.value(node.input[0])


# ------------------------------------------------------------------------------------ shape ops


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _concat(ctx: _Context, node: onnx.NodeProto) -> None:
    shapes = [ctx.shape(n) for n in node.input]
    rank = len(shapes[0])
    axis = _axis(_attr(node, "axis"), rank)
    dynamic = [ctx.values[n].perm for n in node.input if n in ctx.values]
    perm = dynamic[0] if dynamic else _default_perm(rank)
    inputs = [ctx.operand(n, rank, perm) for n in node.input]
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    act, out = ctx.take_activation(node.output[0])
    y = ctx.tensor(out, out_shape, perm)
    ctx.g.op(_OP.CONCATENATION, inputs, [y], _OPT.ConcatenationOptions,
             tfl.ConcatenationOptionsT(axis=perm.index(axis), fusedActivationFunction=act))
    ctx.set(out, y, perm)


def _split(ctx: _Context, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    x = ctx.value(node.input[0])
    axis = _axis(_attr(node, "axis", 0), len(shape))
    sizes = ctx.const(_input(node, 1)) if ctx.opset >= 13 else _attr(node, "split")
    if sizes is None:
        n = len(node.output)
        if shape[axis] % n:
            raise _Unsupported(f"axis of size {shape[axis]} does not split into {n} equal parts")
        sizes = [shape[axis] // n] * n
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    outputs = []
    for name, size in zip(node.output, sizes):
        out_shape = list(shape)
        out_shape[axis] = size
        outputs.append(ctx.tensor(name, out_shape, x.perm))
    size_splits = ctx.g.const(f"{node.output[0]}/size_splits", np.array(sizes, np.int32))
    split_axis = ctx.g.shared_const(f"axis_{x.perm.index(axis)}", np.array(x.perm.index(axis), np.int32))
    ctx.g.op(_OP.SPLIT_V, [x.tensor, size_splits, split_axis], outputs, _OPT.SplitVOptions,
             tfl.SplitVOptionsT(numSplits=len(sizes)))
    for name, y in zip(node.output, outputs):
        ctx.set(name, y, x.perm)


def _slice_params(ctx: _Context, node: onnx.NodeProto, rank: int):
    if ctx.opset < 10:
        starts, ends = _attr(node, "starts"), _attr(node, "ends")
        axes, steps = _attr(node, "axes"), None
    else:
        starts, ends = ctx.require_const(node.input[1], "starts"), ctx.require_const(node.input[2], "ends")
        axes, steps = ctx.const(_input(node, 3)), ctx.const(_input(node, 4))
    axes = list(range(len(starts))) if axes is None else [_axis(int(a), rank) for a in np.ravel(axes)]
    steps = [1] * len(axes) if steps is None else [int(s) for s in np.ravel(steps)]
    return [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)], axes, steps


def _slice(ctx: _Context, node: onnx.NodeProto) -> None:
    """STRIDED_SLICE with explicit, clamped begin/end per TFLite axis (positive steps only)."""
    shape = ctx.shape(node.input[0])
    x = ctx.value(node.input[0])
    begin, end, strides = [0] * len(shape), list(shape), [1] * len(shape)
    for start, stop, axis, step in zip(*_slice_params(ctx, node, len(shape))):
        if step <= 0:
            raise _Unsupported(f"slice step {step} is unsupported (only positive steps)")
        dim = shape[axis]
        begin[axis] = min(max(start + dim if start < 0 else start, 0), dim)
        end[axis] = max(min(stop + dim if stop < 0 else stop, dim), begin[axis])
        strides[axis] = step
    out_shape = [-(-(e - b) // s) for b, e, s in zip(begin, end, strides)]
    consts = [ctx.g.const(f"{node.output[0]}/{what}", np.array([v[a] for a in x.perm], np.int32))
              for what, v in (("begin", begin), ("end", end), ("strides", strides))]
    y = ctx.tensor(node.output[0], out_shape, x.perm)
    ctx.g.op(_OP.STRIDED_SLICE, [x.tensor, *consts], [y], _OPT.StridedSliceOptions, tfl.StridedSliceOptionsT())
    ctx.set(node.output[0], y, x.perm)


def _reshape_groups(src, dst) -> list[tuple[list[int], list[int]]]:
    """A reshape as groups (source axes, destination axes) of equal size: each group of neighbouring source
    axes is merged and split into the group's destination axes; size-1 axes may stand alone on either side."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        if i == len(src) or j == len(dst):
            groups.append(([], [j]) if i == len(src) else ([i], []))
            i, j = (i, j + 1) if i == len(src) else (i + 1, j)
            continue
        gi, gj, pi, pj = [i], [j], src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if (pi < pj and i == len(src)) or (pj < pi and j == len(dst)):
                raise _Unsupported(f"cannot reshape {list(src)} to {list(dst)}")
            if pi < pj:
                gi.append(i)
                pi, i = pi * src[i], i + 1
            else:
                gj.append(j)
                pj, j = pj * dst[j], j + 1
        groups.append((gi, gj))
    return groups


def _reshape_to(ctx: _Context, x_name: str, out: str, dst) -> None:
    """RESHAPE in the input's layout when the merged/split axes are neighbours there, after a TRANSPOSE
    that makes them so otherwise; the output's layout follows the groups' order."""
    src, x = ctx.shape(x_name), ctx.value(x_name)
    dst = [int(d) for d in dst]
    if int(np.prod(src)) != int(np.prod(dst)):
        raise _Unsupported(f"cannot reshape {src} to {dst}")
    position = {axis: k for k, axis in enumerate(x.perm)}
    groups = _reshape_groups(src, dst)
    keys, last = [], -1
    for index, (gsrc, _) in enumerate(groups):
        last = min(position[a] for a in gsrc) if gsrc else last  # a new size-1 axis follows its predecessor
        keys.append((last, 0 if gsrc else 1, index))
    order = [groups[k[2]] for k in sorted(keys)]
    src_perm = [a for gsrc, _ in order for a in sorted(gsrc)]
    dst_perm = tuple(a for _, gdst in order for a in gdst)
    t = ctx.in_layout(x, src_perm)
    ctx.set(out, ctx.reshape_op(out, t, [dst[a] for a in dst_perm]), dst_perm)


def _reshape(ctx: _Context, node: onnx.NodeProto) -> None:
    src = ctx.shape(node.input[0])
    target = [int(d) for d in ctx.require_const(node.input[1], "shape")]
    if not _attr(node, "allowzero", 0):
        target = [src[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        target[target.index(-1)] = int(np.prod(src)) // known
    _reshape_to(ctx, node.input[0], node.output[0], target)


def _flatten(ctx: _Context, node: onnx.NodeProto) -> None:
    src = ctx.shape(node.input[0])
    axis = _axis(_attr(node, "axis", 1), len(src))
    _reshape_to(ctx, node.input[0], node.output[0], [int(np.prod(src[:axis])), int(np.prod(src[axis:]))])


def _axes(ctx: _Context, node: onnx.NodeProto) -> list[int] | None:
    as_input_since = 18 if node.op_type.startswith("Reduce") else 13  # before: an attribute
    if ctx.opset >= as_input_since:
        axes = ctx.const(_input(node, 1))
        if _input(node, 1) and axes is None:
            raise _Unsupported("axes must be a constant")
        return None if axes is None else [int(a) for a in np.ravel(axes)]
    axes = _attr(node, "axes")
    return None if axes is None else list(axes)


def _squeeze(ctx: _Context, node: onnx.NodeProto) -> None:
    src = ctx.shape(node.input[0])
    axes = _axes(ctx, node)
    axes = [i for i, d in enumerate(src) if d == 1] if axes is None else [_axis(a, len(src)) for a in axes]
    _reshape_to(ctx, node.input[0], node.output[0], [d for i, d in enumerate(src) if i not in axes])


def _unsqueeze(ctx: _Context, node: onnx.NodeProto) -> None:
    dst = list(ctx.shape(node.input[0]))
    axes = _axes(ctx, node)
    rank = len(dst) + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        dst.insert(a, 1)
    _reshape_to(ctx, node.input[0], node.output[0], dst)


def _transpose(ctx: _Context, node: onnx.NodeProto) -> None:
    """No op: the output is the same TFLite tensor, read in a permuted layout."""
    x = ctx.value(node.input[0])
    perm = _attr(node, "perm", list(range(len(x.perm)))[::-1])
    inverse = _inverse(perm)
    ctx.set(node.output[0], x.tensor, [inverse[a] for a in x.perm])


def _pad_node(ctx: _Context, node: onnx.NodeProto) -> None:
    mode = _attr(node, "mode", "constant")
    if mode not in ("constant", "reflect"):
        raise _Unsupported(f"pad mode {mode!r} is unsupported (constant, reflect)")
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    if ctx.opset < 11:
        pads, value, axes = _attr(node, "pads"), _attr(node, "value", 0.0), None
    else:
        pads = ctx.require_const(node.input[1], "pads")
        value = float(ctx.const(_input(node, 2))) if _input(node, 2) else 0.0
        axes = ctx.const(_input(node, 3))
    pads = [int(p) for p in np.ravel(pads)]
    axes = list(range(rank)) if axes is None else [_axis(int(a), rank) for a in np.ravel(axes)]
    if any(p < 0 for p in pads):
        raise _Unsupported(f"negative pads {pads} (cropping) are unsupported")
    per_axis = {a: [0, 0] for a in range(rank)}
    for i, a in enumerate(axes):
        per_axis[a] = [pads[i], pads[i + len(axes)]]
    x = ctx.value(node.input[0])
    y = _pad_op(ctx.g, x.tensor, [per_axis[a] for a in x.perm], value, mode)
    ctx.set(node.output[0], y, x.perm)


# ------------------------------------------------------------------------------------------- pooling


def _pool_geometry(ctx: _Context, node: onnx.NodeProto):
    """(input shape, kernel, strides, pads) of a 2-D pool; ceil_mode only where it changes nothing."""
    shape = _require_rank(ctx, node.input[0], 4, node.op_type)
    kernel = list(_attr(node, "kernel_shape"))
    _check_dilations(node)
    strides, pads = _spatial(node, shape[2:], kernel)
    if _attr(node, "ceil_mode", 0):
        for n, k, s, p in zip(shape[2:], kernel, strides, (pads[0] + pads[2], pads[1] + pads[3])):
            if (n + p - k) % s:
                raise _Unsupported("ceil_mode that changes the output size is unsupported")
    return shape, kernel, strides, pads


def _pool2d(ctx: _Context, code: int, name: str, x: int, kernel, strides, padding: int = tfl.Padding.VALID) -> int:
    n, h, w, c = ctx.g.shape(x)
    if padding == tfl.Padding.SAME:
        oh, ow = (-(-d // s) for d, s in zip((h, w), strides))
    else:
        oh, ow = ((d - k) // s + 1 for d, k, s in zip((h, w), kernel, strides))
    y = ctx.g.tensor(name, [n, oh, ow, c])
    options = tfl.Pool2DOptionsT(padding=padding, strideH=strides[0], strideW=strides[1], filterHeight=kernel[0],
                                 filterWidth=kernel[1], fusedActivationFunction=_ACT.NONE)
    ctx.g.op(code, [x], [y], _OPT.Pool2DOptions, options)
    return y


def _max_pool_node(ctx: _Context, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and ctx.consumers.get(node.output[1]):
        raise _Unsupported("the Indices output is unsupported")
    _, kernel, strides, pads = _pool_geometry(ctx, node)
    x = _pad_hw(ctx.g, ctx.in_layout(ctx.value(node.input[0]), NHWC), pads, _LOWEST)
    if kernel[0] == kernel[1] and strides[0] == strides[1]:
        y = _max_pool(ctx.g, node.output[0], x, kernel[0], strides[0], 0)
    else:
        y = _pool2d(ctx, _OP.MAX_POOL_2D, node.output[0], x, kernel, strides)
    ctx.set(node.output[0], y, NHWC)


def _same_pads(in_hw, kernel, strides) -> list[int]:
    """TFLite's SAME padding (top, left, bottom, right): the extra pixel goes after."""
    totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(in_hw, kernel, strides)]
    return [t // 2 for t in totals] + [t - t // 2 for t in totals]


def _avg_pool(ctx: _Context, node: onnx.NodeProto) -> None:
    """AVERAGE_POOL_2D. ONNX excludes pads from the count by default, TFLite's VALID after an explicit PAD
    would include them: padded pools that exclude pads use SAME where TFLite's SAME pads equal ONNX's
    (TFLite's SAME averages only the pixels inside), otherwise PAD + VALID and a MUL by k²/count per pixel."""
    shape, kernel, strides, pads = _pool_geometry(ctx, node)
    x = ctx.in_layout(ctx.value(node.input[0]), NHWC)
    out = node.output[0]
    if not any(pads):
        return ctx.set(out, _pool2d(ctx, _OP.AVERAGE_POOL_2D, out, x, kernel, strides), NHWC)
    if not _attr(node, "count_include_pad", 0) and pads == _same_pads(shape[2:], kernel, strides):
        return ctx.set(out, _pool2d(ctx, _OP.AVERAGE_POOL_2D, out, x, kernel, strides, tfl.Padding.SAME), NHWC)
    padded = _pad_hw(ctx.g, x, pads)
    if _attr(node, "count_include_pad", 0):
        return ctx.set(out, _pool2d(ctx, _OP.AVERAGE_POOL_2D, out, padded, kernel, strides), NHWC)
    pooled = _pool2d(ctx, _OP.AVERAGE_POOL_2D, f"{out}/with_pads", padded, kernel, strides)
    factor = _pad_correction(shape[2:], kernel, strides, pads)
    y = ctx.g.tensor(out, ctx.g.shape(pooled))
    ctx.g.op(_OP.MUL, [pooled, ctx.g.const(f"{out}/count_correction", factor)], [y], _OPT.MulOptions,
             tfl.MulOptionsT())
    ctx.set(out, y, NHWC)


def _pad_correction(in_hw, kernel, strides, pads) -> np.ndarray:
    """``[1, OH, OW, 1]``: window size / number of window pixels inside the input, per output pixel."""
    counts = []
    for n, k, s, before, after in zip(in_hw, kernel, strides, pads[:2], pads[2:]):
        starts = np.arange((n + before + after - k) // s + 1) * s - before
        counts.append(np.minimum(starts + k, n) - np.maximum(starts, 0))
    inside = np.outer(counts[0], counts[1])
    return (kernel[0] * kernel[1] / inside).astype(np.float32)[None, :, :, None]


def _reduce(ctx: _Context, node: onnx.NodeProto, code: int, axes: list[int] | None, keepdims: bool) -> None:
    """MEAN / REDUCE_MAX over ONNX ``axes`` (all when None), in the input's layout."""
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    axes = sorted(range(rank) if axes is None else {_axis(a, rank) for a in axes})
    x = ctx.value(node.input[0])
    if code == _OP.MEAN and x.perm == NHWC and axes == [2, 3] and not keepdims:
        return ctx.set(node.output[0], _global_avg_pool(ctx.g, node.output[0], x.tensor), (0, 1))
    kept = [a for a in range(rank) if a not in axes]
    out_shape = [1 if a in axes else d for a, d in enumerate(shape)] if keepdims else [shape[a] for a in kept]
    perm = x.perm if keepdims else tuple(kept.index(a) for a in x.perm if a in kept)
    tfl_axes = sorted(x.perm.index(a) for a in axes)
    axes_const = ctx.g.shared_const(f"axes_{'_'.join(map(str, tfl_axes))}", np.array(tfl_axes, np.int32))
    y = ctx.tensor(node.output[0], out_shape, perm)
    ctx.g.op(code, [x.tensor, axes_const], [y], _OPT.ReducerOptions, tfl.ReducerOptionsT(keepDims=keepdims))
    ctx.set(node.output[0], y, perm)


def _flattens_pooled(ctx: _Context, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """A Flatten/Squeeze/Reshape to ``[1, C]`` alone reading a global pool's output: MEAN drops H, W itself."""
    nxt = ctx.sole_consumer(node.output[0])
    if nxt is None or nxt.op_type not in ("Flatten", "Squeeze", "Reshape"):
        return None
    n, c = ctx.shape(node.input[0])[:2]
    if nxt.op_type == "Flatten" and _attr(nxt, "axis", 1) in (1, -3):
        return nxt
    if nxt.op_type == "Squeeze" and sorted(_axis(a, 4) for a in (_axes(ctx, nxt) or [2, 3])) == [2, 3]:
        return nxt
    target = ctx.const(_input(nxt, 1)) if nxt.op_type == "Reshape" else None
    if target is not None and [int(d) for d in target] in ([n, c], [n, -1], [-1, c], [0, -1], [0, c]):
        return nxt
    return None


def _global_pool(ctx: _Context, node: onnx.NodeProto) -> None:
    _require_rank(ctx, node.input[0], 4, node.op_type)
    code = _OP.MEAN if node.op_type == "GlobalAveragePool" else _OP.REDUCE_MAX
    flatten = _flattens_pooled(ctx, node) if code == _OP.MEAN else None
    if flatten is None:
        return _reduce(ctx, node, code, [2, 3], True)
    ctx.skipped.add(id(flatten))
    ctx.set(flatten.output[0], _global_avg_pool(ctx.g, flatten.output[0], ctx.value(node.input[0]).tensor), (0, 1))


def _reduce_node(ctx: _Context, node: onnx.NodeProto) -> None:
    axes = _axes(ctx, node)
    if axes is None and _attr(node, "noop_with_empty_axes", 0):
        return _identity(ctx, node)
    _reduce(ctx, node, _OP.MEAN if node.op_type == "ReduceMean" else _OP.REDUCE_MAX, axes,
            bool(_attr(node, "keepdims", 1)))


# -------------------------------------------------------------------------------------------- resize


def _onnx_source(mode: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """ONNX Resize: the input coordinate of each output pixel along one axis."""
    x = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise _Unsupported(f"coordinate_transformation_mode {mode!r} is unsupported")


_NEAREST = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
            "floor": np.floor, "ceil": np.ceil}


def _interpolation(source: np.ndarray, n_in: int, nearest: Callable | None) -> np.ndarray:
    """The ``[out, in]`` matrix of 1-D nearest (``nearest`` rounds) or linear interpolation at ``source``."""
    matrix = np.zeros((len(source), n_in))
    rows = np.arange(len(source))
    if nearest is not None:
        matrix[rows, np.clip(nearest(source), 0, n_in - 1).astype(int)] = 1.0
        return matrix
    source = np.clip(source, 0, n_in - 1)
    low = np.floor(source).astype(int)
    frac = source - low
    np.add.at(matrix, (rows, low), 1 - frac)
    np.add.at(matrix, (rows, np.minimum(low + 1, n_in - 1)), frac)
    return matrix


def _tflite_interpolation(n_in: int, n_out: int, align_corners: bool, half_pixel: bool, linear: bool) -> np.ndarray:
    """The same matrix for TFLite's RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR with these options."""
    scale = (n_in - 1) / (n_out - 1) if align_corners and n_out > 1 else n_in / n_out
    x = np.arange(n_out, dtype=np.float64)
    if linear:
        source = (x + 0.5) * scale - 0.5 if half_pixel else x * scale
        return _interpolation(source, n_in, None)
    offset = 0.5 if half_pixel else 0.0
    rounded = np.floor((x + offset) * scale + 0.5) if align_corners else np.floor((x + offset) * scale)
    return _interpolation(rounded, n_in, np.floor)


def _resize_inputs(ctx: _Context, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scales, sizes) over ONNX's 4 axes, whichever is given."""
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales = _attr(node, "scales") if ctx.opset < 9 else ctx.require_const(node.input[1], "scales")
        return np.asarray(scales, np.float64), None
    scales, sizes = ctx.const(_input(node, 2)), ctx.const(_input(node, 3))
    if _input(node, 2) and scales is None or _input(node, 3) and sizes is None:
        raise _Unsupported("scales and sizes must be constants")
    return (None if scales is None or scales.size == 0 else scales.astype(np.float64)), sizes


def _resize(ctx: _Context, node: onnx.NodeProto) -> None:
    """RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR with the options whose sampling equals ONNX's: the 1-D
    interpolation matrices of both are compared along H and W for each TFLite option pair."""
    shape = _require_rank(ctx, node.input[0], 4, node.op_type)
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear") or _attr(node, "antialias", 0):
        raise _Unsupported(f"mode {mode!r}{' with antialias' if _attr(node, 'antialias', 0) else ''} is unsupported")
    scales, sizes = _resize_inputs(ctx, node)
    if sizes is not None:
        out = [int(s) for s in sizes]
        scales = np.array(out, np.float64) / np.array(shape, np.float64)
    else:
        out = [int(np.floor(d * s)) for d, s in zip(shape, scales)]
    if out[:2] != shape[:2]:
        raise _Unsupported(f"resizing the batch or channel axis ({shape} → {out}) is unsupported")
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    coordinates = "asymmetric" if legacy else _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = None if mode != "nearest" else _NEAREST[("floor" if legacy else _attr(node, "nearest_mode",
                                                                                      "round_prefer_floor"))]
    wanted = [_interpolation(_onnx_source(coordinates, n, m, s), n, nearest)
              for n, m, s in zip(shape[2:], out[2:], scales[2:])]
    for align_corners, half_pixel in ((False, False), (False, True), (True, False)):
        got = [_tflite_interpolation(n, m, align_corners, half_pixel, nearest is None)
               for n, m in zip(shape[2:], out[2:])]
        if all(np.allclose(a, b, atol=1e-6) for a, b in zip(got, wanted)):
            break
    else:
        raise _Unsupported(f"{mode} resize with coordinate_transformation_mode {coordinates!r} "
                           f"{shape[2:]} → {out[2:]} matches no TFLite align_corners/half_pixel_centers option")
    x = ctx.in_layout(ctx.value(node.input[0]), NHWC)
    size = ctx.g.shared_const(f"size_{out[2]}_{out[3]}", np.array(out[2:], np.int32))
    y = ctx.tensor(node.output[0], out, NHWC)
    if nearest is None:
        ctx.g.op(_OP.RESIZE_BILINEAR, [x, size], [y], _OPT.ResizeBilinearOptions,
                 tfl.ResizeBilinearOptionsT(alignCorners=align_corners, halfPixelCenters=half_pixel))
    else:
        ctx.g.op(_OP.RESIZE_NEAREST_NEIGHBOR, [x, size], [y], _OPT.ResizeNearestNeighborOptions,
                 tfl.ResizeNearestNeighborOptionsT(alignCorners=align_corners, halfPixelCenters=half_pixel))
    ctx.set(node.output[0], y, NHWC)


# ---------------------------------------------------------------------------------- dense / softmax


def _dense(ctx: _Context, node: onnx.NodeProto, x_name: str, w_out_in: np.ndarray, bias: np.ndarray) -> None:
    """FULLY_CONNECTED over the last ONNX axis; inputs of rank > 2 are flattened to 2-D and back."""
    shape = ctx.shape(x_name)
    if shape[-1] != w_out_in.shape[1]:
        raise _Unsupported(f"input {shape} does not match the weight's {w_out_in.shape[1]} input features")
    x = ctx.value(x_name)
    identity = tuple(range(len(shape)))
    x2d = ctx.reshape_op(f"{x_name}/2d", ctx.in_layout(x, identity), [int(np.prod(shape[:-1])), shape[-1]])
    act, out = ctx.take_activation(node.output[0])
    y = _fully_connected(ctx.g, out if len(shape) == 2 else f"{out}/2d", x2d, w_out_in.astype(np.float32),
                         bias.astype(np.float32))
    ctx.fuse_into_last_op(act)
    ctx.set(out, ctx.reshape_op(out, y, shape[:-1] + [w_out_in.shape[0]]), identity)


def _gemm(ctx: _Context, node: onnx.NodeProto) -> None:
    if _attr(node, "transA", 0):
        raise _Unsupported("transA = 1 is unsupported")
    _require_rank(ctx, node.input[0], 2, "Gemm")
    b = ctx.require_const(node.input[1], "B").astype(np.float64)
    w = (b if _attr(node, "transB", 0) else b.T) * _attr(node, "alpha", 1.0)
    c = ctx.const(_input(node, 2))
    if _input(node, 2) and c is None:
        raise _Unsupported("a non-constant C is unsupported")
    bias = np.zeros(w.shape[0]) if c is None else np.broadcast_to(np.ravel(c), (w.shape[0],)) * _attr(node, "beta", 1.0)
    _dense(ctx, node, node.input[0], w, bias)


def _matmul(ctx: _Context, node: onnx.NodeProto) -> None:
    b = ctx.const(node.input[1])
    if b is None or b.ndim != 2:
        raise _Unsupported("only a constant 2-D right-hand side is supported (FULLY_CONNECTED)")
    _dense(ctx, node, node.input[0], b.T, np.zeros(b.shape[1]))


def _softmax(ctx: _Context, node: onnx.NodeProto) -> None:
    """SOFTMAX works on the last TFLite axis: the input is put in a layout that ends with ONNX's axis."""
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    axis = _axis(_attr(node, "axis", -1 if ctx.opset >= 13 else 1), rank)
    if ctx.opset < 13 and any(d != 1 for d in shape[axis + 1:]):
        raise _Unsupported(f"opset-{ctx.opset} softmax over the flattened axes {axis}… is unsupported")
    x = ctx.value(node.input[0])
    perm = tuple(a for a in x.perm if a != axis) + (axis,)
    y = ctx.tensor(node.output[0], shape, perm)
    ctx.g.op(_OP.SOFTMAX, [ctx.in_layout(x, perm)], [y], _OPT.SoftmaxOptions, tfl.SoftmaxOptionsT(beta=1.0))
    ctx.set(node.output[0], y, perm)


# ------------------------------------------------------------------------------------------- driver


_CONVERTERS: dict[str, Callable[[_Context, onnx.NodeProto], None]] = {
    "Conv": _conv, "BatchNormalization": _batch_norm,
    "Relu": _unary(_OP.RELU), "Clip": _clip, "HardSwish": _unary(_OP.HARD_SWISH, _OPT.HardSwishOptions,
                                                                    tfl.HardSwishOptionsT),
    "HardSigmoid": _hard_sigmoid, "Sigmoid": _unary(_OP.LOGISTIC), "Tanh": _unary(_OP.TANH), "Gelu": _gelu,
    "LeakyRelu": _leaky_relu, "PRelu": _prelu, "Elu": _elu, "Erf": _erf,
    "Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Reshape": _reshape, "Transpose": _transpose,
    "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Identity": _identity, "Dropout": _identity,
    "Pad": _pad_node, "MaxPool": _max_pool_node, "AveragePool": _avg_pool, "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool, "ReduceMean": _reduce_node, "ReduceMax": _reduce_node,
    "Resize": _resize, "Upsample": _resize, "Gemm": _gemm, "MatMul": _matmul, "Softmax": _softmax,
}


def _node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name or '<unnamed>'!r} ({node.op_type}, output {node.output[0] if node.output else ''!r})"


def _add_inputs(ctx: _Context) -> None:
    for inp in ctx.graph.input:
        if inp.name in ctx.consts:
            continue
        tensor_type = inp.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise OnnxToTFLiteError(f"graph input {inp.name!r}: only float32 inputs are supported")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if any(d is None or d < 1 for d in dims):
            raise OnnxToTFLiteError(f"graph input {inp.name!r}: static shapes are required, got {dims}")
        perm = _default_perm(len(dims))
        ctx.set(inp.name, ctx.g.input(inp.name, [dims[a] for a in perm]), perm)


def _add_outputs(ctx: _Context) -> None:
    for out in ctx.graph.output:
        if out.name not in ctx.values:
            raise OnnxToTFLiteError(f"graph output {out.name!r} is a constant or was not computed")
        v = ctx.values[out.name]
        t = ctx.in_layout(v, _default_perm(len(v.perm)))
        if t in ctx.g.inputs:
            raise OnnxToTFLiteError(f"graph output {out.name!r} is a graph input: nothing to compute")
        ctx.g.tensors[t].name = out.name
        ctx.g.outputs.append(t)


def _convert_node(ctx: _Context, node: onnx.NodeProto) -> None:
    if node.domain not in ("", "ai.onnx"):
        raise _Unsupported(f"custom-domain op {node.domain}.{node.op_type} is unsupported")
    if _fold(ctx, node):
        return
    converter = _CONVERTERS.get(node.op_type)
    if converter is None:
        raise _Unsupported(f"op type {node.op_type} is unsupported; supported: {', '.join(sorted(_CONVERTERS))}")
    converter(ctx, node)


def onnx_to_tflite(model: onnx.ModelProto | bytes) -> bytes:
    """Convert a float32 ONNX CNN (NCHW, batch 1, static shapes) to a ``.tflite`` model (NHWC).

    4-D inputs and outputs ``[1, C, H, W]`` become ``[1, H, W, C]``; tensors keep their ONNX names.
    Raises :class:`OnnxToTFLiteError` naming the node for anything that cannot be converted.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = onnx.load_from_string(bytes(model))
    if not isinstance(model, onnx.ModelProto):
        raise OnnxToTFLiteError(f"expected an onnx.ModelProto or its bytes, got {type(model).__name__}")
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # onnx's own message says what is inconsistent
        raise OnnxToTFLiteError(f"ONNX shape inference failed: {err}") from err
    ctx = _Context(model)
    nodes = list(model.graph.node)
    for node in nodes:  # constants first: torch writes them next to their first reader, after producers
        if node.op_type == "Constant":
            ctx.consts[node.output[0]] = np.asarray(_evaluate(node, [], ctx.opset)[0])
    nodes = _fuse_erf_gelu(ctx, [n for n in nodes if n.op_type != "Constant"])
    ctx.index_consumers(nodes)
    _add_inputs(ctx)
    for node in nodes:
        if id(node) in ctx.skipped:
            continue
        try:
            _convert_node(ctx, node)
        except _Unsupported as err:
            raise OnnxToTFLiteError(f"{_node_label(node)}: {err}") from None
    _add_outputs(ctx)
    return ctx.g.finish(model.graph.name or "onnx")
