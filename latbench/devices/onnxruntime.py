"""Host backend: onnxruntime on this machine's CPU.

Layer artifacts are timed with onnxruntime's own per-node profiler: the latency of a layer is the time
of its compute kernels, without the NCHW↔NCHWc layout conversions (``ReorderInput``/``ReorderOutput``)
that a one-layer model pays on every run but a network pays once (see docs/measurement.md). Network
artifacts are timed end to end with ``time.perf_counter`` around ``InferenceSession.run``.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Artifact, DeviceError, MeasureSettings, Measurement
from .reference import REFERENCE_NAME, reference_onnx
from .timing import measure_interleaved, normalised, robust_stats, split_rounds

LAYOUT_OPS = ("ReorderInput", "ReorderOutput")
GRAPH_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                "disable": "ORT_DISABLE_ALL"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_environment() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "isa": sorted(f for f in flags if f in ("avx", "avx2", "avx512f", "avx512_vnni", "fma", "neon")),
            "os": platform.platform(), "python": platform.python_version()}


def _feeds(session) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        out[inp.name] = rng.random(shape, dtype=np.float32)
    return out


class OnnxRuntimeDevice:
    """onnxruntime CPU on the host (``host:onnxruntime``).

    >>> dev = OnnxRuntimeDevice(threads=1)            # doctest: +SKIP
    >>> dev.measure([Artifact("conv", onnx_bytes)])   # doctest: +SKIP
    """

    name = "host:onnxruntime"

    def __init__(self, threads: int = 1, graph_level: str = "all", settings: MeasureSettings | None = None) -> None:
        if threads < 1:
            raise DeviceError(f"threads must be ≥ 1, got {threads}")
        if graph_level not in GRAPH_LEVELS:
            raise DeviceError(f"graph level {graph_level!r} unknown; choose one of {sorted(GRAPH_LEVELS)}")
        import onnxruntime

        self._ort = onnxruntime
        self.threads = threads
        self.graph_level = graph_level
        self.settings = settings or MeasureSettings()
        self._tmp = tempfile.TemporaryDirectory(prefix="latbench-ort-")
        self._profiles = 0
        self._reference = None
        # Nominal latency of the reference network: set from the store's environment (or measured once)
        # so that all measurements of one environment share a unit.
        self.reference_ms: float | None = None

    def backend_settings(self) -> dict:
        out = {"runtime": "onnxruntime", "version": self._ort.__version__, "threads": self.threads,
               "graph_optimization": self.graph_level, "execution": "sequential",
               "provider": "CPUExecutionProvider"}
        if self.settings.reference:
            out["reference"] = REFERENCE_NAME
        return out

    @property
    def channel_multiple(self) -> int:
        """Channel counts this runtime runs at full speed in multiples of: onnxruntime's NCHWc kernels use
        16-channel blocks on AVX-512 CPUs and 8 on AVX2 (other counts are padded or fall back to slower
        kernels, see docs/measurement.md)."""
        flags = cpu_flags()
        if "avx512f" in flags:
            return 16
        return 8 if "avx2" in flags else 1

    @property
    def uses_reference(self) -> bool:
        return self.settings.reference

    def _reference_runner(self):
        if self._reference is None:
            session = self.session(reference_onnx())
            feeds = _feeds(session)
            self._reference = (session, feeds)
        session, feeds = self._reference

        def run(runs: int) -> np.ndarray:
            out = np.empty(runs)
            for r in range(runs):
                t0 = time.perf_counter()
                session.run(None, feeds)
                out[r] = (time.perf_counter() - t0) * 1e3
            return out

        return run

    def measure_reference_nominal(self, runs: int = 400) -> float:
        """The reference network's median latency now (ms); becomes the unit of this environment."""
        run = self._reference_runner()
        run(20)
        self.reference_ms = float(np.median(run(runs)))
        return self.reference_ms

    def environment(self) -> dict:
        return {**host_environment(), **self.backend_settings(), "protocol": self.settings.to_dict()}

    def fingerprint(self) -> str:
        env = host_environment()
        ident = {"cpu": env["cpu"], "cores": env["cores"], "isa": env["isa"], **self.backend_settings()}
        return "host-ort-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    def prepare(self) -> None:
        """Nothing to install on the host; checks that the CPU provider is there."""
        if "CPUExecutionProvider" not in self._ort.get_available_providers():
            raise DeviceError("onnxruntime has no CPUExecutionProvider; reinstall onnxruntime")

    def close(self) -> None:
        self._tmp.cleanup()

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
        """Time a batch of artifacts with the interleaved protocol; one Measurement per artifact."""
        sessions = [self.session(a.onnx, profile=(a.kind == "layer")) for a in artifacts]
        feeds = [_feeds(s) for s in sessions]

        def run_round(i: int, runs: int) -> np.ndarray:
            s, f = sessions[i], feeds[i]
            out = np.empty(runs)
            for r in range(runs):
                t0 = time.perf_counter()
                s.run(None, f)
                out[r] = (time.perf_counter() - t0) * 1e3
            return out

        reference = None
        if self.settings.reference:
            reference = self._reference_runner()
            if self.reference_ms is None:
                self.measure_reference_nominal()
        walls, rounds = measure_interleaved([a.key for a in artifacts], self.settings, run_round, reference,
                                            self.reference_ms)
        results = []
        for i, (artifact, session, wall) in enumerate(zip(artifacts, sessions, walls)):
            if artifact.kind == "layer":
                per_round = split_rounds(self._kernel_times(session), self.settings)
                samples = normalised(per_round, rounds.reference[i], self.reference_ms if reference else None)
                results.append(robust_stats(artifact.key, samples, self.settings.rounds))
            else:
                results.append(wall)
        return results

    def _kernel_times(self, session) -> np.ndarray:
        """Per-run sums of the compute nodes' kernel times (ms), warm-up runs dropped."""
        path = session.end_profiling()
        try:
            events = json.loads(Path(path).read_text())
        finally:
            Path(path).unlink(missing_ok=True)
        per_node: dict[str, list[float]] = {}
        for ev in events:
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                continue
            if ev.get("args", {}).get("op_name") in LAYOUT_OPS:
                continue
            per_node.setdefault(ev["name"], []).append(ev["dur"] / 1e3)
        if not per_node:
            raise DeviceError("onnxruntime's profile recorded no kernel times for this model")
        runs = min(len(v) for v in per_node.values())
        return np.sum([np.asarray(v[:runs]) for v in per_node.values()], axis=0)
