"""The ADB link to a phone, with ``adb-shell`` (pure Python: no adb server, no platform tools).

What this layer adds to adb-shell 0.4.4, and why:

* **TCP_NODELAY.** adb-shell sends an ADB packet's header and payload as two writes; with Nagle's
  algorithm and the peer's delayed ACK each request then waits ~40–50 ms and a 300 KB push took 6.7 s
  instead of 0.08 s. :class:`NoDelayTcpTransport` sets ``TCP_NODELAY`` and also finishes partial writes
  (the stock transport ignores how much ``send`` wrote on its non-blocking socket).
* **Exit codes.** adb-shell speaks only the legacy ``shell:`` service (stderr merged into stdout, no
  exit status), so :meth:`AdbConnection.shell` appends ``printf '__rc=%s' $?`` and splits it off.
* **Timeouts.** A command that prints nothing for longer than the transport timeout raises; callers
  pass a timeout sized from the expected run time. The process keeps running on the phone after a
  host-side timeout: the runner script's ``stop`` mode and its lock file deal with that.
* **One error type.** adb-shell's 14 exception classes (plus ``OSError`` and libusb errors) have no
  common base; :func:`adb_errors` maps all of them to :class:`AdbLinkError` (a ``DeviceError``), with
  ``transient=True`` when reconnecting may help, and :class:`UnauthorizedError` when the phone has not
  accepted this computer's key.
* **Keys.** ``~/.android/adbkey`` (the platform tools' key, so a phone that trusts ``adb`` trusts
  latbench too) or ``$LATBENCH_ADB_KEY``; created with 0600 permissions when absent.
"""
from __future__ import annotations

import contextlib
import io
import os
import select
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..base import DeviceError, DeviceUnreachable

DEFAULT_TCP_PORT = 5555
KEY_ENV = "LATBENCH_ADB_KEY"
RC_MARKER = "__rc="
ACCEPT_PROMPT = ("unlock the phone and accept the \"Allow USB debugging?\" prompt for this computer's key "
                 "(tick \"Always allow from this computer\"), then run the command again")


class AdbLinkError(DeviceError):
    """Any failure of the ADB link or of a command on the phone. ``transient``: a reconnect may help;
    ``timeout``: the phone stayed silent too long (the command may still be running there)."""

    def __init__(self, message: str, transient: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.timeout = timeout


class AdbUnreachable(AdbLinkError, DeviceUnreachable):
    """No phone answers at the target (refused, no route, not on USB, or gone after the reconnects)."""


class UnauthorizedError(AdbLinkError):
    """The phone has not (yet) accepted this computer's RSA key."""


class CommandError(AdbLinkError):
    """A shell command ran but failed (non-zero exit status)."""


@dataclass(frozen=True)
class AdbTarget:
    """Where a phone is: ``tcp`` with host and port, or ``usb`` with an optional serial."""

    kind: str
    host: str = ""
    port: int = DEFAULT_TCP_PORT
    serial: str | None = None

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        return f"usb:{self.serial}" if self.serial else "usb"

    @classmethod
    def parse(cls, spec: str) -> "AdbTarget":
        """``tcp:HOST:PORT`` (``tcp:HOST`` means port 5555; IPv6 as ``tcp:[::1]:5555``), ``usb`` or
        ``usb:SERIAL``."""
        kind, _, rest = spec.partition(":")
        if kind == "usb":
            if rest and not all(c.isalnum() or c in "._-:" for c in rest):
                raise DeviceError(f"USB serial {rest!r} has characters no serial number has")
            return cls("usb", serial=rest or None)
        if kind != "tcp" or not rest:
            raise DeviceError(f"phone address {spec!r} must look like tcp:HOST:PORT, usb or usb:SERIAL")
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        try:
            number = int(port) if port else DEFAULT_TCP_PORT
        except ValueError:
            raise DeviceError(f"port {port!r} in {spec!r} is not a number") from None
        if not host or not 0 < number < 65536:
            raise DeviceError(f"phone address {spec!r} needs a host and a port in 1..65535 (tcp:HOST:PORT)")
        return cls("tcp", host=host, port=number)


def adb_key_path() -> Path:
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".android" / "adbkey")


def load_or_create_key(path: Path | None = None):
    """The RSA signer for ``path`` (default :func:`adb_key_path`), creating the key pair if absent.

    The private key is created with 0600 permissions (umask 077 while writing: never world-readable,
    not even for a moment); the public key ``adbkey.pub`` is what the phone shows a fingerprint of.
    """
    from adb_shell.auth.keygen import keygen
    from adb_shell.auth.sign_cryptography import CryptographySigner

    path = Path(path or adb_key_path())
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            keygen(str(path))
        finally:
            os.umask(old)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    elif not Path(str(path) + ".pub").exists():
        raise AdbLinkError(f"{path} has no public half {path}.pub; delete {path} to create a new pair "
                           f"(the phone will ask to accept it) or restore the .pub file")
    try:
        return CryptographySigner(str(path))
    except (ValueError, TypeError, OSError) as err:
        raise AdbLinkError(f"cannot read the ADB key {path}: {err}; delete it to create a new one") from err


