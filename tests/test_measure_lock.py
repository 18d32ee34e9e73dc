"""The host-wide measurement lock (latbench/devices/lock.py): one process times on the host at a time."""
import fcntl
import os
import select
import subprocess
import sys
import threading
import time

import pytest

from latbench.devices.base import Artifact, MeasureSettings
from latbench.devices.host import HostDevice
from latbench.devices.lock import LOCK_DIR_ENV, MeasurementLock, lock_path

DEADLINE_S = 120   # generous bound for a wait that should end at once; never a timing assertion

_HOLDER = r"""
import os, sys, time
from latbench.devices.lock import measurement_lock

folder = sys.argv[1]
with measurement_lock().held():
    open(os.path.join(folder, "held"), "w").close()
    while not os.path.exists(os.path.join(folder, "release")):
        time.sleep(0.01)
    with open(os.path.join(folder, "log"), "a") as log:
        log.write("holder releases\n")
"""

_WAITER = r"""
import os, sys
from latbench.devices.lock import measurement_lock

folder = sys.argv[1]
with measurement_lock().held():
    with open(os.path.join(folder, "log"), "a") as log:
        log.write("waiter holds\n")
"""


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    return folder


def _wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _flock_waiters(path) -> int:
    """Processes or threads blocked in flock() on ``path``: the kernel lists them in /proc/locks as ``->``."""
    inode = os.stat(path).st_ino
    return sum(1 for line in open("/proc/locks") if "->" in line.split()
               and any(tok.endswith(f":{inode}") for tok in line.split()))


def test_a_second_process_says_who_holds_the_lock_and_waits_for_it(tmp_path, lock_dir):
    env = {**os.environ, LOCK_DIR_ENV: str(lock_dir)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], env=env, stderr=subprocess.PIPE,
                              text=True)
    try:
        _wait_for(lambda: (tmp_path / "held").exists() or holder.poll() is not None, "the first process")
        assert holder.poll() is None, holder.stderr.read()
        waiter = subprocess.Popen([sys.executable, "-c", _WAITER, str(tmp_path)], env=env, stderr=subprocess.PIPE,
                                  text=True)
        ready, _, _ = select.select([waiter.stderr], [], [], DEADLINE_S)
        assert ready, "the second process said nothing while the lock was held"
        message = waiter.stderr.readline()
        assert f"another latbench process is measuring on this host (pid {holder.pid}); waiting" in message
        assert waiter.poll() is None and not (tmp_path / "log").exists()   # still waiting
        (tmp_path / "release").touch()
        assert waiter.wait(timeout=DEADLINE_S) == 0 and holder.wait(timeout=DEADLINE_S) == 0
        assert (tmp_path / "log").read_text().splitlines() == ["holder releases", "waiter holds"]
        assert "another latbench process" not in waiter.stderr.read()      # said once
    finally:
        for p in (holder, locals().get("waiter")):
            if p is not None and p.poll() is None:
                p.kill()


def _hold_elsewhere():
    """Take the lock as another process would (a separate open file: flock excludes it like a process)."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, b"4242\n")
    return fd


def test_the_wait_is_announced_once_per_process_and_the_lock_is_reentrant(lock_dir):
    said = []
    lock = MeasurementLock(notify=said.append)
    for round_ in range(2):
        other = _hold_elsewhere()
        t = threading.Thread(target=lambda: (lock.acquire(), lock.acquire(), lock.release(), lock.release()))
        t.start()
        _wait_for(lambda: _flock_waiters(lock_path()) == 1 or not t.is_alive(), "the lock's waiter")
        assert t.is_alive()
        os.close(other)
        t.join(DEADLINE_S)
        assert not t.is_alive()
        assert len(said) == 1 and "(pid 4242)" in said[0], said
    # Released as often as taken: another holder gets it at once.
    fd = os.open(lock_path(), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_an_unusable_lock_folder_is_named_with_what_to_do(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(LOCK_DIR_ENV, str(blocker / "locks"))
    from latbench.devices.base import DeviceError

    with pytest.raises(DeviceError, match=f"{blocker}.*set \\${LOCK_DIR_ENV} to a writable folder"):
        MeasurementLock().acquire()


class _Instant(HostDevice):
    """A host device whose models do nothing: only the locking around its timing is under test."""

    name, model_format, fingerprint_prefix = "host:test", "onnx", "host-test-"

    def runtime_settings(self):
        return {"runtime": "none"}

    def load(self, model):
        return lambda: None


def test_host_devices_time_only_while_holding_the_host_lock(lock_dir):
    device = _Instant(settings=MeasureSettings(warmup=1, rounds=2, runs_per_round=2, reference=False))
    other = _hold_elsewhere()
    out = []
    t = threading.Thread(target=lambda: out.append(device.measure([Artifact("a", b""), Artifact("b", b"")])))
    try:
        t.start()
        _wait_for(lambda: _flock_waiters(lock_path()) == 1 or not t.is_alive(), "the device to wait for the lock")
        assert t.is_alive() and not out
    finally:
        os.close(other)
    t.join(DEADLINE_S)
    assert [m.key for m in out[0]] == ["a", "b"]


class _FactsOnly:
    """A phone link that answers the facts query only (the serial names the phone's lock)."""

    def __init__(self, serial):
        self.serial = serial

    def shell(self, command, timeout_s=30.0, check=True):
        return type("Result", (), {"output": f"prop\tro.serialno\t{self.serial}\ncpu\t0\t1800000\n", "rc": 0})()


def test_a_phone_is_locked_by_its_serial_whatever_address_reaches_it(lock_dir):
    from latbench.devices.android.connection import AdbTarget
    from latbench.devices.android.device import AndroidDevice
    from latbench.devices.lock import phone_lock_name

    over_tcp = AndroidDevice(AdbTarget.parse("tcp:127.0.0.1:5555"), connection=_FactsOnly("R58M/1"))
    over_usb = AndroidDevice(AdbTarget.parse("usb"), connection=_FactsOnly("R58M/1"))
    assert over_tcp.measurement_lock() is over_usb.measurement_lock()
    path = lock_path(phone_lock_name("R58M/1"))
    assert path.parent == lock_dir and "/" not in path.name[len("latbench-"):]
    path.parent.mkdir(parents=True, exist_ok=True)
    other = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    out = []
    t = threading.Thread(target=lambda: out.append(over_usb.measure([])))
    try:
        t.start()
        _wait_for(lambda: _flock_waiters(path) == 1 or not t.is_alive(), "the phone's measurement to wait")
        assert t.is_alive() and not out
    finally:
        os.close(other)
    t.join(DEADLINE_S)
    assert out == [[]]
