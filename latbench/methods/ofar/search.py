"""The search stage of OFARPruning (Algorithm 1, lines 3–8): Network-Slimming training of the full model,
and the Pruned Network Pool (PNP) formed Early-Bird style.

* **Training.** The one SGD loop (:func:`latbench.train.loop.train`) with an ``after_backward`` hook that
  adds ``s·sign(γ)`` to the gradient of every BN scale γ (the subgradient of ``s·Σ|γ|``, Liu et al. 2017),
  a large learning rate (0.5 by default: their ablation found 0.5 better than 0.3 and 0.1) held constant,
  as Early-Bird draws its tickets in the large-rate phase.
* **Masks.** After every epoch (and once before training, epoch 0, from the checkpoint's γ) the network is
  pruned by global BN-γ ranking at every rate ρ of the :class:`~latbench.methods.ofar.rates.RatePlan`;
  each kept-channel mask is compared with the previous epoch's by :func:`mask_similarity` (cosine by
  default). When a rate's similarity reaches τ (for ``patience`` epochs in a row), its structure — widths
  per group, rounded to the channel multiple — joins the PNP. Training stops once every rate has one.
* **Fitting the constraints.** The rates were found on the checkpoint's γ; at admission the ranking has
  moved, and the structure at the same ρ may cost a little more than the constraints it was found for.
  Such a structure is pruned further along the *same* (current) ranking until it meets all of them
  (``count_used ≥ count``), so every constraint has a PNP member that fits by construction.

The state is one JSON file of per-epoch records (similarities, masks, admitted widths); the PNP is replayed
from it, so a run resumed from the loop's checkpoint recomputes the epochs after that checkpoint exactly
(training is deterministic) and overwrites their records.

**Eq. 3.** The paper's Eq. 3, ``Σab / (Σa² + Σb²)``, is 0.5 for identical masks — it is half the Dice
coefficient — while the text and the abstract speak of cosine similarity, which is 1 for identical masks.
A τ close to 1 (as the paper uses) is reachable only by the cosine or Dice; ``eq3`` is offered to reproduce
the formula as printed (its τ must be ≤ 0.5 to ever admit anything). See docs/ofar.md.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...files import atomic_write_json, read_json
from ...models import GraphNet
from ...recipe import Opt
from ...search.budget import BudgetError
from ...train.loop import Schedule
from .rates import CostModel, GlobalRanking, RatePlan

SIMILARITIES = ("cosine", "dice", "eq3")
STATE_FORMAT = "latbench-ofar-search/1"

__all__ = ["PoolBuilder", "PoolEntry", "SIMILARITIES", "SearchConfig", "SearchOutcome", "mask_similarity",
           "run_search", "slimming_hook"]


def mask_similarity(a: np.ndarray, b: np.ndarray, kind: str = "cosine") -> float:
    """Similarity of two masks (0/1 or real vectors of one length).

    ``cosine``: ``Σab / √(Σa²·Σb²)``; ``dice``: ``2·Σab / (Σa² + Σb²)``; ``eq3``: the paper's Eq. 3 as
    printed, ``Σab / (Σa² + Σb²)`` (half the Dice: 0.5 for identical masks). Two empty masks are identical
    (1, or 0.5 for ``eq3``)."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown mask similarity {kind!r}; choose one of {', '.join(SIMILARITIES)}")
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"masks of different lengths: {a.size} and {b.size}")
    ab, aa, bb = float(a @ b), float(a @ a), float(b @ b)
    if aa == 0.0 and bb == 0.0:
        return 0.5 if kind == "eq3" else 1.0
    if kind == "cosine":
        return ab / math.sqrt(aa * bb) if aa and bb else 0.0
    return (2.0 if kind == "dice" else 1.0) * ab / (aa + bb)


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search stage. ``sparsity`` is Network Slimming's ``s`` (λ of the L1 penalty on γ);
    ``tau`` the similarity threshold τ in (0, 1]; ``patience`` the epochs in a row a rate's similarity must
    reach τ; ``steps_per_epoch`` caps an epoch (quick runs)."""

    epochs: Annotated[int, Opt(help="most epochs of the search stage (stops earlier when every rate has its "
                                    "structure)")] = 20
    lr: Annotated[float, Opt(help="search-stage learning rate (constant)")] = 0.5
    sparsity: Annotated[float, Opt(flag="--sparsity", help="Network Slimming's s: L1 weight on the BN γ")] = 1e-4
    tau: Annotated[float, Opt(flag="--tau", help="mask similarity threshold τ in (0, 1]")] = 0.95
    similarity: Annotated[str, Opt(flag="--similarity", help="cosine, dice, or eq3 (the paper's Eq. 3 as "
                                                              "printed)")] = "cosine"
    patience: Annotated[int, Opt(flag="--patience", help="epochs in a row a rate's similarity must reach τ")] = 1
    batch_size: Annotated[int, Opt(flag="--batch-size", help="batch size of both stages")] = 128
    schedule: Schedule = Schedule.constant
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps_per_epoch: Annotated[int | None, Opt(flag="--steps-per-epoch", help="cap the steps of every epoch of both "
                                                                             "stages (quick runs)")] = None
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and 0.0 < self.tau <= 1.0):
            raise ValueError(f"τ (--tau) must be in (0, 1], got {self.tau}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown mask similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if self.similarity == "eq3" and self.tau > 0.5:
            raise ValueError(f"τ {self.tau} can never be reached with the paper's Eq. 3 as printed (it is 0.5 for "
                             "identical masks); use --similarity cosine (or dice), or τ ≤ 0.5")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.patience < 1 or self.sparsity < 0:
            raise ValueError("the search needs epochs ≥ 1, lr > 0, batch size ≥ 1, patience ≥ 1 and sparsity ≥ 0 "
                             f"(got {self.epochs}, {self.lr}, {self.batch_size}, {self.patience}, {self.sparsity})")

    def to_dict(self) -> dict:
        return asdict(self)


def slimming_hook(s: float) -> Callable[[nn.Module, int], None]:
    """An ``after_backward`` hook for the SGD loop: ``grad(γ) += s·sign(γ)`` for every BatchNorm scale (torch
    BN modules, and an imported graph's BatchNormalization nodes)."""

    @torch.no_grad()
    def hook(net: nn.Module, step: int) -> None:
        if s == 0:
            return
        scales = [m.weight for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        scales += [g for m in net.modules() if hasattr(m, "batch_norm_scales") for g in m.batch_norm_scales()]
        for gamma in scales:
            if gamma is not None and gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma), alpha=s)

    return hook


