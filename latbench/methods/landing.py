"""The closed loop that lands a pruned network on its latency budget *as measured on the device*.

A table predicts; the device decides. A method's search meets its budget in *predicted* latency, and the
device then runs the network some percent faster or slower than predicted (the calibration is fitted on
other networks, and the device drifts), so a network pruned to a 50 % budget may measure at 33 % — accuracy
the user paid for and did not get — or above the budget. :func:`land` closes the loop:

1. the method proposes a network for a *predicted* target (its own criterion decides what to add back or
   remove: LcP's ranking with its learned compensations, the naïve ranking, one uniform ratio, …);
2. the network is exported and measured whole on the device ``repeats`` times, each a fresh measurement
   (stored, so a rerun measures nothing twice). It counts as its median, and as over the budget when a
   one-sided confidence bound of that median (:func:`upper_bound_ms`, an order statistic of the
   measurements) is: within budget means within budget under the measurement's own spread. On the 2-core
   hosts two measurements of one ≈1 ms ResNet-56 a second apart differ by 5–18 % (issue 15's JCW rerun), so a
   decision on one measurement grew networks that were in band and kept ones below it;
3. counted in ``[band, headroom] × budget``: done. Otherwise the next target corrects the prediction by what
   the device said (``target × aim·budget / counted``); once one network is over ``headroom × budget`` and one
   under, the target is bisected between the highest target within and the lowest target above it that is not
   (the proposals are monotone in the target; their measurements, under noise, need not be). A corrected
   target that proposes a network already measured is corrected again by the same factor (the method's unit is
   coarser than the correction there); a bisected one ends the search: no unit of the method's granularity fits
   in between ("no unit fits");
4. the choice: the largest network counted in ``[band, headroom] × budget``, else one between the headroom and
   the budget (in band too), else the largest below the band ("no unit fits"), else the smallest
   ("over budget"). ``headroom`` keeps the loop's choice below the budget by about the spread that the
   shipped file's own repeated check (a later sitting) shows.

The number of measurements is bounded (``max_measurements``); every step is in the returned
:class:`Landing` (the report's trajectory).

5. The shipped file decides last. The loop measures networks before retraining; the retrained, exported file
   is measured again in a later sitting, when the host's pruned/full ratio may have drifted by several
   percent. :func:`latbench.methods.common.land_shipped` therefore runs :func:`land` once more with "measure"
   meaning *retrain, export and measure the shipped file* (``LandingConfig.for_shipped``: band to the budget
   itself, at most ``shipped_rounds`` retrainings): a file over the budget is replaced by the method's next
   smaller network, one below the band by its next larger one, each retrained with the same recipe.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Callable, Sequence

import numpy as np
from annotated_types import Ge, Gt, Le, Lt

from ..models.arch import Architecture
from ..recipe import Choice, Opt


class LandingStatus(Choice):
    """How a landing ended."""

    in_band = "in band"                    # within [band, 1] × budget under its repeats' spread
    no_unit_fits = "no unit fits"          # within budget, below the band: the next unit up is over budget
    over_budget = "over budget"            # even the narrowest proposal measured above the budget
    not_verified = "not verified"          # no device: the predicted network, unmeasured


@dataclass(frozen=True)
class LandingConfig:
    """``band``, ``headroom``: land in ``[band, headroom] × budget``; ``aim``: where a corrected target aims;
    ``max_measurements``: networks measured at most; ``repeats``: measurements of each network (their median
    decides, and its confidence bound :func:`upper_bound_ms` must be within the budget).

    Runtime settings of a job (not part of its recipe's digest), like the device: the loop comes after the
    search and the search is kept when they change; a landing on another network moves the earlier fine-tuning
    aside."""

    land: Annotated[bool, Opt(runtime=True, help="close the loop: measure the pruned network on --device and grow or shrink it "
                                   "until it lands between band and headroom × the budget")] = True
    band: Annotated[float, Gt(0), Lt(1), Opt(runtime=True, help="the lowest landing point, as a fraction of the budget")] = 0.95
    # Below the band's centre: the chosen network's repeats and the shipped file's repeats must all stay within
    # the budget, and on the host they spread by 2–3 % (LcP acceptance, issue 15).
    aim: Annotated[float, Gt(0), Le(1), Opt(runtime=True, help="where in the band a corrected target aims")] = 0.96
    # The shipped file is measured again in a later sitting, after fine-tuning: on the 2-core hosts one anchored
    # measurement of a network moves by ±2–3 % from the next (issue 15), so the loop lands at most this far up.
    headroom: Annotated[float, Gt(0), Le(1), Opt(runtime=True, help="the highest landing point, as a fraction of the "
                                                     "budget: room for the shipped file's own repeated check")] = 0.975
    max_measurements: Annotated[int, Ge(1), Opt(runtime=True, help="networks measured at most while landing")] = 8
    # Nine: two measurements of one ≈1 ms network a second apart differ by up to 10–18 % on a busy host; the
    # bound of nine is their 7th smallest, where with three it is their largest (issue 15's JCW rerun).
    repeats: Annotated[int, Ge(1), Opt(runtime=True, help="measurements of each network: their median decides, and a one-sided "
                                            "87.5 % confidence bound of it must be within the budget")] = 9
    # The loop's networks are measured before retraining, the shipped file after it, in a later sitting: on the
    # 2-core hosts the pruned/full ratio drifts by −3…+6 % in between (issue 15's reruns), more than the band's
    # width, so the shipped file's check continues the loop on retrained networks (:func:`land` again). Five:
    # both misses of issue 15's acceptance took two corrections (over, over, then below the band) before the
    # bisection could start — a network one unit narrower measured 3 % slower than its parent in one sitting —
    # which leaves two bisections; each round is one fine-tuning with the method's recipe.
    shipped_rounds: Annotated[int, Ge(1), Opt(runtime=True, help="networks retrained and shipped at most while the shipped "
                                                    "file's own check lands it (1: check the first only)")] = 5

    def for_shipped(self) -> "LandingConfig":
        """The loop continued on shipped files: each is the last measurement the user sees, so it lands anywhere
        in ``[band, 1] × budget`` (no headroom), on at most ``shipped_rounds`` retrained networks."""
        return replace(self, headroom=1.0, max_measurements=self.shipped_rounds)

    def __post_init__(self) -> None:
        if not self.band < self.headroom:
            raise ValueError(f"the landing band [{self.band:g}, {self.headroom:g}] × the budget is empty: choose a "
                             f"headroom above the band (e.g. --band 0.95 --headroom 0.975)")


# A corrected target is compounded at most this often while it proposes networks already measured: a 0.98
# correction compounded 16 times moves the target by 28 %, past any unit of the methods' granularity.
COMPOUNDINGS = 16

# A network is within budget when this one-sided confidence bound of its median latency is (the measurement's own
# spread). With 3 measurements it is their largest; with 9 the 7th smallest (a bound of 91 % confidence).
CONFIDENCE = 0.875


def upper_bound_ms(measurements: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """A distribution-free one-sided upper confidence bound of the median latency: the smallest order statistic
    X(k) with P(median ≤ X(k)) = P(Binomial(n, ½) ≤ k − 1) ≥ ``confidence`` (the largest when none reaches it).
    It needs no model of the noise, which on these hosts has outliers of +40 %, and tightens as measurements
    are added, where the largest of them only grows."""
    values = np.sort(np.asarray(measurements, dtype=float))
    n = len(values)
    if n == 0:
        raise ValueError("no measurements")
    cdf = np.cumsum([math.comb(n, j) for j in range(n + 1)]) / 2.0 ** n      # P(Bin(n, ½) ≤ j)
    k = int(np.searchsorted(cdf, confidence - 1e-12)) + 1                   # smallest k: cdf[k − 1] ≥ confidence
    return float(values[min(k, n) - 1])


@dataclass(frozen=True)
class Proposal:
    """What the method proposes for a predicted-latency ``target``: an architecture and its prediction."""

    arch: Architecture
    predicted_ms: float
    target_ms: float

    @property
    def key(self) -> str:
        return self.arch.to_json()


@dataclass
class LandingStep:
    target_ms: float
    predicted_ms: float
    measured_ms: float
    widths: dict
    reused: bool = False            # the method proposed a network measured before
    repeats: list = field(default_factory=list)     # its measurements; measured_ms is what they count as


@dataclass
class Landing:
    """The trajectory and the outcome: ``chosen`` indexes ``steps``; ``repeats`` are the chosen network's
    measurements (the first is its step's)."""

    budget_ms: float
    band: float
    steps: list[LandingStep] = field(default_factory=list)
    chosen: int | None = None
    repeats: list[float] = field(default_factory=list)
    status: LandingStatus = LandingStatus.not_verified
    arch: Architecture | None = None                # the chosen network

    @property
    def measured_ms(self) -> float | None:
        return float(np.median(self.repeats)) if self.repeats else None

    @property
    def upper_ms(self) -> float | None:
        return upper_bound_ms(self.repeats) if self.repeats else None

    def to_dict(self) -> dict:
        return {"budget_ms": self.budget_ms, "band": self.band, "status": str(self.status), "chosen": self.chosen,
                "architecture": self.arch.to_dict() if self.arch is not None else None,
                "measured_ms": self.measured_ms, "upper_ms": self.upper_ms, "repeats": self.repeats,
                "measured_over_budget": None if self.measured_ms is None else self.measured_ms / self.budget_ms,
                "iterations": len(self.steps), "steps": [asdict(s) for s in self.steps]}


def land(budget_ms: float, propose: Callable[[float], Proposal],
         measure: Callable[[Sequence[Architecture], int], Sequence[float]],
         config: LandingConfig = LandingConfig(), start: Proposal | None = None) -> Landing:
    """Land on ``budget_ms`` (see the module docstring). ``propose(target_ms)`` is the method's own pruning at
    a predicted target; ``measure(archs, repeat)`` their whole-network medians (``repeat`` 0, 1, … for a
    network's successive measurements; stored by the caller). ``start``: the search's own proposal for the
    budget (default ``propose(budget_ms)``)."""
    result = Landing(budget_ms, config.band)
    low, ceiling, high = config.band * budget_ms, config.headroom * budget_ms, budget_ms
    repeats: dict[str, list[float]] = {}            # key → its measurements
    proposals: dict[str, Proposal] = {}
    first_step: dict[str, int] = {}

    def median(key: str) -> float:
        return float(np.median(repeats[key]))

    def counted(key: str) -> float:
        """What a network counts as: its median, or its upper bound when that is over the budget (the
        measurement's own spread puts it over)."""
        upper = upper_bound_ms(repeats[key])
        return median(key) if upper <= high else upper

    def target(key: str) -> float:
        return proposals[key].target_ms

    def next_target(last: Proposal) -> tuple[float, bool]:
        """The next target, and whether it is a correction (no bracket yet) rather than a bisection."""
        # Bracket on the target, the one quantity the proposals are monotone in: the highest target whose
        # network is within and the lowest above it whose network is not. Bracketing on the measurements instead
        # cycles when noise orders two neighbours the wrong way round (uniform 40 %, issue 15: 0.933 at target
        # 0.851 and 0.911 at 0.871 sent the bisection back to 0.871, already measured).
        within = [k for k in repeats if counted(k) <= ceiling]
        if within:
            under = max(within, key=target)
            beyond = [k for k in repeats if counted(k) > ceiling and target(k) > target(under)]
            if beyond:                              # bracketed: bisect the predicted target
                return 0.5 * (target(under) + min(target(k) for k in beyond)), False
        # correct the prediction by what the device said about the last network
        return last.target_ms * config.aim * budget_ms / counted(last.key), True

    def next_proposal(last: Proposal) -> Proposal:
        """The method's network for the next target. A correction that proposes a network already measured was
        smaller than the method's unit there: it is compounded (the same factor again) until a new network comes
        or :data:`COMPOUNDINGS` are spent. Stopping instead left OFAR's onnxruntime 40 % choice 5 % over its
        budget although smaller (structure, resolution) pairs were in the pool (issue 12's capped run)."""
        goal, corrected = next_target(last)
        proposal = propose(goal)
        factor = goal / last.target_ms
        for _ in range(COMPOUNDINGS if corrected and factor != 1.0 else 0):
            if proposal.key not in repeats:
                break
            goal *= factor
            proposal = propose(goal)
        return proposal

    proposal = start or propose(budget_ms)
    for _ in range(config.max_measurements + 1):    # each round measures a new network or ends the search
        key = proposal.key
        reused = key in repeats
        if not reused:
            repeats[key] = [float(measure([proposal.arch], r)[0]) for r in range(config.repeats)]
            proposals[key], first_step[key] = proposal, len(result.steps)
        result.steps.append(LandingStep(proposal.target_ms, proposal.predicted_ms, counted(key),
                                        dict(proposal.arch.widths), reused, list(repeats[key])))
        if low <= counted(key) <= ceiling or reused or len(repeats) == config.max_measurements:
            break                                   # landed, the method has nothing in between, or bounded
        proposal = next_proposal(proposal)

    # The choice, in order: the largest network in [band, headroom]; one between the headroom and the budget,
    # nearest the headroom (in band: its measurements stay within the budget); the largest below the band; else
    # (nothing within budget) the smallest by what it counts as, reported with the measurements that refused it.
    def preference(k: str) -> tuple[int, float]:
        m = counted(k)
        return (0, -m) if low <= m <= ceiling else (1, m) if ceiling < m <= high else (2, -m) if m < low \
            else (3, m)

    key = min(repeats, key=preference)
    result.chosen, result.arch, result.repeats = first_step[key], proposals[key].arch, list(repeats[key])
    m = counted(key)
    result.status = (LandingStatus.in_band if low <= m <= high else LandingStatus.no_unit_fits if m < low
                     else LandingStatus.over_budget)
    return result


__all__ = ["CONFIDENCE", "Landing", "LandingConfig", "LandingStatus", "LandingStep", "Proposal", "land", "upper_bound_ms"]
