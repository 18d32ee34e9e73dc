"""Files latbench writes and later reads back itself: reports, architectures, search state, exports, tables,
checkpoints.

Every such file is written atomically (a temporary file in the same folder, flushed to disk, then renamed over
the real name), so a run stopped mid-write (Ctrl-C, kill, power loss) leaves either the old file or the new
one, never half of one. Reading one back goes through :func:`read_json` / :func:`parse_json`, which name a
damaged file and say how to recover instead of failing with a bare "Expecting value: line 1 column 1".

>>> atomic_write_json(path, {"a": 1})                                   # doctest: +SKIP
>>> read_json(path, recover="delete it to recompute that step")         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


class DamagedFileError(ValueError):
    """A file latbench wrote earlier that no longer parses (cut short by an older version, or edited)."""


def _reserve(path: Path) -> Path:
    """Create an empty, uniquely named temporary file beside ``path``. Same folder: a rename is atomic only
    within one file system; unique: two processes writing the same file never share a temporary file."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 minus the umask: the same permissions a plain write would give the file.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that needs a file name (Parquet, safetensors); when the ``with`` block
    ends normally it replaces ``path``. On any exception, Ctrl-C included, it is removed and ``path`` keeps its
    old content. ``durable=False`` skips the fsyncs, for files that need only atomicity (e.g. rewritten on
    every start)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(path)
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDONLY)     # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        with contextlib.suppress(OSError):   # some file systems cannot fsync a directory; the rename is done
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> Path:
    """Replace ``path`` with ``obj`` as JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def write_text_if_changed(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically unless ``path`` already holds exactly it: a rerun that recomputes nothing
    leaves the file (and its modification time) untouched."""
    path = Path(path)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def write_json_if_changed(path: str | Path, obj: Any, *, indent: int | None = None) -> Path:
    """:func:`write_text_if_changed` of ``obj`` as JSON."""
    return write_text_if_changed(path, json.dumps(obj, indent=indent))


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex (what a phase marker records of the file it saw)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_save_figure(path: str | Path, fig, **savefig_kwargs) -> Path:
    """Save the matplotlib figure ``fig`` to ``path`` atomically, in the format ``path``'s suffix names
    (PNG without one): the temporary file's own suffix must not choose it."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


def parse_json(text: str, source: str | Path, recover: str) -> Any:
    """``text`` parsed as JSON; if it does not parse, a :class:`DamagedFileError` naming ``source`` (the file,
    or file and line) and saying what to do (``recover``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedFileError(f"{source} is damaged: not valid JSON ({err}), e.g. cut short by an interrupted "
                               f"run; {recover}") from err


def _read_text(path: Path, recover: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path} is damaged: not UTF-8 text ({err}); {recover}") from err


def read_json(path: str | Path, recover: str) -> Any:
    """The JSON file ``path``, which latbench wrote; a damaged one raises :class:`DamagedFileError` naming it
    and ``recover``, e.g. "delete it to recompute that step"."""
    path = Path(path)
    return parse_json(_read_text(path, recover), path, recover)


def read_jsonl(path: str | Path, recover: str) -> list:
    """The rows of the JSON-lines file ``path`` (blank lines skipped); a damaged line raises
    :class:`DamagedFileError` naming the file, the line and ``recover``."""
    path = Path(path)
    lines = _read_text(path, recover).splitlines()
    return [parse_json(line, f"{path}, line {n}", recover) for n, line in enumerate(lines, start=1) if line.strip()]


__all__ = ["DamagedFileError", "atomic_output", "atomic_save_figure", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "parse_json", "read_json", "read_jsonl", "sha256_file", "write_json_if_changed"]
