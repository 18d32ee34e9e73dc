"""LcP end to end (``latbench prune lcp``): a trained checkpoint + a device table + a budget → a pruned,
fine-tuned, exported network, measured on the device when one is given.

The methods here (``lcp``, learned layer compensations, :mod:`.search`; its baselines ``naive`` and
``uniform``) only choose the architecture; everything around them — loading, budgets, fine-tuning with one
fixed recipe, export, the device measurement and the report — is the jobs' shared plumbing
(:mod:`latbench.methods.common`), so the methods are compared on equal terms.

>>> job = LcPJob(model="resnet56", checkpoint="runs/r56.safetensors", table="tables/t.parquet",
...              budget_ratio=0.5, method="lcp", out="runs/lcp-50")                      # doctest: +SKIP
>>> report = run_lcp(job)                                                                # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt

from ...files import atomic_write_json, read_json
from ...models.arch import Architecture
from ...models.spec import ModelSpec
from ...models.torch_net import GraphNet, materialize
from ...predictor import Predictor
from ...recipe import Choice, Opt, begin_folder_run
from ...search.budget import Budget, CostGrid
from ...tables.table import LatencyTable
from ..common import (FinetuneRecipe, SingleBudgetJob, anchor_of, budget_kind_is_latency, checkpoint_for, console,
                      export_once, exported, first, full_latency, land_on_device, load_parent, network_report,
                      sample_batches, set_threads, ship_and_check, with_batchnorm)
from ..landing import LandingConfig, Proposal, upper_bound_ms

#: What an LcP job ships of the network it lands on (copied from its candidate folder).
SHIPPED_FILES = ("pruned.safetensors", "pruned.onnx", "pruned.tflite", "export.json", "training.json")


class LcPMethod(Choice):
    """What chooses the widths: LcP's learned compensations, or one of its baselines (everything else shared)."""

    lcp = "lcp"            # global filter ranking with layer compensations learned by evolution
    naive = "naive"        # the global ranking alone
    uniform = "uniform"    # one width ratio for every group


class FilterMetric(Choice):
    """How filters are ranked (:func:`latbench.train.importance.layer_filter_scores`)."""

    l1 = "l1"
    l2 = "l2"
    taylor = "taylor"


METHODS = LcPMethod.values()


@dataclass(frozen=True, kw_only=True)
class LcPJob(SingleBudgetJob):
    """One LcP (or baseline) run: the options of every job with one budget (:class:`SingleBudgetJob`), and
    ``method`` (``lcp``, ``naive`` or ``uniform``), the filter ``metric``, the per-group ``floor``, the pruning
    ``unit``, the evolution's ``pool`` and ``candidates``, the fitness and BN images, the fine-tuning recipe.
    ``threads`` default to all cores (1 when runs share the machine)."""

    method: Annotated[LcPMethod, Opt(help="lcp (learned compensation), naive (global ranking) or uniform (one width "
                                          "ratio): the baselines share everything else")] = LcPMethod.lcp
    metric: Annotated[FilterMetric, Opt(help="filter metric")] = FilterMetric.l2
    floor: Annotated[float, Ge(0), Lt(1), Opt(help="keep at least this fraction of every layer")] = 0.1
    unit: Annotated[int | None, Ge(1), Opt(help="channels removed at a time (default: the table's channel "
                                                "multiple)")] = None
    pool: Annotated[int, Ge(2), Opt(help="evolution pool size")] = 64
    candidates: Annotated[int, Ge(1), Opt(help="candidates evaluated in all (pool + mutants)")] = 400
    fitness_images: Annotated[int, Ge(1), Opt(help="training images the fitness loss is measured on (the "
                                                   "paper's 3k)")] = 3000
    bn_images: Annotated[int, Ge(1), Opt(help="images to re-estimate BN statistics of each candidate")] = 1024
    finetune: Annotated[FinetuneRecipe, Opt(flag="finetune")] = field(default_factory=FinetuneRecipe)
    landing: Annotated[LandingConfig, Opt(flag="")] = field(default_factory=LandingConfig)
    seed: Annotated[int, Opt(help="seed of every random choice of the job")] = 0

    def __post_init__(self) -> None:
        super().__post_init__()


