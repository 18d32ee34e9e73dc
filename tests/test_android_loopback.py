"""The Android backend end to end against the loopback phone (latbench.testing.adbd): a real ADB
daemon on 127.0.0.1 with a sandboxed shell, generated sysfs and stand-in benchmark tools that really
run the models. Tiny grids and few runs keep it fast enough for CI."""
import threading
import time

import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.devices import DeviceError, MeasureSettings, open_device
from latbench.devices.android import UnauthorizedError
from latbench.devices.android.device import PHONE_ROOT
from latbench.devices.base import Artifact
from latbench.export import export_layer_variant
from latbench.layers import LayerPoint, LayerSignature
from latbench.models import get_model
from latbench.profiling import Profiler
from latbench.store import MeasurementStore
from latbench.tables.grid import design_grid

pytestmark = pytest.mark.phone

adbd = pytest.importorskip("latbench.testing.adbd")
phone_tools = pytest.importorskip("latbench.testing.phone_tools")
runner = CliRunner()
TINY = MeasureSettings(warmup=1, rounds=2, runs_per_round=2)


@pytest.fixture(autouse=True)
def adb_key(tmp_path_factory, monkeypatch):
    """One host key for the whole session (2048-bit keygen is not free), never the user's own; created
    here so that the phone can be told to trust it."""
    from latbench.devices.android.connection import load_or_create_key

    key = tmp_path_factory.getbasetemp() / "adbkey" / "adbkey"
    monkeypatch.setenv("LATBENCH_ADB_KEY", str(key))
    load_or_create_key(key)
    return key


def start_phone(**kwargs):
    try:
        return adbd.LoopbackPhone(**kwargs).start()
    except adbd.SandboxError as err:
        pytest.skip(f"the loopback phone cannot start here: {err}")


@pytest.fixture
def phone(adb_key):
    p = start_phone(authorized_keys=[f"{adb_key}.pub"])   # this computer was allowed once, as with a real phone
    yield p
    p.stop()


def install_benchmark_model(phone, tmp_path, log_calls: bool = False, delay_s: float = 0.0) -> str:
    """Set the phone up as a user would (`latbench android setup`); optionally behind a wrapper that
    logs every call, so that tests can count the tool runs, and starts each run ``delay_s`` late (silent,
    so that a short step timeout fires however fast this machine happens to be)."""
    tool = phone_tools.write_tool("benchmark_model", tmp_path / "tools")
    if log_calls:
        real = phone.install_tool("benchmark_model", "/data/local/tmp/real_benchmark_model")
        tool = tmp_path / "tools" / "logging_benchmark_model"
        pause = f"sleep {delay_s}\n" if delay_s else ""
        tool.write_text(f'#!/bin/sh\necho "$*" >> /data/local/tmp/calls.log\n{pause}exec {real} "$@"\n')
        tool.chmod(0o755)
    spec = f"tcp:{phone.serial}"
    res = runner.invoke(app, ["android", "setup", "--device", spec, "--benchmark-model", str(tool)])
    assert res.exit_code == 0, res.output
    return spec


def tool_calls(phone) -> list[str]:
    path = phone.host_path("/data/local/tmp/calls.log")
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_a_dropped_link_resumes_with_nothing_lost_or_measured_twice(phone, tmp_path):
    # Each run starts 0.5 s late, so the first batch of 8 outlasts the fault's 3 s on any machine: the link
    # breaks mid-batch (on an idle machine the undelayed batch could finish first and nothing would reconnect).
    spec = install_benchmark_model(phone, tmp_path, log_calls=True, delay_s=0.5)
    messages: list[str] = []
    from latbench.devices.android import open_android

    dev = open_android(spec, settings=MeasureSettings(warmup=1, rounds=1, runs_per_round=2, max_retries=0),
                       log=messages.append)
    slices = design_grid([get_model("resnet56")], {"resnet56": (32,)}, adaptive=False, channel_points=1,
                         sparsities=(0.0,))[:3]     # 10 grid points, 2 batches of 8 and 2
    try:
        dev.prepare()
        with MeasurementStore(tmp_path / "s.db") as store:
            profiler = Profiler(dev, store, batch_size=8, progress=False)   # measures the reference unit
            calls_before = len(tool_calls(phone))
            fault = phone.inject_fault("reset", match="latbench_runner.sh run", after_seconds=3.0)
            report = profiler.run(slices)
            assert fault.fired.is_set()
            points = {(s.signature.key, p) for s in slices for p in s.points()}
            rows = store.rows(profiler.env_id)
            assert report.measured == len(points) == len(rows)                       # nothing lost
            assert {(r.signature, r.point) for r in rows} == points                  # nothing twice
            assert sum(r.conditions["reconnects"] for r in rows) > 0
    finally:
        dev.close()
    resumed = [m for m in messages if "resuming" in m]
    assert resumed and "ConnectionResetError" in resumed[0]
    done = int(resumed[0].split("(")[-1].split("/")[0])
    assert done > 0                                  # resumed mid-batch, not restarted
    # Every planned run happened once; at most the run in flight when the link broke ran again.
    items = [c for c in tool_calls(phone)[calls_before:] if "enable_op_profiling=true" in c]
    planned = len(points)
    assert planned <= len(items) <= planned + 1
    assert not phone.host_path(f"{PHONE_ROOT}/runner.pid").exists()


