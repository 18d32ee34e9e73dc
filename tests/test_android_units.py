"""Android backend pieces without a phone: addresses and options, telemetry parsing, the phone-side
runner script under dash and mksh, adb-shell error mapping, key creation, the store's telemetry."""
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from latbench.devices import DeviceError, DeviceUnreachable, open_device
from latbench.devices.android.connection import (AdbLinkError, AdbTarget, UnauthorizedError, adb_errors,
                                                 load_or_create_key, _tcp_transport_class)
from latbench.devices.android.device import AndroidOptions, agent_script, parse_runner_line
from latbench.devices.android.telemetry import (StepTelemetry, ThermalPolicy, cpu_mask, latency_jumps, mask_cpus,
                                                parse_facts, parse_snapshot)
from latbench.devices.base import Measurement
from latbench.layers import LayerPoint
from latbench.store import MeasurementStore

# ------------------------------------------------------------------------------ addresses, options


@pytest.mark.parametrize("spec,target", [
    ("tcp:192.168.1.20:5555", AdbTarget("tcp", "192.168.1.20", 5555)),
    ("tcp:phone.local", AdbTarget("tcp", "phone.local", 5555)),
    ("tcp:[::1]:40001", AdbTarget("tcp", "::1", 40001)),
    ("usb", AdbTarget("usb")),
    ("usb:0A1B2C3D", AdbTarget("usb", serial="0A1B2C3D")),
])
def test_addresses(spec, target):
    assert AdbTarget.parse(spec) == target
    assert AdbTarget.parse(str(target)) == target


@pytest.mark.parametrize("spec,message", [("tcp:host:notaport", "not a number"), ("tcp::5555", "needs a host"),
                                          ("tcp:h:70000", "1..65535"), ("usb:a;rm -rf /", "no serial number has")])
def test_bad_addresses_are_clear_errors(spec, message):
    with pytest.raises(DeviceError, match=message):
        AdbTarget.parse(spec)


def test_options_from_the_device_spec():
    o = AndroidOptions.from_query("runtime=onnxruntime&cores=f0&max_cpu_c=45&step_timeout=20&reconnects=3")
    assert (o.runtime, o.cores, o.model_format, o.tool) == ("onnxruntime", "f0", "onnx", "onnxruntime_perf_test")
    assert o.thermal.max_cpu_c == 45 and o.step_timeout == 20 and o.reconnects == 3
    assert o.effective_layer_timing == "run"          # perf_test has no op profile
    assert AndroidOptions.from_query("").effective_layer_timing == "ops"
    for query, message in [("runtime=tvm", "runtime 'tvm' unknown"), ("cores=xyz", "not hexadecimal"),
                           ("colour=red", "unknown phone option 'colour'"), ("max_cpu_c=hot", "must be a number"),
                           ("root=/sdcard", "must be an absolute path ending in /latbench")]:
        with pytest.raises(DeviceError, match=message):
            AndroidOptions.from_query(query)


def test_unreachable_phone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LATBENCH_ADB_KEY", str(tmp_path / "adbkey"))
    with socket.socket() as s:          # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeviceUnreachable, match="nothing accepts ADB connections"):
        open_device(f"tcp:127.0.0.1:{port}")


# ------------------------------------------------------------------------------ telemetry

FACTS = "\n".join([
    "prop\tro.product.model\tPixel 7", "prop\tro.board.platform\tgs201", "prop\tro.build.version.sdk\t34",
    *[f"cpu\t{c}\t{f}" for c, f in enumerate([1803000] * 4 + [2348000] * 2 + [2850000] * 2)],
    "cpu\t8\t",                                            # an offline core without cpufreq
    "zonetype\t0\tBIG", "zonetype\t1\tMID", "zonetype\t2\tLITTLE", "zonetype\t3\tbattery", "zonetype\t4\tskin-therm",
    "uname\taarch64",
])


