"""ADMM weight-pruning retraining of a chosen architecture (JCW's final training step).

Three phases, each an SGD run over the training set:

1. **dense** — train the network at the architecture's widths (started from the supernet's or the
   parent's slice) with all weights free;
2. **admm** — for every conv the architecture sparsifies, minimise ``loss + ρ/2‖W − U + Z‖²`` by SGD
   (the W-step) and, every epoch or every ``update_every`` steps, project ``U = Π_s(W + Z)`` (keep the
   largest-magnitude entries of ``W + Z`` so that exactly the layer's sparsity ``s`` is zero) and
   update the scaled dual ``Z += W − U``. The quadratic pull moves the weights towards a sparse
   pattern gradually instead of cutting them at once;
3. **hard prune + fine-tune** — the masks are those of the final projection ``Π_s(W + Z)``; the pruned
   weights are zeroed and stay zero while the rest is fine-tuned (gradients and weights are masked at
   every step).

The result has exactly ``round(s·numel)`` zero weights in each sparsified conv (``sparsity_block``: per
block of output channels) and exports with ``export_network_for(fmt, net, arch)``.

>>> net = evaluator.extract(arch, bn, sparse=False)                # doctest: +SKIP
>>> net, history = admm_retrain(net, arch, data, ADMMConfig(), checkpoint="runs/admm.safetensors")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Mapping

import torch
from annotated_types import Ge, Gt
from torch import nn

from ..data import Augment, DataSplits, ImageDataset
from ..models import Architecture, GraphNet
from ..recipe import Opt
from ..supernet.ops import magnitude_keep
from .checkpoint import CheckpointError, load_weights, read_checkpoint_meta, save_checkpoint, stem_in_channels
from .loop import SCHEDULES, Schedule, evaluate, train

#: Keep-masks (``True`` = weight kept) of sparsified convs, by layer name.
Masks = dict[str, torch.Tensor]

PHASES = ("dense", "admm", "finetune")


# ---- the ADMM updates -------------------------------------------------------------------------------

@torch.no_grad()
def project_topk(t: torch.Tensor, sparsity: float, block: int | None = None) -> torch.Tensor:
    """Euclidean projection onto tensors with the given sparsity: ``t`` with its ``round(sparsity·numel)``
    smallest-magnitude entries set to zero (per block of output channels with ``block``)."""
    return t * magnitude_keep(t, sparsity, block)


@torch.no_grad()
def admm_update(w: torch.Tensor, z: torch.Tensor, sparsity: float,
                block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One U/Z update for one layer: ``U = Π_s(W + Z)``, ``Z' = Z + W − U``. Returns ``(U, Z')``."""
    u = project_topk(w.detach() + z, sparsity, block)
    return u, z + w.detach() - u


