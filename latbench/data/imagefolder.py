"""ImageFolder trees: ``root/train/<class>/*.png`` and ``root/test/<class>/…`` (or ``root/val/<class>/…``).

Images are decoded with Pillow (an optional dependency, imported only here), converted to RGB (or
grey), resized so the shorter side is ``size`` and centre-cropped to ``size×size``, and kept as uint8.
Classes are the sub-folder names of ``train/`` in sorted order. The training samples are put in a
fixed pseudo-random order (seed 0) before the last ``val_size`` are held out, so that the validation
set is not just the alphabetically last classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .dataset import DataError, DataSplits, ImageDataset, channel_stats, holdout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise DataError("ImageFolder data needs Pillow to decode images: pip install pillow") from err
    return Image


def _decode(path: Path, size: int, mode: str) -> np.ndarray:
    Image = _pil()
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            w, h = img.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err}); remove or replace the file") from err
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def list_split(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """The image files of ``folder/<class>/`` in class order, and their labels (index in ``classes``)."""
    files, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = folder / cls
        found = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if cls_dir.is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders {list(classes)[:5]}…")
    return files, labels


def _read_split(folder: Path, classes: tuple[str, ...], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    files, labels = list_split(folder, classes)
    images = np.stack([_decode(p, size, mode) for p in files])
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def image_folder_tree(root: str | Path) -> tuple[Path, Path, tuple[str, ...]]:
    """``(train folder, test or val folder, class names)`` of an ImageFolder tree, checked."""
    root = Path(root)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{root}: expected an ImageFolder tree with train/<class>/… and test/<class>/… "
                        "(or val/<class>/…) sub-folders")
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if len(classes) < 2:
        raise DataError(f"{train_dir}: need at least two class sub-folders, found {list(classes)}")
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"{test_dir}: classes {unknown} do not exist in {train_dir}")
    return train_dir, test_dir, classes


def load_image_folder(root: str | Path, size: int = 32, val_size: int = 5000, grayscale: bool = False) -> DataSplits:
    """Load ``root/train`` and ``root/test`` (or ``root/val``) class-folder trees at ``size×size``."""
    root = Path(root)
    train_dir, test_dir, classes = image_folder_tree(root)
    mode = "L" if grayscale else "RGB"
    name = f"imagefolder:{root.name}"
    train_x, train_y = _read_split(train_dir, classes, size, mode)
    test_x, test_y = _read_split(test_dir, classes, size, mode)
    shuffle = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))
    train_x, train_y = train_x[shuffle], train_y[shuffle]
    mean, std = channel_stats(train_x)
    train = ImageDataset(name, train_x, train_y, len(classes), mean, std, classes)
    test = ImageDataset(f"{name}:test", test_x, test_y, len(classes), mean, std, classes)
    train_part, val_part = holdout(train, val_size)
    return DataSplits(name, train_part, val_part, test)
