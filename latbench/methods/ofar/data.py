"""The images OFARPruning trains, calibrates and scores on: small sets in memory (uint8 arrays, the loop's
own seeded loader), ImageFolder trees streamed from disk (:mod:`latbench.data.stream`: a ``torch.utils.data``
loader whose seeded sampler resumes at its position, random-resized crops at the training resolution,
centre crops for BN statistics and scores) — an ImageNet-sized folder is never decoded whole."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch.utils.data import Subset

from ..common import first, sample_batches

STREAM_BATCH = 250      # evaluation batch of the streamed path


class _Head(Subset):
    """The first ``n`` items of a streamed split (named as the split is)."""

    def __init__(self, dataset, n: int) -> None:
        super().__init__(dataset, range(min(n, len(dataset))))
        self.name = f"{getattr(dataset, 'name', 'data')}[:{n}]"


@dataclass
class CohortData:
    """``train``/``val``/``test`` are :class:`~latbench.data.ImageDataset` splits (in memory) or streamed
    datasets (``streamed``; normalised with ``mean``/``std``); ``resolution`` is the training resolution."""

    name: str
    resolution: int
    train: Any
    val: Any
    test: Any
    streamed: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def load(cls, name: str, data_dir: str | None, val_size: int = 5000, *, stream: bool, in_channels: int,
             resolution: int | None,
             train_images: int | None = None, val_images: int | None = None,
             test_images: int | None = None) -> "CohortData":
        """Data set ``name`` with its last ``val_size`` training images held out; an ImageFolder tree is streamed
        when ``stream`` (at ``resolution``, default 224). The splits are cut to their first N images where
        asked."""
        from ...data import DataError, load_dataset, open_image_folder

        if name.lower().replace("_", "-") == "imagefolder" and stream:
            if data_dir is None:
                raise DataError("imagefolder needs a data folder (--data-dir); see docs/training.md")
            splits = open_image_folder(data_dir, val_size, grayscale=in_channels == 1)
            if splits.val is None:
                raise DataError(f"{splits.name} has no validation split; OFARPruning selects on held-out data")
            head = lambda ds, n: ds if n is None else _Head(ds, n)   # noqa: E731
            return cls(splits.name, resolution or 224, head(splits.train, train_images), head(splits.val, val_images),
                       head(splits.test, test_images), True, splits.mean, splits.std)
        data = load_dataset(name, data_dir, val_size)
        if data.val is None:
            raise DataError(f"{data.name} has no validation split; OFARPruning selects on held-out data")
        return cls(data.name, data.resolution, first(data.train, train_images), first(data.val, val_images),
                   first(data.test, test_images))

    def _loader(self, dataset, batch: int, resolution: int, *, train: bool, seed: int = 0):
        from ...data import RandomResizedCrop, StreamLoader

        return StreamLoader(dataset, batch, self.mean, self.std, resolutions=(resolution,),
                            crop=RandomResizedCrop() if train else None, shuffle=train, seed=seed,
                            drop_last=train and len(dataset) >= batch)

    def train_loader(self, batch_size: int, seed: int):
        """The training batches: None in memory (the SGD loop's own seeded loader), else a resumable
        :class:`~latbench.data.StreamLoader` of random-resized crops at the training resolution."""
        return self._loader(self.train, batch_size, self.resolution, train=True, seed=seed) if self.streamed else None

    def calibration(self, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed random sample of ``n`` training images (BN statistics), at the training resolution."""
        if not self.streamed:
            return sample_batches(self.train, n, batch=128, seed=seed)
        pick = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return list(self._loader(Subset(self.train, pick), 128, self.resolution, train=False))

    def batches(self, split, resolution: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``split`` (``self.val`` or ``self.test``) at ``resolution``: resized in memory, or streamed centre
        crops (decoded batch by batch)."""
        if not self.streamed:
            from ...data import BatchLoader
            from ...supernet import resize

            return [(resize(x, resolution), y) for x, y in BatchLoader(split, 500)]
        return self._loader(split, STREAM_BATCH, resolution, train=False)


__all__ = ["CohortData"]