def test_an_unauthorized_key_gives_the_clear_message(tmp_path):
    p = start_phone()   # a phone that has never seen this computer's key
    try:
        spec = f"tcp:{p.serial}?auth_timeout=1"
        with pytest.raises(UnauthorizedError, match="Allow USB debugging"):
            open_device(spec)
        res = runner.invoke(app, ["android", "info", "--device", spec])
        assert res.exit_code == 2 and "Allow USB debugging" in res.output
        # The user taps "Allow" while latbench waits: the connection goes through.
        accepter = threading.Timer(0.5, p.accept_pending)
        accepter.start()
        dev = open_device(f"tcp:{p.serial}?auth_timeout=10")
        assert dev.facts.model == "Loopback Phone 8"
        dev.close()
        accepter.join()
    finally:
        p.stop()


def _conv_signature() -> LayerSignature:
    """ResNet-56's plain 3×3 conv (+ReLU)."""
    slices = design_grid([get_model("resnet56")], {"resnet56": (32,)}, adaptive=False, channel_points=1,
                         sparsities=(0.0,))
    return next(s.signature for s in slices if s.signature.key == "conv_k3_s1_p1_relu")


def _layer_artifacts(n: int, fmt: str = "tflite", channels=(8, 16, 24)) -> list[Artifact]:
    return [Artifact(f"{fmt}{c}", export_layer_variant(fmt, _conv_signature(), LayerPoint(c, c, 0.0, 16)),
                     format=fmt) for c in channels[:n]]


@pytest.mark.slow
def test_cool_down_before_a_batch_and_remeasure_after_throttling(phone, tmp_path):
    spec = install_benchmark_model(phone, tmp_path)
    dev = open_device(f"{spec}?max_cpu_c=40&max_battery_c=40&poll_s=0.2&max_wait_s=30", settings=TINY)
    try:
        dev.prepare()
        dev.measure_reference_nominal(invocations=2, runs=5)
        phone.set_temperature(55.0)
        threading.Timer(1.0, phone.set_temperature, args=(35.0,)).start()
        results = phone.host_path(f"{PHONE_ROOT}/batches")

        def throttle_after_first_run():
            deadline = time.time() + 60
            while time.time() < deadline:
                if any(f.stat().st_size for f in results.glob("*/results")):
                    phone.set_frequency(fraction=0.5, cluster="big")
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=throttle_after_first_run)
        watcher.start()
        ms = dev.measure(_layer_artifacts(2))
        watcher.join()
    finally:
        dev.close()
    c = ms[0].conditions
    assert c["cooldown_s"] >= 0.5 and c["before"]["cpu_temp_c"] <= 40
    assert c["remeasured_steps"] > 0                 # the throttled runs were taken again …
    assert c["throttled_steps"] > 0                  # … and since the cap stayed low, that is recorded
    assert min(c["min_cap_khz"]) < 2_420_000 and c["after"]["cap_khz"]["4"] == 1_210_000
    assert all(m.median_ms > 0 for m in ms)


@pytest.mark.slow
def test_a_timeout_stops_the_leftover_run_and_the_next_attempt_waits_longer(phone, tmp_path):
    spec = install_benchmark_model(phone, tmp_path, log_calls=True, delay_s=1)
    messages: list[str] = []
    from latbench.devices.android import open_android

    dev = open_android(f"{spec}?step_timeout=0.2&reconnects=8", settings=MeasureSettings(
        warmup=1, rounds=1, runs_per_round=2, reference=False), log=messages.append)
    try:
        dev.prepare()
        (m,) = dev.measure(_layer_artifacts(1))
    finally:
        dev.close()
    timeouts = [msg for msg in messages if "resuming" in msg]
    assert timeouts and all("Timeout" in msg for msg in timeouts)
    assert m.conditions["reconnects"] == len(timeouts) and m.median_ms > 0
    # Each timed-out run was stopped before the next attempt: never two runs at once, none left over.
    assert not phone.host_path(f"{PHONE_ROOT}/runner.pid").exists()
    assert phone.run("ps -A -o args 2>/dev/null || ps").stdout.count("real_benchmark_model") == 0
    assert len(timeouts) <= len(tool_calls(phone)) <= len(timeouts) + 1