@dataclass
class PoolEntry:
    """A structure of the PNP: the rate it was admitted for, when, and its widths."""

    rate_index: int
    count: int                 # channels pruned at the rate
    count_used: int            # after fitting the constraints (≥ count)
    rate: float
    epoch: int
    similarity: float
    widths: dict[str, int]
    fits: bool                 # meets every constraint of its rate (False only if even the floors do not)
    targets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class PoolBuilder:
    """Per-epoch masks at every rate, their similarities, and the PNP replayed from them.

    ``observe(epoch, net)`` records epoch ``epoch`` (dropping any later records: a resumed run recomputes
    them), writes the state file, and returns True when every rate has joined the PNP."""

    def __init__(self, plan: RatePlan, costs: Sequence[CostModel], config: SearchConfig, path: Path,
                 identity: Mapping, log: Callable[[str], None] | None = None) -> None:
        self.plan, self.config, self.path, self.identity = plan, config, Path(path), dict(identity)
        self.costs = {c.label: c for c in costs}
        self.log = log or (lambda line: None)
        self.records: list[dict] = []
        if self.path.exists():
            state = read_json(self.path, recover="delete it (and search.safetensors) to redo the search stage")
            if state.get("format") == STATE_FORMAT and state.get("identity") == self.identity:
                self.records = list(state["records"])

    # -- recording ---------------------------------------------------------------------------------------
    def _fit(self, ranking: GlobalRanking, count: int, targets) -> tuple[int, dict[str, int], bool]:
        """The least ``k ≥ count`` of ``ranking`` whose rounded widths meet every target (or the floors)."""
        ks = np.arange(count, ranking.max_count + 1)
        widths = ranking.widths_matrix(ks)
        unique, first = np.unique(widths, axis=0, return_index=True)
        order = np.argsort(first)
        unique, first = unique[order], first[order]
        ok = np.ones(len(unique), dtype=bool)
        for t in targets:
            ok &= self.costs[t.device].costs(unique, t.resolution) <= t.budget * (1 + 1e-9)
        hit = np.flatnonzero(ok)
        i = int(hit[0]) if hit.size else len(unique) - 1
        k = int(ks[first[i]])
        return k, dict(zip(ranking.spec.groups, (int(v) for v in unique[i]))), bool(hit.size)

    def observe(self, epoch: int, net) -> bool:
        ranking = GlobalRanking.of(net, self.plan.floors, self.plan.multiple)
        self.records = [r for r in self.records if r["epoch"] < epoch]
        previous = self.records[-1] if self.records else None
        rates = []
        for i, rate in enumerate(self.plan.rates):
            mask = ranking.mask(rate.count)
            sim = None
            if previous is not None:
                sim = mask_similarity(mask, _unpack(previous["rates"][i]["mask"], mask.size), self.config.similarity)
            k, widths, fits = self._fit(ranking, rate.count, rate.targets)
            rates.append({"mask": _pack(mask), "similarity": sim, "count_used": k, "widths": widths, "fits": fits})
        self.records.append({"epoch": int(epoch), "rates": rates})
        atomic_write_json(self.path, {"format": STATE_FORMAT, "identity": self.identity, "records": self.records})
        pool = self.pool()
        if epoch > 0:
            sims = [r["similarity"] for r in rates]
            self.log(f"search epoch {epoch}: mask similarity ({self.config.similarity}) min {min(sims):.4f} "
                     f"mean {np.mean(sims):.4f}; PNP {len(pool)}/{len(self.plan.rates)} rates")
        return len(pool) == len(self.plan.rates)

    # -- replay ------------------------------------------------------------------------------------------
    def pool(self) -> list[PoolEntry]:
        """The PNP: per rate, the structure of the first epoch whose similarity reached τ ``patience`` times
        in a row (ascending rate)."""
        out = []
        for i, rate in enumerate(self.plan.rates):
            streak = 0
            for rec in self.records:
                sim = rec["rates"][i]["similarity"]
                streak = streak + 1 if sim is not None and sim >= self.config.tau else 0
                if streak >= self.config.patience:
                    r = rec["rates"][i]
                    out.append(PoolEntry(i, rate.count, int(r["count_used"]), rate.rate, int(rec["epoch"]),
                                         float(sim), {k: int(v) for k, v in r["widths"].items()}, bool(r["fits"]),
                                         [t.key for t in rate.targets]))
                    break
        return out

    def unstable(self) -> list[dict]:
        """The rates that never joined the PNP, with their last similarity."""
        admitted = {e.rate_index for e in self.pool()}
        last = self.records[-1] if self.records else None
        return [{"rate_index": i, "rate": rate.rate, "count": rate.count,
                 "last_similarity": None if last is None else last["rates"][i]["similarity"],
                 "targets": [t.key for t in rate.targets]}
                for i, rate in enumerate(self.plan.rates) if i not in admitted]

    @property
    def epochs_run(self) -> int:
        return int(self.records[-1]["epoch"]) if self.records else 0


