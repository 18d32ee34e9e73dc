"""onnxruntime: each kernel's lookup against the same kernel inside the whole network, from onnxruntime's own
per-node profile of the network (issue 13: what a prediction from lookups misses on an unseen model).

Per model (timm 1.0.31, random weights, 224×224, exported as ``benchmarks/realworld.py`` does): the kernels are
profiled as latbench profiles them (``host:onnxruntime``, adaptive grid, into a store under ``out``) and looked up
at full width; the whole network runs ``runs`` times with onnxruntime's profiler on, and every node's median
kernel time is attributed to the kernel whose ONNX nodes it computes (onnxruntime names a node it converts to
NCHWc after its output; a fused Sigmoid·Mul is ``QuickGelu``). Reported per model: the layout conversions
(``ReorderInput``/``ReorderOutput``) the network runs *between* kernels, which no lookup holds, as a share of its
profiled time, and per kernel category the in-network time over the lookups, relative to the model's overall
ratio (lookups are in the reference unit, the profile in raw milliseconds: only the shape is compared).

    python benchmarks/ort_in_network.py > benchmarks/results/ort_in_network.md      # ≈ 8 min on 2 cores
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from latbench.cli.options import script_main
from latbench.recipe import Opt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


@dataclass(frozen=True, kw_only=True)
class InNetwork:
    models: Annotated[tuple[str, ...], Opt(help="families of tests/realworld_models.py")] = (
        "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "ghostnet", "resnet18")
    runs: int = 200
    out: str = "runs/ort-in-network"


def attribute(per_node: dict[tuple[str, str], float], kernels: dict[str, tuple[str, ...]],
              outputs: dict[str, str]) -> tuple[dict[str, float], float, float]:
    """``per_node`` {(profile name, op): ms} → ({kernel: ms}, layout conversions ms, unattributed ms).
    ``outputs``: ONNX tensor → the node that writes it (NCHWc nodes are named ``<output>_nchwc``)."""
    node_kernel = {n: k for k, nodes in kernels.items() for n in nodes}
    by_kernel: dict[str, float] = defaultdict(float)
    layout = other = 0.0
    for (name, op), ms in per_node.items():
        if op in LAYOUT_OPS:
            layout += ms
            continue
        base = name.removesuffix("_nchwc")
        node = base if base in node_kernel else outputs.get(base)
        if node is None and "/QuickGeluFusion" in name:      # Sigmoid·Mul fused: named after the Mul
            node = name.split("/QuickGeluFusion")[0]
        if node in node_kernel:
            by_kernel[node_kernel[node]] += ms
        else:
            other += ms
    return dict(by_kernel), layout, other


def _model(name: str, exp: InNetwork) -> dict:
    from realworld_models import exported_family

    from latbench import api
    from latbench.devices.onnxruntime import OnnxRuntimeDevice, node_kernel_times
    from latbench.models import Architecture
    from latbench.models.onnx_graph import kernel_nodes, load_model_graph
    from latbench.predictor import Predictor, kernel_category

    out = ROOT / exp.out
    path = exported_family(name, out / "models")
    spec = api.load_model(str(path))
    store = out / "measurements.db"
    api.profile(spec, "host:onnxruntime", store, progress=False)
    table = api.build_table([spec], "host:onnxruntime", store, calibrate=0, progress=False)
    lookups = dict(zip(*Predictor(spec, table).breakdown(Architecture.full(spec))[["layer", "latency_ms"]].T.values))
    device = OnnxRuntimeDevice(threads=1)
    session = device.session(path.read_bytes(), profile=True)
    run = device._run_once(session)
    for _ in range(20 + exp.runs):
        run()
    per_node = {key: float(np.median(times[-exp.runs:])) for key, times in node_kernel_times(session).items()}
    device.close()
    outputs = {o: n.name for n in load_model_graph(path).graph.node for o in n.output}
    in_network, layout, other = attribute(per_node, kernel_nodes(path), outputs)
    categories: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for layer in spec.layers:
        cat = categories[kernel_category(layer)]
        cat[0] += lookups[layer.name]
        cat[1] += in_network.get(layer.name, 0.0)
    profiled = sum(per_node.values())
    return {"model": name, "kernels": len(spec.layers), "profiled_ms": profiled, "layout_ms": layout,
            "unattributed_ms": other, "lookup_ms": sum(lookups.values()), "in_network_ms": sum(in_network.values()),
            "categories": {c: tuple(v) for c, v in sorted(categories.items())}}


def main(exp: InNetwork) -> None:
    from realworld_models import benchmark_families

    rows = [_model(name, exp) for name in benchmark_families(exp.models)]
    print("| model | kernels | network profile, ms | layout conversions between kernels | unattributed |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kernels']} | {r['profiled_ms']:.2f} | {r['layout_ms']:.2f} ms "
              f"({r['layout_ms'] / r['profiled_ms']:.0%}) | {r['unattributed_ms']:.2f} ms |")
    print()
    print("In-network time / lookup per kernel category, relative to the model's overall in-network / lookup "
          "(1.00 = the category is as far off as the model as a whole; share of the lookups in brackets):")
    print()
    cats = sorted({c for r in rows for c in r["categories"]})
    print("| model | " + " | ".join(cats) + " |")
    print("|---|" + "---|" * len(cats))
    for r in rows:
        overall = r["in_network_ms"] / r["lookup_ms"]
        cells = []
        for c in cats:
            lookup, inside = r["categories"].get(c, (0.0, 0.0))
            cells.append(f"{inside / lookup / overall:.2f} ({lookup / r['lookup_ms']:.0%})" if lookup else "–")
        print(f"| {r['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    script_main(InNetwork, main, doc=__doc__)