def _tcp_transport_class():
    from adb_shell.exceptions import TcpTimeoutException
    from adb_shell.transport.tcp_transport import TcpTransport

    class NoDelayTcpTransport(TcpTransport):
        """adb-shell's TCP transport with TCP_NODELAY (no Nagle delay between a packet's header and
        payload) and complete writes."""

        def connect(self, transport_timeout_s):
            super().connect(transport_timeout_s)
            self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

        def bulk_write(self, data, transport_timeout_s):
            view, sent = memoryview(data), 0
            while sent < len(view):
                _, writeable, _ = select.select([], [self._connection], [], transport_timeout_s)
                if not writeable:
                    raise TcpTimeoutException(f"sending to {self._host}:{self._port} timed out "
                                              f"({transport_timeout_s} s)")
                try:
                    sent += self._connection.send(view[sent:])
                except BlockingIOError:
                    continue
            return sent

    return NoDelayTcpTransport


_TRANSIENT = ("AdbConnectionError", "AdbTimeoutError", "TcpTimeoutException", "InvalidChecksumError",
              "InvalidCommandError", "InvalidResponseError", "UsbReadFailedError", "UsbWriteFailedError")


@contextlib.contextmanager
def adb_errors(target: AdbTarget | str, what: str, authorizing: Callable[[], bool] = lambda: False):
    """Map whatever adb-shell, the socket or libusb raise while doing ``what`` to an AdbLinkError."""
    try:
        yield
    except AdbLinkError:
        raise
    except Exception as err:  # adb-shell's exceptions share no base class; name-based mapping below
        name = type(err).__name__
        detail = str(err) or name
        if name == "DeviceAuthError" or (authorizing() and name in ("AdbTimeoutError", "TcpTimeoutException")):
            raise UnauthorizedError(f"{target} did not accept this computer's ADB key ({adb_key_path()}): "
                                    f"{ACCEPT_PROMPT}") from err
        if isinstance(err, ConnectionRefusedError):
            raise AdbUnreachable(f"nothing accepts ADB connections at {target} ({detail}): check the address, "
                               f"that the phone is on the same network and that wireless debugging is on "
                               f"(or run `adb tcpip 5555` once over USB)", transient=True) from err
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror, OSError)) and not isinstance(
                err, (FileNotFoundError, PermissionError)):
            raise AdbLinkError(f"the link to {target} failed while {what}: {name}: {detail}", transient=True) from err
        if name in _TRANSIENT:
            timeout = name in ("AdbTimeoutError", "TcpTimeoutException")
            raise AdbLinkError(f"the link to {target} failed while {what}: {name}: {detail}", transient=True,
                               timeout=timeout) from err
        if name == "UsbDeviceNotFoundError":
            raise AdbUnreachable(f"no phone found on USB{' with serial ' + str(target)[4:] if ':' in str(target) else ''}: "
                               "plug it in, enable USB debugging (docs/android.md) and, on Linux, allow your "
                               "user to open it (udev rule, see docs/android.md)", transient=True) from err
        if name == "InvalidTransportError":
            raise AdbLinkError("USB needs libusb bindings: pip install 'adb-shell[usb]' (libusb1)") from err
        if name.startswith("USBError") or name.startswith("LIBUSB"):
            raise AdbLinkError(f"libusb cannot open the phone ({detail}); on Linux add a udev rule for your "
                               f"user (docs/android.md) or run as a member of the plugdev group") from err
        if name in ("PushFailedError", "DevicePathInvalidError", "AdbCommandFailureException"):
            raise AdbLinkError(f"{what} failed on {target}: {detail}") from err
        raise


@dataclass(frozen=True)
class ShellResult:
    output: str
    rc: int


