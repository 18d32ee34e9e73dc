"""``latbench prune sp``: SP end to end, on the jobs' shared plumbing (:mod:`latbench.methods.common`).

checkpoint (the trained full network) + budget (latency from a device table — ms, or a ratio of the full
network's latency measured on ``device`` or predicted — or FLOPs / parameters)
→ stage-wise supernet training (:mod:`.training`) → distributed search (:mod:`.search`)
→ retraining of the chosen sub-network with the project's one SGD loop (:func:`latbench.train.finetune`),
from the supernet's weights (``retrain_from="inherited"``, BN recalibrated) or from scratch
→ ONNX + TFLite export → measurement of the shipped file on ``device`` (with the closed loop: the shipped file
lands too, each further network retrained in ``candidates/<digest>/`` and the chosen one copied into ``out``)
→ ``report.json``.

Every phase leaves a file in ``out`` that marks it done, and a rerun recomputes nothing that finished:

=================  ==========================================================================
phase              file
=================  ==========================================================================
supernet training  ``supernet.safetensors`` (weights, adaptors, momentum, step; ``complete``)
search             ``sp-state.json`` (manager state, written as members finish; ``complete``)
retraining         ``pruned.safetensors`` (the SGD loop's resumable checkpoint), ``arch.json``
export             ``pruned.onnx``, ``pruned.tflite`` (and ``sp-phases.json``: which checkpoint they hold)
measurement        the measurement store (keyed by the file's content)
=================  ==========================================================================

Bad input fails before any training, with a message that names the problem: a model without stage
boundaries, a table for another model or resolution (or device), a budget below what the narrowest widths
reach (naming that cost), Ray asked for but missing or unreachable.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge

from ...files import read_json, sha256_file, write_json_if_changed
from ...models import Architecture, GraphNet
from ...predictor import Predictor
from ...recipe import Choice, Opt, begin_folder_run
from ...search.budget import Budget, BudgetError, CostGrid
from ...supernet import SearchSpace, StageAdaptors, head_groups, recalibrate, stages_of, supernet_from
from ...tables.table import LatencyTable, TableError
from ..common import (FinetuneRecipe, SingleBudgetJob, anchor_of, budget_kind_is_latency, check_table_device,
                      check_torch_device, checkpoint_for, console, export_pruned, exported, first, full_latency,
                      land_on_device, load_parent, network_report, sample_batches, set_threads, ship_and_check,
                      with_batchnorm)
from ..landing import LandingConfig, Proposal, upper_bound_ms
from .costs import StageCosts
from .parallel import RayUnavailableError, check_ray
from .search import SPSearchConfig, search
from .training import StageTrainConfig, train_stagewise


class RetrainFrom(Choice):
    """Where retraining of the chosen sub-network starts."""

    inherited = "inherited"     # the supernet's weights
    scratch = "scratch"         # a fresh initialisation


class ChannelOrder(Choice):
    """Channel importance that makes "the first k channels" the k most important."""

    l1 = "l1"
    l2 = "l2"


RETRAIN_FROM = RetrainFrom.values()


#: What an SP job ships of the network it lands on (copied from its candidate folder).
SHIPPED_FILES = ("pruned.safetensors", "pruned.onnx", "pruned.tflite", "sp-phases.json")


@dataclass(frozen=True, kw_only=True)
class SPJob(SingleBudgetJob):
    """One SP run: the options of every job with one budget (:class:`SingleBudgetJob`) and SP's own.

    ``torch_device``: where the supernet trains and the search scores (cpu, cuda, mps); ``device``: the
    measurement device of the table. ``unit``: channel step of the search space (default: the table's
    channel multiple, else 1). ``order``: channel importance that makes "the first k channels" the k most
    important (``l1``/``l2`` filter norms of the checkpoint). ``train_images``: train on the first N training
    images only (quick runs). ``ray``: ``True`` requires Ray, ``False`` runs the stage EAs in this process,
    ``None`` uses Ray when it is installed (both give the same result); ``ray_address`` joins a cluster.
    ``threads``: torch threads when given, else torch's default.
    """

    torch_device: Annotated[str, Opt(help="torch device for supernet training, the search and retraining (cpu, "
                                          "cuda, mps)", runtime=True)] = "cpu"
    unit: Annotated[int | None, Ge(1), Opt(help="channel step of the search space (default: the table's channel "
                                                "multiple, else 1)")] = None
    order: Annotated[ChannelOrder, Opt(help="channel importance (filter norms): sub-networks keep the first, most "
                                            "important channels")] = ChannelOrder.l1
    train_images: Annotated[int | None, Ge(1), Opt(help="train the supernet on the first N training images only "
                                                         "(quick runs)")] = None
    supernet: Annotated[StageTrainConfig, Opt(flag="supernet")] = field(default_factory=StageTrainConfig)
    search: Annotated[SPSearchConfig, Opt(flag="")] = field(default_factory=SPSearchConfig)
    retrain: Annotated[FinetuneRecipe, Opt(flag="finetune")] = field(default_factory=FinetuneRecipe)
    retrain_from: Annotated[RetrainFrom, Opt(help="start retraining from the supernet's weights or from "
                                                  "scratch")] = RetrainFrom.inherited
    bn_images: Annotated[int, Ge(1), Opt(help="images to recalibrate BN of the chosen network")] = 1024
    ray: Annotated[bool | None, Opt(help="run the stage EAs on Ray actors (default: when Ray is installed; --no-ray "
                                         "runs them in this process with the same result)", runtime=True)] = None
    ray_address: Annotated[str | None, Opt(help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto; default: a local "
                                                "instance on 127.0.0.1)", runtime=True)] = None
    actors_per_stage: Annotated[int, Ge(1), Opt(help="Ray actors per stage (more on a cluster)", runtime=True)] = 1
    landing: Annotated[LandingConfig, Opt(flag="")] = field(default_factory=LandingConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ray is False and self.ray_address:
            raise ValueError("--ray-address needs Ray: drop --no-ray")
        check_torch_device(self.torch_device)


def _images(dataset, n: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The images of a fixed random sample of ``n`` images of ``dataset`` (:func:`sample_batches`)."""
    return [x for x, _ in sample_batches(dataset, n, batch, seed)]


