"""Does onnxruntime run a conv kernel alone as fast as inside a network? (issue 13: the bare sum of kernel lookups
over-predicts MobileNet-like networks on onnxruntime by 20–50 %.)

Per layer, the median over 200 runs of its kernel time from onnxruntime's own profiler (layout reorders excluded,
as ``host:onnxruntime`` times layers), one thread, ``ORT_ENABLE_ALL``:
(a) the layer alone, its output the graph output (how latbench profiles a layer);
(b) alone with a trailing GlobalAveragePool (excluded from the sum), so the output is an intermediate tensor;
(c) inside a chain of six copies (expand/project layers alternate with their inverse), the middle copies.

    python benchmarks/ort_kernel_context.py > benchmarks/results/ort_kernel_context.md
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from latbench.devices.onnxruntime import LAYOUT_OPS, OnnxRuntimeDevice, node_kernel_times

rng = np.random.default_rng(0)
DEVICE = OnnxRuntimeDevice(threads=1)            # the session latbench profiles layers with


def conv_nodes(prefix: str, x: str, cin: int, cout: int, k: int, groups: int):
    """Conv + ReLU6 (Clip), as in a MobileNet block."""
    w = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) * 0.1, prefix + "_w")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), prefix + "_b")
    lo = numpy_helper.from_array(np.array(0, np.float32), prefix + "_lo")
    hi = numpy_helper.from_array(np.array(6, np.float32), prefix + "_hi")
    nodes = [helper.make_node("Conv", [x, w.name, b.name], [prefix + "_c"], group=groups, pads=[k // 2] * 4,
                              kernel_shape=[k, k], name=prefix + "_conv"),
             helper.make_node("Clip", [prefix + "_c", lo.name, hi.name], [prefix + "_y"], name=prefix + "_clip")]
    return nodes, [w, b, lo, hi], prefix + "_y"


def model(layers, hw: int, cin: int, tail_pool: bool) -> bytes:
    x, nodes, inits, c = "x", [], [], cin
    for i, (cout, k, groups) in enumerate(layers):
        n, ini, x = conv_nodes(f"l{i}", x, c, cout, k, groups)
        nodes, inits, c = nodes + n, inits + ini, cout
    if tail_pool:
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="tail_pool"))
        x = "pooled"
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def kernel_ms(onnx_bytes: bytes, hw: int, cin: int, runs: int = 200) -> dict[str, float]:
    """Median kernel time per node over ``runs`` runs (after 20 warm-up runs), layout reorders left out."""
    session = DEVICE.session(onnx_bytes, profile=True)
    feed = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
    for _ in range(20 + runs):
        session.run(None, feed)
    return {name: float(np.median(times[-runs:])) for (name, op), times in node_kernel_times(session).items()
            if op not in LAYOUT_OPS}


def layer_ms(times: dict[str, float], index: int) -> float:
    return sum(v for name, v in times.items() if name.startswith(f"l{index}_"))


cases = {  # name: (hw, cin, (cout, k, groups))
    "pw expand 24->144 @56": (56, 24, (144, 1, 1)),
    "dw 144 @56": (56, 144, (144, 3, 144)),
    "pw project 144->24 @56": (56, 144, (24, 1, 1)),
    "dw 576 @14": (14, 576, (576, 3, 576)),
    "conv3x3 64->64 @56": (56, 64, (64, 3, 1)),
    "conv3x3 256->256 @14": (14, 256, (256, 3, 1)),
}
print("| layer | alone (a) ms | alone + pool (b) ms | in chain (c, middle copies) ms | a/c | b/c |")
print("|---|---|---|---|---|---|")
for name, (hw, cin, (cout, k, g)) in cases.items():
    a = layer_ms(kernel_ms(model([(cout, k, g)], hw, cin, False), hw, cin), 0)
    b = layer_ms(kernel_ms(model([(cout, k, g)], hw, cin, True), hw, cin), 0)
    # six copies (an expand/project layer alternates with its inverse); the middle copies of this layer
    chain, middle = ([(cout, k, g)] * 6, (2, 3)) if cin == cout else ([(cout, k, g), (cin, k, g)] * 3, (2, 4))
    in_chain = kernel_ms(model(chain, hw, cin, True), hw, cin)
    c = float(np.mean([layer_ms(in_chain, i) for i in middle]))
    print(f"| {name} | {a:.4f} | {b:.4f} | {c:.4f} | {a / c:.2f} | {b / c:.2f} |", flush=True)
