"""`Architecture`: one pruned sub-network of a zoo model — a width per channel group, a weight sparsity
per prunable conv and an input resolution — with a stable JSON form."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..files import read_json
from .spec import ModelSpec


class ArchitectureError(ValueError):
    """An architecture that does not fit its model."""


@dataclass(frozen=True)
class Architecture:
    """Widths per channel group, sparsity per prunable conv (missing = dense) and the input resolution.

    >>> from latbench.models import get_model, Architecture
    >>> spec = get_model("resnet56")
    >>> arch = Architecture.full(spec)
    >>> Architecture.from_json(arch.to_json()) == arch
    True
    """

    model: str
    resolution: int
    widths: Mapping[str, int]
    sparsity: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", {k: int(v) for k, v in sorted(self.widths.items())})
        object.__setattr__(self, "sparsity", {k: float(v) for k, v in sorted(self.sparsity.items()) if float(v) != 0.0})

    def __hash__(self) -> int:
        return hash(self.to_json())

    @classmethod
    def full(cls, spec: ModelSpec, resolution: int | None = None) -> "Architecture":
        return cls(spec.name, resolution or spec.base_resolution, dict(spec.groups), {})

    def to_dict(self) -> dict:
        return {"model": self.model, "resolution": self.resolution, "widths": dict(self.widths),
                "sparsity": dict(self.sparsity)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Architecture":
        try:
            return cls(str(data["model"]), int(data["resolution"]), dict(data["widths"]), dict(data.get("sparsity", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise ArchitectureError(
                f"not an architecture ({err!r}): expected {{'model', 'resolution', 'widths', 'sparsity'}}") from err

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ArchitectureError(f"architecture is not valid JSON: {err}") from err

    @classmethod
    def load(cls, path: str | Path,
             recover: str = "write it again, e.g. with Architecture.to_json()") -> "Architecture":
        """The architecture in the JSON file ``path``; one that does not parse raises an error naming the
        file and ``recover`` (what to do about it)."""
        data = read_json(path, recover)
        try:
            return cls.from_dict(data)
        except ArchitectureError as err:
            raise ArchitectureError(f"{path}: {err}") from err

    def validate(self, spec: ModelSpec) -> "Architecture":
        """Check that this architecture fits ``spec``; raise :class:`ArchitectureError` naming the problem."""
        if self.model != spec.name:
            raise ArchitectureError(f"architecture is for model {self.model!r}, not {spec.name!r}")
        unknown = set(self.widths) - set(spec.groups)
        missing = set(spec.groups) - set(self.widths)
        if unknown or missing:
            raise ArchitectureError(
                f"widths do not match {spec.name!r}: unknown groups {sorted(unknown)}, missing groups {sorted(missing)}")
        for group, width in self.widths.items():
            if not 1 <= width <= spec.groups[group]:
                raise ArchitectureError(
                    f"group {group!r}: width {width} outside 1..{spec.groups[group]} (the full width of {spec.name!r})")
            if width % spec.multiples.get(group, 1):
                raise ArchitectureError(f"group {group!r}: width {width} is not a multiple of "
                                        f"{spec.multiples[group]} (its grouped convs keep their number of groups)")
        bad = set(self.sparsity) - set(spec.sparsifiable_layers)
        if bad:
            raise ArchitectureError(f"sparsity given for {sorted(bad)}, which are not prunable convs of {spec.name!r}")
        for layer, s in self.sparsity.items():
            if not 0.0 <= s < 1.0:
                raise ArchitectureError(f"layer {layer!r}: sparsity {s} outside [0, 1)")
        if self.resolution < 1:
            raise ArchitectureError(f"resolution {self.resolution} must be positive")
        spec.input_hw(self.resolution)
        return self


def random_architectures(spec: ModelSpec, n: int, seed: int = 0, min_ratio: float = 0.25,
                         sparsities: tuple[float, ...] = (0.0,), resolutions: tuple[int, ...] | None = None,
                         divisor: int = 1, max_ratio: float = 1.0) -> list[Architecture]:
    """Sample ``n`` architectures: each group's width uniform in [min_ratio·c, max_ratio·c] (rounded to
    ``divisor``), each conv's sparsity uniform over ``sparsities``, the resolution uniform over ``resolutions``."""
    if not 0 < min_ratio <= max_ratio <= 1:
        raise ArchitectureError(f"need 0 < min_ratio ≤ max_ratio ≤ 1, got {min_ratio}, {max_ratio}")
    rng = np.random.default_rng(seed)
    resolutions = tuple(resolutions or spec.resolutions)
    archs = []
    for _ in range(n):
        widths = {}
        for group, full in spec.groups.items():
            lo = max(1, int(np.ceil(min_ratio * full)))
            w = int(rng.integers(lo, max(lo, int(max_ratio * full)) + 1))
            step = math.lcm(divisor, spec.multiples.get(group, 1))
            if step > 1:
                w = int(min(full, max(step, step * round(w / step))))
            widths[group] = w
        sparsity = {name: float(rng.choice(sparsities)) for name in spec.sparsifiable_layers}
        archs.append(Architecture(spec.name, int(rng.choice(resolutions)), widths, sparsity))
    return archs
