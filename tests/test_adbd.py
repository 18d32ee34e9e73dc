"""The loopback ADB daemon, driven by adb-shell's own client and by a raw-socket client that checks the
wire details Google's adb depends on (version/checksum negotiation, maxdata, banner, AUTH retries,
flow control, shell v2 packets, exact sync reply sizes)."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import AdbConnectionError, PushFailedError, TcpTimeoutException
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from latbench.testing.adbd import AndroidPublicKey, LoopbackPhone, SandboxError
from latbench.testing.adbd import protocol as p

pytestmark = pytest.mark.phone

LINK_ERRORS = (OSError, AdbConnectionError, TcpTimeoutException)


def _start(**kwargs) -> LoopbackPhone:
    try:
        return LoopbackPhone(**kwargs).start()
    except SandboxError as err:
        pytest.skip(f"no sandbox for the loopback phone on this machine: {err}")


@pytest.fixture(scope="module")
def phone(signer):
    ph = _start(authorized_keys=[signer[1]])   # the tests' host key, allowed beforehand
    yield ph
    ph.stop()


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> tuple[PythonRSASigner, Path]:
    key = tmp_path_factory.mktemp("keys") / "adbkey"
    keygen(str(key))
    return PythonRSASigner(key.with_suffix(".pub").read_text(), key.read_text()), key.with_suffix(".pub")


def _client(phone: LoopbackPhone, signer, auth_timeout_s: float = 5) -> AdbDeviceTcp:
    dev = AdbDeviceTcp(phone.host, phone.port, default_transport_timeout_s=10)
    dev.connect(rsa_keys=[signer], auth_timeout_s=auth_timeout_s)
    return dev


@pytest.fixture
def adb(phone, signer):
    dev = _client(phone, signer[0])
    yield dev
    dev.close()


# ------------------------------------------------------------------------------ adb-shell client
def test_auth_then_known_key_signs_in(signer):
    """With auto_accept (opt-in), first connection: signature unknown → public key offered → accepted.
    Second: signature."""
    phone = _start(auto_accept=True)
    try:
        for _ in range(2):
            dev = _client(phone, signer[0])
            assert dev.available
            assert dev.shell("echo ready") == "ready\n"
            dev.close()
            assert len(phone.offered_keys) == 1          # offered once, then known
        offered = AndroidPublicKey.parse(signer[1].read_text())
        assert any(offered.same_key(k) for k in phone.auth.authorized)
    finally:
        phone.stop()


def test_an_unknown_key_is_not_authorised_by_default(signer):
    """No key gets in unasked: in the namespace sandbox as root, a shell on this phone is a root shell."""
    phone = _start()
    try:
        with pytest.raises(LINK_ERRORS):
            _client(phone, signer[0], auth_timeout_s=1)
        assert len(phone.offered_keys) == 1 and not phone.auth.authorized
    finally:
        phone.stop()


def test_unknown_key_stays_pending_until_accepted(signer):
    phone = _start(auto_accept=False)
    try:
        with pytest.raises(LINK_ERRORS):
            _client(phone, signer[0], auth_timeout_s=1)
        offered = AndroidPublicKey.parse(signer[1].read_text())
        assert phone.offered_keys and phone.offered_keys[-1].same_key(offered)
        assert not phone.auth.authorized
    finally:
        phone.stop()


def test_authorized_key_list_admits_without_dialog(signer, tmp_path):
    other = tmp_path / "other"
    keygen(str(other))
    phone = _start(auto_accept=False, authorized_keys=[signer[1]])
    try:
        dev = _client(phone, signer[0])
        assert dev.shell("getprop ro.product.model") == "Loopback Phone 8\n"
        dev.close()
        assert phone.offered_keys == []  # signed in with the signature alone
        stranger = PythonRSASigner(other.with_suffix(".pub").read_text(), other.read_text())
        with pytest.raises(LINK_ERRORS):
            _client(phone, stranger, auth_timeout_s=1)
    finally:
        phone.stop()


def _standalone(*args: str) -> tuple[subprocess.Popen, str, int]:
    """``python -m latbench.testing.adbd ARGS`` with this test's latbench; the process and its address."""
    import latbench

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(latbench.__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.Popen([sys.executable, "-m", "latbench.testing.adbd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        _, err = proc.communicate()
        if "sandbox" in err.lower():
            pytest.skip(f"no sandbox for the loopback phone on this machine: {err.strip()}")
        raise AssertionError(f"the standalone phone did not start: {line}{err}")
    host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
    return proc, host, int(port)


def test_standalone_phone_lets_in_the_given_keys_and_others_only_with_auto_accept(signer, tmp_path):
    other = tmp_path / "other"
    keygen(str(other))
    stranger = PythonRSASigner(other.with_suffix(".pub").read_text(), other.read_text())
    for flags, stranger_gets_in in (([], False), (["--auto-accept"], True)):
        proc, host, port = _standalone("--authorized-key", str(signer[1]), *flags)
        try:
            for key, admitted in ((signer[0], True), (stranger, stranger_gets_in)):
                dev = AdbDeviceTcp(host, port, default_transport_timeout_s=10)
                if admitted:
                    dev.connect(rsa_keys=[key], auth_timeout_s=5)
                    assert dev.shell("echo in") == "in\n"
                else:
                    with pytest.raises(LINK_ERRORS):
                        dev.connect(rsa_keys=[key], auth_timeout_s=1)
                dev.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def test_shell_and_exec(adb):
    assert adb.shell("echo out; echo err >&2") == "out\nerr\n"  # legacy shell: one merged stream
    assert adb.exec_out("printf '\\000\\001\\377'", decode=False) == b"\x00\x01\xff"
    assert adb.shell("pwd; echo $TMPDIR") == "/\n/data/local/tmp\n"
    big = adb.shell("head -c 300000 /dev/zero | tr '\\0' x")
    assert big == "x" * 300000  # many WRTEs, each acknowledged


def test_push_pull_stat_list(adb, tmp_path):
    data = os.urandom(2_500_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    adb.push(str(src), "/data/local/tmp/deep/er/blob.bin")  # parents created (fixed_push_mkdir)
    mode, size, _ = adb.stat("/data/local/tmp/deep/er/blob.bin")
    assert size == len(data) and mode & 0o170000 == 0o100000
    assert adb.stat("/data/local/tmp/missing") == (0, 0, 0)
    names = {bytes(f.filename).decode() for f in adb.list("/data/local/tmp/deep/er")}
    assert names == {".", "..", "blob.bin"}
    back = tmp_path / "back.bin"
    adb.pull("/data/local/tmp/deep/er/blob.bin", str(back))
    assert back.read_bytes() == data
    assert adb.shell("sha256sum /data/local/tmp/deep/er/blob.bin").split()[0] == hashlib.sha256(data).hexdigest()
    with pytest.raises(PushFailedError):
        adb.push(str(src), "/system/bin/blob.bin")  # read-only on a phone


def test_phone_files_and_shims(phone, adb):
    freqs = adb.shell("cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq").split()
    expected = [str(c.max_khz) for c in phone.profile.clusters for _ in range(c.cores)]
    assert freqs == expected and len(freqs) == 8
    assert adb.shell("cat /sys/devices/system/cpu/possible") == "0-7\n"
    phone.set_temperature(41.25)
    assert adb.shell("cat /sys/class/thermal/thermal_zone0/temp") == "41250\n"
    assert "  temperature: 412\n" in adb.shell("dumpsys battery")
    phone.set_temperature(77, zones="cpu-big")
    zones = adb.shell("for z in /sys/class/thermal/thermal_zone*; do echo $(cat $z/type)=$(cat $z/temp); done")
    assert "cpu-big=77000" in zones.split() and "cpu-little=41250" in zones.split()
    listing = adb.shell("getprop").splitlines()
    assert "[ro.product.model]: [Loopback Phone 8]" in listing and listing == sorted(listing)
    assert adb.shell("getprop ro.build.version.sdk; getprop no.such.prop fallback") == "33\nfallback\n"
    phone.set_frequency(fraction=0.5, cluster="big")
    assert adb.shell("cat /sys/devices/system/cpu/cpu5/cpufreq/scaling_cur_freq") == "1210000\n"
    phone.set_frequency(fraction=1.0)
    assert adb.shell("taskset f0 sh -c 'echo $LOOPBACK_SIM_CPUS'") == "4,5,6,7\n"
    assert "Invalid argument" in adb.shell("taskset 100 true")  # cpu 8 does not exist on this phone
    assert adb.shell("taskset -c 7 true && echo ok") == "ok\n"


def test_reset_mid_command_leaves_process_running(phone, signer):
    fault = phone.inject_fault("reset", match="fault-reset", after_bytes=1)
    dev = _client(phone, signer[0])
    with pytest.raises(LINK_ERRORS):
        dev.shell("echo started; sleep 0.3; echo survived > /data/local/tmp/fault-reset.txt", read_timeout_s=5)
    assert fault.fired.is_set()
    dev.close()
    marker = phone.host_path("/data/local/tmp/fault-reset.txt")
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the shell creates the file before echo fills it
    assert marker.read_text() == "survived\n"
    dev = _client(phone, signer[0])  # the phone still listens
    assert dev.shell("echo back") == "back\n"
    dev.close()


def test_close_mid_push(phone, signer, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    fault = phone.inject_fault("close", match="sync:", after_bytes=500_000)
    dev = _client(phone, signer[0])
    with pytest.raises(LINK_ERRORS + (PushFailedError,)):
        dev.push(str(src), "/data/local/tmp/partial.bin", read_timeout_s=5)
    assert fault.fired.is_set()
    dev.close()


def test_drop_connections_now(phone, signer):
    dev = _client(phone, signer[0])
    assert phone.drop_connections("reset") >= 1
    with pytest.raises(LINK_ERRORS):
        dev.shell("echo hi", read_timeout_s=3)
    dev.close()


def test_stop_ends_every_process_the_phone_started():
    phone = _start()   # no client needed: phone.run
    marker = "987.654321"
    phone.run(f"sleep {marker} > /dev/null 2>&1 &")
    assert _host_processes_with(marker)
    phone.stop()
    deadline = time.monotonic() + 5
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _host_processes_with(marker)


def test_killed_test_process_leaves_nothing_running(tmp_path):
    """SIGKILL of the process owning the phone: the namespace's init sees its lifeline close and exits."""
    marker = "876.54321"
    script = ("import sys, time\n"
              "from latbench.testing.adbd import LoopbackPhone, SandboxError\n"
              "try:\n    phone = LoopbackPhone().start()\n"
              "except SandboxError:\n    print('no-sandbox', flush=True); sys.exit(0)\n"
              f"phone.run('sleep {marker} > /dev/null 2>&1 &')\n"
              "print('up', phone.work_dir, flush=True)\ntime.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        state, _, work_dir = owner.stdout.readline().strip().partition(" ")
        if state == "no-sandbox":
            pytest.skip("no sandbox for the loopback phone on this machine")
        assert state == "up" and _host_processes_with(marker)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 5
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _host_processes_with(marker)
    shutil.rmtree(work_dir, ignore_errors=True)  # what the killed process could not clean up


@pytest.mark.parametrize("mechanism", ["namespace", "userns"])
def test_each_sandbox_mechanism(mechanism):
    phone = _start(sandbox=mechanism)
    try:
        assert phone.sandbox_mechanism == mechanism
        result = phone.run("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor && getprop ro.product.cpu.abi "
                           "&& ls /data/local/tmp && touch /usr/phone-was-here")
        assert result.stdout == "schedutil\narm64-v8a\n" and "Read-only file system" in result.stderr
    finally:
        phone.stop()


def _host_processes_with(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


# ------------------------------------------------------------------------------- raw wire client
class RawLink:
    """A minimal ADB host speaking straight to the socket."""

    def __init__(self, phone: LoopbackPhone):
        self.sock = socket.create_connection((phone.host, phone.port), timeout=5)
        self.version = p.A_VERSION

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.sock.sendall(p.pack(p.Message(command, arg0, arg1, data), self.version))

    def recv(self, timeout: float = 5) -> tuple[p.Header, bytes]:
        self.sock.settimeout(timeout)
        header = p.unpack_header(self._exactly(p.HEADER.size))
        assert header.valid_magic()
        return header, self._exactly(header.length)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def connect(self, key: rsa.RSAPrivateKey, version: int = p.A_VERSION, maxdata: int = 4096):
        self.version = min(version, p.A_VERSION)  # an old host checksums even its CNXN
        self.send(p.A_CNXN, version, maxdata, b"host::features=shell_v2\0")
        header, token = self.recv()
        assert (header.command, header.arg0, len(token)) == (p.A_AUTH, p.AUTH_TOKEN, p.TOKEN_SIZE)
        self.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, key.sign(token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1())))
        return self.recv()

    def open(self, service: str, local_id: int = 1) -> int:
        self.send(p.A_OPEN, local_id, 0, service.encode() + b"\0")
        header, _ = self.recv()
        assert header.command == p.A_OKAY and header.arg1 == local_id
        return header.arg0

    def read_stream(self, remote: int, local_id: int = 1) -> bytes:
        """Collect WRTE payloads (acknowledging each) until CLSE."""
        out = b""
        while True:
            header, data = self.recv()
            if header.command == p.A_CLSE:
                return out
            assert header.command == p.A_WRTE and (header.arg0, header.arg1) == (remote, local_id)
            out += data
            self.send(p.A_OKAY, local_id, remote)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def rsa_key(phone) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    phone.authorize_key(AndroidPublicKey.from_cryptography(key.public_key(), "raw@test").encode())
    return key


@pytest.fixture
def raw(phone):
    link = RawLink(phone)
    yield link
    link.close()


def test_public_key_format_round_trips(signer):
    text = signer[1].read_text()  # written by adb-shell's keygen (adb's own format)
    key = AndroidPublicKey.parse(text)
    assert key.encode().split()[0] == text.split()[0] and key.exponent == 65537
    with pytest.raises(ValueError, match="expected"):
        AndroidPublicKey.parse(text.split()[0][:-8])


def test_cnxn_negotiates_version_maxdata_and_banner(phone, rsa_key, raw):
    header, banner = raw.connect(rsa_key, version=0x01000002, maxdata=4096)
    assert (header.command, header.arg0, header.arg1, header.check) == (p.A_CNXN, p.A_VERSION, 4096, 0)
    assert banner == (b"device::ro.product.name=loopback;ro.product.model=Loopback Phone 8;"
                      b"ro.product.device=loopback;features=shell_v2,stat_v2,fixed_push_mkdir")
    assert b"delayed_ack" not in banner


def test_old_version_gets_checksums(phone, rsa_key, raw):
    header, banner = raw.connect(rsa_key, version=p.A_VERSION_MIN, maxdata=1 << 22)
    assert header.arg0 == p.A_VERSION_MIN and header.arg1 == p.MAX_PAYLOAD
    assert header.check == p.checksum(banner) != 0


def test_bad_signature_gets_a_fresh_token(phone, rsa_key, raw):
    raw.send(p.A_CNXN, p.A_VERSION, 4096, b"host::\0")
    _, first = raw.recv()
    raw.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, b"\x01" * 256)
    header, second = raw.recv()
    assert (header.command, header.arg0) == (p.A_AUTH, p.AUTH_TOKEN) and second != first
    raw.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, rsa_key.sign(first, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1())))
    header, third = raw.recv()
    assert (header.command, header.arg0) == (p.A_AUTH, p.AUTH_TOKEN)  # the old token's signature is no good
    raw.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, rsa_key.sign(third, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1())))
    header, _ = raw.recv()
    assert header.command == p.A_CNXN


