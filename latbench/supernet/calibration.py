"""BatchNorm recalibration of one sub-network of a :class:`DynamicNet`.

The shared running statistics belong to no sub-network in particular: training moves the slice of
whichever sub-network ran. Before a sub-network is scored, its statistics are re-estimated on a few
batches: reset (mean 0, variance 1), then the **cumulative moving average** of the batch statistics —
momentum ``1/(n+1)`` for batch ``n``, i.e. the plain mean over batches (torch's ``momentum=None``).
They are returned, per conv layer, and the shared statistics are left untouched; pass them to
``net(x, arch, bn=stats)`` in eval mode or to ``net.extract(arch, stats)``. The result equals
:func:`latbench.train.importance.recalibrate_bn` applied to the extracted sub-network.

>>> stats = recalibrate(net, arch, [(x, y) for x, y in some_batches])        # doctest: +SKIP
>>> net.eval()(x_val, arch, bn=stats)                                          # doctest: +SKIP
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..models import Architecture
from .net import DynamicNet, SubnetBN

Batch = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]


@torch.no_grad()
def recalibrate(net: DynamicNet, arch: Architecture | None, batches: Iterable[Batch], *, limit: int | None = None,
                device: torch.device | str | None = None) -> SubnetBN:
    """BN statistics of ``arch``'s sub-network from ``batches`` (images, or ``(images, labels)`` tuples; the
    first ``limit`` of them), computed on ``device`` (default: the net's). Weights and the shared
    statistics are untouched; the net's train/eval mode is restored."""
    device = torch.device(device) if device is not None else net.device
    stats: SubnetBN = {name: (torch.zeros(c, device=device), torch.ones(c, device=device))
                       for name, c in net.conv_widths(arch).items()}
    was_training = net.training
    net.train()
    seen = 0
    try:
        for batch in batches:
            if limit is not None and seen >= limit:
                break
            x = batch if isinstance(batch, torch.Tensor) else batch[0]
            # momentum 1/(n+1) for batch n: the running value is the mean of the batch statistics so far.
            net._calibration_step(x.to(device), arch, stats, 1.0 / (seen + 1))
            seen += 1
    finally:
        net.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate: no batches")
    return stats


__all__ = ["recalibrate"]
