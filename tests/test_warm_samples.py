"""Warm samples (MeasureSettings.warm): each timed sample follows untimed runs of the same artifact."""
import numpy as np
import pytest

from latbench.devices import Artifact, DeviceError, MeasureSettings, open_device
from latbench.devices.timing import measure_interleaved, split_rounds
from latbench.export import export_layer_variant
from latbench.layers import LayerPoint, LayerSignature

COLD_MS, WARM_MS = 2.0, 1.0


class CacheModel:
    """Artifacts that run at COLD_MS right after a different workload and at WARM_MS right after themselves,
    logging every run in execution order per artifact (as onnxruntime's profiler records per-node times)."""

    def __init__(self, n: int, slow_reference_every: int = 0) -> None:
        self.last = None
        self.log: list[list[float]] = [[] for _ in range(n)]
        self.calls = 0
        self.slow_reference_every = slow_reference_every

    def run(self, item: int, runs: int) -> np.ndarray:
        out = []
        for _ in range(runs):
            ms = (WARM_MS if self.last == item else COLD_MS) * (1 + 0.01 * item)
            self.last = item
            self.log[item].append(ms)
            out.append(ms)
        return np.array(out)

    def reference(self, runs: int) -> np.ndarray:
        self.last = "reference"
        self.calls += 1
        slow = self.slow_reference_every and self.calls % self.slow_reference_every == 0
        return np.full(runs, 3.0 if slow else 1.0)


@pytest.mark.parametrize("warm", [0, 1, 3])
def test_a_warm_sample_is_the_runs_after_its_own_and_the_spans_find_it(warm):
    settings = MeasureSettings(warmup=2, rounds=4, runs_per_round=5, warm=warm)
    model = CacheModel(3, slow_reference_every=7)     # some rounds are redone: their runs stay in the log
    stats, rounds = measure_interleaved(["a", "b", "c"], settings, model.run, model.reference, nominal_ms=1.0)
    expected = COLD_MS if warm == 0 else WARM_MS
    for i, m in enumerate(stats):
        assert m.median_ms == pytest.approx(expected * (1 + 0.01 * i), rel=0.05)
        # What a profiler logged, split by the spans, is exactly the timed samples of the kept rounds.
        from_log = split_rounds(model.log[i], rounds.spans[i])
        assert [list(r) for r in from_log] == [list(s) for s in rounds.samples[i]]
        assert all(len(r) == settings.runs_per_round for r in from_log)


def test_warm_must_not_be_negative():
    with pytest.raises(ValueError, match="warm runs must be ≥ 0"):
        MeasureSettings(warm=-1)


def test_a_warm_host_device_is_its_own_environment():
    cold, warm = open_device("host:onnxruntime"), open_device("host:onnxruntime?warm=1")
    try:
        assert (cold.name, warm.name) == ("host:onnxruntime", "host:onnxruntime?warm=1")
        assert warm.settings.warm == 1 and cold.settings.warm == 0
        assert warm.fingerprint() != cold.fingerprint() and warm.fingerprint().startswith("host-ort-")
        assert warm.environment()["protocol"]["warm"] == 1 and "warm" not in cold.environment()["protocol"]
        # The query keeps the caller's other settings.
        assert open_device("host:onnxruntime?warm=2", settings=MeasureSettings(rounds=3)).settings.rounds == 3
    finally:
        cold.close(), warm.close()
    litert = open_device("host:litert:builtin?warm=2")
    assert litert.name == "host:litert:builtin?warm=2" and litert.settings.warm == 2
    for bad, what in [("host:onnxruntime?warm=x", "whole number"), ("host:onnxruntime?warm=-1", "whole number"),
                      ("host:onnxruntime?threads=2", "unknown option 'threads'")]:
        with pytest.raises(DeviceError, match=what):
            open_device(bad)


def test_onnxruntime_times_warm_layer_samples_from_its_profile():
    sig = LayerSignature("conv", 3, 1, 1, "relu")
    artifact = Artifact("conv16", export_layer_variant("onnx", sig, LayerPoint(16, 16, 0.0, 16)), format="onnx")
    settings = MeasureSettings(warmup=1, rounds=2, runs_per_round=3)
    dev = open_device("host:onnxruntime?warm=2", settings=settings)
    try:
        (m,) = dev.measure([artifact])
    finally:
        dev.close()
    assert m.median_ms > 0 and m.runs + m.outliers == settings.rounds * settings.runs_per_round
