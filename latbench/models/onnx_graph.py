"""Read the prunable layers of any ONNX CNN: convolutions, pools and fully connected layers with their
shapes (from onnx shape inference), and the BN / residual add / activation fused after each conv."""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import shape_inference

from .spec import LayerDef, ModelSpec

_PASSTHROUGH = {"BatchNormalization", "Relu", "Clip", "Add", "Flatten", "Reshape", "Identity", "Dropout", "Squeeze"}


class OnnxModelError(ValueError):
    """An ONNX file that cannot be read as a CNN."""


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def spec_from_onnx(path: str | Path) -> ModelSpec:
    """A :class:`ModelSpec` of the ONNX file's layers; every conv output is its own channel group.

    Raises :class:`OnnxModelError` for a missing, corrupt or non-CNN file.
    """
    path = Path(path)
    if not path.exists():
        raise OnnxModelError(f"{path} does not exist")
    try:
        # Only shapes are read: a model's external-data paths could point at any file, so they are not followed.
        model = onnx.load(str(path), load_external_data=False)
        model = shape_inference.infer_shapes(model)
    except Exception as err:  # onnx raises DecodeError / InferenceError / ValidationError variants
        raise OnnxModelError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") from err
    graph = model.graph
    inits = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}    # constant tensors' shapes
    shapes = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    graph_inputs = [i for i in graph.input if i.name not in inits]
    if not graph_inputs or len(shapes.get(graph_inputs[0].name, [])) != 4:
        raise OnnxModelError(f"{path}: the first graph input is not an image tensor N×C×H×W; not a CNN latbench can profile")
    image = graph_inputs[0].name
    in_shape = shapes[image]
    if any(d is None for d in in_shape[1:]):
        raise OnnxModelError(f"{path}: the input {image!r} has symbolic C/H/W {in_shape}; export with a fixed input size")
    producer = {image: "input"}      # tensor → latbench layer that produced it (through pass-through ops)
    group = {image: None}            # tensor → channel group (None: the image's fixed channels)
    groups: dict[str, int] = {}
    layers: list[LayerDef] = []
    fused: set[str] = set()
    for node in graph.node:
        if node.name in fused:
            continue
        ins = [i for i in node.input if i]
        x = ins[0] if ins else None
        if node.op_type == "Conv":
            if x not in producer:
                raise OnnxModelError(f"{path}: conv {node.name!r} reads {x!r}, which no supported op produced")
            w = inits.get(ins[1])
            if w is None or len(w) != 4:
                raise OnnxModelError(f"{path}: conv {node.name!r} has no constant 4-D weight; not supported")
            a = _attrs(node)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            strides = list(a.get("strides", [1, 1]))
            if len(set(pads)) > 1 or len(set(strides)) > 1 or w[2] != w[3]:
                raise OnnxModelError(f"{path}: conv {node.name!r} has asymmetric kernel/stride/padding {w[2:]}, "
                                     f"{strides}, {pads}; only square, symmetric convs are supported")
            cout, cin_g, k = w[0], w[1], w[2]
            g = int(a.get("group", 1))
            cin = cin_g * g
            if g == 1:
                kind = "pointwise" if k == 1 else "conv"
            elif g == cin == cout:
                kind = "depthwise"
            else:
                raise OnnxModelError(f"{path}: grouped conv {node.name!r} (groups={g}) is not supported")
            # Follow the chain the runtime fuses: BN, a residual Add, then ReLU/Clip.
            y, act, residual = node.output[0], "none", None
            while len(consumers.get(y, [])) == 1:
                nxt = consumers[y][0]
                if nxt.op_type == "BatchNormalization" and residual is None and act == "none":
                    pass
                elif nxt.op_type == "Add" and residual is None and act == "none":
                    other = [i for i in nxt.input if i != y][0]
                    if other not in producer:
                        break
                    residual = producer[other]
                elif nxt.op_type == "Relu" and act == "none":
                    act = "relu"
                elif nxt.op_type == "Clip" and act == "none":
                    act = "relu6"
                else:
                    break
                fused.add(nxt.name)
                y = nxt.output[0]
            name = node.name or f"conv{len(layers)}"
            in_group = group.get(x)
            if kind == "depthwise":
                out_group = in_group
                if out_group is None:
                    raise OnnxModelError(f"{path}: depthwise conv {node.name!r} directly on the image is not supported")
            else:
                out_group = f"{name}.out"
                groups[out_group] = cout
            fixed_in = cin if in_group is None else None
            layers.append(LayerDef(name, kind, producer[x], in_group, out_group, kernel=k, stride=strides[0],
                                   padding=pads[0], act=act, residual=residual, fixed_in=fixed_in))
            producer[y], group[y] = name, out_group
        elif node.op_type in ("MaxPool", "GlobalAveragePool", "AveragePool") and x in producer:
            a = _attrs(node)
            name = node.name or f"pool{len(layers)}"
            if node.op_type == "MaxPool":
                k = int(a["kernel_shape"][0])
                layers.append(LayerDef(name, "maxpool", producer[x], group[x], group[x], kernel=k,
                                       stride=int(a.get("strides", [1, 1])[0]), padding=int(a.get("pads", [0] * 4)[0])))
            else:
                layers.append(LayerDef(name, "avgpool", producer[x], group[x], group[x]))
            producer[node.output[0]], group[node.output[0]] = name, group[x]
        elif node.op_type in ("Gemm", "MatMul") and x in producer and ins[1] in inits:
            w = inits[ins[1]]
            trans_b = _attrs(node).get("transB", 0) if node.op_type == "Gemm" else 0
            cout = w[0] if trans_b else w[1]
            name = node.name or f"fc{len(layers)}"
            layers.append(LayerDef(name, "linear", producer[x], group[x], None, fixed_out=cout))
            producer[node.output[0]], group[node.output[0]] = name, None
        elif node.op_type in _PASSTHROUGH and x in producer:
            for out in node.output:
                producer[out], group[out] = producer[x], group[x]
    if not any(layer.kind in ("conv", "pointwise", "depthwise") for layer in layers):
        raise OnnxModelError(f"{path}: no convolution found; latbench profiles CNNs (Conv/Gemm layers)")
    res = int(in_shape[2])
    return ModelSpec(path.stem, tuple(layers), groups, resolutions=(res,), in_channels=int(in_shape[1]),
                     num_classes=0, description=f"imported from {path.name}")
