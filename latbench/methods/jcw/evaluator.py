"""JCW's accuracy estimator: a weight-sharing supernet, trained on the search's population.

The supernet itself is the shared core, :class:`latbench.supernet.DynamicNet`: the trained full network
with its channels reordered by importance (``DynamicNet.from_parent(parent, "l1")``), where a sub-network
is *the first k channels of every group* at the architecture's widths, with each sparsified conv masked
to its sparsity by weight magnitude on the sliced kernel (block-wise with ``sparsity_block``). Slicing,
masks, extraction and BatchNorm recalibration are the core's; this module holds what is JCW's:

* :class:`SupernetConfig` — how the supernet is trained and how candidates are scored;
* :class:`SupernetEvaluator` — the evaluator protocol of :class:`latbench.methods.jcw.search.JCWSearch`:
  ``update(P ∪ Q)`` trains the shared weights on the population's architectures (JCW's Algorithm 4,
  optionally with the population's sandwich) through the one SGD loop, :func:`latbench.train.loop.train`;
  ``evaluate(archs)`` recalibrates BN per architecture on a few fixed training batches and returns the
  loss (or error) on the held-out split (``DataSplits.val``);
* checkpoints after every update, with an exact resume.

**BatchNorm.** Training normalises with batch statistics and leaves the shared running statistics as
they are (the evaluator's BN layers have ``track_running_stats=False``): every candidate is scored with
statistics recalibrated for it, so the shared ones would only drift.

>>> evaluator = SupernetEvaluator(trained_full_net, load_dataset("fashion-mnist"),            # doctest: +SKIP
...                               SupernetConfig(steps_per_generation=200), checkpoint="runs/supernet.safetensors")
>>> JCWSearch(spec, predictor, evaluator, SearchConfig()).run("runs/jcw")                    # doctest: +SKIP
>>> net = evaluator.extract(best_arch, evaluator.calibrate(best_arch, batches))  # a plain GraphNet  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from annotated_types import Ge, Gt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ...data import Augment, BatchLoader, DataSplits
from ...models import Architecture, GraphNet
from ...recipe import Choice, Opt
from ...supernet import (DynamicBatchNorm2d, DynamicNet, PopulationSampler, SubnetBN, cross_entropy, recalibrate, resize,
                         supernet_from)
from ...train.checkpoint import (CheckpointError, load_optimizer_state, load_weights, read_checkpoint_meta,
                                save_checkpoint, stem_in_channels)
from ...train.loop import TrainConfig, evaluate, make_optimizer, train

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

OBJECTIVES = ("loss", "error")
#: Version 2: the supernet is a :class:`DynamicNet` and sub-networks are drawn per global step.
STATE_FORMAT = "latbench-supernet/2"
_STATE_FAMILY = "latbench-supernet/"


class Objective(Choice):
    """What a candidate's score is (see :class:`SupernetConfig`)."""

    loss = "loss"      # cross-entropy
    error = "error"    # 1 − accuracy


