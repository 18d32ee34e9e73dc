"""JCW end to end: a trained checkpoint + a device table → a searched (widths, sparsity) Pareto front →
chosen architectures retrained with ADMM, exported (ONNX, sparse TFLite) and measured on the device.

The pieces are :mod:`.search` (the evolutionary search), :mod:`.evaluator` (the weight-sharing supernet, on
the core :mod:`latbench.supernet`, that scores candidates on held-out training data) and
:mod:`latbench.train.admm` (dense → ADMM → masked fine-tune). Loading, budgets, export and device
measurement are the jobs' shared plumbing (:mod:`latbench.methods.common`), so reports have the same fields
as the other methods' and compare directly.

Everything lives in ``job.out`` and a rerun continues where the last one stopped::

    state.json, history.jsonl     the search (generation, genomes, RNG; one line per generation)
    supernet.safetensors          the supernet after the last generation's training
    front.jsonl, frontier.png     the final Pareto set (with held-out accuracy) and the fronts by generation
    <label>/                      one folder per chosen architecture: arch.json, admm.safetensors (phase
                                  checkpoints, the final network once complete), pruned.onnx, pruned.tflite,
                                  report.json
    summary.json                  the job, the front and every chosen architecture's figures

>>> job = JCWJob(model="resnet56", checkpoint="runs/r56.safetensors", table="tables/t.parquet",
...              out="runs/jcw", budget_ratios=(0.7, 0.5, 0.3), device="host:litert")          # doctest: +SKIP
>>> summary = run_jcw(job)                                                                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
import pandas as pd
from annotated_types import Ge

from ...files import atomic_write_json, atomic_write_text, read_json, read_jsonl
from ...models.arch import Architecture
from ...recipe import Opt, aside_path, begin_folder_run
from ..landing import LandingConfig, Proposal, upper_bound_ms
from ...search.budget import BudgetError
from ...train.admm import ADMMConfig
from ..common import (FARM_HELP, Anchor, FullLatency, JobOptions, farm_as_device, check_shipped, check_torch_device, console, export_pruned, exported,
                      first, full_latency, land_on_device, land_shipped, load_parent, measure_architectures, network_report,
                      sample_batches, set_threads, with_batchnorm)
from .evaluator import SupernetConfig
from .search import SearchConfig, SearchResult

SUMMARY_FORMAT = "latbench-jcw-job/1"
#: Report fields produced by the retraining (kept from an earlier run when the retraining is skipped).
TRAINING_FIELDS = ("test_accuracy", "test_loss", "test_images", "admm", "admm_history",
                   "achieved_sparsity_max_error")
#: Prediction error accepted as "on target" in reports (the table acceptance bar for single networks).
PREDICTION_TOLERANCE = 0.05
#: What a chosen architecture's folder ships of the network its landing chose (copied from its candidate folder).
SHIPPED_FILES = ("admm.safetensors", "pruned.onnx", "pruned.tflite", "arch.json", "report.json")


@dataclass(frozen=True, kw_only=True)
class JCWJob(JobOptions):
    """One JCW run. Choose architectures from the front either by latency budgets (``budgets_ms`` and/or
    ``budget_ratios`` of the full network's latency — measured on ``device`` when one is given, else
    predicted — each giving the most accurate front member within it) or by ``pick`` (that many members
    spread over the front's latency range; 0 runs the search only).

    ``search``, ``supernet`` and ``admm`` are the three stages' settings; ``search.resolution`` defaults
    to the data's. ``anchor`` seeds the first population with the full network and the narrowest dense
    one, so the front spans the whole reachable latency range from the start. ``measure_front`` also
    measures every front member on ``device`` (prediction error over the front, not just the picks).
    ``torch_device`` is where the supernet and the retraining run (cpu, cuda, mps); ``threads`` the torch
    threads of this process (the job is the application: the library never sets them; default all cores).
    The options every job takes come from :class:`~latbench.methods.common.JobOptions`.
    """

    table: Annotated[str, Opt(help="the device's latency table (the search's latency objective)", input=True)]
    budgets_ms: Annotated[tuple[float, ...], Opt(flag="budget-ms", one_of="budget", help="latency budget in ms (repeatable): the most "
                                                                        "accurate front member within it")] = ()
    budget_ratios: Annotated[tuple[float, ...], Opt(flag="budget-ratio", one_of="budget", help="budget as a fraction of the full "
                                                    "network's latency (measured with --device, else predicted; "
                                                    "repeatable)")] = ()
    pick: Annotated[int | None, Opt(one_of="budget", help="retrain N front members spread over its latency range (0: search only)")] = None
    search: Annotated[SearchConfig, Opt(flag="")] = field(default_factory=lambda: SearchConfig(population=32,
                                                                                               generations=20))
    supernet: Annotated[SupernetConfig, Opt(flag="supernet")] = field(
        default_factory=lambda: SupernetConfig(steps_per_generation=100, eval_size=1000, bn_batches=2))
    admm: Annotated[ADMMConfig, Opt(flag="admm")] = field(
        default_factory=lambda: ADMMConfig(dense_epochs=1, admm_epochs=2, finetune_epochs=1, eval_size=1000))
    device: Annotated[str | None, Opt(help="measure the full network and every retrained one", runtime=True)] = None
    farm: Annotated[str | None, Opt(help=FARM_HELP, runtime=True)] = None
    measure_front: Annotated[bool, Opt(help="with --device, also measure every front member", runtime=True)] = False
    anchor: Annotated[bool, Opt(help="start the population with the full and the narrowest network")] = True
    bn_images: Annotated[int, Ge(1), Opt(help="images to recalibrate BN of a supernet slice before retraining")] = 512
    torch_device: Annotated[str, Opt(help="torch device for the supernet and the retraining (cpu, cuda, mps)",
                                     runtime=True)] = "cpu"
    landing: Annotated[LandingConfig, Opt(flag="")] = field(default_factory=LandingConfig)

    def __post_init__(self) -> None:
        farm_as_device(self)
        object.__setattr__(self, "budgets_ms", tuple(dict.fromkeys(float(b) for b in self.budgets_ms)))
        object.__setattr__(self, "budget_ratios", tuple(dict.fromkeys(float(r) for r in self.budget_ratios)))
        budgets = bool(self.budgets_ms or self.budget_ratios)
        if budgets == (self.pick is not None):
            raise BudgetError("choose the architectures to retrain: give --pick N (0: search only), or one or more "
                              "--budget-ms / --budget-ratio (not both kinds)")
        if self.pick is not None and self.pick < 0:
            raise BudgetError(f"--pick must be ≥ 0, got {self.pick}")
        bad = [b for b in self.budgets_ms if not np.isfinite(b) or b <= 0]
        if bad:
            raise BudgetError(f"--budget-ms must be positive, got {bad}")
        bad = [r for r in self.budget_ratios if not 0 < r <= 1]
        if bad:
            raise BudgetError(f"--budget-ratio must be in (0, 1], got {bad}")
        if self.measure_front and not self.device:
            raise BudgetError("--measure-front needs --device")
        if self.bn_images < 1:
            raise ValueError(f"bn_images must be ≥ 1, got {self.bn_images}")
        check_torch_device(self.torch_device)

    @property
    def method(self) -> str:
        return "jcw-channel-only" if self.search.channel_only else "jcw"


# ---- choosing architectures from the front ------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    """A front member chosen for retraining; ``label`` names its folder."""

    label: str
    architecture: Architecture
    front_index: int
    budget_ms: float | None = None
    budget_ratio: float | None = None

    def budget(self) -> dict:
        """The report's budget entry (the same shape as the other pruning methods')."""
        if self.budget_ms is None:
            return {"kind": "pick", "value": None, "ratio": None, "label": self.label}
        return {"kind": "latency", "value": self.budget_ms, "ratio": self.budget_ratio, "label": self.label}


def spread_picks(latency_ms: Sequence[float], n: int) -> list[int]:
    """Indices of ``n`` members spread over the latency range: ``n`` targets evenly spaced from the fastest
    to the slowest member, each taking the nearest member not taken yet (all members if there are ≤ n)."""
    latency = np.asarray(latency_ms, dtype=float)
    if n >= len(latency):
        return list(np.argsort(latency, kind="stable"))
    taken: list[int] = []
    for target in np.linspace(latency.min(), latency.max(), n):
        distance = np.abs(latency - target)
        distance[taken] = np.inf
        taken.append(int(np.argmin(distance)))
    return sorted(taken, key=lambda i: latency[i])


def best_within(latency_ms: Sequence[float], accuracy: Sequence[float], loss: Sequence[float],
                budget_ms: float) -> int | None:
    """Index of the most accurate member (then the lowest loss) with latency ≤ ``budget_ms``; None if none fits."""
    latency, accuracy, loss = (np.asarray(v, dtype=float) for v in (latency_ms, accuracy, loss))
    inside = np.flatnonzero(latency <= budget_ms)
    if inside.size == 0:
        return None
    return int(inside[np.lexsort((loss[inside], -accuracy[inside]))[0]])


def choose(front: pd.DataFrame, job: JCWJob, full_ms: float) -> list[Choice]:
    """The architectures ``job`` asks for. ``front``: one row per member (``architecture``, ``latency_ms``,
    ``val_accuracy``, ``loss``); ``full_ms``: the latency ratio budgets refer to. A budget no member
    meets is an error naming the fastest member (before any retraining starts)."""
    latency = front.latency_ms.to_numpy()
    if job.pick is not None:
        picks = spread_picks(latency, job.pick) if job.pick else []
        return [Choice(f"pick-{k + 1}-of-{len(picks)}", front.architecture.iloc[i], i) for k, i in enumerate(picks)]
    budgets = [(b, None, f"budget-{b:g}ms") for b in job.budgets_ms]
    budgets += [(r * full_ms, r, f"budget-{r:g}") for r in job.budget_ratios]
    choices, unmet = [], []
    for budget_ms, ratio, label in budgets:
        i = best_within(latency, front.val_accuracy, front.loss, budget_ms)
        if i is None:
            unmet.append(f"{label} ({budget_ms:.4g} ms)")
        else:
            choices.append(Choice(label, front.architecture.iloc[i], i, budget_ms, ratio))
    if unmet:
        fastest = float(latency.min())
        raise BudgetError(f"no architecture of the front meets {', '.join(unmet)}: the fastest is {fastest:.4g} ms "
                          f"({fastest / full_ms:.0%} of the full network). Lower the width bounds "
                          "(--min-width-ratio, --coupled-min-width-ratio) or relax the budget; the search is saved "
                          "and resumes")
    return choices


# ---- the front with held-out scores -------------------------------------------------------------------

def _previous_scores(path: Path) -> dict[Architecture, tuple[int, float, float]]:
    """(generation, held-out loss, accuracy) per architecture of an earlier ``front.jsonl``: a rerun that ends
    at the same generation reuses them instead of scoring the front again."""
    if not path.exists():
        return {}
    scores = {}
    for row in read_jsonl(path, recover="delete it to score the front again"):
        if "val_accuracy" in row:
            scores[Architecture.from_dict(row)] = (int(row["generation"]), float(row["val_loss"]),
                                                   float(row["val_accuracy"]))
    return scores


def scored_front(result: SearchResult, evaluator,
                 previous: dict[Architecture, tuple[int, float, float]] | None = None) -> pd.DataFrame:
    """``result``'s final front with every member's held-out loss and accuracy from the supernet (``previous``
    scores of the same final generation are reused)."""
    front = result.front_frame().reset_index(drop=True)
    generation, previous = result.final.generation, previous or {}
    scores = []
    for arch in front.architecture:
        if arch in previous and previous[arch][0] == generation:
            scores.append(previous[arch][1:])
        else:
            s = evaluator.score(arch)
            scores.append((s.loss, s.accuracy))
    return front.assign(val_loss=[s[0] for s in scores], val_accuracy=[s[1] for s in scores])


def write_front(path: Path, front: pd.DataFrame, generation: int) -> Path:
    """The Pareto set as JSON lines: architecture fields, predicted latency (absolute and relative to the full
    network), the search's objective ``loss``, held-out ``val_loss``/``val_accuracy``, densities and, when
    measured, ``measured_ms``."""
    lines = []
    for row in front.itertuples(index=False):
        line = {**row.architecture.to_dict(), "latency_ms": float(row.latency_ms),
                "relative_latency": float(row.relative_latency), "loss": float(row.loss),
                "val_loss": float(row.val_loss), "val_accuracy": float(row.val_accuracy),
                "density": float(row.density), "weight_density": float(row.weight_density), "generation": generation}
        if "measured_ms" in front.columns:
            line["measured_ms"] = float(row.measured_ms)
        lines.append(json.dumps(line) + "\n")
    return atomic_write_text(path, "".join(lines))


# ---- retraining one architecture ----------------------------------------------------------------------

def admm_config_for(arch: Architecture, config: ADMMConfig) -> ADMMConfig:
    """The retraining settings of ``arch``: an architecture without sparse convs has nothing to prune, so its
    ADMM epochs are trained dense — every architecture gets the same number of steps (with ``max_steps``
    unset), and channel-only results are not handicapped by a shorter training."""
    if any(s > 0 for s in arch.sparsity.values()) or config.admm_epochs == 0:
        return config
    return replace(config, dense_epochs=config.dense_epochs + config.admm_epochs, admm_epochs=0)


def _finished_training(folder: Path, arch: Architecture, admm: ADMMConfig, test_images: int) -> dict | None:
    """The training fields of the folder's report if it holds this architecture retrained with these
    settings and scored on as many test images, and its exports exist (a rerun then skips it); else None."""
    path = folder / "report.json"
    if not path.exists() or not exported(folder):
        return None
    report = read_json(path, recover="delete it to redo that architecture's retraining")
    if (report.get("architecture") != arch.to_dict() or report.get("admm") != admm.identity()
            or report.get("test_images") != test_images):
        return None
    return {k: report[k] for k in TRAINING_FIELDS}


def _shipped_archs(folder: Path) -> list[Architecture]:
    """The architectures retrained for the shipped files' landing below ``folder``."""
    return [Architecture.load(p, recover="delete that folder") for p in sorted(folder.glob("candidates/*/arch.json"))]