def test_facts_topology_and_big_core_mask():
    f = parse_facts(FACTS)
    assert (f.model, f.platform, f.sdk, f.machine) == ("Pixel 7", "gs201", "34", "aarch64")
    assert f.clusters() == [(1803000, [0, 1, 2, 3]), (2348000, [4, 5]), (2850000, [6, 7])]
    assert f.big_cores() == [4, 5, 6, 7] and cpu_mask(f.big_cores()) == "f0"
    assert f.cpu_zones() == [0, 1, 2]
    alike = parse_facts("\n".join(f"cpu\t{c}\t2000000" for c in range(4)))
    assert alike.big_cores() == [0, 1, 2, 3] and cpu_mask(alike.big_cores()) == "f"
    assert mask_cpus("f0") == [4, 5, 6, 7] and mask_cpus("81") == [0, 7]
    with pytest.raises(ValueError, match="selects no cpu"):
        mask_cpus("0")


def test_snapshot_units_and_implausible_sensors():
    text = ("freq\t4\t1200000\t2348000\tschedutil\nfreq\t6\t\t\t\n"
            "temp\t0\t41500\ntemp\t1\t-273000\ntemp\t3\t36000\n"
            "battery\t  temperature: 315\n")
    s = parse_snapshot(text, at=1.0)
    assert s.cur_khz == {4: 1200000, 6: None} and s.cap_khz[4] == 2348000 and s.governor[4] == "schedutil"
    assert s.temps_mc == {0: 41500, 3: 36000}               # -273 °C: a disconnected sensor
    assert s.cpu_temp_c([0, 1]) == 41.5 and s.cpu_temp_c() == 41.5 and s.battery_c == 31.5
    policy = ThermalPolicy(max_cpu_c=40, max_battery_c=40)
    assert policy.too_hot(s, [0]) and not policy.too_hot(s, [3])
    assert s.summary([4], [0])["cap_khz"] == {"4": 2348000}


def test_throttling_and_latency_jumps():
    step = StepTelemetry.parse("2400000/1200000,2400000/2420000", "51000,-")
    assert step.min_cap_khz == 1200000 and step.max_temp_c == 51.0
    policy = ThermalPolicy()
    assert policy.throttled(2420000, step) and not policy.throttled(1200000, step)
    assert not policy.throttled(None, step)
    jumps = latency_jumps(np.array([10.0, 10.5, 13.0, 11.9]), 0.2)
    assert jumps.tolist() == [False, False, True, False]


# ------------------------------------------------------------------------------ the runner script

FAKE_TOOL = r"""#!/bin/sh
# stand-in benchmark_model for the runner tests: the "latency" is the model file's size in µs
g=; prof=false
for a in "$@"; do case $a in --graph=*) g=${a#--graph=} ;; --enable_op_profiling=*) prof=${a#*=} ;; esac; done
case $g in *slow*) sleep 30 ;; *fail*) echo "ERROR: cannot load $g"; exit 1 ;; esac
n=$(wc -c < "$g")
echo "count=10 first=$n curr=$n min=$n max=$n avg=$n std=0"
echo "Inference timings in us: Init: 10, First inference: $n, Warmup (avg): $n, Inference (avg): $n"
[ "$prof" = true ] && printf 'Operator-wise Profiling Info for Regular Benchmark Runs:\n=== Run Order ===\n\t CONV_2D\t0\t0.1\t0.1\t100%%\t100%%\t0\t1\t[c]:0\nTimings (microseconds): count=10 avg=100\n'
exit 0
"""
SHELLS = [s for s in ("dash", "mksh") if shutil.which(s)]


@pytest.fixture
def phone_root(tmp_path):
    root = tmp_path / "data" / "latbench"
    for d in ("agent", "bin", "models", "batches/b1"):
        (root / d).mkdir(parents=True)
    (root / "agent" / "latbench_runner.sh").write_bytes(agent_script())   # what prepare() pushes
    tool = root / "bin" / "benchmark_model"
    tool.write_text(FAKE_TOOL)
    tool.chmod(0o755)
    (root / "models" / "a.tflite").write_bytes(b"x" * 1500)
    (root / "models" / "b.tflite").write_bytes(b"x" * 250)
    return root


