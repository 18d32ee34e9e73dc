"""Does onnxruntime run a conv kernel alone as fast as inside a network? (issue 13: the bare sum of kernel lookups
over-predicts MobileNet-like networks on onnxruntime by 20–50 %.)

Per layer, the median over 200 runs of its kernel time from onnxruntime's own profiler (layout reorders excluded,
as ``host:onnxruntime`` times layers), one thread, ``ORT_ENABLE_ALL``:
(a) the layer alone, its output the graph output (how latbench profiles a layer);
(b) alone with a trailing GlobalAveragePool (excluded from the sum), so the output is an intermediate tensor;
(c) inside a chain of six copies (expand/project layers alternate with their inverse), the middle copies.

    python benchmarks/ort_kernel_context.py > benchmarks/results/ort_kernel_context.md
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)

def conv_nodes(prefix, x, cin, cout, k, groups, act=True):
    w = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) * 0.1, prefix + "_w")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), prefix + "_b")
    y = prefix + "_y"
    nodes = [helper.make_node("Conv", [x, w.name, b.name], [y if not act else prefix + "_c"], group=groups,
                              pads=[k // 2] * 4, kernel_shape=[k, k], name=prefix + "_conv")]
    inits = [w, b]
    if act:
        lo = numpy_helper.from_array(np.array(0, np.float32), prefix + "_lo"); hi = numpy_helper.from_array(np.array(6, np.float32), prefix + "_hi")
        nodes.append(helper.make_node("Clip", [prefix + "_c", lo.name, hi.name], [y], name=prefix + "_clip")); inits += [lo, hi]
    return nodes, inits, y

def model(layers, hw, cin, tail_pool):
    x = "x"; nodes = []; inits = []
    c = cin
    for i, (cout, k, groups) in enumerate(layers):
        n, ini, x = conv_nodes(f"l{i}", x, c, cout, k, groups); nodes += n; inits += ini; c = cout
    out = x
    if tail_pool:
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="tail_pool")); out = "pooled"
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    return m.SerializeToString()

def kernel_times(onnx_bytes, hw, cin, runs=200):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL; so.log_severity_level = 3
    tmp = tempfile.mkdtemp(); so.enable_profiling = True; so.profile_file_prefix = tmp + "/p"
    s = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
    for _ in range(20): s.run(None, feed)
    walls = []
    for _ in range(runs):
        t = time.perf_counter(); s.run(None, feed); walls.append(time.perf_counter() - t)
    ev = json.loads(Path(s.end_profiling()).read_text())
    per = {}
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault((e["name"], e["args"].get("op_name")), []).append(e["dur"] / 1e3)
    med = {k: float(np.median(v[-runs:])) for k, v in per.items()}
    return med, float(np.median(walls)) * 1e3

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
    alone, _ = kernel_times(model([(cout, k, g)], hw, cin, False), hw, cin)
    a = sum(v for (n, op), v in alone.items() if op not in ("ReorderInput", "ReorderOutput"))
    pooled, _ = kernel_times(model([(cout, k, g)], hw, cin, True), hw, cin)
    b = sum(v for (n, op), v in pooled.items() if op not in ("ReorderInput", "ReorderOutput", "GlobalAveragePool"))
    if cin == cout:
        chain = [(cout, k, g)] * 6
        ch, _ = kernel_times(model(chain, hw, cin, True), hw, cin)
        mids = [sum(v for (n, op), v in ch.items() if n.startswith(f"l{i}_") and op not in ("ReorderInput", "ReorderOutput")) for i in (2, 3)]
        c = float(np.mean(mids))
    else:   # expand/project pairs: chain cin->cout->cin->cout ...
        chain = [(cout, k, g), (cin, k, g)] * 3
        ch, _ = kernel_times(model(chain, hw, cin, True), hw, cin)
        c = float(np.mean([sum(v for (n, op), v in ch.items() if n.startswith(f"l{i}_") and op not in ("ReorderInput", "ReorderOutput")) for i in (2, 4)]))
    print(f"| {name} | {a:.4f} | {b:.4f} | {c:.4f} | {a/c:.2f} | {b/c:.2f} |", flush=True)
