"""The device interface: what every backend (host runtimes, phones over ADB) offers the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from .reference import REFERENCES


class DeviceError(RuntimeError):
    """A device that cannot be reached, prepared or measured; the message says what to do."""


class DeviceUnreachable(DeviceError):
    """The device cannot be reached at all (no phone on the cable, nothing at the address, the link gone after
    its reconnects): nothing was measured. A pruning job then keeps its predicted network, "not verified"."""


MODEL_FORMATS = ("onnx", "tflite")


@dataclass(frozen=True)
class Artifact:
    """One model to time: ``model`` holds the serialised model in ``format`` (``"onnx"`` or ``"tflite"``,
    the device's ``model_format``); ``kind`` is ``"layer"`` (time the layer's own kernels, as the runtime
    runs them inside a network) or ``"network"`` (time the whole run, end to end)."""

    key: str
    model: bytes
    kind: str = "layer"
    format: str = "onnx"

    def __post_init__(self) -> None:
        if self.format not in MODEL_FORMATS:
            raise ValueError(f"artifact {self.key!r}: unknown model format {self.format!r}; "
                             f"expected one of {MODEL_FORMATS}")


@dataclass(frozen=True)
class Measurement:
    """Robust statistics of many timed runs, in milliseconds (plus the device's ``conditions``)."""

    key: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    runs: int
    rounds: int
    outliers: int
    # What the device reported while measuring (phones: temperatures, frequencies, cool-downs,
    # re-measurements); stored as JSON with the measurement, never part of its identity.
    conditions: dict | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MeasureSettings:
    """The timing protocol: ``warmup`` untimed runs, then ``rounds`` rounds of ``runs_per_round``
    timed runs, the artifacts of a batch interleaved in a new random order every round.

    ``warm``: untimed runs of the artifact right before each of its timed samples (after the reference), so a
    sample is the artifact's ``warm + 1``-th run in a row — as inside a network, where a kernel runs after
    kernels of its own rather than after a foreign workload (docs/measurement.md, "The cold start of each
    run"). 0 (the default) keeps the cold samples every table so far was built with; a different value is a
    different device fingerprint (``host:onnxruntime?warm=1``)."""

    warmup: int = 5
    rounds: int = 5
    runs_per_round: int = 10
    seed: int = 0
    reference: bool = True      # time a fixed reference network side by side (see timing.py)
    max_slowdown: float = 0.2   # redo a round whose reference ran >20 % slower than the batch's best …
    max_retries: int = 3        # … at most this many times
    warm: int = 0
    reference_net: str = "small"    # which reference network (latbench.devices.reference.REFERENCES)

    def __post_init__(self) -> None:
        if self.warm < 0:
            raise ValueError(f"warm runs must be ≥ 0, got {self.warm}")
        if self.reference_net not in REFERENCES:
            raise ValueError(f"reference network {self.reference_net!r} unknown; choose small or large")

    def to_dict(self) -> dict:
        out = {"warmup": self.warmup, "rounds": self.rounds, "runs_per_round": self.runs_per_round,
               "reference": self.reference,
               "max_slowdown": self.max_slowdown, "max_retries": self.max_retries}
        if self.warm:           # only when set: the environments of every store measured cold stay as they were
            out["warm"] = self.warm
        if self.reference_net != "small":
            out["reference_net"] = self.reference_net
        return out


@runtime_checkable
class Device(Protocol):
    """A latency measurement target.

    ``fingerprint`` identifies the hardware + runtime + settings that a latency depends on: tables and
    stored measurements are only ever reused under the same fingerprint. ``environment`` is the
    human-readable record stored with every measurement. ``model_format`` is the format the device
    runs (``"onnx"`` or ``"tflite"``); the pipeline exports every artifact in it.
    """

    name: str
    model_format: str

    def fingerprint(self) -> str: ...

    def environment(self) -> dict: ...

    def prepare(self) -> None: ...

    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]: ...

    def close(self) -> None: ...


@dataclass
class DeviceInfo:
    name: str
    available: bool
    fingerprint: str = ""
    detail: dict = field(default_factory=dict)
