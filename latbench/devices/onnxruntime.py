"""Host backend: onnxruntime on this machine's CPU.

Layer artifacts are timed with onnxruntime's own per-node profiler: the latency of a layer is the time
of its compute kernels, without the NCHW↔NCHWc layout conversions (``ReorderInput``/``ReorderOutput``)
that a one-layer model pays on every run but a network pays once (see docs/measurement.md). Network
artifacts are timed end to end with ``time.perf_counter`` around ``InferenceSession.run``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import Artifact, DeviceError, MeasureSettings, Measurement
from .host import HostDevice, cpu_flags, random_inputs
from .timing import normalised, robust_stats, split_rounds

LAYOUT_OPS = ("ReorderInput", "ReorderOutput")
GRAPH_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                "disable": "ORT_DISABLE_ALL"}


class OnnxRuntimeDevice(HostDevice):
    """onnxruntime CPU on the host (``host:onnxruntime``).

    >>> dev = OnnxRuntimeDevice(threads=1)                           # doctest: +SKIP
    >>> dev.measure([Artifact("conv", onnx_bytes, format="onnx")])  # doctest: +SKIP
    """

    runtime_name = "host:onnxruntime"
    model_format = "onnx"
    fingerprint_prefix = "host-ort-"

    def __init__(self, threads: int = 1, graph_level: str = "all", settings: MeasureSettings | None = None) -> None:
        super().__init__(threads, settings)
        if graph_level not in GRAPH_LEVELS:
            raise DeviceError(f"graph level {graph_level!r} unknown; choose one of {sorted(GRAPH_LEVELS)}")
        import onnxruntime

        self._ort = onnxruntime
        self.graph_level = graph_level
        self._tmp = tempfile.TemporaryDirectory(prefix="latbench-ort-")
        self._profiles = 0

    def runtime_settings(self) -> dict:
        return {"runtime": "onnxruntime", "version": self._ort.__version__, "threads": self.threads,
                "graph_optimization": self.graph_level, "execution": "sequential",
                "provider": "CPUExecutionProvider"}

    @property
    def channel_multiple(self) -> int:
        """Channel counts this runtime runs at full speed in multiples of: onnxruntime's NCHWc kernels use
        16-channel blocks on AVX-512 CPUs and 8 on AVX2 (other counts are padded or fall back to slower
        kernels, see docs/measurement.md)."""
        flags = cpu_flags()
        if "avx512f" in flags:
            return 16
        return 8 if "avx2" in flags else 1

    def prepare(self) -> None:
        """Nothing to install on the host; checks that the CPU provider is there."""
        if "CPUExecutionProvider" not in self._ort.get_available_providers():
            raise DeviceError("onnxruntime has no CPUExecutionProvider; reinstall onnxruntime")

    def close(self) -> None:
        self._tmp.cleanup()

    @staticmethod
    def _run_once(session) -> Callable[[], object]:
        inputs = session.get_inputs()
        feeds = dict(zip((i.name for i in inputs), random_inputs([i.shape for i in inputs])))
        return lambda: session.run(None, feeds)

    def load(self, model: bytes) -> Callable[[], object]:
        return self._run_once(self.session(model))

    def session(self, onnx_bytes: bytes, profile: bool = False):
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(self._ort.GraphOptimizationLevel, GRAPH_LEVELS[self.graph_level])
        so.log_severity_level = 3
        if profile:
            so.enable_profiling = True
            self._profiles += 1  # one prefix per session: ORT names files by millisecond, which collide
            so.profile_file_prefix = str(Path(self._tmp.name) / f"prof{self._profiles}")
        try:
            return self._ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise DeviceError(f"onnxruntime cannot load the model: {err}") from err

    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]:
        """Time a batch of artifacts with the interleaved protocol; one Measurement per artifact. Layers
        get their compute kernels' time from the profiler, networks their wall time."""
        self.check_formats(artifacts)
        sessions = [self.session(a.model, profile=(a.kind == "layer")) for a in artifacts]
        walls, rounds = self.time_wall(artifacts, [self._run_once(s) for s in sessions])
        results = []
        for i, (artifact, session, wall) in enumerate(zip(artifacts, sessions, walls)):
            if artifact.kind == "layer":
                per_round = split_rounds(self._kernel_times(session), rounds.spans[i])
                samples = normalised(per_round, rounds.reference[i], self.reference_ms if self.uses_reference else None)
                results.append(robust_stats(artifact.key, samples, self.settings.rounds))
            else:
                results.append(wall)
        return results

    def _kernel_times(self, session) -> np.ndarray:
        """Per-run sums of the compute nodes' kernel times (ms), every run in execution order."""
        per_node = [times for (_, op), times in node_kernel_times(session).items() if op not in LAYOUT_OPS]
        if not per_node:
            raise DeviceError("onnxruntime's profile recorded no kernel times for this model")
        runs = min(len(v) for v in per_node)
        return np.sum([np.asarray(v[:runs]) for v in per_node], axis=0)


def node_kernel_times(session) -> dict[tuple[str, str], list[float]]:
    """Ends the profiling of ``session`` (made with ``profile=True``) and returns every node's kernel times (ms),
    one per run in execution order, keyed by (node name, op type); the profile file is removed."""
    path = session.end_profiling()
    try:
        events = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    per_node: dict[tuple[str, str], list[float]] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            key = (ev["name"][: -len("_kernel_time")], ev.get("args", {}).get("op_name"))
            per_node.setdefault(key, []).append(ev["dur"] / 1e3)
    return per_node