def test_shell_v2_packets_and_exit_code(phone, rsa_key, raw):
    raw.connect(rsa_key)
    remote = raw.open("shell,v2,raw:echo out; echo err >&2; exit 7")
    packets, data = [], raw.read_stream(remote)
    while data:
        packet_id, length = p.SHELL_PACKET.unpack_from(data)
        packets.append((packet_id, data[5:5 + length]))
        data = data[5 + length:]
    assert (p.SHELL_STDOUT, b"out\n") in packets and (p.SHELL_STDERR, b"err\n") in packets
    assert packets[-1] == (p.SHELL_EXIT, bytes([7]))


def test_shell_v2_without_raw_and_stdin_close(phone, rsa_key, raw):
    raw.connect(rsa_key)
    remote = raw.open("shell,v2:cat")  # pty-less like raw
    raw.send(p.A_WRTE, 1, remote, p.shell_packet(p.SHELL_STDIN, b"echo me") + p.shell_packet(p.SHELL_CLOSE_STDIN, b""))
    header, _ = raw.recv()
    assert header.command == p.A_OKAY  # our WRTE acknowledged
    data = raw.read_stream(remote)
    assert data == p.shell_packet(p.SHELL_STDOUT, b"echo me") + p.shell_packet(p.SHELL_EXIT, b"\0")