def _claim_folder(folder: Path, arch: Architecture) -> None:
    """Create ``folder`` for ``arch``; refuse a folder that holds another architecture (the front changed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "arch.json"
    if path.exists() and Architecture.load(path, recover="delete that folder or use another --out") != arch:
        raise ValueError(f"{folder} holds another architecture (the front changed since it was retrained, e.g. "
                         "more generations); delete that folder or use another --out")
    atomic_write_text(path, arch.to_json())


def retrain(arch: Architecture, folder: Path, evaluator, data, test, job: JCWJob,
            done: dict[Architecture, Path]) -> dict:
    """Retrain ``arch`` in ``folder``: the supernet slice of ``evaluator`` (BN recalibrated) at its widths, dense → ADMM to
    its sparsities → masked fine-tune (resumable from ``admm.safetensors``), then exports. ``done`` maps
    architectures already retrained in this run to their checkpoints (a shared checkpoint is copied, not
    retrained). Returns the report's training fields."""
    from ...train import evaluate
    from ...train.admm import admm_retrain

    config = replace(admm_config_for(arch, job.admm), progress=job.progress)
    checkpoint = folder / "admm.safetensors"
    if arch in done and not checkpoint.exists():
        shutil.copyfile(done[arch], checkpoint)
    device = evaluator.device
    bn = evaluator.calibrate(arch, sample_batches(data.train, job.bn_images, batch=128, seed=job.search.seed + 1))
    before = evaluate(evaluator.extract(arch, bn, sparse=True), test, device=device)   # the slice, as scored
    net = evaluator.extract(arch, bn, sparse=False)                      # dense start for the retraining
    net, history = admm_retrain(net, arch, data, config, checkpoint=checkpoint, device=device)
    done[arch] = checkpoint
    after = evaluate(net, test, device=device)
    export_pruned(folder, net.cpu(), arch)                               # exports read CPU tensors
    requested = {name: float(arch.sparsity.get(name, 0.0)) for name in history.sparsity}
    training = {"test_accuracy": {"pruned": before[1], "finetuned": after[1]},
            "test_loss": {"pruned": before[0], "finetuned": after[0]}, "test_images": len(test),
            "admm": config.identity(), "admm_history": history.to_dict(),
            "achieved_sparsity_max_error": max((abs(history.sparsity[n] - s) for n, s in requested.items()),
                                               default=0.0)}
    # Written at once, so a run stopped before the device measurement keeps the retraining.
    atomic_write_json(folder / "report.json", {"architecture": arch.to_dict(), **training}, indent=2)
    return training


