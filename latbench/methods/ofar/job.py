"""OFARPruning end to end: a trained checkpoint + several devices' tables + budgets → one cohort of pruned
networks, one per (device, budget), each at its own input resolution.

Phases, each resumable (everything lives in ``job.out``)::

    rates.json                  step 1: rates ρ per (device, budget, resolution)   (recomputed: cheap)
    search.safetensors          the Network-Slimming training (the loop's checkpoint)
    search-state.json           per-epoch masks and similarities; the PNP replays from it
    joint.safetensors           the joint training (weights, private BN, momentum, step)
    bn-stats.safetensors        recalibrated BN statistics per (structure, resolution)   (recalibrated mode)
    scores.json                 held-out (validation split) accuracy per (structure, resolution)
    networks/s<J>-r<R>/         each chosen (structure, resolution): arch.json, pruned.onnx, pruned.tflite,
                                network.json (test accuracy)
    networks/<device>-<budget>/ a choice landed on its device: the network its shipped file landed on, and in
                                candidates/<digest>/ every network that landing exported and measured
    measurements.json           measured latency of each shipped file per device
    report.json                 the whole cohort

Selection: for each device and budget, among the (structure, resolution) pairs whose predicted cost on that
device fits, the most accurate on the validation split (ties: the cheaper). The choice is exported at its
resolution and measured on its device where that device is a host runtime of this machine (the table's
``device`` is ``host:…`` and its fingerprint matches this machine's), else predicted (phone tables, tables
from another machine).

>>> report = run_ofar(OFARJob(model="resnet20", checkpoint="runs/r20.safetensors", out="runs/ofar",
...                           tables=("a.parquet", "b.parquet"), budget_ratios=(0.7, 0.5)))   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Callable, Sequence

import numpy as np
import torch

from ...devices.spec import base_device
from ...files import atomic_output, atomic_write_json, atomic_write_text, read_json, sha256_file, write_json_if_changed
from ...models import Architecture
from ...recipe import Choice, Opt, begin_folder_run
from ..landing import LandingConfig, Proposal
from ...search.budget import BudgetError
from .. import common
from ..common import (EXPORT_FORMATS, JobOptions, check_torch_device, console, export_pruned, exported, load_parent,
                      set_threads, with_batchnorm)
from .joint import BNMode, JointConfig, Structures, attach_private_bn, structure_forward, train_joint
from .rates import (BudgetSpec, CostModel, GlobalRanking, RatePlan, bn_gamma_scores, check_resolutions, find_rates,
                    load_cost_models, structure_floors)
from .search import SearchConfig, SearchOutcome, run_search

REPORT_FORMAT = "latbench-ofar-job/1"
#: The files of one exported network (copied from a shipped landing's candidate folder to the choice's own).
NETWORK_FILES = ("network.json", "arch.json", "pruned.onnx", "pruned.tflite")
__all__ = ["OFARJob", "default_resolutions", "run_ofar"]


def default_resolutions(resolution: int) -> tuple[int, ...]:
    """The paper's resolution sets: {32, 28, 24, 20} for 32×32 data, {224, 192, 160, 128} for 224×224."""
    if resolution == 32:
        return (32, 28, 24, 20)
    if resolution == 224:
        return (224, 192, 160, 128)
    raise ValueError(f"no default resolutions for {resolution}×{resolution} data; give --resolutions")


class PoolKind(Choice):
    """Where OFARPruning's sub-networks come from."""

    search = "search"      # OFARPruning's Pruned Network Pool, found by the search stage
    uniform = "uniform"    # the US-Net/MutualNet baseline: uniform width multipliers, no search stage


