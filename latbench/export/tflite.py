"""TFLite export without TensorFlow: ``.tflite`` flatbuffers written directly with the LiteRT schema bindings.

Layers are written as the runtime executes them: conv with BN folded into weight and bias, the
activation fused into the conv, or into the residual ADD when there is one. Activations are NHWC,
conv filters OHWI, depthwise filters ``[1, KH, KW, C]``. TFLite's ``SAME`` padding is asymmetric at
stride 2 and does not match torch, so every padded conv/pool gets an explicit PAD (PADV2 with the
lowest float for max-pool) followed by a ``VALID`` op. Average pooling is MEAN over H and W.

Sparse conv weights are stored compressed — CSR over the last (input-channel) axis, the non-zero
values in the buffer — and expanded by a DENSIFY op that feeds the conv. The builtin DENSIFY kernel
expands it on the first invoke and keeps the result, so the first invoke is a warm-up. Sparse storage
is also what tells XNNPACK to try its sparse (CHW) kernels: on CPUs where they are enabled (ARM phones,
x86 without AVX) an eligible 90 %-sparse subgraph runs several times faster (5.6–8.5× measured under
``qemu-x86_64 -cpu Nehalem``); on x86 with AVX XNNPACK keeps its dense path and sparsity only shrinks
the file.
A weight that is entirely zero is written dense (an empty buffer would not be a constant).
"""
from __future__ import annotations

from typing import Mapping

import flatbuffers
import numpy as np
import torch
from ai_edge_litert import schema_py_generated as tfl
from torch import nn

from ..layers import LayerPoint, LayerSignature
from ..models.spec import LayerDef
from ..models.torch_net import ConvBlock, GraphNet
from .onnx import random_layer_weights

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
VARIANT_KINDS = ("conv", "pointwise", "depthwise", "maxpool", "avgpool", "linear")

_OP = tfl.BuiltinOperator
_OPT = tfl.BuiltinOptions
_FLOAT32, _INT32 = tfl.TensorType.FLOAT32, tfl.TensorType.INT32
_FUSED = {"none": tfl.ActivationFunctionType.NONE, "relu": tfl.ActivationFunctionType.RELU,
          "relu6": tfl.ActivationFunctionType.RELU6}
_ACT_MODULES = ((nn.Identity, "none"), (nn.ReLU6, "relu6"), (nn.ReLU, "relu"))


class TFLiteExportError(ValueError):
    """A network, layer or module that cannot be written as TFLite."""


class _AlignedBufferT(tfl.BufferT):
    """A buffer whose data start at a multiple of ``BUFFER_ALIGNMENT`` bytes in the finished file.

    The builder writes back to front and ``Finish`` pads the whole file to its largest alignment, so
    aligning the data relative to the end of the builder aligns them relative to the file start.
    """

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None and len(self.data):
            builder.Prep(BUFFER_ALIGNMENT, len(self.data))  # then CreateByteVector's 4-byte Prep adds nothing
            data = builder.CreateByteVector(bytes(self.data))
        tfl.BufferStart(builder)
        if data is not None:
            tfl.BufferAddData(builder, data)
        return tfl.BufferEnd(builder)


