"""MNIST-style IDX files (Fashion-MNIST, MNIST), gzip-compressed or raw.

IDX format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, DataSplits, ImageDataset, channel_stats, holdout, pad_to

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array; errors name the file and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except FileNotFoundError as err:
        raise DataError(f"{path} not found") from err
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read/decompress ({err}); the file is corrupt — download it again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX type code 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header says {shape} = {expected} bytes but the file holds {len(raw) - header}; "
                        "the file is truncated or corrupt — download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str, hint: str) -> Path:
    for candidate in (f"{stem}.gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / candidate).is_file():
            return directory / candidate
    raise DataError(f"{directory / (stem + '.gz')} not found (nor an uncompressed {stem}); {hint}")


def _load_idx_split(directory: Path, prefix: str, hint: str, name: str, size: int,
                    classes: tuple[str, ...]) -> ImageDataset:
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte", hint)
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte", hint)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape} labels do not match {images.shape[0]} images in {images_path}")
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..{len(classes) - 1}")
    x = pad_to(torch.from_numpy(images.copy()).unsqueeze(1), size)
    y = torch.from_numpy(labels.astype(np.int64))
    # Normalisation constants are filled in by the caller from the training split.
    return ImageDataset(name, x, y, len(classes), (0.0,), (1.0,), classes)


def load_idx_dataset(directory: str | Path, name: str, classes: tuple[str, ...], hint: str,
                     val_size: int = 5000, size: int = 32) -> DataSplits:
    """Train (minus the last ``val_size`` images as validation) and test sets from the four IDX files in
    ``directory``; 28×28 images are zero-padded to ``size×size``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data folder {directory} does not exist; {hint}")
    train = _load_idx_split(directory, "train", hint, f"{name}:train", size, classes)
    test = _load_idx_split(directory, "t10k", hint, f"{name}:test", size, classes)
    mean, std = channel_stats(train.images)
    with_stats = [ImageDataset(d.name, d.images, d.labels, d.num_classes, mean, std, classes) for d in (train, test)]
    train_part, val_part = holdout(with_stats[0], val_size)
    return DataSplits(name, train_part, val_part, with_stats[1])


def load_fashion_mnist(directory: str | Path | None = None, val_size: int = 5000, size: int = 32) -> DataSplits:
    """Fashion-MNIST (60k train / 10k test, 28×28 grey, padded to 32×32). Default folder: Debian's
    ``dataset-fashion-mnist`` package."""
    directory = Path(directory) if directory else FASHION_MNIST_DIR
    hint = ("install Debian's package (`apt-get install -y dataset-fashion-mnist`, files in "
            f"{FASHION_MNIST_DIR}) or pass --data-dir with the four *-ubyte(.gz) files")
    return load_idx_dataset(directory, "fashion-mnist", FASHION_MNIST_CLASSES, hint, val_size, size)


def load_mnist(directory: str | Path, val_size: int = 5000, size: int = 32) -> DataSplits:
    """MNIST digits from a folder with the four IDX files (``train-images-idx3-ubyte.gz`` …)."""
    hint = "pass --data-dir with the four MNIST files train/t10k-{images-idx3,labels-idx1}-ubyte(.gz)"
    return load_idx_dataset(directory, "mnist", tuple(str(d) for d in range(10)), hint, val_size, size)
