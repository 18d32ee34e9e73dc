"""Tracing kernels in onnxruntime's own profile of a whole network (benchmarks/ort_in_network.py), and the
repeatability figures of benchmarks/network_repeatability.py."""
import numpy as np
import pytest
from benchmark_scripts import load_benchmark_script
from realworld_models import REALWORLD, realworld_onnx  # noqa: F401  (fixture)

from latbench.devices.onnxruntime import OnnxRuntimeDevice, node_kernel_times
from latbench.models.onnx_graph import kernel_nodes, load_model_graph, spec_from_onnx


@pytest.mark.parametrize("family", ["efficientnet_b0", "ghostnet"])
def test_every_profiled_node_of_a_real_network_is_a_kernel_or_a_layout_conversion(realworld_onnx, family):
    """EfficientNet's SiLU becomes onnxruntime's QuickGelu, its convs NCHWc nodes named after their outputs; GhostNet
    concatenates and slices between them. Every compute node is traced back to one of latbench's kernels."""
    path = realworld_onnx(REALWORLD[family])
    kernels = kernel_nodes(path)
    assert set(kernels) == {layer.name for layer in spec_from_onnx(path).layers}
    nodes = [n for k in kernels.values() for n in k]
    assert len(nodes) == len(set(nodes))                        # no node in two kernels
    device = OnnxRuntimeDevice(threads=1)
    session = device.session(path.read_bytes(), profile=True)
    device._run_once(session)()
    per_node = {key: times[0] for key, times in node_kernel_times(session).items()}
    device.close()
    outputs = {o: n.name for n in load_model_graph(path).graph.node for o in n.output}
    script = load_benchmark_script("ort_in_network")
    by_kernel, layout, unattributed = script.attribute(per_node, kernels, outputs)
    assert unattributed == 0.0
    assert sum(by_kernel.values()) + layout == pytest.approx(sum(per_node.values()))
    assert len(by_kernel) >= 0.9 * len(kernels)       # a few kernels fold away (e.g. a flatten)


def test_attribution_names_what_it_cannot_place():
    script = load_benchmark_script("ort_in_network")
    per_node = {("y_nchwc", "Conv"): 1.0, ("ReorderOutput_token_3", "ReorderOutput"): 0.25,
                ("/act/Mul/QuickGeluFusion/", "QuickGelu"): 0.5, ("mystery", "Foo"): 0.125}
    kernels = {"conv": ("conv_node",), "act": ("/act/Mul",)}
    by_kernel, layout, unattributed = script.attribute(per_node, kernels, {"y": "conv_node"})
    assert by_kernel == {"conv": 1.0, "act": 0.5} and layout == 0.25 and unattributed == 0.125


def test_repeatability_figures():
    script = load_benchmark_script("network_repeatability")
    one = script.spread(np.array([10.0, 10.4, 9.8, 11.5]))
    assert one["spread"] == pytest.approx(11.5 / 9.8 - 1)
    assert one["within_5pct"] == 0.75 and one["within_10pct"] == 0.75     # 11.5 is 13 % above the median 10.2
    pooled = script.pooled([one, script.spread(np.array([2.0, 2.0]))])
    assert pooled["measurements"] == 6 and pooled["within_10pct"] == pytest.approx(5 / 6)
    assert pooled["worst_spread"] == pytest.approx(one["spread"])
