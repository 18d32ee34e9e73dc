"""BatchNormalization given back to imported graphs whose exporter folded it (latbench.models.onnx_bn), and an
imported graph at another input resolution (latbench.models.onnx_load.at_resolution) — on CNNs written
independently of latbench (timm), exported as a user would."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from latbench.api import load_model
from latbench.export import export_imported_network, export_network_for
from latbench.models import Architecture
from latbench.models.onnx_bn import (UNFOLDED_SUFFIX, fold_unfolded_batchnorm, has_unfolded_batchnorm, unfold_batchnorm,
                                     unfolded_convs)
from latbench.models.onnx_channels import analyse_channels, bn_scale_scores
from latbench.models.onnx_graph import OnnxModelError, kernel_nodes_of
from latbench.models.onnx_load import at_resolution, load_user_onnx
from latbench.models.onnx_torch import full_network, materialize_imported
from latbench.train import load_checkpoint, save_checkpoint
from realworld_models import grey_user_model, timm_available

pytestmark = pytest.mark.skipif(not timm_available(), reason="timm is not installed (pip install --no-deps timm)")


@pytest.fixture(scope="module")
def mnv3(tmp_path_factory) -> Path:
    """SE blocks and hard-swish: the SE convs must stay as they are."""
    return grey_user_model(tmp_path_factory, "mobilenetv3_small_050")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def calibration(n: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 1, size, size, generator=g) for _ in range(n)]


def test_unfolded_bn_is_the_identity_in_eval_mode_and_folds_back_to_the_users_graph(mnv3):
    spec = load_model(str(mnv3))
    net = full_network(spec)
    convs = unfolded_convs(net.model, spec)
    unfolded = unfold_batchnorm(net, calibration())
    inserted = [n for n in unfolded.nodes if n.op_type == "BatchNormalization"]
    assert len(inserted) == len(convs) > 20 and all(n.name.endswith(UNFOLDED_SUFFIX) for n in inserted)
    # The SE blocks' convs (1×1 outputs, no feature maps) get none.
    se_convs = [n.name for n in net.nodes if n.op_type == "Conv" and "/se/" in n.name]
    assert se_convs and not set(se_convs) & {c.name for c in convs}
    # Same kernels and channel groups: a BN joins its conv's kernel.
    assert list(kernel_nodes_of(unfolded.model, spec.name)) == list(kernel_nodes_of(net.model, spec.name))
    assert list(analyse_channels(unfolded.model).groups) == list(analyse_channels(net.model).groups)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(unfolded.eval()(x).numpy(), net.eval()(x).numpy(), rtol=1e-4, atol=1e-6)
    folded = fold_unfolded_batchnorm(unfolded.to_onnx())
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in net.model.graph.node]
    assert not any(UNFOLDED_SUFFIX in t.name for t in folded.graph.initializer if "folded_bias" not in t.name)
    np.testing.assert_allclose(run(folded, x[:1].numpy()), run(net.model, x[:1].numpy()), rtol=1e-4, atol=1e-6)


def test_unfolded_bn_normalises_in_training_and_its_gamma_is_the_channels_scale(mnv3):
    spec = load_model(str(mnv3))
    net = full_network(spec)
    batches = calibration()
    unfolded = unfold_batchnorm(net, batches)
    bn = next(n for n in unfolded.nodes if n.op_type == "BatchNormalization")
    gamma = unfolded.tensor(bn.input[1]).detach().numpy()
    # γ = the conv output's standard deviation over the calibration images (computed here by ORT, independently)
    stem = next(n for n in net.model.graph.node if n.op_type == "Conv")
    probe = onnx.ModelProto()
    probe.CopyFrom(net.model)
    probe.graph.output.extend([helper.make_tensor_value_info(stem.output[0], TensorProto.FLOAT, None)])
    session = ort.InferenceSession(probe.SerializeToString())
    outs = [session.run([stem.output[0]], {session.get_inputs()[0].name: x[i:i + 1].numpy()})[0]
            for x in batches for i in range(len(x))]
    y = np.concatenate(outs).transpose(1, 0, 2, 3).reshape(len(gamma), -1)
    np.testing.assert_allclose(gamma, np.sqrt(y.var(axis=1) + 1e-5), rtol=1e-3)
    # Slimming has γ to rank by: the SE squeeze widths have none and say so.
    scores = bn_scale_scores(unfolded.to_onnx(), unfolded.channel_graph())
    assert all(scores[g] is None for g in spec.groups if "/se/" in g)
    assert all(scores[g] is not None and (scores[g] > 0).all() for g in spec.groups if "/se/" not in g)
    assert bn_scale_scores(net.model, net.channel_graph())[stem.name + ".out"] is None     # folded: nothing to rank


def test_a_network_trained_with_unfolded_bn_is_saved_and_loaded_with_it(mnv3, tmp_path):
    """A pruned network of an imported model that trained with its BN given back: its checkpoint says so, and
    load_checkpoint rebuilds the BN nodes (mean 0, variance 1 before the weights load) — it failed with
    "weights do not fit" before."""
    spec = load_model(str(mnv3))
    unfolded = unfold_batchnorm(full_network(spec), calibration())
    layout = unfold_batchnorm(full_network(spec), None)
    assert ([(n.op_type, n.name) for n in layout.nodes] == [(n.op_type, n.name) for n in unfolded.nodes]
            and has_unfolded_batchnorm(layout.model) and not has_unfolded_batchnorm(full_network(spec).model))
    arch = Architecture(spec.name, 32, {g: max(8, w // 2) for g, w in spec.groups.items()})
    net = materialize_imported(arch, spec, unfolded)
    with torch.no_grad():                    # "trained": BN parameters and statistics no longer the calibration's
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.mul_(1.1)
    save_checkpoint(tmp_path / "p.safetensors", net, arch=arch)
    loaded, loaded_arch, meta = load_checkpoint(tmp_path / "p.safetensors")
    assert meta["source"]["batchnorm"] == "unfolded" and loaded_arch == arch
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
    plain = materialize_imported(arch, spec)                 # a network trained without: the file's layout
    save_checkpoint(tmp_path / "q.safetensors", plain, arch=arch)
    assert load_checkpoint(tmp_path / "q.safetensors")[2]["source"]["batchnorm"] == "file"


def test_an_imported_graph_runs_and_ships_at_another_resolution(mnv3):
    spec = load_model(str(mnv3))
    model = load_user_onnx(mnv3)
    at24 = at_resolution(model, 24, spec.name)
    x = np.random.default_rng(0).standard_normal((1, 1, 24, 24)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(run(at24, x), full_network(spec).eval()(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)
    arch = Architecture(spec.name, 24, {g: max(8, w // 2) if w >= 16 else w for g, w in spec.groups.items()})
    for shipped in (onnx.load_from_string(export_imported_network("onnx", spec, arch)),
                    onnx.load_from_string(export_network_for("onnx", full_network(spec), Architecture(
                        spec.name, 24, dict(spec.groups))))):
        assert [d.dim_value for d in shipped.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 24, 24]
        assert run(shipped, x).shape == (1, 10)


def _fixed_reshape_model(path: Path) -> Path:
    """A CNN that flattens by reshaping to a constant [1, C·H·W]: it only runs at its own input size."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4 * 8 * 8], dtype=np.int64), "shape")
    fc = numpy_helper.from_array(np.zeros((10, 256), dtype=np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten_fixed"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, shape, fc])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_graph_that_fixes_its_input_size_is_refused_at_another_resolution_naming_the_node(tmp_path):
    model = load_user_onnx(_fixed_reshape_model(tmp_path / "fixed.onnx"))
    assert at_resolution(model, 8) is model                    # its own size: nothing to change
    with pytest.raises(OnnxModelError, match=r"flatten_fixed.*fixes its input size"):
        at_resolution(model, 6, "fixed")
