"""Load a user's ONNX file as a normalised float32 inference graph that the importer can read directly.

Exporters write the same network in many ways: torch's legacy exporter de-duplicates equal initializers and
reaches them through ``Identity`` nodes, writes ``Constant`` nodes, computes flatten shapes and TF-'SAME'
paddings at run time from ``Shape`` chains, and leaves symbolic batch dimensions. :func:`load_user_onnx` turns
all of these into one form:

* the first graph input is a static float32 N×C×H×W image (a symbolic batch becomes 1; symbolic C/H/W need
  ``input_shape``);
* constant sub-graphs are folded into initializers (``Constant`` nodes, ``Identity``/``Cast``/``Reshape``/
  ``Squeeze``/``Unsqueeze``/``Transpose``/``Concat``/``Gather``/``Slice`` of constants, ``Shape`` of statically
  shaped tensors, and the small integer/scalar arithmetic that shape chains use), so every Conv/Gemm/MatMul
  weight and BN parameter is an initializer its node reads directly, each node its own;
* ``Identity`` and inference ``Dropout`` nodes on activations are removed (graph output names are kept);
* unused initializers are dropped, node names are unique and non-empty, and ``value_info`` holds a static
  shape for every intermediate tensor.

Errors are :class:`OnnxModelError` naming the file and what to do.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

from .onnx_graph import OnnxModelError

__all__ = ["OnnxModelError", "at_resolution", "load_user_onnx", "QUANTIZED_OPS"]

# Quantized graphs: not supported yet. Op names as the ONNX standard and onnxruntime's contrib domain use them.
QUANTIZED_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QuantizeLinear",
                           "DequantizeLinear", "DynamicQuantizeLinear", "QGemm", "QLinearAdd", "QLinearMul",
                           "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid",
                           "QLinearLeakyRelu", "QLinearSoftmax", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})

# Folded whatever their size: they only move, select or reinterpret constant data.
_DATA_MOVES = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Gather", "Slice",
                         "Flatten", "Expand"})
# Folded when the result is small (shape arithmetic such as TF-'SAME' padding); larger results (e.g. a weight
# times a scale) are left to the importer, so the loader never changes what a layer computes.
_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Ceil", "Floor", "Neg", "Abs", "Max", "Min", "Clip", "Sqrt",
                         "Pow", "Mod", "ConstantOfShape", "Range", "Equal", "Less", "Greater", "Not", "And", "Or",
                         "Where", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax", "Cast", "CastLike"})
_SMALL = 4096           # elements: the size limit of folded arithmetic
_MAX_ROUNDS = 64        # folding rounds (shape inference between them); real graphs need 2–4


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return None if any(d is None for d in dims) else dims


# ---------------------------------------------------------------------------------------------- reading

def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxModelError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:   # DecodeError and friends
        raise OnnxModelError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") from err
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxModelError(f"{path} is not an ONNX model with a graph (no nodes)")
    _load_external(model, path)
    return model


def _external_tensors(model: onnx.ModelProto):
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            yield t
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == TensorProto.EXTERNAL:
                yield a.t


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    """Read external-data weights, only from files inside the model's own folder."""
    folder = path.resolve().parent
    tensors = list(_external_tensors(model))
    if not tensors:
        return
    for t in tensors:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise OnnxModelError(f"{path}: tensor {t.name!r} keeps its data in {location!r}, outside the model's "
                                 f"folder {folder}; only data files next to the model are read")
        if not target.is_file():
            raise OnnxModelError(f"{path}: tensor {t.name!r} keeps its data in {location!r}, which is missing "
                                 f"({target}); copy the .data file next to the model")
    try:
        # onnx ≥ 1.21 refuses locations that escape the folder (.., symlinks, hard links) on its own as well.
        onnx.load_external_data_for_model(model, str(folder))
    except Exception as err:
        raise OnnxModelError(f"{path}: cannot read its external data ({type(err).__name__}: {err}); keep the "
                             "model's .data file next to it, unchanged") from err


def _reject_quantized(model: onnx.ModelProto, path: Path) -> None:
    for i, node in enumerate(model.graph.node):
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            name = node.name or f"{node.op_type}_{i}"
            raise OnnxModelError(f"{path}: node {name!r} is a {node.op_type}: quantized models are not supported "
                                 "yet; export the float model instead")


# ---------------------------------------------------------------------------------------------- inputs

