import numpy as np
import pytest
import torch
from torch import nn

from latbench.export.onnx import random_layer_weights
from latbench.layers import LayerPoint, LayerSignature
from variant_reference import variant_reference
from latbench.models import ZOO, Architecture, get_model, materialize, random_architectures

from ai_edge_litert import schema_py_generated as tfl  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

from latbench.export.tflite import TFLiteExportError, layer_variant_tflite, network_to_tflite  # noqa: E402

XNNPACK, BUILTIN = OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
OP_NAMES = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}


def _run(model: bytes, feeds: dict, resolver=XNNPACK) -> np.ndarray:
    it = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]], dtype=np.float32))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _ops(model: bytes) -> list[str]:
    m = tfl.Model.GetRootAs(model, 0)
    sg = m.Subgraphs(0)
    return [OP_NAMES[m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode()] for i in range(sg.OperatorsLength())]


def _tensors(model: bytes) -> dict[str, tuple[tfl.Tensor, int]]:
    """name → (tensor, byte length of its buffer)."""
    m = tfl.Model.GetRootAs(model, 0)
    sg = m.Subgraphs(0)
    out = {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        out[t.Name().decode()] = (t, m.Buffers(t.Buffer()).DataLength())
    return out


def _weights_of(tensors: dict, layer: str, suffix: str):
    (found,) = [v for k, v in tensors.items() if k.startswith(layer + "/") and k.endswith("/" + suffix)]
    return found


def _archs(spec):
    # Base resolution for both; the random one has its convs at sparsity 0, 0.5 or 0.9.
    return [Architecture.full(spec)] + random_architectures(spec, 1, seed=2, sparsities=(0.0, 0.5, 0.9),
                                                            resolutions=(spec.base_resolution,))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_networks_match_torch(name):
    spec = get_model(name)
    for arch in _archs(spec):
        net = materialize(arch, spec)
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            ref = net(x).numpy()
        model = network_to_tflite(net, arch.resolution, sparse=arch.sparsity)
        assert ("DENSIFY" in _ops(model)) == bool(arch.sparsity)
        out = _run(model, {"input": _nhwc(x)})
        assert out.shape == (1, spec.num_classes)
        assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_sparse_layers_are_stored_sparse():
    spec = get_model("resnet56")
    arch = _archs(spec)[1]
    assert {0.5, 0.9} <= set(arch.sparsity.values())
    net = materialize(arch, spec)
    sparse, dense = network_to_tflite(net, arch.resolution, arch.sparsity), network_to_tflite(net, arch.resolution)
    assert "DENSIFY" not in _ops(dense)
    assert _ops(sparse).count("DENSIFY") == len(arch.sparsity)
    sparse_tensors, dense_tensors = _tensors(sparse), _tensors(dense)
    for layer, s in arch.sparsity.items():
        t, nbytes = _weights_of(sparse_tensors, layer, "weights/sparse")
        meta = t.Sparsity()
        assert meta is not None and meta.DimMetadataLength() == 4
        assert meta.DimMetadata(3).Format() == tfl.DimensionType.SPARSE_CSR
        nnz = int(np.count_nonzero(net.block(layer).conv.weight.detach().numpy()))
        assert nbytes == 4 * nnz
        numel = net.block(layer).conv.weight.numel()
        dense_t, dense_nbytes = _weights_of(dense_tensors, layer, "weights")
        assert dense_nbytes == 4 * numel > nbytes and dense_t.Sparsity() is None
        assert abs(nnz / numel - (1 - s)) < 0.01
    # sparse=True picks every conv that has zeros, which here are exactly the sparsified ones.
    assert _ops(network_to_tflite(net, arch.resolution, sparse=True)).count("DENSIFY") == len(arch.sparsity)


def test_file_layout():
    spec = get_model("resnet56")
    arch = _archs(spec)[1]
    model = network_to_tflite(materialize(arch, spec), arch.resolution, arch.sparsity)
    assert model[4:8] == b"TFL3"
    m = tfl.Model.GetRootAs(model, 0)
    assert m.Version() == 3 and m.Buffers(0).DataLength() == 0
    with_data = [m.Buffers(i) for i in range(m.BuffersLength()) if m.Buffers(i).DataLength()]
    assert len(with_data) > 50
    assert all(b._tab.Vector(4) % 16 == 0 for b in with_data)  # data start 16-byte aligned in the file
    sg = m.Subgraphs(0)
    assert list(sg.Tensors(sg.Inputs(0)).ShapeAsNumpy()) == [1, arch.resolution, arch.resolution, 3]


def test_xnnpack_and_builtin_kernels_agree():
    spec = get_model("mobilenet_v2_cifar")  # depthwise, residual adds, relu6, PAD, DENSIFY
    arch = _archs(spec)[1]
    model = network_to_tflite(materialize(arch, spec), arch.resolution, arch.sparsity)
    x = np.random.default_rng(0).standard_normal((1, arch.resolution, arch.resolution, 3)).astype(np.float32)
    a, b = _run(model, {"input": x}, XNNPACK), _run(model, {"input": x}, BUILTIN)
    assert np.abs(a).max() > 0
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("resolver", [XNNPACK, BUILTIN], ids=["xnnpack", "builtin"])
@pytest.mark.parametrize("sig", [
    LayerSignature("conv", 3, 2, 1, "relu6", fixed_in=3), LayerSignature("conv", 3, 1, 1, "relu", residual=True),
    LayerSignature("depthwise", 3, 2, 1, "relu6"), LayerSignature("pointwise", 1, 1, 0, "none", residual=True),
    LayerSignature("maxpool", 3, 2, 1), LayerSignature("avgpool"), LayerSignature("linear", fixed_out=10),
], ids=lambda s: s.key)
def test_layer_variants_compute_what_torch_computes(sig, resolver):
    sparsity = 0.5 if sig.kind in ("conv", "depthwise", "pointwise") else 0.0
    point = sig.point(in_channels=12, out_channels=20, sparsity=sparsity, input_hw=15)
    x, r, ref = variant_reference(sig, point)
    feeds = {"x": x.numpy() if sig.kind == "linear" else _nhwc(x)}
    if r is not None:
        feeds["r"] = _nhwc(r)
    if sparsity:
        w, _ = random_layer_weights(sig, point)
        assert abs((w == 0).mean() - 0.5) < 0.02
    model = layer_variant_tflite(sig, point)
    assert ("DENSIFY" in _ops(model)) == (sparsity > 0)
    if ref.ndim == 4:
        ref = ref.permute(0, 2, 3, 1)
    out = _run(model, feeds, resolver)
    assert out.shape == tuple(ref.shape)
    assert np.abs(out - ref.numpy()).max() <= 1e-4


def test_max_pool_pads_with_the_lowest_value():
    # All-negative input: zero padding would leak 0 into the border windows.
    sig = LayerSignature("maxpool", 3, 2, 1)
    x = -1.0 - np.random.default_rng(0).random((1, 4, 7, 7)).astype(np.float32)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1).permute(0, 2, 3, 1).numpy()
    out = _run(layer_variant_tflite(sig, sig.point(in_channels=4, input_hw=7)), {"x": x.transpose(0, 2, 3, 1)})
    assert np.array_equal(out, ref)


