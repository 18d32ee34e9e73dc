"""Joint training of the Pruned Network Pool (OFARPruning, Algorithm 1, lines 9–11).

The search-stage network's channels are first reordered by their final BN-γ importance
(:meth:`DynamicNet.from_parent` with an explicit order), so every PNP structure is "the first k channels of
every group" of one weight-sharing :class:`~latbench.supernet.DynamicNet`. Per iteration
(:func:`chain_for_step`, a pure function of ``(seed, step)``):

* the **teacher** — the structure of the minimum pruning rate, at the maximum resolution — learns from the
  labels (cross-entropy);
* two **teaching assistants** drawn at random from the rest of the PNP, each at a random resolution,
  ordered larger first (by FLOPs at their resolutions);
* the **student** — the structure of the maximum pruning rate — at a random resolution;
* each distilled (KL) from the one before, T → TA1 → TA2 → S
  (:func:`~latbench.supernet.chain_distillation`, teachers detached); the loss is the sum.

``assistants=False`` (the ablation): the two sampled structures and the student are each distilled from the
teacher directly (in-place distillation, US-Net style), so the same networks train as often.

Lower resolutions are the batch resized (bilinear) from the loader's images, as MutualNet does: every
network of the chain sees the same crops.

**BatchNorm** (:class:`BNMode`):

* ``recalibrated`` (US-Net): the BN layers are shared; after training, statistics are recalibrated for
  every (structure, resolution) on training batches (:func:`latbench.supernet.recalibrate`);
* ``private`` (S-Net): every PNP structure has its own BN — γ, β and running statistics — initialised from
  the shared one, trained only when that structure runs; its statistics mix the resolutions it trained at.

The loop is the one SGD loop (:func:`latbench.train.loop.train`) with a ``step_loss``; its checkpoint holds
the weights (private BN included), the momentum and the step, so a killed run resumes exactly.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ...models import Architecture, ModelSpec
from ...recipe import Choice, Opt
from ...train.loop import Schedule
from ...search.budget import CostGrid
from ...supernet import DynamicNet, chain_distillation, cross_entropy, logit_distillation, resize
from ...supernet.net import DynamicConvBlock

__all__ = ["BNMode", "JointConfig", "PrivateBN", "Structures", "chain_for_step", "joint_step", "structure_forward",
           "train_joint"]


class BNMode(Choice):
    """How each (structure, resolution) gets its BatchNorm: see the module docstring."""

    RECALIBRATED = "recalibrated"
    PRIVATE = "private"


@dataclass(frozen=True)
class JointConfig:
    """Settings of the joint training."""

    epochs: int = 10
    lr: float = 0.05
    batch_size: Annotated[int, Opt(flag="--batch-size", help="batch size of both stages")] = 128
    schedule: Schedule = Schedule.cosine
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: Annotated[float, Opt(flag="--temperature", help="distillation temperature")] = 1.0
    assistants: Annotated[bool, Opt(flag="--assistants", help="--no-assistants: distil every network from the "
                                                              "teacher directly (the ablation)")] = True
    bn_mode: Annotated[BNMode, Opt(flag="--bn-mode", help="recalibrated (US-Net: statistics per structure and "
                                                          "resolution after training) or private (S-Net: a BN per "
                                                          "structure)")] = BNMode.RECALIBRATED
    resolutions: Annotated[tuple[int, ...], Opt(cli=False, help="set by the job from its resolutions")] = (32, 28, 24, 20)
    steps_per_epoch: Annotated[int | None, Opt(flag="--steps-per-epoch", help="cap the steps of every epoch of both "
                                                                             "stages (quick runs)")] = None
    checkpoint_every: Annotated[int, Opt(runtime=True)] = 50
    seed: Annotated[int, Opt(flag="--seed", help="seed of every random choice of the job")] = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "bn_mode", BNMode(self.bn_mode))
        except ValueError:
            raise ValueError(f"unknown BN mode {self.bn_mode!r}; choose one of "
                             f"{', '.join(m.value for m in BNMode)}") from None
        object.__setattr__(self, "resolutions", tuple(sorted({int(r) for r in self.resolutions}, reverse=True)))
        if not self.resolutions:
            raise ValueError("joint training needs at least one resolution")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.temperature <= 0:
            raise ValueError(f"joint training needs epochs ≥ 1, lr > 0, batch size ≥ 1 and temperature > 0 (got "
                             f"{self.epochs}, {self.lr}, {self.batch_size}, {self.temperature})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bn_mode"] = self.bn_mode.value
        d["resolutions"] = list(self.resolutions)
        return d


@dataclass(frozen=True)
class Structures:
    """The PNP's distinct structures (widths per group), by ascending pruning rate: ``[0]`` is the teacher's,
    ``[-1]`` the student's."""

    spec: ModelSpec
    widths: tuple[Mapping[str, int], ...]

    def __len__(self) -> int:
        return len(self.widths)

    def arch(self, j: int, resolution: int) -> Architecture:
        return Architecture(self.spec.name, int(resolution), dict(self.widths[j]))

    def flops(self, j: int, resolution: int) -> float:
        return CostGrid.analytic(self.spec, "flops", int(resolution)).total(dict(self.widths[j]))


