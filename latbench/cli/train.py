"""Training: ``latbench train`` and ``latbench evaluate`` (top-level commands, registered in
:mod:`latbench.cli`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..files import atomic_write_json
from .common import JOB_ERRORS, console, fail


def train_cmd(model: str = typer.Option("resnet56", help="zoo model (resnet20, resnet56, mobilenet_v2_cifar, …)"),
              data: str = typer.Option("fashion-mnist",
                                       help="data set: fashion-mnist, mnist, cifar10, cifar100 or imagefolder"),
              data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files (default: its usual place)"),
              epochs: int = typer.Option(3), lr: float = typer.Option(0.1, help="peak learning rate"),
              schedule: str = typer.Option("onecycle", help="onecycle, cosine or constant"),
              batch_size: int = typer.Option(128), weight_decay: float = typer.Option(5e-4),
              label_smoothing: float = typer.Option(0.0), seed: int = typer.Option(0),
              val_size: int = typer.Option(5000, help="last N training images held out as validation set"),
              out: Path = typer.Option(..., help="checkpoint to write (.safetensors); the history goes beside it (.json)"),
              resume: bool = typer.Option(False, help="continue the unfinished run saved in --out"),
              checkpoint_every: int = typer.Option(100, help="also checkpoint every N steps (0: per epoch only)"),
              max_steps: Optional[int] = typer.Option(None, help="stop after this many steps (resume later)"),
              steps_per_epoch: Optional[int] = typer.Option(None, help="cap batches per epoch (quick runs)"),
              threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
              progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """Train a zoo model from scratch on an image data set; writes a safetensors checkpoint and a JSON
    history, prints validation and test accuracy.

    Example: latbench train --model resnet56 --data fashion-mnist --epochs 3 --out runs/r56-fmnist.safetensors
    """
    import torch

    from ..data import load_dataset
    from ..methods.common import set_threads
    from ..models import build, get_model
    from ..train import evaluate, train

    try:
        splits = load_dataset(data, data_dir, val_size)
        set_threads(threads)                  # the application's choice (the loop leaves it alone)
        torch.manual_seed(seed)
        net = build(get_model(model, num_classes=splits.num_classes), in_channels=splits.in_channels)
        history = train(net, splits, epochs, lr, batch_size=batch_size, schedule=schedule, weight_decay=weight_decay,
                        label_smoothing=label_smoothing, seed=seed, steps_per_epoch=steps_per_epoch, checkpoint=out,
                        checkpoint_every=checkpoint_every, resume=resume, max_steps=max_steps,
                        meta={"dataset": splits.describe()}, progress=progress,
                        log=None if progress else lambda line: print(line, file=sys.stderr, flush=True))
        result = {"model": net.spec.name, "data": splits.name, "checkpoint": str(out), **history.to_dict()}
        if history.complete:
            result["test_loss"], result["test_acc"] = evaluate(net, splits.test)
        history_path = out.with_suffix(".json")
        atomic_write_json(history_path, result, indent=2)
    except JOB_ERRORS as err:
        fail(err)
    last = history.epochs[-1] if history.epochs else None
    console.print_json(json.dumps({k: result[k] for k in ("model", "data", "checkpoint", "step", "total_steps", "complete")}
                                  | ({"val_acc": last.val_acc, "images_per_s": last.images_per_s} if last else {})
                                  | ({"test_acc": result["test_acc"]} if "test_acc" in result else {})))
    console.print(f"checkpoint [bold]{out}[/], history [bold]{history_path}[/]")


def evaluate_cmd(checkpoint: Path = typer.Argument(..., help="checkpoint from `latbench train` or a pruning method"),
                 data: Optional[str] = typer.Option(None, help="data set (default: the one recorded in the checkpoint)"),
                 data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files"),
                 split: str = typer.Option("test", help="test or val"),
                 val_size: int = typer.Option(5000, help="validation split size (must match training for --split val)"),
                 threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)")) -> None:
    """Accuracy and loss of a checkpointed (possibly pruned) network on a data split.

    Example: latbench evaluate runs/r56-fmnist.safetensors --split test
    """
    from ..data import DataError, load_dataset
    from ..methods.common import set_threads
    from ..train import evaluate, load_checkpoint

    try:
        net, arch, meta = load_checkpoint(checkpoint)
        name = data or (meta.get("dataset") or {}).get("name")
        if not name:
            raise DataError(f"{checkpoint} does not record its data set; pass --data")
        splits = load_dataset(name, data_dir, val_size)
        if split not in ("test", "val") or (split == "val" and splits.val is None):
            raise DataError(f"split {split!r} is not available: use test, or val with --val-size > 0")
        set_threads(threads)
        loss, acc = evaluate(net, splits.test if split == "test" else splits.val)
    except JOB_ERRORS as err:
        fail(err)
    console.print_json(json.dumps({"checkpoint": str(checkpoint), "model": arch.model, "data": splits.name,
                                   "split": split, "loss": loss, "accuracy": acc, "widths": arch.widths}))
