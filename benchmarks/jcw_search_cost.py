"""Where the wall time of a JCW search goes: latency prediction vs the accuracy evaluator vs the operators.

ResNet-18 at 224 on the shipped host table (and on the JCW phone table when ../shared holds it), two
evaluators:

* ``synthetic``: the closed-form proxy loss (``SyntheticEvaluator``), which costs almost nothing, so the
  per-generation seconds of latency prediction and of the NSGA operators show on their own;
* ``forward``: a strict lower bound of a supernet evaluation: every architecture's weights are sliced
  from one full-width network (what a weight-sharing supernet does) and one mini-batch goes through
  it (8 images at 64×64). A real evaluator runs thousands of validation images plus BN recalibration per
  architecture and retrains the supernet every generation, so latency's real share is smaller still.

Run: ``OMP_NUM_THREADS=1 nice -n 19 python benchmarks/jcw_search_cost.py`` → prints and writes
``benchmarks/results/jcw_search_cost.json``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latbench.models import build, get_model, materialize
from latbench.predictor import Predictor
from latbench.methods.jcw.search import JCWSearch, SearchConfig, SyntheticEvaluator
from latbench.tables.jcw import import_jcw_table
from latbench.tables.table import LatencyTable

ROOT = Path(__file__).resolve().parents[1]
HOST_TABLE = ROOT / "tables" / "host-ort-resnet18-224-adaptive.parquet"
JCW_DIR = ROOT.parent / "shared" / "fixtures" / "jcw_resnet18"
OUT = ROOT / "benchmarks" / "results" / "jcw_search_cost.json"


class SlicedForwardEvaluator:
    """One mini-batch through each architecture, its weights sliced from a shared full network."""

    def __init__(self, spec, batch: int = 8, resolution: int = 64, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.spec = spec
        self.parent = build(spec).eval()
        self.images = torch.randn(batch, 3, resolution, resolution)
        self.labels = torch.randint(0, spec.num_classes, (batch,))

    @torch.no_grad()
    def evaluate(self, archs) -> np.ndarray:
        return np.array([F.cross_entropy(materialize(a, self.spec, parent=self.parent)(self.images), self.labels).item()
                         for a in archs])


def run(label: str, spec, predictor: Predictor, evaluator, config: SearchConfig) -> dict:
    t0 = time.perf_counter()
    result = JCWSearch(spec, predictor, evaluator, config).run()
    wall = time.perf_counter() - t0
    t = result.timing
    generations = config.generations + 1                  # the first population is evaluated too
    row = {"case": label, "population": config.population, "generations": config.generations,
           "wall_s": wall, "latency_s": t.latency_s, "evaluate_s": t.evaluate_s, "operators_s": t.operators_s,
           "latency_share": t.latency_s / wall, "evaluator_share": t.evaluate_s / wall,
           "operators_share": t.operators_s / wall,
           "latency_ms_per_generation": 1e3 * t.latency_s / generations,
           "latency_us_per_architecture": 1e6 * t.latency_s / t.architectures_predicted,
           "evaluator_ms_per_architecture": 1e3 * t.evaluate_s / t.architectures_predicted,
           "operators_ms_per_generation": 1e3 * t.operators_s / generations}
    print(f"{label:28s} wall {wall:7.2f} s | latency {row['latency_share']:6.2%} "
          f"({row['latency_us_per_architecture']:.1f} µs/arch) | evaluator {row['evaluator_share']:6.2%} "
          f"({row['evaluator_ms_per_architecture']:.3f} ms/arch) | operators {row['operators_share']:6.2%}", flush=True)
    return row


def main() -> None:
    torch.set_num_threads(1)
    spec = get_model("resnet18")
    tables = {"host": LatencyTable.load(HOST_TABLE)}
    if (JCW_DIR / "runtime.npy").exists():
        tables["phone"] = import_jcw_table(JCW_DIR)[0]
    else:
        print(f"JCW phone table not found at {JCW_DIR}: host table only", file=sys.stderr)
    rows = []
    for name, table in tables.items():
        predictor = Predictor(spec, table)
        # Channel multiple 8 on both tables (the JCW grid is in eighths), so the predictor's compiled
        # grids are the same size; compile them outside the timed runs, as a long search amortises them.
        config = SearchConfig(population=64, generations=30, seed=0, channel_multiple=8)
        JCWSearch(spec, predictor, SyntheticEvaluator(spec), SearchConfig(population=8, generations=1,
                                                                          channel_multiple=8)).run()
        rows.append(run(f"{name} / synthetic", spec, predictor, SyntheticEvaluator(spec), config))
        forward = SearchConfig(population=16, generations=2, seed=0, channel_multiple=8)
        rows.append(run(f"{name} / forward (8×64²)", spec, predictor, SlicedForwardEvaluator(spec), forward))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": "resnet18", "resolution": 224, "torch_threads": 1, "runs": rows}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
