"""Training: ``latbench train`` and ``latbench evaluate`` (top-level commands, registered in
:mod:`latbench.cli`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import JOB_ERRORS, console, fail
from .options import job_command


def _train(job) -> None:
    from ..train.job import run_train

    try:
        result = run_train(job)
    except JOB_ERRORS as err:
        fail(err)
    last = result["epochs"][-1] if result["epochs"] else None
    console.print_json(json.dumps({k: result[k] for k in ("model", "data", "checkpoint", "step", "total_steps", "complete")}
                                  | ({"val_acc": last["val_acc"], "images_per_s": last["images_per_s"]} if last else {})
                                  | ({"test_acc": result["test_acc"]} if "test_acc" in result else {})))
    console.print(f"checkpoint [bold]{job.out}[/], history [bold]{Path(job.out).with_suffix('.json')}[/]")


def _train_command():
    from ..train.job import TrainJob

    return job_command(TrainJob, _train, doc="""Train a zoo model from scratch on an image data set; writes a safetensors checkpoint, a JSON
    history and the run's recipe record, prints validation and test accuracy. A rerun of the same recipe
    continues its run (or finds it finished).

    Example: latbench train --config train/resnet56-fmnist32.toml   (or: --model resnet56 --epochs 3 --out
    runs/r56.safetensors; --set epochs=1 overrides one field of a recipe)
    """)


train_cmd = _train_command()


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
