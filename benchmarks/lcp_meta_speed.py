"""LcP's meta-learning within 7 minutes (issue 15): a cheaper fitness with the same ranking, checked.

1. **Rank correlation.** ``probes`` random compensations β at the budget are pruned naïvely; each distinct
   network's fitness (loss increase after BN re-estimation) is computed with the reference setting (the
   acceptance recipes' 512 fitness images and 256 BN images, "today's fitness" of issue 15) and with each
   cheaper setting. Reported per setting: seconds per network and Kendall τ / Spearman ρ against the reference.
2. **The whole meta-learning, same seed.** The LcP job of ``recipe`` (400 candidates) run once with the
   recipe's fitness setting and once with the cheap one (``cheap_fitness``/``cheap_bn``), everything else
   equal: the evolution's seconds, the chosen β's network, and the test accuracy after the same fine-tuning.

    python benchmarks/lcp_meta_speed.py --config search/lcp-meta-speed-resnet56.toml   # ≈30 min, idle machine

Writes ``benchmarks/results/lcp_meta_speed.json``. Run it alone: it times things.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge

from latbench.cli.options import script_main
from latbench.files import atomic_write_json
from latbench.recipe import Opt, build_job, read_recipe, resolved

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class MetaSpeed:
    """The experiment's settings (a recipe: search/lcp-meta-speed-resnet56.toml)."""

    recipe: Annotated[str, Opt(help="the LcP recipe whose meta-learning is timed", input=True)] = \
        "search/lcp-resnet56-50.toml"
    table: Annotated[str | None, Opt(help="a table measured on this machine (default: the recipe's)")] = None
    probes: Annotated[int, Ge(8), Opt(help="random β probed for the rank correlation")] = 48
    settings: Annotated[tuple[str, ...], Opt(help="fitness settings FITNESS/BN to compare (the first is the "
                                                  "reference)")] = ("512/256", "256/128", "128/64")
    cheap_fitness: Annotated[int, Ge(1)] = 256
    cheap_bn: Annotated[int, Ge(1)] = 128
    threads: Annotated[int, Ge(1), Opt(runtime=True)] = 2
    out: str = "runs/lcp-meta-speed"
    results: str = "benchmarks/results/lcp_meta_speed.json"


EXPERIMENT = MetaSpeed     # what a recipe of this script describes (tests validate search/*.toml against it)


def rank_check(exp: MetaSpeed, job) -> dict:
    """Fitness of the same random β under each setting: seconds per network, τ and ρ against the first."""
    import torch
    from scipy.stats import kendalltau, spearmanr

    from latbench.data import load_dataset
    from latbench.methods.common import load_parent
    from latbench.methods.lcp.job import PrunedLoss
    from latbench.methods.lcp.search import FilterRanking, naive_prune
    from latbench.models import Architecture
    from latbench.predictor import Predictor
    from latbench.search.budget import Budget, CostGrid
    from latbench.tables.table import LatencyTable
    from latbench.train.importance import layer_filter_scores

    torch.set_num_threads(exp.threads)
    parent = load_parent(job.checkpoint, job.model)
    spec, data = parent.spec, load_dataset(job.data, job.data_dir)
    table = LatencyTable.load(exp.table or job.table)
    predictor = Predictor(spec, table)
    unit = job.unit or int(table.meta.get("channel_multiple", 1))
    full = float(predictor.predict(Architecture.full(spec, data.resolution))[0])
    budget = Budget("latency", (job.budget_ratio or 0.5) * full)
    grid = CostGrid.for_budget(spec, budget, data.resolution, predictor, step=unit)
    ranking = FilterRanking.from_metrics(spec, layer_filter_scores(parent, job.metric, data=data.train), unit=unit,
                                         floor=job.floor)
    rng = np.random.default_rng(job.seed)
    plans, seen = [], set()
    while len(plans) < exp.probes:                       # distinct networks from the evolution's initial draws
        beta = rng.normal(0.0, ranking.sigma)
        plan = naive_prune(ranking, grid, budget, beta)
        key = tuple(sorted(plan.widths.items()))
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    rows = {}
    for setting in exp.settings:
        images, bn = (int(v) for v in setting.split("/"))
        fitness = PrunedLoss(parent, spec, ranking.order, data.train, images, bn, data.resolution, job.seed)
        t0 = time.perf_counter()
        values = [fitness(p) for p in plans]
        rows[setting] = {"seconds_per_network": (time.perf_counter() - t0) / len(plans), "fitness": values}
    reference = rows[exp.settings[0]]["fitness"]
    for setting, row in rows.items():
        row["kendall_tau"] = float(kendalltau(reference, row["fitness"])[0])
        row["spearman"] = float(spearmanr(reference, row["fitness"])[0])
    return {"budget_ms": budget.value, "networks": len(plans), "settings": rows}


def meta_learning(exp: MetaSpeed, job) -> dict:
    """The LcP job with the recipe's fitness and with the cheap one, same seed: time, network, accuracy."""
    from latbench.methods.lcp.job import run_lcp

    runs = {}
    for name, images, bn in (("recipe", job.fitness_images, job.bn_images),
                             ("cheap", exp.cheap_fitness, exp.cheap_bn)):
        variant = replace(job, fitness_images=images, bn_images=bn, threads=exp.threads, device=None, progress=False,
                          table=exp.table or job.table, out=str(ROOT / exp.out / name))
        report = run_lcp(variant)
        runs[name] = {"fitness_images": images, "bn_images": bn, "meta_seconds": report["search"]["seconds"],
                      "evaluations": report["search"]["evaluations"], "widths": report["architecture"]["widths"],
                      "predicted_ms": report["predicted_ms"], "test_accuracy": report["test_accuracy"]}
    return runs


def main(exp: MetaSpeed) -> None:
    from latbench.methods.lcp.job import LcPJob

    data = {k: v for k, v in read_recipe(ROOT / exp.recipe).items() if k != "method" or v in ("lcp",)}
    job = build_job(LcPJob, data, exp.recipe)
    result = {"settings": resolved(exp), "rank_check": rank_check(exp, job), "meta_learning": meta_learning(exp, job)}
    atomic_write_json(ROOT / exp.results, result, indent=1)
    print(json.dumps({"rank": {k: {m: v[m] for m in ("seconds_per_network", "kendall_tau", "spearman")}
                               for k, v in result["rank_check"]["settings"].items()},
                      "meta": {k: {m: v[m] for m in ("meta_seconds", "test_accuracy")}
                               for k, v in result["meta_learning"].items()}}, indent=1))


if __name__ == "__main__":
    script_main(MetaSpeed, main, doc=__doc__)
