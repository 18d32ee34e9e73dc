"""The asyncio ADB daemon: transport, authentication, streams and the shell/exec services.

One :class:`Connection` per TCP client. Before the host is authorised only CNXN and AUTH are
handled (like adbd); afterwards OPEN/OKAY/WRTE/CLSE drive :class:`Stream` objects, each served by one
task. Flow control is adb's classic one: a stream has at most one WRTE in flight and sends the next
only after the host's OKAY; the host's WRTEs are acknowledged once the service has taken the data.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import struct
import threading
from dataclasses import dataclass, field

from . import protocol as p
from .devicefs import DeviceFiles
from .sandbox import Sandbox, command_env

log = logging.getLogger(__name__)

FAULT_KINDS = ("reset", "close")


@dataclass
class Fault:
    """A one-shot link failure armed on the next stream whose service string contains ``match``.

    ``kind``: ``"reset"`` (SO_LINGER 0 then close: the host sees ECONNRESET) or ``"close"`` (orderly FIN).
    It fires ``after_seconds`` after the stream opened if given, else once ``after_bytes`` bytes
    have passed through the stream in either direction (0: as soon as the command has started or,
    for ``sync:``, the stream has opened). ``fired`` is set when it has happened.
    """

    kind: str
    match: str = ""
    after_bytes: int = 0
    after_seconds: float | None = None
    fired: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.after_bytes < 0 or (self.after_seconds is not None and self.after_seconds < 0):
            raise ValueError("after_bytes and after_seconds must not be negative")

    def applies_to(self, service: str) -> bool:
        if self.match:
            return self.match in service
        return service.startswith(("shell", "exec:"))


@dataclass
class AuthPolicy:
    """Who may connect. ``auto_accept`` stands in for the user pressing "Allow" on the phone: opt-in, since
    a shell on this phone can be a root shell on the host (namespace sandbox as root)."""

    required: bool = True
    auto_accept: bool = False
    authorized: list[p.AndroidPublicKey] = field(default_factory=list)
    offered: list[p.AndroidPublicKey] = field(default_factory=list)  # keys seen in RSAPUBLICKEY, newest last

    def is_authorized(self, key: p.AndroidPublicKey) -> bool:
        return any(key.same_key(k) for k in self.authorized)

    def authorize(self, key: p.AndroidPublicKey) -> None:
        if not self.is_authorized(key):
            self.authorized.append(key)


class StreamClosed(Exception):
    """The stream (or its connection) went away while a service was writing."""


class Stream:
    """One OPENed service: our ``local_id``, the host's ``remote_id`` and the flow-control state."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int, service: str):
        self.conn, self.local_id, self.remote_id, self.service = conn, local_id, remote_id, service
        self.closed = False
        self.bytes_moved = 0
        self.task: asyncio.Task | None = None
        self.fault: Fault | None = None
        self._window = asyncio.Event()
        self._window.set()
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def write(self, data: bytes) -> None:
        """Send ``data`` as WRTE packets of at most maxdata bytes, one in flight at a time."""
        async with self._write_lock:
            view = memoryview(data)
            for start in range(0, len(data), self.conn.maxdata):
                await self._window.wait()
                if self.closed:
                    raise StreamClosed
                self._window.clear()
                chunk = bytes(view[start:start + self.conn.maxdata])
                self.conn.send(p.A_WRTE, self.local_id, self.remote_id, chunk)
                await self.conn.drain()
                self.moved(len(chunk))

    async def read(self) -> bytes | None:
        """The next WRTE payload from the host (acknowledged now), or None once the stream is closed."""
        if self.closed and self._inbox.empty():
            return None
        data = await self._inbox.get()
        if data is not None and not self.closed:
            self.conn.send(p.A_OKAY, self.local_id, self.remote_id)
        if data is not None:
            self.moved(len(data))
        return data

    def moved(self, n: int) -> None:
        self.bytes_moved += n
        if self.fault and self.fault.after_seconds is None and self.bytes_moved >= self.fault.after_bytes:
            self.conn.fire(self.fault)

    def started(self) -> None:
        """The service is running (command spawned / sync ready): arm time- and start-triggered faults."""
        fault = self.fault
        if fault is None:
            return
        if fault.after_seconds is not None:
            asyncio.get_running_loop().call_later(fault.after_seconds, self.conn.fire, fault)
        elif fault.after_bytes <= self.bytes_moved:
            self.conn.fire(fault)

    # host → us
    def on_okay(self) -> None:
        self._window.set()

    def on_write(self, data: bytes) -> None:
        self._inbox.put_nowait(data)

    def on_remote_close(self) -> None:
        if not self.closed:
            self.conn.send(p.A_CLSE, self.local_id, self.remote_id)  # echo, as adbd does
        self.shut()
        if self.task and not self.task.done():
            self.task.cancel()

    def close(self) -> None:
        """Close from our side (service finished)."""
        if not self.closed:
            self.conn.send(p.A_CLSE, self.local_id, self.remote_id)
        self.shut()

    def shut(self) -> None:
        """Mark the stream closed and wake its waiters, sending nothing."""
        self.closed = True
        self.conn.streams.pop(self.local_id, None)
        self._window.set()
        self._inbox.put_nowait(None)


