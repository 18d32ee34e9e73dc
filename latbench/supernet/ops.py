"""Dynamic-width layers in the style of Once-for-All: full-width parameters, a sub-network uses a slice.

Each module holds the parameters of its widest form. A narrower sub-network uses the **first** channels:
the first ``out`` filters, and of each filter the first ``x.size(1)`` input channels — the input width
is always read from the tensor, so a layer follows whatever its predecessor produced. The output width
is ``active_out`` (set by :class:`~latbench.supernet.net.DynamicNet.set_active`) unless a call passes
``out_channels``. A depthwise conv has one filter per input channel, so its width *is* its input's.

The modules subclass their torch counterparts, so parameter names, shapes, initialisation and state
dicts are those of a plain network at full width (a :class:`~latbench.models.GraphNet` checkpoint loads
into a :class:`~latbench.supernet.net.DynamicNet` as it is), and at full width they compute exactly
what the torch module computes.

>>> conv = DynamicConv2d(16, 32, 3, padding=1)
>>> conv.active_out = 8
>>> conv(torch.zeros(2, 12, 5, 5)).shape        # 12 of 16 input channels, 8 of 32 filters
torch.Size([2, 8, 5, 5])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Per-sub-network BN statistics: ``(running mean, running var)`` at the sub-network's width.
BNStats = tuple[torch.Tensor, torch.Tensor]


def _check_width(kind: str, width: int, maximum: int, what: str) -> None:
    if not 1 <= width <= maximum:
        raise ValueError(f"{kind}: {what} width {width} outside 1..{maximum} (the full width)")


@torch.no_grad()
def magnitude_keep(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of ``weight`` without its ``round(sparsity·numel)`` smallest-magnitude entries, chosen by
    the same sort as :func:`latbench.models.apply_sparsity`, so masked slices equal materialised weights."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1)")
    keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    k = int(round(sparsity * weight.numel()))
    if k > 0:
        keep[weight.detach().abs().flatten().argsort()[:k]] = False
    return keep.view(weight.shape)


class DynamicConv2d(nn.Conv2d):
    """A conv whose sub-networks use the first ``out`` filters and the first ``x.size(1)`` input channels.

    ``depthwise=True``: one filter per channel; the output width equals the input's. ``active_sparsity``
    (or the ``sparsity`` argument) zeroes the smallest-magnitude weights of the *sliced* kernel, as a
    materialised sub-network has them (gradients flow to the kept weights only).
    """

    def __init__(self, max_in: int, max_out: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
                 depthwise: bool = False, bias: bool = False, device: torch.device | str = "cpu") -> None:
        if depthwise and max_in != max_out:
            raise ValueError(f"a depthwise conv keeps its width: max_in {max_in} != max_out {max_out}")
        super().__init__(max_in, max_out, kernel_size, stride, padding, groups=max_in if depthwise else 1,
                         bias=bias, device=device)
        self.depthwise = depthwise
        self.active_out = max_out
        self.active_sparsity = 0.0

    def active_weight(self, cin: int, cout: int | None = None, sparsity: float | None = None) -> torch.Tensor:
        """The kernel of the sub-network with ``cin`` inputs and ``cout`` outputs (a view, masked when sparse)."""
        cout = cin if self.depthwise else (self.active_out if cout is None else cout)
        _check_width("DynamicConv2d", cin, self.in_channels, "input")
        _check_width("DynamicConv2d", cout, self.out_channels, "output")
        w = self.weight[:cout] if self.depthwise else self.weight[:cout, :cin]
        sparsity = self.active_sparsity if sparsity is None else sparsity
        return w * magnitude_keep(w, sparsity) if sparsity > 0 else w

    def forward(self, x: torch.Tensor, out_channels: int | None = None,
                sparsity: float | None = None) -> torch.Tensor:
        cin = x.shape[1]
        w = self.active_weight(cin, out_channels, sparsity)
        bias = None if self.bias is None else self.bias[: w.shape[0]]
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, cin if self.depthwise else 1)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``x.size(1)`` channels of full-width parameters and statistics.

    * training: normalises with the batch statistics of the slice and updates the running statistics of
      the slice (with ``momentum``; ``momentum=None`` = cumulative average, as torch does), unless
      ``track_running_stats`` is False;
    * eval: normalises with the running statistics sliced, or with ``stats`` — statistics recalibrated
      for one sub-network (see :func:`latbench.supernet.calibration.recalibrate`);
    * training with ``stats``: batch statistics, and ``stats`` is updated in place with ``stats_momentum``
      (how recalibration accumulates without touching the shared statistics).
    """

    def __init__(self, max_features: int, eps: float = 1e-5, momentum: float | None = 0.1, *,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(max_features, eps, momentum, device=device)

    def forward(self, x: torch.Tensor, stats: BNStats | None = None, stats_momentum: float = 0.0) -> torch.Tensor:
        c = x.shape[1]
        _check_width("DynamicBatchNorm2d", c, self.num_features, "input")
        weight, bias = self.weight[:c], self.bias[:c]
        if stats is not None:
            mean, var = stats
            if mean.shape != (c,) or var.shape != (c,):
                raise ValueError(f"DynamicBatchNorm2d: statistics of width {tuple(mean.shape)} for {c} channels")
            return F.batch_norm(x, mean, var, weight, bias, self.training, stats_momentum, self.eps)
        if not self.training:
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, False, 0.0, self.eps)
        if not self.track_running_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Views of the full buffers: F.batch_norm updates them in place, i.e. only the slice moves.
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, True, factor, self.eps)


class DynamicLinear(nn.Linear):
    """A linear layer over the first ``x.size(-1)`` inputs, giving the first ``active_out`` outputs."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True, *, device: torch.device | str = "cpu") -> None:
        super().__init__(max_in, max_out, bias, device=device)
        self.active_out = max_out

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        cin, cout = x.shape[-1], self.active_out if out_features is None else out_features
        _check_width("DynamicLinear", cin, self.in_features, "input")
        _check_width("DynamicLinear", cout, self.out_features, "output")
        return F.linear(x, self.weight[:cout, :cin], None if self.bias is None else self.bias[:cout])


__all__ = ["BNStats", "DynamicBatchNorm2d", "DynamicConv2d", "DynamicLinear", "magnitude_keep"]
