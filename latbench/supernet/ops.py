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
def magnitude_keep(weight: torch.Tensor, sparsity: float, block: int | None = None) -> torch.Tensor:
    """Keep-mask (``True`` = kept) of ``weight`` without its smallest-magnitude entries, on ``weight``'s device.

    Unstructured (``block=None``): exactly ``round(sparsity·numel)`` entries are dropped, chosen as
    :func:`latbench.models.apply_sparsity` chooses them (same sort), so a masked slice equals the weight
    ``materialize`` produces. With ``block=N`` the output filters are taken in consecutive blocks of ``N``
    (the last one may be smaller) and each block drops ``round(sparsity·block numel)`` of its own smallest
    entries — a pattern that sparse kernels working on groups of output channels exploit evenly.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1)")
    if block is not None and block < 1:
        raise ValueError(f"sparsity block {block} must be a positive number of output channels")
    magnitude = weight.detach().abs()
    if block is not None:
        return _block_keep(magnitude, sparsity, block)
    flat = magnitude.flatten()
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if not weight.is_meta:
        # Fast path (a selection, several times quicker than a sort on large kernels): unless magnitudes tie
        # at the threshold, the k smallest entries are unique and this is exactly the sort's choice.
        keep = flat > flat.kthvalue(k).values
        if flat.numel() - int(keep.sum()) == k:
            return keep.view(weight.shape)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=weight.device)
    keep[flat.argsort()[:k]] = False
    return keep.view(weight.shape)


def _block_keep(magnitude: torch.Tensor, sparsity: float, block: int) -> torch.Tensor:
    rows = magnitude.reshape(magnitude.shape[0], -1)
    cout, per_filter = rows.shape
    n_blocks = -(-cout // block)
    device = magnitude.device
    # Pad to whole blocks with +inf, so that padding is never among a block's smallest entries.
    padded = torch.full((n_blocks * block, per_filter), float("inf"), dtype=rows.dtype, device=device)
    padded[:cout] = rows
    blocks = padded.reshape(n_blocks, block * per_filter)
    filters_in_block = torch.clamp(cout - torch.arange(n_blocks, device=device) * block, max=block)
    k = torch.round(sparsity * filters_in_block * per_filter).long()
    order = blocks.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(blocks.shape[1], device=device).expand_as(order))
    keep = rank >= k[:, None]
    return keep.reshape(n_blocks * block, per_filter)[:cout].reshape(magnitude.shape)


class DynamicConv2d(nn.Conv2d):
    """A conv whose sub-networks use the first ``out`` filters and the first ``x.size(1)`` input channels.

    ``depthwise=True``: one filter per channel; the output width equals the input's. ``active_sparsity``
    (or the ``sparsity`` argument) zeroes the smallest-magnitude weights of the *sliced* kernel, as a
    materialised sub-network has them (gradients flow to the kept weights only); with ``sparsity_block``
    each block of that many output filters gets the sparsity on its own (see :func:`magnitude_keep`).
    """

    def __init__(self, max_in: int, max_out: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
                 depthwise: bool = False, bias: bool = False, sparsity_block: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        if depthwise and max_in != max_out:
            raise ValueError(f"a depthwise conv keeps its width: max_in {max_in} != max_out {max_out}")
        super().__init__(max_in, max_out, kernel_size, stride, padding, groups=max_in if depthwise else 1,
                         bias=bias, device=device)
        self.depthwise = depthwise
        self.active_out = max_out
        self.active_sparsity = 0.0
        if sparsity_block is not None and sparsity_block < 1:
            raise ValueError(f"sparsity block {sparsity_block} must be a positive number of output channels")
        self.sparsity_block = sparsity_block

    def active_weight(self, cin: int, cout: int | None = None, sparsity: float | None = None) -> torch.Tensor:
        """The kernel of the sub-network with ``cin`` inputs and ``cout`` outputs (a view, masked when sparse)."""
        cout = cin if self.depthwise else (self.active_out if cout is None else cout)
        _check_width("DynamicConv2d", cin, self.in_channels, "input")
        _check_width("DynamicConv2d", cout, self.out_channels, "output")
        w = self.weight[:cout] if self.depthwise else self.weight[:cout, :cin]
        sparsity = self.active_sparsity if sparsity is None else sparsity
        return w * magnitude_keep(w, sparsity, self.sparsity_block) if sparsity > 0 else w

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
