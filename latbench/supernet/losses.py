"""Losses for training weight-sharing supernets.

* :func:`cross_entropy` — the task loss (of the full network, or of any sub-network trained alone).
* :func:`logit_distillation` — in-place distillation (US-Nets): a sub-network matches the softened
  outputs of a teacher — normally the full network in the same step — whose logits are detached, so
  the teacher learns only from the labels.
* :func:`stage_feature_loss` with :class:`StageAdaptors` — SP's stage distillation (below).
* :func:`chain_distillation` — teacher → assistant → … → student, each distilled from the one before.

**Stage feature loss (SP).** For stage ``i`` with full width ``C``, a sub-network's stage output
``Y`` (N × k × H × W, k ≤ C) is mapped to ``C`` channels by a 1×1 conv adaptor ``A_i`` (no BN, no
activation, no bias) and compared with the full network's stage output ``Ŷ`` (detached)::

    L_i = 1/(N·H·W) · Σ_{n,h,w} (1/C) · Σ_c (A_i(Y) − Ŷ)²_{n,c,h,w}

— the squared error summed over channels and divided by the channel count, averaged over batch and
positions; numerically the mean over all N·C·H·W entries (``F.mse_loss``), so losses of stages of
different widths and resolutions are on one scale. One adaptor per stage is shared by all widths: it
holds a C × C kernel and a sub-network of width ``k`` uses its first ``k`` input columns (the first ``k``
channels are the same channels in every sub-network). Adaptors start as the identity, so the full
network's own stage loss is 0 and a narrow sub-network starts by matching the channels it keeps;
they are trained with the supernet (put their parameters in the optimizer) and are not part of any
deployed network.

>>> student, teacher = torch.randn(4, 10), torch.randn(4, 10)
>>> float(logit_distillation(teacher, teacher)) == 0.0
True
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import DynamicConv2d


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (N × classes) against integer ``labels``."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch; ``teacher`` is detached
    (no gradient reaches it). The T² keeps gradient magnitudes comparable across temperatures (Hinton et al.)."""
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} must be > 0")
    t = temperature
    target = F.log_softmax(teacher.detach() / t, dim=-1)
    return F.kl_div(F.log_softmax(student / t, dim=-1), target, reduction="batchmean", log_target=True) * t * t


def chain_distillation(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Sum over the chain ``logits[0] → logits[1] → …`` (teacher, assistant(s), student) of
    :func:`logit_distillation` of each from the one before (detached): every link trains only its
    student side. ``[teacher, student]`` is plain in-place distillation."""
    if len(logits) < 2:
        raise ValueError("a distillation chain needs a teacher and at least one student")
    return sum(logit_distillation(s, t, temperature) for t, s in zip(logits[:-1], logits[1:]))


class StageAdaptors(nn.Module):
    """One 1×1 conv per stage, from a sub-network's stage width to the full width ``widths[i]``, shared by
    all sub-network widths, initialised to the identity. A sub-network's channel ``j`` reads column ``j``
    (the first k: a :class:`~latbench.supernet.DynamicNet` keeps its first channels) or, given ``channels``,
    column ``channels[j]`` (the full-network position of the channel an
    :class:`~latbench.supernet.OnnxSupernet` kept: ``net.stage_channels(i, arch)``).

    >>> adaptors = StageAdaptors([16, 32])
    >>> adaptors(1, torch.zeros(2, 12, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
    """

    def __init__(self, widths: Sequence[int], *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.convs = nn.ModuleList(DynamicConv2d(w, w, 1, device=device) for w in self.widths)
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.zero_()
                conv.weight[:, :, 0, 0].fill_diagonal_(1.0)

    @classmethod
    def for_net(cls, net, *, device: torch.device | str | None = None) -> "StageAdaptors":
        """Adaptors for the stages of a supernet (``DynamicNet`` or ``OnnxSupernet``; on its device by default)."""
        widths = [net.widths[stage.output_group] for stage in net.stages]
        return cls(widths, device=device if device is not None else net.device)

    def forward(self, i: int, y: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        if channels is None:
            return self.convs[i](y, self.widths[i])
        conv = self.convs[i]
        if len(channels) != y.shape[1]:
            raise ValueError(f"stage {i} adaptor: {y.shape[1]} channels but {len(channels)} channel positions")
        return F.conv2d(y, conv.weight[:, channels], conv.bias)


def stage_feature_loss(student: torch.Tensor, teacher: torch.Tensor,
                       adaptor: nn.Module | None = None) -> torch.Tensor:
    """``(1/C)·‖A(Y) − Ŷ‖²`` averaged over batch and positions (see the module docstring): ``student`` is a
    sub-network's stage output Y, ``teacher`` the full network's Ŷ (detached, C channels), ``adaptor``
    maps Y to C channels (e.g. ``lambda y: adaptors(i, y)``); without one, Y must already have C channels."""
    y = student if adaptor is None else adaptor(student)
    if y.shape != teacher.shape:
        raise ValueError(f"stage feature loss: student {tuple(y.shape)} (after the adaptor) vs teacher "
                         f"{tuple(teacher.shape)}; map the student to the teacher's width with an adaptor")
    return F.mse_loss(y, teacher.detach(), reduction="mean")


__all__ = ["StageAdaptors", "chain_distillation", "cross_entropy", "logit_distillation", "stage_feature_loss"]