def run_agent(shell, root, *args, timeout=30):
    script = root / "agent" / "latbench_runner.sh"
    return subprocess.run([shell, str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def runner_lines(stdout):
    return [f for f in map(parse_runner_line, stdout.split("\n")) if f is not None]


@pytest.mark.parametrize("shell", SHELLS)
def test_runner_runs_a_plan_and_records_results(shell, phone_root):
    (phone_root / "batches/b1/plan").write_text("0 ref a.tflite 10 false\n1 item b.tflite 10 true\n")
    res = run_agent(shell, phone_root, "run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = [f for f in runner_lines(res.stdout) if "step" in f]
    assert [(f["step"], f["role"], f["rc"]) for f in steps] == [("0", "ref", "0"), ("1", "item", "0")]
    assert "avg=1500" in steps[0]["out"] and "Operator-wise" in steps[1]["out"] and "\n" in steps[1]["out"]
    # The same lines are kept on the phone for a host that lost the link.
    kept = runner_lines((phone_root / "batches/b1/results").read_text())
    assert [f["step"] for f in kept] == ["0", "1"]
    assert not (phone_root / "runner.pid").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_runner_refuses_bad_input_and_writes_nothing_outside_its_root(shell, phone_root, tmp_path):
    plan = phone_root / "batches/b1/plan"
    args = ["run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-"]
    for line, message in [("0 ref ../../etc/passwd 10 false", "bad plan line"),
                          ("0 ref a.tflite 10 maybe", "op profiling must be true or false"),
                          ("0 boss a.tflite 10 false", "bad role"),
                          ("0 ref missing.tflite 10 false", "is not on the phone"),
                          ("0 ref a.tflite 10 false; rm -rf /", "bad plan line")]:
        plan.write_text(line + "\n")
        res = run_agent(shell, phone_root, *args)
        # The host must be able to read the refusal: one whole runner line with the message.
        (error,) = [f["error"] for f in runner_lines(res.stdout) if "error" in f]
        assert res.returncode == 2 and message in error, (line, res.stdout)
    for bad_args, message in [(["run", tmp_path / "elsewhere", "b1", "tflite", "-", 1, 2, "-", "-"], "must be an absolute path ending in /latbench"),
                              (["run", phone_root, "../b1", "tflite", "-", 1, 2, "-", "-"], "bad batch name"),
                              (["run", phone_root, "b1", "tflite", "f0;reboot", 1, 2, "-", "-"], "bad cpu mask"),
                              (["run", phone_root, "b1", "tflite", "-", "1 2", 2, "-", "-"], "must be integers"),
                              (["stop", "/"], "must be an absolute path ending in /latbench")]:
        res = run_agent(shell, phone_root, *bad_args)
        (error,) = [f["error"] for f in runner_lines(res.stdout) if "error" in f]
        assert res.returncode == 2 and message in error, (bad_args, res.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("shell", SHELLS)
def test_runner_reports_a_failing_tool(shell, phone_root):
    (phone_root / "models" / "fail.tflite").write_bytes(b"x")
    (phone_root / "batches/b1/plan").write_text("7 item fail.tflite 10 false\n")
    res = run_agent(shell, phone_root, "run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-")
    (step,) = [f for f in runner_lines(res.stdout) if "step" in f]
    assert step["rc"] == "1" and "cannot load" in step["out"]


@pytest.mark.parametrize("shell", SHELLS)
def test_one_runner_at_a_time_and_stop_ends_runner_and_tool(shell, phone_root):
    (phone_root / "models" / "slow.tflite").write_bytes(b"x")
    (phone_root / "batches/b1/plan").write_text("0 item slow.tflite 10 false\n")
    args = ["run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-"]
    first = subprocess.Popen([shell, str(phone_root / "agent/latbench_runner.sh"), *map(str, args)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 10
        while not (phone_root / "batches/b1/child.pid").exists() and time.time() < deadline:
            time.sleep(0.05)
        child = int((phone_root / "batches/b1/child.pid").read_text())
        second = run_agent(shell, phone_root, *args)
        assert second.returncode == 3 and "busy=" in second.stdout
        stop = run_agent(shell, phone_root, "stop", phone_root)
        assert stop.returncode == 0 and f"stopped={first.pid}" in stop.stdout
        first.wait(timeout=10)
        time.sleep(0.2)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        assert not (phone_root / "runner.pid").exists()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def race_for_the_lock(shell, phone_root, barrier: Path, n: int) -> list[tuple[int, int, str]]:
    """``n`` runners held at a barrier (a FIFO) and released at once; (pid, exit status, output) of each."""
    args = ["run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-"]
    for old in barrier.parent.glob(barrier.name + ".*"):
        old.unlink()
    gate = os.open(barrier, os.O_RDWR)   # read-write: opening it blocks nobody, and the runners' reads wait
    # Each racer waits for its line, then becomes the runner (exec keeps the pid that runner.pid names).
    wait_then_run = 'touch "$1.$$"; read -r _ < "$1"; shift; exec "$@"'
    racers = [subprocess.Popen([shell, "-c", wait_then_run, "racer", str(barrier), shell,
                                str(phone_root / "agent/latbench_runner.sh"), *map(str, args)],
                               stdout=subprocess.PIPE, text=True, start_new_session=True) for _ in range(n)]
    try:
        deadline = time.time() + 20
        while len(list(barrier.parent.glob(barrier.name + ".*"))) < n and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)                  # from `touch` to the blocking read
        os.write(gate, b"\n" * n)
        deadline = time.time() + 20      # the losers exit at once; the winner runs a 30 s step
        while sum(r.poll() is not None for r in racers) < n - 1 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        run_agent(shell, phone_root, "stop", phone_root)
        deadline = time.time() + 10
        while any(r.poll() is None for r in racers) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        os.close(gate)
        for r in racers:
            if r.poll() is None:         # a second winner, which `stop` does not know about
                os.killpg(r.pid, signal.SIGKILL)
                r.wait()
    outputs = [(r.pid, r.returncode, r.stdout.read()) for r in racers]
    for r in racers:
        r.stdout.close()
    return outputs


@pytest.mark.parametrize("shell", SHELLS)
def test_runners_started_together_exactly_one_takes_the_lock(shell, phone_root, tmp_path):
    (phone_root / "models" / "slow.tflite").write_bytes(b"x")
    (phone_root / "batches/b1/plan").write_text("0 item slow.tflite 10 false\n")
    barrier = tmp_path / "barrier"
    os.mkfifo(barrier)
    for _ in range(5):                   # a check-then-write lock lets two in within a few rounds
        outputs = race_for_the_lock(shell, phone_root, barrier, 10)
        started = [pid for pid, _, out in outputs if any("start" in f for f in runner_lines(out))]
        assert len(started) == 1, outputs
        busy = [(rc, [f.get("busy") for f in runner_lines(out)]) for pid, rc, out in outputs if pid != started[0]]
        assert busy == [(3, [str(started[0])])] * (len(outputs) - 1), outputs
        assert not (phone_root / "runner.pid").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_lock_left_by_a_dead_runner_is_taken_over(shell, phone_root):
    """runner.pid naming a process that is not a runner (killed with -9, pid reused): the next run goes ahead."""
    (phone_root / "runner.pid").write_text(f"{os.getpid()}\n")
    (phone_root / "batches/b1/plan").write_text("0 ref a.tflite 10 false\n")
    res = run_agent(shell, phone_root, "run", phone_root, "b1", "tflite", "-", 1, 2, "-", "-")
    assert res.returncode == 0 and [f["step"] for f in runner_lines(res.stdout) if "step" in f] == ["0"], res.stdout
    assert not (phone_root / "runner.pid").exists() and not (phone_root / "runner.break").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_stop_never_touches_a_recycled_pid(shell, phone_root):
    """A pid file left behind whose process is no longer ours (here: pytest itself) is not killed."""
    (phone_root / "runner.pid").write_text(f"{os.getpid()}\n")
    res = run_agent(shell, phone_root, "stop", phone_root)
    assert res.returncode == 0 and "stopped=" not in res.stdout and not (phone_root / "runner.pid").exists()


# ------------------------------------------------------------------------------ link errors, keys


@pytest.mark.parametrize("error,kind,transient", [
    (ConnectionResetError(104, "Connection reset by peer"), AdbLinkError, True),
    (BrokenPipeError(32, "Broken pipe"), AdbLinkError, True),
    (ConnectionRefusedError(111, "refused"), AdbLinkError, True),
])
def test_socket_errors_map_to_one_transient_error(error, kind, transient):
    with pytest.raises(kind) as info:
        with adb_errors(AdbTarget.parse("tcp:h:1"), "running x"):
            raise error
    assert info.value.transient is transient and isinstance(info.value, DeviceError)


def test_every_adb_shell_exception_maps_to_a_device_error():
    from adb_shell import exceptions as ex

    names = [n for n in dir(ex) if isinstance(getattr(ex, n), type) and issubclass(getattr(ex, n), Exception)]
    assert len(names) >= 14
    for name in names:
        cls = getattr(ex, name)
        err = cls("boom", None) if name in ("UsbReadFailedError",) else cls("boom")
        with pytest.raises(DeviceError):
            with adb_errors(AdbTarget.parse("tcp:h:1"), "testing"):
                raise err
    with pytest.raises(UnauthorizedError, match="Allow USB debugging"):
        with adb_errors("tcp:h:1", "connecting"):
            raise ex.DeviceAuthError("Device authentication required, no keys available.")
    with pytest.raises(UnauthorizedError, match="Allow USB debugging"):
        with adb_errors("tcp:h:1", "connecting", authorizing=lambda: True):
            raise ex.TcpTimeoutException("Reading from h:1 timed out (10 seconds)")


def test_key_is_created_private_and_reused(tmp_path):
    path = tmp_path / "android" / "adbkey"
    signer = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.GetPublicKey() == load_or_create_key(path).GetPublicKey()
    os.unlink(str(path) + ".pub")
    with pytest.raises(AdbLinkError, match="no public half"):
        load_or_create_key(path)


def test_nodelay_transport_sets_the_option_and_writes_everything():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        received = bytearray()
        payload = os.urandom(3_000_000)

        def drain():
            conn, _ = server.accept()
            with conn:
                while len(received) < len(payload):
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    received.extend(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        transport = _tcp_transport_class()("127.0.0.1", server.getsockname()[1])
        transport.connect(5.0)
        assert transport._connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert transport.bulk_write(payload, 5.0) == len(payload)
        reader.join(10)
        transport.close()
    assert bytes(received) == payload


# ------------------------------------------------------------------------------ store


def test_store_keeps_conditions_and_upgrades_version_1_stores(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:   # a store as schema version 1 wrote it
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE environments (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, settings TEXT NOT NULL,
                environment TEXT NOT NULL, UNIQUE (fingerprint, settings));
            CREATE TABLE measurements (env_id INTEGER NOT NULL REFERENCES environments(id), signature TEXT NOT NULL,
                in_channels INTEGER NOT NULL, out_channels INTEGER NOT NULL, sparsity REAL NOT NULL,
                input_hw INTEGER NOT NULL, median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,
                iqr_ms REAL NOT NULL, runs INTEGER NOT NULL, rounds INTEGER NOT NULL, outliers INTEGER NOT NULL,
                measured_at REAL NOT NULL,
                PRIMARY KEY (env_id, signature, in_channels, out_channels, sparsity, input_hw));
            INSERT INTO meta VALUES ('schema_version', '1');
            INSERT INTO environments VALUES (1, 'fp', '{}', '{}');
            INSERT INTO measurements VALUES (1, 'old', 8, 8, 0.0, 14, 1.0, 0.9, 1.1, 0.1, 50, 5, 0, 0.0);
        """)
    with MeasurementStore(path) as st:
        assert st.schema_version == 2
        (old,) = st.rows(1)
        assert old.measurement.median_ms == 1.0 and old.conditions is None
        cond = {"before": {"cpu_temp_c": 38.5}, "remeasured_steps": 1}
        st.put(1, "new", LayerPoint(8, 16, 0.0, 14), Measurement("new", 2.0, 1.9, 2.1, 0.1, 50, 5, 0, conditions=cond))
    with MeasurementStore(path) as st:
        rows = {r.signature: r for r in st.rows(1)}
        assert rows["new"].conditions == cond and rows["old"].conditions is None