@dataclass
class ADMMState:
    """Auxiliary sparse copies ``u`` and scaled duals ``z`` of the sparsified convs' weights, and the
    penalty ``rho``."""

    sparsity: dict[str, float]
    u: dict[str, torch.Tensor]
    z: dict[str, torch.Tensor]
    rho: float
    block: int | None = None

    @classmethod
    @torch.no_grad()
    def start(cls, weights: Mapping[str, torch.Tensor], sparsity: Mapping[str, float], rho: float,
              block: int | None = None) -> "ADMMState":
        """Z = 0 and U = Π_s(W): the first W-step pulls towards the magnitude-pruned weights."""
        z = {name: torch.zeros_like(weights[name]) for name in sparsity}
        u = {name: project_topk(weights[name].detach(), s, block) for name, s in sparsity.items()}
        return cls(dict(sparsity), u, z, float(rho), block)

    def penalty(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``Σ_l ρ/2 ‖W_l − U_l + Z_l‖²`` (differentiable in W)."""
        return sum(0.5 * self.rho * (weights[n] - self.u[n] + self.z[n]).square().sum() for n in self.sparsity)

    @torch.no_grad()
    def add_penalty_grad(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Add the penalty's gradient ``ρ(W − U + Z)`` to each weight's ``.grad`` (the W-step's extra term,
        applied between ``backward`` and the optimizer step instead of differentiating :meth:`penalty`)."""
        for n in self.sparsity:
            w = weights[n]
            g = self.rho * (w - self.u[n] + self.z[n])
            if w.grad is None:
                w.grad = g
            else:
                w.grad.add_(g)

    @torch.no_grad()
    def update(self, weights: Mapping[str, torch.Tensor]) -> float:
        """U/Z update of every layer; returns the primal residual ‖W − U‖ / ‖W‖ over all layers (how far
        the weights still are from their sparse projection)."""
        gap = norm = 0.0
        for name, s in self.sparsity.items():
            self.u[name], self.z[name] = admm_update(weights[name], self.z[name], s, self.block)
            gap += float((weights[name] - self.u[name]).square().sum())
            norm += float(weights[name].square().sum())
        return (gap / max(norm, 1e-30)) ** 0.5

    @torch.no_grad()
    def set_rho(self, rho: float) -> None:
        """Change the penalty, keeping the unscaled dual ``ρ·Z`` (what the constraint has accumulated)."""
        for name in self.z:
            self.z[name].mul_(self.rho / rho)
        self.rho = float(rho)

    @torch.no_grad()
    def masks(self, weights: Mapping[str, torch.Tensor]) -> Masks:
        """Keep-masks of the final projection Π_s(W + Z)."""
        return {name: magnitude_keep(weights[name].detach() + self.z[name], s, self.block)
                for name, s in self.sparsity.items()}


# ---- configuration and history ----------------------------------------------------------------------

@dataclass(frozen=True)
class ADMMConfig:
    """Settings of :func:`admm_retrain`.

    Each phase runs ``*_epochs`` epochs (0 skips it) with its own ``schedule`` from ``lr``
    (``finetune_lr`` for the last phase; default ``lr``). ``rho`` is the ADMM penalty; U/Z are updated
    every ``update_every`` steps, or at the end of every epoch when None; after each update ρ is
    multiplied by ``rho_growth`` (up to ``rho_max``). ADMM with a non-convex sparsity constraint settles
    only when ρ is large enough against the loss's curvature (a small ρ lets the dual drift and the
    projection oscillate), so short runs need a larger ρ or a growing one — see docs/jcw-training.md.
    ``steps_per_epoch`` caps the batches of every epoch (quick experiments; the schedule spans the capped
    length); ``max_steps`` stops each phase after that many steps (as :func:`~latbench.train.loop.train`'s
    ``max_steps``: the schedule still spans the phase's epochs).
    ``eval_size``: images of ``DataSplits.val`` scored after each phase (all when None).
    """

    dense_epochs: Annotated[int, Ge(0)] = 2
    admm_epochs: Annotated[int, Ge(0), Opt(flag="epochs")] = 4
    finetune_epochs: Annotated[int, Ge(0)] = 2
    lr: Annotated[float, Gt(0)] = 0.01
    finetune_lr: Annotated[float | None, Gt(0)] = None
    rho: Annotated[float, Gt(0), Opt(help="ADMM penalty ρ")] = 0.01
    rho_growth: Annotated[float, Gt(0), Opt(help="multiply ρ after every U/Z update (short runs need a growing or "
                                                 "larger ρ; docs/jcw-training.md)")] = 1.0
    rho_max: Annotated[float | None, Gt(0)] = None
    update_every: Annotated[int | None, Ge(1), Opt(help="U/Z update every N steps (default: every epoch)")] = None
    batch_size: Annotated[int, Ge(1)] = 128
    schedule: Schedule = Schedule.cosine
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: Augment = field(default_factory=Augment)
    steps_per_epoch: Annotated[int | None, Ge(1), Opt(help="cap steps per epoch of every phase")] = None
    max_steps: Annotated[int | None, Ge(1), Opt(runtime=True)] = None
    sparsity_block: Annotated[int | None, Ge(1)] = None
    eval_size: Annotated[int | None, Ge(1), Opt(flag="--eval-images", help="held-out training images each "
                                                                           "candidate is scored on")] = None
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0
    progress: Annotated[bool, Opt(flag="--progress", help="show progress bars", runtime=True)] = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("dense_epochs", "admm_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} (need ≥ 0)")
        for name in ("update_every", "steps_per_epoch", "max_steps", "sparsity_block", "eval_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (need ≥ 1 or None)")
        if self.lr <= 0 or (self.finetune_lr is not None and self.finetune_lr <= 0):
            problems.append(f"lr={self.lr}, finetune_lr={self.finetune_lr} (need > 0)")
        if self.rho <= 0 or self.rho_growth < 1.0 or (self.rho_max is not None and self.rho_max < self.rho):
            problems.append(f"rho={self.rho}, rho_growth={self.rho_growth}, rho_max={self.rho_max} "
                            "(need rho > 0, growth ≥ 1, rho_max ≥ rho)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (need ≥ 1)")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} (choose one of {', '.join(SCHEDULES)})")
        if problems:
            raise ValueError("invalid ADMM configuration: " + "; ".join(problems))

    def identity(self) -> dict:
        """The settings that determine the result (a checkpoint must match them to be resumed)."""
        d = asdict(self)
        d.pop("progress")
        return json.loads(json.dumps(d))