class AdbConnection:
    """One phone over ADB; reconnects on demand.

    >>> conn = AdbConnection(AdbTarget.parse("tcp:192.168.1.20:5555"))   # doctest: +SKIP
    >>> conn.shell("getprop ro.product.model").output                     # doctest: +SKIP
    'Pixel 7'
    """

    def __init__(self, target: AdbTarget, key_path: Path | None = None, connect_timeout_s: float = 10.0,
                 auth_timeout_s: float = 30.0) -> None:
        self.target = target
        self.key_path = key_path
        self.connect_timeout_s = connect_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self._device = None
        self._authorizing = False
        self.reconnects = 0

    # ------------------------------------------------------------------------------ connecting
    def _new_device(self):
        from adb_shell.adb_device import AdbDevice, AdbDeviceUsb

        if self.target.kind == "tcp":
            return AdbDevice(_tcp_transport_class()(self.target.host, self.target.port),
                             default_transport_timeout_s=self.connect_timeout_s)
        return AdbDeviceUsb(serial=self.target.serial, default_transport_timeout_s=self.connect_timeout_s)

    def connect(self) -> None:
        keys = [load_or_create_key(self.key_path)]
        self._authorizing = False

        def prompt_shown(_device) -> None:  # adb-shell calls this when the phone must ask the user
            self._authorizing = True

        with adb_errors(self.target, "connecting", lambda: self._authorizing):
            device = self._new_device()
            try:
                device.connect(rsa_keys=keys, transport_timeout_s=self.connect_timeout_s,
                               auth_timeout_s=self.auth_timeout_s, read_timeout_s=self.connect_timeout_s,
                               auth_callback=prompt_shown)
            except BaseException:
                with contextlib.suppress(Exception):
                    device.close()
                raise
        self._device = device

    @property
    def connected(self) -> bool:
        return self._device is not None and self._device.available

    def close(self) -> None:
        if self._device is not None:
            with contextlib.suppress(Exception):
                self._device.close()
            self._device = None

    def reconnect(self, attempts: int = 8, first_wait_s: float = 0.5, max_wait_s: float = 10.0,
                  log: Callable[[str], None] | None = None) -> None:
        """Close and connect again, waiting longer after each failed attempt (a phone whose Wi-Fi or
        cable came back needs a moment). An unauthorized key is not retried."""
        self.close()
        wait = first_wait_s
        for attempt in range(1, attempts + 1):
            try:
                self.connect()
                self.reconnects += 1
                return
            except UnauthorizedError:
                raise
            except AdbLinkError as err:
                if not err.transient or attempt == attempts:
                    raise AdbUnreachable(f"{self.target} is unreachable after {attempt} reconnect attempts: "
                                       f"{err}") from err
                if log:
                    log(f"reconnect {attempt}/{attempts} to {self.target} failed ({err}); retrying in {wait:.1f} s")
                time.sleep(wait)
                wait = min(wait * 2, max_wait_s)

    def _ensure(self):
        if self._device is None:
            self.connect()
        return self._device

    # ------------------------------------------------------------------------------ commands
    def shell(self, command: str, timeout_s: float = 30.0, check: bool = True) -> ShellResult:
        """Run ``command`` (already quoted) in the phone's shell; its exit status from the appended marker.

        ``timeout_s`` bounds the silence between two pieces of output. ``check``: a non-zero status
        raises :class:`CommandError` with the output.
        """
        device = self._ensure()
        wrapped = f"{{ {command}\n}}; printf '\\n{RC_MARKER}%s\\n' $?"
        with adb_errors(self.target, f"running `{command[:60]}`"):
            raw = device.shell(wrapped, transport_timeout_s=timeout_s, read_timeout_s=timeout_s, decode=False)
        return self._split_rc(raw.decode("utf-8", "replace"), command, check)

    def _split_rc(self, text: str, command: str, check: bool) -> ShellResult:
        text = text.replace("\r\n", "\n")
        head, sep, tail = text.rpartition("\n" + RC_MARKER)
        if not sep:
            raise AdbLinkError(f"the phone's shell ended `{command[:60]}` without an exit status "
                               f"(output: {text[-300:]!r})", transient=True)
        try:
            rc = int(tail.strip().split()[0])
        except (ValueError, IndexError):
            raise AdbLinkError(f"unreadable exit status {tail[:40]!r} after `{command[:60]}`", transient=True) from None
        if check and rc != 0:
            raise CommandError(f"`{command[:120]}` failed on {self.target} with status {rc}: {head.strip()[-500:]}")
        return ShellResult(head, rc)

    def stream_lines(self, command: str, timeout_s: float) -> Iterator[str]:
        """Run ``command`` and yield its output line by line as it arrives; ``timeout_s`` bounds the
        silence between lines (a runner prints one line per model)."""
        device = self._ensure()
        buffer = b""
        with adb_errors(self.target, f"running `{command[:60]}`"):
            for chunk in device.streaming_shell(command, transport_timeout_s=timeout_s, read_timeout_s=timeout_s,
                                                decode=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
        if buffer:
            yield buffer.decode("utf-8", "replace").rstrip("\r")

    def push_bytes(self, data: bytes, remote_path: str, mode: int = 0o644, timeout_s: float | None = None) -> None:
        """Write ``data`` to ``remote_path`` on the phone (sync protocol, no shell involved)."""
        device = self._ensure()
        timeout = timeout_s or max(30.0, len(data) / 1e6)   # ≥ 1 MB/s even over slow Wi-Fi
        with adb_errors(self.target, f"pushing {remote_path}"):
            device.push(io.BytesIO(data), remote_path, st_mode=stat.S_IFREG | mode, mtime=int(time.time()),
                        transport_timeout_s=timeout, read_timeout_s=timeout)

    def push_file(self, local_path: Path, remote_path: str, mode: int = 0o644) -> None:
        self.push_bytes(Path(local_path).read_bytes(), remote_path, mode)


def usb_serials() -> list[str]:
    """Serial numbers of the ADB interfaces on USB (libusb); empty when libusb is unavailable."""
    try:
        from adb_shell.transport.usb_transport import UsbTransport
    except ImportError:
        return []
    if UsbTransport is None:
        return []
    out = []
    for transport in UsbTransport.find_all_adb_devices():
        try:
            out.append(transport.serial_number)
        except Exception:  # a device we may not open (permissions): listed without its serial
            out.append("")
    return out
