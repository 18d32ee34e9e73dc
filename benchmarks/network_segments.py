"""Where inside a network does its measured latency part from the sum of its kernels' lookups? (issue 13)

The network (a real-world model of ``benchmarks/realworld.py``, at full width) is cut at tensors every later node
reads through alone (no other tensor crosses the cut), ``cuts`` of them spread over the graph. Each prefix — the
graph from its input to a cut — is exported as a network (ONNX, or TFLite through latbench's converter) and
measured whole with the device's protocol, the prefixes and the full network side by side in ``repeats``
interleaved passes (medians). A segment's in-network cost is the difference of two consecutive prefixes; the
kernels that end in it are summed from ``table`` (profiled on the same device). The first segment also holds the
per-invoke overhead.

    python benchmarks/network_segments.py --set table=runs/realworld/host-litert-reference-large-warm-1/table.parquet \\
        --set device='host:litert?reference=large&warm=1' --set models='["ghostnet","mobilenet_v2"]'

Writes ``benchmarks/results/realworld/segments.json`` (per model: each segment's nodes, kernels with their
lookups, measured cost).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge

from latbench.cli.options import script_main
from latbench.files import atomic_write_json
from latbench.recipe import Opt, resolved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass(frozen=True, kw_only=True)
class Segments:
    table: Annotated[str, Opt(help="latency table of the device, with the models' kernels")]
    device: Annotated[str, Opt(help="host device the table was profiled on")] = "host:litert?reference=large&warm=1"
    models: Annotated[tuple[str, ...], Opt(help="families of tests/realworld_models.py (default: all)")] = ()
    cuts: Annotated[int, Ge(1), Opt(help="cuts per network")] = 8
    repeats: Annotated[int, Ge(1), Opt(help="interleaved passes over the prefixes")] = 3
    out: str = "runs/segments"
    summary: str = "benchmarks/results/realworld/segments.json"


def cut_positions(model, cuts: int, kernel_spans: list[tuple[int, int]] = ()) -> list[int]:
    """Indices of nodes (topological order) after which exactly one computed tensor is live — their own output —
    and no kernel (``kernel_spans``: first and last node index of each) is split, ``cuts`` of them spread evenly
    over the candidates from the first to the last (the head gets its own segment), then the last node."""
    nodes = list(model.graph.node)
    constants = {t.name for t in model.graph.initializer}
    last_read = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in constants:
                last_read[name] = i
    produced = {model.graph.input[0].name: -1}
    candidates = []
    for i, node in enumerate(nodes[:-1]):
        for name in node.output:
            produced[name] = i
        live = [t for t, j in produced.items() if last_read.get(t, -1) > i]
        if live == [node.output[0]] and not any(first <= i < last for first, last in kernel_spans):
            candidates.append(i)
    picks = sorted({int(k) for k in np.linspace(0, len(candidates) - 1, min(cuts, len(candidates))).round()})
    return [candidates[k] for k in picks] + [len(nodes) - 1]


def _model_segments(name: str, exp: Segments, dev, table) -> dict:
    from onnx.utils import Extractor
    from realworld_models import exported_family

    from latbench import api
    from latbench.devices.base import Artifact
    from latbench.export.onnx_tflite import onnx_to_tflite
    from latbench.models import Architecture
    from latbench.models.onnx_graph import kernel_nodes_of
    from latbench.models.onnx_load import load_user_onnx
    from latbench.predictor import Predictor

    path = exported_family(name, ROOT / exp.out / "models")
    spec = api.load_model(str(path))
    model = load_user_onnx(path)
    nodes = list(model.graph.node)
    position = {n.name: i for i, n in enumerate(nodes)}
    kernels = kernel_nodes_of(model, spec.name)
    spans = [(min(position[n] for n in names), max(position[n] for n in names)) for names in kernels.values()]
    ends = cut_positions(model, exp.cuts, spans)       # a conv + BN + add + activation kernel stays in one segment
    extractor = Extractor(model)
    artifacts = []
    for k, end in enumerate(ends):
        prefix = model if end == len(nodes) - 1 else extractor.extract_model([model.graph.input[0].name],
                                                                              [nodes[end].output[0]])
        data = onnx_to_tflite(prefix) if dev.model_format == "tflite" else prefix.SerializeToString()
        artifacts.append(Artifact(f"{spec.name}-prefix{k}", data, kind="network", format=dev.model_format))
    passes = np.array([[r.median_ms for r in dev.measure(artifacts)] for _ in range(exp.repeats)])
    prefix_ms = np.median(passes, axis=0)
    frame = Predictor(spec, table).breakdown(Architecture.full(spec))
    starts = [0] + [e + 1 for e in ends[:-1]]
    segments = [{"nodes": [starts[k], ends[k]], "kernels": [], "lookup_ms": 0.0,
                 "measured_ms": float(prefix_ms[k] - (prefix_ms[k - 1] if k else 0.0))} for k in range(len(ends))]
    for layer, ms in zip(frame["layer"], frame["latency_ms"]):
        last = max(position[n] for n in kernels[layer])
        k = next(k for k, end in enumerate(ends) if last <= end)
        segments[k]["kernels"].append([layer, float(ms)])
        segments[k]["lookup_ms"] += float(ms)
    for k, seg in enumerate(segments):
        print(f"{name} segment {k} (nodes {seg['nodes'][0]}–{seg['nodes'][1]}): measured {seg['measured_ms']:.3f} ms, "
              f"lookups {seg['lookup_ms']:.3f} ms", flush=True)
    return {"model": name, "full_ms": float(prefix_ms[-1]), "lookup_ms": float(frame["latency_ms"].sum()),
            "prefix_passes_ms": passes.tolist(), "segments": segments}


def main(exp: Segments) -> None:
    from realworld_models import benchmark_families

    from latbench.devices import open_device
    from latbench.tables.table import LatencyTable

    table = LatencyTable.load(exp.table)
    dev = open_device(exp.device)
    try:
        rows = [_model_segments(name, exp, dev, table) for name in benchmark_families(exp.models)]
    finally:
        dev.close()
    atomic_write_json(ROOT / exp.summary, {"models": rows, "settings": resolved(exp)}, indent=1)


if __name__ == "__main__":
    script_main(Segments, main, doc=__doc__)
