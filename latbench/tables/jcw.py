"""Import the JCW authors' published phone table (ResNet-18, ImageNet shapes) as a latbench table.

Format (see ``SOURCES.md`` beside the files): ``runtime.npy`` is float64 (20, 9, 9, 11) — conv layer ×
out-channel grid × in-channel grid × density ``linspace(0, 1, 11)`` — and ``conv_info.log`` lists each
conv as ``in_channels input_hw out_channels kernel stride is_depthwise``. Channel grids are
``[0] + [c//8·i for i in 1..7] + [c]``. The table covers convolutions only: pooling and the classifier
were not measured by the authors, so a predictor built on it sums convolutions only (as theirs does).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..layers import signature_of
from ..models.spec import ModelSpec
from ..models.zoo import resnet18
from .table import _COLUMNS, LatencyTable, TableError


def _grid(c: int) -> list[int]:
    return [0] + [c // 8 * i for i in range(1, 8)] + [c]


def read_conv_info(path: Path) -> list[tuple[int, int, int, int, int, bool]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise TableError(f"{path}:{n}: expected 6 fields 'in hw out kernel stride is_depthwise', got {line!r}")
        cin, hw, cout, k, s = (int(p) for p in parts[:5])
        rows.append((cin, hw, cout, k, s, parts[5] == "True"))
    return rows


def import_jcw_table(directory: str | Path, spec: ModelSpec | None = None) -> tuple[LatencyTable, pd.DataFrame]:
    """Read ``runtime.npy`` + ``conv_info.log`` from ``directory`` into a table for ResNet-18's convs."""
    directory = Path(directory)
    spec = spec or resnet18()
    npy, log = directory / "runtime.npy", directory / "conv_info.log"
    for f in (npy, log):
        if not f.exists():
            raise TableError(f"{f} is missing; expected the JCW files runtime.npy and conv_info.log in {directory}")
    try:
        runtime = np.load(npy, allow_pickle=False)  # plain array: never unpickle a downloaded file
    except ValueError as err:
        raise TableError(f"{npy} is not a plain numeric .npy array: {err}") from err
    info = read_conv_info(log)
    if runtime.ndim != 4 or runtime.shape[0] != len(info) or runtime.shape[1:] != (9, 9, 11):
        raise TableError(f"{npy} has shape {runtime.shape}; expected ({len(info)}, 9, 9, 11)")
    hw = spec.input_hw(224)
    convs = [layer for layer in spec.layers if layer.kind in ("conv", "pointwise", "depthwise")]
    used: set[str] = set()
    records = []
    density = np.linspace(0.0, 1.0, 11)
    for row, (cin, in_hw, cout, k, s, _dw) in enumerate(info):
        match = next((layer for layer in convs if layer.name not in used and layer.kernel == k and layer.stride == s
                      and hw[layer.name] == in_hw and spec.channels(spec.groups, layer) == (cin, cout)), None)
        if match is None:
            raise TableError(f"{log}: row {row + 1} ({cin}→{cout}, k{k} s{s} at {in_hw}) matches no conv of {spec.name}")
        used.add(match.name)
        sig = signature_of(match)
        outs, ins = _grid(cout), _grid(cin)
        # The stem's in-channels are fixed at 3; the authors stored its column at one index of the in-grid.
        in_idx = [int(np.argmax(runtime[row].sum(axis=(0, 2))))] if sig.fixed_in is not None else range(9)
        for i_out in range(9):
            for i_in in in_idx:
                for i_d, d in enumerate(density):
                    records.append((sig.key, in_hw, cin if sig.fixed_in is not None else ins[i_in], outs[i_out], round(1.0 - d, 6),
                                    float(runtime[row, i_out, i_in, i_d]), np.nan, np.nan, np.nan, 0))
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    # Layers of equal shape were measured separately by the authors; one slice holds their mean.
    frame = frame.groupby(["signature", "input_hw", "in_channels", "out_channels", "sparsity"], as_index=False).agg(
        {"latency_ms": "mean", "p10_ms": "first", "p90_ms": "first", "iqr_ms": "first", "runs": "first"})[_COLUMNS]
    meta = {"fingerprint": "jcw-phone-resnet18", "device": "mobile CPU (JCW authors, device not named)",
            "backend": {"runtime": "unknown (JCW authors' phone measurements)"}, "source": "jcw-anonymous/JCW@2e44fa3",
            "scope": "convolutions", "statistic": "as published", "models": [spec.name]}
    return LatencyTable.from_frame(frame, meta), frame