def test_invalid_variants_are_refused_before_export():
    sig = LayerSignature("conv", 3, 1, 1, "relu")
    with pytest.raises(TFLiteExportError, match="sparsity"):
        layer_variant_tflite(sig, LayerPoint(8, 8, 1.0, 8))
    with pytest.raises(TFLiteExportError, match="channel counts"):
        layer_variant_tflite(sig, LayerPoint(0, 8, 0.0, 8))
    with pytest.raises(TFLiteExportError, match="unsupported layer kind 'conv3d'"):
        layer_variant_tflite(LayerSignature("conv3d", 3), LayerPoint(8, 8, 0.0, 8))
    with pytest.raises(TFLiteExportError, match="keeps its width"):
        layer_variant_tflite(LayerSignature("depthwise", 3, 1, 1), LayerPoint(8, 16, 0.0, 8))


def test_unsupported_modules_are_named():
    spec = get_model("resnet56")
    arch = Architecture.full(spec)
    net = materialize(arch, spec)
    net.block("avgpool")[0] = nn.AdaptiveMaxPool2d(1)
    with pytest.raises(TFLiteExportError, match="avgpool.*Sequential"):
        network_to_tflite(net, arch.resolution)
    net = materialize(arch, spec)
    net.block(spec.layers[1].name).act = nn.Sigmoid()
    with pytest.raises(TFLiteExportError, match="Sigmoid"):
        network_to_tflite(net, arch.resolution)
    net = materialize(arch, spec)
    with pytest.raises(TFLiteExportError, match="not layers of"):
        network_to_tflite(net, arch.resolution, sparse={"nope": 0.5})