def test_one_wrte_in_flight(phone, rsa_key, raw):
    raw.connect(rsa_key, maxdata=4096)
    remote = raw.open("exec:head -c 20000 /dev/zero")
    header, data = raw.recv()
    assert header.command == p.A_WRTE and len(data) <= 4096
    with pytest.raises(socket.timeout):
        raw.recv(timeout=0.4)  # nothing more until we acknowledge
    raw.send(p.A_OKAY, 1, remote)
    assert len(data) + len(raw.read_stream(remote)) == 20000


def test_unknown_service_is_refused_and_clse_is_echoed(phone, rsa_key, raw):
    raw.connect(rsa_key)
    raw.send(p.A_OPEN, 5, 0, b"framebuffer:\0")
    header, _ = raw.recv()
    assert (header.command, header.arg0, header.arg1) == (p.A_CLSE, 0, 5)
    remote = raw.open("exec:sleep 5", local_id=6)
    raw.send(p.A_CLSE, 6, remote)
    header, _ = raw.recv()
    assert (header.command, header.arg0, header.arg1) == (p.A_CLSE, remote, 6)


def _sync(raw: RawLink, remote: int, request: bytes, path: str) -> None:
    raw.send(p.A_WRTE, 1, remote, request + struct.pack("<I", len(path)) + path.encode())
    assert raw.recv()[0].command == p.A_OKAY


