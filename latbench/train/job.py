"""A training run from scratch as a job: :class:`TrainJob` is what ``latbench train`` and the recipes in
``train/*.toml`` describe, :func:`run_train` runs it (resumably) and writes the checkpoint, its history
and its recipe record beside it."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from annotated_types import Ge

from ..recipe import Opt, begin_run
from .loop import TrainConfig


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """Train zoo ``model`` on ``data`` with ``config`` (schedule, augmentation, seed, …) into the checkpoint
    ``out``; ``<out>.json`` gets the history and the test accuracy, ``<out>.recipe.json`` the resolved
    recipe. A rerun of the same recipe continues (or finds the run finished); a changed one moves the old
    files aside and starts again."""

    model: Annotated[str, Opt(help="zoo model (resnet20, resnet56, mobilenet_v2_cifar, …)")] = "resnet56"
    data: Annotated[str, Opt(help="data set: fashion-mnist, mnist, cifar10, cifar100 or imagefolder")] = "fashion-mnist"
    data_dir: Annotated[str | None, Opt(help="folder with the data set files (default: its usual place)")] = None
    val_size: Annotated[int, Ge(0), Opt(help="last N training images held out as validation set")] = 5000
    training: Annotated[TrainConfig, Opt(flag="")] = field(default_factory=lambda: TrainConfig(epochs=3, lr=0.1))
    out: Annotated[str, Opt(help="checkpoint to write (.safetensors); the history goes beside it (.json)")]
    torch_device: Annotated[str, Opt(help="torch device to train on (cpu, cuda, mps)", runtime=True)] = "cpu"
    resume: Annotated[bool, Opt(help="continue the unfinished run saved in --out (a recipe's own earlier run "
                                     "is always continued)", runtime=True)] = False
    checkpoint_every: Annotated[int, Ge(0), Opt(help="also checkpoint every N steps (0: per epoch only)",
                                                runtime=True)] = 100
    max_steps: Annotated[int | None, Opt(help="stop after this many steps (resume later)", runtime=True)] = None
    threads: Annotated[int | None, Opt(help="torch threads (default: all cores)", runtime=True)] = None
    progress: Annotated[bool, Opt(help="show progress bars", runtime=True)] = True

    def __post_init__(self) -> None:
        from ..methods.common import check_torch_device

        check_torch_device(self.torch_device)


def recipe_path(out: str | Path) -> Path:
    """Where a training run's recipe record lives: ``<out stem>.recipe.json`` beside the checkpoint."""
    out = Path(out)
    return out.with_name(out.name.partition(".")[0] + ".recipe.json")


def run_train(job: TrainJob) -> dict:
    """Run ``job`` (continuing its own earlier run); returns the result written to ``<out>.json``."""
    import torch

    from ..data import load_dataset
    from ..files import atomic_write_json
    from ..methods.common import set_threads
    from ..models import build, get_model
    from . import evaluate, train

    out = Path(job.out)
    splits = load_dataset(job.data, job.data_dir, job.val_size)
    set_threads(job.threads)                  # the application's choice (the loop leaves it alone)
    record_file = recipe_path(out)
    had_record = record_file.exists()
    record = begin_run(job, "train", record_file, [out, out.with_suffix(".json"), record_file],
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    resume = job.resume or (had_record and out.exists())       # our own run, not moved aside: continue it
    c = job.training
    device = torch.device(job.torch_device)
    torch.manual_seed(c.seed)
    net = build(get_model(job.model, num_classes=splits.num_classes), in_channels=splits.in_channels).to(device)
    history = train(net, splits, c.epochs, c.lr, batch_size=c.batch_size, schedule=c.schedule, warmup=c.warmup,
                    momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay,
                    label_smoothing=c.label_smoothing, seed=c.seed, augment=c.augment,
                    steps_per_epoch=c.steps_per_epoch, checkpoint=out, checkpoint_every=job.checkpoint_every,
                    resume=resume, max_steps=job.max_steps, meta={"dataset": splits.describe()},
                    progress=job.progress, device=device,
                    log=None if job.progress else lambda line: print(line, file=sys.stderr, flush=True))
    result = {"model": net.spec.name, "data": splits.name, "checkpoint": str(out), **history.to_dict(),
              "recipe": record}
    if history.complete:
        result["test_loss"], result["test_acc"] = evaluate(net, splits.test, device=device)
    atomic_write_json(out.with_suffix(".json"), result, indent=2)
    return result


__all__ = ["TrainJob", "recipe_path", "run_train"]