# ---- the job ------------------------------------------------------------------------------------------

def _prediction_error(predicted: float, measured: float | None) -> dict:
    if measured is None:
        return {"measured_over_predicted": None, "within_5pct": None}
    error = measured / predicted - 1
    return {"measured_over_predicted": error, "within_5pct": bool(abs(error) <= PREDICTION_TOLERANCE)}


def run_jcw(job: JCWJob) -> dict:
    """Run ``job`` end to end (or continue it); writes everything to ``job.out`` and returns the summary
    (also ``summary.json``). Every chosen architecture gets a ``report.json`` in its folder."""
    from ...data import load_dataset
    from ...models.zoo import get_model
    from ...predictor import Predictor
    from ...tables.table import LatencyTable
    from .evaluator import SupernetEvaluator
    from .search import JCWSearch

    set_threads(job.threads)
    out = Path(job.out)
    recipe = begin_folder_run(job, str(job.method), out, log=console.print)
    parent = load_parent(job.checkpoint, job.model)
    data = load_dataset(job.data, job.data_dir)
    parent = with_batchnorm(parent, sample_batches(data.train, job.bn_images, seed=job.search.seed + 1))
    if job.search.resolution not in (None, data.resolution):
        raise ValueError(f"the search's resolution {job.search.resolution} differs from the data's "
                         f"{data.resolution}; the retrained network runs at the data's resolution")
    # The table was measured with the zoo's classifier; the parent's input channels are what the device runs (the
    # closed loop measures what ships). Architectures only name widths and sparsities. An imported model's spec is
    # its file's, the one its table was profiled from.
    spec = parent.spec if parent.spec.source else replace(get_model(job.model), in_channels=parent.spec.in_channels)
    table = LatencyTable.load(job.table)
    predictor = Predictor(spec, table)
    config = replace(job.search, resolution=data.resolution)
    if job.anchor and not config.initial:
        config = replace(config, initial=_anchors(spec, predictor, config))

    evaluator = SupernetEvaluator(parent, data, replace(job.supernet, progress=job.progress),
                                  checkpoint=out / "supernet.safetensors", device=job.torch_device)
    search = JCWSearch(spec, predictor, evaluator, config)
    measured_full = full_latency(spec, data.resolution, table, None, job.device, job.store, job.progress).measured
    beside = Anchor(Architecture.full(spec, data.resolution), measured_full, spec) if measured_full else None
    previous = _previous_scores(out / "front.jsonl")        # read before the search rewrites the file
    console.print(f"[bold]{job.method}[/]: population {config.population}, {config.generations} generations, "
                  f"{search.encoding.dim} genes ({len(search.encoding.sparse_layers)} sparsity genes)")
    result = search.run(out, progress=job.progress)
    full = FullLatency(measured_full, result.full_latency_ms)
    generation = result.final.generation
    front = scored_front(result, evaluator, previous)
    result.plot_frontier(out / "frontier.png", title=f"{spec.name} {job.method} on {table.meta.get('device', '?')}: "
                                                     "supernet loss vs predicted latency by generation")
    write_front(out / "front.jsonl", front, generation)           # kept even if a budget cannot be met
    choices = choose(front, job, full.reference)
    if job.measure_front:
        front = front.assign(measured_ms=measure_architectures(spec, list(front.architecture), table, job.device,
                                                               job.store, job.progress))
        write_front(out / "front.jsonl", front, generation)
    console.print(f"front: {len(front)} architectures, {front.latency_ms.min():.3g}–{front.latency_ms.max():.3g} ms "
                  f"predicted (full network {result.full_latency_ms:.3g} ms); retraining {len(choices)}")
    landings, candidates, propose = {}, front.assign(grown_from=[None] * len(front)), None
    if job.device and job.landing.land:
        choices, landings, candidates, propose = _land_choices(choices, front, search, result, evaluator, spec,
                                                               table, job, beside)

    test = first(data.test, job.test_images)
    reports, done, shipped = {}, {}, {}

    def ship(arch: Architecture, folder: Path) -> None:
        """``arch`` retrained into ``folder`` (kept when an earlier run finished it) and exported."""
        _claim_folder(folder, arch)
        name = folder.relative_to(out)
        if _finished_training(folder, arch, admm_config_for(arch, job.admm), len(test)) is None:
            console.print(f"{name}: retraining ({arch.widths})")
            retrain(arch, folder, evaluator, data, test, job, done)
        else:
            console.print(f"{name}: finished earlier, kept")
        done.setdefault(arch, folder / "admm.safetensors")

    measured, repeats = {}, {}
    for i, choice in enumerate(choices):
        folder, landing = out / choice.label, landings.get(choice.label)
        if landing is not None and landing.chosen is not None:    # the shipped file lands too (landing, step 5)
            step, arch = landing.steps[landing.chosen], choice.architecture
            previous = folder if _finished_training(folder, arch, admm_config_for(arch, job.admm), len(test)) \
                else None                           # an earlier run retrained the loop's choice there
            outcome = land_shipped(folder, choice.budget_ms, propose, Proposal(arch, step.predicted_ms,
                                                                               step.target_ms), ship, table,
                                   job.device, job.store, job.landing, beside, spec, SHIPPED_FILES, previous)
            shipped[choice.label], arch = outcome, outcome.arch
            index = next(k for k, a in enumerate(candidates.architecture) if a == arch)
            choices[i] = choice = replace(choice, architecture=arch, front_index=index)
            repeats[choice.label] = outcome.repeats
        else:
            ship(choice.architecture, folder)
            if job.device:                          # the file we ship, measured again: its spread counts
                repeats[choice.label] = check_shipped(folder, table, job.device, job.store,
                                                      job.landing.repeats if landing else 1, job.progress, beside)
        reports[choice.label] = _finished_training(folder, choice.architecture,
                                                   admm_config_for(choice.architecture, job.admm), len(test))
        if repeats.get(choice.label):               # none: the device cannot be reached
            measured[choice.label] = float(np.median(repeats[choice.label]))
    for choice in choices:
        arch, row, training = choice.architecture, candidates.iloc[choice.front_index], reports[choice.label]
        predicted = float(row.latency_ms)
        measured_ms = measured.get(choice.label)
        tested = {k: (training["test_loss"][k], training["test_accuracy"][k]) for k in ("pruned", "finetuned")}
        reports[choice.label] = report = {
            **training,
            **network_report(spec=spec, method=job.method, checkpoint=job.checkpoint, table=job.table,
                             device=job.device, budget=choice.budget(), full=full, arch=arch, predicted_ms=predicted,
                             measured_ms=measured_ms, test_images=len(test), **tested),
            "data": data.name, "label": choice.label,
            **_prediction_error(predicted, measured_ms),
            "relative_latency": predicted / full.predicted,
            "density": float(row.density), "weight_density": float(row.weight_density),
            "supernet": {"objective": job.supernet.objective, "loss": float(row.loss),
                         "val_loss": float(row.val_loss), "val_accuracy": float(row.val_accuracy)},
            "search_seconds": result.timing.total_s,
            "search": {"generations": generation, "population": config.population, "front_size": len(front),
                       "channel_only": config.channel_only},
            # None: a member of the front; (i, j): grown from member i towards member j (front.jsonl's order)
            "between_front_members": None if row.grown_from is None else [int(k) for k in row.grown_from],
            "shipped_repeats_ms": repeats.get(choice.label, []),
            "measured_upper_ms": upper_bound_ms(repeats[choice.label]) if repeats.get(choice.label) else None,
            "within_budget": (upper_bound_ms(repeats[choice.label]) <= choice.budget_ms
                              if repeats.get(choice.label) and choice.budget_ms is not None else None),
            "landing": landings[choice.label].to_dict() if choice.label in landings else None,
            "shipped_landing": shipped[choice.label].to_dict() if choice.label in shipped else None,
            "recipe": recipe,
        }
        atomic_write_json(out / choice.label / "report.json", report, indent=2)

    summary = _summary(job, config, result, front, reports, measured_full, evaluator, recipe)
    atomic_write_json(out / "summary.json", summary, indent=2)
    return summary