def _sync_reply(raw: RawLink, remote: int) -> bytes:
    header, data = raw.recv()
    assert header.command == p.A_WRTE
    raw.send(p.A_OKAY, 1, remote)
    return data


def test_sync_reply_sizes(phone, rsa_key, raw):
    raw.connect(rsa_key)
    phone.host_path("/data/local/tmp/sizes.txt").write_text("12345")
    remote = raw.open("sync:")
    _sync(raw, remote, b"STA2", "/data/local/tmp/nope")
    reply = _sync_reply(raw, remote)
    assert len(reply) == 72 and reply[:4] == b"STA2" and struct.unpack_from("<I", reply, 4)[0] == 2  # ENOENT
    _sync(raw, remote, b"LST2", "/data/local/tmp/sizes.txt")
    reply = _sync_reply(raw, remote)
    assert len(reply) == 72 and struct.unpack_from("<Q", reply, 40)[0] == 5
    _sync(raw, remote, b"STAT", "/data/local/tmp/sizes.txt")
    reply = _sync_reply(raw, remote)
    assert len(reply) == 16 and struct.unpack("<4I", reply)[2] == 5
    _sync(raw, remote, b"LIST", "/data/local/tmp/nope")
    assert _sync_reply(raw, remote) == b"DONE" + bytes(16)
    _sync(raw, remote, b"RECV", "/data/local/tmp/sizes.txt")
    assert _sync_reply(raw, remote) == b"DATA" + struct.pack("<I", 5) + b"12345" + b"DONE" + bytes(4)
    _sync(raw, remote, b"RECV", "/data/local/tmp/nope")
    reply = _sync_reply(raw, remote)
    assert reply[:4] == b"FAIL" and b"No such file" in reply[8:]
    raw.send(p.A_WRTE, 1, remote, b"QUIT" + bytes(4))
    assert raw.recv()[0].command == p.A_OKAY
    assert raw.recv()[0].command == p.A_CLSE


