"""Which whole-network correction carries from other models to an unseen one (issue 13)? An offline study on the
per-kernel lookups ``benchmarks/realworld.py`` keeps (``kernels.json``; the committed run's copies are
``benchmarks/results/realworld/kernels-{onnxruntime,litert}.json.gz``). Each feature set is fitted by relative
least squares on the other 14 models' networks and scored on the model left out, as the benchmark scores its
per-category fit (``sums`` reproduces its figures):

    python benchmarks/realworld_corrections.py benchmarks/results/realworld/kernels-onnxruntime.json.gz [KIND ...]

A KIND is ``total`` or ``sums`` (per-category sums of lookups, latbench.predictor.KERNEL_CATEGORIES) followed by
``+``-joined extras: ``n`` kernel count, ``catn`` counts per category, ``in``/``out``/``io`` activation megabytes
read/written, ``catio`` the same per category, ``w`` weight megabytes. E.g. ``sums+n+io``. ``device`` is what
latbench predicts with (:func:`latbench.validation.fit_device_calibration`): the per-category sums with their
scales pulled towards a common one, as strongly as leaving each of the 14 models out in turn shows it pays.
"""
from __future__ import annotations

import gzip
import json
import sys
from types import SimpleNamespace

import numpy as np

from latbench.predictor import KERNEL_CATEGORIES, kernel_category

KINDS = ("device", "total", "total+n", "sums", "sums+n", "sums+io", "sums+in", "sums+n+in", "sums+n+io", "sums+w",
         "sums+n+in+w", "sums+catn", "sums+catio")
WEIGHTED = ("conv", "pointwise", "depthwise", "linear")


def features(network: dict, kind: str) -> np.ndarray:
    """One network's feature row: its kernels are [kind, op, kernel, stride, groups, in, out, input hw, ms]."""
    n = len(KERNEL_CATEGORIES)
    sums, counts, read_mb, written_mb = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    weight_mb = 0.0
    for layer_kind, _, kernel, stride, groups, cin, cout, hw, ms in network["kernels"]:
        c = KERNEL_CATEGORIES.index(kernel_category(SimpleNamespace(kind=layer_kind, groups=groups)))
        sums[c] += ms
        counts[c] += 1
        out_hw = 1 if layer_kind == "linear" else -(-hw // stride)      # "same" padding: enough for a feature
        read_mb[c] += cin * hw * hw * 4e-6
        written_mb[c] += cout * out_hw * out_hw * 4e-6
        if layer_kind in WEIGHTED:
            weight_mb += cin * cout * kernel ** 2 / (cin if layer_kind == "depthwise" else groups) * 4e-6
    base, *extras = kind.split("+")
    columns = {"total": [sums.sum()], "sums": sums, "n": [counts.sum() / 100], "catn": counts / 100,
               "in": [read_mb.sum()], "out": [written_mb.sum()], "io": [read_mb.sum() + written_mb.sum()],
               "catio": read_mb + written_mb, "w": [weight_mb]}
    return np.concatenate([columns[base]] + [columns[e] for e in extras])


def fit(X: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, float]:
    """measured ≈ X·w + offset, least squares on relative errors (columns that are all zero keep weight 0)."""
    present = np.flatnonzero(np.abs(X).max(axis=0) > 0)
    design = np.column_stack([X[:, present], np.ones(len(measured))]) / measured[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    w = np.zeros(X.shape[1])
    w[present] = coef[:-1]
    return w, float(coef[-1])


def device_fit(X: dict, y: dict, others: list[str]) -> tuple[np.ndarray, float]:
    """latbench's own device correction fitted on the models ``others`` (per-category sums: kind ``device``)."""
    from latbench.validation import fit_device_calibration

    table = SimpleNamespace(meta={"calibration": {m: {"kernel_samples": np.column_stack([X[m], y[m]]).tolist()}
                                                  for m in others}})
    fitted = fit_device_calibration(table)
    return np.array([fitted["scales"][c] for c in KERNEL_CATEGORIES]), fitted["offset_ms"]


def leave_one_model_out(data: dict, kind: str, verbose: bool = False) -> tuple[float, float, float, float]:
    """Hit rates (full ±10 %, full ±5 %, variants ±10 %, variants ±5 %); each model's first network is its full one."""
    X = {m: np.array([features(net, "sums" if kind == "device" else kind) for net in nets]) for m, nets in data.items()}
    y = {m: np.array([net["measured_ms"] for net in nets]) for m, nets in data.items()}
    full, variants = [], []
    for m in data:
        others = [o for o in data if o != m]
        if kind == "device":
            w, offset = device_fit(X, y, others)
        else:
            w, offset = fit(np.vstack([X[o] for o in others]), np.concatenate([y[o] for o in others]))
        error = (X[m] @ w + offset) / y[m] - 1
        full.append(error[0])
        variants += list(error[1:])
        if verbose:
            print(f"  {m:40s} full {error[0]:+.3f}  variants within ±10 %: {np.mean(np.abs(error[1:]) <= .1):.2f}")
    full, variants = np.abs(full), np.abs(variants)
    return (float(np.mean(full <= .1)), float(np.mean(full <= .05)), float(np.mean(variants <= .1)),
            float(np.mean(variants <= .05)))


def main(path: str, kinds: list[str]) -> None:
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        data = json.load(f)
    if len(data) < 2:
        raise SystemExit(f"{path} holds {len(data)} model(s): leaving one out needs at least two")
    for kind in kinds:
        hits = leave_one_model_out(data, kind, verbose=len(kinds) == 1)
        print(f"{kind:13s} full ±10 % {hits[0]:.2f}  ±5 % {hits[1]:.2f} | variants ±10 % {hits[2]:.2f}  ±5 % {hits[3]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:] or list(KINDS))
