"""Export in the format a device runs: ONNX (``onnx.py``) or TFLite (``tflite.py``).

The pipeline calls these helpers with ``device.model_format``; the writers are imported lazily so
that the ONNX path does not load the TFLite schema bindings and vice versa.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ..devices.base import MODEL_FORMATS

if TYPE_CHECKING:
    from ..layers import LayerPoint, LayerSignature
    from ..models.arch import Architecture
    from ..models.spec import ModelSpec
    from ..models.torch_net import GraphNet


def _check(fmt: str) -> None:
    if fmt not in MODEL_FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; expected one of {MODEL_FORMATS}")


def export_layer_variant(fmt: str, sig: "LayerSignature", point: "LayerPoint", seed: int = 0) -> bytes:
    """A one-layer model of ``sig`` at ``point`` in format ``fmt``."""
    _check(fmt)
    from .onnx import layer_variant_onnx

    if fmt == "tflite":
        from .tflite import layer_variant_tflite, writes_natively

        if writes_natively(sig):
            return layer_variant_tflite(sig, point, seed)
        # Kernels of imported networks (SE, grouped convs, hard-swish, ops): the ONNX kernel, converted
        from .onnx_tflite import onnx_to_tflite

        return onnx_to_tflite(layer_variant_onnx(sig, point, seed))
    return layer_variant_onnx(sig, point, seed)


def export_sparse_wrapper(fmt: str, sig: "LayerSignature", point: "LayerPoint",
                          seed: int = 0) -> tuple[bytes, bytes] | None:
    """(with_layer, baseline) models when ``sig`` at ``point`` is timed inside a wrapper in format
    ``fmt`` — sparse TFLite convs that XNNPACK runs sparse only inside a CHW subgraph (see
    ``tflite.sparse_wrapper_tflite``); ``None`` when the layer variant is timed alone."""
    _check(fmt)
    if fmt != "tflite":
        return None
    from .tflite import needs_sparse_wrapper, sparse_wrapper_tflite

    return sparse_wrapper_tflite(sig, point, seed) if needs_sparse_wrapper(sig, point) else None


def export_imported_network(fmt: str, spec: "ModelSpec", arch: "Architecture") -> bytes:
    """A pruned variant of an imported model (``spec.source``, an ONNX file) at ``arch``'s widths: the user's own
    graph with its weights sliced (:func:`latbench.models.onnx_channels.prune_onnx`), in format ``fmt``."""
    _check(fmt)
    from ..models.onnx_channels import prune_onnx

    model, channels = _imported_graph(spec.source, spec.input_shape)
    return _graph_in(fmt, _at(prune_onnx(model, channels, dict(arch.widths)), arch, spec.name))


def _at(model, arch: "Architecture", label: str):
    """An imported graph at ``arch``'s resolution (the file's own size needs no change)."""
    from ..models.onnx_load import at_resolution

    return at_resolution(model, arch.resolution, label)


def _graph_in(fmt: str, model) -> bytes:
    """An ONNX graph as ``fmt`` bytes (TFLite through latbench's converter)."""
    if fmt == "tflite":
        from .onnx_tflite import onnx_to_tflite

        return onnx_to_tflite(model)
    return model.SerializeToString()


@functools.lru_cache(maxsize=4)
def _imported_graph(source: str, input_shape: tuple[int, ...]):
    """The normalised graph and its channel groups, read once per file (validation exports many variants)."""
    from ..models.onnx_channels import analyse_channels
    from ..models.onnx_load import load_user_onnx

    model = load_user_onnx(source, input_shape=input_shape or None)
    return model, analyse_channels(model)


def export_network_for(fmt: str, net: "GraphNet", arch: "Architecture") -> bytes:
    """``net`` (materialised from ``arch``) in format ``fmt`` at ``arch.resolution``; TFLite stores the
    convs that ``arch`` makes sparse compressed (CSR + DENSIFY)."""
    _check(fmt)
    if hasattr(net, "to_onnx"):       # an imported model's network (OnnxNet): its own graph, trained weights
        from ..models.onnx_bn import fold_unfolded_batchnorm

        # BN latbench gave back for training is folded again: the file has the user's structure
        return _graph_in(fmt, _at(fold_unfolded_batchnorm(net.to_onnx()), arch, getattr(net.spec, "name", "the model")))
    if fmt == "tflite":
        from .tflite import network_to_tflite

        return network_to_tflite(net, arch.resolution, sparse=dict(arch.sparsity))
    from .onnx import export_network

    stem = next(layer for layer in net.spec.layers if layer.fixed_in is not None)
    return export_network(net, arch.resolution, net.block(stem.name).conv.in_channels)  # 1 for grey images


__all__ = ["export_imported_network", "export_layer_variant", "export_network_for", "export_sparse_wrapper"]
