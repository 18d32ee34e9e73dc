"""CIFAR-10 / CIFAR-100 from the official distributions.

The *binary* version (``cifar-10-batches-bin/data_batch_1.bin`` …, ``cifar-100-binary/train.bin``) is
parsed directly and preferred: fixed-size records (label byte(s) + 3072 pixel bytes, R/G/B planes of
32×32), nothing executable. The *python* version (``cifar-10-batches-py/data_batch_1`` …) is a pickle;
it is read with a restricted unpickler that can only rebuild numpy arrays (``numpy.ndarray``,
``numpy.dtype``, ``numpy.core.multiarray._reconstruct``, and ``_codecs.encode`` for bytes) and plain
containers, so a crafted file cannot run code — any other global is refused with an error naming it.
"""
from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, DataSplits, ImageDataset, channel_stats, holdout

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its files, in both distributions."""

    name: str
    num_classes: int
    bin_dir: str
    bin_train: tuple[str, ...]
    bin_test: str
    bin_label_bytes: int      # CIFAR-100 records hold (coarse, fine); the fine label is the last byte
    bin_names: str
    py_dir: str
    py_train: tuple[str, ...]
    py_test: str
    py_labels: str
    py_meta: str
    py_names: str


CIFAR10 = _Layout("cifar10", 10, "cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                  "test_batch.bin", 1, "batches.meta.txt", "cifar-10-batches-py",
                  tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels", "batches.meta", "label_names")
CIFAR100 = _Layout("cifar100", 100, "cifar-100-binary", ("train.bin",), "test.bin", 2, "fine_label_names.txt",
                   "cifar-100-python", ("train",), "test", "fine_labels", "meta", "fine_label_names")


def _reconstruct():
    """numpy's array-rebuilding helper, wherever this numpy keeps it."""
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy ≥ 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays; anything else (``os.system``,
    ``builtins.eval`` …) raises :class:`pickle.UnpicklingError`."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # how Python 3 writes bytes in protocol-2 pickles
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")


def safe_unpickle(path: Path) -> dict:
    """Load a CIFAR python-version batch (a dict of numpy arrays and lists) with :class:`NumpyOnlyUnpickler`."""
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: not a readable CIFAR batch ({err!r}); the file is corrupt — download it again") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} not found")
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records; "
                        "the file is truncated or corrupt — download it again")
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)


def _read_python(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} not found")
    batch = safe_unpickle(path)
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"{path}: no {err} entry; is this a CIFAR python batch?") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS or labels.shape != (data.shape[0],):
        raise DataError(f"{path}: expected uint8 data (N, {_PIXELS}) and N labels, got {data.dtype} {data.shape} "
                        f"and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(layout: _Layout, folder: Path, binary: bool) -> tuple[str, ...]:
    if binary:
        path = folder / layout.bin_names
        names = [line.strip() for line in path.read_text().splitlines()] if path.is_file() else []
    else:
        path = folder / layout.py_meta
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in safe_unpickle(path).get(layout.py_names, [])] if path.is_file() else []
    names = [n for n in names if n]
    return tuple(names) if len(names) == layout.num_classes else tuple(str(i) for i in range(layout.num_classes))


def _locate(layout: _Layout, directory: Path) -> tuple[Path, bool]:
    """The folder holding the batches and whether it is the binary version."""
    for folder, binary in ((directory / layout.bin_dir, True), (directory, True),
                           (directory / layout.py_dir, False), (directory, False)):
        first = layout.bin_train[0] if binary else layout.py_train[0]
        if (folder / first).is_file():
            return folder, binary
    raise DataError(f"no {layout.name} batches in {directory}: expected {layout.bin_dir}/{layout.bin_train[0]} "
                    f"(binary version, preferred) or {layout.py_dir}/{layout.py_train[0]} (python version); "
                    f"download and unpack the official archive there and pass that folder as --data-dir")


def load_cifar(directory: str | Path, num_classes: int = 10, val_size: int = 5000) -> DataSplits:
    """CIFAR-10 or CIFAR-100 (``num_classes``) from ``directory`` (the folder holding the unpacked archive,
    or the batches folder itself). The last ``val_size`` training images are the validation set."""
    if num_classes not in (10, 100):
        raise DataError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    layout = CIFAR10 if num_classes == 10 else CIFAR100
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data folder {directory} does not exist; pass --data-dir with the unpacked {layout.name} archive")
    folder, binary = _locate(layout, directory)

    def read(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_binary(folder / n, layout.bin_label_bytes) if binary else _read_python(folder / n, layout.py_labels)
                 for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{folder}: labels outside 0..{num_classes - 1}; is this really {layout.name}?")
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    train_x, train_y = read(layout.bin_train if binary else layout.py_train)
    test_x, test_y = read((layout.bin_test,) if binary else (layout.py_test,))
    classes = _class_names(layout, folder, binary)
    mean, std = channel_stats(train_x)
    train = ImageDataset(layout.name, train_x, train_y, num_classes, mean, std, classes)
    test = ImageDataset(f"{layout.name}:test", test_x, test_y, num_classes, mean, std, classes)
    train_part, val_part = holdout(train, val_size)
    return DataSplits(layout.name, train_part, val_part, test)
