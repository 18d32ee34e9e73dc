"""A simulated phone for farm scaling: ``sim:NAME?run_ms=2&model=Pixel`` takes a fixed wall time per timed run
and no CPU (it sleeps), so that a 2-core machine can stand in for a lab of many phones
(``benchmarks/farm_scaling.py``). Its latencies are its fixed run time: it measures the farm's scheduling, not
a device. Never a stand-in for a real measurement (the loopback phone, :mod:`latbench.testing.adbd`, runs the
real tools for that)."""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

from ..devices.base import Artifact, DeviceError, Measurement, MeasureSettings
from ..devices.spec import DeviceSpec


class SimulatedPhone:
    """``run_ms`` of sleep per timed or warm-up run of each artifact; fingerprint from ``model`` only, so that
    simulated phones of one model form one farm group."""

    model_format = "tflite"
    uses_reference = False

    def __init__(self, name: str, run_ms: float, model: str, settings: MeasureSettings | None = None) -> None:
        self.name, self.run_ms, self.model = f"sim:{name}", run_ms, model
        self.settings = settings or MeasureSettings()
        self.reference_ms: float | None = None

    def fingerprint(self) -> str:
        return "sim-" + hashlib.sha256(f"{self.model}|{self.run_ms}".encode()).hexdigest()[:12]

    def environment(self) -> dict:
        return {"phone": self.model, "simulated": True, "run_ms": self.run_ms}

    def backend_settings(self) -> dict:
        return {"simulated": True, **self.settings.to_dict()}

    def prepare(self) -> None:
        pass

    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]:
        s = self.settings
        runs = s.warmup + s.rounds * s.runs_per_round
        out = []
        for a in artifacts:
            time.sleep(runs * self.run_ms / 1000.0)
            out.append(Measurement(a.key, self.run_ms, self.run_ms, self.run_ms, 0.0, s.rounds * s.runs_per_round,
                                   s.rounds, 0))
        return out

    def close(self) -> None:
        pass


def open_simulated_phone(spec: str, settings: MeasureSettings | None = None) -> SimulatedPhone:
    parsed = DeviceSpec.parse(spec)
    name, params = parsed.base.removeprefix("sim:"), parsed.options
    try:
        return SimulatedPhone(name or "phone", float(params.get("run_ms", 1.0)), params.get("model", "sim"), settings)
    except ValueError as err:
        raise DeviceError(f"bad simulated phone {spec!r}: {err}") from None


__all__ = ["SimulatedPhone", "open_simulated_phone"]