@dataclass(frozen=True)
class SupernetConfig:
    """How a :class:`SupernetEvaluator` trains and scores sub-networks.

    Training (``update``): each generation, ``steps_per_generation`` SGD steps on the architectures of
    P ∪ Q; each step draws ``archs_per_step`` of them at random (plus the largest and the smallest by
    non-zero weights when ``sandwich``), sums their losses on one batch and takes one step, with a
    cosine learning rate from ``lr`` to 0 over the generation. By default every generation starts again
    from the parent's weights (each population is trained from the same start, as its own short
    fine-tune); ``warm_start`` continues from the previous generation's weights and momentum instead,
    with ``warm_steps`` steps after the first generation (default: a quarter of
    ``steps_per_generation``) — cheaper, the supernet keeps improving over the search.

    Scoring (``evaluate``): per architecture, BN statistics from ``bn_batches`` fixed training batches
    of ``bn_batch_size`` (no augmentation), then cross-entropy and accuracy on the first ``eval_size``
    images of ``DataSplits.val`` (all when None). ``objective`` is what ``evaluate`` returns: ``loss``
    (cross-entropy) or ``error`` (1 − accuracy). ``resize``: run each architecture at its own resolution
    (bilinear resize of the batches); otherwise the data's resolution is used for every architecture.
    ``sparsity_block``: block-wise magnitude masks (each block of that many output filters gets the
    layer's sparsity), as ADMM's ``sparsity_block`` prunes.
    """

    steps_per_generation: Annotated[int, Ge(0), Opt(flag="steps", help="supernet SGD steps per generation")] = 200
    warm_start: Annotated[bool, Opt(flag="--warm-start", help="continue the supernet across generations (default: "
                                                              "restart each generation from the parent)")] = False
    warm_steps: int | None = None
    archs_per_step: int = 1
    sandwich: bool = False
    batch_size: Annotated[int, Ge(1)] = 128
    lr: Annotated[float, Gt(0)] = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: Augment = field(default_factory=Augment)
    bn_batches: Annotated[int, Ge(0), Opt(flag="--bn-batches", help="batches to recalibrate BN of each candidate")] = 4
    bn_batch_size: Annotated[int, Ge(1)] = 128
    eval_size: Annotated[int | None, Ge(1), Opt(flag="--eval-images", help="held-out training images each candidate "
                                                                            "is scored on")] = None
    eval_batch_size: Annotated[int, Ge(1)] = 500
    objective: Annotated[Objective, Opt(flag="--objective", help="search objective")] = Objective.loss
    resize: bool = False
    sparsity_block: int | None = None
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0
    progress: Annotated[bool, Opt(runtime=True)] = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps_per_generation", "archs_per_step", "batch_size", "bn_batches", "bn_batch_size",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need ≥ 1)")
        if self.warm_steps is not None and self.warm_steps < 0:
            problems.append(f"warm_steps={self.warm_steps} (need ≥ 0)")
        if self.eval_size is not None and self.eval_size < 1:
            problems.append(f"eval_size={self.eval_size} (need ≥ 1, or None for the whole split)")
        if self.sparsity_block is not None and self.sparsity_block < 1:
            problems.append(f"sparsity_block={self.sparsity_block} (need ≥ 1 output channels, or None)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (need > 0)")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective={self.objective!r} (choose one of {', '.join(OBJECTIVES)})")
        if problems:
            raise ValueError("invalid supernet configuration: " + "; ".join(problems))

    @property
    def generation_steps_after_first(self) -> int:
        if not self.warm_start:
            return self.steps_per_generation
        return self.warm_steps if self.warm_steps is not None else max(1, self.steps_per_generation // 4)

    def train_config(self) -> TrainConfig:
        """The SGD settings of one generation (one epoch of the generation's steps, cosine to 0)."""
        return TrainConfig(1, self.lr, self.batch_size, "cosine", None, self.momentum, self.nesterov,
                           self.weight_decay, 0.0, self.seed, self.augment)

    def identity(self) -> dict:
        """The settings that determine results (a checkpoint must match them to be resumed)."""
        d = asdict(self)
        d.pop("progress")
        return d


@dataclass(frozen=True)
class SubnetScore:
    """A sub-network's cross-entropy and top-1 accuracy (0..1) on the held-out split."""

    loss: float
    accuracy: float


@dataclass
class UpdateRecord:
    """One ``update``: how many distinct architectures, steps, the mean training loss, seconds; ``skipped``
    when a resumed run found this update already in its checkpoint."""

    update: int
    architectures: int
    steps: int
    train_loss: float
    seconds: float
    skipped: bool = False


def _fingerprint(archs: Sequence[Architecture]) -> str:
    return hashlib.sha256("\n".join(sorted(a.to_json() for a in archs)).encode()).hexdigest()


def _unique(archs: Sequence[Architecture]) -> list[Architecture]:
    return list(dict.fromkeys(archs))


class _Window:
    """``steps`` batches of ``loader``'s endless stream (epochs follow each other seamlessly) from global
    position ``offset`` on, as the one epoch of a generation's :func:`train` run."""

    def __init__(self, loader: BatchLoader, offset: int, steps: int) -> None:
        self.loader, self.offset, self.steps = loader, offset, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        e, s = divmod(self.offset + epoch * self.steps + start, len(self.loader))
        while True:
            yield from self.loader.epoch(e, s)
            e, s = e + 1, 0


class SupernetEvaluator:
    """The JCW search's evaluator, a :class:`DynamicNet` built from ``parent`` (see :class:`SupernetConfig`).

    ``order``: the channel order of the supernet (``"l1"``/``"l2"`` filter norms of ``parent``, or
    ``{group: indices, most important first}``). ``device``: where the supernet trains and scores
    (``"cpu"``, ``"cuda"``, ``"mps"``); nothing here sets torch's thread count, which is the
    application's choice. ``evaluate(archs)`` returns one value per architecture (``config.objective``);
    the scores of the last call are in ``last_losses`` / ``last_accuracies``, and :meth:`score` gives any
    architecture's :class:`SubnetScore` (cached until the next ``update``). ``update(archs)`` trains the
    supernet. With ``checkpoint`` (a ``.safetensors`` path) the supernet — weights, momentum, step
    counters, history — is saved after every update; with ``resume`` an existing checkpoint of the same
    settings is loaded, and an update it already holds (same architectures, as a resumed search repeats
    the generation that was interrupted) is not trained twice.
    """

    def __init__(self, parent: GraphNet, data: DataSplits, config: SupernetConfig | None = None,
                 checkpoint: str | Path | None = None, resume: bool = True, *,
                 order: Mapping[str, Sequence[int]] | str = "l1", device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or SupernetConfig()
        if data.val is None:
            raise ValueError(f"{data.name} has no validation split; load it with val_size > 0 — the supernet "
                             "scores architectures on held-out training data")
        stem_channels = stem_in_channels(parent)
        if data.in_channels != stem_channels or data.num_classes != parent.spec.num_classes:
            raise ValueError(f"{data.name} has {data.in_channels} channels and {data.num_classes} classes; the "
                             f"supernet expects {stem_channels} and {parent.spec.num_classes} — build the parent "
                             "with in_channels=data.in_channels and get_model(name, num_classes=data.num_classes)")
        self.device = torch.device(device)
        self.net = supernet_from(parent, order, device=self.device, sparsity_block=cfg.sparsity_block)
        for module in self.net.modules():         # training leaves the shared BN statistics alone
            if isinstance(module, DynamicBatchNorm2d):
                module.track_running_stats = False
        self.data = data
        self.optimizer = make_optimizer(self.net, cfg.train_config())
        self._loader = BatchLoader(data.train, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                                   drop_last=len(data.train) >= cfg.batch_size)
        # Fixed batches, so every architecture is calibrated and scored on the same images.
        bn_loader = BatchLoader(data.train, cfg.bn_batch_size, shuffle=True, seed=cfg.seed + 7919)
        self._bn_batches = [(x.to(self.device), y.to(self.device)) for _, (x, y) in zip(range(cfg.bn_batches),
                                                                                           bn_loader)]
        val = data.val if cfg.eval_size is None else data.val.head(min(cfg.eval_size, len(data.val)))
        self._val_batches = [(x.to(self.device), y.to(self.device)) for x, y in BatchLoader(val, cfg.eval_batch_size)]
        self._initial = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.step = 0                  # global training steps (the position in the data stream)
        self.updates = 0
        self.history: list[UpdateRecord] = []
        self._scores: dict[Architecture, SubnetScore] = {}
        self._last_update: str | None = None
        self._resumed_update: str | None = None
        self.last_losses = np.zeros(0)
        self.last_accuracies = np.zeros(0)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        if self.checkpoint is not None and resume and self.checkpoint.exists():
            self._restore(self.checkpoint)
        self.net.eval()

    # -- protocol ---------------------------------------------------------------------------------
    def evaluate(self, archs: Sequence[Architecture]) -> np.ndarray:
        """The objective (cross-entropy or 1 − accuracy) of every architecture on the held-out split."""
        todo = [a for a in _unique(archs) if a not in self._scores]
        with self._progress() as bar:
            task = bar.add_task("supernet: evaluate", total=len(todo))
            for arch in todo:
                self._scores[arch] = self._score(arch)
                bar.advance(task)
        scores = [self._scores[a] for a in archs]
        self.last_losses = np.array([s.loss for s in scores])
        self.last_accuracies = np.array([s.accuracy for s in scores])
        return self.last_losses if self.config.objective == "loss" else 1.0 - self.last_accuracies

    def score(self, arch: Architecture) -> SubnetScore:
        """Loss and accuracy of one architecture with the current weights."""
        if arch not in self._scores:
            self._scores[arch] = self._score(arch)
        return self._scores[arch]

    def update(self, archs: Sequence[Architecture]) -> UpdateRecord:
        """Train the supernet on ``archs`` (P ∪ Q) for one generation's steps."""
        cfg, archs = self.config, _unique(archs)
        if not archs:
            raise ValueError("update: no architectures to train")
        for arch in archs:
            self.net.validate(arch)                # all before training any
        self._scores.clear()
        fingerprint = _fingerprint(archs)
        if self._resumed_update is not None and self._resumed_update == fingerprint:
            self._resumed_update = None
            record = UpdateRecord(self.updates, len(archs), 0, float("nan"), 0.0, skipped=True)
            self.history.append(record)
            return record
        self._resumed_update = None
        steps = cfg.steps_per_generation if self.updates == 0 else cfg.generation_steps_after_first
        if not cfg.warm_start:
            self.net.load_state_dict(self._initial)
            self.optimizer.state.clear()
        start, train_loss = time.perf_counter(), float("nan")
        if steps > 0:
            train_loss = self._train(archs, steps)
        self.updates += 1
        self._last_update = fingerprint
        record = UpdateRecord(self.updates, len(archs), steps, train_loss, time.perf_counter() - start)
        self.history.append(record)
        if self.checkpoint is not None:
            self.save(self.checkpoint)
        return record

    # -- sub-networks -------------------------------------------------------------------------------
    def calibrate(self, arch: Architecture, batches: Batches, limit: int | None = None) -> SubnetBN:
        """BN statistics of ``arch``'s sub-network from ``batches`` (the core's :func:`recalibrate`; batches
        are resized to ``arch.resolution`` with ``config.resize``)."""
        return recalibrate(self.net, arch, ((self._fit(x, arch), y) for x, y in batches), limit=limit,
                           device=self.device)

    def extract(self, arch: Architecture, bn: SubnetBN | None = None, sparse: bool = True) -> GraphNet:
        """``arch``'s sub-network as a plain :class:`GraphNet` (see :meth:`DynamicNet.extract`); with
        ``sparse=False`` its convs keep all their weights (e.g. to retrain dense before ADMM pruning)."""
        dense = arch if sparse else Architecture(arch.model, arch.resolution, arch.widths)
        return self.net.extract(dense, bn)

    # -- internals --------------------------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not self.config.progress, transient=True)

    def _fit(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        return resize(x, arch.resolution) if self.config.resize else x

    def _train(self, archs: list[Architecture], steps: int) -> float:
        """``steps`` SGD steps on ``archs`` through the one training loop; returns the mean training loss."""
        cfg, offset = self.config, self.step
        # Draws are a pure function of (seed, global step): a resumed run draws what an uninterrupted one would.
        sampler = PopulationSampler(archs, cfg.archs_per_step, seed=cfg.seed, sandwich=cfg.sandwich,
                                    spec=self.net.spec, in_channels=self.net.in_channels)

        def step_loss(net: DynamicNet, x: torch.Tensor, y: torch.Tensor, step: int):
            chosen = sampler.sample(offset + step)
            logits = [net(self._fit(x, arch), arch) for arch in chosen]
            return sum(cross_entropy(out, y) for out in logits) / len(chosen), logits[0]

        tc = cfg.train_config()
        history = train(self.net, self.data.train, tc.epochs, tc.lr, batch_size=tc.batch_size, schedule=tc.schedule,
                        warmup=tc.warmup, momentum=tc.momentum, nesterov=tc.nesterov, weight_decay=tc.weight_decay,
                        seed=tc.seed, augment=tc.augment, loader=_Window(self._loader, offset, steps),
                        step_loss=step_loss, optimizer=self.optimizer, device=self.device,
                        progress=cfg.progress)
        self.step += history.step
        return history.epochs[-1].train_loss

    @torch.no_grad()
    def _score(self, arch: Architecture) -> SubnetScore:
        net = self.extract(arch, self.calibrate(arch, self._bn_batches))
        loss, accuracy = evaluate(net, ((self._fit(x, arch), y) for x, y in self._val_batches))
        return SubnetScore(loss, accuracy)

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"format": STATE_FORMAT, "config": json.loads(json.dumps(self.config.identity())),
                "order": {g: o.tolist() for g, o in self.net.order.items()}, "data": self.data.name,
                "train_size": len(self.data.train), "step": self.step, "updates": self.updates,
                "last_update": self._last_update, "history": [asdict(r) for r in self.history]}

    def save(self, path: str | Path) -> Path:
        """Write the supernet (reordered full network, momentum, counters, history) to ``path``."""
        return save_checkpoint(path, self.net, optimizer=self.optimizer, meta={"supernet": self._state()})

    def _restore(self, path: Path) -> None:
        saved = read_checkpoint_meta(path).get("supernet")
        if saved is None or not str(saved.get("format", "")).startswith(_STATE_FAMILY):
            raise CheckpointError(f"{path} is not a supernet checkpoint; use another checkpoint path")
        if saved["format"] != STATE_FORMAT:
            raise CheckpointError(f"{path} holds a supernet written by an older latbench (format "
                                  f"{saved['format']!r}, this one reads {STATE_FORMAT!r}); delete it to retrain")
        now = self._state()
        differ = [k for k in ("config", "order", "data", "train_size") if saved.get(k) != now[k]]
        if differ:
            raise CheckpointError(f"{path} was written by a supernet with other {', '.join(differ)}; resume with "
                                  "the same parent, data and settings, or use another checkpoint path")
        load_weights(path, self.net)
        load_optimizer_state(path, self.net, self.optimizer)
        self.step, self.updates = int(saved["step"]), int(saved["updates"])
        self._last_update = self._resumed_update = saved.get("last_update")
        self.history = [UpdateRecord(**r) for r in saved.get("history", [])]


__all__ = ["OBJECTIVES", "STATE_FORMAT", "SubnetScore", "SupernetConfig", "SupernetEvaluator", "UpdateRecord"]
