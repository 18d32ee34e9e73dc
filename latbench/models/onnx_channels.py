"""Channel dependency groups of an ONNX CNN, and pruned ONNX variants: Torch-Pruning's dependency graph
(https://github.com/VainF/Torch-Pruning), worked out on a normalised ONNX graph instead of a torch module.

:func:`analyse_channels` walks the graph once, in order, and describes the channel axis (axis 1 of NCHW, the
feature axis of N×F) of every activation tensor as a concatenation of :class:`Segment` s. A segment either
belongs to a :class:`ChannelGroup` (channels that are pruned together) or is fixed (``group=None``: the image's
channels, channels a rule could not follow). :func:`prune_onnx` keeps chosen channels of every group and slices
every constant that indexes them.

Rules
-----
* A Conv with ``group=1`` (and a ConvTranspose with ``group=1``), a Gemm, or a MatMul of an N×F tensor by a
  constant 2-D weight starts a new group for its output channels, named ``f"{node.name}.out"``.
* Depthwise conv (``group == in == out``): the output has the input's segments.
* Grouped conv (``1 < group``, not depthwise): its output is a new group with ``multiple = group``, and the
  group of its input gets ``multiple = group`` too (the first of the brief's two options: the number of conv
  groups stays, the width *per conv group* shrinks; ``prune_onnx`` keeps the same number of channels in each
  conv group, the best ones within each). This covers RegNetX/RegNetY (group width fixed, in == out) and also
  in != out. A grouped conv whose input is several segments (e.g. a concatenation) makes those groups
  non-prunable. A group with ``multiple = m`` is pruned in ``m`` equal blocks of consecutive channels; the
  same number of channels is kept in every block.
* Elementwise ops between activations (Add/Sub/Mul/Div/Max/Min/Sum/Mean/Pow/Where/PRelu…) couple the groups at
  equal positions (union-find; the merged group keeps the name of the group created first, is prunable only
  if every member is, ``multiple`` is the lcm, ``min_width`` the max). Broadcasting with N×C×1×1 (SE's
  excitation ``x * sigmoid(s)``) couples the C axis the same way; an operand of channel size 1 does not
  couple. Constant operands pass through; per-channel constants are sliced by :func:`prune_onnx`.
  *Beyond the brief:* when coupled tensors are cut into segments at different places (GhostNet's
  ``cat([p, cheap(p)])`` added to a conv shortcut ``s``), the groups are split at the cuts into pieces
  (``f"{node.name}.out[a:b]"``), which are then coupled piece by piece, as Torch-Pruning's index mapping
  does. Groups with ``multiple > 1`` are never split: such a misalignment makes the groups non-prunable.
  Channels coupled to fixed channels (the image, a rule's fixed output) become non-prunable.
* Channel-preserving ops pass segments through: BatchNormalization/InstanceNormalization (parameters sliced),
  unary activations (Relu, Clip, HardSwish, HardSigmoid, Sigmoid, Tanh, Gelu, Erf, LeakyRelu, Softmax, …),
  pools (Max/Average/Lp/Global*), Reduce* over axes other than N and C, Resize and Pad that do not touch C
  (Resize ``sizes`` are updated), Dropout, Identity, Cast, Transpose keeping axes 0 and 1, MatMul of a rank≥3
  tensor by a constant (C is a batch axis there), and Reshape/Flatten/Squeeze/Unsqueeze that keep N, C and the
  number of values per channel (N×C×1×1 → N×C; explicit channel numbers in Reshape shapes are updated).
* Flatten/Reshape of N×C×H×W with H·W > 1 into features: those groups are non-prunable (``"flattened by …"``);
  the output is fixed.
* Concat on the channel axis: the output is the inputs' segments, one after the other (DenseNet). Concat on
  another axis couples its inputs like an elementwise op (the brief asked for an error when segments differ;
  coupling is what Torch-Pruning does and never fails on a valid graph).
* Split / Slice on the channel axis: whole segments pass to the outputs (split sizes and slice bounds are
  updated); a segment cut inside makes its group non-prunable (``f"sliced by {node.name}"``) and the pieces are
  fixed. A slice that keeps every channel is a pass-through.
* Channel shuffle (Reshape to N×g×C/g×H×W → Transpose(0,2,1,3,4) → Reshape back) and any other
  Reshape/Transpose mixing the channel axis: groups reaching it are non-prunable (``"feeds a channel shuffle
  (node)"``, ``"reshaped across the channel axis by node"``), outputs are fixed. Pruning ShuffleNet in
  multiples of g is out of scope.
* Any other op reading activations: the groups reaching it are non-prunable with a reason naming the node
  (``"consumed by Op node X, which no channel rule covers"``); its outputs are fixed. Never a crash.
* Groups reaching a graph output are non-prunable (``"graph output"``): the classifier, and anything feeding it
  without a conv/gemm in between.
* :class:`ChannelError` (naming the node) is raised for inconsistent graphs: an elementwise op on channel
  counts that do not broadcast, a weight whose input channels do not match its input, …
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

__all__ = ["Segment", "ChannelGroup", "ChannelGraph", "ChannelError", "analyse_channels", "bn_scale_scores",
           "channel_importance", "prune_onnx"]


class ChannelError(ValueError):
    """An ONNX graph whose channels are inconsistent, or a pruning request that does not fit the graph."""


@dataclass(frozen=True)
class Segment:
    group: str | None      # a channel group's name, or None for channels pruning never changes
    width: int             # full width of this segment


@dataclass(frozen=True)
class ChannelGroup:
    name: str              # f"{producer node name}.out" (a piece of it: f"….out[a:b]") for the node defining it
    width: int             # full width
    prunable: bool
    multiple: int = 1      # widths must be multiples of this (grouped convs keep their number of groups)
    min_width: int = 1
    reason: str = ""       # why not prunable


@dataclass
class ChannelGraph:
    groups: dict[str, ChannelGroup]            # every group, in graph order
    tensors: dict[str, tuple[Segment, ...]]    # the channel axis of every activation tensor, as segments

    def channels(self, tensor: str, widths: Mapping[str, int] | None = None) -> int:
        """Width of ``tensor``'s channel axis with the groups at ``widths`` (full when not given)."""
        if tensor not in self.tensors:
            raise ChannelError(f"{tensor!r} is not an activation tensor with a channel axis")
        widths = widths or {}
        return sum(s.width if s.group is None else int(widths.get(s.group, s.width)) for s in self.tensors[tensor])

    def prunable_groups(self) -> dict[str, int]:
        """Prunable groups and their full widths, in graph order."""
        return {n: g.width for n, g in self.groups.items() if g.prunable}


