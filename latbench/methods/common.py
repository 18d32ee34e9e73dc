"""What every pruning job shares, so the four methods are run and reported on equal terms.

A job (:mod:`latbench.methods.lcp.job`, :mod:`~latbench.methods.jcw.job`, :mod:`~latbench.methods.sp.job`,
:mod:`~latbench.methods.ofar.job`) takes a trained checkpoint, a device table and budgets, and goes
checkpoint → budget → the method's search (and training) → retraining → export → measurement → report.
The method-specific steps live with each method; the steps around them live here, once:

* :class:`JobOptions`, :class:`SingleBudgetJob` — the options every job takes (and LcP's and SP's one budget);
* :func:`set_threads`, :func:`check_torch_device` — the application's settings (library code never sets
  thread counts; jobs are the application);
* :func:`load_parent` — the trained full network, checked against the model asked for;
* :class:`BudgetRequest` and :class:`FullLatency` — one budget given as ms, a ratio of the full network's
  latency (measured on the device when one is given, else predicted), FLOPs or parameters, resolved to a
  :class:`~latbench.search.budget.Budget`;
* :func:`sample_batches` — fixed random samples of training images (fitness, BN recalibration);
* :class:`FinetuneRecipe` — the one fine-tuning recipe through the one SGD loop;
* :func:`export_pruned` / :func:`exported` — ``pruned.onnx`` and ``pruned.tflite`` of a network;
* :func:`measure_architectures` / :func:`measure_shipped` / :func:`check_table_device` — the device;
* :func:`network_report` — the report fields every method writes for one pruned network.
"""
from __future__ import annotations

import contextlib
import hashlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from annotated_types import Ge, Gt
from rich.console import Console

from ..devices.base import DeviceUnreachable
from ..files import atomic_write_bytes, write_text_if_changed
from ..models.arch import Architecture
from ..models.spec import ModelSpec
from ..recipe import Opt, aside_path
from ..train.loop import Schedule
from ..search.budget import Budget, BudgetError, CostGrid
from ..tables.table import LatencyTable

console = Console(stderr=True)
#: The files every job ships per pruned network, ``pruned.<format>``.
EXPORT_FORMATS = ("onnx", "tflite")