def _land_choices(choices: list[Choice], front: pd.DataFrame, search, result: SearchResult, evaluator, spec, table,
                  job: JCWJob, beside: Anchor | None = None) -> tuple[list[Choice], dict, pd.DataFrame, object]:
    """Each budget's choice landed on its budget as measured (:mod:`latbench.methods.landing`), widening or
    narrowing *along the front*: a target proposes the most accurate member predicted within it, grown towards
    the next slower member as far as the target allows (:meth:`JCWSearch.between`), so the loop is not limited
    to the front's gaps. Returns the landed choices, their landings, the front with the grown architectures
    appended (scored by the supernet like the members; ``grown_from`` names the two members they lie between)
    and the proposer (the shipped files' landing goes on with it). A folder retrained earlier for another
    architecture (a run without the device) is moved aside, not lost."""
    candidates = front.assign(grown_from=[None] * len(front))
    latency = front.latency_ms.to_numpy()

    def propose(target: float) -> Proposal:
        i = best_within(latency, front.val_accuracy, front.loss, target)
        slower = np.flatnonzero(latency > target)
        if i is None or not slower.size:            # nothing within the target, or the full network fits
            i = int(np.argmin(latency)) if i is None else i
            return Proposal(front.architecture.iloc[i], float(latency[i]), target)
        j = int(slower[np.argmin(latency[slower])])
        pop, predicted = search.between(front.architecture.iloc[i], front.architecture.iloc[j], target)
        arch = search.encoding.architectures(pop)[0]
        if arch not in set(candidates.architecture):
            loss, score = float(evaluator.evaluate([arch])[0]), evaluator.score(arch)    # the search's objective
            row = result.frame(pop, [predicted], [loss]).assign(val_loss=score.loss, val_accuracy=score.accuracy,
                                                                 grown_from=[(i, j)])
            candidates.loc[len(candidates)] = row.iloc[0]
        return Proposal(arch, predicted, target)

    landed, landings = [], {}
    for choice in choices:
        if choice.budget_ms is None:                # picks spread over the front have no budget to land on
            landed.append(choice)
            continue
        outcome = land_on_device(spec, choice.budget_ms, propose, None, table, job.device, job.store, job.landing,
                                 beside)
        index = next(i for i, a in enumerate(candidates.architecture) if a == outcome.arch)
        landings[choice.label] = outcome
        landed.append(replace(choice, architecture=outcome.arch, front_index=index))
        folder = Path(job.out) / choice.label
        if (folder / "arch.json").exists() and Architecture.load(folder / "arch.json", recover="delete that folder") \
                not in {outcome.arch, *_shipped_archs(folder)}:
            aside = aside_path(folder, "unlanded")
            folder.rename(aside)
            console.print(f"{choice.label}: landed on another architecture; the earlier retraining moved to {aside.name}")
        console.print(f"{choice.label}: landed ({outcome.status}) after {len(outcome.steps)} step(s)")
    return landed, landings, candidates, propose


