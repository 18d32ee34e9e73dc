"""End-to-end latency-constrained pruning: a trained checkpoint + a device table + a budget → a pruned,
fine-tuned, exported network, measured on the device when one is given.

The pruning methods (``uniform``, ``naive``, ``lcp`` here; JCW in :mod:`latbench.search.jcw`) only choose the
architecture; everything around them — loading, budgets, fine-tuning with one fixed recipe, export, the
device measurement and the report — is shared, so methods are compared on equal terms.

>>> job = PruneJob(model="resnet56", checkpoint="runs/r56.safetensors", table="tables/t.parquet",
...                budget_ratio=0.5, method="lcp", out="runs/lcp-50")                  # doctest: +SKIP
>>> report = run_prune(job)                                                               # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from .files import atomic_write_bytes, atomic_write_json, atomic_write_text
from .models.arch import Architecture
from .models.spec import ModelSpec
from .models.torch_net import GraphNet, materialize
from .predictor import Predictor
from .search.budget import Budget, BudgetError, CostGrid
from .tables.table import LatencyTable

METHODS = ("uniform", "naive", "lcp")
console = Console(stderr=True)


@dataclass(frozen=True)
class FinetuneRecipe:
    """The one fine-tuning recipe every method gets (so accuracies are comparable)."""

    epochs: int = 1
    lr: float = 0.02
    schedule: str = "cosine"
    batch_size: int = 128
    max_steps: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class PruneJob:
    """One pruning run. Give exactly one budget: ``budget_ms`` (latency), ``budget_ratio`` (of the full
    network's latency: measured on ``device`` when one is given, else predicted), ``budget_flops`` or
    ``budget_params``."""

    model: str
    checkpoint: str
    out: str
    table: str | None = None
    method: str = "lcp"
    budget_ms: float | None = None
    budget_ratio: float | None = None
    budget_flops: float | None = None
    budget_params: float | None = None
    data: str = "fashion-mnist"
    data_dir: str | None = None
    device: str | None = None
    store: str = "runs/measurements.db"
    metric: str = "l2"
    floor: float = 0.1
    unit: int | None = None             # channels removed at a time (default: the table's channel multiple)
    pool: int = 64
    candidates: int = 400
    fitness_images: int = 3000          # the paper's 3k training images
    bn_images: int = 1024               # images to re-estimate BN statistics of each candidate
    test_images: int | None = None      # evaluate on the first N test images (None: the whole test set)
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    seed: int = 0
    threads: int | None = None          # torch threads (default: all cores; 1 when runs share the machine)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        given = [v for v in (self.budget_ms, self.budget_ratio, self.budget_flops, self.budget_params) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one budget: --budget-ms, --budget-ratio, --budget-flops or --budget-params")
        if self.budget_ratio is not None and not 0 < self.budget_ratio <= 1:
            raise BudgetError(f"--budget-ratio must be in (0, 1], got {self.budget_ratio}")
        if (self.budget_ms is not None or self.budget_ratio is not None) and not self.table:
            raise BudgetError("a latency budget needs the device's latency table: give --table")


def _batches(data, n: int, batch: int = 256, seed: int = 0):
    """A fixed random sample of ``n`` images of ``data`` as normalised batches (the same for every candidate)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    return [(data.normalize(data.images[idx[i:i + batch]]), data.labels[idx[i:i + batch]])
            for i in range(0, len(idx), batch)]


class PrunedLoss:
    """Fitness of LcP: the loss increase of a naïvely pruned network on a fixed sample of training images,
    after re-estimating its BN statistics on another sample (slicing channels invalidates them)."""

    def __init__(self, parent: GraphNet, spec: ModelSpec, order: dict, data, images: int, bn_images: int,
                 resolution: int, seed: int = 0) -> None:
        self.parent, self.spec, self.order, self.resolution = parent, spec, order, resolution
        self.batches = _batches(data, images, seed=seed)
        self.bn_batches = _batches(data, bn_images, seed=seed + 1) if bn_images else []
        self.base = self.loss(parent)

    @torch.no_grad()
    def loss(self, net: GraphNet) -> float:
        net.eval()
        total = sum(float(F.cross_entropy(net(x), y, reduction="sum")) for x, y in self.batches)
        return total / sum(int(y.numel()) for _, y in self.batches)

    def network(self, arch: Architecture) -> GraphNet:
        from .train.importance import recalibrate_bn

        net = materialize(arch, self.spec, self.parent, self.order)
        if self.bn_batches:
            recalibrate_bn(net, self.bn_batches, batches=None)
        return net

    def __call__(self, plan) -> float:
        return self.loss(self.network(plan.architecture(self.resolution))) - self.base


def _budget(job: PruneJob, spec: ModelSpec, predictor: Predictor | None, full: Architecture,
            measured_full: float | None) -> Budget:
    if job.budget_ms is not None:
        return Budget("latency", job.budget_ms)
    if job.budget_flops is not None:
        return Budget("flops", job.budget_flops)
    if job.budget_params is not None:
        return Budget("params", job.budget_params)
    reference = measured_full if measured_full is not None else float(predictor.predict(full)[0])
    return Budget("latency", job.budget_ratio * reference)


def measure_architectures(spec: ModelSpec, archs: Sequence[Architecture], table: LatencyTable, device: str,
                          store: str, progress: bool = True) -> np.ndarray:
    """End-to-end latency of ``archs`` on ``device`` in the table's unit (stored, so reruns reuse it)."""
    from .devices import open_device
    from .store import MeasurementStore
    from .validation import measure_networks, table_reference_ms

    dev = open_device(device)
    try:
        table.check_device(dev.fingerprint(), device)
        dev.prepare()
        with MeasurementStore(store) as st:
            return measure_networks(spec, list(archs), dev, st, progress=progress,
                                    reference_ms=table_reference_ms(table))
    finally:
        dev.close()


def measure_shipped(folders: Sequence[Path], table: LatencyTable, device: str, store: str,
                    progress: bool = True) -> np.ndarray:
    """End-to-end latency of the model each of ``folders`` ships (``pruned.onnx`` or ``pruned.tflite``, the
    device's format) in the table's unit: the file itself, with its trained weights and zero pattern, not a
    re-export of its architecture."""
    from .devices import open_device
    from .store import MeasurementStore
    from .validation import measure_models, table_reference_ms

    dev = open_device(device)
    try:
        table.check_device(dev.fingerprint(), device)
        models = [(Path(f) / f"pruned.{dev.model_format}").read_bytes() for f in folders]
        dev.prepare()
        with MeasurementStore(store) as st:
            return measure_models(models, dev, st, progress=progress, reference_ms=table_reference_ms(table))
    finally:
        dev.close()


def run_prune(job: PruneJob) -> dict:
    """Run ``job`` end to end; writes everything to ``job.out`` and returns the report (also report.json)."""
    from .data import load_dataset
    from .export import export_network_for
    from .models.zoo import get_model
    from .search.lcp import EvolutionConfig, FilterRanking, learn_compensation, naive_prune, uniform_prune
    from .train import evaluate, finetune, load_checkpoint
    from .train.importance import layer_filter_scores, recalibrate_bn

    from .train.loop import cpu_cores

    torch.set_num_threads(job.threads or cpu_cores())
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    parent, parent_arch, meta = load_checkpoint(job.checkpoint)
    spec = parent.spec
    if spec.name != job.model:
        raise ValueError(f"{job.checkpoint} holds a {spec.name}, not a {job.model}")
    if parent_arch.widths != dict(get_model(spec.name).groups):
        raise ValueError(f"{job.checkpoint} is already pruned ({parent_arch.widths}); start from the full network")
    data = load_dataset(job.data, job.data_dir)
    resolution = data.resolution
    full = Architecture.full(spec, resolution)
    table = LatencyTable.load(job.table) if job.table else None
    predictor = Predictor(spec, table) if table is not None else None
    unit = job.unit or (int(table.meta.get("channel_multiple", 1)) if table is not None else 1)

    measured_full = None
    if job.device and job.budget_ratio is not None:
        measured_full = float(measure_architectures(spec, [full], table, job.device, job.store, job.progress)[0])
    budget = _budget(job, spec, predictor, full, measured_full)
    grid = CostGrid.for_budget(spec, budget, resolution, predictor, step=unit)

    t0 = time.perf_counter()
    metrics = layer_filter_scores(parent, job.metric, data=data.train)
    ranking = FilterRanking.from_metrics(spec, metrics, unit=unit, floor=job.floor)
    search: dict = {}
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
        plan = naive_prune(ranking, grid, budget, result.best.beta)
        search = {k: v for k, v in result.to_dict().items() if k != "history"}
        atomic_write_json(out / "lcp-history.json", result.to_dict())
    search_seconds = time.perf_counter() - t0
    arch = plan.architecture(resolution)
    atomic_write_text(out / "arch.json", arch.to_json())
    predicted = float(predictor.predict(arch)[0]) if predictor is not None else None
    console.print(f"[bold]{job.method}[/]: {budget.kind} {budget.describe(plan.cost)} for a budget of "
                  f"{budget.describe()}; widths {arch.widths}")

    test = data.test if job.test_images is None else data.test.head(job.test_images)
    net = materialize(arch, spec, parent, ranking.order)
    recalibrate_bn(net, _batches(data.train, job.bn_images or 1024, seed=job.seed + 1), batches=None)
    before = evaluate(net, test)
    r = job.finetune
    history = finetune(net, data, r.epochs, r.lr, schedule=r.schedule, batch_size=r.batch_size, seed=r.seed,
                       max_steps=r.max_steps, checkpoint=out / "pruned.safetensors", resume=True, arch=arch,
                       threads=job.threads,
                       meta={"method": job.method, "parent": str(job.checkpoint)}, progress=job.progress)
    after = evaluate(net, test)
    for fmt in ("onnx", "tflite"):
        atomic_write_bytes(out / f"pruned.{fmt}", export_network_for(fmt, net, arch))

    measured = None
    if job.device and table is not None:
        measured = float(measure_shipped([out], table, job.device, job.store, job.progress)[0])
    report = {
        "model": spec.name, "method": job.method, "checkpoint": str(job.checkpoint), "table": job.table,
        "device": job.device, "budget": {"kind": budget.kind, "value": budget.value, "ratio": job.budget_ratio},
        "full_latency_ms": {"measured": measured_full,
                            "predicted": float(predictor.predict(full)[0]) if predictor is not None else None},
        "architecture": arch.to_dict(), "unit": unit, "floor": job.floor, "metric": job.metric,
        "cost": plan.cost, "predicted_ms": predicted, "measured_ms": measured,
        "measured_over_budget": (measured / budget.value - 1) if measured is not None and budget.kind == "latency"
        else None,
        "test_accuracy": {"pruned": before[1], "finetuned": after[1]}, "test_images": len(test),
        "test_loss": {"pruned": before[0], "finetuned": after[0]},
        "finetune": asdict(r), "search_seconds": search_seconds, "search": search,
        "flops": CostGrid.analytic(spec, "flops", resolution).total(arch.widths),
        "params": CostGrid.analytic(spec, "params", resolution).total(arch.widths),
    }
    atomic_write_json(out / "report.json", report, indent=2)
    return report
