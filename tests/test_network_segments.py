"""benchmarks/network_segments.py cuts a network where one tensor alone carries everything later nodes read."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmark_scripts import load_benchmark_script


def _residual_net():
    """conv → relu → [conv → add(relu)] → relu → global pool → flatten: node 3 (the add) closes a residual."""
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), dtype=np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv0"),
             helper.make_node("Relu", ["a"], ["b"], name="relu0"),
             helper.make_node("Conv", ["b", "w"], ["c"], name="conv1"),
             helper.make_node("Add", ["c", "b"], ["d"], name="add"),
             helper.make_node("Relu", ["d"], ["e"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["e"], ["f"], name="gap"),
             helper.make_node("Flatten", ["f"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph)


def test_cuts_never_fall_inside_a_residual_block_and_end_with_the_network():
    script = load_benchmark_script("network_segments")
    model = _residual_net()
    # after conv1 both c and b are live (the add reads b): no cut there
    assert script.cut_positions(model, 10) == [0, 1, 3, 4, 5, 6]
    assert script.cut_positions(model, 2) == [0, 5, 6]            # the first and the last candidate
    # conv1 + add + relu1 (nodes 2–4) as one kernel: no cut after the add either
    assert script.cut_positions(model, 10, [(0, 1), (2, 4)]) == [1, 4, 5, 6]
