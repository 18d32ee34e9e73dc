import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from latbench.devices.base import Measurement
from latbench.layers import LayerPoint
from latbench.store import MeasurementStore, StoreError

CMD = [sys.executable, "-m", "latbench.cli", "profile", "resnet56", "--resolution", "32", "--dense",
       "--channel-points", "4", "--rounds", "1", "--runs", "3", "--warmup", "1", "--no-progress"]


def _rows(path):
    with sqlite3.connect(path) as db:
        return {r[:6]: r[6] for r in db.execute(
            "SELECT signature, in_channels, out_channels, sparsity, input_hw, env_id, measured_at FROM measurements")}


@pytest.mark.slow
def test_a_profile_killed_with_sigkill_resumes_losing_and_repeating_nothing(tmp_path):
    store = tmp_path / "m.db"
    proc = subprocess.Popen(CMD + ["--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    before = {}
    while time.time() < deadline:
        if store.exists():
            try:
                before = _rows(store)
            except sqlite3.OperationalError:
                before = {}
            if len(before) >= 40:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the profile ended before the kill: nothing to resume"
    before = _rows(store)
    assert len(before) >= 40, "the profile did not get far enough to test a kill"

    done = subprocess.run(CMD + ["--store", str(store)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    after = _rows(store)
    assert set(before) < set(after)                               # killed mid-run: some points, not all
    assert report["measured"] > 0
    assert report["skipped"] == len(before)                       # nothing measured twice ...
    assert report["measured"] == len(after) - len(before)         # ... and only the rest measured
    assert all(after[k] == v for k, v in before.items())          # nothing measured before was lost or redone
    assert "already in the store" in done.stderr


def test_store_keeps_one_measurement_per_key_and_lists_what_is_missing(tmp_path):
    st = MeasurementStore(tmp_path / "s.db")
    env = st.environment_id("fp", {"threads": 1}, {"cpu": "x"})
    assert st.environment_id("fp", {"threads": 1}, {"cpu": "x"}) == env
    assert st.environment_id("fp", {"threads": 2}, {"cpu": "x"}) != env
    m = Measurement("k", 1.0, 0.9, 1.1, 0.1, 50, 5, 0)
    p, q = LayerPoint(8, 8, 0.0, 14), LayerPoint(16, 8, 0.0, 14)
    st.put(env, "sig", p, m)
    st.put(env, "sig", p, m)
    assert st.count(env) == 1 and st.has(env, "sig", p)
    assert st.missing(env, [("sig", p), ("sig", q)]) == [("sig", q)]
    assert st.schema_version == 2  # v2: per-measurement telemetry (test_android_store.py)
    st.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"precious notes, not sqlite" * 100)
    with pytest.raises(StoreError, match="not a latbench measurement store"):
        MeasurementStore(junk)
    assert junk.read_bytes() == b"precious notes, not sqlite" * 100


# Two processes on one store: each writes the same environments and points, starting together.
_WRITER = r"""
import json, os, sys, time
from latbench.devices.base import Measurement
from latbench.layers import LayerPoint
from latbench.store import MeasurementStore

path, go, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
st = MeasurementStore(path)
while not os.path.exists(go):
    time.sleep(0.001)
envs = [st.environment_id(f"fp{i}", {"threads": 1}, {"writer": value}) for i in range(30)]
stored = [st.put(envs[0], "sig", LayerPoint(c, 8, 0.0, 14), Measurement("k", value, value, value, 0.0, 1, 1, 0))
          for c in range(1, 201)]
print(json.dumps({"envs": envs, "stored": stored}))
"""


@pytest.mark.slow
def test_two_processes_writing_the_same_points_neither_fail_nor_duplicate_nor_overwrite(tmp_path):
    path, go = tmp_path / "shared.db", tmp_path / "go"
    MeasurementStore(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(go), str(v)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in (1.0, 2.0)]
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    a, b = (json.loads(out) for out, _ in outs)
    assert a["envs"] == b["envs"] and len(set(a["envs"])) == 30     # both got the same 30 environments
    with MeasurementStore(path) as st:
        assert len(st.environments()) == 30
        rows = {r.point.in_channels: r.measurement.median_ms for r in st.rows(a["envs"][0])}
    assert len(rows) == 200                                           # no point lost, none twice
    for c, (sa, sb) in enumerate(zip(a["stored"], b["stored"]), start=1):
        assert sa != sb, f"point {c}: exactly one writer must be told its value was stored"
        assert rows[c] == (1.0 if sa else 2.0), f"point {c} holds the second writer's value"


def test_a_point_already_stored_is_kept_and_the_second_writer_told(tmp_path):
    first, second = MeasurementStore(tmp_path / "s.db"), MeasurementStore(tmp_path / "s.db")
    env = first.environment_id("fp", {}, {})
    p = LayerPoint(8, 8, 0.0, 14)
    assert first.put(env, "sig", p, Measurement("k", 1.0, 0.9, 1.1, 0.1, 50, 5, 0)) is True
    assert second.put(env, "sig", p, Measurement("k", 2.0, 1.9, 2.1, 0.1, 50, 5, 0)) is False
    (row,) = second.rows(env)
    assert (row.measurement.median_ms, row.measurement.p90_ms) == (1.0, 1.1)


class _Interleaved:
    """A store connection that lets ``between`` run right after the first look-up of an environment, as
    another process would between that SELECT and the INSERT that follows it."""

    def __init__(self, db, between):
        self._db, self._between = db, between

    def execute(self, sql, *args):
        cur = self._db.execute(sql, *args)
        if self._between and sql.startswith("SELECT id FROM environments"):
            row, between, self._between = cur.fetchone(), self._between, None
            between()
            return type("Fetched", (), {"fetchone": lambda _self: row})()
        return cur

    def __enter__(self):
        return self._db.__enter__()

    def __exit__(self, *exc):
        return self._db.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_an_environment_created_by_another_process_between_look_up_and_insert_is_reused(tmp_path):
    other = MeasurementStore(tmp_path / "s.db")
    st = MeasurementStore(tmp_path / "s.db")
    theirs = []
    st._db = _Interleaved(st._db, lambda: theirs.append(other.environment_id("fp", {"t": 1}, {"by": "other"})))
    ours = st.environment_id("fp", {"t": 1}, {"by": "us"})
    assert theirs and ours == theirs[0]
    assert other.environment(ours)["environment"] == {"by": "other"}
    assert len(other.environments()) == 1


class FakeDevice:
    """The identity part of a device (name, fingerprint, settings); each test adds what it times."""

    name = "fake"

    def environment(self):
        return {}

    def fingerprint(self):
        return "fp"

    def backend_settings(self):
        return {}


def test_the_reference_unit_fixed_by_another_process_meanwhile_is_adopted_not_overwritten(tmp_path):
    from latbench.profiling import environment_of

    other = MeasurementStore(tmp_path / "s.db")

    class Device(FakeDevice):
        uses_reference, reference_ms = True, None

        def measure_reference_nominal(self):
            # While this process measures its unit, another one stores its own in the same environment.
            env_id = other.environment_id("fp", {}, {})
            other.update_environment(env_id, {"reference_ms": 2.0})
            return 1.0

    st = MeasurementStore(tmp_path / "s.db")
    device = Device()
    env_id = environment_of(device, st)
    assert device.reference_ms == 2.0
    assert st.environment(env_id)["environment"]["reference_ms"] == 2.0


def test_the_profiler_skips_and_keeps_points_another_process_stored_meanwhile(tmp_path):
    from rich.console import Console

    from latbench.devices.base import Artifact
    from latbench.profiling import Profiler

    other = MeasurementStore(tmp_path / "s.db")
    points = [LayerPoint(c, 8, 0.0, 14) for c in (1, 2, 3, 4)]
    batches = []

    class Device(FakeDevice):
        model_format, uses_reference = "onnx", False

        def measure(self, artifacts):
            batches.append([a.key for a in artifacts])
            if len(batches) == 1:   # meanwhile another process stores a point of this batch and one of the next
                env_id = other.environment_id("fp", {}, {})
                for p, v in ((points[1], 8.0), (points[2], 9.0)):
                    other.put(env_id, "sig", p, Measurement("x", v, v, v, 0.0, 1, 1, 0))
            return [Measurement(a.key, 1.0, 1.0, 1.0, 0.0, 1, 1, 0) for a in artifacts]

    console = Console(file=__import__("io").StringIO(), width=300)
    prof = Profiler(Device(), MeasurementStore(tmp_path / "s.db"), batch_size=2, progress=False, console=console)
    prof._artifacts = lambda sig, p: [Artifact(str(p.in_channels), b"")]
    assert prof.measure_points([("sig", p) for p in points]) == 2       # points 1 and 4: ours
    assert batches == [["1", "2"], ["4"]]                                # point 3 was not measured again
    assert prof.by_another == 2
    values = {r.point.in_channels: r.measurement.median_ms for r in other.rows(prof.env_id)}
    assert values == {1: 1.0, 2: 8.0, 3: 9.0, 4: 1.0}
    assert "another process is profiling into" in console.file.getvalue()
