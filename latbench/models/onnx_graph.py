"""Read any ONNX CNN as a list of the kernels a runtime executes, nn-Meter style.

Every node of the graph ends up in exactly one kernel:

- **conv** kernels: [zero Pad +] Conv [+ BatchNormalization] [+ residual Add] [+ activation] (a Pad whose only
  reader is the conv is fused into its padding, as onnxruntime and XNNPACK run it), where the activation is ReLU,
  ReLU6 (Clip 0..6), hard-swish, hard-sigmoid, SiLU (Sigmoid·Mul), GELU (the op or the Erf pattern torch
  writes), LeakyReLU, PReLU, sigmoid or tanh; dense, depthwise and grouped convs;
- **se** kernels: squeeze-excitation as one kernel (global pool → 1×1 conv → act → 1×1 conv → sigmoid or
  hard-sigmoid → Mul with the block's input);
- **linear** kernels (Gemm / MatMul with a constant weight), pools (max, k×k average, global average);
- **op** kernels for what pruning does not choose widths of: concat, slice, split, channel shuffle
  (Reshape–Transpose–Reshape), resize, add, mul, standalone activations and batch norms, flatten, pads no conv
  absorbs, softmax.

Channel widths come from :mod:`latbench.models.onnx_channels` (which channels residual adds, SE gates,
depthwise and grouped convs couple; what concatenation stacks): each kernel reads its input and output widths
off the channel segments of the tensors it touches, so a pruned variant of the model is predicted by the same
layers at other group widths.

A node no rule covers stops the import with its name and op, or with ``skip_unsupported`` joins the model's
*remainder*, a subgraph timed as a whole (see :func:`remainder_model`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .spec import LayerDef, ModelSpec


class OnnxModelError(ValueError):
    """An ONNX file that cannot be read as a CNN."""


_ACT_OPS = {"Relu": "relu", "HardSwish": "hswish", "HardSigmoid": "hsigmoid", "Gelu": "gelu",
            "LeakyRelu": "leakyrelu", "PRelu": "prelu", "Tanh": "tanh"}
_EW_OPS = {"Add": "add", "Mul": "mul", "Sub": "sub", "Div": "div", "Max": "max", "Min": "min"}
_FLATTEN_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Kernel:
    name: str
    kind: str
    input: str                      # the tensor it reads (its channels are the kernel's in_channels)
    output: str                     # the tensor it leaves (its channels are the output width)
    nodes: list = field(default_factory=list)
    extra_inputs: tuple[str, ...] = ()
    residual: str | None = None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    act: str = "none"
    groups: int = 1
    op: str = ""
    mid: str | None = None          # an SE kernel's squeeze tensor (its width is the out_channels axis)


class _Graph:
    """Lookups over one normalised ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.shapes: dict[str, list] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim]
        for t in g.initializer:
            self.shapes[t.name] = list(t.dims)
        self.consumers: dict[str, list] = {}
        self.producer: dict[str, object] = {}
        for node in self.nodes:
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
            for o in node.output:
                self.producer[o] = node
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(t)

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def only_consumer(self, tensor: str):
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def rank(self, tensor: str) -> int:
        return len(self.shapes.get(tensor, []))