def test_a_phone_without_the_tool_says_how_to_set_it_up(phone):
    with pytest.raises(DeviceError, match="latbench android setup"):
        dev = open_device(f"tcp:{phone.serial}")
        try:
            dev.prepare()
        finally:
            dev.close()


@pytest.mark.slow
def test_onnxruntime_perf_test_runtime(phone, tmp_path):
    folder = tmp_path / "ort-android"
    phone_tools.write_tool("onnxruntime_perf_test", folder)
    (folder / "libonnxruntime.so").write_bytes(b"\x7fELF stand-in library")
    res = runner.invoke(app, ["android", "setup", "--device", f"tcp:{phone.serial}", "--perf-test", str(folder)])
    assert res.exit_code == 0, res.output
    assert phone.host_path(f"{PHONE_ROOT}/ort/libonnxruntime.so").read_bytes() == b"\x7fELF stand-in library"
    dev = open_device(f"tcp:{phone.serial}?runtime=onnxruntime", settings=TINY)
    try:
        assert dev.model_format == "onnx" and dev.backend_settings()["layer_timing"] == "run"
        dev.prepare()
        with pytest.raises(DeviceError, match="runs onnx models"):
            dev.measure(_layer_artifacts(1))
        small, large = dev.measure(_layer_artifacts(2, "onnx", channels=(8, 64)))
    finally:
        dev.close()
    assert 0 < small.median_ms < large.median_ms       # 64→64 channels is 64× the work of 8→8
    assert small.runs == TINY.rounds * TINY.runs_per_round
    assert small.conditions["before"]["governor"] == ["schedutil"]


def test_a_model_the_tool_cannot_run_is_a_clear_error_and_stops_the_batch(phone, tmp_path):
    spec = install_benchmark_model(phone, tmp_path)
    dev = open_device(f"{spec}?reference=off", settings=TINY)
    try:
        dev.prepare()
        with pytest.raises(DeviceError, match=r"benchmark_model failed on .* \(exit status [1-9]"):
            dev.measure([Artifact("broken", b"not a flatbuffer", format="tflite"), *_layer_artifacts(1)])
    finally:
        dev.close()
    assert not phone.host_path(f"{PHONE_ROOT}/runner.pid").exists()


def _count_runner_starts(dev) -> list[str]:
    """Every runner invocation of ``dev`` is recorded in the returned list."""
    calls: list[str] = []
    stream = dev.conn.stream_lines

    def counted(command, timeout_s):
        calls.append(command)
        return stream(command, timeout_s)

    dev.conn.stream_lines = counted
    return calls


@pytest.mark.slow
def test_a_model_missing_on_the_phone_is_the_runners_message_at_once(phone, tmp_path):
    spec = install_benchmark_model(phone, tmp_path)
    messages: list[str] = []
    from latbench.devices.android import open_android

    dev = open_android(spec, settings=TINY, log=messages.append)
    try:
        dev.prepare()
        dev.measure(_layer_artifacts(1))                # leaves the reference model on the phone …
        phone.run(f"rm -f {PHONE_ROOT}/models/*")       # … until someone cleans the phone meanwhile
        runs = _count_runner_starts(dev)
        messages.clear()
        with pytest.raises(DeviceError, match=r"runner on .* refused the plan: model \w+\.tflite is not on the phone"):
            dev.measure(_layer_artifacts(1))
        assert len(runs) == 1 and not messages      # no reconnects, no retries of a plan that cannot run
        (m,) = dev.measure(_layer_artifacts(1))     # the next batch pushes what is missing
        assert m.median_ms > 0
    finally:
        dev.close()
    assert not phone.host_path(f"{PHONE_ROOT}/runner.pid").exists()


def test_a_refused_plan_shows_the_runners_reason(phone, tmp_path):
    from latbench.devices.android.device import Step

    spec = install_benchmark_model(phone, tmp_path)
    dev = open_device(spec, settings=TINY)
    try:
        dev.prepare()
        runs = _count_runner_starts(dev)
        model = _layer_artifacts(1)[0].model
        name = dev._model_name(model)
        # A role this runner does not know, as from a newer latbench talking to an older runner.
        with pytest.raises(DeviceError, match="refused the plan: bad role boss"):
            dev.run_plan("b-refused", [Step(0, "boss", 0, 0, name, 2, False)], {name: model})
    finally:
        dev.close()
    assert len(runs) == 1
