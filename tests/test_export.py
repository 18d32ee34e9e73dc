import numpy as np
import onnxruntime as ort
import pytest
import torch

from latbench.export.onnx import export_network, layer_variant_onnx, random_layer_weights
from latbench.layers import LayerPoint, LayerSignature
from variant_reference import variant_reference
from latbench.models import ZOO, Architecture, get_model, materialize, random_architectures


def _run(onnx_bytes, feeds):
    s = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_exported_networks_match_torch(name):
    spec = get_model(name)
    for arch in [Architecture.full(spec)] + random_architectures(spec, 1, seed=2, sparsities=(0.0, 0.5, 0.9)):
        net = materialize(arch, spec)
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        ref = net(x).detach().numpy()
        out = _run(export_network(net, arch.resolution), {"input": x.numpy()})
        assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("sig", [
    LayerSignature("conv", 3, 2, 1, "relu6", fixed_in=3), LayerSignature("conv", 3, 1, 1, "relu", residual=True),
    LayerSignature("depthwise", 3, 2, 1, "relu6"), LayerSignature("pointwise", 1, 1, 0, "none", residual=True),
    LayerSignature("maxpool", 3, 2, 1), LayerSignature("avgpool"), LayerSignature("linear", fixed_out=10),
])
def test_layer_variants_compute_what_torch_computes(sig):
    point = sig.point(in_channels=12, out_channels=20, sparsity=0.5, input_hw=15)
    x, r, ref = variant_reference(sig, point)
    feeds = {"x": x.numpy()} if r is None else {"x": x.numpy(), "r": r.numpy()}
    if sig.kind in ("conv", "depthwise", "pointwise"):
        w, _ = random_layer_weights(sig, point)
        assert abs((w == 0).mean() - 0.5) < 0.02
    out = _run(layer_variant_onnx(sig, point), feeds)
    assert np.abs(out - ref.numpy()).max() <= 1e-4


def test_invalid_variants_are_refused_before_export():
    sig = LayerSignature("conv", 3, 1, 1, "relu")
    with pytest.raises(ValueError, match="sparsity"):
        layer_variant_onnx(sig, LayerPoint(8, 8, 1.0, 8))
    with pytest.raises(ValueError, match="channel counts"):
        layer_variant_onnx(sig, LayerPoint(0, 8, 0.0, 8))
