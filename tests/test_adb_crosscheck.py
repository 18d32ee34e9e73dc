"""Google's own adb client (Debian's ``adb``) against the loopback daemon.

Each module run starts a private adb server: ``ANDROID_ADB_SERVER_PORT`` on a free port and ``HOME``
in a temporary directory (the server keeps its key in ``$HOME/.android/adbkey``), and kills it at
the end, so a developer's own adb server and keys are never touched.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from latbench.testing.adbd import LoopbackPhone, SandboxError

ADB = shutil.which("adb")
pytestmark = [pytest.mark.phone,
              pytest.mark.skipif(ADB is None, reason="Google's adb client is not installed (apt-get install adb)")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AdbServer:
    def __init__(self, home: Path):
        self.env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(_free_port()),
                    "ADB_VENDOR_KEYS": "", "ANDROID_SDK_HOME": str(home), "TMPDIR": str(home)}  # log file too
        self.key = home / ".android" / "adbkey.pub"

    def __call__(self, *args: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([ADB, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"adb {' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def state(self, serial: str) -> str:
        for line in self("devices").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == serial:
                return fields[1]
        return "absent"

    def wait_state(self, serial: str, wanted: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(serial)) != wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        return state


@pytest.fixture(scope="module")
def adb(tmp_path_factory):
    server = AdbServer(tmp_path_factory.mktemp("adb-home"))
    server("start-server", check=True)
    assert server.key.exists(), "adb did not create its key in $HOME/.android"
    yield server
    server("kill-server")


def _phone(**kwargs) -> LoopbackPhone:
    try:
        return LoopbackPhone(**kwargs).start()
    except SandboxError as err:
        pytest.skip(f"no sandbox for the loopback phone on this machine: {err}")


@pytest.fixture(scope="module")
def phone(adb):
    ph = _phone(authorized_keys=[adb.key])   # adb's own key, authorised up front as on a paired phone
    result = adb("connect", ph.serial, check=True)
    assert f"connected to {ph.serial}" in result.stdout  # known key: signed in at the first attempt
    assert adb.wait_state(ph.serial, "device") == "device"
    yield ph
    adb("disconnect", ph.serial)
    ph.stop()


def test_devices_lists_the_banner(adb, phone):
    line = next(line for line in adb("devices", "-l", check=True).stdout.splitlines() if line.startswith(phone.serial))
    fields = line.split()
    assert fields[1] == "device"
    assert "model:Loopback_Phone_8" in fields and "product:loopback" in fields and "device:loopback" in fields
    assert adb("-s", phone.serial, "get-state", check=True).stdout.strip() == "device"


def test_shell_v2_exit_code_and_stderr(adb, phone):
    result = adb("-s", phone.serial, "shell", "echo to-out; echo to-err >&2; exit 42")
    assert (result.returncode, result.stdout, result.stderr) == (42, "to-out\n", "to-err\n")
    result = adb("-s", phone.serial, "shell", "getprop", "ro.product.model", check=True)
    assert result.stdout == "Loopback Phone 8\n"
    result = adb("-s", phone.serial, "exec-out", "cat /sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq")
    assert result.stdout == "2840000\n"


def test_push_pull_byte_identical(adb, phone, tmp_path):
    data = os.urandom(4 * 1024 * 1024 + 123)
    src, back = tmp_path / "payload.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    adb("-s", phone.serial, "push", str(src), "/data/local/tmp/xcheck/payload.bin", check=True)
    assert phone.host_path("/data/local/tmp/xcheck/payload.bin").read_bytes() == data
    adb("-s", phone.serial, "pull", "/data/local/tmp/xcheck/payload.bin", str(back), check=True)
    assert back.read_bytes() == data
    listing = adb("-s", phone.serial, "ls", "/data/local/tmp/xcheck", check=True).stdout
    assert listing.split()[-1] == "payload.bin" and f"{len(data):08x}" in listing


def test_missing_remote_file_is_a_clean_error(adb, phone, tmp_path):
    result = adb("-s", phone.serial, "pull", "/data/local/tmp/does-not-exist", str(tmp_path / "x"))
    assert result.returncode != 0 and "No such file or directory" in result.stdout + result.stderr
    assert adb.state(phone.serial) == "device"  # a STA2 error reply of the wrong size would drop the link


def test_unknown_key_is_unauthorized_until_accepted(adb):
    stranger = _phone()   # by default: a phone adb has never been allowed on
    try:
        adb("connect", stranger.serial)
        assert adb.wait_state(stranger.serial, "unauthorized") == "unauthorized"
        result = adb("-s", stranger.serial, "shell", "true")
        assert result.returncode != 0 and "unauthorized" in result.stderr
        assert stranger.accept_pending() == 1  # the user presses "Allow"
        assert adb.wait_state(stranger.serial, "device") == "device"
        assert adb("-s", stranger.serial, "shell", "echo in", check=True).stdout == "in\n"
    finally:
        adb("disconnect", stranger.serial)
        stranger.stop()


def test_reset_mid_command_then_reconnect(adb, phone):
    fault = phone.inject_fault("reset", match="xcheck-fault", after_bytes=1)
    result = adb("-s", phone.serial, "shell", "echo xcheck-fault; sleep 5; echo never")
    assert fault.fired.is_set()
    # adb 1.0.41 exits 0 here, with no exit packet seen: a client must not take rc 0 as success.
    assert "never" not in result.stdout
    adb("disconnect", phone.serial)
    assert "connected to" in adb("connect", phone.serial, check=True).stdout
    assert adb.wait_state(phone.serial, "device") == "device"
    assert adb("-s", phone.serial, "shell", "echo again", check=True).stdout == "again\n"