def _scalar(g: _Graph, name: str) -> float | None:
    v = g.const(name) if name else None
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _activation_at(g: _Graph, y: str) -> tuple[str, str, list] | None:
    """(act, output tensor, nodes) when ``y`` flows into an activation a runtime fuses, else None."""
    users = g.consumers.get(y, [])
    if y in g.outputs or not users:
        return None
    if len(users) == 1:
        n = users[0]
        if n.op_type in _ACT_OPS and n.input[0] == y:
            return _ACT_OPS[n.op_type], n.output[0], [n]
        if n.op_type == "Clip":
            lo, hi = (_scalar(g, n.input[i]) if len(n.input) > i else None for i in (1, 2))
            if lo == 0.0 and hi == 6.0:
                return "relu6", n.output[0], [n]
            if lo == 0.0 and hi is None:
                return "relu", n.output[0], [n]
        if n.op_type == "Sigmoid":
            return "sigmoid", n.output[0], [n]
        return None
    if len(users) == 2:
        # x · gate(x): SiLU (Sigmoid) and hard-swish written as x · HardSigmoid(x)
        gate = next((u for u in users if u.op_type in ("Sigmoid", "HardSigmoid")), None)
        mul = next((u for u in users if u.op_type == "Mul"), None)
        if gate is not None and mul is not None and set(mul.input) == {y, gate.output[0]}:
            return ("silu" if gate.op_type == "Sigmoid" else "hswish"), mul.output[0], [gate, mul]
        # GELU as torch writes it at opset < 20: x · 0.5 · (1 + erf(x / √2))
        div = next((u for u in users if u.op_type == "Div"), None)
        if div is not None and mul is not None:
            erf = g.only_consumer(div.output[0])
            add = erf is not None and erf.op_type == "Erf" and g.only_consumer(erf.output[0])
            if add and add.op_type == "Add" and g.only_consumer(add.output[0]) is mul:
                half = g.only_consumer(mul.output[0])
                nodes = [div, erf, add, mul]
                out = mul.output[0]
                if half is not None and half.op_type == "Mul" and any(_scalar(g, i) == 0.5 for i in half.input):
                    nodes.append(half)
                    out = half.output[0]
                return "gelu", out, nodes
    return None


