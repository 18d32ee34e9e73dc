"""A farm's devices grouped by fingerprint (phone model + OS + runtime + settings): one group is one store
environment and makes one table. Units of one model still differ (silicon, thermals): every unit measures the
same few shared reference points first, and a unit far from its group is flagged and kept out of the group's
table unless the user mixes units on purpose (``--mix-units``). The units a table was made from are recorded
in its environment, hence in the table's provenance."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .spec import FarmError

#: A unit whose shared reference points differ from its group's median by more than this is an outlier.
DEFAULT_UNIT_THRESHOLD = 0.10


@dataclass
class DeviceGroup:
    """The agents of one fingerprint and what the store needs to know about them."""

    fingerprint: str
    agents: list[str]
    identity: dict[str, Any]
    units: dict[str, dict] = field(default_factory=dict)   # agent → {"ratio": …, "outlier": …}
    excluded: dict[str, str] = field(default_factory=dict)  # agent → why it does not work for this group

    @property
    def working(self) -> list[str]:
        return [a for a in self.agents if a not in self.excluded]


def group_devices(identities: Mapping[str, dict | None], errors: Mapping[str, str]) -> tuple[list[DeviceGroup],
                                                                                              dict[str, str]]:
    """Agents with the same fingerprint form one group (sorted by fingerprint); an agent without an identity
    (its device could not be opened) is returned with its error instead."""
    groups: dict[str, DeviceGroup] = {}
    absent = {}
    for agent, ident in identities.items():
        if ident is None:
            absent[agent] = errors.get(agent, "no answer")
            continue
        group = groups.setdefault(ident["fingerprint"], DeviceGroup(ident["fingerprint"], [], ident))
        group.agents.append(agent)
    return [groups[k] for k in sorted(groups)], absent


def unit_ratios(medians: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each unit's median ratio to the group's per-point median over the shared reference points
    (``medians``: agent → the points' latencies, same points in the same order)."""
    agents = sorted(medians)
    values = np.array([medians[a] for a in agents], dtype=float)
    group = np.median(values, axis=0)
    return {a: float(np.median(values[i] / group)) for i, a in enumerate(agents)}


def judge_units(group: DeviceGroup, ratios: Mapping[str, float], threshold: float, mix_units: bool) -> None:
    """Record each unit's ratio in ``group.units``; keep outliers out of the group's work unless
    ``mix_units``. Two units apart by more than the threshold cannot say which one is off: refuse to mix
    them (:class:`FarmError` with what to do) unless ``mix_units``."""
    outliers = [a for a, r in ratios.items() if abs(r - 1.0) > threshold]
    for agent, ratio in ratios.items():
        group.units[agent] = {"ratio": round(ratio, 4), "outlier": agent in outliers}
    if not outliers or mix_units:
        return
    if len(outliers) == len(ratios):
        spread = max(ratios.values()) / min(ratios.values()) - 1.0
        raise FarmError(f"the units of group {group.fingerprint} ({', '.join(sorted(ratios))}) are {spread:.0%} apart "
                        f"on the shared reference points (threshold {threshold:.0%}): no majority says which is off. "
                        "Pass --mix-units to make one table of them anyway, or profile them in separate farm files")
    for agent in outliers:
        group.excluded[agent] = (f"outlier unit: {ratios[agent]:.2f}× its group on the shared reference points "
                                 f"(threshold {threshold:.0%}; --mix-units keeps it)")


__all__ = ["DEFAULT_UNIT_THRESHOLD", "DeviceGroup", "group_devices", "judge_units", "unit_ratios"]
