"""OnnxNet: a user's ONNX graph executed and trained in torch, written back to ONNX with its trained weights.
Checked against onnxruntime on independently written models (timm, tests/realworld_models.py)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from latbench.models.onnx_channels import analyse_channels, prune_onnx
from latbench.models.onnx_graph import OnnxModelError
from latbench.models.onnx_load import load_user_onnx
from latbench.models.onnx_torch import OnnxNet
from realworld_models import realworld_onnx  # noqa: F401  (the session fixture)

FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0_tf", "regnety_200mf", "ghostnet",
            "mnasnet", "resnet18", "densenet121"]


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_torch_module_computes_what_onnxruntime_computes(realworld_onnx, family):
    model = load_user_onnx(realworld_onnx(family, resolution=64))
    net = OnnxNet(model).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    expected = run_ort(model, x)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    # any batch size: the graph's batch of 1 is not baked into its reshapes
    with torch.no_grad():
        batch = net(torch.from_numpy(np.concatenate([x, 0.5 * x, -x])))
    np.testing.assert_allclose(batch[0].numpy(), ours[0], rtol=1e-4, atol=1e-4 * float(np.abs(ours).max()))
    assert batch.shape[0] == 3


@pytest.mark.parametrize("family", ["mobilenet_v3_small", "ghostnet", "regnety_200mf"])
def test_a_pruned_graph_trains_and_its_trained_weights_are_written_back(realworld_onnx, family):
    """Pruned, one SGD step on a batch, written back: onnxruntime on the written graph computes what the
    trained module computes, the structure is the pruned graph's, and the weights moved."""
    model = load_user_onnx(realworld_onnx(family, resolution=64))
    graph = analyse_channels(model)
    widths = {g: max(grp.min_width, grp.width // 2 // grp.multiple * grp.multiple)
              for g, grp in graph.groups.items() if grp.prunable}
    pruned = prune_onnx(model, graph, widths)
    net = OnnxNet(pruned)
    before = {k: v.detach().clone() for k, v in net.params.items()}
    assert before, "the convolutions' weights are parameters"
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.randn(4, 3, 64, 64)
    net.train()
    loss = F.cross_entropy(net(x), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in net.params.items())
    written = net.to_onnx()
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in pruned.graph.node]
    onnx.checker.check_model(written)
    net.eval()
    probe = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(run_ort(written, probe), ours, rtol=1e-3, atol=1e-3 * float(np.abs(ours).max()))
    # the original pruned graph computes something else now
    assert not np.allclose(run_ort(pruned, probe), ours, rtol=1e-4, atol=1e-5)


def _bn_model() -> onnx.ModelProto:
    """conv → BatchNormalization → Relu → global pool → Gemm, with BN left unfolded (a training export)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
             numpy_helper.from_array(np.zeros(8, np.float32), "mean"),
             numpy_helper.from_array(np.ones(8, np.float32), "var"),
             numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
             numpy_helper.from_array(np.array([1, 8], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_norm_statistics_are_buffers_updated_in_training_and_written_back():
    net = OnnxNet(_bn_model())
    names = dict(net.named_buffers())
    assert {"mean", "var"} <= set(names) and {"gamma", "beta", "w", "fc_w", "fc_b"} <= set(net.params)
    net.train()
    net(torch.randn(8, 3, 16, 16) * 3 + 1)
    assert not torch.equal(net.tensor("mean"), torch.zeros(8))       # running statistics moved (torch's rule)
    written = {t.name: numpy_helper.to_array(t) for t in net.to_onnx().graph.initializer}
    np.testing.assert_array_equal(written["mean"], net.tensor("mean").numpy())
    np.testing.assert_array_equal(written["shape"], [1, 8])            # constants stay as they were


def test_an_op_without_a_torch_equivalent_is_refused_when_built_naming_the_node():
    model = _bn_model()
    model.graph.node[2].op_type = "Celu"
    with pytest.raises(OnnxModelError, match=r"'relu' \(Celu\)"):
        OnnxNet(model)