def _use_ray(job: SPJob) -> bool:
    if job.ray is None and not job.ray_address:
        try:
            import ray  # noqa: F401
        except ImportError:
            return False
        return True
    return True if job.ray or job.ray_address else False


def run_sp(job: SPJob) -> dict:
    """Run ``job`` end to end (resuming whatever a previous run finished); writes everything to ``job.out``
    and returns the report (also ``report.json``)."""
    from ...data import DataSplits, load_dataset
    from ...train import evaluate, read_checkpoint_meta

    set_threads(job.threads, all_cores=False)
    out = Path(job.out)

    # ---- everything that can be wrong with the input, before any training ----------------------------
    parent = load_parent(job.checkpoint, job.model)
    spec = parent.spec
    imported = bool(spec.source)
    if imported and job.order != "l1":
        raise ValueError(f"--order {job.order}: an imported model ranks its channels by l1 (its filters' L1 norms "
                         "× |γ|, as its pruned variants are cut); use --order l1")
    if imported and job.retrain_from == "scratch":
        raise ValueError("--retrain-from scratch needs a zoo model (latbench builds its layers); an imported model "
                         "retrains from the weights its supernet gives it (--retrain-from inherited)")
    stages = stages_of(spec)                                      # StageError: no stage boundaries
    device = check_torch_device(job.torch_device)
    use_ray = _use_ray(job)
    if use_ray:
        check_ray(job.ray_address)                                # RayUnavailableError
    data = load_dataset(job.data, job.data_dir)
    parent = with_batchnorm(parent, sample_batches(data.train, job.bn_images, seed=job.search.seed + 1))
    net = supernet_from(parent, str(job.order), device=device)   # an OnnxSupernet for an imported model
    net.stages                                                    # StageError: a graph not runnable stage-wise
    resolution = data.resolution
    table = LatencyTable.load(job.table) if job.table else None
    predictor = None
    if table is not None:
        predictor = Predictor(spec, table)                        # TableError: another model's layers
        predictor.covered_resolutions([resolution])               # TableError: another resolution
    unit = job.unit or (int(table.meta.get("channel_multiple", 1)) if table is not None else 1)
    space = SearchSpace.from_spec(spec, multiple=unit, resolutions=(resolution,))
    # Groups the head writes (MobileNetV3's 1×1 conv after the pool) belong to no stage: kept at full width.
    space = replace(space, choices={**space.choices, **{g: (spec.groups[g],) for g in head_groups(spec)}})
    step = int(np.gcd.reduce([w for c in space.choices.values() for w in c]))
    grid = CostGrid.for_budget(spec, Budget(job.budget.kind, 1.0), resolution, predictor, step)   # OutOfGridError
    smallest = space.smallest(resolution)
    grid.check_range(np.array([smallest.widths[g] for g in spec.groups]))           # the table's channel range
    costs = StageCosts.from_grid(grid, stages)
    if job.device:
        check_table_device(table, job.device)                     # TableError: measured on another device

    full = full_latency(spec, resolution, table, predictor, job.device, job.store, job.progress,
                        measure=job.budget_ratio is not None or (job.landing.land and budget_kind_is_latency(job)))
    budget = job.budget.resolve(full)
    floor = float(costs.total(smallest.widths))
    if budget.value < floor:
        raise BudgetError(
            f"a {budget.kind} budget of {budget.describe()} is below what pruning {spec.name} can reach: with every "
            f"group at its narrowest width ({min(space.ratios):g} of full, in steps of {unit} channels) the network "
            f"needs {budget.describe(floor)}; raise the budget to at least that")

    recipe = begin_folder_run(job, "sp", out, log=console.print)
    phases_path = out / "sp-phases.json"

    # ---- 1. stage-wise supernet training -------------------------------------------------------------
    adaptors = StageAdaptors.for_net(net)
    train_data = data if job.train_images is None else DataSplits(
        data.name, data.train.head(job.train_images), data.val, data.test)
    history = train_stagewise(net, adaptors, train_data, space, job.supernet, checkpoint=out / "supernet.safetensors",
                              meta={"parent": str(job.checkpoint), "order": job.order}, progress=job.progress)

    # ---- 2. search -------------------------------------------------------------------------------------
    cfg = job.search
    held_out = data.val if data.val is not None else data.train
    images = held_out.normalize(held_out.images[:cfg.eval_images])
    calibration = torch.cat(_images(data.train, cfg.calib_images, cfg.batch_size, cfg.seed + 1))
    result = search(net, adaptors, space, costs, budget, images, calibration, cfg, resolution=resolution,
                    use_ray=use_ray, ray_address=job.ray_address, actors_per_stage=job.actors_per_stage,
                    state=out / "sp-state.json", worker_device=str(device), progress=job.progress)
    arch = result.arch
    write_json_if_changed(out / "search.json", {k: v for k, v in result.to_dict().items() if k != "history"},
                          indent=2)

    # The closed loop: SP's own search, run again at a corrected predicted target, proposes; the device decides.
    landing = None
    if job.device and table is not None and budget.kind == "latency" and job.landing.land:
        def propose(target: float) -> Proposal:
            again = search(net, adaptors, space, costs, Budget("latency", max(target, floor)), images, calibration,
                           cfg, resolution=resolution, use_ray=use_ray, ray_address=job.ray_address,
                           actors_per_stage=job.actors_per_stage, worker_device=str(device), progress=False,
                           state=out / "landing" / f"sp-state-{max(target, floor):.9g}.json")
            return Proposal(again.arch, again.cost, target)

        (out / "landing").mkdir(exist_ok=True)
        landing = land_on_device(spec, budget.value, propose, Proposal(arch, result.cost, budget.value), table,
                                 job.device, job.store, job.landing, anchor_of(full, spec, resolution))
        arch = landing.arch
        console.print(f"landed: {landing.status} after {len(landing.steps)} measured step(s), widths {arch.widths}")
    predicted = float(predictor.predict(arch)[0]) if predictor is not None else None
    console.print(f"[bold]sp[/]: {budget.kind} {budget.describe(result.cost)} for a budget of {budget.describe()}; "
                  f"widths {arch.widths}")

    # ---- 3. retraining with the one SGD loop, 4. export ---------------------------------------------------
    test = first(data.test, job.test_images)
    r = job.retrain

    def ship(arch: Architecture, folder: Path) -> None:
        """``arch`` retrained into ``folder`` (from its supernet slice, BN recalibrated, or from scratch) and
        exported; the phases done (test scores, export) in its sp-phases.json."""
        phases_path = folder / "sp-phases.json"
        phases = read_json(phases_path, recover="delete it to redo the export") if phases_path.exists() else {}

        def save_phases() -> None:
            write_json_if_changed(phases_path, phases, indent=2)

        ckpt = checkpoint_for(folder / "pruned.safetensors", arch)
        done = ckpt.exists() and read_checkpoint_meta(ckpt).get("history", {}).get("complete", False)
        key = {"arch": arch.to_dict(), "retrain_from": job.retrain_from, "test_images": len(test)}
        if phases.get("start", {}).get("key") != key:
            phases.pop("start", None)
        if not done:
            stats = recalibrate(net, arch, _images(data.train, job.bn_images or 1024, 128, r.seed + 1))
            inherited = net.extract(arch, stats, device="cpu")
            if "start" not in phases:
                loss, acc = evaluate(inherited, test)
                phases["start"] = {"key": key, "inherited": {"loss": loss, "accuracy": acc}}
                save_phases()
            if job.retrain_from == "inherited":
                small = inherited
            else:
                small = GraphNet(spec, arch.widths, net.in_channels, generator=torch.Generator().manual_seed(r.seed))
        elif imported:
            small = net.extract(arch, device="cpu")      # the cut graph; the finished checkpoint's weights load in
        else:
            small = GraphNet(spec, arch.widths, net.in_channels)
        on_cpu = device.type == "cpu"
        small = small.to(device)           # the one SGD loop trains where the network is (batches follow)
        r.run(small, data, ckpt, arch, {"method": "sp", "parent": str(job.checkpoint), "retrain_from": job.retrain_from},
              progress=job.progress, device=None if on_cpu else device)
        small = small.cpu().eval()
        digest = sha256_file(ckpt)
        if phases.get("final", {}).get("sha256") != digest:
            loss, acc = evaluate(small, test)
            phases["final"] = {"sha256": digest, "loss": loss, "accuracy": acc}
            save_phases()
        if phases.get("export", {}).get("sha256") != digest or not exported(folder):
            export_pruned(folder, small, arch)
            phases["export"] = {"sha256": digest}
            save_phases()

    # ---- 5. measurement of the shipped file: it lands too (landing, step 5) ------------------------------
    arch, shipped, repeats = ship_and_check(out, arch, landing, budget.value, propose if landing else None, ship,
                                            table, job, anchor_of(full, spec, resolution), spec, SHIPPED_FILES)
    if shipped is not None:
        predicted = float(predictor.predict(arch)[0])
    measured = float(np.median(repeats)) if repeats else None       # none: the device cannot be reached
    phases = read_json(phases_path, recover="delete it to redo the export")
    saved = read_checkpoint_meta(out / "pruned.safetensors")
    retrain_seconds = (sum(e["seconds"] for e in saved["history"].get("epochs", []))
                       + float(saved.get("running", {}).get("seconds", 0.0)))

    inherited = phases.get("start", {}).get("inherited")
    report = {
        **network_report(spec=spec, method="sp", checkpoint=job.checkpoint, table=job.table, device=job.device,
                         budget=job.budget.to_dict(budget), full=full, arch=arch, predicted_ms=predicted,
                         measured_ms=measured, pruned=(inherited["loss"], inherited["accuracy"]) if inherited else None,
                         finetuned=(phases["final"]["loss"], phases["final"]["accuracy"]), test_images=len(test)),
        "unit": unit, "order": job.order, "cost": result.cost,
        "retrain_from": job.retrain_from, "finetune": asdict(r),
        "search_seconds": result.seconds,
        "seconds": {"supernet": history.seconds, "search": result.seconds, "retrain": retrain_seconds},
        "search": {"fitness": result.fitness, "stage_losses": result.stage_losses, "stage_costs": result.stage_costs,
                   "stage_budgets": result.stage_budgets, "fixed_cost": result.fixed_cost,
                   "evaluations": result.evaluations, "generations": len(result.history),
                   "parallel": result.parallel, "config": cfg.to_dict()},
        "supernet": {"config": job.supernet.to_dict(), "steps": history.step,
                     "last": history.records[-1] if history.records else None},
        "shipped_repeats_ms": repeats, "measured_upper_ms": upper_bound_ms(repeats) if repeats else None,
        "within_budget": (upper_bound_ms(repeats) <= budget.value) if repeats and budget.kind == "latency" else None,
        "landing": landing.to_dict() if landing else None,
        "shipped_landing": shipped.to_dict() if shipped else None,
        "recipe": recipe,
    }
    write_json_if_changed(out / "report.json", report, indent=2)
    return report


__all__ = ["RETRAIN_FROM", "SPJob", "run_sp", "RayUnavailableError", "TableError"]
