"""A ``torch.utils.data`` path for data that should not, or cannot, sit in memory as one tensor.

* :class:`ResumableSampler` — a seeded shuffle per epoch whose *position* resumes: its state is
  ``{"epoch", "position"}`` (samples of the epoch already consumed), and the order of an epoch depends only
  on ``(seed, epoch)``, so a run restarted from a state yields exactly the remaining samples.
* :class:`RandomResizedCrop` — the Inception/MutualNet crop (random area and aspect ratio, resized to the
  batch's resolution) and a flip, drawn from a generator seeded by ``(seed, epoch, sample)``: the same
  sample gets the same crop whichever worker decodes it.
* :class:`StreamLoader` — batches through :class:`torch.utils.data.DataLoader` (``workers`` processes);
  every batch has one resolution, drawn from ``resolutions`` by ``(seed, epoch, batch)`` (per-resolution
  crops); images are normalised in the main process. It offers ``len()`` and ``epoch(e, start)`` like
  :class:`~latbench.data.BatchLoader`, so :func:`latbench.train.loop.train` takes it as ``loader=``.
* Datasets of ``(uint8 image (C, H, W), label)``: :class:`InMemoryImages` over an
  :class:`~latbench.data.ImageDataset` (the in-memory uint8 path stays the one for small sets) and
  :class:`StreamingImageFolder`, which lists the files once and decodes **one image per item** —
  an ImageNet-sized tree never sits in memory. :func:`open_image_folder` gives train/val/test splits with
  the same split rule as :func:`~latbench.data.load_image_folder` and normalisation from a sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .dataset import DataError, ImageDataset, _generator
from .imagefolder import _pil, image_folder_tree, list_split

__all__ = ["InMemoryImages", "RandomResizedCrop", "ResumableSampler", "StreamLoader", "StreamSplits",
           "StreamingImageFolder", "center_resize", "open_image_folder"]


class ResumableSampler(Sampler[int]):
    """Indices ``0..n-1``: a permutation seeded by ``(seed, epoch)`` (or in order without ``shuffle``),
    starting at ``position``. ``state_dict()``/``load_state_dict()`` carry ``{"epoch", "position"}``."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0) -> None:
        if n < 1:
            raise DataError("ResumableSampler: no samples")
        self.n, self.shuffle, self.seed = int(n), shuffle, seed
        self.epoch, self.position = 0, 0

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=_generator(self.seed, epoch)) if self.shuffle else torch.arange(self.n)

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        if not 0 <= position <= self.n:
            raise DataError(f"position {position} outside 0..{self.n}")
        self.epoch, self.position = int(epoch), int(position)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.position:].tolist())

    def __len__(self) -> int:
        return self.n - self.position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]), int(state["position"]))