class Connection:
    def __init__(self, daemon: AdbDaemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.daemon, self.reader, self.writer = daemon, reader, writer
        self.version = p.A_VERSION_MIN
        self.maxdata = p.MAX_PAYLOAD_V1
        self.online = False
        self.token = b""
        self.host_banner = b""
        self.streams: dict[int, Stream] = {}
        self._next_id = 1
        self._dropped = False

    # ------------------------------------------------------------------------------ sending
    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if not self._dropped:
            self.writer.write(p.pack(p.Message(command, arg0, arg1, data), self.version))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:
            raise StreamClosed from None

    def drop(self, kind: str) -> None:
        """Break the link: ``reset`` sends RST (SO_LINGER 0), ``close`` an orderly FIN."""
        if self._dropped:
            return
        self._dropped = True
        sock = self.writer.get_extra_info("socket")
        if kind == "reset" and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()

    def fire(self, fault: Fault) -> None:
        if not fault.fired.is_set():
            log.info("fault %s fired", fault.kind)
            self.drop(fault.kind)
            fault.fired.set()

    # ------------------------------------------------------------------------------ receiving
    async def serve(self) -> None:
        try:
            while True:
                header = p.unpack_header(await self.reader.readexactly(p.HEADER.size))
                if not header.valid_magic() or header.length > p.MAX_PAYLOAD:
                    log.warning("bad packet header %s; dropping the connection", header)
                    break
                data = await self.reader.readexactly(header.length) if header.length else b""
                # A CNXN carries the sender's own version: a new host sends it without a checksum.
                version = min(header.arg0, p.A_VERSION) if header.command == p.A_CNXN else self.version
                if version < p.A_VERSION_SKIP_CHECKSUM and header.check != p.checksum(data):
                    log.warning("bad checksum on %s; dropping the connection", p.COMMAND_NAMES.get(header.command))
                    break
                self.dispatch(p.Message(header.command, header.arg0, header.arg1, data))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._dropped = True
            self._abandon_streams()
            self.daemon.pending.discard(self)
            if not self.writer.is_closing():
                self.writer.close()

    def _abandon_streams(self) -> None:
        """End every stream without telling the host (the session is gone or restarting)."""
        for stream in list(self.streams.values()):
            stream.shut()
            if stream.task and not stream.task.done():
                stream.task.cancel()

    def dispatch(self, msg: p.Message) -> None:
        if msg.command == p.A_CNXN:
            self.on_connect(msg)
        elif msg.command == p.A_AUTH:
            self.on_auth(msg)
        elif not self.online:
            return  # adbd ignores everything else until the host is authorised
        elif msg.command == p.A_OPEN:
            self.on_open(msg)
        elif msg.command == p.A_OKAY:
            stream = self.streams.get(msg.arg1)
            if stream and stream.remote_id == msg.arg0:
                stream.on_okay()
        elif msg.command == p.A_WRTE:
            stream = self.streams.get(msg.arg1)
            if stream and stream.remote_id == msg.arg0:
                stream.on_write(msg.data)
        elif msg.command == p.A_CLSE:
            stream = self.streams.get(msg.arg1)
            if stream and (msg.arg0 in (0, stream.remote_id)):
                stream.on_remote_close()

    def on_connect(self, msg: p.Message) -> None:
        self.version = min(msg.arg0, p.A_VERSION)
        self.maxdata = max(min(msg.arg1, p.MAX_PAYLOAD), 256)
        self.host_banner = msg.data
        self._abandon_streams()  # a second CNXN restarts the session, as in adbd
        self.online = False
        if self.daemon.auth.required:
            self.send_token()
        else:
            self.go_online()

    def send_token(self) -> None:
        self.token = secrets.token_bytes(p.TOKEN_SIZE)
        self.send(p.A_AUTH, p.AUTH_TOKEN, 0, self.token)

    def go_online(self) -> None:
        self.online = True
        self.daemon.pending.discard(self)
        self.send(p.A_CNXN, self.version, self.maxdata, self.daemon.banner())

    def on_auth(self, msg: p.Message) -> None:
        if self.online or not self.token:
            return
        auth = self.daemon.auth
        if msg.arg0 == p.AUTH_SIGNATURE:
            if any(key.verify(self.token, msg.data) for key in auth.authorized):
                self.go_online()
            else:
                self.send_token()  # the host tries its next key, then offers its public key
        elif msg.arg0 == p.AUTH_RSAPUBLICKEY:
            try:
                key = p.AndroidPublicKey.parse(msg.data)
            except ValueError as err:
                log.warning("unparseable public key from host: %s", err)
                return
            auth.offered.append(key)
            if auth.auto_accept or auth.is_authorized(key):
                auth.authorize(key)  # "always allow from this computer"
                self.go_online()
            else:
                self.daemon.pending.add(self)  # the phone's dialog stays open; adb shows "unauthorized"

    def on_open(self, msg: p.Message) -> None:
        service = msg.data.rstrip(b"\0").decode("utf-8", "replace")
        handler = self.daemon.service_handler(service)
        if handler is None:
            log.info("refusing unknown service %r", service)
            self.send(p.A_CLSE, 0, msg.arg0)
            return
        local_id = self._next_id
        self._next_id += 1
        stream = Stream(self, local_id, msg.arg0, service)
        stream.fault = self.daemon.take_fault(service)
        self.streams[local_id] = stream
        self.send(p.A_OKAY, local_id, msg.arg0)
        stream.task = asyncio.get_running_loop().create_task(self._run_service(handler, stream))

    async def _run_service(self, handler, stream: Stream) -> None:
        try:
            await handler(stream)
        except (StreamClosed, asyncio.CancelledError):
            pass
        except Exception:  # a service bug must not take the daemon down; the host sees the stream close
            log.exception("service %r failed", stream.service)
        finally:
            stream.close()


# ------------------------------------------------------------------------------------- services
@dataclass(frozen=True)
class ShellRequest:
    command: str | None   # None: interactive shell
    v2: bool              # shell protocol: separate stdout/stderr packets and an exit code


def parse_shell_service(service: str) -> ShellRequest | None:
    """``shell[,arg...]:command`` or ``exec:command``; args: v2, raw, pty, TERM=… (pty runs pty-less)."""
    name, sep, command = service.partition(":")
    if not sep:
        return None
    if name == "exec":
        return ShellRequest(command, v2=False)
    kind, *args = name.split(",")
    if kind != "shell":
        return None
    return ShellRequest(command or None, v2="v2" in args)


class AdbDaemon:
    """Protocol state shared by all connections of one loopback phone."""

    def __init__(self, files: DeviceFiles, sandbox: Sandbox, auth: AuthPolicy):
        self.files, self.sandbox, self.auth = files, sandbox, auth
        self.connections: set[Connection] = set()
        self.pending: set[Connection] = set()
        self.processes: set[asyncio.subprocess.Process] = set()
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()

    def banner(self) -> bytes:
        return p.device_banner(self.files.props())

    # faults
    def arm(self, fault: Fault) -> None:
        with self._faults_lock:
            self._faults.append(fault)

    def take_fault(self, service: str) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.applies_to(service):
                    self._faults.remove(fault)
                    return fault
        return None

    def drop_all(self, kind: str) -> int:
        live = list(self.connections)
        for conn in live:
            conn.drop(kind)
        return len(live)

    def accept_pending(self) -> int:
        accepted = 0
        for conn in list(self.pending):
            if self.auth.offered:
                self.auth.authorize(self.auth.offered[-1])
            conn.go_online()
            accepted += 1
        return accepted

    # connections
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.serve()
        except asyncio.CancelledError:
            pass  # phone stopping; asyncio's server callback would log a cancelled handler as an error
        finally:
            self.connections.discard(conn)

    def service_handler(self, service: str):
        if service == "sync:":
            from .sync import serve_sync
            return lambda stream: serve_sync(stream, self.files)
        request = parse_shell_service(service)
        if request is not None:
            return lambda stream: self.run_command(stream, request)
        return None

    async def run_command(self, stream: Stream, request: ShellRequest) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.sandbox.argv(request.command), env=command_env(), start_new_session=True,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if request.v2 else asyncio.subprocess.STDOUT)
        self.processes.add(proc)
        stdin_task = asyncio.get_running_loop().create_task(self._feed_stdin(stream, proc, request.v2))
        try:
            stream.started()
            if request.v2:
                await asyncio.gather(self._pump(stream, proc.stdout, p.SHELL_STDOUT),
                                     self._pump(stream, proc.stderr, p.SHELL_STDERR))
                code = await proc.wait()
                exit_code = (128 - code if code < 0 else code) & 0xFF  # killed by signal N → 128+N
                await stream.write(p.shell_packet(p.SHELL_EXIT, bytes([exit_code])))
            else:
                await self._pump(stream, proc.stdout, None)
        finally:
            stdin_task.cancel()
            _close_child_pipes(proc)
            if proc.returncode is not None:
                self.processes.discard(proc)

    async def _pump(self, stream: Stream, pipe: asyncio.StreamReader, packet_id: int | None) -> None:
        limit = stream.conn.maxdata - (p.SHELL_PACKET.size if packet_id is not None else 0)
        while data := await pipe.read(limit):
            await stream.write(data if packet_id is None else p.shell_packet(packet_id, data))

    async def _feed_stdin(self, stream: Stream, proc: asyncio.subprocess.Process, v2: bool) -> None:
        buffer = b""
        try:
            while (data := await stream.read()) is not None:
                if not v2:
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                    continue
                buffer += data
                while len(buffer) >= p.SHELL_PACKET.size:
                    packet_id, length = p.SHELL_PACKET.unpack_from(buffer)
                    if len(buffer) < p.SHELL_PACKET.size + length:
                        break
                    payload = buffer[p.SHELL_PACKET.size:p.SHELL_PACKET.size + length]
                    buffer = buffer[p.SHELL_PACKET.size + length:]
                    if packet_id == p.SHELL_STDIN:
                        proc.stdin.write(payload)
                        await proc.stdin.drain()
                    elif packet_id == p.SHELL_CLOSE_STDIN:
                        proc.stdin.close()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            if not proc.stdin.is_closing():
                proc.stdin.close()

    async def kill_processes(self) -> None:
        """SIGKILL the process group of every command still running, and reap them."""
        running = [proc for proc in self.processes if proc.returncode is None]
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if running:
            await asyncio.wait([asyncio.ensure_future(proc.wait()) for proc in running], timeout=5)
        self.processes.clear()


def _close_child_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close our ends of the child's pipes, so a child still writing gets EPIPE as on a phone whose
    adb link went away. asyncio exposes the pipe transports only through the subprocess transport."""
    transport = getattr(proc, "_transport", None)
    for fd in (0, 1, 2):
        pipe = transport.get_pipe_transport(fd) if transport is not None else None
        if pipe is not None and not pipe.is_closing():
            pipe.close()
