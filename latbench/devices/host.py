"""What the host backends (onnxruntime, LiteRT) share: the CPU's identity, wall-clock timing, and the
reference protocol of ``timing.py`` around a runtime-specific "load a model, run it once"."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import Artifact, DeviceError, MeasureSettings, Measurement
from .lock import measurement_lock
from .reference import ReferenceTimed, reference_model
from .timing import RoundSamples, measure_interleaved


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def host_environment() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "isa": sorted(f for f in flags if f in ("avx", "avx2", "avx512f", "avx512_vnni", "fma", "neon")),
            "os": platform.platform(), "python": platform.python_version()}


def random_inputs(shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Deterministic float32 inputs; unknown (≤ 0 or symbolic) dimensions become 1."""
    rng = np.random.default_rng(0)
    return [rng.random([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in s], dtype=np.float32)
            for s in shapes]


def wall_clock(run_once: Callable[[], object]) -> Callable[[int], np.ndarray]:
    """``runs -> per-run wall times (ms)`` of ``run_once``."""

    def run(runs: int) -> np.ndarray:
        out = np.empty(runs)
        for r in range(runs):
            t0 = time.perf_counter()
            run_once()
            out[r] = (time.perf_counter() - t0) * 1e3
        return out

    return run


class HostDevice(ReferenceTimed):
    """Base of the host backends. A subclass sets ``runtime_name``, ``model_format`` and ``fingerprint_prefix``
    and implements ``runtime_settings()`` (what the latency depends on besides the CPU) and
    ``load(model)`` (a ready model → a callable that runs it once). A protocol with warm samples
    (``MeasureSettings.warm``) is part of the name (``host:onnxruntime?warm=1``) and of the fingerprint: its
    measurements mean something else than cold ones and are never mixed with them."""

    runtime_name: str
    model_format: str
    fingerprint_prefix: str

    def __init__(self, threads: int = 1, settings: MeasureSettings | None = None) -> None:
        if threads < 1:
            raise DeviceError(f"threads must be ≥ 1, got {threads}")
        self.threads = threads
        self.settings = settings or MeasureSettings()
        self._reference: Callable[[int], np.ndarray] | None = None
        # Nominal latency of the reference network: set from the store's environment (or measured once)
        # so that all measurements of one environment share a unit.
        self.reference_ms: float | None = None

    @property
    def name(self) -> str:
        options = []
        if self.settings.warm:
            options.append(f"warm={self.settings.warm}")
        if self.settings.reference_net != "small":
            options.append(f"reference={self.settings.reference_net}")
        return self.runtime_name + ("?" + "&".join(options) if options else "")

    def backend_settings(self) -> dict:
        out = super().backend_settings()
        if self.settings.warm:
            out["warm"] = self.settings.warm
        return out

    def load(self, model: bytes) -> Callable[[], object]:
        raise NotImplementedError

    def _reference_runner(self) -> Callable[[int], np.ndarray]:
        if self._reference is None:
            self._reference = wall_clock(self.load(reference_model(self.model_format, self.settings.reference_net)))
        return self._reference

    def measure_reference_nominal(self, runs: int = 400) -> float:
        """The reference network's median latency now (ms); becomes the unit of this environment."""
        run = self._reference_runner()
        with measurement_lock().held():   # alone on the CPU (lock.py)
            run(20)
            self.reference_ms = float(np.median(run(runs)))
        return self.reference_ms

    def environment(self) -> dict:
        return {**host_environment(), **self.backend_settings(), "protocol": self.settings.to_dict()}

    def fingerprint(self) -> str:
        env = host_environment()
        ident = {"cpu": env["cpu"], "cores": env["cores"], "isa": env["isa"], **self.backend_settings()}
        return self.fingerprint_prefix + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check_formats(self, artifacts: Sequence[Artifact]) -> None:
        wrong = [a.key for a in artifacts if a.format != self.model_format]
        if wrong:
            raise DeviceError(f"{self.name} runs {self.model_format} models; got another format for {wrong[:3]}")

    def time_wall(self, artifacts: Sequence[Artifact], run_once: Sequence[Callable[[], object]]
                  ) -> tuple[list[Measurement], RoundSamples]:
        """Wall-clock ``run_once[i]`` for each artifact with the interleaved reference protocol."""
        reference = None
        if self.settings.reference:
            reference = self._reference_runner()
        timers = [wall_clock(f) for f in run_once]
        with measurement_lock().held():   # alone on the CPU (lock.py); re-entrant: the nominal takes it too
            if reference is not None and self.reference_ms is None:
                self.measure_reference_nominal()
            return measure_interleaved([a.key for a in artifacts], self.settings, lambda i, runs: timers[i](runs),
                                       reference, self.reference_ms)

    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]:
        """Time a batch of artifacts end to end; one Measurement per artifact."""
        self.check_formats(artifacts)
        return self.time_wall(artifacts, [self.load(a.model) for a in artifacts])[0]