def test_sandbox_shows_phone_paths_only(phone):
    assert phone.sandbox_mechanism in ("namespace", "proot")
    result = phone.run("echo x > /data/local/tmp/sandbox-probe && ls -d /system/bin/getprop && "
                       f"test ! -e {shlex.quote(__file__)}")
    assert result.returncode == 0, result.stderr
    assert phone.host_path("/data/local/tmp/sandbox-probe").read_text() == "x\n"
    assert not Path("/data/local/tmp/sandbox-probe").exists()  # nothing written to the host's own /data


# --------------------------------------------------------------------------------- stand-in tools
@pytest.fixture(scope="module")
def models(phone, signer, tmp_path_factory) -> dict[str, str]:
    """A conv layer as .tflite and .onnx plus both tools, pushed like a client would (then chmod)."""
    from latbench.export.onnx import layer_variant_onnx
    from latbench.export.tflite import layer_variant_tflite
    from latbench.layers import LayerPoint, LayerSignature
    from latbench.testing.phone_tools import TOOLS, write_tool

    folder = tmp_path_factory.mktemp("tools")
    sig, point = LayerSignature("conv", 3, 1, 1, "relu"), LayerPoint(16, 32, 0.0, 16)
    (folder / "conv.tflite").write_bytes(layer_variant_tflite(sig, point))
    (folder / "conv.onnx").write_bytes(layer_variant_onnx(sig, point))
    dev = _client(phone, signer[0])
    for name in ("conv.tflite", "conv.onnx"):
        dev.push(str(folder / name), f"/data/local/tmp/lb/{name}")
    for tool in TOOLS:
        dev.push(str(write_tool(tool, folder)), f"/data/local/tmp/lb/{tool}")
    dev.shell("chmod 755 /data/local/tmp/lb/benchmark_model /data/local/tmp/lb/onnxruntime_perf_test")
    dev.close()
    return {"tflite": "/data/local/tmp/lb/conv.tflite", "onnx": "/data/local/tmp/lb/conv.onnx"}