@dataclass
class PhaseRecord:
    """One finished phase: steps, mean training loss of its last epoch (cross-entropy, without the ADMM
    penalty), validation loss/accuracy after it (None without a validation split), seconds."""

    phase: str
    steps: int
    train_loss: float
    val_loss: float | None
    val_acc: float | None
    seconds: float


@dataclass
class UpdateRecord:
    """One U/Z update: the ADMM phase's step, the primal residual ‖W − U‖/‖W‖ and the ρ in use."""

    step: int
    residual: float
    rho: float


@dataclass
class ADMMHistory:
    """The phases run, every U/Z update, and the achieved sparsity (fraction of zero weights) of every
    sparsified conv."""

    config: dict
    phases: list[PhaseRecord] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
    sparsity: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str) -> PhaseRecord:
        for record in self.phases:
            if record.phase == name:
                return record
        raise KeyError(f"phase {name!r} was not run (phases: {[r.phase for r in self.phases]})")

    def to_dict(self) -> dict:
        return {"config": self.config, "phases": [asdict(r) for r in self.phases],
                "updates": [asdict(r) for r in self.updates], "sparsity": dict(self.sparsity)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ADMMHistory":
        return cls(dict(d["config"]), [PhaseRecord(**r) for r in d.get("phases", [])],
                   [UpdateRecord(**r) for r in d.get("updates", [])], dict(d.get("sparsity", {})))


# ---- the training phases ----------------------------------------------------------------------------

Hook = Callable[[nn.Module, int], None]


def _train_phase(net: GraphNet, train_set: ImageDataset, epochs: int, lr: float, cfg: ADMMConfig, seed: int,
                 device: torch.device | str, *, after_backward: Hook | None = None, after_step: Hook | None = None,
                 on_epoch: Callable[[int, nn.Module], None] | None = None) -> tuple[int, float]:
    """One phase: the SGD loop :func:`latbench.train.loop.train` over ``train_set`` for ``epochs`` epochs
    with ``cfg``'s settings and the phase's hooks. Returns the steps taken and the mean cross-entropy of
    the last finished epoch."""
    history = train(net, train_set, epochs, lr, batch_size=cfg.batch_size, schedule=cfg.schedule,
                    momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, seed=seed,
                    augment=cfg.augment, steps_per_epoch=cfg.steps_per_epoch, max_steps=cfg.max_steps,
                    progress=cfg.progress, after_backward=after_backward,
                    after_step=after_step, on_epoch=on_epoch, device=device)
    return history.step, history.epochs[-1].train_loss if history.epochs else float("nan")


def _conv_weights(net: GraphNet, names) -> dict[str, torch.nn.Parameter]:
    """The weight of every named conv (``filter_weight``: a zoo network's block, an imported graph's initializer)."""
    weights = {name: net.filter_weight(name) for name in names}
    for name, w in weights.items():
        if not w.is_leaf:
            raise ValueError(f"layer {name!r} keeps its filters as the columns of a matrix; weight sparsity is "
                             "not available for it (leave its sparsity at 0)")
    return weights


@torch.no_grad()
def apply_masks(net: GraphNet, masks: Masks) -> None:
    """Zero the pruned weights (``mask == False``) of ``net``'s convs in place."""
    for name, mask in masks.items():
        net.filter_weight(name).mul_(mask)


def finetune_with_masks(net: GraphNet, masks: Masks, train_set: ImageDataset, epochs: int, lr: float,
                        cfg: ADMMConfig, seed: int = 0, device: torch.device | str | None = None) -> tuple[int, float]:
    """Fine-tune ``net`` with fixed sparsity patterns: pruned weights are zeroed first, their gradients
    are zeroed before every optimizer step (momentum never builds up there) and the weights re-masked
    after it (weight decay or numerical noise cannot revive them). ``device``: where to train (default:
    where ``net`` is). Returns (steps, last-epoch loss)."""
    weights = _conv_weights(net, masks)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    masks = {name: mask.to(device) for name, mask in masks.items()}
    apply_masks(net, masks)

    def mask_grads(_net: nn.Module, _step: int) -> None:
        for name, mask in masks.items():
            if weights[name].grad is not None:
                weights[name].grad.mul_(mask)

    return _train_phase(net, train_set, epochs, lr, cfg, seed, device, after_backward=mask_grads,
                        after_step=lambda _net, _step: apply_masks(net, masks))


# ---- the whole retraining ---------------------------------------------------------------------------

def _check_inputs(net: GraphNet, arch: Architecture, train_set: ImageDataset) -> None:
    arch.validate(net.spec)
    if dict(net.widths) != dict(arch.widths):
        raise ValueError(f"the network has widths {net.widths}, the architecture {dict(arch.widths)}; retrain the "
                         "sub-network itself: evaluator.extract(arch, sparse=False) or materialize(arch, spec, parent)")
    if stem_in_channels(net) != train_set.channels:
        raise ValueError(f"the network reads {stem_in_channels(net)} channels, {train_set.name} has "
                         f"{train_set.channels}")


def _achieved_sparsity(net: GraphNet, names) -> dict[str, float]:
    return {n: float((net.filter_weight(n) == 0).float().mean()) for n in names}


def admm_retrain(net: GraphNet, arch: Architecture, data: DataSplits | ImageDataset, config: ADMMConfig | None = None,
                 checkpoint: str | Path | None = None, resume: bool = True, *,
                 device: torch.device | str = "cpu") -> tuple[GraphNet, ADMMHistory]:
    """Retrain ``net`` (at ``arch``'s widths) dense, then prune it by ADMM to ``arch.sparsity`` and
    fine-tune with the masks fixed (see the module docstring). ``data``: a :class:`DataSplits` (trained on
    ``train``, scored on ``val`` after every phase) or a bare training set.

    With ``checkpoint`` the network is saved (a normal latbench checkpoint, loadable with
    ``load_checkpoint``) after every phase; with ``resume`` a checkpoint of the same architecture and
    settings continues after its last finished phase. ``device``: where to train (the network is moved
    there). Every phase runs through the one SGD loop, :func:`latbench.train.loop.train`: the ADMM
    penalty's gradient and the fine-tune's gradient masks are its ``after_backward`` hook, the U/Z
    updates and the re-masking its ``after_step`` / ``on_epoch`` hooks. Returns the network (trained in
    place, eval mode) and the :class:`ADMMHistory`.
    """
    cfg = config or ADMMConfig()
    train_set = data.train if isinstance(data, DataSplits) else data
    val = data.val if isinstance(data, DataSplits) else None
    if val is not None and cfg.eval_size is not None:
        val = val.head(min(cfg.eval_size, len(val)))
    _check_inputs(net, arch, train_set)
    device = torch.device(device)
    net.to(device)
    sparse = {name: s for name, s in arch.sparsity.items() if s > 0}
    history = ADMMHistory(cfg.identity())
    done = 0                                      # phases finished (from a resumed checkpoint)
    path = Path(checkpoint) if checkpoint else None
    if path is not None and resume and path.exists():
        saved = read_checkpoint_meta(path).get("admm")
        if saved is None:
            raise CheckpointError(f"{path} is not an ADMM retraining checkpoint; use another checkpoint path")
        if saved["config"] != cfg.identity() or read_checkpoint_meta(path)["arch"] != arch.to_dict():
            raise CheckpointError(f"{path} was written for another architecture or other settings; resume with the "
                                  "same ones or use another checkpoint path")
        load_weights(path, net)
        history = ADMMHistory.from_dict(saved["history"])
        done = PHASES.index(saved["completed"]) + 1

    def finish(phase: str, steps: int, train_loss: float, started: float) -> None:
        val_loss, val_acc = evaluate(net, val, device=device) if val is not None else (None, None)
        history.phases.append(PhaseRecord(phase, steps, train_loss, val_loss, val_acc, time.perf_counter() - started))
        history.sparsity = _achieved_sparsity(net, sparse)
        if path is not None:
            save_checkpoint(path, net, arch=arch, meta={"admm": {"completed": phase, "config": cfg.identity(),
                                                                 "history": history.to_dict()},
                                                        "train_set": train_set.name})

    if done <= PHASES.index("dense") and cfg.dense_epochs > 0:
        started = time.perf_counter()
        finish("dense", *_train_phase(net, train_set, cfg.dense_epochs, cfg.lr, cfg, cfg.seed, device), started)

    if done <= PHASES.index("admm"):
        started = time.perf_counter()
        weights = _conv_weights(net, sparse)
        state = ADMMState.start(weights, sparse, cfg.rho, cfg.sparsity_block)
        steps, loss = 0, float("nan")
        if sparse and cfg.admm_epochs > 0:
            done_steps = [0]

            def update_uz(step: int) -> None:
                history.updates.append(UpdateRecord(step, state.update(weights), state.rho))
                grown = state.rho * cfg.rho_growth
                state.set_rho(grown if cfg.rho_max is None else min(grown, cfg.rho_max))

            def after_step(_net: nn.Module, step: int) -> None:
                done_steps[0] = step
                if cfg.update_every is not None and step % cfg.update_every == 0:
                    update_uz(step)

            def on_epoch(_epoch: int, _net: nn.Module) -> None:
                if cfg.update_every is None:
                    update_uz(done_steps[0])

            steps, loss = _train_phase(net, train_set, cfg.admm_epochs, cfg.lr, cfg, cfg.seed + 1, device,
                                       after_backward=lambda _net, _step: state.add_penalty_grad(weights),
                                       after_step=after_step, on_epoch=on_epoch)
        apply_masks(net, state.masks(weights))    # hard prune: the masks of the final projection Π(W + Z)
        finish("admm", steps, loss, started)

    # Masks are recovered from the pruned weights: each sparsified conv holds at least round(s·n) zeros
    # (per block), so the magnitude mask selects exactly that many of them — the same zero pattern.
    masks = {name: magnitude_keep(net.filter_weight(name), s, cfg.sparsity_block) for name, s in sparse.items()}
    if done <= PHASES.index("finetune") and cfg.finetune_epochs > 0:
        started = time.perf_counter()
        steps, loss = finetune_with_masks(net, masks, train_set, cfg.finetune_epochs, cfg.finetune_lr or cfg.lr,
                                          cfg, cfg.seed + 2, device)
        finish("finetune", steps, loss, started)
    return net.eval(), history


__all__ = ["ADMMConfig", "ADMMHistory", "ADMMState", "PHASES", "PhaseRecord", "UpdateRecord", "admm_retrain",
           "admm_update",
           "apply_masks", "finetune_with_masks", "project_topk"]