@dataclass(frozen=True, kw_only=True)
class OFARJob(JobOptions):
    """One OFARPruning run for a cohort of devices (``tables``) and budgets.

    Budgets apply to every device: ``budget_ratios`` of each device's full-network cost at the largest
    resolution, ``budgets_ms`` absolute latency, ``budgets_flops`` absolute MACs (with ``flops``, FLOPs are
    one more "device"). ``resolutions`` default to the paper's set for the data's size. ``train_images``,
    ``val_images`` and ``test_images`` cap the splits (quick runs). ``torch_device`` is where training runs;
    ``threads`` the torch threads of this process (the job is the application: the library never sets them).
    ``measure=False`` predicts every choice instead of measuring the ones whose device is here. The options
    every job takes come from :class:`~latbench.methods.common.JobOptions`."""

    model: Annotated[str, Opt(help="zoo model of the checkpoint, or an ONNX file (the model it holds, with its "
                                  "weights; its BN is given back for training, see latbench.models.onnx_bn)")
                     ] = "resnet20"
    tables: Annotated[tuple[str, ...], Opt(flag="table", help="a device's latency table (repeatable: one per device "
                                                              "of the cohort)", input=True)] = ()
    budget_ratios: Annotated[tuple[float, ...], Opt(flag="budget-ratio", help="budget as a fraction of each device's "
                                                    "full-network cost at the largest resolution (repeatable)")] = ()
    budgets_ms: Annotated[tuple[float, ...], Opt(flag="budget-ms", help="latency budget in ms for every table's device "
                                                                        "(repeatable)")] = ()
    budgets_flops: Annotated[tuple[float, ...], Opt(flag="budget-flops", help="FLOPs budget in MACs (repeatable; "
                                                                              "implies --flops)")] = ()
    flops: Annotated[bool, Opt(help="FLOPs as one more 'device' (ratios apply to it)")] = False
    resolutions: Annotated[tuple[int, ...] | None, Opt(help="input resolutions (repeatable; default 32 28 24 20 for "
                                                            "32×32 data, 224 192 160 128 for 224)")] = None
    search: Annotated[SearchConfig, Opt(flag="search")] = field(default_factory=SearchConfig)
    joint: Annotated[JointConfig, Opt(flag="joint")] = field(default_factory=JointConfig)
    min_width_ratio: Annotated[float, Opt(help="no group narrower than this fraction")] = 0.1
    multiple: Annotated[int | None, Opt(help="round widths to this multiple (default: the tables' channel "
                                             "multiple)")] = None
    val_size: Annotated[int, Opt(help="last N training images held out for the selection (the validation split)")] = 5000
    train_images: Annotated[int | None, Opt(help="train on the first N training images")] = None
    val_images: Annotated[int | None, Opt(help="select on the first N validation images")] = None
    bn_images: Annotated[int, Opt(help="images to recalibrate BN per (structure, resolution)")] = 1024
    stream: Annotated[bool, Opt(help="stream an ImageFolder tree from disk (ImageNet-sized sets) instead of "
                                     "decoding it into memory; other data sets stay in memory")] = True
    landing: Annotated[LandingConfig, Opt(flag="")] = field(default_factory=LandingConfig)
    measure: Annotated[bool, Opt(help="measure each choice on its device when that is a host runtime here "
                                      "(--no-measure: predict all)", runtime=True)] = True
    torch_device: Annotated[str, Opt(help="torch device for training (cpu, cuda, mps)", runtime=True)] = "cpu"
    pool: Annotated[PoolKind, Opt(help="search (OFARPruning's PNP) or uniform (the US-Net/MutualNet baseline: "
                                       "uniform width multipliers, no search stage; use with --no-assistants)")
                    ] = PoolKind.search
    uniform_ratios: Annotated[tuple[float, ...], Opt(help="width multipliers of the uniform pool (repeatable)")] = (
        1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(str(t) for t in self.tables))
        object.__setattr__(self, "flops", bool(self.flops or self.budgets_flops))
        if self.resolutions is not None:
            res = tuple(sorted({int(r) for r in self.resolutions}, reverse=True))
            if not res or min(res) < 1:
                raise ValueError(f"--resolutions must be positive, got {list(self.resolutions)}")
            object.__setattr__(self, "resolutions", res)
        self.budget_spec()                                  # validates the budgets
        if not self.tables and not self.flops:
            raise BudgetError("give the devices' latency tables (--table, repeatable) or FLOPs budgets (--flops)")
        if self.budgets_ms and not self.tables:
            raise BudgetError("--budget-ms needs latency tables (--table)")
        if not 0 <= self.min_width_ratio < 1:
            raise ValueError(f"--min-width-ratio must be in [0, 1), got {self.min_width_ratio}")
        for name in ("train_images", "val_images", "test_images"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be ≥ 1, got {v}")
        if self.bn_images < 1:
            raise ValueError(f"bn_images must be ≥ 1, got {self.bn_images}")
        if self.pool == "uniform" and not all(0 < r <= 1 for r in self.uniform_ratios):
            raise ValueError(f"uniform ratios must be in (0, 1], got {list(self.uniform_ratios)}")
        check_torch_device(self.torch_device)

    def budget_spec(self) -> BudgetSpec:
        return BudgetSpec(self.budget_ratios, self.budgets_ms, self.budgets_flops)


# ---- helpers ----------------------------------------------------------------------------------------------

def _log(job: OFARJob) -> Callable[[str], None]:
    return lambda line: console.print(line, highlight=False)


def _multiple(job: OFARJob, costs: Sequence[CostModel]) -> int:
    if job.multiple:
        return int(job.multiple)
    ms = [int(c.table.meta.get("channel_multiple", 1)) for c in costs if c.table is not None]
    return int(math.lcm(*ms)) if ms else 1


def _digest(obj) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _score(net, j: int, arch: Architecture, batches, bn, device) -> tuple[float, float]:
    net.eval()
    loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = structure_forward(net, j, arch, x, bn=bn)
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += int(y.numel())
    return loss / seen, correct / seen


def _save_stats(path: Path, stats: dict[str, dict]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{key}|{layer}|{i}": t.detach().cpu().contiguous()
               for key, per_layer in stats.items() for layer, pair in per_layer.items() for i, t in enumerate(pair)}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp))