class _GraphBuilder:
    """Owns the tensors, buffers, operator codes and operators of one subgraph."""

    def __init__(self) -> None:
        self.tensors: list[tfl.TensorT] = []
        self.buffers: list[tfl.BufferT] = [tfl.BufferT()]  # buffer 0: the empty buffer of all activations
        self.opcodes: list[tfl.OperatorCodeT] = []
        self._opcode_index: dict[int, int] = {}
        self.operators: list[tfl.OperatorT] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._shared: dict[tuple, int] = {}

    def shape(self, tensor: int) -> list[int]:
        return list(self.tensors[tensor].shape)

    def tensor(self, name: str, shape, dtype: int = _FLOAT32, data: bytes | None = None,
               sparsity: tfl.SparsityParametersT | None = None) -> int:
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.sparsity = name, [int(d) for d in shape], dtype, sparsity
        if data is not None:
            buf = _AlignedBufferT()
            buf.data = data
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def input(self, name: str, shape) -> int:
        idx = self.tensor(name, shape)
        self.inputs.append(idx)
        return idx

    def const(self, name: str, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        dtype = {np.dtype(np.float32): _FLOAT32, np.dtype(np.int32): _INT32}[array.dtype]
        return self.tensor(name, array.shape, dtype, array.astype(array.dtype.newbyteorder("<")).tobytes())

    def shared_const(self, name: str, array: np.ndarray) -> int:
        """A constant written once however many ops read it (paddings, axes)."""
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared:
            self._shared[key] = self.const(name, array)
        return self._shared[key]

    def sparse_const(self, name: str, dense: np.ndarray) -> int:
        """``dense`` stored as CSR over its last axis: the other axes DENSE, the buffer holding the non-zeros."""
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        rows = dense.reshape(-1, dense.shape[-1])
        nonzero = rows != 0
        segments = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int32)
        indices = np.nonzero(nonzero)[1].astype(np.int32)  # row-major, so grouped by row
        dims = [tfl.DimensionMetadataT(format=tfl.DimensionType.DENSE, denseSize=int(d)) for d in dense.shape[:-1]]
        csr = tfl.DimensionMetadataT(format=tfl.DimensionType.SPARSE_CSR)
        csr.arraySegmentsType, csr.arraySegments = tfl.SparseIndexVector.Int32Vector, tfl.Int32VectorT(segments)
        csr.arrayIndicesType, csr.arrayIndices = tfl.SparseIndexVector.Int32Vector, tfl.Int32VectorT(indices)
        sparsity = tfl.SparsityParametersT(traversalOrder=list(range(dense.ndim)), dimMetadata=dims + [csr])
        values = rows[nonzero].astype("<f4")
        return self.tensor(name, dense.shape, _FLOAT32, values.tobytes(), sparsity)

    def op(self, code: int, inputs, outputs, options_type: int = _OPT.NONE, options=None) -> None:
        if code not in self._opcode_index:
            self._opcode_index[code] = len(self.opcodes)
            self.opcodes.append(tfl.OperatorCodeT(deprecatedBuiltinCode=min(code, _OP.PLACEHOLDER_FOR_GREATER_OP_CODES),
                                                  builtinCode=code, version=1))
        self.operators.append(tfl.OperatorT(opcodeIndex=self._opcode_index[code], inputs=list(inputs),
                                            outputs=list(outputs), builtinOptionsType=options_type,
                                            builtinOptions=options))

    def finish(self, name: str) -> bytes:
        subgraph = tfl.SubGraphT(tensors=self.tensors, inputs=self.inputs, outputs=self.outputs,
                                 operators=self.operators, name=name)
        model = tfl.ModelT(version=SCHEMA_VERSION, operatorCodes=self.opcodes, subgraphs=[subgraph],
                           description="latbench", buffers=self.buffers)
        builder = flatbuffers.Builder(1024 + sum(len(b.data or b"") + BUFFER_ALIGNMENT for b in self.buffers))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


# ---------------------------------------------------------------------------------------------- ops


def _conv_out(hw: int, kernel: int, stride: int) -> int:
    return (hw - kernel) // stride + 1


def _pad(g: _GraphBuilder, x: int, pad: int, value: float = 0.0) -> int:
    """PAD (zeros) or PADV2 (``value``) of ``pad`` pixels on each side of H and W."""
    n, h, w, c = g.shape(x)
    paddings = g.shared_const(f"paddings_{pad}", np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]], np.int32))
    y = g.tensor(f"{g.tensors[x].name}/pad", [n, h + 2 * pad, w + 2 * pad, c])
    if value == 0.0:
        g.op(_OP.PAD, [x, paddings], [y], _OPT.PadOptions, tfl.PadOptionsT())
    else:
        fill = g.shared_const(f"pad_value_{value:g}", np.array(value, np.float32))
        g.op(_OP.PADV2, [x, paddings, fill], [y], _OPT.PadV2Options, tfl.PadV2OptionsT())
    return y


