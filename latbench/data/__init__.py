"""Image classification data kept in memory as uint8: Fashion-MNIST/MNIST (IDX), CIFAR-10/100 and
ImageFolder trees, with a deterministic validation split and plain-torch batch augmentation; and a
``torch.utils.data`` path (:mod:`.stream`) that streams ImageFolder trees from disk with resumable,
per-resolution random-resized-crop batches."""
from __future__ import annotations

from pathlib import Path

from .cifar import NumpyOnlyUnpickler, load_cifar, safe_unpickle
from .dataset import (NO_AUGMENT, Augment, BatchLoader, DataError, DataSplits, ImageDataset, channel_stats, holdout,
                      pad_to, random_crop, random_flip)
from .idx import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist, read_idx
from .imagefolder import load_image_folder
from .stream import (InMemoryImages, RandomResizedCrop, ResumableSampler, StreamingImageFolder, StreamLoader,
                     StreamSplits, open_image_folder)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")


def load_dataset(name: str, data_dir: str | Path | None = None, val_size: int = 5000, size: int = 32) -> DataSplits:
    """Load data set ``name`` (one of :data:`DATASETS`) from ``data_dir`` at ``size×size``; only
    Fashion-MNIST has a default folder (Debian's ``dataset-fashion-mnist``). The last ``val_size``
    training samples are the validation split."""
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fmnist"):
        return load_fashion_mnist(data_dir, val_size, size)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if data_dir is None:
        raise DataError(f"{key} needs a data folder (--data-dir); see docs/training.md for the expected layout")
    if key == "mnist":
        return load_mnist(data_dir, val_size, size)
    if key in ("cifar10", "cifar100"):
        if size != 32:
            raise DataError(f"{key} images are 32×32; size {size} is not supported")
        return load_cifar(data_dir, 10 if key == "cifar10" else 100, val_size)
    return load_image_folder(data_dir, size, val_size)


__all__ = ["Augment", "BatchLoader", "DataError", "DataSplits", "ImageDataset", "NO_AUGMENT", "DATASETS",
           "FASHION_MNIST_DIR", "NumpyOnlyUnpickler", "channel_stats", "holdout", "load_cifar", "load_dataset",
           "load_fashion_mnist", "load_image_folder", "load_mnist", "pad_to", "random_crop", "random_flip",
           "read_idx", "safe_unpickle", "InMemoryImages", "RandomResizedCrop", "ResumableSampler",
           "StreamingImageFolder", "StreamLoader", "StreamSplits", "open_image_folder"]
