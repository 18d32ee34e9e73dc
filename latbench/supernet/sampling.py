"""Which sub-networks (and resolutions) a supernet trains on: search spaces and seeded samplers.

* :class:`SearchSpace` — per channel group, the widths on a grid of ratios of the full width (default
  MetaPruning's 31 ratios 0.10, 0.13, …, 1.00), rounded to a channel multiple; and the resolutions.
* :class:`SandwichSampler` — the sandwich rule (Yu & Huang, US-Nets): the space's true largest and
  smallest sub-networks plus ``n_random`` random ones per step.
* :class:`PopulationSampler` — draws from a given population (the JCW search's P ∪ Q), optionally with
  the population's largest and smallest by conv weights.
* :class:`ResolutionSampler` and :func:`resize` — resolutions.

Every sampler is a pure function of ``(seed, step)``: ``sample(step)`` draws from
``numpy.random.default_rng([seed, step])``, so a resumed run draws what the uninterrupted one would have.

>>> from latbench.models import get_model
>>> space = SearchSpace.from_spec(get_model("resnet20"), multiple=4)
>>> space.choices["stage1"]
(4, 8, 12, 16)
>>> archs = SandwichSampler(space, n_random=2, seed=0).sample(step=0)
>>> [sum(a.widths.values()) for a in archs[:2]] == [sum(space.largest().widths.values()),
...                                                 sum(space.smallest().widths.values())]
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models import Architecture, ModelSpec

#: MetaPruning's width ratios: 0.10 to 1.00 in steps of 0.03 (31 values).
METAPRUNING_RATIOS: tuple[float, ...] = tuple(round(0.1 + 0.03 * i, 2) for i in range(31))


def round_width(full: int, ratio: float, multiple: int = 1) -> int:
    """``ratio·full`` rounded half up to a multiple of ``multiple``, within [min(multiple, full), full]."""
    if not 0 < ratio <= 1:
        raise ValueError(f"width ratio {ratio} outside (0, 1]")
    if multiple < 1:
        raise ValueError(f"channel multiple {multiple} must be ≥ 1")
    w = multiple * int(np.floor(ratio * full / multiple + 0.5))
    return int(min(full, max(min(multiple, full), w)))


def width_choices(full: int, ratios: Sequence[float] = METAPRUNING_RATIOS, multiple: int = 1) -> tuple[int, ...]:
    """The distinct widths of a group of ``full`` channels on the ratio grid, ascending."""
    return tuple(sorted({round_width(full, r, multiple) for r in ratios}))


def weight_count(spec: ModelSpec, arch: Architecture, in_channels: int | None = None) -> float:
    """Non-zero conv weights of ``arch``'s sub-network (its size, as the sandwich rule compares them)."""
    total = 0.0
    for layer in spec.layers:
        if not layer.sparsifiable:
            continue
        cin, cout = spec.channels(arch.widths, layer)
        if layer.fixed_in is not None and in_channels is not None:
            cin = in_channels
        per_filter = 1 if layer.kind == "depthwise" else cin
        total += cout * per_filter * layer.kernel ** 2 * (1.0 - arch.sparsity.get(layer.name, 0.0))
    return total


@dataclass(frozen=True)
class SearchSpace:
    """Width choices per group (ascending) and resolutions of one model: the sub-networks to train on."""

    model: str
    choices: Mapping[str, tuple[int, ...]]
    resolutions: tuple[int, ...]
    ratios: tuple[float, ...] = field(default=METAPRUNING_RATIOS)
    multiple: int = 1

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, ratios: Sequence[float] = METAPRUNING_RATIOS, multiple: int = 1,
                  resolutions: Sequence[int] | None = None, max_widths: Mapping[str, int] | None = None
                  ) -> "SearchSpace":
        """The grid of ``ratios`` of each group's full width (``max_widths``, default the spec's), rounded
        to ``multiple`` (the latency table's channel multiple); ``resolutions`` default the spec's."""
        full = dict(max_widths or spec.groups)
        choices = {g: width_choices(full[g], ratios, multiple) for g in spec.groups}
        return cls(spec.name, choices, tuple(sorted(resolutions or spec.resolutions)), tuple(ratios), multiple)

    def _arch(self, widths: Mapping[str, int], resolution: int) -> Architecture:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution} not in the search space's {self.resolutions}")
        return Architecture(self.model, resolution, widths)

    def largest(self, resolution: int | None = None) -> Architecture:
        """Every group at its widest choice, at ``resolution`` (default the largest)."""
        return self._arch({g: c[-1] for g, c in self.choices.items()}, resolution or self.resolutions[-1])

    def smallest(self, resolution: int | None = None) -> Architecture:
        """Every group at its narrowest choice, at ``resolution`` (default the smallest)."""
        return self._arch({g: c[0] for g, c in self.choices.items()}, resolution or self.resolutions[0])

    def random(self, rng: np.random.Generator, resolution: int | None = None) -> Architecture:
        """Every group's width uniform over its choices; the resolution uniform unless given."""
        widths = {g: int(c[rng.integers(len(c))]) for g, c in self.choices.items()}
        return self._arch(widths, resolution or int(self.resolutions[rng.integers(len(self.resolutions))]))

    def contains(self, arch: Architecture) -> bool:
        return (arch.model == self.model and arch.resolution in self.resolutions
                and set(arch.widths) == set(self.choices)
                and all(w in self.choices[g] for g, w in arch.widths.items()))