def _fix_inputs(model: onnx.ModelProto, path: Path, input_shape: Sequence[int] | None) -> None:
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        raise OnnxModelError(f"{path} has no graph input")
    image = inputs[0]
    t = image.type.tensor_type
    if not image.type.HasField("tensor_type") or not t.HasField("shape") or len(t.shape.dim) != 4:
        rank = len(t.shape.dim) if t.HasField("shape") else "unknown"
        raise OnnxModelError(f"{path}: the first graph input {image.name!r} is not an image tensor N×C×H×W "
                             f"(rank {rank}); not a CNN latbench can profile")
    if t.elem_type != TensorProto.FLOAT:
        raise OnnxModelError(f"{path}: the input {image.name!r} is {TensorProto.DataType.Name(t.elem_type)}, not "
                             "FLOAT; export the model with a float32 input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in t.shape.dim]
    if input_shape is not None:
        shape = list(input_shape)
        if len(shape) != 4 or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s <= 0 for s in shape):
            raise OnnxModelError(f"input_shape must be 4 positive integers N,C,H,W, got {tuple(input_shape)}")
        for axis, (have, want) in enumerate(zip(dims, shape)):
            if isinstance(have, int) and have != want:
                raise OnnxModelError(f"{path}: --input-shape {','.join(map(str, shape))} does not match the input "
                                     f"{image.name!r} of shape {dims} (axis {axis} is fixed to {have})")
    else:
        symbolic = [axis for axis, d in enumerate(dims[1:], start=1) if not isinstance(d, int)]
        if symbolic:
            raise OnnxModelError(f"{path}: the input {image.name!r} has symbolic dimensions {dims} (C/H/W must be "
                                 "known); give the shape, e.g. --input-shape 1,3,224,224")
        shape = [1 if not isinstance(dims[0], int) else dims[0]] + dims[1:]
    for d, size in zip(t.shape.dim, shape):
        d.Clear()
        d.dim_value = int(size)
    for other in inputs[1:]:
        if _static_dims(other) is None:
            raise OnnxModelError(f"{path}: graph input {other.name!r} has no static shape; only the first input "
                                 "(the image) can be fixed")
    # Outputs are re-inferred from the now static input: clear their (possibly symbolic) shapes.
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    del graph.value_info[:]


def _infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:
        raise OnnxModelError(f"{path}: ONNX shape inference fails ({type(err).__name__}: {err})") from err


# ---------------------------------------------------------------------------------------------- folding