def _filter(g: _GraphBuilder, name: str, w: np.ndarray, sparse: bool) -> int:
    """A constant filter; sparse ones (with at least one non-zero) are stored CSR and expanded by DENSIFY."""
    if not sparse or not np.any(w):
        return g.const(name, w)
    compressed = g.sparse_const(f"{name}/sparse", w)
    dense = g.tensor(name, w.shape)
    g.op(_OP.DENSIFY, [compressed], [dense], _OPT.DensifyOptions, tfl.DensifyOptionsT())
    return dense


def _conv2d(g: _GraphBuilder, name: str, x: int, w_oihw: np.ndarray, bias: np.ndarray, stride: int, act: str,
            sparse: bool) -> int:
    n, h, w, _ = g.shape(x)
    cout, _, kh, kw = w_oihw.shape
    weights = _filter(g, f"{name}/weights", w_oihw.transpose(0, 2, 3, 1), sparse)
    b = g.const(f"{name}/bias", bias)
    y = g.tensor(name, [n, _conv_out(h, kh, stride), _conv_out(w, kw, stride), cout])
    options = tfl.Conv2DOptionsT(padding=tfl.Padding.VALID, strideW=stride, strideH=stride,
                                 fusedActivationFunction=_FUSED[act])
    g.op(_OP.CONV_2D, [x, weights, b], [y], _OPT.Conv2DOptions, options)
    return y


def _depthwise_conv2d(g: _GraphBuilder, name: str, x: int, w_c1hw: np.ndarray, bias: np.ndarray, stride: int,
                      act: str, sparse: bool) -> int:
    n, h, w, _ = g.shape(x)
    c, _, kh, kw = w_c1hw.shape
    weights = _filter(g, f"{name}/weights", w_c1hw.transpose(1, 2, 3, 0), sparse)
    b = g.const(f"{name}/bias", bias)
    y = g.tensor(name, [n, _conv_out(h, kh, stride), _conv_out(w, kw, stride), c])
    options = tfl.DepthwiseConv2DOptionsT(padding=tfl.Padding.VALID, strideW=stride, strideH=stride, depthMultiplier=1,
                                          fusedActivationFunction=_FUSED[act])
    g.op(_OP.DEPTHWISE_CONV_2D, [x, weights, b], [y], _OPT.DepthwiseConv2DOptions, options)
    return y


def _add(g: _GraphBuilder, name: str, a: int, b: int, act: str) -> int:
    if g.shape(a) != g.shape(b):
        raise TFLiteExportError(
            f"layer {name!r}: residual of shape {g.shape(b)} cannot be added to {g.shape(a)} (NHWC)")
    y = g.tensor(name, g.shape(a))
    g.op(_OP.ADD, [a, b], [y], _OPT.AddOptions, tfl.AddOptionsT(fusedActivationFunction=_FUSED[act]))
    return y


def _conv_block(g: _GraphBuilder, name: str, kind: str, x: int, w: np.ndarray, bias: np.ndarray, stride: int,
                padding: int, act: str, residual: int | None, sparse: bool) -> int:
    """[PAD →] conv (+ folded BN) [→ ADD residual], the activation fused into the last op."""
    if padding:
        x = _pad(g, x, padding)
    conv = _depthwise_conv2d if kind == "depthwise" else _conv2d
    if residual is None:
        return conv(g, name, x, w, bias, stride, act, sparse)
    y = conv(g, f"{name}/conv", x, w, bias, stride, "none", sparse)
    return _add(g, name, y, residual, act)


def _max_pool(g: _GraphBuilder, name: str, x: int, kernel: int, stride: int, padding: int) -> int:
    if padding:
        x = _pad(g, x, padding, float(np.finfo(np.float32).min))
    n, h, w, c = g.shape(x)
    y = g.tensor(name, [n, _conv_out(h, kernel, stride), _conv_out(w, kernel, stride), c])
    options = tfl.Pool2DOptionsT(padding=tfl.Padding.VALID, strideW=stride, strideH=stride, filterWidth=kernel,
                                 filterHeight=kernel, fusedActivationFunction=_FUSED["none"])
    g.op(_OP.MAX_POOL_2D, [x], [y], _OPT.Pool2DOptions, options)
    return y