def _anchors(spec, predictor, config: SearchConfig) -> tuple[Architecture, ...]:
    """The full network and the narrowest dense one within the search's bounds (the slow and fast ends)."""
    from .search import ArchitectureEncoding

    encoding = ArchitectureEncoding.for_search(spec, predictor, config)
    narrowest = encoding.architectures(encoding.decode(np.zeros((1, encoding.dim))))[0]
    return (Architecture.full(spec, encoding.resolution), narrowest)


def _summary(job: JCWJob, config: SearchConfig, result: SearchResult, front: pd.DataFrame, reports: dict,
             measured_full: float | None, evaluator, recipe: dict) -> dict:
    """summary.json: the job, the search, the front's prediction check and one line per chosen architecture."""
    rows = [{k: r[k] for k in ("label", "budget", "predicted_ms", "measured_ms", "measured_over_predicted",
                               "within_5pct", "relative_latency", "density", "weight_density", "test_accuracy",
                               "achieved_sparsity_max_error")} for r in reports.values()]
    front_check = None
    if "measured_ms" in front.columns:
        error = front.measured_ms / front.latency_ms - 1
        front_check = {"n": len(front), "within_5pct": float((error.abs() <= PREDICTION_TOLERANCE).mean()),
                       "mape": float(error.abs().mean()), "mean_error": float(error.mean())}
    return {
        "format": SUMMARY_FORMAT, "model": job.model, "method": job.method, "checkpoint": job.checkpoint,
        "table": job.table, "device": job.device, "data": job.data,
        "search": {**{k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k != "initial"},
                   "anchored": bool(config.initial), "generations_done": result.final.generation,
                   "seconds": result.timing.total_s, "timing_shares": result.timing.shares()},
        "supernet": {**json.loads(json.dumps(job.supernet.identity())), "updates": evaluator.updates},
        "full_latency_ms": {"predicted": result.full_latency_ms, "measured": measured_full},
        "front": {"size": len(front), "file": "front.jsonl", "plot": "frontier.png",
                  "latency_ms": [float(front.latency_ms.min()), float(front.latency_ms.max())],
                  "mean_density": float(front.density.mean()), "prediction_check": front_check},
        "architectures": rows,
        "recipe": recipe,
    }


__all__ = ["Choice", "JCWJob", "PREDICTION_TOLERANCE", "admm_config_for", "best_within", "choose", "retrain",
           "run_jcw", "scored_front", "spread_picks", "write_front"]
