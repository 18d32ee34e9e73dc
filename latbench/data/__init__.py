"""Image classification data kept in memory as uint8: Fashion-MNIST/MNIST (IDX), CIFAR-10/100 and
ImageFolder trees, with a deterministic validation split and plain-torch batch augmentation."""
from __future__ import annotations

from pathlib import Path

from .dataset import (NO_AUGMENT, Augment, BatchLoader, DataError, DataSplits, ImageDataset, channel_stats, holdout,
                      pad_to, random_crop, random_flip)
from .idx import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist, read_idx

DATASETS = ("fashion-mnist", "mnist")


def load_dataset(name: str, data_dir: str | Path | None = None, val_size: int = 5000) -> DataSplits:
    """Load data set ``name`` (one of :data:`DATASETS`) from ``data_dir`` (default: its usual place)."""
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fmnist"):
        return load_fashion_mnist(data_dir, val_size)
    if key == "mnist":
        if data_dir is None:
            raise DataError("mnist needs --data-dir: a folder with the four IDX files")
        return load_mnist(data_dir, val_size)
    raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["Augment", "BatchLoader", "DataError", "DataSplits", "ImageDataset", "NO_AUGMENT", "DATASETS",
           "FASHION_MNIST_DIR", "channel_stats", "holdout", "load_dataset", "load_fashion_mnist", "load_mnist",
           "pad_to", "random_crop", "random_flip", "read_idx"]