# ------------------------------------------------------------------------------------------------ graph access

_UNARY = frozenset({
    "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Gelu", "Erf", "LeakyRelu", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "Cast", "Identity", "Dropout", "Softmax", "LogSoftmax",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "BatchNormalization", "InstanceNormalization", "IsNaN", "IsInf",
})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "PRelu",
                          "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod"})
_REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_NORM_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


class _Model:
    """Constants, shapes and consumers of a graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.shapes: dict[str, tuple] = {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            d = _dims(vi)
            if d is not None:
                self.shapes[vi.name] = d
        for name, t in self.inits.items():
            self.shapes[name] = tuple(int(x) for x in t.dims)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self._cache: dict[str, np.ndarray | None] = {}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if not name:
            return None
        if name in self._cache:
            return self._cache[name]
        value = None
        if name in self.inits:
            value = numpy_helper.to_array(self.inits[name])
        elif name in self.const_nodes:
            a = self.const_nodes[name].attribute[0]
            if a.name == "value":
                value = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int"):
                value = np.array(helper.get_attribute_value(a))
            elif a.name in ("value_floats", "value_ints"):
                value = np.array(list(helper.get_attribute_value(a)))
        self._cache[name] = value
        return value

    def shape(self, name: str) -> tuple | None:
        if name in self.shapes:
            return self.shapes[name]
        c = self.const(name)
        return None if c is None else tuple(c.shape)


def _needs_inference(model: onnx.ModelProto) -> bool:
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    known |= {t.name for t in model.graph.initializer}
    return any(o and o not in known for n in model.graph.node if n.op_type != "Constant" for o in n.output)


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ------------------------------------------------------------------------------------------------ analysis

class _Analyser:
    def __init__(self, m: _Model):
        self.m = m
        # per internal group id
        self.parent: list[int] = []
        self.width: list[int] = []
        self.producer: list[tuple[str, int, int, int]] = []   # node name, lo, hi, width of the node's output
        self.order: list[tuple[int, int]] = []
        # per class root
        self.prunable: dict[int, bool] = {}
        self.reasons: dict[int, list[str]] = {}
        self.multiple: dict[int, int] = {}
        self.min_width: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        # tensors
        self.tensors: dict[str, list[tuple[int | None, int]]] = {}
        self.acts: set[str] = set()
        self.node_index = 0

    # -- groups
    def new_group(self, node: onnx.NodeProto, width: int, lo: int = 0, full: int | None = None,
                  order: tuple[int, int] | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.width.append(width)
        self.producer.append((node.name or f"{node.op_type}_{self.node_index}", lo, lo + width,
                              width if full is None else full))
        self.order.append(order if order is not None else (self.node_index, lo))
        self.prunable[gid], self.reasons[gid], self.multiple[gid], self.min_width[gid] = True, [], 1, 1
        self.members[gid] = [gid]
        return gid

    def find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def union(self, a: int, b: int, node: onnx.NodeProto) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.width[ra] != self.width[rb]:
            raise ChannelError(f"node {node.name!r} ({node.op_type}) couples channel groups of widths "
                               f"{self.width[ra]} and {self.width[rb]}")
        if self.order[rb] < self.order[ra]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.prunable[ra] = self.prunable[ra] and self.prunable.pop(rb)
        self.reasons[ra] += [r for r in self.reasons.pop(rb) if r not in self.reasons[ra]]
        self.multiple[ra] = math.lcm(self.multiple[ra], self.multiple.pop(rb))
        self.min_width[ra] = max(self.min_width[ra], self.min_width.pop(rb))
        self.members[ra] += self.members.pop(rb)
        return ra

    def mark(self, g: int | None, reason: str) -> None:
        if g is None:
            return
        r = self.find(g)
        self.prunable[r] = False
        if reason not in self.reasons[r]:
            self.reasons[r].append(reason)

    def mark_tensor(self, name: str, reason: str) -> None:
        for g, _ in self.tensors.get(name, ()):
            self.mark(g, reason)

    def set_multiple(self, g: int, multiple: int) -> None:
        r = self.find(g)
        self.multiple[r] = math.lcm(self.multiple[r], multiple)
        self.min_width[r] = max(self.min_width[r], self.multiple[r])

    def split(self, g: int, offset: int, node: onnx.NodeProto) -> bool:
        """Split the class of ``g`` into channels [0, offset) and [offset, width) in every member and every
        tensor. False (nothing changed) for a class with multiple > 1."""
        r = self.find(g)
        if self.multiple[r] > 1:
            return False
        firsts, seconds, pieces = [], [], {}
        for mem in self.members[r]:
            name, lo, hi, full = self.producer[mem]
            o = self.order[mem]
            a = self._piece(name, lo, lo + offset, full, (o[0], o[1]))
            b = self._piece(name, lo + offset, hi, full, (o[0], o[1] + offset))
            firsts.append(a)
            seconds.append(b)
            pieces[mem] = (a, b)
        for new in (firsts, seconds):
            root = new[0]
            for x in new[1:]:
                root = self.union(root, x, node)
            root = self.find(root)
            self.prunable[root] = self.prunable[r]
            self.reasons[root] = list(self.reasons[r])
            self.multiple[root], self.min_width[root] = 1, 1
        for name, segs in self.tensors.items():
            if any(s[0] in pieces for s in segs):
                out = []
                for s in segs:
                    if s[0] in pieces:
                        a, b = pieces[s[0]]
                        out += [(a, self.width[a]), (b, self.width[b])]
                    else:
                        out.append(s)
                self.tensors[name] = out
        for k in ("prunable", "reasons", "multiple", "min_width", "members"):
            getattr(self, k).pop(r, None)
        return True

    def _piece(self, name: str, lo: int, hi: int, full: int, order: tuple[int, int]) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.width.append(hi - lo)
        self.producer.append((name, lo, hi, full))
        self.order.append(order)
        self.prunable[gid], self.reasons[gid], self.multiple[gid], self.min_width[gid] = True, [], 1, 1
        self.members[gid] = [gid]
        return gid

    # -- tensors
    def cwidth(self, name: str) -> int:
        return sum(w for _, w in self.tensors[name])

    def set_out(self, node: onnx.NodeProto, name: str, segs) -> None:
        if not name:
            return
        self.acts.add(name)
        shape = self.m.shape(name)
        if shape is None or len(shape) < 2:
            return
        segs = list(segs)
        if shape[1] is not None and sum(w for _, w in segs) != shape[1]:
            raise ChannelError(f"node {node.name!r} ({node.op_type}): output {name!r} has {shape[1]} channels, but "
                               f"its inputs' channels give {sum(w for _, w in segs)}")
        self.tensors[name] = segs

    def fixed(self, node: onnx.NodeProto) -> None:
        for o in node.output:
            if not o:
                continue
            shape = self.m.shape(o)
            if shape is not None and len(shape) >= 2 and shape[1] is not None:
                self.set_out(node, o, [(None, int(shape[1]))])
            else:
                self.acts.add(o)

    def fallback(self, node: onnx.NodeProto, reason: str | None = None) -> None:
        reason = reason or f"consumed by {node.op_type} node {node.name}, which no channel rule covers"
        for i in node.input:
            if i in self.tensors:
                self.mark_tensor(i, reason)
        self.fixed(node)

    def passthrough(self, node: onnx.NodeProto, x: str) -> None:
        for o in node.output:
            self.set_out(node, o, self.tensors[x])

    # -- alignment of coupled tensors
    @staticmethod
    def _cuts(segs) -> set[int]:
        out, pos = set(), 0
        for _, w in segs:
            pos += w
            out.add(pos)
        return out

    def align(self, names: list[str], node: onnx.NodeProto) -> list[tuple[int | None, int]] | None:
        """Couple tensors position by position; their coupled segments as the output, or None if they cannot
        be aligned (the groups are then marked non-prunable)."""
        while True:
            lists = [self.tensors[n] for n in names]
            cuts = set().union(*(self._cuts(s) for s in lists))
            todo = None
            for segs in lists:
                pos = 0
                for g, w in segs:
                    inside = [c for c in cuts if pos < c < pos + w]
                    if g is not None and inside:
                        todo = (g, min(inside) - pos)
                        break
                    pos += w
                if todo:
                    break
            if todo is None:
                break
            if not self.split(todo[0], todo[1], node):
                for n in names:
                    self.mark_tensor(n, f"coupled across misaligned channel groups by {node.name}")
                return None
        lists = [self.tensors[n] for n in names]
        bounds = sorted(set().union(*(self._cuts(s) for s in lists)))
        columns: list[list[int | None]] = [[] for _ in bounds]
        for segs in lists:
            segs = [sg for sg in segs if sg[1] > 0]
            ends = np.cumsum([w for _, w in segs])
            j = 0
            for k, b in enumerate(bounds):
                while ends[j] < b:
                    j += 1
                columns[k].append(segs[j][0])
        out, prev = [], 0
        for b, col in zip(bounds, columns):
            groups = [g for g in col if g is not None]
            if len(groups) < len(col):
                for g in groups:
                    self.mark(g, f"coupled to fixed channels by {node.name}")
            if groups:
                root = groups[0]
                for g in groups[1:]:
                    root = self.union(root, g, node)
                out.append((groups[0], b - prev))
            else:
                out.append((None, b - prev))
            prev = b
        return out

    def pieces(self, node: onnx.NodeProto, segs, lo: int, hi: int) -> list[tuple[int | None, int]]:
        out, pos = [], 0
        for g, w in segs:
            a, b = max(pos, lo), min(pos + w, hi)
            if a < b:
                if b - a == w:
                    out.append((g, w))
                else:
                    self.mark(g, f"sliced by {node.name}")
                    out.append((None, b - a))
            elif w == 0:
                pass
            pos += w
        return out

    # -- the walk
    def run(self) -> None:
        graph = self.m.graph
        inits = set(self.m.inits)
        for inp in graph.input:
            if inp.name in inits:
                continue
            self.acts.add(inp.name)
            shape = self.m.shape(inp.name)
            if shape is not None and len(shape) >= 2 and shape[1] is not None:
                self.tensors[inp.name] = [(None, int(shape[1]))]
        for index, node in enumerate(graph.node):
            self.node_index = index
            if not any(i in self.acts for i in node.input):
                continue
            if node.op_type in ("Shape", "Size"):
                continue            # its result is a shape, not channels; it follows a pruned tensor by itself
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                if node.op_type in _UNARY:
                    handler = self.op_unary
                elif node.op_type in _ELEMENTWISE:
                    handler = self.op_elementwise
                elif node.op_type in _REDUCE:
                    handler = self.op_reduce
                elif node.op_type in _RESHAPES:
                    handler = self.op_reshape
            if handler is None:
                self.fallback(node)
            else:
                handler(node)
        for out in graph.output:
            self.mark_tensor(out.name, "graph output")

    def x_of(self, node: onnx.NodeProto) -> str | None:
        x = node.input[0] if node.input else None
        return x if x in self.tensors else None

    def op_unary(self, node):
        x = self.x_of(node)
        if x is None:
            return self.fallback(node)
        self.passthrough(node, x)

    def op_Conv(self, node):
        x, w = self.x_of(node), self.m.const(node.input[1])
        if x is None or w is None or w.ndim < 3:
            return self.fallback(node, f"consumed by Conv node {node.name} without a constant weight")
        groups, c, o = int(_attrs(node).get("group", 1)), self.cwidth(x), int(w.shape[0])
        if w.shape[1] * groups != c:
            raise ChannelError(f"Conv node {node.name!r}: weight {list(w.shape)} with group={groups} expects "
                               f"{w.shape[1] * groups} input channels, its input {x!r} has {c}")
        if groups == 1:
            self.set_out(node, node.output[0], [(self.new_group(node, o), o)])
        elif groups == c == o:
            self.passthrough(node, x)
        else:
            segs = self.tensors[x]
            if len(segs) == 1:
                if segs[0][0] is not None:
                    self.set_multiple(segs[0][0], groups)
            else:
                self.mark_tensor(x, f"feeds grouped conv {node.name} as several channel groups")
            g = self.new_group(node, o)
            self.set_multiple(g, groups)
            self.set_out(node, node.output[0], [(g, o)])

    def op_ConvTranspose(self, node):
        x, w = self.x_of(node), self.m.const(node.input[1])
        if x is None or w is None or int(_attrs(node).get("group", 1)) != 1:
            return self.fallback(node)
        if w.shape[0] != self.cwidth(x):
            raise ChannelError(f"ConvTranspose node {node.name!r}: weight {list(w.shape)} does not match the "
                               f"{self.cwidth(x)} channels of {x!r}")
        self.set_out(node, node.output[0], [(self.new_group(node, int(w.shape[1])), int(w.shape[1]))])

    def _linear(self, node, x: str, w: np.ndarray, trans_b: bool):
        fin, fout = (w.shape[1], w.shape[0]) if trans_b else (w.shape[0], w.shape[1])
        if fin != self.cwidth(x):
            raise ChannelError(f"{node.op_type} node {node.name!r}: weight {list(w.shape)} expects {fin} input "
                               f"features, its input {x!r} has {self.cwidth(x)}")
        self.set_out(node, node.output[0], [(self.new_group(node, int(fout)), int(fout))])

    def op_Gemm(self, node):
        x, w, a = self.x_of(node), self.m.const(node.input[1]), _attrs(node)
        if x is None or w is None or w.ndim != 2 or a.get("transA", 0) or len(self.m.shape(x) or ()) != 2:
            return self.fallback(node)
        self._linear(node, x, w, bool(a.get("transB", 0)))

    def op_MatMul(self, node):
        x, w = self.x_of(node), self.m.const(node.input[1])
        if x is None or w is None or w.ndim != 2:
            return self.fallback(node)
        rank = len(self.m.shape(x) or ())
        if rank == 2:
            self._linear(node, x, w, False)
        elif rank > 2:
            self.passthrough(node, x)       # channels are a batch axis of this product
        else:
            self.fallback(node)

    def op_elementwise(self, node):
        y = node.output[0]
        out_shape = self.m.shape(y)
        if out_shape is None or len(out_shape) < 2 or out_shape[1] is None:
            return self.fallback(node)
        r, c = len(out_shape), int(out_shape[1])
        coupled = []
        for i in node.input:
            if not i:
                continue
            shape = self.m.shape(i)
            if shape is None:
                return self.fallback(node)
            a = 1 - (r - len(shape))
            dim = shape[a] if a >= 0 else 1
            if i in self.tensors and len(shape) == r:
                if dim == c:
                    coupled.append(i)
                elif dim != 1:
                    raise ChannelError(f"{node.op_type} node {node.name!r}: input {i!r} has {dim} channels, the "
                                       f"output {c}")
            elif dim not in (1, c):
                raise ChannelError(f"{node.op_type} node {node.name!r}: operand {i!r} of shape {list(shape)} does "
                                   f"not broadcast to {c} channels")
            elif dim == c and c > 1 and self.m.const(i) is None:
                return self.fallback(node, f"multiplied by a per-channel operand that is not a constant at {node.name}")
        if not coupled:
            return self.set_out(node, y, [(None, c)])
        segs = self.align(coupled, node)
        if segs is None:
            return self.fixed(node)
        self.set_out(node, y, segs)

    def op_Concat(self, node):
        y = node.output[0]
        shape = self.m.shape(y)
        if shape is None or len(shape) < 2:
            return self.fallback(node)
        axis = _norm_axis(int(_attrs(node).get("axis", 0)), len(shape))
        if axis == 1:
            segs = []
            for i in node.input:
                if i in self.tensors:
                    segs += self.tensors[i]
                else:
                    s = self.m.shape(i)
                    if s is None or len(s) != len(shape):
                        return self.fallback(node)
                    if s[1]:
                        segs.append((None, int(s[1])))
            return self.set_out(node, y, segs)
        if axis == 0:
            return self.fallback(node, f"concatenated along the batch axis by {node.name}")
        self.op_elementwise(node)

    def op_Split(self, node):
        x = self.x_of(node)
        shape = self.m.shape(node.input[0]) if x else None
        if x is None or shape is None:
            return self.fallback(node)
        axis = _norm_axis(int(_attrs(node).get("axis", 0)), len(shape))
        if axis == 0:
            return self.fallback(node, f"split along the batch axis by {node.name}")
        if axis != 1:
            return self.passthrough(node, x)
        pos, segs = 0, self.tensors[x]
        outs = []
        for o in node.output:
            s = self.m.shape(o)
            if s is None or s[1] is None:
                return self.fallback(node)
            outs.append((o, pos, pos + int(s[1])))
            pos += int(s[1])
        for o, lo, hi in outs:
            self.set_out(node, o, self.pieces(node, segs, lo, hi))

    def op_Slice(self, node):
        x = self.x_of(node)
        shape = self.m.shape(node.input[0]) if x else None
        if x is None or shape is None:
            return self.fallback(node)
        ins = list(node.input) + [""] * (5 - len(node.input))
        starts, ends, axes, steps = (self.m.const(i) if i else None for i in ins[1:5])
        if starts is None or ends is None or (ins[3] and axes is None) or (ins[4] and steps is None):
            return self.fallback(node, f"sliced by {node.name} with bounds that are not constants")
        axes = list(range(len(starts))) if axes is None else [_norm_axis(int(a), len(shape)) for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        if 0 in axes:
            return self.fallback(node, f"sliced along the batch axis by {node.name}")
        if 1 not in axes:
            return self.passthrough(node, x)
        k = axes.index(1)
        c = self.cwidth(x)
        if steps[k] != 1:
            return self.fallback(node, f"sliced by {node.name}")
        lo, hi = _clamp(int(starts[k]), c), _clamp(int(ends[k]), c)
        if lo == 0 and hi >= c:
            return self.passthrough(node, x)
        self.set_out(node, node.output[0], self.pieces(node, self.tensors[x], lo, max(lo, hi)))

    def op_Transpose(self, node):
        x = self.x_of(node)
        perm = _attrs(node).get("perm")
        if x is not None and perm is not None and list(perm[:2]) == [0, 1]:
            return self.passthrough(node, x)
        self.fallback(node, f"transposed across the channel axis by {node.name}")

    def op_reshape(self, node):
        x = self.x_of(node)
        si, so = self.m.shape(node.input[0]), self.m.shape(node.output[0])
        if x is None or si is None or so is None or None in si or None in so:
            return self.fallback(node)
        if len(so) >= 2 and so[0] == si[0] and so[1] == si[1] and math.prod(so[2:]) == math.prod(si[2:]):
            return self.passthrough(node, x)
        if len(so) == 2 and so[0] == si[0] and so[1] == si[1] * math.prod(si[2:]):
            return self.fallback(node, f"flattened by {node.name} ({math.prod(si[2:])} values per channel)")
        if node.op_type == "Reshape" and len(si) == 4 and len(so) == 5 and so[1] * so[2] == si[1]:
            for t in self.m.consumers.get(node.output[0], []):
                if t.op_type == "Transpose" and list(_attrs(t).get("perm", [])) == [0, 2, 1, 3, 4]:
                    return self.fallback(node, f"feeds a channel shuffle ({node.name})")
        self.fallback(node, f"reshaped across the channel axis by {node.name}")

    def op_reduce(self, node):
        x = self.x_of(node)
        shape = self.m.shape(node.input[0]) if x else None
        if x is None or shape is None:
            return self.fallback(node)
        axes = _attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.m.const(node.input[1])
        if axes is None or len(axes) == 0:
            return self.fallback(node, f"reduced over every axis by {node.name}")
        axes = {_norm_axis(int(a), len(shape)) for a in axes}
        if axes & {0, 1}:
            return self.fallback(node, f"reduced over the channel axis by {node.name}")
        self.passthrough(node, x)

    def op_Pad(self, node):
        x = self.x_of(node)
        shape = self.m.shape(node.input[0]) if x else None
        pads = self.m.const(node.input[1]) if len(node.input) > 1 else _attrs(node).get("pads")
        if x is None or shape is None or pads is None or (len(node.input) > 3 and node.input[3]):
            return self.fallback(node)
        pads, r = [int(p) for p in pads], len(shape)
        if len(pads) != 2 * r or pads[1] or pads[r + 1]:
            return self.fallback(node, f"padded along the channel axis by {node.name}")
        self.passthrough(node, x)

    def op_Resize(self, node):
        x = self.x_of(node)
        si, so = self.m.shape(node.input[0]), self.m.shape(node.output[0])
        if x is None or si is None or so is None or si[1] != so[1] or si[0] != so[0]:
            return self.fallback(node)
        if len(node.input) > 3 and node.input[3] and self.m.const(node.input[3]) is None:
            return self.fallback(node, f"resized by {node.name} to sizes that are not constants")
        self.passthrough(node, x)

    op_Upsample = op_Resize


def _clamp(p: int, c: int) -> int:
    if p < 0:
        p += c
    return min(max(p, 0), c)


def analyse_channels(model: onnx.ModelProto) -> ChannelGraph:
    """The channel groups of a normalised ONNX CNN and the segments of every activation tensor."""
    if _needs_inference(model):
        model = shape_inference.infer_shapes(model)
    a = _Analyser(_Model(model))
    a.run()

    def name(g: int) -> str:
        node, lo, hi, full = a.producer[g]
        return f"{node}.out" if lo == 0 and hi == full else f"{node}.out[{lo}:{hi}]"

    roots = sorted({a.find(g) for segs in a.tensors.values() for g, _ in segs if g is not None},
                   key=lambda r: a.order[r])
    groups = {}
    for r in roots:
        if a.prunable[r] and a.multiple[r] >= a.width[r] > 1:
            a.mark(r, "grouped conv with one channel per conv group: only the full width fits")
        reason = "; ".join(a.reasons[r]) if not a.prunable[r] else ""
        groups[name(r)] = ChannelGroup(name(r), a.width[r], a.prunable[r], a.multiple[r],
                                       max(1, a.min_width[r]), reason)
    tensors = {t: tuple(Segment(None if g is None else name(a.find(g)), w) for g, w in segs)
               for t, segs in a.tensors.items()}
    return ChannelGraph(groups, tensors)


# ------------------------------------------------------------------------------------------------ importance

def _producers(m: _Model, graph: ChannelGraph):
    """(node, output norms per channel) for every conv/gemm/matmul that defines groups, with its segments."""
    for node in m.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not node.output:
            continue
        y, x = node.output[0], node.input[0]
        if y not in graph.tensors or x not in graph.tensors:
            continue
        w = m.const(node.input[1])
        if w is None:
            continue
        w = np.abs(w.astype(np.float64))
        a = _attrs(node)
        if node.op_type == "Conv":
            groups, c = int(a.get("group", 1)), graph.channels(x)
            if groups > 1 and groups == c == w.shape[0]:
                continue            # depthwise: passes its input's groups on
            norms = w.reshape(w.shape[0], -1).sum(axis=1)
        elif node.op_type == "ConvTranspose":
            norms = w.sum(axis=tuple(k for k in range(w.ndim) if k != 1))
        elif node.op_type == "Gemm":
            norms = w.sum(axis=1) if a.get("transB", 0) else w.sum(axis=0)
        else:
            if len(m.shape(x) or ()) != 2:
                continue
            norms = w.sum(axis=0)
        consumers = m.consumers.get(y, [])
        if len(consumers) == 1 and consumers[0].op_type == "BatchNormalization" and consumers[0].input[0] == y:
            gamma = m.const(consumers[0].input[1])
            if gamma is not None:
                norms = norms * np.abs(gamma.astype(np.float64))
        yield node, norms, graph.tensors[y]


def channel_importance(model: onnx.ModelProto, graph: ChannelGraph) -> dict[str, np.ndarray]:
    """Per group, per channel: the sum over the group's producing convs/gemms of the filter's L1 norm (times
    |gamma| of a BatchNormalization that alone reads the conv's output). For ranking channels."""
    m = _Model(model)
    out = {name: np.zeros(g.width) for name, g in graph.groups.items()}
    for _, norms, segs in _producers(m, graph):
        _add_by_segment(out, norms, segs)
    return out


def _add_by_segment(out: dict[str, np.ndarray], values: np.ndarray, segs) -> list[str]:
    """Add each group's slice of the per-channel ``values`` (laid out as ``segs``) to ``out``; the groups added to."""
    pos, added = 0, []
    for s in segs:
        if s.group is not None and len(values) >= pos + s.width:
            out[s.group] += values[pos:pos + s.width]
            added.append(s.group)
        pos += s.width
    return added


def bn_scale_scores(model: onnx.ModelProto, graph: ChannelGraph) -> dict[str, np.ndarray | None]:
    """Per group, per channel: the mean ``|γ|`` of the BatchNormalization nodes that alone read the group's
    producing convs (Network Slimming's criterion, as :func:`latbench.methods.ofar.rates.bn_gamma_scores` scores
    a zoo network); ``None`` for a group that no conv followed by a BN writes (a squeeze-excitation width, a
    head conv after the pool). Depthwise convs keep their input's group and do not score it."""
    m = _Model(model)
    sums = {name: np.zeros(g.width) for name, g in graph.groups.items()}
    writers = {name: 0 for name in graph.groups}
    for node, _, segs in _producers(m, graph):
        consumers = m.consumers.get(node.output[0], [])
        if not (len(consumers) == 1 and consumers[0].op_type == "BatchNormalization"):
            continue
        gamma = m.const(consumers[0].input[1])
        if gamma is None:
            continue
        for group in _add_by_segment(sums, np.abs(gamma.astype(np.float64)), segs):
            writers[group] += 1
    return {name: sums[name] / writers[name] if writers[name] else None for name in graph.groups}


# ------------------------------------------------------------------------------------------------ pruning

def _choose(graph: ChannelGraph, model: onnx.ModelProto, widths: Mapping[str, int],
            keep: Mapping[str, Sequence[int]] | None) -> dict[str, np.ndarray]:
    keep = dict(keep or {})
    for g in list(widths) + list(keep):
        if g not in graph.groups:
            raise ChannelError(f"no channel group {g!r} in this graph (groups: {', '.join(graph.groups)})")
    importance = None
    chosen: dict[str, np.ndarray] = {}
    for name, grp in graph.groups.items():
        w = int(widths[name]) if name in widths else (len(keep[name]) if name in keep else grp.width)
        if name in keep and len(keep[name]) != w:
            raise ChannelError(f"group {name!r}: keep has {len(keep[name])} channels, its width is {w}")
        if not grp.prunable:
            if w != grp.width or (name in keep and list(keep[name]) != list(range(grp.width))):
                raise ChannelError(f"group {name!r} is not prunable ({grp.reason}); it keeps {grp.width} channels")
            continue
        if w % grp.multiple or w < grp.min_width or w > grp.width:
            raise ChannelError(f"group {name!r}: width {w} must be a multiple of {grp.multiple} between "
                               f"{grp.min_width} and {grp.width}")
        blocks, size = grp.multiple, grp.width // grp.multiple
        if name in keep:
            idx = np.array(sorted(int(k) for k in keep[name]), dtype=np.int64)
            if len(set(idx.tolist())) != len(idx) or (len(idx) and (idx[0] < 0 or idx[-1] >= grp.width)):
                raise ChannelError(f"group {name!r}: keep must be distinct channels in [0, {grp.width})")
            counts = np.bincount(idx // size, minlength=blocks)
            if blocks > 1 and len(set(counts.tolist())) != 1:
                raise ChannelError(f"group {name!r} (grouped conv, {blocks} conv groups of {size}): keep must hold "
                                   f"the same number of channels in every conv group, got {counts.tolist()}")
        elif w == grp.width:
            continue
        else:
            if importance is None:
                importance = channel_importance(model, graph)
            imp, per = importance[name], w // blocks
            idx = np.sort(np.concatenate([b * size + np.argsort(-imp[b * size:(b + 1) * size], kind="stable")[:per]
                                          for b in range(blocks)]))
        if len(idx) != grp.width:
            chosen[name] = idx
    return chosen


class _Pruner:
    def __init__(self, model: onnx.ModelProto, graph: ChannelGraph, chosen: dict[str, np.ndarray]):
        self.model = model
        self.m = _Model(model)
        self.graph = graph
        self.chosen = chosen
        self.names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
        self.names |= {i.name for i in model.graph.input}

    def idx(self, tensor: str) -> np.ndarray | None:
        """Kept channel indices of a tensor, or None when it keeps every channel (or has no channel axis)."""
        segs = self.graph.tensors.get(tensor)
        if segs is None or not any(s.group in self.chosen for s in segs):
            return None
        parts, pos = [], 0
        for s in segs:
            parts.append(pos + (self.chosen[s.group] if s.group in self.chosen else np.arange(s.width)))
            pos += s.width
        return np.concatenate(parts).astype(np.int64)

    def full(self, tensor: str) -> int:
        return self.graph.channels(tensor)

    def set_const(self, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        base = node.input[k] or f"{node.name}_input{k}"
        name, n = f"{base}_pruned", 0
        while name in self.names:
            n += 1
            name = f"{base}_pruned{n}"
        self.names.add(name)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        while len(node.input) <= k:
            node.input.append("")
        node.input[k] = name

    def take(self, node, k: int, idx, axis: int) -> None:
        if idx is None or k >= len(node.input) or not node.input[k]:
            return
        value = self.m.const(node.input[k])
        if value is None:
            raise ChannelError(f"node {node.name!r}: input {node.input[k]!r} must be sliced but is not a constant")
        self.set_const(node, k, np.take(value, idx, axis=axis))

    def run(self) -> None:
        for node in self.model.graph.node:
            op = node.op_type
            handler = getattr(self, f"op_{op}", None)
            if handler is not None:
                handler(node)
            elif op in _NORM_PARAMS:
                for k in _NORM_PARAMS[op]:
                    self.take(node, k, self.idx(node.input[0]), 0)
            elif op in _ELEMENTWISE:
                self.broadcast_consts(node)
            elif op == "Concat" and node.output[0] in self.graph.tensors:
                rank = len(self.m.shape(node.output[0]))
                if _norm_axis(int(_attrs(node).get("axis", 0)), rank) != 1:
                    self.broadcast_consts(node)      # concatenated along H/W: constants carry the channels

    def broadcast_consts(self, node) -> None:
        y = node.output[0]
        idx = self.idx(y)
        if idx is None:
            return
        r, c = len(self.m.shape(y)), self.full(y)
        for k, i in enumerate(node.input):
            value = self.m.const(i)
            if value is None or i in self.graph.tensors:
                continue
            a = 1 - (r - value.ndim)
            if a >= 0 and value.shape[a] == c and c > 1:
                self.set_const(node, k, np.take(value, idx, axis=a))

    def op_Conv(self, node) -> None:
        x, y = node.input[0], node.output[0]
        ix, iy = self.idx(x), self.idx(y)
        if ix is None and iy is None:
            return
        w = self.m.const(node.input[1])
        groups = int(_attrs(node).get("group", 1))
        cin, cout = self.full(x), w.shape[0]
        if groups == 1:
            if iy is not None:
                w = w[iy]
            if ix is not None:
                w = w[:, ix]
        elif groups == cin == cout:
            keep = ix if ix is not None else iy
            w = w[keep]
            for a in node.attribute:
                if a.name == "group":
                    a.i = len(keep)
            iy = keep
        else:
            ix = np.arange(cin) if ix is None else ix
            iy = np.arange(cout) if iy is None else iy
            gi, go, rows = cin // groups, cout // groups, []
            for j in range(groups):
                oj = iy[(iy >= j * go) & (iy < (j + 1) * go)]
                ij = ix[(ix >= j * gi) & (ix < (j + 1) * gi)] - j * gi
                rows.append(w[oj][:, ij])
            if len({r.shape for r in rows}) != 1:
                raise ChannelError(f"grouped Conv node {node.name!r}: the kept channels differ in number between its "
                                   f"{groups} conv groups")
            w = np.concatenate(rows, axis=0)
        self.set_const(node, 1, w)
        self.take(node, 2, iy, 0)

    def op_ConvTranspose(self, node) -> None:
        ix, iy = self.idx(node.input[0]), self.idx(node.output[0])
        if ix is None and iy is None:
            return
        w = self.m.const(node.input[1])
        if ix is not None:
            w = w[ix]
        if iy is not None:
            w = w[:, iy]
        self.set_const(node, 1, w)
        self.take(node, 2, iy, 0)

    def _linear(self, node, trans_b: bool) -> None:
        ix, iy = self.idx(node.input[0]), self.idx(node.output[0])
        if ix is None and iy is None:
            return
        w = self.m.const(node.input[1])
        ax_in, ax_out = (1, 0) if trans_b else (0, 1)
        if ix is not None:
            w = np.take(w, ix, axis=ax_in)
        if iy is not None:
            w = np.take(w, iy, axis=ax_out)
        self.set_const(node, 1, w)
        if node.op_type == "Gemm" and len(node.input) > 2 and iy is not None:
            c = self.m.const(node.input[2])
            if c is not None and c.ndim >= 1 and c.shape[-1] == self.full(node.output[0]) > 1:
                self.set_const(node, 2, np.take(c, iy, axis=-1))

    def op_Gemm(self, node) -> None:
        self._linear(node, bool(_attrs(node).get("transB", 0)))

    def op_MatMul(self, node) -> None:
        if node.input[0] in self.graph.tensors and len(self.m.shape(node.input[0]) or ()) == 2:
            self._linear(node, False)

    def op_PRelu(self, node) -> None:
        self.broadcast_consts(node)

    def op_Reshape(self, node) -> None:
        iy = self.idx(node.output[0])
        shape = self.m.const(node.input[1]) if len(node.input) > 1 else None
        if iy is None or shape is None or len(shape) < 2 or shape[1] <= 0:
            return
        shape = shape.copy()
        shape[1] = len(iy)
        self.set_const(node, 1, shape)

    def op_Resize(self, node) -> None:
        iy = self.idx(node.output[0])
        sizes = self.m.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if iy is None or sizes is None:
            return
        sizes = sizes.copy()
        sizes[1] = len(iy)
        self.set_const(node, 3, sizes)

    def op_Split(self, node) -> None:
        x = node.input[0]
        if self.idx(x) is None:
            return
        shape = self.m.shape(x)
        if _norm_axis(int(_attrs(node).get("axis", 0)), len(shape)) != 1:
            return
        sizes = np.array([self.graph.channels(o, {g: len(i) for g, i in self.chosen.items()})
                          for o in node.output], dtype=np.int64)
        if len(node.input) > 1 and node.input[1]:
            self.set_const(node, 1, sizes)
        elif any(a.name == "split" for a in node.attribute):
            for a in node.attribute:
                if a.name == "split":
                    del a.ints[:]
                    a.ints.extend(sizes.tolist())
        else:
            kept = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
            self.set_const(node, 1, sizes)

    def op_Slice(self, node) -> None:
        x = node.input[0]
        ix = self.idx(x)
        if ix is None:
            return
        r, c = len(self.m.shape(x)), self.full(x)
        starts, ends = self.m.const(node.input[1]), self.m.const(node.input[2])
        axes = self.m.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        axes = list(range(len(starts))) if axes is None else [_norm_axis(int(a), r) for a in axes]
        if 1 not in axes:
            return
        k = axes.index(1)
        starts, ends = starts.copy(), ends.copy()
        starts[k] = int(np.sum(ix < _clamp(int(starts[k]), c)))
        ends[k] = int(np.sum(ix < _clamp(int(ends[k]), c)))
        self.set_const(node, 1, starts)
        self.set_const(node, 2, ends)


def kept_channels(order: Sequence[int], width: int, full: int, blocks: int = 1) -> np.ndarray:
    """The channels of a group kept at ``width``, in their original order: the first ``width`` of ``order``
    (most important first); a group of ``blocks`` conv groups keeps the first ``width / blocks`` of each block
    in that order (grouped convs need equal counts). Nested: a narrower width keeps a subset of a wider one's."""
    order = np.asarray(order, dtype=np.int64)
    if blocks <= 1:
        return np.sort(order[:width])
    size, per = full // blocks, width // blocks
    return np.sort(np.concatenate([order[order // size == b][:per] for b in range(blocks)]))


def prune_onnx(model: onnx.ModelProto, graph: ChannelGraph, widths: Mapping[str, int],
               keep: Mapping[str, Sequence[int]] | None = None, check: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` in which every prunable group keeps ``widths[g]`` channels (full when absent): the
    channels ``keep[g]`` when given, else the ``widths[g]`` most important ones (:func:`channel_importance`),
    in their original order. ``graph`` is :func:`analyse_channels` of ``model``. ``check=False`` skips the
    final shape inference and ONNX check (for a graph that is only read, not shipped: the supernet's)."""
    chosen = _choose(graph, model, widths, keep)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if _needs_inference(out):
        out = shape_inference.infer_shapes(out)
    if chosen:
        _Pruner(out, graph, chosen).run()
    g = out.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    nodes = [n for n in g.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    if len(nodes) != len(g.node):               # Constant nodes whose values were replaced by sliced copies
        del g.node[:]
        g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    inputs = [i for i in g.input if i.name in used or i.name not in {t.name for t in model.graph.initializer}]
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]
    if not check:
        return out
    try:
        out = shape_inference.infer_shapes(out, strict_mode=True)
        onnx.checker.check_model(out)
    except Exception as err:   # onnx raises InferenceError / ValidationError variants
        raise ChannelError(f"the pruned graph is not valid ONNX ({type(err).__name__}: {err})") from err
    return out