def _pack(mask: np.ndarray) -> str:
    return np.packbits(mask.astype(bool)).tobytes().hex()


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


@dataclass
class SearchOutcome:
    net: GraphNet                    # the slimming-trained full network
    pool: list[PoolEntry]
    unstable: list[dict]
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: dict
    trained: bool = True             # False when a finished search was only loaded

    def message(self, plan: RatePlan) -> str | None:
        """What never stabilised, or None."""
        if not self.unstable:
            return None
        parts = [f"ρ={u['rate']:.3f} (for {', '.join(u['targets'])}; last similarity "
                 f"{'n/a' if u['last_similarity'] is None else format(u['last_similarity'], '.4f')})"
                 for u in self.unstable]
        return (f"the search stage ran out of epochs ({self.epochs_run}) before {len(self.unstable)} of "
                f"{len(plan.rates)} rates stabilised: {'; '.join(parts)}. Keeping the {len(self.pool)} that did; "
                "give more --search-epochs or a lower --tau to get them")


def run_search(parent: GraphNet, train_set, plan: RatePlan, costs: Sequence[CostModel], config: SearchConfig,
               out: str | Path, *, device: torch.device | str | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None, loader=None) -> SearchOutcome:
    """Network-Slimming training of a copy of ``parent`` on ``train_set`` (an :class:`ImageDataset`, or any
    sized dataset with a ``loader`` of its batches, e.g. a streamed one) with the PNP formed along the way;
    resumes from ``out``/search.safetensors and ``out``/search-state.json."""
    from ...train import read_checkpoint_meta
    from ...train.checkpoint import CheckpointError, load_weights
    from ...train.loop import TrainHistory, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, state = out / "search.safetensors", out / "search-state.json"
    identity = {"config": config.to_dict(), "counts": [r.count for r in plan.rates], "floors": plan.floors,
                "multiple": plan.multiple, "train_size": len(train_set)}
    net = copy.deepcopy(parent)
    if device is not None:
        net = net.to(device)
    complete, history = False, {}
    if checkpoint.exists():
        meta = read_checkpoint_meta(checkpoint)
        if meta.get("ofar_search") != identity:
            raise CheckpointError(f"{checkpoint} holds a search stage with other settings or rates; delete it and "
                                  f"{state.name}, or use another --out")
        saved = TrainHistory.from_dict(meta["history"])
        complete, history = saved.complete, saved.to_dict()
    builder = PoolBuilder(plan, costs, config, state, identity, log)
    if complete and not builder.records:
        raise CheckpointError(f"{checkpoint} is complete but {state} is missing or from another search; delete "
                              f"{checkpoint.name} to redo the search stage")
    t0 = time.perf_counter()
    if complete:
        load_weights(checkpoint, net)
    else:
        if not builder.records:
            builder.observe(0, net)            # epoch 0: the masks of the checkpoint's γ
        hist = train(net, train_set, config.epochs, config.lr, batch_size=config.batch_size,
                     schedule=config.schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                     seed=config.seed, steps_per_epoch=config.steps_per_epoch, checkpoint=checkpoint, resume=True,
                     meta={"ofar_search": identity, "phase": "ofar-search"},
                     progress=progress, log=log, after_backward=slimming_hook(config.sparsity),
                     on_epoch=builder.observe, device=device, loader=loader)
        history = hist.to_dict()
    net.eval()
    pool = builder.pool()
    if not pool:
        raise BudgetError(f"no rate stabilised within {builder.epochs_run} search epochs (τ {config.tau}, "
                          f"{config.similarity}); the PNP is empty. Give more --search-epochs or a lower --tau "
                          f"(the search checkpoint is kept; delete {checkpoint.name} and {state.name} to redo it)")
    outcome = SearchOutcome(net, pool, builder.unstable(), builder.epochs_run,
                            builder.epochs_run < config.epochs, time.perf_counter() - t0, history, not complete)
    return outcome