def _load_stats(path: Path, device) -> dict[str, dict]:
    from safetensors import safe_open

    out: dict[str, dict] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            key, layer, i = k.split("|")
            pair = out.setdefault(key, {}).setdefault(layer, [None, None])
            pair[int(i)] = f.get_tensor(k).to(device)
    return {key: {layer: tuple(pair) for layer, pair in per.items()} for key, per in out.items()}


class PhaseSeconds:
    """Seconds each phase of the job worked, kept in ``path`` across runs. A run in which a phase did work
    adds its time (a resumed training, or landing proposals exported by a later run, add to what the first
    run spent); a run that only skipped it leaves the earlier figure (or records the skip when there is none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_phase: dict[str, float] = dict(read_json(path, recover="delete it (only timings are lost)")
                                               if path.exists() else {})

    def add(self, phase: str, t0: float, worked: bool) -> None:
        elapsed = time.perf_counter() - t0
        if worked:
            self.by_phase[phase] = self.by_phase.get(phase, 0.0) + elapsed
        elif phase not in self.by_phase:
            self.by_phase[phase] = elapsed
        else:
            return
        atomic_write_json(self.path, self.by_phase, indent=2)


def _here(cost: CostModel) -> tuple[bool, str]:
    """Whether ``cost``'s device is a host runtime of this machine (and why not)."""
    from ...devices import HOST_DEVICES, open_device

    if cost.kind != "latency":
        return False, "FLOPs (nothing to measure)"
    name = cost.device or ""
    if base_device(name) not in HOST_DEVICES:          # host:onnxruntime?warm=1 is a host runtime too
        return False, f"{name or 'the device'} is not a host runtime here (predicted from its table)"
    try:
        dev = open_device(name)
        try:
            fingerprint = dev.fingerprint()
        finally:
            dev.close()
    except Exception as err:  # a runtime that does not load here: predict
        return False, f"{name} is not usable here ({err}); predicted from its table"
    if fingerprint != cost.table.fingerprint:
        return False, (f"the table was measured on another machine ({cost.table.fingerprint}, this {name} is "
                       f"{fingerprint}); predicted from its table")
    return True, "measured"


