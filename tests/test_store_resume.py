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
    proc.wait()
    before = _rows(store)
    assert len(before) >= 40, "the profile did not get far enough to test a kill"

    done = subprocess.run(CMD + ["--store", str(store)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    after = _rows(store)
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
