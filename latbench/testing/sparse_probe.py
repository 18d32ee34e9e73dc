"""Time one ``.tflite`` model with the default (XNNPACK) LiteRT interpreter on one thread.

``python -m latbench.testing.sparse_probe MODEL.tflite RUNS`` prints one JSON line,
``{"median_ms": ..., "output": [...]}``: the median of ``RUNS`` timed invokes after a warm-up
invoke (which also builds the XNNPACK runtime and expands DENSIFY'd weights), and the flattened
output for a fixed seeded input. It imports only numpy and ai_edge_litert, so that it starts
quickly under an emulator (``qemu-x86_64 -cpu Nehalem``), which is how the tests reach XNNPACK's
sparse (CHW) kernels: XNNPACK disables them on x86 CPUs with AVX.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

SEED = 0


def probe(path: str, runs: int) -> dict:
    it = Interpreter(model_path=path, num_threads=1)  # default resolver: XNNPACK delegate applied
    it.allocate_tensors()
    rng = np.random.default_rng(SEED)
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(np.float32))
    it.invoke()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    out = it.get_tensor(it.get_output_details()[0]["index"])
    return {"median_ms": statistics.median(times), "output": [float(v) for v in out.ravel()]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m latbench.testing.sparse_probe MODEL.tflite RUNS", file=sys.stderr)
        return 2
    runs = int(argv[1])
    if runs < 1:
        print(f"RUNS must be at least 1, got {runs}", file=sys.stderr)
        return 2
    print(json.dumps(probe(argv[0], runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