# ---- the job ------------------------------------------------------------------------------------------------

def plan_rates(job: OFARJob, parent, resolutions: Sequence[int]) -> tuple[list[CostModel], RatePlan]:
    """Step 1 with every input check that must fail before training: tables (model, resolutions) and budgets."""
    costs = load_cost_models(parent.spec, job.tables, job.flops)
    check_resolutions(costs, resolutions)
    multiple = _multiple(job, costs)
    floors = structure_floors(parent.spec, costs, resolutions, multiple, job.min_width_ratio)
    ranking = GlobalRanking.of(parent, floors, multiple)
    return costs, find_rates(ranking, costs, job.budget_spec(), resolutions)


def imported_parent(parent, job: OFARJob, data, resolutions: Sequence[int]):
    """An imported model's network ready for OFARPruning: its folded BN given back
    (:func:`~latbench.models.onnx_bn.unfold_batchnorm`, calibrated on ``bn_images`` training images at the
    largest resolution), after the checks only an imported graph needs: private BN is DynamicNet's, and the
    graph must run at every resolution."""
    from ...models.onnx_load import at_resolution
    from ...supernet import resize

    if job.joint.bn_mode is BNMode.PRIVATE:
        raise ValueError("--bn-mode private (S-Net's private BN) needs a zoo model; an imported model's sub-networks "
                         "share the graph's BN and are recalibrated: use --bn-mode recalibrated")
    for r in resolutions:
        at_resolution(parent.model, r, parent.spec.name)     # OnnxModelError naming the size the graph fixes
    calib = data.calibration(job.bn_images, seed=job.search.seed + 1)
    return with_batchnorm(parent, [(resize(x, max(resolutions)), y) for x, y in calib])


def uniform_outcome(parent, plan: RatePlan, ratios: Sequence[float]) -> SearchOutcome:
    """The US-Net/MutualNet baseline's "pool": one width multiplier for every group (rounded to the channel
    multiple, within the floors), largest first, on the checkpoint's weights — no search stage."""
    from .rates import group_multiple, round_to_multiple
    from .search import PoolEntry

    pool, seen = [], []
    for i, ratio in enumerate(sorted(set(ratios), reverse=True)):
        widths = {g: round_to_multiple(ratio * full, full, group_multiple(parent.spec, g, plan.multiple),
                                       plan.floors[g]) for g, full in parent.spec.groups.items()}
        if widths not in seen:
            seen.append(widths)
            pool.append(PoolEntry(len(pool), 0, 0, 1.0 - ratio, 0, 1.0, widths, True, [f"uniform x{ratio:g}"]))
    return SearchOutcome(parent, pool, [], 0, False, 0.0, {"config": {"pool": "uniform",
                                                                      "ratios": sorted(set(ratios))}}, False)


def structures_of(outcome: SearchOutcome, spec) -> tuple[Structures, dict[int, int]]:
    """The PNP's distinct structures by ascending rate, and rate index → structure index."""
    widths, index = [], {}
    for entry in sorted(outcome.pool, key=lambda e: e.rate_index):
        w = dict(entry.widths)
        if w not in widths:
            widths.append(w)
        index[entry.rate_index] = widths.index(w)
    return Structures(spec, tuple(widths)), index