def chain_for_step(n: int, resolutions: Sequence[int], step: int, seed: int = 0,
                   flops: Callable[[int, int], float] | None = None) -> list[tuple[int, int]]:
    """``[(structure, resolution)]`` of teacher, TA1, TA2, student for ``step``: a pure function of
    ``(seed, step)``. The assistants are drawn from the structures other than the teacher's and student's
    (with repetition only when fewer than two are left), larger first by ``flops(j, r)``."""
    rng = np.random.default_rng([seed, step])
    top = max(resolutions)
    middle = list(range(1, n - 1)) or list(range(n))
    tas = rng.choice(middle, size=2, replace=len(middle) < 2)
    res = rng.choice(np.asarray(resolutions), size=3)
    pairs = [(int(tas[0]), int(res[0])), (int(tas[1]), int(res[1]))]
    if flops is not None:
        pairs.sort(key=lambda p: -flops(*p))
    return [(0, int(top))] + pairs + [(n - 1, int(res[2]))]


# ---- private BN (S-Net) -----------------------------------------------------------------------------------

def _bn_layers(net: DynamicNet) -> list[str]:
    return [layer.name for layer in net.spec.layers if isinstance(net.block(layer.name), DynamicConvBlock)]


class PrivateBN(nn.Module):
    """γ, β and running statistics of every BN, one full-width copy per PNP structure (S-Net's private BN),
    initialised from ``net``'s. Attached to the net as ``net.ofar_bn`` so that the loop's checkpoint and
    optimizer carry it."""

    def __init__(self, net: DynamicNet, n: int) -> None:
        super().__init__()
        self.n, self.layers = n, _bn_layers(net)
        self.weight, self.bias = nn.ParameterDict(), nn.ParameterDict()
        for j in range(n):
            for name in self.layers:
                bn = net.block(name).bn
                key = self._key(j, name)
                self.weight[key] = nn.Parameter(bn.weight.detach().clone())
                self.bias[key] = nn.Parameter(bn.bias.detach().clone())
                self.register_buffer(f"mean_{key}", bn.running_mean.detach().clone())
                self.register_buffer(f"var_{key}", bn.running_var.detach().clone())

    @staticmethod
    def _key(j: int, name: str) -> str:
        return f"s{j}_{name.replace('.', '_')}"

    def overrides(self, j: int) -> dict[str, torch.Tensor]:
        """``functional_call`` overrides that make the net's BNs those of structure ``j``."""
        out = {}
        for name in self.layers:
            key, prefix = self._key(j, name), f"blocks.{name.replace('.', '_')}.bn"
            out[f"{prefix}.weight"] = self.weight[key]
            out[f"{prefix}.bias"] = self.bias[key]
            out[f"{prefix}.running_mean"] = getattr(self, f"mean_{key}")
            out[f"{prefix}.running_var"] = getattr(self, f"var_{key}")
        return out

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self, net: DynamicNet, j: int) -> Iterator[None]:
        """Copy structure ``j``'s BN into the net's own for the ``with`` block (e.g. to extract it), then
        restore the shared BN."""
        saved = {}
        for name in self.layers:
            bn, key = net.block(name).bn, self._key(j, name)
            saved[name] = [t.detach().clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
            for dst, src in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                (self.weight[key], self.bias[key], getattr(self, f"mean_{key}"),
                                 getattr(self, f"var_{key}"))):
                dst.copy_(src)
        try:
            yield
        finally:
            for name, tensors in saved.items():
                bn = net.block(name).bn
                for dst, src in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), tensors):
                    dst.copy_(src)


