"""Training, evaluation and fine-tuning of :class:`GraphNet` networks on in-memory image data.

SGD with (Nesterov) momentum; the learning rate is a pure function of the global step (one-cycle,
cosine or constant), so a run restored from a checkpoint — weights, BN statistics, momentum buffers and
the step — continues exactly as if it had never stopped (the data order is seeded per epoch and batch,
see :class:`latbench.data.BatchLoader`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ..data import Augment, BatchLoader, DataSplits, ImageDataset
from ..models import Architecture, GraphNet
from ..recipe import Choice, Opt
from .checkpoint import CheckpointError, CheckpointFormat, net_architecture


class Schedule(Choice):
    """Learning-rate schedules of the SGD loop (see :class:`TrainConfig`)."""

    onecycle = "onecycle"
    cosine = "cosine"
    constant = "constant"


SCHEDULES = Schedule.values()


def cpu_cores() -> int:
    """Cores this process may run on (respects affinity masks and containers' CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (stored in checkpoints; a resume must match).

    ``onecycle``: the rate rises from ``lr/25`` to ``lr`` over the first ``warmup`` fraction (default
    30 %) along a half cosine, then anneals to ``lr/25/1e4`` (the schedule of Smith & Topin, without
    momentum cycling). ``cosine``: linear warm-up over ``warmup`` of the steps (default 0), then a half
    cosine to 0. ``constant``: ``lr`` throughout. Weight decay applies to conv/linear weights only, not
    to BN parameters and biases.
    """

    epochs: Annotated[int, Ge(1)]
    lr: Annotated[float, Gt(0), Opt(help="peak learning rate")]
    batch_size: Annotated[int, Ge(1)] = 128
    schedule: Annotated[Schedule, Opt(help="learning-rate schedule")] = Schedule.onecycle
    warmup: Annotated[float | None, Opt(help="warm-up fraction of the steps (default: 0.3 onecycle, 0 cosine)")] = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Ge(0)] = 5e-4
    label_smoothing: Annotated[float, Ge(0), Lt(1)] = 0.0
    seed: int = 0
    augment: Annotated[Augment, Opt(flag="")] = field(default_factory=Augment)
    steps_per_epoch: Annotated[int | None, Opt(help="cap batches per epoch (quick runs)")] = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"need epochs ≥ 1, lr > 0 and batch size ≥ 1 (got {self.epochs}, {self.lr}, {self.batch_size})")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing {self.label_smoothing} outside [0, 1)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate for (0-based) ``step`` of ``total_steps``."""
        t = min(1.0, step / max(1, total_steps))
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "onecycle":
            warm = 0.3 if self.warmup is None else self.warmup
            start, end = self.lr / 25.0, self.lr / 25.0 / 1e4
            if t < warm:
                return _cos_ramp(start, self.lr, t / warm)
            return _cos_ramp(self.lr, end, (t - warm) / max(1e-12, 1.0 - warm))
        warm = self.warmup or 0.0
        if t < warm:
            return self.lr * (step + 1) / max(1.0, warm * total_steps)
        return _cos_ramp(self.lr, 0.0, (t - warm) / max(1e-12, 1.0 - warm))


def _cos_ramp(a: float, b: float, t: float) -> float:
    """From ``a`` at t=0 to ``b`` at t=1 along a half cosine."""
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class EpochRecord:
    epoch: int
    step: int
    lr: float
    train_loss: float
    train_acc: float
    images_per_s: float
    seconds: float
    val_loss: float | None = None
    val_acc: float | None = None


@dataclass
class TrainHistory:
    """Per-epoch records; ``complete`` is False when the run stopped early (``max_steps``)."""

    config: dict
    epochs: list[EpochRecord] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    complete: bool = False

    def to_dict(self) -> dict:
        return {"config": self.config, "step": self.step, "total_steps": self.total_steps, "complete": self.complete,
                "epochs": [asdict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainHistory":
        return cls(dict(d["config"]), [EpochRecord(**e) for e in d.get("epochs", [])], int(d.get("step", 0)),
                   int(d.get("total_steps", 0)), bool(d.get("complete", False)))


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD; weight decay only on weights with ≥ 2 dims (conv kernels, linear matrices)."""
    decay = [p for p in net.parameters() if p.requires_grad and p.dim() > 1]
    rest = [p for p in net.parameters() if p.requires_grad and p.dim() <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                            {"params": rest, "weight_decay": 0.0}],
                           lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)


def _batches(data: ImageDataset | Iterable, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    return BatchLoader(data, batch_size) if isinstance(data, ImageDataset) else data


@torch.no_grad()
def evaluate(net: nn.Module, data: ImageDataset | Iterable[tuple[torch.Tensor, torch.Tensor]],
             batch_size: int = 500, device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (0..1) of ``net`` in eval mode on ``data`` (a data set or
    any iterable of ``(images, labels)`` batches), batches moved to ``device`` when given. The network's
    train/eval mode is restored."""
    was_training = net.training
    net.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        for x, y in _batches(data, batch_size):
            if device is not None:
                x, y = x.to(device), y.to(device)
            logits = net(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += int(y.numel())
    finally:
        net.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: no samples")
    return loss_sum / seen, correct / seen


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f} {task.fields[ips]:.0f} img/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


def train(net: GraphNet, data: DataSplits | ImageDataset, epochs: int, lr: float, *,
          batch_size: int = 128, schedule: str = "onecycle", warmup: float | None = None, momentum: float = 0.9,
          nesterov: bool = True, weight_decay: float = 5e-4, label_smoothing: float = 0.0, seed: int = 0,
          augment: Augment | None = None, steps_per_epoch: int | None = None,
          eval_data: ImageDataset | None = None, checkpoint: str | Path | None = None, checkpoint_every: int = 0,
          resume: bool = False, max_steps: int | None = None, arch: Architecture | None = None,
          meta: Mapping[str, Any] | None = None, threads: int | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, loader: Any = None,
          step_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
          step_backward: Callable[[nn.Module, torch.Tensor, torch.Tensor, int],
                                  tuple[torch.Tensor, torch.Tensor]] | None = None,
          after_backward: Callable[[nn.Module, int], None] | None = None,
          after_step: Callable[[nn.Module, int], None] | None = None,
          on_epoch: Callable[[int, nn.Module], bool] | None = None,
          optimizer: torch.optim.Optimizer | None = None,
          device: torch.device | str | None = None,
          checkpoint_format: CheckpointFormat = CheckpointFormat()) -> TrainHistory:
    """Train ``net`` in place on ``data`` (a :class:`DataSplits` — its ``train`` set, evaluated on ``val`` after
    every epoch — or a bare training set) for ``epochs`` epochs with peak learning rate ``lr``.

    ``steps_per_epoch`` caps the batches per epoch (quick runs). With ``checkpoint`` the run is saved
    there after every epoch, every ``checkpoint_every`` steps (0: only per epoch) and at the end; with
    ``resume=True`` an existing, unfinished checkpoint written with the same settings is continued
    (a finished one is returned as is). ``max_steps`` stops (and checkpoints) after that many global
    steps — time-boxed runs resume later. ``arch``/``meta`` are stored in the checkpoint (e.g. the
    pruned architecture with its sparsity, the data set name). ``threads`` sets torch's thread count for
    the process when given; None leaves it as it is (the application — the CLI, a job — chooses it, see
    :func:`cpu_cores`). ``log`` receives one line per checkpoint and per epoch (for log files, where a
    progress bar is useless).

    Hooks for methods that train differently on the same loop (all optional):
    ``loader`` replaces the in-memory :class:`BatchLoader` (anything with ``len()`` and
    ``epoch(e, start)`` yielding ``(images, labels)``, e.g. :class:`latbench.data.StreamLoader`);
    ``step_loss(net, x, y, step) -> (loss, logits)`` replaces the cross-entropy of ``net(x)`` (``logits``
    feed the running accuracy); ``step_backward(net, x, y, step) -> (loss, logits)`` does the same but also
    backpropagates itself (e.g. several losses one by one, each graph freed before the next: SP's stage
    losses) — ``loss`` is then only recorded; ``after_backward(net, step)`` runs between ``backward`` and the optimizer
    step (e.g. to add a sparsity subgradient); ``after_step(net, steps_done)`` runs after every optimizer
    step (e.g. to re-apply fixed masks, or a periodic update of auxiliary variables); ``on_epoch(epoch,
    net)`` runs after every finished epoch (1-based, after validation, before the checkpoint) and
    returning True ends the run there, marked complete; ``optimizer`` is stepped instead of a fresh
    :func:`make_optimizer` (its state, e.g. momentum, carries over between calls; the learning rate is
    still set every step); ``device`` is where batches go (the network must already be there);
    ``checkpoint_format`` writes and reads ``checkpoint`` (default: the network's checkpoint, see
    :class:`~latbench.train.checkpoint.CheckpointFormat`).
    """
    if step_loss is not None and step_backward is not None:
        raise ValueError("give step_loss or step_backward, not both")
    config = TrainConfig(epochs, lr, batch_size, schedule, warmup, momentum, nesterov, weight_decay, label_smoothing,
                         seed, augment if augment is not None else Augment(), steps_per_epoch)
    if threads:
        torch.set_num_threads(threads)
    train_set = data.train if isinstance(data, DataSplits) else data
    if eval_data is None and isinstance(data, DataSplits):
        eval_data = data.val
    if loader is None:
        loader = BatchLoader(train_set, batch_size, shuffle=True, augment=config.augment, seed=seed,
                             drop_last=len(train_set) >= batch_size)
    per_epoch = min(len(loader), steps_per_epoch) if steps_per_epoch else len(loader)
    total = per_epoch * epochs
    optimizer = optimizer if optimizer is not None else make_optimizer(net, config)
    history = TrainHistory(config.to_dict(), total_steps=total)
    running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    checkpoint = Path(checkpoint) if checkpoint else None
    # a streamed set has no one resolution: its loader's largest is what the network trains at
    resolution = getattr(train_set, "resolution", None) or max(getattr(loader, "resolutions", (0,)))
    base_meta = {**dict(meta or {}), "train_set": getattr(train_set, "name", type(train_set).__name__),
                 "train_size": len(train_set)}

    if resume and checkpoint is not None and checkpoint.exists():
        saved = checkpoint_format.read_meta(checkpoint)
        if "history" not in saved:
            raise CheckpointError(f"{checkpoint} holds no training state to resume; use a new output path")
        saved_history = TrainHistory.from_dict(saved["history"])
        if saved_history.config != history.config or saved.get("train_size") != len(train_set):
            diff = {k: (saved_history.config.get(k), v) for k, v in history.config.items()
                    if saved_history.config.get(k) != v}
            raise CheckpointError(f"{checkpoint} was written with other settings (saved, now): {diff or 'data set size'}; "
                                  "resume with the same settings or choose another output path")
        checkpoint_format.load(checkpoint, net, optimizer)
        history = saved_history
        running = dict(saved.get("running", running))
        if history.complete:
            return history

    def save(step: int) -> None:
        if log is not None:
            seen = max(1, running["seen"])
            line = (f"step {step}/{total} epoch {step / per_epoch:.2f}: train loss {running['loss_sum'] / seen:.4f} "
                    f"acc {running['correct'] / seen:.4f}, {running['seen'] / max(1e-9, running['seconds']):.1f} img/s")
            if step % per_epoch == 0 and history.epochs:
                e = history.epochs[-1]
                line = (f"epoch {e.epoch}/{epochs} done (step {step}/{total}): train loss {e.train_loss:.4f} acc "
                        f"{e.train_acc:.4f}, val acc {e.val_acc if e.val_acc is not None else float('nan'):.4f}, "
                        f"{e.images_per_s:.1f} img/s")
            log(line)
        if checkpoint is not None:
            checkpoint_format.save(checkpoint, net, arch=arch or net_architecture(net, resolution),
                                   optimizer=optimizer,
                                   meta={**base_meta, "epoch": step // per_epoch, "step": step, "seed": seed,
                                         "schedule": schedule, "history": history.to_dict(), "running": running})

    net.train()
    step = history.step
    stop_at = total if max_steps is None else min(total, max_steps)
    with _progress(progress) as bar:
        task = bar.add_task("train", total=total, completed=step, loss=0.0, acc=0.0, ips=0.0)
        while step < stop_at:
            epoch, start = divmod(step, per_epoch)
            bar.update(task, description=f"epoch {epoch + 1}/{epochs}")
            t0 = time.perf_counter()
            for x, y in loader.epoch(epoch, start):
                if step >= stop_at or step - epoch * per_epoch >= per_epoch:
                    break
                rate = config.lr_at(step, total)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                if device is not None:
                    x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                if step_backward is not None:
                    loss, logits = step_backward(net, x, y, step)
                else:
                    if step_loss is None:
                        logits = net(x)
                        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                    else:
                        loss, logits = step_loss(net, x, y, step)
                    loss.backward()
                if after_backward is not None:
                    after_backward(net, step)
                optimizer.step()
                step += 1
                if after_step is not None:
                    after_step(net, step)
                running["loss_sum"] += float(loss.detach()) * int(y.numel())
                running["correct"] += int((logits.detach().argmax(1) == y).sum())
                running["seen"] += int(y.numel())
                elapsed = running["seconds"] + time.perf_counter() - t0
                bar.update(task, advance=1, loss=running["loss_sum"] / running["seen"],
                           acc=running["correct"] / running["seen"], ips=running["seen"] / max(1e-9, elapsed))
                if checkpoint_every and step % checkpoint_every == 0 and step % per_epoch and step < stop_at:
                    running["seconds"] = elapsed
                    history.step = step
                    save(step)
                    t0, running["seconds"] = time.perf_counter(), elapsed
            running["seconds"] += time.perf_counter() - t0
            history.step = step
            stopped = False
            if step % per_epoch == 0:  # the epoch is finished
                record = EpochRecord(epoch + 1, step, config.lr_at(step - 1, total),
                                     running["loss_sum"] / running["seen"], running["correct"] / running["seen"],
                                     running["seen"] / max(1e-9, running["seconds"]), running["seconds"])
                if eval_data is not None:
                    record.val_loss, record.val_acc = evaluate(net, eval_data, device=device)
                    net.train()
                history.epochs.append(record)
                running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
                if on_epoch is not None:
                    stopped = bool(on_epoch(epoch + 1, net))
                    net.train()
            history.complete = step >= total or stopped
            save(step)
            if stopped:
                break
    net.eval()
    return history


def finetune(net: GraphNet, data: DataSplits | ImageDataset, epochs: int, lr: float = 0.01, *,
             schedule: str = "cosine", **kwargs: Any) -> TrainHistory:
    """Fine-tune a (pruned) network: :func:`train` with a cosine schedule from a small rate by default."""
    return train(net, data, epochs, lr, schedule=schedule, **kwargs)