class SandwichSampler:
    """Per step: the space's largest sub-network, its smallest, and ``n_random`` random ones.

    ``vary_resolution=True`` (BigNAS): the largest at the largest resolution, the smallest at the
    smallest, the random ones at random resolutions; otherwise all at ``resolution`` (default the
    largest). ``uniform=True`` draws one ratio for all groups (a slimmable, US-Net-style width multiplier)
    instead of a width per group.
    """

    def __init__(self, space: SearchSpace, n_random: int = 2, *, seed: int = 0, vary_resolution: bool = False,
                 resolution: int | None = None, uniform: bool = False) -> None:
        if n_random < 0:
            raise ValueError(f"n_random {n_random} must be ≥ 0")
        self.space, self.n_random, self.seed = space, n_random, seed
        self.vary_resolution, self.uniform = vary_resolution, uniform
        self.resolution = resolution or space.resolutions[-1]

    def _random(self, rng: np.random.Generator) -> Architecture:
        res = None if self.vary_resolution else self.resolution
        if not self.uniform:
            return self.space.random(rng, res)
        ratio = float(self.space.ratios[rng.integers(len(self.space.ratios))])
        full = {g: c[-1] for g, c in self.space.choices.items()}
        widths = {g: round_width(w, ratio, self.space.multiple) for g, w in full.items()}
        res = res or int(self.space.resolutions[rng.integers(len(self.space.resolutions))])
        return self.space._arch(widths, res)

    def sample(self, step: int) -> list[Architecture]:
        rng = np.random.default_rng([self.seed, step])
        hi = self.space.largest(None if self.vary_resolution else self.resolution)
        lo = self.space.smallest(None if self.vary_resolution else self.resolution)
        return [hi, lo] + [self._random(rng) for _ in range(self.n_random)]


class PopulationSampler:
    """Per step: ``n`` distinct members of ``population`` drawn uniformly; with ``sandwich`` (needs
    ``spec``) the population's largest and smallest by non-zero conv weights first (how JCW trains on
    P ∪ Q). ``in_channels``: the data's channels, which size the stem (default the spec's)."""

    def __init__(self, population: Sequence[Architecture], n: int = 1, *, seed: int = 0, sandwich: bool = False,
                 spec: ModelSpec | None = None, in_channels: int | None = None) -> None:
        self.population = list(dict.fromkeys(population))
        if not self.population:
            raise ValueError("PopulationSampler: empty population")
        if n < 1:
            raise ValueError(f"n {n} must be ≥ 1")
        if sandwich and spec is None:
            raise ValueError("PopulationSampler(sandwich=True) needs the spec to size the architectures")
        self.n, self.seed, self.sandwich = n, seed, sandwich
        sizes = [weight_count(spec, a, in_channels) for a in self.population] if sandwich else []
        self._extremes = [int(np.argmax(sizes)), int(np.argmin(sizes))] if sandwich else []

    def sample(self, step: int) -> list[Architecture]:
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(self.population), size=min(self.n, len(self.population)), replace=False).tolist()
        return [self.population[i] for i in dict.fromkeys(self._extremes + picks)]


class ResolutionSampler:
    """A resolution per step, uniform over ``resolutions``."""

    def __init__(self, resolutions: Sequence[int], *, seed: int = 0) -> None:
        if not resolutions:
            raise ValueError("ResolutionSampler: no resolutions")
        self.resolutions, self.seed = tuple(int(r) for r in resolutions), seed

    def sample(self, step: int) -> int:
        rng = np.random.default_rng([self.seed, step])
        return self.resolutions[int(rng.integers(len(self.resolutions)))]


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """``x`` (N, C, H, W) resized bilinearly to ``resolution``×``resolution`` (returned as is when it is)."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


__all__ = ["METAPRUNING_RATIOS", "PopulationSampler", "ResolutionSampler", "SandwichSampler", "SearchSpace",
           "resize", "round_width", "width_choices", "weight_count"]
