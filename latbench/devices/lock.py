"""The host-wide measurement lock: one latbench process times on this machine's CPU at a time.

Two profilers timing side by side share the cores, caches and memory bandwidth and falsify each other's
latencies (the reference network corrects slow drift of the machine, not a second benchmark running
in lock step). So host devices take an exclusive ``flock`` on one file per host around every timed
batch; a second process waits for it, saying so once. The lock is released between batches, so two
profiling runs take turns batch by batch and each batch is timed alone.

The file is ``latbench-measure-host.lock`` in the system temp directory (``/tmp``), shared by all
users on purpose: another user's benchmark spoils timings as much as one's own. ``$LATBENCH_LOCK_DIR``
puts it elsewhere (e.g. a folder per container that shares no CPU with others). The kernel drops a
``flock`` when its holder dies, even by ``kill -9``, so a crashed run never leaves the host locked.

Phones time on the phone, so the host's lock does not apply to them; each phone has its own lock
instead (``phone_lock_name``, taken by ``AndroidDevice``; why: docs/measurement.md, "Two processes at once").
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

from .base import DeviceError

LOCK_DIR_ENV = "LATBENCH_LOCK_DIR"
HOST_LOCK = "measure-host"


def lock_path(name: str = HOST_LOCK) -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir()) / f"latbench-{name}.lock"


def _notify(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class MeasurementLock:
    """An exclusive lock on ``lock_path(name)``, re-entrant within a process (a timed batch that first
    measures the reference's nominal latency takes it twice)."""

    def __init__(self, name: str = HOST_LOCK, where: str = "on this host",
                 notify: Callable[[str], None] = _notify) -> None:
        self.name = name
        self.where = where
        self.notify = notify
        self._mutex = threading.RLock()   # threads of one process: flock alone would not order them
        self._fd: int | None = None
        self._depth = 0
        self._told = False

    def _open(self, path: Path) -> tuple[int, bool]:
        """(fd, writable). Opened without O_CREAT first: with fs.protected_regular, O_CREAT on another
        user's file in a sticky /tmp fails even when the file itself is writable."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    return os.open(path, os.O_RDWR | os.O_CLOEXEC), True
                except FileNotFoundError:
                    pass
                except PermissionError:
                    # Another user's lock file we may not write: flock works on a read-only descriptor too.
                    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                except FileExistsError:
                    continue   # created by another process just now: open it as it is
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o666)   # past the umask: other users take the same lock
                return fd, True
            reason = "it keeps appearing and disappearing"
        except OSError as err:
            reason = err.strerror or str(err)
        raise DeviceError(f"cannot open the measurement lock file {path} ({reason}); "
                          f"set ${LOCK_DIR_ENV} to a writable folder")

    @staticmethod
    def _holder(fd: int) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = os.pread(fd, 32, 0).decode().strip()
            if pid.isdigit():
                return f"pid {pid}"
        return "pid unknown"

    def acquire(self) -> None:
        self._mutex.acquire()
        if self._depth:
            self._depth += 1
            return
        try:
            path = lock_path(self.name)
            fd, writable = self._open(path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not self._told:
                        self._told = True
                        self.notify(f"another latbench process is measuring {self.where} ({self._holder(fd)}); waiting "
                                    f"for it to finish its batch (lock file {path})…")
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if writable:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._mutex.release()
            raise
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        if not self._depth:
            raise RuntimeError(f"measurement lock {self.name} released without being held")
        self._depth -= 1
        if not self._depth:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)   # no stale pid for the next waiter to name
            os.close(fd)              # closing drops the flock
        self._mutex.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def _after_fork(self) -> None:
        # A forked child shares the parent's open file description, hence its flock: it must take its own.
        self._mutex = threading.RLock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._depth = None, 0


_locks: dict[str, MeasurementLock] = {}
_locks_mutex = threading.Lock()


def measurement_lock(name: str = HOST_LOCK, where: str = "on this host") -> MeasurementLock:
    """This process's lock ``name`` (one object per name, so that it is re-entrant and tells once);
    ``where`` completes "another latbench process is measuring …" when it has to wait."""
    with _locks_mutex:
        if name not in _locks:
            _locks[name] = MeasurementLock(name, where)
        return _locks[name]


def phone_lock_name(serial: str) -> str:
    return "measure-phone-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in serial)


def _reset_after_fork() -> None:
    global _locks_mutex
    _locks_mutex = threading.Lock()
    for lock in _locks.values():
        lock._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