def test_benchmark_model_output_parses(adb, models):
    from latbench.devices.android.parsers import REGULAR_RUNS, parse_benchmark_model

    out = adb.shell(f"taskset f0 /data/local/tmp/lb/benchmark_model --graph={models['tflite']} --num_threads=1 "
                    "--warmup_runs=2 --warmup_min_secs=0 --num_runs=7 --min_secs=0 --enable_op_profiling=true 2>&1")
    assert out.startswith("INFO: STARTING!\n") and "INFO: Num threads: [1]\n" in out
    result = parse_benchmark_model(out)
    assert [r.count for r in result.runs] == [2, 7] and result.latency_ms > 0
    prof = result.profiles[REGULAR_RUNS]
    assert "CONV_2D" in {row.node_type for row in prof.rows}
    # the rows (printed to 0.001 ms) add up to the profiled run time
    assert result.ops_ms == pytest.approx(prof.timings.avg_us / 1e3, rel=1e-2, abs=1e-3 * len(prof.rows))
    assert "\t" in next(line for line in out.splitlines() if "[node type]" in line)
    bad = adb.shell("/data/local/tmp/lb/benchmark_model --graph=/data/local/tmp/lb/none.tflite 2>&1; echo rc=$?")
    assert "Could not open" in bad and bad.endswith("rc=1\n")
    assert "Unconsumed cmdline flags: --num_thread=2" in adb.shell(
        f"/data/local/tmp/lb/benchmark_model --graph={models['tflite']} --num_thread=2 2>&1")


def test_perf_test_output_parses(adb, models):
    from latbench.devices.android.parsers import parse_perf_test

    out = adb.shell(f"taskset 0f /data/local/tmp/lb/onnxruntime_perf_test -e cpu -m times -r 9 -x 1 -y 1 -I "
                    f"{models['onnx']}")
    result = parse_perf_test(out)
    assert result.requests == 9 and result.average_ms > 0
    assert {"min", "max", "p50", "p90", "p99"} <= set(result.latencies_ms)
    assert result.latencies_ms["min"] <= result.latencies_ms["p50"] <= result.latencies_ms["max"]
    assert "Setting intra_op_num_threads to 1\n" in out and "Number of inferences per second: " in out


def test_throttled_clock_slows_the_tools(phone, adb, models):
    command = (f"taskset 10 /data/local/tmp/lb/benchmark_model --graph={models['tflite']} --num_threads=1 "
               "--warmup_runs=1 --warmup_min_secs=0 --num_runs=15 --min_secs=0 2>&1")
    from latbench.devices.android.parsers import parse_benchmark_model

    full = parse_benchmark_model(adb.shell(command)).regular.min_us
    phone.set_frequency(fraction=0.25, cluster="big")  # cpu 4 runs at a quarter of its clock
    try:
        throttled = parse_benchmark_model(adb.shell(command)).regular.min_us
    finally:
        phone.set_frequency(fraction=1.0)
    assert throttled > 2 * full  # 4x by construction; margin for this machine's noise


def test_clock_stretch_reads_the_pinned_cpus(tmp_path, monkeypatch):
    from latbench.testing.phone_tools._common import clock_stretch

    (tmp_path / "possible").write_text("0-1\n")
    for cpu, (top, cur) in enumerate([(1000, 1000), (2000, 500)]):
        freq = tmp_path / f"cpu{cpu}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "cpuinfo_max_freq").write_text(f"{top}\n")
        (freq / "scaling_cur_freq").write_text(f"{cur}\n")
    monkeypatch.delenv("LOOPBACK_SIM_CPUS", raising=False)
    assert clock_stretch(str(tmp_path)) == 4.0
    monkeypatch.setenv("LOOPBACK_SIM_CPUS", "0")
    assert clock_stretch(str(tmp_path)) == 1.0
    assert clock_stretch(str(tmp_path / "absent")) == 1.0
