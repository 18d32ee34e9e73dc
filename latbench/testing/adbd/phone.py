"""``LoopbackPhone``: the daemon, its files and its sandbox behind one synchronous, thread-safe API."""
from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from . import protocol as p
from .devicefs import DeviceFiles, PhoneProfile
from .sandbox import Sandbox, command_env
from .server import AdbDaemon, AuthPolicy, Fault

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ADB_SERVER_PROBE_PORTS = range(5555, 5586)  # the adb server scans these for emulators: never listen there


def _as_key(key: str | Path | p.AndroidPublicKey) -> p.AndroidPublicKey:
    """A key object from itself, ``adbkey.pub`` text, or the path of an ``adbkey.pub`` file."""
    if isinstance(key, p.AndroidPublicKey):
        return key
    if isinstance(key, str):
        try:
            return p.AndroidPublicKey.parse(key)
        except ValueError:
            key = Path(key)
    if not key.is_file():
        raise ValueError(f"{str(key)!r} is neither an adb public key nor an existing adbkey.pub file")
    return p.AndroidPublicKey.parse(key.read_text())


class LoopbackPhone:
    """An ADB-reachable stand-in phone on ``127.0.0.1:<port>``; see the package docstring for a tour.

    ``profile``: what it claims to be (model, CPU clusters, thermal zones). Only ``authorized_keys``
    (``adbkey.pub`` paths or texts) get in; other hosts stay ``unauthorized`` until :meth:`accept_pending`.
    ``auto_accept=True`` accepts any host key offered with AUTH RSAPUBLICKEY (the user pressing "Allow")
    and ``require_auth=False`` skips AUTH entirely (``ro.adb.secure=0``): both let every local process in,
    and commands run as the user who started the phone (root, in the namespace sandbox).
    ``port=0`` picks a free port outside the adb server's probe range 5555–5585.
    ``sandbox``: ``auto``, ``namespace`` or ``userns`` (see :mod:`.sandbox`).
    """

    def __init__(self, profile: PhoneProfile | None = None, *, auto_accept: bool = False, require_auth: bool = True,
                 authorized_keys: Iterable[str | Path | p.AndroidPublicKey] = (), port: int = 0,
                 sandbox: str = "auto", work_dir: str | Path | None = None):
        if port in ADB_SERVER_PROBE_PORTS:
            raise ValueError(f"port {port} is in 5555-5585, which the adb server probes for emulators; pick another")
        self.profile = profile or PhoneProfile()
        self.auth = AuthPolicy(required=require_auth, auto_accept=auto_accept,
                               authorized=[_as_key(k) for k in authorized_keys])
        self._requested_port = port
        self._sandbox_choice = sandbox
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else None
        self.port = 0
        self.files: DeviceFiles | None = None
        self.sandbox: Sandbox | None = None
        self._daemon: AdbDaemon | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # --------------------------------------------------------------------------- lifecycle
    def start(self) -> LoopbackPhone:
        if self._loop is not None:
            raise RuntimeError("this LoopbackPhone is already running")
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="latbench-phone-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.files = DeviceFiles(self.work_dir / "device", self.profile)
            self.files.create()
            self.sandbox = Sandbox(self.files.root, self.work_dir, self._sandbox_choice)
            self.sandbox.start()
            self._daemon = AdbDaemon(self.files, self.sandbox, self.auth)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name=f"adbd-{id(self):x}", daemon=True)
            self._thread.start()
            self.port = self._call(self._listen(), timeout=10)
        except BaseException:
            self.stop()
            raise
        log.info("loopback phone %s listening (sandbox: %s)", self.serial, self.sandbox.chosen)
        return self

    async def _listen(self) -> int:
        for _ in range(20):
            server = await asyncio.start_server(self._daemon.handle, HOST, self._requested_port,
                                                reuse_address=True)
            port = server.sockets[0].getsockname()[1]
            if port not in ADB_SERVER_PROBE_PORTS:
                self._server = server
                return port
            server.close()
        raise RuntimeError("could not get a port outside 5555-5585")

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._daemon is not None:
            self._daemon.drop_all("close")
            await self._daemon.kill_processes()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close every connection, end every process the phone started and delete its files."""
        if self._loop is not None:
            try:
                self._call(self._shutdown(), timeout=10)
            except Exception:  # stopping must always finish
                log.exception("loopback phone shutdown")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None
        if self.sandbox is not None:
            self.sandbox.stop()
        if self._own_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def __enter__(self) -> LoopbackPhone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---------------------------------------------------------------------------- identity
    @property
    def host(self) -> str:
        return HOST

    @property
    def serial(self) -> str:
        """What ``adb connect`` / ``adb -s`` takes: ``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"

    @property
    def sandbox_mechanism(self) -> str:
        return self.sandbox.chosen if self.sandbox else ""

    def host_path(self, device_path: str) -> Path:
        """The host file behind a device path, e.g. ``/data/local/tmp/x`` (for test assertions)."""
        return self._files().host_path(device_path)

    def _files(self) -> DeviceFiles:
        if self.files is None:
            raise RuntimeError("start the LoopbackPhone first")
        return self.files

    # ------------------------------------------------------------------------- phone state
    def set_temperature(self, celsius: float, zones: str | Iterable[str] | None = None) -> None:
        """Thermal zones (all if None; names from ``profile.thermal_zones``) and, for all, the battery."""
        self._files().set_temperature(celsius, zones if zones is None or isinstance(zones, str) else list(zones))
        if zones is None:
            self._files().set_battery(temperature_c=celsius)

    def temperature(self, zone: str) -> float:
        return self._files().temperature(zone)

    def set_battery(self, temperature_c: float | None = None, level: int | None = None) -> None:
        self._files().set_battery(temperature_c=temperature_c, level=level)

    def set_frequency(self, khz: int | None = None, cluster: str | None = None, *, fraction: float | None = None,
                      cap: bool = True) -> None:
        """Throttle (or restore) a cluster: ``set_frequency(fraction=0.5, cluster="big")``; see DeviceFiles."""
        self._files().set_frequency(khz, cluster, fraction=fraction, cap=cap)

    def set_prop(self, key: str, value: str) -> None:
        props = self._files().props()
        props[key] = value
        self._files().write_props(props)

    def install_tool(self, name: str, device_path: str | None = None) -> str:
        """Put a stand-in tool (see :mod:`latbench.testing.phone_tools`) on the phone without adb.

        Returns its device path (default ``/data/local/tmp/<name>``). Tests of an adb client push
        :func:`~latbench.testing.phone_tools.write_tool`'s file themselves instead.
        """
        from ..phone_tools import tool_script

        device_path = device_path or f"/data/local/tmp/{name}"
        target = self.host_path(device_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tool_script(name))
        target.chmod(0o755)
        return device_path

    # ------------------------------------------------------------------------------- faults
    def inject_fault(self, kind: str = "reset", match: str = "", *, after_bytes: int = 0,
                     after_seconds: float | None = None) -> Fault:
        """Arm a one-shot link failure on the next stream whose service contains ``match``.

        ``match=""`` means the next shell/exec command. Returns the :class:`Fault`; ``fault.fired``
        (a ``threading.Event``) is set once the link has been broken.
        """
        fault = Fault(kind, match, after_bytes, after_seconds)
        self._require_daemon().arm(fault)
        return fault

    def drop_connections(self, kind: str = "reset") -> int:
        """Break every current connection now (``reset`` or ``close``); returns how many there were."""
        if kind not in ("reset", "close"):
            raise ValueError(f"kind must be 'reset' or 'close', got {kind!r}")
        daemon = self._require_daemon()
        return self._call(_in_loop(daemon.drop_all, kind), timeout=10)

    # --------------------------------------------------------------------------------- auth
    def accept_pending(self) -> int:
        """Press "Allow" for hosts waiting as ``unauthorized``; their last offered key becomes authorised."""
        daemon = self._require_daemon()
        return self._call(_in_loop(daemon.accept_pending), timeout=10)

    def authorize_key(self, key: str | Path | p.AndroidPublicKey) -> None:
        self.auth.authorize(_as_key(key))

    @property
    def offered_keys(self) -> list[p.AndroidPublicKey]:
        return list(self.auth.offered)

    def _require_daemon(self) -> AdbDaemon:
        if self._daemon is None or self._loop is None:
            raise RuntimeError("start the LoopbackPhone first")
        return self._daemon

    # ------------------------------------------------------------------------------ helpers
    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command on the phone directly (no adb), e.g. to prepare or inspect a test."""
        if self.sandbox is None:
            raise RuntimeError("start the LoopbackPhone first")
        return subprocess.run(self.sandbox.argv(command), env=command_env(), capture_output=True, text=True,
                              timeout=timeout)


async def _in_loop(fn, *args):
    return fn(*args)
