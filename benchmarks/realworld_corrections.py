"""Which whole-network correction carries from other models to an unseen one (issue 13)? Offline study on the
per-kernel lookups ``benchmarks/realworld.py`` keeps (``kernels.json``; the committed run's copies are
``benchmarks/results/realworld/kernels-{onnxruntime,litert}.json.gz``). Each feature set is fitted by relative
least squares on the other 14 models' networks and scored on the left-out model, as the benchmark scores its
per-category fit ("sums", which reproduces its figures):

    python benchmarks/realworld_corrections.py benchmarks/results/realworld/kernels-onnxruntime.json.gz [KIND]

Features: per-category sums of lookups (``sums``) or their total, plus kernel counts (``n``, ``catn`` per
category), activation megabytes read/written (``in``, ``out``, ``io``, ``catio``) and weight megabytes (``w``).
"""
import gzip
import json
import sys
import numpy as np

CATS = ("conv", "pointwise", "depthwise", "se", "op", "other")

def cat(k):
    kind, op, kern, stride, groups, cin, cout, hw, ms = k
    if kind == "conv":
        return "conv" if groups == 1 else "depthwise"
    return kind if kind in CATS else "other"

def out_hw(k):
    kind, op, kern, stride, groups, cin, cout, hw, ms = k
    return max(1, (hw + stride - 1) // stride) if kind not in ("linear",) else 1

def features(net, kind):
    ks = net["kernels"]
    sums = np.zeros(len(CATS)); counts = np.zeros(len(CATS)); inb = np.zeros(len(CATS)); outb = np.zeros(len(CATS))
    for k in ks:
        c = CATS.index(cat(k)); ms = k[-1]
        sums[c] += ms; counts[c] += 1
        inb[c] += k[5] * k[7] ** 2 * 4e-6; outb[c] += k[6] * out_hw(k) ** 2 * 4e-6   # MB
    wb = sum((k[5] * k[6] * k[2] ** 2 / max(1, (k[5] if k[0] == "depthwise" else k[4]))) * 4e-6 for k in ks
             if k[0] in ("conv", "pointwise", "depthwise", "linear"))
    extra = {"n": [counts.sum() * 0.01], "in": [inb.sum()], "out": [outb.sum()], "io": [inb.sum() + outb.sum()],
             "w": [wb], "catn": counts * 0.01, "catio": inb + outb}
    if kind.startswith("sums+"):
        return np.concatenate([sums] + [extra[e] for e in kind.split("+")[1:]])
    if kind == "sums":
        return sums
    if kind == "sums+counts":
        return np.concatenate([sums, counts * 0.01])
    if kind == "sums+n":
        return np.concatenate([sums, [counts.sum() * 0.01]])
    if kind == "sums+bytes":
        return np.concatenate([sums, [inb.sum() + outb.sum()]])
    if kind == "sums+catbytes":
        return np.concatenate([sums, inb + outb])
    if kind == "sums+n+bytes":
        return np.concatenate([sums, [counts.sum() * 0.01, inb.sum() + outb.sum()]])
    if kind == "total":
        return np.array([sums.sum()])
    if kind == "total+n":
        return np.array([sums.sum(), counts.sum() * 0.01])
    raise KeyError(kind)

def fit(X, y, ridge=0.0):
    present = np.flatnonzero(np.abs(X).max(axis=0) > 0)
    D = np.column_stack([X[:, present], np.ones(len(y))]) / y[:, None]
    t = np.ones_like(y)
    if ridge:
        D = np.vstack([D, ridge * np.eye(D.shape[1])]); t = np.concatenate([t, np.zeros(D.shape[1])])
    coef, *_ = np.linalg.lstsq(D, t, rcond=None)
    w = np.zeros(X.shape[1]); w[present] = coef[:-1]
    return w, coef[-1]

def evaluate(data, kind, ridge=0.0, verbose=False):
    models = list(data)
    F = {m: np.array([features(n, kind) for n in data[m]]) for m in models}
    Y = {m: np.array([n["measured_ms"] for n in data[m]]) for m in models}
    full, var = [], []
    for m in models:
        X = np.vstack([F[o] for o in models if o != m]); y = np.concatenate([Y[o] for o in models if o != m])
        w, b = fit(X, y, ridge)
        p = F[m] @ w + b
        e = p / Y[m] - 1
        full.append(e[0]); var += list(e[1:])
        if verbose:
            print(f"  {m:40s} full {e[0]:+.3f}  variants |e|<10%: {np.mean(np.abs(e[1:])<=.1):.2f}  mean {np.mean(e[1:]):+.3f}")
    full, var = np.abs(full), np.abs(var)
    return (np.mean(full <= .1), np.mean(full <= .05), np.mean(var <= .1), np.mean(var <= .05))

if __name__ == "__main__":
    path = sys.argv[1]
    data = json.load(gzip.open(path, 'rt') if path.endswith('.gz') else open(path))
    kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["total", "total+n", "sums", "sums+n", "sums+io", "sums+in", "sums+n+in", "sums+n+io", "sums+w", "sums+n+in+w", "sums+catn", "sums+catio"]
    for kind in kinds:
        r = evaluate(data, kind)
        print(f"{kind:15s} full ±10 {r[0]:.2f} ±5 {r[1]:.2f} | variants ±10 {r[2]:.2f} ±5 {r[3]:.2f}")
    if len(sys.argv) > 2:
        evaluate(data, sys.argv[2], verbose=True)