def center_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (bilinear, antialiased), then the central ``size×size`` (float, 0..255)."""
    c, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = image.float()[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size]


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random crop of ``scale`` of the area and an aspect ratio in ``ratio`` (log-uniform), resized to the
    requested size; ``flip`` mirrors with probability 1/2. After 10 failed draws, the centre crop."""

    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __call__(self, image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        c, h, w = image.shape
        area = h * w
        box = None
        for _ in range(10):
            u = torch.rand(3, generator=generator).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            log_r = math.log(self.ratio[0]) + u[1] * (math.log(self.ratio[1]) - math.log(self.ratio[0]))
            cw, ch = round(math.sqrt(target * math.exp(log_r))), round(math.sqrt(target / math.exp(log_r)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                box = (top, left, ch, cw)
                break
        if box is None:
            s = min(h, w)
            box = ((h - s) // 2, (w - s) // 2, s, s)
        top, left, ch, cw = box
        x = image[:, top:top + ch, left:left + cw].float()[None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if self.flip and bool(torch.rand(1, generator=generator) < 0.5):
            x = x.flip(-1)
        return x


class InMemoryImages(Dataset):
    """An :class:`ImageDataset` as a torch dataset of ``(uint8 image, label)``."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data.images[i], int(self.data.labels[i])


class StreamingImageFolder(Dataset):
    """``files[i]`` decoded on access (Pillow) as uint8 ``(C, H, W)`` at its own size, with ``labels[i]``."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], grayscale: bool = False,
                 name: str = "imagefolder") -> None:
        if len(files) != len(labels):
            raise DataError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels = [Path(f) for f in files], [int(y) for y in labels]
        self.classes, self.mode, self.name = tuple(classes), "L" if grayscale else "RGB", name

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, i: int) -> torch.Tensor:
        Image = _pil()
        path = self.files[i]
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert(self.mode), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{path}: cannot decode image ({err}); remove or replace the file") from err
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.array(arr, copy=True, order="C"))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.decode(i), self.labels[i]


class _Transformed(Dataset):
    """Items addressed as ``(index, resolution, epoch)``: decoded and cropped (train) or centre-resized."""

    def __init__(self, dataset: Dataset, crop: RandomResizedCrop | None, seed: int) -> None:
        self.dataset, self.crop, self.seed = dataset, crop, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        i, size, epoch = item
        image, label = self.dataset[i]
        if self.crop is None:
            return center_resize(image, size), label
        return self.crop(image, size, _generator(self.seed + 7919, epoch, i)), label


class _BatchPlan(Sampler[list]):
    def __init__(self, loader: "StreamLoader", epoch: int, start: int) -> None:
        self.loader, self.epoch, self.start = loader, epoch, start

    def __iter__(self):
        lo = self.loader
        order = lo.sampler.order(self.epoch).tolist()
        for b in range(self.start, len(lo)):
            idx = order[b * lo.batch_size:(b + 1) * lo.batch_size]
            size = lo.resolution(self.epoch, b)
            yield [(i, size, self.epoch) for i in idx]

    def __len__(self) -> int:
        return len(self.loader) - self.start


class StreamLoader:
    """Normalised float batches and labels from ``dataset`` (items ``(uint8 image, label)``).

    Every batch has one resolution from ``resolutions``, drawn by ``(seed, epoch, batch)``; with ``crop``
    (training) each image is a :class:`RandomResizedCrop` at that resolution, without it (evaluation) its
    centre, resized. ``workers`` > 0 decodes in that many processes. ``state_dict()`` after consuming some
    batches of an epoch is where a resumed run starts (``load_state_dict`` then ``resume()``).
    """

    def __init__(self, dataset: Dataset, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                 resolutions: Sequence[int] = (32,), crop: RandomResizedCrop | None = RandomResizedCrop(),
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, workers: int = 0) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if not resolutions:
            raise DataError("StreamLoader: no resolutions")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.resolutions, self.crop, self.seed = tuple(int(r) for r in resolutions), crop, seed
        self.drop_last, self.workers = drop_last, workers
        self.sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed)
        self._items = _Transformed(dataset, crop, seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def resolution(self, epoch: int, batch: int) -> int:
        if len(self.resolutions) == 1:
            return self.resolutions[0]
        rng = np.random.default_rng([self.seed, epoch, batch])
        return self.resolutions[int(rng.integers(len(self.resolutions)))]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start``; the sampler's state follows what was consumed."""
        self.sampler.set_epoch(epoch, min(len(self.dataset), start * self.batch_size))
        loader = DataLoader(self._items, batch_sampler=_BatchPlan(self, epoch, start), num_workers=self.workers)
        for b, (images, labels) in enumerate(loader, start=start):
            self.sampler.set_epoch(epoch, min(len(self.dataset), (b + 1) * self.batch_size))
            yield (images - self.mean) / self.std, torch.as_tensor(labels, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def resume(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the epoch the state points into (a position inside a batch restarts that batch)."""
        return self.epoch(self.sampler.epoch, self.sampler.position // self.batch_size)


@dataclass(frozen=True)
class StreamSplits:
    """Streaming train / validation / test sets of an ImageFolder tree, with the normalisation to apply."""

    name: str
    train: StreamingImageFolder
    val: StreamingImageFolder | None
    test: StreamingImageFolder
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def open_image_folder(root: str | Path, val_size: int = 5000, grayscale: bool = False, stats_images: int = 1000,
                      stats_size: int = 64, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> StreamSplits:
    """``root/train/<class>/…`` and ``root/test/<class>/…`` (or ``val/``) as streaming data sets: files are
    listed, not decoded. The training files are put in a fixed pseudo-random order (seed 0) and the last
    ``val_size`` held out, as :func:`~latbench.data.load_image_folder` does; the normalisation comes from
    ``stats_images`` training images (seeded sample) centre-resized to ``stats_size``, unless ``mean`` and
    ``std`` are given (then nothing is decoded here)."""
    root = Path(root)
    train_dir, test_dir, classes = image_folder_tree(root)
    name = f"imagefolder:{root.name}"
    files, labels = list_split(train_dir, classes)
    shuffle = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    files, labels = [files[i] for i in shuffle], [labels[i] for i in shuffle]
    if val_size >= len(files):
        raise DataError(f"{train_dir}: validation size {val_size} leaves no training data ({len(files)} images)")
    cut = len(files) - max(0, val_size)
    train = StreamingImageFolder(files[:cut], labels[:cut], classes, grayscale, name)
    val = StreamingImageFolder(files[cut:], labels[cut:], classes, grayscale, f"{name}:val") if val_size > 0 else None
    test = StreamingImageFolder(*list_split(test_dir, classes), classes, grayscale, f"{name}:test")
    if mean is None or std is None:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:max(1, stats_images)].tolist()
        sample = torch.stack([center_resize(train.decode(i), stats_size) for i in pick]) / 255.0
        mean = sample.mean(dim=(0, 2, 3)).tolist()
        std = sample.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6).tolist()
    channels = 1 if grayscale else 3
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean/std need one value per channel ({channels})")
    return StreamSplits(name, train, val, test, classes, tuple(float(v) for v in mean), tuple(float(v) for v in std))
