"""In-memory image data sets (uint8), deterministic splits and batch iteration with plain-torch augmentation.

Images stay as ``uint8`` tensors shaped ``(N, C, H, W)`` — 60k Fashion-MNIST images at 32×32 are 61 MB,
CIFAR-10 is 154 MB — and are converted to normalised float only batch by batch. Every random choice
(shuffle order, crop offsets, flips) comes from a generator seeded by ``(seed, epoch, batch)``, so an
epoch can be restarted at any batch and yields exactly the same batches: this is what makes training
resumable with the same result as an uninterrupted run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Iterator

import torch
import torch.nn.functional as F
from annotated_types import Ge

from ..recipe import Opt


class DataError(ValueError):
    """A data set that is missing, corrupt or does not fit what was asked for."""


@dataclass(frozen=True)
class ImageDataset:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64, with the normalisation to apply."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 tensor (N, C, H, W), got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.name}: mean/std need one value per channel ({self.channels})")
        if len(self) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise DataError(f"{self.name}: labels outside 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> "ImageDataset":
        """A view on some samples (same normalisation)."""
        return ImageDataset(name or self.name, self.images[index], self.labels[index], self.num_classes,
                            self.mean, self.std, self.classes)

    def head(self, n: int) -> "ImageDataset":
        """The first ``n`` samples (for quick runs and tests)."""
        return self.subset(slice(0, int(n)), f"{self.name}[:{int(n)}]")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch → float32, per-channel ``(x/255 - mean) / std``."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        return (images.float() - mean) / std


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test sets of one data set. ``val`` is carved from the training files
    (deterministically, see :func:`holdout`) and is what searches score candidates on; ``test`` is
    the official test set, reported only."""

    name: str
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.channels

    @property
    def resolution(self) -> int:
        return self.train.resolution

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val) if self.val is not None else 0,
                "test": len(self.test), "num_classes": self.num_classes, "in_channels": self.in_channels,
                "resolution": self.resolution}


def holdout(data: ImageDataset, val_size: int) -> tuple[ImageDataset, ImageDataset | None]:
    """Split off the *last* ``val_size`` samples as validation set (deterministic, no shuffling, so
    every tool that asks for the same split gets the same images)."""
    if val_size <= 0:
        return data, None
    if val_size >= len(data):
        raise DataError(f"{data.name}: validation size {val_size} leaves no training data ({len(data)} samples); "
                        "choose a smaller val_size (--val-size)")
    cut = len(data) - int(val_size)
    return data.subset(slice(0, cut), f"{data.name}:train"), data.subset(slice(cut, None), f"{data.name}:val")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, computed in chunks (float64 sums)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-pad ``(N, C, H, W)`` images with zeros to ``size×size`` (28×28 Fashion-MNIST → 32×32: the
    CIFAR-shape zoo models then run unchanged; zero is the background of these images)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise DataError(f"images are {h}×{w}, larger than the target {size}×{size}; resize them instead")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


# ---------------------------------------------------------------------------------------------- augmentation
def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random ``H×W`` window per image (one gather, no Python loop)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random crop after zero-padding by ``crop_padding`` (0: none) and
    horizontal flips."""

    crop_padding: Annotated[int, Ge(0), Opt(help="augmentation: random crop after zero-padding by N pixels (0: none)")] = 4
    flip: Annotated[bool, Opt(help="augmentation: random horizontal flips")] = True

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images = random_flip(images, generator)
        return images

    def to_dict(self) -> dict:
        return {"crop_padding": self.crop_padding, "flip": self.flip}


NO_AUGMENT = Augment(crop_padding=0, flip=False)


def _generator(seed: int, epoch: int, batch: int = -1) -> torch.Generator:
    # Distinct, reproducible streams per (seed, epoch, batch); large odd multipliers avoid collisions.
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + batch + 1) % (2 ** 63))


@dataclass
class BatchLoader:
    """Batches of normalised float images and int64 labels.

    With ``shuffle`` the order of epoch ``e`` is a permutation seeded by ``(seed, e)``; augmentation of
    batch ``b`` uses a generator seeded by ``(seed, e, b)``. ``epoch(e, start=b)`` therefore resumes an
    epoch mid-way with identical batches. ``drop_last`` keeps BN statistics away from tiny batches.
    """

    data: ImageDataset
    batch_size: int = 128
    shuffle: bool = False
    augment: Augment = NO_AUGMENT
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be positive, got {self.batch_size}")
        if len(self.data) == 0:
            raise DataError(f"{self.data.name} is empty")

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, beginning at batch ``start``."""
        n = len(self.data)
        order = torch.randperm(n, generator=_generator(self.seed, epoch)) if self.shuffle else None
        for b in range(start, len(self)):
            idx = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            if order is not None:
                idx = order[idx]
            images, labels = self.data.images[idx], self.data.labels[idx]
            if self.augment != NO_AUGMENT:
                images = self.augment(images, _generator(self.seed, epoch, b))
            yield self.data.normalize(images), labels