class _Partition:
    """Claims every node of the graph for one kernel, walking it in topological order."""

    def __init__(self, g: _Graph, image: str, skip_unsupported: bool, path: Path) -> None:
        self.g = g
        self.path = path
        self.skip = skip_unsupported
        self.kernels: list[_Kernel] = []
        self.claimed: set[str] = set()
        self.made_by: dict[str, str] = {image: "input"}     # tensor → kernel that produced it
        self.remainder: list[str] = []

    def _err(self, node, what: str) -> OnnxModelError:
        return OnnxModelError(f"{self.path.name}: node {node.name!r} ({node.op_type}) {what}")

    def run(self) -> None:
        for node in self.g.nodes:
            if node.name in self.claimed:
                continue
            kernel = self._match(node)
            if kernel is None:
                if not self.skip:
                    raise self._err(node, "is not an op latbench can time as part of a kernel; rerun with "
                                          "--skip-unsupported to time such ops together as a measured remainder")
                self.remainder.append(node.name)
                self.claimed.add(node.name)
                for o in node.output:           # later kernels read its output as if the remainder made it
                    self.made_by[o] = self.made_by.get(next((i for i in node.input if i in self.made_by), ""), "input")
                continue
            for n in kernel.nodes:
                self.claimed.add(n.name)
            self.kernels.append(kernel)
            for n in kernel.nodes:
                for o in n.output:
                    self.made_by[o] = kernel.name

    # -------------------------------------------------------------------------------------- matching

    def _activation_input(self, node) -> str | None:
        """The node's first input that is an activation tensor some kernel made."""
        return next((i for i in node.input if i and i in self.made_by), None)

    def _match(self, node) -> _Kernel | None:
        x = self._activation_input(node)
        if x is None:
            if any(i and not self.g.is_const(i) for i in node.input):
                raise self._err(node, "reads a tensor no supported op produced")
            return None
        op = node.op_type
        if op in ("GlobalAveragePool", "ReduceMean"):
            return self._se(node, x) or self._global_pool(node, x)
        if op == "Conv":
            return self._conv(node, x)
        if op in ("Gemm", "MatMul"):
            return self._linear(node, x)
        if op == "MaxPool":
            return self._window_pool(node, x, "maxpool")
        if op == "AveragePool":
            return self._window_pool(node, x, "avgpool2d")
        if op == "BatchNormalization":
            return self._with_act(_Kernel(node.name, "op", x, node.output[0], [node], op="bn"))
        if op in _EW_OPS:
            return self._elementwise(node, x)
        if op == "Concat":
            return self._concat(node, x)
        if op in ("Slice", "Split"):
            return self._slice(node, x)
        if op == "Reshape" and self._shuffle(node, x):
            return self._shuffle(node, x)
        if op in _FLATTEN_OPS or op == "Transpose":
            return self._reshape(node, x)
        if op in ("Resize", "Upsample"):
            return self._resize(node, x)
        if op == "Pad":
            return self._pad(node, x)
        if op in ("Softmax", "LogSoftmax"):
            return _Kernel(node.name, "op", x, node.output[0], [node], op="softmax")
        if op in _ACT_OPS or op in ("Clip", "Sigmoid"):
            found = _activation_at(self.g, x) if self.g.only_consumer(x) is node or op == "Sigmoid" else None
            if found and found[2][0] is node:
                act, y, nodes = found
                return _Kernel(node.name, "op", x, y, nodes, op=f"act-{act}")
            if op in _ACT_OPS:
                return _Kernel(node.name, "op", x, node.output[0], [node], op=f"act-{_ACT_OPS[op]}")
            return None
        return None

    def _with_act(self, k: _Kernel) -> _Kernel:
        found = _activation_at(self.g, k.output)
        if found:
            act, k.output, nodes = found
            k.nodes += nodes
            if k.kind == "op":
                k.op = f"{k.op}-{act}"
            else:
                k.act = act
        return k

    def _conv(self, node, x: str, pad: tuple | None = None) -> _Kernel:
        """A conv kernel; ``pad`` = (Pad node, symmetric padding): a zero Pad before it that the runtime fuses."""
        g = self.g
        w = g.shapes.get(node.input[1]) if len(node.input) > 1 else None
        if not g.is_const(node.input[1]) or not w or len(w) != 4:
            raise self._err(node, "has no constant 4-D weight; export the model with its weights as initializers")
        a = _attrs(node)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self._err(node, f"has dilations {a['dilations']}; dilated convs are not supported yet")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self._err(node, f"uses auto_pad={a['auto_pad']!r}; export with explicit pads")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        strides = list(a.get("strides", [1, 1]))
        if w[2] != w[3] or len(set(strides)) > 1:
            raise self._err(node, f"has a non-square kernel {w[2:]} or stride {strides}; not supported yet")
        cout, cin_g, k = w[0], w[1], w[2]
        groups = int(a.get("group", 1))
        cin = cin_g * groups
        if groups == 1:
            kind = "pointwise" if k == 1 else "conv"
        elif groups == cin == cout:
            kind, groups = "depthwise", 1
        else:
            kind = "conv"
        kern = _Kernel(node.name, kind, x, node.output[0], [node], kernel=k, stride=strides[0], groups=groups)
        if len(set(pads)) > 1:
            pre = g.producer.get(x)
            raise self._err(node, f"has asymmetric pads {pads}; export with symmetric padding"
                            + (f" (it follows {pre.name!r})" if pre is not None else ""))
        kern.padding = pads[0]
        if pad is not None:
            kern.nodes.insert(0, pad[0])
            kern.padding = pad[1]
        # BN, then a residual add, then the activation: the order runtimes fuse them in.
        nxt = g.only_consumer(kern.output)
        if nxt is not None and nxt.op_type == "BatchNormalization":
            kern.nodes.append(nxt)
            kern.output = nxt.output[0]
        nxt = g.only_consumer(kern.output)
        if nxt is not None and nxt.op_type == "Add" and len(nxt.input) == 2:
            other = nxt.input[1] if nxt.input[0] == kern.output else nxt.input[0]
            if other in self.made_by and g.shapes.get(other) == g.shapes.get(kern.output):
                kern.residual = other
                kern.nodes.append(nxt)
                kern.output = nxt.output[0]
        return self._with_act(kern)

    def _se(self, node, x: str) -> _Kernel | None:
        """pool → conv (reduce) → act → conv (expand) → sigmoid | hard-sigmoid → Mul(x, gate)."""
        g = self.g
        if node.op_type == "ReduceMean" and not self._spatial_mean(node, keepdims=True):
            return None
        reduce = g.only_consumer(node.output[0])
        if reduce is None or reduce.op_type != "Conv" or not g.is_const(reduce.input[1]):
            return None
        chain = [node, reduce]
        mid = reduce.output[0]
        found = _activation_at(g, mid)
        act = "none"
        after = mid
        if found:
            act, after, nodes = found
            chain += nodes
        expand = g.only_consumer(after)
        if expand is None or expand.op_type != "Conv" or not g.is_const(expand.input[1]):
            return None
        chain.append(expand)
        gate = g.only_consumer(expand.output[0])
        gate_name = {"Sigmoid": "sigmoid", "HardSigmoid": "hsigmoid"}.get(gate.op_type if gate is not None else "")
        tail = gate.output[0] if gate_name else None
        if gate is not None and gate.op_type == "Clip":         # relu6(x + 3) / 6 written out
            gate_name = None
        if not gate_name:
            return None
        chain.append(gate)
        mul = g.only_consumer(tail)
        if mul is None or mul.op_type != "Mul" or set(mul.input) != {x, tail}:
            return None
        chain.append(mul)
        return _Kernel(node.name, "se", x, mul.output[0], chain, act=act, op=gate_name, mid=mid)

    def _spatial_mean(self, node, keepdims: bool | None = None) -> bool:
        a = _attrs(node)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            v = self.g.const(node.input[1])
            axes = None if v is None else v.tolist()
        rank = self.g.rank(node.input[0])
        if axes is None or sorted(int(ax) % max(rank, 1) for ax in axes) != [2, 3]:
            return False
        return keepdims is None or bool(a.get("keepdims", 1)) == keepdims

    def _global_pool(self, node, x: str) -> _Kernel | None:
        if node.op_type == "ReduceMean" and not self._spatial_mean(node):
            return None
        kern = _Kernel(node.name, "op", x, node.output[0], [node], op="gap")
        nxt = self.g.only_consumer(kern.output)
        if self.g.rank(kern.output) == 2:
            kern.kind, kern.op = "avgpool", ""
        elif nxt is not None and nxt.op_type in _FLATTEN_OPS and self.g.rank(nxt.output[0]) == 2:
            kern.kind, kern.op = "avgpool", ""          # global pool + flatten: one kernel to N×C
            kern.nodes.append(nxt)
            kern.output = nxt.output[0]
        return kern

    def _window_pool(self, node, x: str, kind: str) -> _Kernel:
        a = _attrs(node)
        k = list(a.get("kernel_shape", [1, 1]))
        strides = list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(set(k)) > 1 or len(set(strides)) > 1 or len(set(pads)) > 1 or a.get("ceil_mode", 0):
            raise self._err(node, f"is a non-square, asymmetric or ceil-mode pool (kernel {k}, strides {strides}, "
                                  f"pads {pads}); not supported yet")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self._err(node, "is a dilated pool; not supported yet")
        if kind == "avgpool2d" and pads[0] and not a.get("count_include_pad", 0):
            raise self._err(node, "is a padded average pool that excludes the padding; not supported yet")
        return _Kernel(node.name, kind, x, node.output[0], [node], kernel=k[0], stride=strides[0], padding=pads[0])

    def _linear(self, node, x: str) -> _Kernel | None:
        g = self.g
        if len(node.input) < 2 or not g.is_const(node.input[1]) or g.rank(node.input[1]) != 2 or g.rank(x) != 2:
            return None
        a = _attrs(node) if node.op_type == "Gemm" else {}
        if a.get("transA", 0):
            return None
        kern = _Kernel(node.name, "linear", x, node.output[0], [node])
        nxt = g.only_consumer(kern.output)
        if node.op_type == "MatMul" and nxt is not None and nxt.op_type == "Add" and any(g.is_const(i) for i in nxt.input):
            kern.nodes.append(nxt)                       # MatMul + bias Add: one fully connected layer
            kern.output = nxt.output[0]
        return kern

    def _elementwise(self, node, x: str) -> _Kernel:
        others = [i for i in node.input if i and i != x]
        acts = [i for i in others if i in self.made_by]
        name = _EW_OPS[node.op_type]
        if acts:
            shape_x, shape_o = self.g.shapes.get(x), self.g.shapes.get(acts[0])
            if shape_x != shape_o and node.op_type == "Mul":
                name = "mulbc"                        # x · [N,C,1,1]: a gate without a recognisable SE block
            kern = _Kernel(node.name, "op", x, node.output[0], [node], extra_inputs=tuple(acts), op=name)
            return self._with_act(kern)
        return _Kernel(node.name, "op", x, node.output[0], [node], op=f"{name}c")   # with a constant

    def _concat(self, node, x: str) -> _Kernel:
        axis = int(_attrs(node).get("axis", 1)) % max(self.g.rank(x), 1)
        if axis != 1:
            raise self._err(node, f"concatenates along axis {axis}; only channel concatenation is supported")
        ins = [i for i in node.input if i]
        missing = [i for i in ins if i not in self.made_by]
        if missing:
            raise self._err(node, f"concatenates {missing[0]!r}, which no supported op produced")
        # A concat's cost is the copy of what it writes; beyond 4 inputs (DenseNet) the count is timed as 4
        return _Kernel(node.name, "op", ins[0], node.output[0], [node], extra_inputs=tuple(ins[1:]),
                       op=f"concat{min(len(ins), 4)}")

    def _slice(self, node, x: str) -> _Kernel:
        cin = (self.g.shapes.get(x) or [0, 0])[1]
        kept = sum((self.g.shapes.get(o) or [0, 0])[1] for o in node.output if o)
        percent = int(round(100 * kept / cin)) if cin else 100
        parts = len([o for o in node.output if o])
        op = f"split{parts}" if node.op_type == "Split" else f"slice-r{percent}"
        kern = _Kernel(node.name, "op", x, node.output[0], [node], op=op)
        return kern

    def _shuffle(self, node, x: str) -> _Kernel | None:
        """Reshape [N,C,H,W]→[N,g,C/g,H,W] → Transpose(0,2,1,3,4) → Reshape [N,C,H,W]: a channel shuffle."""
        g = self.g
        s5 = g.shapes.get(node.output[0]) or []
        tr = g.only_consumer(node.output[0])
        if len(s5) != 5 or g.rank(x) != 4 or tr is None or tr.op_type != "Transpose":
            return None
        if list(_attrs(tr).get("perm", [])) != [0, 2, 1, 3, 4]:
            return None
        back = g.only_consumer(tr.output[0])
        if back is None or back.op_type != "Reshape" or g.shapes.get(back.output[0]) != g.shapes.get(x):
            return None
        return _Kernel(node.name, "op", x, back.output[0], [node, tr, back], op=f"shuffle{s5[1]}")

    def _reshape(self, node, x: str) -> _Kernel | None:
        shape_in, shape_out = self.g.shapes.get(x) or [], self.g.shapes.get(node.output[0]) or []
        if len(shape_out) == 2 and len(shape_in) == 4:
            return _Kernel(node.name, "op", x, node.output[0], [node], op="flatten")
        if [d for d in shape_in if d != 1] == [d for d in shape_out if d != 1]:
            return _Kernel(node.name, "op", x, node.output[0], [node], op="reshape")   # unit axes only
        return None

    def _resize(self, node, x: str) -> _Kernel | None:
        a = _attrs(node)
        mode = a.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        h_in = (self.g.shapes.get(x) or [0, 0, 0])[2]
        h_out = (self.g.shapes.get(node.output[0]) or [0, 0, 0])[2]
        if not h_in or not h_out:
            return None
        factor = h_out / h_in
        return _Kernel(node.name, "op", x, node.output[0], [node], op=f"resize-{mode}-x{factor:g}")

    def _pad(self, node, x: str) -> _Kernel:
        pads = self.g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if pads is None:
            pads = np.asarray(_attrs(node).get("pads", []))
        p = [int(v) for v in np.asarray(pads).reshape(-1)]
        if len(p) != 8 or p[0] or p[1] or p[4] or p[5]:
            raise self._err(node, f"pads {p}; only spatial padding of an N×C×H×W tensor is supported")
        if p[2] != p[3] or p[6] != p[7]:
            raise self._err(node, f"pads H and W differently {p}; latbench tables assume square inputs")
        fused = self._fused_pad(node, x, p[2], p[6])
        if fused is not None:
            return fused
        # TF 'SAME' padding pads after more than before at stride 2: both amounts are in the kernel's name
        return _Kernel(node.name, "op", x, node.output[0], [node], op=f"pad-{p[2]}-{p[6]}")

    def _fused_pad(self, node, x: str, before: int, after: int) -> _Kernel | None:
        """The conv after a zero Pad, the Pad fused into it (nn-Meter's fusion rules): onnxruntime's PadFusion
        and XNNPACK fold such a pad into the conv's own padding, so in the network it costs nothing (measured:
        Pad + Conv = Conv with the padding, while the Pad alone costs a sixth of the conv; docs/measurement.md).
        The kernel is the conv with the symmetric padding that gives the same output size (TF 'SAME' pads one
        more after than before); None when the pad is not fusable."""
        g = self.g
        mode = _attrs(node).get("mode", b"constant")
        value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
        conv = g.only_consumer(node.output[0])
        if (mode not in (b"constant", "constant") or value is None or np.any(np.asarray(value) != 0)
                or conv is None or conv.op_type != "Conv" or conv.input[0] != node.output[0]
                or any(_attrs(conv).get("pads", [0, 0, 0, 0])) or len(node.output) != 1):
            return None
        w = g.shapes.get(conv.input[1]) if len(conv.input) > 1 else None
        hw, out = (g.shapes.get(x) or [0, 0, 0])[2], (g.shapes.get(conv.output[0]) or [0, 0, 0])[2]
        if not w or len(w) != 4 or not hw or not out:
            return None
        stride = list(_attrs(conv).get("strides", [1, 1]))[0]
        padding = -(-(before + after) // 2)
        if (hw + 2 * padding - w[2]) // stride + 1 != out:
            return None
        return self._conv(conv, x, pad=(node, padding))


def load_model_graph(path: str | Path, input_shape: Sequence[int] | None = None) -> onnx.ModelProto:
    """The normalised graph of an ONNX file (:func:`latbench.models.onnx_load.load_user_onnx`)."""
    from .onnx_load import load_user_onnx

    return load_user_onnx(path, input_shape=input_shape)


def _prunable_in(segments, groups: dict) -> tuple[str | None, tuple[str, ...], int]:
    """(first prunable group, further prunable groups, fixed channels) of a tensor's channel segments."""
    names = [s.group for s in segments if s.group is not None and s.group in groups]
    fixed = sum(s.width for s in segments if s.group is None or s.group not in groups)
    return (names[0] if names else None), tuple(names[1:]), fixed


def spec_from_onnx(path: str | Path, input_shape: Sequence[int] | None = None,
                   skip_unsupported: bool = False) -> ModelSpec:
    """A :class:`ModelSpec` of the ONNX file's kernels, with the channel groups pruning may change.

    Raises :class:`OnnxModelError` naming the node for a graph latbench cannot read.
    """
    from .onnx_channels import ChannelError, analyse_channels

    path = Path(path)
    model = load_model_graph(path, input_shape)
    return spec_from_graph(model, path, skip_unsupported, analyse=analyse_channels, channel_error=ChannelError)


def spec_from_graph(model: onnx.ModelProto, path: Path, skip_unsupported: bool = False, analyse=None,
                    channel_error=ValueError) -> ModelSpec:
    g = _Graph(model)
    graph_inputs = [i for i in model.graph.input if i.name not in g.inits]
    image = graph_inputs[0].name if graph_inputs else None
    in_shape = g.shapes.get(image, []) if image else []
    if len(in_shape) != 4 or any(d is None for d in in_shape):
        raise OnnxModelError(f"{path.name}: the first graph input is not a fixed-size image tensor N×C×H×W; "
                             "not a CNN latbench can profile (pass --input-shape for dynamic sizes)")
    part = _Partition(g, image, skip_unsupported, path)
    part.run()
    if not any(k.kind in ("conv", "pointwise", "depthwise") for k in part.kernels):
        raise OnnxModelError(f"{path.name}: no convolution found; latbench profiles CNNs (Conv/Gemm layers)")
    try:
        channels = analyse(model)
    except channel_error as err:
        raise OnnxModelError(f"{path.name}: {err}") from err
    groups = {name: grp.width for name, grp in channels.groups.items() if grp.prunable}
    multiples = {name: grp.multiple for name, grp in channels.groups.items() if grp.prunable and grp.multiple > 1}
    layers = []
    for k in part.kernels:
        in_group, in_extra, offset = _prunable_in(channels.tensors[k.input], groups)
        out_segments = channels.tensors[k.mid if k.kind == "se" else k.output]
        out_group, out_extra, out_fixed = _prunable_in(out_segments, groups)
        fixed_in = offset if in_group is None else None
        if in_group is None and offset == 0:
            raise OnnxModelError(f"{path.name}: node {k.name!r} reads a tensor without channels")
        tied = k.kind in ("depthwise", "maxpool", "avgpool", "avgpool2d", "op")
        if tied:
            out_group, fixed_out = in_group, None
        elif out_group is not None and not out_extra and out_fixed == 0:
            fixed_out = None
        else:
            out_group, fixed_out = None, channels.channels(k.mid if k.kind == "se" else k.output)
        made = {t: part.made_by[t] for t in (k.input, k.residual, *k.extra_inputs) if t}
        layers.append(LayerDef(
            k.name, k.kind, made[k.input], in_group, out_group, kernel=k.kernel, stride=k.stride, padding=k.padding,
            act=k.act, residual=made[k.residual] if k.residual else None, fixed_in=fixed_in,
            fixed_out=None if tied else fixed_out, groups=k.groups, op=k.op,
            extra_inputs=tuple(dict.fromkeys(made[t] for t in k.extra_inputs)), in_extra=in_extra,
            in_offset=offset if in_group is not None else 0))
    res = int(in_shape[2])
    if in_shape[2] != in_shape[3]:
        raise OnnxModelError(f"{path.name}: input {in_shape} is not square; latbench tables assume H = W")
    # The file's digest in the name: measurements of its networks are stored under the model's name, and two
    # files called model.onnx are different models.
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()[:8]
    out_shape = g.shapes.get(model.graph.output[0].name) or []
    classes = int(out_shape[-1]) if len(out_shape) == 2 and out_shape[-1] else 0   # a classifier's N×K logits
    return ModelSpec(f"{path.stem}-{digest}", tuple(layers), groups, resolutions=(res,), in_channels=int(in_shape[1]),
                     num_classes=classes, description=f"imported from {path.name}", source=str(path),
                     remainder=tuple(part.remainder), multiples=multiples,
                     input_shape=tuple(int(d) for d in in_shape))


def kernel_nodes(path: str | Path, input_shape: Sequence[int] | None = None) -> dict[str, tuple[str, ...]]:
    """The ONNX nodes (by name) each kernel of the file covers, keyed by kernel (= layer) name: to find a kernel
    in a runtime's own per-node profile of the whole network."""
    return kernel_nodes_of(load_model_graph(path, input_shape), Path(path).name)


def kernel_nodes_of(model: onnx.ModelProto, label: str = "model") -> dict[str, tuple[str, ...]]:
    """:func:`kernel_nodes` of a graph already normalised by :func:`load_model_graph` (``label`` names it in
    errors), in the graph's topological order."""
    g = _Graph(model)
    image = next(i.name for i in model.graph.input if i.name not in g.inits)
    part = _Partition(g, image, True, Path(label))
    part.run()
    return {k.name: tuple(n.name for n in k.nodes) for k in part.kernels}


def remainder_model(model: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """The nodes no kernel covers as one model: their activation inputs become the graph's inputs (with their
    inferred shapes), their outputs that other nodes read become its outputs."""
    g = _Graph(model)
    chosen = [n for n in g.nodes if n.name in set(nodes)]
    made = {o for n in chosen for o in n.output}
    inputs = list(dict.fromkeys(i for n in chosen for i in n.input if i and i not in made and not g.is_const(i)))
    outputs = [o for o in made if o in g.outputs or any(c.name not in set(nodes) for c in g.consumers.get(o, []))]
    inits = [g.inits[i] for n in chosen for i in n.input if i in g.inits]
    infos = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}
    graph = onnx.helper.make_graph(chosen, "remainder", [infos[i] for i in inputs], [infos[o] for o in outputs],
                                   list({t.name: t for t in inits}.values()))
    out = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    return shape_inference.infer_shapes(out)