def run_ofar(job: OFARJob) -> dict:
    """Run ``job`` end to end (or continue it); returns the report (also ``report.json``)."""
    from ...supernet import recalibrate, resize, supernet_from
    from ...train import evaluate, read_checkpoint_meta
    from ...train.checkpoint import CheckpointError, load_weights
    from ...train.checkpoint import stem_in_channels
    from ...train.importance import importance_order
    from ...train.loop import TrainHistory
    from .data import CohortData

    set_threads(job.threads)
    log = _log(job)
    out = Path(job.out)
    recipe = begin_folder_run(job, "ofar", out, log=console.print)
    parent = load_parent(job.checkpoint, job.model)
    spec = parent.spec
    data = CohortData.load(job.data, job.data_dir, job.val_size, stream=job.stream, in_channels=stem_in_channels(parent),
                           resolution=max(job.resolutions) if job.resolutions else None,
                           train_images=job.train_images, val_images=job.val_images, test_images=job.test_images)
    resolutions = job.resolutions or default_resolutions(data.resolution)
    device = torch.device(job.torch_device)
    if spec.source:
        parent = imported_parent(parent, job, data, resolutions)
    seconds = PhaseSeconds(out / "seconds.json")
    timed = seconds.add

    # -- step 1: rates (every bad input fails here, before any training) -----------------------------------
    costs, plan = plan_rates(job, parent, resolutions)
    write_json_if_changed(out / "rates.json", plan.to_dict(), indent=2)
    by_label = {c.label: c for c in costs}
    log(f"[bold]ofar[/]: {len(plan.rates)} rates for {len(plan.targets)} (device, budget, resolution) constraints "
        f"on {', '.join(plan.full)}; resolutions {list(resolutions)}")

    train_set, val, test = data.train, data.val, data.test

    # -- search stage --------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    search_cfg = replace(job.search)
    if job.pool == "uniform":
        outcome = uniform_outcome(parent, plan, job.uniform_ratios)
    else:
        outcome = run_search(parent, train_set, plan, costs, search_cfg, out, device=device, progress=job.progress,
                             log=log, loader=data.train_loader(search_cfg.batch_size, search_cfg.seed))
    timed("search", t0, outcome.trained)
    warning = outcome.message(plan)
    if warning:
        log(f"[yellow]warning:[/] {warning}")
    structures, rate_to_structure = structures_of(outcome, spec)
    if job.pool == "uniform":
        log(f"uniform pool (US-Net baseline): {len(structures)} width multipliers, no search stage")
    else:
        log(f"PNP: {len(outcome.pool)} of {len(plan.rates)} rates, {len(structures)} distinct structures "
            f"(search stage: {outcome.epochs_run} epochs{', stopped early' if outcome.stopped_early else ''})")

    # -- joint training ------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    joint_cfg = replace(job.joint, resolutions=tuple(resolutions))
    order = importance_order(bn_gamma_scores(outcome.net))
    net = supernet_from(outcome.net, order, device=device)   # an OnnxSupernet for an imported model
    if joint_cfg.bn_mode is BNMode.PRIVATE:
        attach_private_bn(net, len(structures))
    identity = {"config": joint_cfg.to_dict(), "structures": [dict(w) for w in structures.widths],
                "search": _digest(outcome.history.get("config", {})), "search_step": outcome.history.get("step"),
                "train_size": len(train_set)}
    joint_ckpt = out / "joint.safetensors"
    complete = False
    if joint_ckpt.exists():
        meta = read_checkpoint_meta(joint_ckpt)
        if meta.get("ofar_joint") != identity:
            raise CheckpointError(f"{joint_ckpt} holds a joint training with other settings or another PNP; delete "
                                  "it (and bn-stats.safetensors, scores.json, networks/) or use another --out")
        complete = TrainHistory.from_dict(meta["history"]).complete
    if complete:
        load_weights(joint_ckpt, net)
        joint_history = read_checkpoint_meta(joint_ckpt)["history"]
    else:
        joint_history = train_joint(net, structures, train_set, joint_cfg, joint_ckpt, identity=identity,
                                    device=device, progress=job.progress,
                                    loader=data.train_loader(joint_cfg.batch_size, joint_cfg.seed),
                                    log=None if job.progress else log).to_dict()
    net.eval()
    timed("joint_training", t0, not complete)

    # -- BN statistics and held-out scores per (structure, resolution) -----------------------------------------
    t0 = time.perf_counter()
    pairs = [(j, r) for j in range(len(structures)) for r in resolutions]
    score_id = {"joint": _digest(identity), "step": joint_history.get("step"), "bn_images": job.bn_images,
                "val": len(val), "bn_mode": joint_cfg.bn_mode.value}
    stats: dict[str, dict] = {}
    missing: list = []
    if joint_cfg.bn_mode is BNMode.RECALIBRATED:
        stats_path = out / "bn-stats.safetensors"
        saved = _load_stats(stats_path, device) if stats_path.exists() else {}
        stats = {k: v for k, v in saved.items() if k.startswith(f"{score_id['joint']}:")}
        missing = [(j, r) for j, r in pairs if f"{score_id['joint']}:s{j}-r{r}" not in stats]
        if missing:
            calib = data.calibration(job.bn_images, seed=search_cfg.seed + 1)
            for j, r in missing:
                batches = [(resize(x, r).to(device), y) for x, y in calib]
                stats[f"{score_id['joint']}:s{j}-r{r}"] = recalibrate(net, structures.arch(j, r), batches)
            _save_stats(stats_path, stats)
    scores_path = out / "scores.json"
    scores = {}
    if scores_path.exists():
        saved = read_json(scores_path, recover="delete it to score the cohort again")
        if saved.get("identity") == score_id:
            scores = saved["scores"]
    n_scored = len(scores)
    for j, r in pairs:
        key = f"s{j}-r{r}"
        if key not in scores:
            bn = stats.get(f"{score_id['joint']}:{key}")
            loss, acc = _score(net, j, structures.arch(j, r), data.batches(val, r), bn, device)
            scores[key] = {"structure": j, "resolution": r, "val_loss": loss, "val_acc": acc}
    worked = len(scores) > n_scored or bool(missing)
    if worked or not scores_path.exists():
        atomic_write_json(scores_path, {"identity": score_id, "scores": scores}, indent=1)
    timed("bn_and_scoring", t0, worked)

    # -- selection per (device, budget) -------------------------------------------------------------------------
    choices, unmet = [], []
    width_rows = {r: np.array([[structures.widths[j][g] for g in spec.groups] for j in range(len(structures))])
                  for r in resolutions}
    predicted_of: dict[str, dict] = {}
    for label in plan.full:
        c = by_label[label]
        predicted = {(j, r): float(v) for r in resolutions for j, v in enumerate(c.costs(width_rows[r], r))}
        predicted_of[label] = predicted
        for b in plan.budgets[label]:
            fits = [p for p in pairs if predicted[p] <= b["value"] * (1 + 1e-9)]
            if not fits:
                best = min(pairs, key=lambda p: predicted[p])
                unmet.append({"device": label, "budget": b, "smallest": predicted[best],
                              "reason": "no PNP structure at any resolution fits (a rate that never stabilised?)"})
                continue
            j, r = max(fits, key=lambda p: (scores[f"s{p[0]}-r{p[1]}"]["val_acc"], -predicted[p]))
            choices.append({"device": label, "budget": b, "structure": j, "resolution": r,
                            "predicted": predicted[(j, r)]})
    if unmet:
        log(f"[yellow]warning:[/] {len(unmet)} budget(s) have no fitting (structure, resolution): "
            + "; ".join(f"{u['device']} {u['budget']['label']}" for u in unmet))

    # -- the closed loop: each latency choice on a device that is here lands on its budget as measured ----------
    landings: dict[int, object] = {}
    proposers: dict[int, Callable[[float], Proposal]] = {}
    if job.landing.land and job.measure:
        for i, ch in enumerate(choices):
            c = by_label[ch["device"]]
            if c.kind != "latency" or not _here(c)[0]:
                continue
            predicted = predicted_of[ch["device"]]

            def propose(target: float, predicted=predicted) -> Proposal:
                fits = [p for p in pairs if predicted[p] <= target]
                p = (max(fits, key=lambda p: (scores[f"s{p[0]}-r{p[1]}"]["val_acc"], -predicted[p])) if fits
                     else min(pairs, key=predicted.get))
                return Proposal(structures.arch(*p), predicted[p], target)

            start = Proposal(structures.arch(ch["structure"], ch["resolution"]), ch["predicted"], ch["budget"]["value"])
            result = common.land_on_device(spec, ch["budget"]["value"], propose, start, c.table, c.device, job.store,
                                           job.landing)
            j, r = next(p for p in pairs if structures.arch(*p) == result.arch)
            ch.update(structure=j, resolution=r, predicted=predicted[(j, r)])
            landings[i], proposers[i] = result, propose

    # -- export each chosen (structure, resolution) --------------------------------------------------------------
    t0 = time.perf_counter()
    wrote = False

    def export_network(j: int, r: int, folder: Path) -> dict:
        """The trained (structure ``j``, resolution ``r``) exported into ``folder`` (kept when done before)."""
        nonlocal wrote
        arch = structures.arch(j, r)
        folder.mkdir(parents=True, exist_ok=True)
        info_path = folder / "network.json"
        net_id = {**score_id, "arch": arch.to_dict(), "test": len(test)}
        info = read_json(info_path, recover="delete it to export that network again") if info_path.exists() else {}
        if not (info.get("identity") == net_id and exported(folder)):
            bn = stats.get(f"{score_id['joint']}:s{j}-r{r}")
            if joint_cfg.bn_mode is BNMode.PRIVATE:
                with net.ofar_bn.swapped_in(net, j):
                    small = net.extract(arch, device="cpu")
            else:
                small = net.extract(arch, bn, device="cpu")
            test_loss, test_acc = evaluate(small, data.batches(test, r))
            atomic_write_text(folder / "arch.json", arch.to_json())
            export_pruned(folder, small, arch)
            info = {"identity": net_id, "architecture": arch.to_dict(), "test_acc": test_acc,
                    "test_loss": test_loss, "test_images": len(test),
                    "files": {f: sha256_file(folder / f"pruned.{f}")[:24] for f in EXPORT_FORMATS}}
            atomic_write_json(info_path, info, indent=2)
            wrote = True
        return {**info, "folder": str(folder)}

    networks: dict[tuple[int, int], dict] = {}
    for i, ch in enumerate(choices):
        key = (ch["structure"], ch["resolution"])
        if key not in networks and i not in landings:
            networks[key] = export_network(*key, out / "networks" / f"s{key[0]}-r{key[1]}")

    # -- the shipped files land too (landing, step 5): each landed choice's file measured, and replaced by the
    #    next (structure, resolution) when it is outside the band; the chosen one is copied to its own folder ------
    shipped: dict[int, object] = {}
    chosen_network: dict[int, dict] = {}
    pair_of = {structures.arch(*p).to_json(): p for p in pairs}
    for i, landing in landings.items():
        ch, c = choices[i], by_label[choices[i]["device"]]
        start = Proposal(landing.arch, ch["predicted"], ch["budget"]["value"])
        if landing.chosen is not None:
            step = landing.steps[landing.chosen]
            start = Proposal(landing.arch, step.predicted_ms, step.target_ms)
        root = out / "networks" / f"{ch['device'].replace(':', '-')}-{ch['budget']['label']}"
        result = common.land_shipped(root, ch["budget"]["value"], proposers[i], start,
                                     lambda arch, folder: export_network(*pair_of[arch.to_json()], folder), c.table,
                                     c.device, job.store, job.landing, None, spec, NETWORK_FILES)
        j, r = pair_of[result.arch.to_json()]
        ch.update(structure=j, resolution=r, predicted=predicted_of[ch["device"]][(j, r)])
        shipped[i] = result
        chosen_network[i] = {**read_json(root / "network.json", recover="delete it to export that network again"),
                             "folder": str(root)}
    timed("export", t0, wrote)

    # -- measurement on the devices that are here ---------------------------------------------------------------
    meas_path = out / "measurements.json"
    measured: dict = read_json(meas_path, recover="delete it to measure again") if meas_path.exists() else {}
    how: dict[str, str] = {}
    for label in plan.full:
        c = by_label[label]
        here, why = _here(c) if job.measure else (False, "not measured (--no-measure)")
        how[label] = why
        if not here:
            continue
        fmt = "onnx" if base_device(c.device) == "host:onnxruntime" else "tflite"
        mine = sorted({(ch["structure"], ch["resolution"]) for i, ch in enumerate(choices)
                       if ch["device"] == label and i not in shipped})
        known = measured.setdefault(label, {})
        todo = [k for k in mine if known.get(f"s{k[0]}-r{k[1]}", {}).get("sha") != networks[k]["files"][fmt]
                or known.get(f"s{k[0]}-r{k[1]}", {}).get("fingerprint") != c.table.fingerprint]
        if todo:
            values = common.measure_shipped([Path(networks[k]["folder"]) for k in todo], c.table, c.device, job.store,
                                     job.progress)
            for k, v in zip(todo, values):
                known[f"s{k[0]}-r{k[1]}"] = {"sha": networks[k]["files"][fmt], "ms": float(v),
                                             "fingerprint": c.table.fingerprint}
            atomic_write_json(meas_path, measured, indent=2)

    # -- report ---------------------------------------------------------------------------------------------------
    cohort = []
    for i, ch in enumerate(choices):
        c, j, r = by_label[ch["device"]], ch["structure"], ch["resolution"]
        net_info, key = chosen_network.get(i) or networks[(j, r)], f"s{j}-r{r}"
        m = measured.get(ch["device"], {}).get(key, {}).get("ms") if how[ch["device"]] == "measured" else None
        if i in shipped:                            # its shipped file's repeated measurements
            m = shipped[i].measured_ms
        b = ch["budget"]
        entry = {"device": ch["device"], "table": c.table_path, "budget_label": b["label"],
                 "budget_ratio": b["ratio"], "resolution": r, "structure": j,
                 "arch": net_info["architecture"], "val_acc": scores[key]["val_acc"], "test_acc": net_info["test_acc"],
                 "folder": net_info["folder"], "measurement": how[ch["device"]]}
        if c.kind == "latency":
            entry.update({"budget_ms": b["value"], "predicted_ms": ch["predicted"], "measured_ms": m,
                          "measured_over_budget": None if m is None else m / b["value"] - 1,
                          "measured_over_predicted": None if m is None else m / ch["predicted"] - 1})
            entry["landing"] = landings[i].to_dict() if i in landings else None
            entry["shipped_landing"] = shipped[i].to_dict() if i in shipped else None
        else:
            entry.update({"budget_flops": b["value"], "predicted_flops": ch["predicted"]})
        cohort.append(entry)
    pnp = []
    for entry in outcome.pool:
        pnp.append({**entry.to_dict(), "structure": rate_to_structure[entry.rate_index]})
    report = {
        "format": REPORT_FORMAT, "model": spec.name, "method": "ofar", "checkpoint": str(job.checkpoint),
        "tables": list(job.tables), "data": data.name, "resolutions": list(resolutions),
        "devices": {label: {"kind": by_label[label].kind, "device": by_label[label].device,
                            "table": by_label[label].table_path, "full": plan.full[label],
                            "smallest": plan.smallest[label], "measurement": how[label]} for label in plan.full},
        "rates": plan.to_dict(),
        "pool": job.pool,
        "search": {"config": job.search.to_dict(), "epochs_run": outcome.epochs_run,
                   "stopped_early": outcome.stopped_early, "pnp": pnp, "unstable": outcome.unstable,
                   "warning": warning},
        "structures": [{"index": j, "widths": dict(w)} for j, w in enumerate(structures.widths)],
        "joint": {"config": joint_cfg.to_dict(), "steps": joint_history.get("step"),
                  "epochs": joint_history.get("epochs", [])},
        "scores": list(scores.values()),
        "cohort": cohort, "unmet": unmet,
        "seconds": seconds.by_phase,
        "images": {"train": len(train_set), "val": len(val), "test": len(test), "bn": job.bn_images},
        "recipe": recipe,
    }
    atomic_write_json(out / "report.json", report, indent=2)
    return report
