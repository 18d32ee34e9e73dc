"""The ``sync:`` service: STAT/STA2/LST2, LIST/LIS2, SEND, RECV and QUIT over one stream.

Requests are an 8-byte ``id, length`` header followed by ``length`` bytes of path; a request may be
split over several WRTE packets or several requests may share one, so the stream is read as bytes.
Reply structs have exactly adbd's sizes (16/72/20/76 bytes): Google's adb checks them.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mod

from . import protocol as p
from .devicefs import DeviceFiles, DevicePathError

STAT, STA2, LST2, LIST, LIS2 = (p.sync_id(n) for n in (b"STAT", b"STA2", b"LST2", b"LIST", b"LIS2"))
SEND, RECV, QUIT, DATA, DONE = (p.sync_id(n) for n in (b"SEND", b"RECV", b"QUIT", b"DATA", b"DONE"))
OKAY, FAIL, DENT, DNT2 = (p.sync_id(n) for n in (b"OKAY", b"FAIL", b"DENT", b"DNT2"))
PATH_MAX = 1024


class _Bytes:
    """Exact-size reads from a stream's WRTE payloads."""

    def __init__(self, stream):
        self.stream, self.buffer = stream, bytearray()

    async def exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            data = await self.stream.read()
            if data is None:
                return None
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def _fail(message: str) -> bytes:
    data = message.encode()
    return p.SYNC_REQUEST.pack(FAIL, len(data)) + data


def _stat_v2(ident: int, st: os.stat_result | None, error: int = 0) -> bytes:
    if st is None:
        return p.SYNC_STAT_V2.pack(ident, error, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return p.SYNC_STAT_V2.pack(ident, 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
                               st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


def _stat(files: DeviceFiles, path: str, follow: bool) -> tuple[os.stat_result | None, int]:
    try:
        host = files.host_path(path)
        return (os.stat(host) if follow else os.lstat(host)), 0
    except DevicePathError:
        return None, errno.ENOENT
    except OSError as err:
        return None, err.errno or errno.EIO


def _listing(files: DeviceFiles, path: str, v2: bool) -> bytes:
    out = bytearray()
    try:
        host = files.host_path(path)
        names = [".", ".."] + sorted(os.listdir(host))
    except (DevicePathError, OSError):
        names, host = [], None
    for name in names:
        try:
            st = os.lstat(host / name)
        except OSError:
            continue
        raw = name.encode("utf-8", "surrogateescape")
        if v2:
            out += _stat_v2(DNT2, st) + len(raw).to_bytes(4, "little") + raw
        else:
            out += p.SYNC_DENT_V1.pack(DENT, st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF,
                                       len(raw)) + raw
    done = p.SYNC_DENT_V2.pack(DONE, *([0] * 12)) if v2 else p.SYNC_DENT_V1.pack(DONE, 0, 0, 0, 0)
    return bytes(out + done)


async def _receive_file(reader: _Bytes, files: DeviceFiles, spec: str) -> bytes | None:
    """Handle SEND: consume DATA…DONE and return the reply (OKAY or FAIL), None if the stream ended."""
    path, comma, mode_text = spec.rpartition(",")
    error = None
    try:
        mode = int(mode_text) if comma else 0o644
    except ValueError:
        error, mode = f"invalid SEND mode {mode_text!r}", 0
    target, handle, link_target = None, None, bytearray()
    if error is None:
        try:
            target = files.writable_path(path or spec)
            target.parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            if not stat_mod.S_ISLNK(mode):
                handle = open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o7777), "wb")
        except DevicePathError as err:
            error = f"couldn't create file: {err}"
        except OSError as err:
            error = f"couldn't create file: {err.strerror}"
    try:
        while True:
            head = await reader.exactly(8)
            if head is None:
                return None
            ident, length = p.SYNC_REQUEST.unpack(head)
            if ident == DONE:
                mtime = length
                break
            if ident != DATA or length > p.SYNC_DATA_MAX:
                return _fail("invalid data message" if ident != DATA else "oversize data message")
            chunk = await reader.exactly(length)
            if chunk is None:
                return None
            if error is None:
                try:
                    if handle is not None:
                        handle.write(chunk)
                    else:
                        link_target += chunk
                except OSError as err:
                    error = f"write failed: {err.strerror}"
    finally:
        if handle is not None:
            handle.close()
    if error is None:
        try:
            if stat_mod.S_ISLNK(mode):
                os.symlink(bytes(link_target).rstrip(b"\0").decode("utf-8", "surrogateescape"), target)
            else:
                os.chmod(target, mode & 0o7777)
                os.utime(target, (mtime, mtime))
        except OSError as err:
            error = f"couldn't finish file: {err.strerror}"
    if error is not None:
        return _fail(error)
    return p.SYNC_REQUEST.pack(OKAY, 0)


async def _send_file(stream, files: DeviceFiles, path: str) -> None:
    """Handle RECV: DATA chunks of at most 64 KiB, batched up to the link's maxdata, then DONE."""
    try:
        handle = open(files.host_path(path), "rb")
    except DevicePathError:
        await stream.write(_fail(f"open failed: {os.strerror(errno.ENOENT)}"))
        return
    except OSError as err:
        await stream.write(_fail(f"open failed: {err.strerror}"))
        return
    with handle:
        batch = bytearray()
        while True:
            try:
                chunk = handle.read(p.SYNC_DATA_MAX)
            except OSError as err:
                await stream.write(bytes(batch) + _fail(f"read failed: {err.strerror}"))
                return
            if not chunk:
                break
            batch += p.SYNC_REQUEST.pack(DATA, len(chunk)) + chunk
            if len(batch) >= stream.conn.maxdata:
                await stream.write(bytes(batch))
                batch.clear()
        await stream.write(bytes(batch) + p.SYNC_REQUEST.pack(DONE, 0))


async def serve_sync(stream, files: DeviceFiles) -> None:
    reader = _Bytes(stream)
    stream.started()
    while True:
        head = await reader.exactly(8)
        if head is None:
            return
        ident, length = p.SYNC_REQUEST.unpack(head)
        if ident == QUIT:
            return
        if ident not in (STAT, STA2, LST2, LIST, LIS2, SEND, RECV):
            await stream.write(_fail(f"unknown command {head[:4]!r}"))
            return
        if length > PATH_MAX:
            await stream.write(_fail("path too long"))
            return
        raw = await reader.exactly(length)
        if raw is None:
            return
        path = raw.decode("utf-8", "surrogateescape")
        if ident == STAT:
            st, _ = _stat(files, path, follow=False)
            values = (st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF) if st else (0, 0, 0)
            await stream.write(p.SYNC_STAT_V1.pack(STAT, *values))
        elif ident in (STA2, LST2):
            st, err = _stat(files, path, follow=ident == STA2)
            await stream.write(_stat_v2(ident, st, err))
        elif ident in (LIST, LIS2):
            await stream.write(_listing(files, path, v2=ident == LIS2))
        elif ident == SEND:
            reply = await _receive_file(reader, files, path)
            if reply is None:
                return
            await stream.write(reply)
        elif ident == RECV:
            await _send_file(stream, files, path)
