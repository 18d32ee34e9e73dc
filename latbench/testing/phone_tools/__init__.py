"""Stand-ins for the phone-side benchmark tools, runnable on the loopback phone.

``benchmark_model`` (TFLite's tool, run with ai-edge-litert) and ``onnxruntime_perf_test`` (run
with onnxruntime) accept the real tools' flags, really run the model on this host and print
what the real tools print. Each is one self-contained module here; :func:`tool_script` turns it
into an executable script whose shebang is this interpreter (``sys.executable``), ready to push.
"""
from __future__ import annotations

import sys
from pathlib import Path

TOOLS = ("benchmark_model", "onnxruntime_perf_test")
_HERE = Path(__file__).resolve().parent


_COMMON_IMPORT = "from latbench.testing.phone_tools._common import"


def tool_script(name: str) -> bytes:
    """The executable script of stand-in ``name``: shebang to ``sys.executable``, then the tool's module
    with its import of ``_common`` replaced by that file's text, so the script needs no latbench."""
    if name not in TOOLS:
        raise ValueError(f"unknown phone tool {name!r}; available: {', '.join(TOOLS)}")
    source = (_HERE / f"{name}.py").read_text()
    lines = source.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(_COMMON_IMPORT)]
    if len(hits) != 1:
        raise RuntimeError(f"{name}.py must import _common exactly once on one line")
    lines[hits[0]] = (_HERE / "_common.py").read_text() + "\n"
    return f"#!{sys.executable}\n".encode() + "".join(lines).encode()


def write_tool(name: str, directory: str | Path) -> Path:
    """Write stand-in ``name`` as an executable file ``directory/name`` and return its path."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tool_script(name))
    path.chmod(0o755)
    return path


__all__ = ["TOOLS", "tool_script", "write_tool"]