class PrunedLoss:
    """Fitness of LcP: the loss increase of a naïvely pruned network on a fixed sample of training images,
    after re-estimating its BN statistics on another sample (slicing channels invalidates them)."""

    def __init__(self, parent: GraphNet, spec: ModelSpec, order: dict, data, images: int, bn_images: int,
                 resolution: int, seed: int = 0) -> None:
        self.parent, self.spec, self.order, self.resolution = parent, spec, order, resolution
        self.batches = sample_batches(data, images, seed=seed)
        self.bn_batches = sample_batches(data, bn_images, seed=seed + 1) if bn_images else []
        self.base = self.loss(parent)

    @torch.no_grad()
    def loss(self, net: GraphNet) -> float:
        net.eval()
        total = sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in self.batches)
        return total / sum(int(y.numel()) for _, y in self.batches)

    def network(self, arch: Architecture) -> GraphNet:
        from ...train.importance import recalibrate_bn

        net = materialize(arch, self.spec, self.parent, self.order)
        if self.bn_batches:
            recalibrate_bn(net, self.bn_batches, batches=None)
        return net

    def __call__(self, plan) -> float:
        return self.loss(self.network(plan.architecture(self.resolution))) - self.base


def run_lcp(job: LcPJob) -> dict:
    """Run ``job`` end to end; writes everything to ``job.out`` and returns the report (also report.json)."""
    from ...data import load_dataset
    from ...train import evaluate
    from ...train.importance import layer_filter_scores, recalibrate_bn
    from .search import (EvolutionConfig, FilterRanking, fill_back, grid_step, learn_compensation, naive_prune,
                         reachable_minimum, uniform_prune)

    set_threads(job.threads)
    out = Path(job.out)
    recipe = begin_folder_run(job, str(job.method), out, log=console.print)
    parent = load_parent(job.checkpoint, job.model)
    spec = parent.spec
    data = load_dataset(job.data, job.data_dir)
    parent = with_batchnorm(parent, sample_batches(data.train, job.bn_images, seed=job.seed + 1))
    resolution = data.resolution
    table = LatencyTable.load(job.table) if job.table else None
    predictor = Predictor(spec, table) if table is not None else None
    unit = job.unit or (int(table.meta.get("channel_multiple", 1)) if table is not None else 1)

    full = full_latency(spec, resolution, table, predictor, job.device, job.store, job.progress,
                        measure=job.budget_ratio is not None or (job.landing.land and budget_kind_is_latency(job)))
    budget = job.budget.resolve(full)
    grid = CostGrid.for_budget(spec, budget, resolution, predictor, step=grid_step(unit, spec.groups.values()))

    t0 = time.perf_counter()
    metrics = layer_filter_scores(parent, job.metric, data=data.train)
    ranking = FilterRanking.from_metrics(spec, metrics, unit=unit, floor=job.floor)
    search: dict = {}
    beta = None
    if job.method == "uniform":
        plan = uniform_prune(ranking, grid, budget)
    elif job.method == "naive":
        plan = naive_prune(ranking, grid, budget)
    else:
        fitness = PrunedLoss(parent, spec, ranking.order, data.train, job.fitness_images, job.bn_images, resolution,
                             job.seed)
        config = EvolutionConfig(pool=job.pool, candidates=job.candidates, sample=min(16, job.pool), seed=job.seed)
        result = learn_compensation(ranking, grid, budget, fitness, config, state=out / "lcp-state.json",
                                    progress=job.progress)
        beta = result.best.beta
        plan = naive_prune(ranking, grid, budget, beta)
        search = {k: v for k, v in result.to_dict().items() if k != "history"}
        atomic_write_json(out / "lcp-history.json", result.to_dict())
    search_seconds = time.perf_counter() - t0
    arch = plan.architecture(resolution)

    # The closed loop: the device decides where the network lands; the method's own criterion (its ranking and
    # compensations, or its uniform ratio) proposes each network for a corrected predicted target.
    landing = None
    if job.device and table is not None and budget.kind == "latency" and job.landing.land:
        floor_cost = reachable_minimum(ranking, grid)

        def propose(target: float) -> Proposal:
            at = Budget("latency", max(target, floor_cost))
            if job.method == "uniform":
                p = uniform_prune(ranking, grid, at)
            else:                     # the ranking's next units, and then any better-ranked one that still fits
                p = fill_back(ranking, grid, at, naive_prune(ranking, grid, at, beta), beta)
            return Proposal(p.architecture(resolution), p.cost, target)

        landing = land_on_device(spec, budget.value, propose, Proposal(arch, plan.cost, budget.value), table,
                                 job.device, job.store, job.landing, anchor_of(full, spec, resolution))
        arch = landing.arch
        console.print(f"landed: {landing.status} after {len(landing.steps)} measured step(s), widths {arch.widths}")
    predicted = float(predictor.predict(arch)[0]) if predictor is not None else None
    console.print(f"[bold]{job.method}[/]: {budget.kind} {budget.describe(plan.cost)} for a budget of "
                  f"{budget.describe()}; widths {arch.widths}")

    test = first(data.test, job.test_images)

    def ship(arch: Architecture, folder: Path) -> None:
        """``arch`` retrained with the one recipe in ``folder`` and exported; its test scores in training.json."""
        if (folder / "training.json").exists() and exported(folder):
            return
        net = materialize(arch, spec, parent, ranking.order)
        recalibrate_bn(net, sample_batches(data.train, job.bn_images or 1024, seed=job.seed + 1), batches=None)
        before = evaluate(net, test)
        job.finetune.run(net, data, checkpoint_for(folder / "pruned.safetensors", arch),
                         arch, {"method": job.method, "parent": str(job.checkpoint)}, progress=job.progress)
        after = evaluate(net, test)
        export_once(folder, net, arch, folder / "pruned.safetensors")
        atomic_write_json(folder / "training.json", {"architecture": arch.to_dict(), "pruned": before,
                                                     "finetuned": after})

    arch, shipped, repeats = ship_and_check(out, arch, landing, budget.value, propose if landing else None, ship,
                                            table, job, anchor_of(full, spec, resolution), spec, SHIPPED_FILES)
    if shipped is not None:
        predicted = float(predictor.predict(arch)[0])
    measured = float(np.median(repeats)) if repeats else None       # none: the device cannot be reached
    scores = read_json(out / "training.json", recover="delete it to fine-tune again")
    before, after = tuple(scores["pruned"]), tuple(scores["finetuned"])
    report = {
        **network_report(spec=spec, method=job.method, checkpoint=job.checkpoint, table=job.table, device=job.device,
                         budget=job.budget.to_dict(budget), full=full, arch=arch, predicted_ms=predicted,
                         measured_ms=measured, pruned=before, finetuned=after, test_images=len(test)),
        "unit": unit, "floor": job.floor, "metric": job.metric, "cost": plan.cost,
        "finetune": asdict(job.finetune), "search_seconds": search_seconds, "search": search,
        "shipped_repeats_ms": repeats, "measured_upper_ms": upper_bound_ms(repeats) if repeats else None,
        "within_budget": (upper_bound_ms(repeats) <= budget.value) if repeats and budget.kind == "latency" else None,
        "landing": landing.to_dict() if landing else None,
        "shipped_landing": shipped.to_dict() if shipped else None, "recipe": recipe,
    }
    atomic_write_json(out / "report.json", report, indent=2)
    return report


__all__ = ["FilterMetric", "LcPJob", "LcPMethod", "METHODS", "PrunedLoss", "run_lcp"]