def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0] if len(node.attribute) == 1 else None
    if a is None:
        raise ValueError("a Constant node needs exactly one attribute")
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise ValueError(f"Constant attribute {a.name!r} is not supported")


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opsets: dict[str, int]) -> list[np.ndarray]:
    """Run one node on constant inputs with onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    outs = [f"out{i}" if name else "" for i, name in enumerate(node.output)]
    single = helper.make_node(node.op_type, names, outs, domain=node.domain)
    single.attribute.extend(node.attribute)
    feeds = {n: v for n, v in zip(names, values) if n}
    graph = helper.make_graph([single], "fold",
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                               for n, v in feeds.items()],
                              [helper.make_empty_tensor_value_info(o) for o in outs if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    results = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(r) for r in results]


def _fold_once(model: onnx.ModelProto) -> bool:
    """One pass over the graph in order: fold every node whose inputs are all constant (or a Shape of a
    statically shaped tensor). Returns whether anything was folded."""
    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    inits = {t.name: t for t in graph.initializer}
    shapes = {vi.name: _static_dims(vi) for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    outputs = {o.name for o in graph.output}
    arrays: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    keep: list[onnx.NodeProto] = []
    new: list[TensorProto] = []
    for node in graph.node:
        folded = _fold_node(node, inits, shapes, outputs, value, opsets)
        if folded is None:
            keep.append(node)
            continue
        for name, arr in folded:
            tensor = arr if isinstance(arr, TensorProto) else numpy_helper.from_array(np.asarray(arr), name)
            tensor.name = name
            inits[name] = tensor
            new.append(tensor)
    if not new and len(keep) == len(graph.node):
        return False
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new)
    return True


def _fold_node(node, inits, shapes, outputs, value, opsets):
    """``[(name, array or TensorProto), ...]`` if the node folds, else None."""
    if node.domain not in ("", "ai.onnx") or any(o in outputs for o in node.output if o):
        return None
    ins = [i for i in node.input if i]
    op = node.op_type
    if op == "Constant":
        return [(node.output[0], _constant_value(node))]
    if op == "Shape":
        dims = shapes.get(node.input[0])
        if node.input[0] in inits:
            dims = list(inits[node.input[0]].dims)
        if dims is None:
            return None
        a = _attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        return [(node.output[0], np.array(dims[start:end], dtype=np.int64))]
    if op == "Size":
        dims = shapes.get(node.input[0])
        return None if dims is None else [(node.output[0], np.array(int(np.prod(dims)), dtype=np.int64))]
    if not ins or any(i not in inits for i in ins):
        return None
    if op == "Identity":     # a copy under the Identity's name: every reader gets its own initializer
        tensor = TensorProto()
        tensor.CopyFrom(inits[ins[0]])
        return [(node.output[0], tensor)]
    if op == "Dropout":
        return None
    if op not in _DATA_MOVES and op not in _ARITHMETIC:
        return None
    values = [value(i) if i else None for i in node.input]
    if op == "Cast":
        src = values[0]
        to = _attrs(node)["to"]
        if not (to == TensorProto.FLOAT or not np.issubdtype(src.dtype, np.floating) or src.size <= _SMALL):
            return None     # a float weight cast to a non-float32 type stays as it is
    elif op in _ARITHMETIC and any(v is not None and v.size > _SMALL for v in values):
        return None
    try:
        results = _evaluate(node, values, opsets)
    except Exception:        # the reference implementation lacks this case: leave the node to the runtime
        return None
    if op in _ARITHMETIC and op != "Cast" and any(r.size > _SMALL for r in results):
        return None
    return [(name, r) for name, r in zip(node.output, results) if name]


# ---------------------------------------------------------------------------------------------- clean-up

def _remove_passthrough(graph: onnx.GraphProto) -> None:
    """Drop Identity nodes and inference Dropouts on activations, rewiring their readers."""
    inits = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        for node in list(graph.node):
            if node.op_type == "Identity":
                pass
            elif node.op_type == "Dropout":
                used_mask = len(node.output) > 1 and node.output[1] and _is_read(graph, node.output[1])
                training = node.input[2] if len(node.input) > 2 and node.input[2] else None
                if used_mask or (training and not (training in inits and not _init_value(graph, training).any())):
                    continue
            else:
                continue
            src, dst = node.input[0], node.output[0]
            if dst in outputs:
                if src in outputs or src in graph_inputs or src in inits:
                    continue      # nothing to rename onto: keep this Identity
                _rename(graph, src, dst)
            else:
                _rename(graph, dst, src, producers=False)
            graph.node.remove(node)
            changed = True


def _init_value(graph: onnx.GraphProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


def _is_read(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output)


def _rename(graph: onnx.GraphProto, old: str, new: str, producers: bool = True) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        if producers:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
        for a in node.attribute:          # readers inside If/Loop bodies use outer names too
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename(sub, old, new, producers=False)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = set()
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= _used_names(sub)
    return used


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = _used_names(graph) | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def _name_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        node.name = name


def _check_static(model: onnx.ModelProto, path: Path) -> None:
    graph = model.graph
    known = {vi.name: vi for vi in list(graph.value_info) + list(graph.output)}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            vi = known.get(out)
            if vi is None or _static_dims(vi) is None:
                raise OnnxModelError(f"{path}: the shape of {out!r} (output of node {node.name!r}, "
                                     f"{node.op_type}) cannot be inferred statically; export the model with "
                                     "a fixed input size")


# ---------------------------------------------------------------------------------------------- entry point

def load_user_onnx(path: str | Path, input_shape: Sequence[int] | None = None) -> onnx.ModelProto:
    """The ONNX model at ``path`` as a normalised float32 inference graph with static shapes (see the module
    docstring). ``input_shape`` (N, C, H, W) fixes an image input with symbolic dimensions.

    Raises :class:`OnnxModelError` for a missing or corrupt file, missing external data, a quantized graph,
    an input that is not a float32 image or has symbolic C/H/W without ``input_shape``, or shapes that
    cannot be made static."""
    path = Path(path)
    model = _read(path)
    _reject_quantized(model, path)
    _fix_inputs(model, path, input_shape)
    model = _infer(model, path)
    for _ in range(_MAX_ROUNDS):
        if not _fold_once(model):
            break
        del model.graph.value_info[:]
        model = _infer(model, path)
    _remove_passthrough(model.graph)
    _drop_unused(model.graph)
    _name_nodes(model.graph)
    del model.graph.value_info[:]
    model = _infer(model, path)
    _check_static(model, path)
    return model


def at_resolution(model: onnx.ModelProto, resolution: int, label: str = "the model") -> onnx.ModelProto:
    """A copy of ``model`` (a normalised graph) whose image input is ``resolution``×``resolution``, its shapes
    inferred again. A graph that baked its input size into constants (a Reshape to a fixed spatial shape, a
    pooling window as wide as the image) does not run at another size: :class:`OnnxModelError` names it."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    image = next(i for i in graph.input if i.name not in inits)
    dims = image.type.tensor_type.shape.dim
    if dims[2].dim_value == resolution and dims[3].dim_value == resolution:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    new = next(i for i in g.input if i.name == image.name).type.tensor_type.shape.dim
    new[2].dim_value = new[3].dim_value = int(resolution)
    before = {o.name: _static_dims(o) for o in graph.output}
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    del g.value_info[:]
    where = Path(f"{label} at {resolution}×{resolution}")
    out = _infer(out, where)
    _check_static(out, where)
    shapes = {vi.name: _static_dims(vi) for vi in list(out.graph.value_info) + list(out.graph.output)}
    shapes[image.name] = [d.dim_value for d in new]
    for node in out.graph.node:           # shape inference takes a constant Reshape target as it is
        if node.op_type == "Reshape" and shapes.get(node.input[0]) and shapes.get(node.output[0]):
            if int(np.prod(shapes[node.input[0]])) != int(np.prod(shapes[node.output[0]])):
                raise OnnxModelError(f"{where}: node {node.name!r} (Reshape) turns {shapes[node.input[0]]} into the "
                                     f"fixed shape {shapes[node.output[0]]}: the graph fixes its input size; export "
                                     "it at this resolution instead")
    for o in out.graph.output:
        if _static_dims(o) != before[o.name]:
            raise OnnxModelError(f"{where}: the output {o.name!r} has shape {_static_dims(o)}, not "
                                 f"{before[o.name]}: the graph fixes its input size somewhere (a Reshape or a "
                                 "pooling window sized for the image); export it at this resolution instead")
    return out