def _global_avg_pool(g: _GraphBuilder, name: str, x: int) -> int:
    """MEAN over H and W without keeping them: [N, H, W, C] → [N, C]."""
    n, _, _, c = g.shape(x)
    axes = g.shared_const("spatial_axes", np.array([1, 2], np.int32))
    y = g.tensor(name, [n, c])
    g.op(_OP.MEAN, [x, axes], [y], _OPT.ReducerOptions, tfl.ReducerOptionsT(keepDims=False))
    return y


def _fully_connected(g: _GraphBuilder, name: str, x: int, w: np.ndarray, bias: np.ndarray) -> int:
    weights = g.const(f"{name}/weights", w)  # TFLite keeps torch's [out, in]
    b = g.const(f"{name}/bias", bias)
    y = g.tensor(name, [g.shape(x)[0], w.shape[0]])
    options = tfl.FullyConnectedOptionsT(fusedActivationFunction=_FUSED["none"], keepNumDims=False)
    g.op(_OP.FULLY_CONNECTED, [x, weights, b], [y], _OPT.FullyConnectedOptions, options)
    return y


# ------------------------------------------------------------------------------------------ networks


def _fold_bn(block: ConvBlock) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the eval-mode BatchNorm folded in (OIHW, float32)."""
    conv, bn = block.conv, block.bn
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = bn.bias.detach().double() + (b0 - bn.running_mean.double()) * scale
    return (w * scale[:, None, None, None]).float().numpy(), bias.float().numpy()


def _activation_of(layer: LayerDef, block: ConvBlock) -> str:
    for cls, name in _ACT_MODULES:
        if type(block.act) is cls:
            return name
    raise TFLiteExportError(f"layer {layer.name!r}: unsupported activation module {type(block.act).__name__}")


def _square(value, what: str, layer: LayerDef) -> int:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or pair[0] != pair[1]:
        raise TFLiteExportError(f"layer {layer.name!r}: only square {what} are supported, got {value}")
    return int(pair[0])


def _check_rank(g: _GraphBuilder, x: int, rank: int, layer: LayerDef, what: str) -> None:
    if len(g.shape(x)) != rank:
        raise TFLiteExportError(f"layer {layer.name!r}: {what} needs a rank-{rank} input, got shape {g.shape(x)}")


def _emit_conv_block(g: _GraphBuilder, layer: LayerDef, block: ConvBlock, x: int, values: Mapping[str, int],
                     sparse: bool) -> int:
    conv = block.conv
    _check_rank(g, x, 4, layer, "a convolution")
    if _square(conv.dilation, "dilations", layer) != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TFLiteExportError(
            f"layer {layer.name!r}: dilated, non-zero-padded or string-padded convs are unsupported")
    if conv.groups == 1:
        kind = "conv"
    elif conv.groups == conv.in_channels == conv.out_channels:
        kind = "depthwise"
    else:
        raise TFLiteExportError(f"layer {layer.name!r}: grouped conv with groups={conv.groups} is unsupported "
                                f"(only dense and depthwise with multiplier 1)")
    if g.shape(x)[3] != conv.in_channels:
        raise TFLiteExportError(
            f"layer {layer.name!r}: input has {g.shape(x)[3]} channels, conv expects {conv.in_channels}")
    w, b = _fold_bn(block)
    residual = values[layer.residual] if layer.residual else None
    return _conv_block(g, layer.name, kind, x, w, b, _square(conv.stride, "strides", layer),
                       _square(conv.padding, "paddings", layer), _activation_of(layer, block), residual, sparse)


def _emit_layer(g: _GraphBuilder, layer: LayerDef, module: nn.Module, values: Mapping[str, int], sparse: bool) -> int:
    """The ops of one layer, following what :class:`GraphNet` computes for its module."""
    x = values[layer.input]
    if isinstance(module, ConvBlock):
        return _emit_conv_block(g, layer, module, x, values, sparse)
    if sparse:
        raise TFLiteExportError(f"layer {layer.name!r}: sparse export is only for convolutions, not {layer.kind}")
    if isinstance(module, nn.MaxPool2d):
        _check_rank(g, x, 4, layer, "max-pool")
        if module.ceil_mode or _square(module.dilation, "dilations", layer) != 1:
            raise TFLiteExportError(f"layer {layer.name!r}: max-pool with ceil_mode or dilation is unsupported")
        kernel = _square(module.kernel_size, "kernels", layer)
        stride = _square(module.stride if module.stride is not None else kernel, "strides", layer)
        return _max_pool(g, layer.name, x, kernel, stride, _square(module.padding, "paddings", layer))
    if (isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.AdaptiveAvgPool2d)
            and _square(module[0].output_size, "pool outputs", layer) == 1 and isinstance(module[1], nn.Flatten)
            and module[1].start_dim == 1 and module[1].end_dim == -1):
        _check_rank(g, x, 4, layer, "global average pooling")
        return _global_avg_pool(g, layer.name, x)
    if isinstance(module, nn.Linear):
        _check_rank(g, x, 2, layer, "a linear layer")
        if g.shape(x)[1] != module.in_features:
            raise TFLiteExportError(f"layer {layer.name!r}: input has {g.shape(x)[1]} features, "
                                    f"linear expects {module.in_features}")
        bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
        return _fully_connected(g, layer.name, x, module.weight.detach().float().numpy(),
                                bias.detach().float().numpy())
    raise TFLiteExportError(f"layer {layer.name!r}: unsupported module {type(module).__name__} "
                            f"(kind {layer.kind!r}); supported: ConvBlock, MaxPool2d, "
                            f"Sequential(AdaptiveAvgPool2d(1), Flatten), Linear")


def _sparse_layers(net: GraphNet, sparse: bool | Mapping[str, float]) -> set[str]:
    """Layers whose conv weights are written sparse: every conv with a zero weight when ``sparse`` is
    True, or the layers with a sparsity > 0 in a mapping (e.g. ``Architecture.sparsity``)."""
    spec = net.spec
    if isinstance(sparse, bool):
        if not sparse:
            return set()
        return {layer.name for layer in spec.layers if isinstance(net.block(layer.name), ConvBlock)
                and bool((net.block(layer.name).conv.weight == 0).any())}
    names = {layer.name for layer in spec.layers}
    unknown = sorted(set(sparse) - names)
    if unknown:
        raise TFLiteExportError(f"sparsity given for {unknown}, which are not layers of {spec.name!r}")
    return {name for name, s in sparse.items() if float(s) > 0.0}


def network_to_tflite(net: GraphNet, resolution: int, sparse: bool | Mapping[str, float] = False) -> bytes:
    """Serialise ``net`` as a TFLite model: NHWC float32 input ``[1, R, R, C]`` named ``input``, one output.

    BatchNorm is folded with its running statistics (eval-mode semantics, whatever ``net.training``).
    ``sparse`` selects the conv weights stored sparse (CSR + DENSIFY): ``True`` for every conv that
    has zero weights, or a per-layer mapping such as ``arch.sparsity`` (sparse where > 0).
    """
    if not isinstance(net, GraphNet):
        raise TFLiteExportError(f"expected a GraphNet, got {type(net).__name__}")
    if int(resolution) < 1:
        raise TFLiteExportError(f"resolution {resolution} must be positive")
    spec = net.spec
    try:
        spec.input_hw(int(resolution))
    except ValueError as err:
        raise TFLiteExportError(str(err)) from err
    sparse_layers = _sparse_layers(net, sparse)
    first = net.block(next(layer.name for layer in spec.layers if layer.input == "input"))
    in_channels = first.conv.in_channels if isinstance(first, ConvBlock) else spec.in_channels
    g = _GraphBuilder()
    values = {"input": g.input("input", [1, resolution, resolution, in_channels])}
    for layer in spec.layers:
        values[layer.name] = _emit_layer(g, layer, net.block(layer.name), values, layer.name in sparse_layers)
    g.outputs.append(values[spec.output])
    return g.finish(spec.name)


# ------------------------------------------------------------------------------------- layer variants


def writes_natively(sig: LayerSignature) -> bool:
    """Whether :func:`layer_variant_tflite` writes ``sig`` itself (the zoo's layers); other kernels are written
    as ONNX and converted (:mod:`latbench.export.onnx_tflite`)."""
    return sig.kind in VARIANT_KINDS and sig.act in _FUSED and sig.groups == 1 and not sig.op


def _check_variant(sig: LayerSignature, point: LayerPoint) -> None:
    if sig.kind not in VARIANT_KINDS:
        raise TFLiteExportError(f"{sig.key}: unsupported layer kind {sig.kind!r}; expected one of {VARIANT_KINDS}")
    if sig.act not in _FUSED:
        raise TFLiteExportError(f"{sig.key}: unsupported activation {sig.act!r}; expected one of {tuple(_FUSED)}")
    if sig.residual and sig.kind not in ("conv", "pointwise", "depthwise"):
        raise TFLiteExportError(f"{sig.key}: a residual add is only supported after a convolution")
    if sig.kind in ("maxpool", "avgpool", "linear") and sig.act != "none":
        raise TFLiteExportError(f"{sig.key}: an activation is only supported after a convolution")
    try:
        sig.check_point(point)
    except ValueError as err:
        raise TFLiteExportError(str(err)) from err
    if sig.channels_tied and point.out_channels != point.in_channels:
        raise TFLiteExportError(f"{sig.key}: a {sig.kind} layer keeps its width, got "
                                f"{point.in_channels}→{point.out_channels}")
    if sig.kind not in ("conv", "pointwise", "depthwise") and point.sparsity > 0:
        raise TFLiteExportError(f"{sig.key}: sparsity {point.sparsity} given for a layer without conv weights")


def layer_variant_tflite(sig: LayerSignature, point: LayerPoint, seed: int = 0) -> bytes:
    """A one-layer TFLite model of ``sig`` at ``point``: the TFLite twin of ``layer_variant_onnx``.

    Same folded random weights (:func:`random_layer_weights`), inputs ``x`` (NHWC, or ``[1, C]`` for
    linear) and, with a residual, ``r`` (the NHWC output shape); output ``y``. Convs with a sparsity
    > 0 are stored sparse.
    """
    _check_variant(sig, point)
    cin, cout, hw = point.in_channels, point.out_channels, point.input_hw
    g = _GraphBuilder()
    if sig.kind == "linear":
        x = g.input("x", [1, cin])
        w, b = random_layer_weights(sig, point, seed)
        y = _fully_connected(g, "y", x, w, b)
    else:
        x = g.input("x", [1, hw, hw, cin])
        if sig.kind == "maxpool":
            y = _max_pool(g, "y", x, sig.kernel, sig.stride, sig.padding)
        elif sig.kind == "avgpool":
            y = _global_avg_pool(g, "y", x)
        else:
            residual = None
            if sig.residual:
                ohw = sig.output_hw(hw)
                residual = g.input("r", [1, ohw, ohw, cout])
            y = _variant_conv(g, "y", sig, point, x, residual, seed)
    g.outputs.append(y)
    return g.finish(sig.key)


def _variant_conv(g: _GraphBuilder, name: str, sig: LayerSignature, point: LayerPoint, x: int, residual: int | None,
                  seed: int) -> int:
    """The conv block of a conv/pointwise/depthwise variant on ``x``: its random weights, sparse if ``point`` is."""
    w, b = random_layer_weights(sig, point, seed)
    return _conv_block(g, name, sig.kind, x, w, b, sig.stride, sig.padding, sig.act, residual, point.sparsity > 0)


# ------------------------------------------------------------------------------- sparse-path wrapper
#
# XNNPACK runs sparse 1×1 convs with its sparse (CHW) kernels only inside a subgraph it can rewrite to
# CHW (see tests/test_xnnpack_sparse.py): one that starts with a 3×3 stride-2 conv, padding 1, on 3
# channels and ends in a spatial MEAN. A sparse layer alone never qualifies (its input is the graph's
# input), so such layers are timed inside that minimal subgraph and the subgraph without the layer is
# subtracted. XNNPACK also requires more than 2/3 of the cluster's 1×1 weights to be zero, and a
# cluster without a 1×1 conv never goes sparse: the baseline (stem → MEAN) and depthwise wrappers
# always run the dense NHWC kernels.

SPARSE_WRAPPER_STEM = LayerSignature("conv", kernel=3, stride=2, padding=1, act="relu", fixed_in=3)


def _fits_sparse_subgraph(sig: LayerSignature, point: LayerPoint) -> bool:
    """A 1×1 stride-1 unpadded conv; a residual only when the layer keeps the stem's output shape, so that
    the stem's output can be the residual. Depthwise convs are not wrapped: XNNPACK has no sparse
    depthwise kernel and switches its sparse path off for a subgraph without a 1×1 conv (a wrapped 90 %
    sparse depthwise gave bit-identical output to its dense twin under qemu, i.e. it ran dense)."""
    if sig.kind not in ("conv", "pointwise"):
        return False
    fits = (sig.kernel, sig.stride, sig.padding) == (1, 1, 0)
    keeps_shape = sig.stride == 1 and point.out_channels == point.in_channels
    return fits and (not sig.residual or keeps_shape)


def needs_sparse_wrapper(sig: LayerSignature, point: LayerPoint) -> bool:
    """Whether ``sig`` at ``point`` is timed inside :func:`sparse_wrapper_tflite` rather than alone: a
    sparse conv that can sit in a subgraph XNNPACK runs with its sparse (CHW) kernels."""
    return point.sparsity > 0 and _fits_sparse_subgraph(sig, point)


def sparse_wrapper_stem(in_channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Folded (OIHW weight, bias) of the wrapper's dense stem 3 → ``in_channels``, drawn like a variant's."""
    return random_layer_weights(SPARSE_WRAPPER_STEM, LayerPoint(3, in_channels, 0.0, 2), seed)


def _wrapper(sig: LayerSignature, point: LayerPoint, seed: int, with_layer: bool) -> bytes:
    hw = point.input_hw
    g = _GraphBuilder()
    x = g.input("x", [1, 2 * hw, 2 * hw, 3])
    w, b = sparse_wrapper_stem(point.in_channels, seed)
    s = SPARSE_WRAPPER_STEM
    y = _conv_block(g, "stem", s.kind, x, w, b, s.stride, s.padding, s.act, None, False)  # → [1, hw, hw, cin]
    if with_layer:
        y = _variant_conv(g, "layer", sig, point, y, y if sig.residual else None, seed)
    g.outputs.append(_global_avg_pool(g, "y", y))
    return g.finish(f"{sig.key}|{'wrapped' if with_layer else 'baseline'}")


def sparse_wrapper_tflite(sig: LayerSignature, point: LayerPoint, seed: int = 0) -> tuple[bytes, bytes]:
    """(with_layer, baseline): the variant inside the smallest subgraph XNNPACK can run sparse, and that
    subgraph without it. Their latency difference is the layer's.

    with_layer: input ``x`` ``[1, 2·hw, 2·hw, 3]`` → stem (PAD + 3×3 stride-2 conv 3 → cin, ReLU,
    dense weights of :func:`sparse_wrapper_stem`) → the layer with the weights of
    :func:`layer_variant_tflite` (stored sparse when its sparsity is > 0; a residual adds the stem's
    output) → MEAN over H and W, output ``y`` ``[1, cout]``. baseline: stem → MEAN. The stem's output
    is ``hw × hw``, the layer's input size.
    """
    _check_variant(sig, point)
    if not _fits_sparse_subgraph(sig, point):
        raise TFLiteExportError(f"{sig.key}: only 1×1 stride-1 convs and 3×3/5×5 depthwise convs fit XNNPACK's "
                                f"sparse subgraph (a residual only when the layer keeps its input's shape)")
    return _wrapper(sig, point, seed, True), _wrapper(sig, point, seed, False)