# ---- the options every job takes ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """What every job is given: the ``model`` of the trained ``checkpoint``, the folder ``out`` it writes
    (and resumes from), the data set, the measurement ``store``, how many test images to report on (None:
    all), the torch ``threads`` of this process (the job is the application; see :func:`set_threads`) and
    whether to show progress bars."""

    model: Annotated[str, Opt(help="zoo model of the checkpoint, or an ONNX file (the model it holds, with its "
                                  "weights)")] = "resnet56"
    checkpoint: Annotated[str | None, Opt(help="trained full network (.safetensors from `latbench train`); an "
                                               "ONNX --model is its own", input=True)] = None
    out: Annotated[str, Opt(help="folder for everything the job writes (it resumes from there)")]
    data: Annotated[str, Opt(help="data set: fashion-mnist, mnist, cifar10, cifar100 or imagefolder")] = "fashion-mnist"
    data_dir: Annotated[str | None, Opt(help="folder with the data set files (default: its usual place)")] = None
    store: Annotated[str, Opt(help="measurement store for --device", runtime=True)] = "runs/measurements.db"
    test_images: Annotated[int | None, Ge(1), Opt(help="report accuracy on the first N test images (default: all)")] = None
    threads: Annotated[int | None, Ge(1), Opt(help="torch threads of this process", runtime=True)] = None
    progress: Annotated[bool, Opt(help="show progress bars", runtime=True)] = True


FARM_HELP = ("measure on a farm instead of --device: its device group whose fingerprint is the table's, the work "
             "spread over the group's units (README, \"Many phones\")")


def farm_as_device(job) -> None:
    """A job's ``farm`` (a farm file) becomes its measurement ``device``: the farm group of the table's
    fingerprint (``farm:FILE?group=…``), so every measurement of the job goes through the farm."""
    if not job.farm:
        return
    if job.device and not job.device.startswith("farm:"):
        raise ValueError(f"give --farm or --device, not both (got --device {job.device})")
    from ..farm.device import farm_device_spec
    from ..tables.table import LatencyTable

    group = LatencyTable.load(job.table).fingerprint if job.table and Path(job.table).exists() else None
    object.__setattr__(job, "device", farm_device_spec(job.farm, group))


@dataclass(frozen=True, kw_only=True)
class SingleBudgetJob(JobOptions):
    """A job that prunes for exactly one budget (LcP, SP): ``budget_ms`` (latency), ``budget_ratio`` (of the
    full network's latency: measured on ``device`` when one is given, else predicted from ``table``),
    ``budget_flops`` or ``budget_params``; ``device`` measures the full and the pruned network."""

    table: Annotated[str | None, Opt(help="the device's latency table (needed for latency budgets)", input=True)] = None
    budget_ms: Annotated[float | None, Gt(0), Opt(one_of="budget", help="latency budget in ms")] = None
    budget_ratio: Annotated[float | None, Opt(one_of="budget", help="latency budget as a fraction of the full network (measured "
                                                   "with --device, else predicted)")] = None
    budget_flops: Annotated[float | None, Gt(0), Opt(one_of="budget", help="budget in multiply-accumulates")] = None
    budget_params: Annotated[float | None, Gt(0), Opt(one_of="budget", help="budget in parameters")] = None
    device: Annotated[str | None, Opt(help="measure the full and the pruned network here", runtime=True)] = None
    farm: Annotated[str | None, Opt(help=FARM_HELP, runtime=True)] = None

    def __post_init__(self) -> None:
        farm_as_device(self)
        self.budget.check(self.table, self.device)

    @property
    def budget(self) -> "BudgetRequest":
        return BudgetRequest(self.budget_ms, self.budget_ratio, self.budget_flops, self.budget_params)


# ---- the application's settings -------------------------------------------------------------------------

def set_threads(threads: int | None, *, all_cores: bool = True) -> None:
    """Torch threads of this process: ``threads``, else every core this process may use (``all_cores``) or
    torch's own default. Jobs and the CLI call this; library code never sets thread counts."""
    from ..train.loop import cpu_cores

    if threads or all_cores:
        torch.set_num_threads(threads or cpu_cores())


def check_torch_device(name: str) -> torch.device:
    """``name`` as a torch device, refused up front when this torch build or machine lacks it."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--torch-device {name!r}: {err}") from err
    missing = {"cuda": lambda: not torch.cuda.is_available(), "mps": lambda: not torch.backends.mps.is_available()}
    if device.type in missing and missing[device.type]():
        raise ValueError(f"--torch-device {name}: this torch build or machine has no {device.type} device; use cpu")
    return device


# ---- the checkpoint ------------------------------------------------------------------------------------

def load_parent(checkpoint: str | Path | None, model: str):
    """The trained full network of ``checkpoint`` (a :class:`~latbench.models.GraphNet`, eval mode); refused
    when it holds another model or an already pruned (narrower or sparse) network. An imported model
    (``model`` an ONNX file) is its own parent — the file's weights (an :class:`~latbench.models.onnx_torch.OnnxNet`)
    — unless ``checkpoint`` holds a network of it trained since."""
    from ..models.zoo import get_model
    from ..train import load_checkpoint

    if str(model).endswith(".onnx"):
        from ..api import load_model
        from ..models.onnx_torch import full_network

        spec = load_model(str(model))
        if not checkpoint:
            return full_network(spec).eval()
    elif not checkpoint:
        raise ValueError(f"the zoo model {model} needs --checkpoint: a trained full network (latbench train)")
    else:
        spec = get_model(model)
    parent, arch, _ = load_checkpoint(checkpoint)
    if parent.spec.name != spec.name:
        raise ValueError(f"{checkpoint} holds a {parent.spec.name}, not a {model}")
    if arch.widths != dict(spec.groups) or arch.sparsity:
        raise ValueError(f"{checkpoint} is already pruned ({arch.widths}); start from the full network")
    return parent


def with_batchnorm(parent, batches: Sequence):
    """``parent`` ready to train as a zoo network trains: an imported model's network gets back the BN its
    exporter folded (:func:`~latbench.models.onnx_bn.unfold_batchnorm`, statistics from ``batches`` of
    ``(images, labels)``): the identity in eval mode, batch statistics in training, γ for BN-based rankings,
    folded again at export. A zoo network, or an imported one that already has its BN, is returned as it is."""
    if not parent.spec.source:
        return parent
    from ..models.onnx_bn import unfold_batchnorm

    return unfold_batchnorm(parent, batches).eval()


# ---- budgets ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FullLatency:
    """The full network's latency: ``measured`` on the device (None without one), ``predicted`` from the
    table (None without one). Ratio budgets refer to the measured value when there is one."""

    measured: float | None = None
    predicted: float | None = None

    @property
    def reference(self) -> float:
        if self.measured is None and self.predicted is None:
            raise BudgetError("a latency ratio needs the full network's latency: give --table (or --device)")
        return self.measured if self.measured is not None else float(self.predicted)

    def to_dict(self) -> dict:
        return {"measured": self.measured, "predicted": self.predicted}


def full_latency(spec: ModelSpec, resolution: int, table: LatencyTable | None, predictor, device: str | None,
                 store: str, progress: bool, measure: bool = True) -> FullLatency:
    """The full network's latency: predicted when there is a table, measured on ``device`` when one is given
    and ``measure`` (a rerun reads the measurement from the store)."""
    full = Architecture.full(spec, resolution)
    measured = None
    if device and measure and table is not None:
        try:
            measured = float(measure_architectures(spec, [full], table, device, store, progress)[0])
        except DeviceUnreachable as err:
            console.print(f"[yellow]{device} cannot be reached ({err}); a budget ratio is of the full network's "
                          "predicted latency and the pruned network will not be verified on the device[/]")
    predicted = float(predictor.predict(full)[0]) if predictor is not None else None
    return FullLatency(measured, predicted)


@dataclass(frozen=True)
class BudgetRequest:
    """Exactly one budget as given on the command line: ``ms`` (latency), ``ratio`` (of the full network's
    latency), ``flops`` (multiply-accumulates) or ``params``."""

    ms: float | None = None
    ratio: float | None = None
    flops: float | None = None
    params: float | None = None

    def check(self, table: str | None, device: str | None) -> None:
        """Refuse budgets that cannot work with these options (before anything runs)."""
        given = [v for v in (self.ms, self.ratio, self.flops, self.params) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one budget: --budget-ms, --budget-ratio, --budget-flops or --budget-params")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise BudgetError(f"--budget-ratio must be in (0, 1], got {self.ratio}")
        if self.kind == "latency" and not table:
            raise BudgetError("a latency budget needs the device's latency table: give --table")
        if device and not table:
            raise BudgetError("measuring on --device compares with the device's table: give --table")

    @property
    def kind(self) -> str:
        """The resource budgeted: ``latency``, ``flops`` or ``params`` (see :data:`~latbench.search.budget.BUDGET_KINDS`)."""
        if self.flops is not None:
            return "flops"
        if self.params is not None:
            return "params"
        return "latency"

    def resolve(self, full: FullLatency) -> Budget:
        """The budget in its unit (a ratio times the full network's reference latency)."""
        if self.ratio is not None:
            return Budget("latency", self.ratio * full.reference)
        return Budget(self.kind, {"latency": self.ms, "flops": self.flops, "params": self.params}[self.kind])

    def to_dict(self, budget: Budget) -> dict:
        """The report's budget entry."""
        return {"kind": budget.kind, "value": budget.value, "ratio": self.ratio}


# ---- data ------------------------------------------------------------------------------------------------

def sample_batches(data, n: int, batch: int = 256, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed random sample of ``n`` images of ``data`` as normalised ``(images, labels)`` batches (the same
    for every candidate of a search)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n]
    return [(data.normalize(data.images[idx[i:i + batch]]), data.labels[idx[i:i + batch]])
            for i in range(0, len(idx), batch)]


def first(split, n: int | None):
    """The first ``n`` items of a data split (all of it for None)."""
    return split if n is None else split.head(n)


@dataclass(frozen=True)
class FinetuneRecipe:
    """The one fine-tuning recipe every method gets (so accuracies are comparable)."""

    epochs: Annotated[int, Ge(1)] = 1
    lr: Annotated[float, Gt(0)] = 0.02
    schedule: Schedule = Schedule.cosine
    batch_size: Annotated[int, Ge(1)] = 128
    max_steps: Annotated[int | None, Ge(1), Opt(flag="steps", help="cap fine-tuning steps (quick runs)")] = None
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0

    def run(self, net, data, checkpoint: Path, arch: Architecture, meta: Mapping[str, Any], *, progress: bool,
            device: torch.device | None = None):
        """Fine-tune ``net`` in place with the one SGD loop (:func:`latbench.train.finetune`), resumable from
        ``checkpoint``; returns the loop's history."""
        from ..train import finetune

        return finetune(net, data, self.epochs, self.lr, schedule=self.schedule, batch_size=self.batch_size,
                        seed=self.seed, max_steps=self.max_steps, checkpoint=checkpoint, resume=True, arch=arch,
                        meta=meta, progress=progress, device=device)


# ---- export ----------------------------------------------------------------------------------------------

def export_pruned(folder: Path, net, arch: Architecture) -> None:
    """Write ``pruned.onnx`` and ``pruned.tflite`` of ``net`` (CPU tensors) at ``arch`` into ``folder``."""
    from ..export import export_network_for

    for fmt in EXPORT_FORMATS:
        atomic_write_bytes(Path(folder) / f"pruned.{fmt}", export_network_for(fmt, net, arch))


def exported(folder: Path) -> bool:
    """Whether ``folder`` holds every export."""
    return all((Path(folder) / f"pruned.{fmt}").exists() for fmt in EXPORT_FORMATS)


def export_once(folder: Path, net, arch: Architecture, source: Path) -> None:
    """:func:`export_pruned` unless ``folder`` already holds the exports of exactly the weights in ``source``
    (their SHA-256 is kept in ``export.json``): a rerun ships, and measures, the same files."""
    from ..files import read_json, sha256_file, write_json_if_changed

    record_path, digest = Path(folder) / "export.json", sha256_file(source)
    record = read_json(record_path, recover="delete it to export again") if record_path.exists() else {}
    if record.get("sha256") != digest or not exported(folder):
        export_pruned(folder, net, arch)
        write_json_if_changed(record_path, {"sha256": digest, "source": Path(source).name})


# ---- the device ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _device_of(table: LatencyTable, device: str) -> Iterator:
    """``device`` opened and checked to be the one ``table`` was measured on; closed afterwards."""
    from ..devices import open_device

    dev = open_device(device)
    try:
        table.check_device(dev.fingerprint(), device)
        yield dev
    finally:
        dev.close()


def check_table_device(table: LatencyTable, device: str) -> None:
    """Refuse a ``device`` other than the one ``table`` was measured on (before any training). A device that
    cannot be reached cannot be checked: the job goes on and its network will be "not verified"."""
    try:
        with _device_of(table, device):
            pass
    except DeviceUnreachable as err:
        console.print(f"[yellow]{device} cannot be reached ({err}); going on without it[/]")


@dataclass(frozen=True)
class Anchor:
    """The full network, measured beside every network of a closed loop and every shipped file: on a host whose
    speed drifts by 10 % within minutes, the ratio of two networks timed in one interleaved batch stays within
    ≈1 % (docs/measurement.md). A result is reported as that ratio times ``full_ms``, the full network's latency
    the budget was taken from — so "50 % of the full network" means 50 % of it *now*."""

    arch: Architecture
    full_ms: float
    spec: ModelSpec | None = field(default=None, compare=False)    # the model (an imported one is no zoo name)


def _anchored(todo: dict, anchor: Anchor, spec: ModelSpec, dev, st, table, progress: bool) -> dict[str, float]:
    from ..validation import measure_beside, network_key, network_todo, table_reference_ms

    key = network_key(anchor.arch, spec)
    (hw, make), = network_todo(spec, [anchor.arch], [key], dev.model_format).values()
    pairs = measure_beside(todo, (key, hw, make), dev, st, progress=progress, reference_ms=table_reference_ms(table))
    return {k: item / beside * anchor.full_ms for k, (item, beside) in pairs.items()}


def measure_architectures(spec: ModelSpec, archs: Sequence[Architecture], table: LatencyTable, device: str,
                          store: str, progress: bool = True, repeat: int = 0, anchor: Anchor | None = None) -> np.ndarray:
    """End-to-end latency of ``archs`` on ``device`` in the table's unit (stored, so reruns reuse it);
    ``repeat`` > 0: measured again; ``anchor``: each measured beside the full network (:class:`Anchor`)."""
    from ..store import MeasurementStore
    from ..validation import _repeat_key, measure_networks, network_key, network_todo, table_reference_ms

    with _device_of(table, device) as dev:
        dev.prepare()
        with MeasurementStore(store) as st:
            if anchor is None:
                return measure_networks(spec, list(archs), dev, st, progress=progress,
                                        reference_ms=table_reference_ms(table), repeat=repeat)
            keys = [_repeat_key(network_key(a, spec), repeat) for a in archs]
            values = _anchored(network_todo(spec, archs, keys, dev.model_format), anchor, spec, dev, st, table,
                               progress)
            return np.array([values[k] for k in keys])


def measure_shipped(folders: Sequence[Path], table: LatencyTable, device: str, store: str,
                    progress: bool = True, repeat: int = 0, anchor: Anchor | None = None,
                    spec: ModelSpec | None = None) -> np.ndarray:
    """End-to-end latency of the model each of ``folders`` ships (``pruned.onnx`` or ``pruned.tflite``, the
    device's format) in the table's unit: the file itself, with its trained weights and zero pattern, not a
    re-export of its architecture; ``anchor`` (with ``spec``): each measured beside the full network."""
    from ..store import MeasurementStore
    from ..validation import _repeat_key, file_key, measure_models, table_reference_ms

    with _device_of(table, device) as dev:
        models = [(Path(f) / f"pruned.{dev.model_format}").read_bytes() for f in folders]
        dev.prepare()
        with MeasurementStore(store) as st:
            if anchor is None:
                return measure_models(models, dev, st, progress=progress, reference_ms=table_reference_ms(table),
                                      repeat=repeat)
            keys = [_repeat_key(file_key(m), repeat) for m in models]
            todo = {k: (0, lambda m=m: m) for k, m in zip(keys, models)}
            values = _anchored(todo, anchor, spec or _spec_of(anchor), dev, st, table, progress)
            return np.array([values[k] for k in keys])


def _spec_of(anchor: Anchor) -> ModelSpec:
    from ..models import get_model

    return anchor.spec or get_model(anchor.arch.model)


def land_on_device(spec: ModelSpec, budget_ms: float, propose, start, table: LatencyTable, device: str, store: str,
                   config, anchor: Anchor | None = None):
    """:func:`latbench.methods.landing.land` on ``device``: the method's ``propose(target_ms)`` and its search's
    own ``start`` proposal, measured whole (stored in ``store``: a rerun measures nothing twice), each beside
    the full network when ``anchor`` is given."""
    from .landing import Landing, LandingStatus, land

    console.print(f"landing on {budget_ms:.4f} ms measured on {device} (band {config.band:g}–{config.headroom:g}"
                  + (", each network beside the full one)" if anchor else ")"))
    try:
        return land(budget_ms, propose, lambda archs, repeat: measure_architectures(
            spec, archs, table, device, store, progress=False, repeat=repeat, anchor=anchor), config, start)
    except DeviceUnreachable as err:                # keep the predicted network: what was measured is stored
        console.print(f"[yellow]{device} cannot be reached ({err}): the predicted network is kept, not verified[/]")
        arch = (start or propose(budget_ms)).arch
        return Landing(budget_ms, config.band, status=LandingStatus.not_verified, arch=arch)


def _verify_later(folder: Path, device: str, err: Exception) -> None:
    shipped = next((str(p) for p in (folder / "pruned.tflite", folder / "pruned.onnx") if p.exists()),
                   str(folder / "pruned.tflite"))
    console.print(f"[yellow]{device} cannot be reached ({err}): {shipped} is not verified; once it is back, "
                  f"verify it with: latbench measure {shlex.quote(shipped)} --device {shlex.quote(device)}[/]")


def check_shipped(folder: Path, table: LatencyTable, device: str, store: str, repeats: int,
                  progress: bool = True, anchor: Anchor | None = None) -> list[float]:
    """The shipped file of ``folder`` measured ``repeats`` times (the final check: its spread counts), each
    beside the full network when ``anchor`` is given."""
    try:
        return [float(measure_shipped([folder], table, device, store, progress, repeat=r, anchor=anchor)[0])
                for r in range(repeats)]
    except DeviceUnreachable as err:
        _verify_later(folder, device, err)
        return []


def holds(checkpoint: Path, arch: Architecture) -> bool:
    """Whether ``checkpoint`` exists and was trained for ``arch`` (an earlier run's network to take over)."""
    from ..train import read_checkpoint_meta

    saved = read_checkpoint_meta(checkpoint).get("arch") if Path(checkpoint).exists() else None
    return saved is not None and Architecture.from_dict(saved) == arch


def candidate_folder(root: Path, arch: Architecture) -> Path:
    """Where a network of a shipped-file landing is retrained and exported: one folder per architecture below
    ``root``, so a rerun retrains nothing twice."""
    return Path(root) / "candidates" / hashlib.sha256(arch.to_json().encode()).hexdigest()[:12]


def ship_and_check(out: Path, arch: Architecture, landing, budget_ms: float, propose, ship, table, job,
                   anchor: Anchor | None, spec: ModelSpec, files: Sequence[str]):
    """A single-budget job's network shipped into ``out`` and checked on ``job.device``: after a closed loop that
    chose on the device, landed by :func:`land_shipped` from the loop's choice (``files[0]``, the checkpoint, of an
    earlier run of it is taken over); otherwise ``ship(arch, out)`` and the file measured (``config.repeats``
    times after a loop, once without one). Returns ``(arch, shipped landing or None, repeats)``."""
    from .landing import Proposal

    if landing is not None and landing.chosen is not None:
        step = landing.steps[landing.chosen]
        shipped = land_shipped(out, budget_ms, propose, Proposal(arch, step.predicted_ms, step.target_ms), ship,
                               table, job.device, job.store, job.landing, anchor, spec, files,
                               out if holds(out / files[0], arch) else None)
        write_text_if_changed(Path(out) / "arch.json", shipped.arch.to_json())
        return shipped.arch, shipped, shipped.repeats
    write_text_if_changed(Path(out) / "arch.json", arch.to_json())
    ship(arch, out)
    repeats = []
    if job.device and table is not None:            # the file we ship, measured again: its spread counts
        repeats = check_shipped(out, table, job.device, job.store, job.landing.repeats if landing else 1,
                                job.progress, anchor)
    return arch, None, repeats


def in_candidates(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` (below ``root``) is in a :func:`candidate_folder`: a network a shipped-file landing
    retrained, whose chosen one is copied to where the job ships — summaries of shipped networks skip them."""
    return "candidates" in Path(path).relative_to(root).parts[:-1]


def adopt(source: Path, target: Path, names: Sequence[str]) -> None:
    """Copy the files ``names`` of folder ``source`` that exist into ``target``, each atomically (a file that
    already holds those bytes is left alone: a rerun changes nothing)."""
    for name in names:
        src, dst = Path(source) / name, Path(target) / name
        if src.exists() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
            atomic_write_bytes(dst, src.read_bytes())


def land_shipped(root: Path, budget_ms: float, propose, start, ship, table: LatencyTable, device: str, store: str,
                 config, anchor: Anchor | None, spec: ModelSpec, files: Sequence[str],
                 previous: Path | None = None):
    """The closed loop's last stage (:mod:`latbench.methods.landing`, step 5): :func:`~latbench.methods.landing.land`
    on the files the job ships. ``ship(arch, folder)`` retrains ``arch`` with the method's recipe and exports it
    into ``folder`` (resumable; a :func:`candidate_folder` of ``root``); the first network is ``start`` (the
    loop's choice), the next ones the method's own ``propose(target_ms)``, each shipped file measured
    ``config.repeats`` times beside the full network (``anchor``). ``previous``: a folder where an earlier run
    shipped ``start`` (its ``files`` are taken over, not retrained). The chosen network's ``files`` are copied
    into ``root``. Returns the landing (``arch`` the chosen network); a device that cannot be reached ships
    ``start`` unverified."""
    from .landing import Landing, LandingStatus, land

    folders: dict[str, Path] = {}

    def folder_of(arch: Architecture) -> Path:
        if arch.to_json() not in folders:
            folder = candidate_folder(root, arch)
            if previous is not None and arch == start.arch and not (folder / files[0]).exists():
                adopt(previous, folder, files)
            ship(arch, folder)
            folders[arch.to_json()] = folder
        return folders[arch.to_json()]

    def measure(archs: Sequence[Architecture], repeat: int) -> list[float]:
        return [float(measure_shipped([folder_of(a)], table, device, store, progress=False, repeat=repeat,
                                      anchor=anchor, spec=spec)[0]) for a in archs]

    console.print(f"landing the shipped file on {budget_ms:.4f} ms measured on {device} (band {config.band:g}–1, at "
                  f"most {config.shipped_rounds} retrained network(s))")
    try:
        landing = land(budget_ms, propose, measure, config.for_shipped(), start)
    except DeviceUnreachable as err:                # ship the loop's choice: what was measured is stored
        _verify_later(folder_of(start.arch), device, err)
        landing = Landing(budget_ms, config.band, status=LandingStatus.not_verified, arch=start.arch)
    adopt(folder_of(landing.arch), root, files)
    return landing


def budget_kind_is_latency(job) -> bool:
    """A latency budget (ms or ratio): the closed loop then measures the full network too, as its anchor."""
    return job.budget_ms is not None or job.budget_ratio is not None


def anchor_of(full: "FullLatency", spec: ModelSpec, resolution: int) -> Anchor | None:
    """The job's anchor: the full network at its measured latency (None when it was not measured)."""
    return Anchor(Architecture.full(spec, resolution), full.measured, spec) if full.measured else None


def checkpoint_for(path: Path, arch: Architecture) -> Path:
    """``path``, after moving aside a checkpoint there of another architecture (a landing that chose another
    network than an earlier run fine-tuned): nothing trained is deleted."""
    from ..train import read_checkpoint_meta

    path = Path(path)
    if path.exists():
        saved = read_checkpoint_meta(path).get("arch")
        if saved is not None and Architecture.from_dict(saved).widths != arch.widths:
            target = aside_path(path, "unlanded")
            path.rename(target)
            console.print(f"{path.name} holds another architecture than the landed one: moved to {target.name}")
    return path


# ---- the report ------------------------------------------------------------------------------------------

def network_report(*, spec: ModelSpec, method: str, checkpoint: str, table: str | None, device: str | None,
                   budget: Mapping[str, Any], full: FullLatency, arch: Architecture, predicted_ms: float | None,
                   measured_ms: float | None, pruned: tuple[float, float] | None,
                   finetuned: tuple[float, float] | None, test_images: int) -> dict:
    """The fields every method reports for one pruned network: what was pruned how, the budget (``{"kind",
    "value", "ratio", …}``), the full network's latency, the architecture, its predicted and measured latency,
    test loss and accuracy (``(loss, accuracy)`` before and after retraining), FLOPs and parameters."""
    value = budget.get("value")
    over = (measured_ms / value - 1) if measured_ms is not None and budget.get("kind") == "latency" and value else None
    return {
        "model": spec.name, "method": method, "checkpoint": str(checkpoint), "table": table, "device": device,
        "budget": dict(budget), "full_latency_ms": full.to_dict(), "architecture": arch.to_dict(),
        "predicted_ms": predicted_ms, "measured_ms": measured_ms, "measured_over_budget": over,
        "test_accuracy": {"pruned": None if pruned is None else pruned[1],
                          "finetuned": None if finetuned is None else finetuned[1]},
        "test_loss": {"pruned": None if pruned is None else pruned[0],
                      "finetuned": None if finetuned is None else finetuned[0]},
        "test_images": test_images,
        "flops": CostGrid.analytic(spec, "flops", arch.resolution).total(arch.widths),
        "params": CostGrid.analytic(spec, "params", arch.resolution).total(arch.widths),
    }


__all__ = ["Anchor", "adopt", "anchor_of", "candidate_folder", "holds", "in_candidates", "ship_and_check", "land_shipped", "budget_kind_is_latency", "check_shipped", "checkpoint_for", "land_on_device", "BudgetRequest", "EXPORT_FORMATS", "FinetuneRecipe", "FullLatency", "JobOptions", "SingleBudgetJob",
           "check_table_device",
           "check_torch_device", "console", "export_once", "export_pruned", "exported", "first", "full_latency", "load_parent",
           "measure_architectures", "measure_shipped", "network_report", "sample_batches", "set_threads"]