def attach_private_bn(net: DynamicNet, n: int) -> PrivateBN:
    """Give ``net`` private BNs for ``n`` structures (``net.ofar_bn``) and return them."""
    net.ofar_bn = PrivateBN(net, n).to(net.device)
    return net.ofar_bn


def structure_forward(net: DynamicNet, j: int, arch: Architecture, x: torch.Tensor, *, bn=None) -> torch.Tensor:
    """Logits of structure ``j`` (``arch``: its widths) on ``x``, with its private BN when the net has them,
    else the shared BN (``bn``: recalibrated statistics, eval mode)."""
    private = getattr(net, "ofar_bn", None)
    if private is None:
        return net(x, arch, bn=bn)
    return functional_call(net, private.overrides(j), (x,), {"arch": arch}, strict=False)


def joint_step(net: DynamicNet, structures: Structures, config: JointConfig, x: torch.Tensor, y: torch.Tensor,
               step: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """One iteration's loss: CE of the teacher plus the distillation chain (see the module docstring).
    Returns ``(loss, teacher logits, chain)``."""
    chain = chain_for_step(len(structures), config.resolutions, step, config.seed, structures.flops)
    logits = [structure_forward(net, j, structures.arch(j, r), resize(x, r)) for j, r in chain]
    loss = cross_entropy(logits[0], y)
    if config.assistants:
        loss = loss + chain_distillation(logits, config.temperature)
    else:
        loss = loss + sum(logit_distillation(s, logits[0], config.temperature) for s in logits[1:])
    return loss, logits[0], chain


def train_joint(net: DynamicNet, structures: Structures, train_set, config: JointConfig, checkpoint: str | Path,
                *, identity: Mapping | None = None, device: torch.device | str | None = None, loader=None,
                max_steps: int | None = None, progress: bool = True,
                log: Callable[[str], None] | None = None):
    """Train ``net`` (private BN attached first in ``private`` mode) on ``train_set`` with the one SGD loop;
    resumes from ``checkpoint``. Returns the loop's :class:`~latbench.train.TrainHistory`."""
    from ...train.loop import train

    if config.bn_mode is BNMode.PRIVATE and getattr(net, "ofar_bn", None) is None:
        attach_private_bn(net, len(structures))

    def step_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int):
        loss, teacher, _ = joint_step(model, structures, config, x, y, step)
        return loss, teacher

    return train(net, train_set, config.epochs, config.lr, batch_size=config.batch_size, schedule=config.schedule,
                 momentum=config.momentum, weight_decay=config.weight_decay, seed=config.seed,
                 steps_per_epoch=config.steps_per_epoch, checkpoint=checkpoint, resume=True,
                 checkpoint_every=config.checkpoint_every, max_steps=max_steps,
                 meta={"ofar_joint": dict(identity or {}), "phase": "ofar-joint"},
                 progress=progress, log=log, loader=loader, step_loss=step_loss, device=device)
