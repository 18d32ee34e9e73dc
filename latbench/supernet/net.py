"""`DynamicNet`: every sub-network of a :class:`ModelSpec` in one module; at full width it *is* the network.

A sub-network is an :class:`Architecture`: a width per channel group (the first ``width`` channels of
the group are used), optionally a weight sparsity per conv (magnitude masks on the sliced kernel). There
is one forward for all of them; the static network is the sub-network at full width.

* ``DynamicNet(spec)`` — freshly initialised like :class:`~latbench.models.GraphNet`;
  ``DynamicNet.from_parent(parent, order)`` — the weights of a trained ``GraphNet``, its channels first
  permuted so that position ``j`` of group ``g`` holds the parent's channel ``order[g][j]`` (most
  important first): then "the first k channels" are the k most important ones. ``net.order`` keeps the
  permutation.
* ``net(x, arch)`` — logits; ``return_stages=True`` also gives the stage outputs (see
  :mod:`latbench.supernet.stages`); ``net.forward_stage(i, x, arch)`` runs one stage on a given input,
  first slicing it to the width the previous stage passes on in ``arch``; ``net.head(y, arch)`` runs the
  pool + classifier.
* ``net.extract(arch)`` — the sub-network as a plain ``GraphNet`` with real smaller convs: the same
  network as ``materialize(arch, spec, parent, importance=net.order)``.

The input resolution is the tensor's (the head pools globally); ``arch.resolution`` is not applied —
resize the batch with :func:`latbench.supernet.sampling.resize` when training across resolutions.

>>> from latbench.models import Architecture, get_model
>>> spec = get_model("resnet20")
>>> net = DynamicNet(spec).eval()
>>> half = Architecture(spec.name, 32, {g: w // 2 for g, w in spec.groups.items()})
>>> logits, stages = net(torch.zeros(2, 3, 32, 32), half, return_stages=True)
>>> [tuple(y.shape) for y in stages]
[(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..models import Architecture, ArchitectureError, GraphNet, LayerDef, ModelSpec
from ..models.torch_net import ConvBlock
from .ops import BNStats, DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from .stages import Stage, head_of, stages_of

#: Per-sub-network BN statistics: ``{conv layer name: (running mean, running var)}`` at its widths.
SubnetBN = dict[str, BNStats]


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity()}[name]


class DynamicConvBlock(nn.Module):
    """conv → BN (→ + residual) → activation with dynamic widths; the attributes of :class:`ConvBlock`."""

    def __init__(self, layer: LayerDef, max_in: int, max_out: int, device: torch.device | str = "cpu",
                 sparsity_block: int | None = None) -> None:
        super().__init__()
        self.conv = DynamicConv2d(max_in, max_out, layer.kernel, layer.stride, layer.padding,
                                  depthwise=layer.kind == "depthwise", sparsity_block=sparsity_block, device=device)
        self.bn = DynamicBatchNorm2d(max_out, device=device)
        self.act = _activation(layer.act)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, out_channels: int | None = None,
                sparsity: float | None = None, stats: BNStats | None = None,
                stats_momentum: float = 0.0) -> torch.Tensor:
        y = self.bn(self.conv(x, out_channels, sparsity), stats, stats_momentum)
        if residual is not None:
            y = y + residual
        return self.act(y)


@dataclass(frozen=True)
class _Plan:
    """What one forward needs from an architecture: widths per group and sparsity per conv."""

    widths: Mapping[str, int]
    sparsity: Mapping[str, float]

    def out_width(self, layer: LayerDef) -> int:
        return int(layer.fixed_out if layer.out_group is None else self.widths[layer.out_group])


class DynamicNet(nn.Module):
    """All sub-networks of ``spec`` up to ``widths`` (default: the spec's full widths) in one module.

    ``in_channels`` is the image's channel count (default the spec's stem input, e.g. 3); ``device``
    where the parameters live; ``sparsity_block`` makes every conv's magnitude masks block-wise (each
    block of that many output filters gets the layer's sparsity, see :func:`~latbench.supernet.ops.magnitude_keep`).
    Module names and state dicts are those of a :class:`GraphNet` at ``widths``, so
    ``net.load_state_dict(graphnet.state_dict())`` works.
    """

    def __init__(self, spec: ModelSpec, widths: Mapping[str, int] | None = None, in_channels: int | None = None,
                 *, device: torch.device | str = "cpu", sparsity_block: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.widths = {g: int(w) for g, w in (widths or spec.groups).items()}
        if set(self.widths) != set(spec.groups) or any(not 1 <= w for w in self.widths.values()):
            raise ValueError(f"widths must give a positive width for every group of {spec.name!r}")
        stem = next(layer for layer in spec.layers if layer.fixed_in is not None)
        self.in_channels = int(in_channels if in_channels is not None else stem.fixed_in)
        self.stages: tuple[Stage, ...] = stages_of(spec)
        self.head_layers: tuple[str, ...] = head_of(spec)
        self._layers = {layer.name: layer for layer in spec.layers}
        self.sparsity_block = sparsity_block
        self.blocks = nn.ModuleDict()
        for layer in spec.layers:
            cin, cout = spec.channels(self.widths, layer)
            if layer.fixed_in is not None:
                cin = self.in_channels
            self.blocks[layer.name.replace(".", "_")] = self._make(layer, cin, cout, device, sparsity_block)
        #: position → channel of the network the weights came from (identity until reordered)
        self.order: dict[str, np.ndarray] = {g: np.arange(w) for g, w in self.widths.items()}
        self._active: Architecture | None = None
        if torch.device(device).type != "meta":
            self.reset_parameters()

    @staticmethod
    def _make(layer: LayerDef, cin: int, cout: int, device: torch.device | str,
              sparsity_block: int | None) -> nn.Module:
        if layer.kind == "maxpool":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        if layer.kind == "avgpool":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        if layer.kind == "linear":
            return DynamicLinear(cin, cout, device=device)
        return DynamicConvBlock(layer, cin, cout, device, sparsity_block)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisation of :meth:`GraphNet.reset_parameters`: He-normal convs, BN scale 1 (0 for a
        block ending in a residual add, so each residual branch starts as the identity)."""
        for layer in self.spec.layers:
            module = self.block(layer.name)
            if isinstance(module, DynamicConvBlock):
                nn.init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.ones_(module.bn.weight)
                nn.init.zeros_(module.bn.bias)
                if layer.residual is not None:
                    nn.init.zeros_(module.bn.weight)

    @classmethod
    @torch.no_grad()
    def from_parent(cls, parent: GraphNet, order: Mapping[str, Sequence[int]] | str | None = None, *,
                    device: torch.device | str = "cpu", sparsity_block: int | None = None) -> "DynamicNet":
        """A supernet holding ``parent``'s weights (a copy; ``parent`` is untouched), at ``parent``'s widths.

        ``order``: ``{group: channel indices, most important first}`` (e.g. from
        :func:`latbench.train.importance.importance_order`), ``"l1"``/``"l2"`` for the filter-norm
        importance of ``parent``'s weights, or ``None`` to keep the parent's channel order.
        """
        if not isinstance(parent, GraphNet):
            raise TypeError(f"a DynamicNet is built from a GraphNet, got {type(parent).__name__}")
        stem = next(layer for layer in parent.spec.layers if layer.fixed_in is not None)
        # Built on the meta device and then allocated: no initialisation that would be overwritten at once,
        # and the global RNG is not consumed.
        net = cls(parent.spec, parent.widths, parent.block(stem.name).conv.in_channels, device="meta",
                  sparsity_block=sparsity_block)
        net = net.to_empty(device=device)
        net.load_state_dict(parent.state_dict())
        if isinstance(order, str):
            from ..train.importance import channel_importance, importance_order
            if order not in ("l1", "l2"):
                raise ValueError(f"order {order!r}: give 'l1', 'l2' or an explicit order (data-based metrics "
                                 "such as taylor: importance_order(channel_importance(parent, 'taylor', data)))")
            order = importance_order(channel_importance(parent, order))
        if order is not None:
            net.reorder_(order)
        return net

    # -- structure -----------------------------------------------------------------------------------
    def block(self, name: str) -> nn.Module:
        return self.blocks[name.replace(".", "_")]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def full_arch(self, resolution: int | None = None) -> Architecture:
        """The widest sub-network (the network itself) at ``resolution`` (default the base resolution)."""
        return Architecture(self.spec.name, resolution or self.spec.base_resolution, self.widths)

    @torch.no_grad()
    def reorder_(self, order: Mapping[str, Sequence[int]]) -> "DynamicNet":
        """Permute channels in place: new position ``j`` of group ``g`` holds current position ``order[g][j]``
        (groups not in ``order`` stay). Every layer reading or writing the group is permuted alike, so the
        network computes the same function; ``self.order`` follows."""
        perms = {}
        for g, idx in order.items():
            if g not in self.widths:
                raise ValueError(f"order names unknown group {g!r} of {self.spec.name!r}")
            perm = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            if perm.shape != (self.widths[g],) or not torch.equal(perm.sort().values, torch.arange(self.widths[g])):
                raise ValueError(f"order of group {g!r} must be a permutation of 0..{self.widths[g] - 1}, "
                                 f"got {perm.numel()} indices")
            perms[g] = perm
        for layer in self.spec.layers:
            module = self.block(layer.name)
            out_p = perms.get(layer.out_group) if layer.out_group else None
            in_p = perms.get(layer.in_group) if layer.in_group and layer.kind != "depthwise" else None
            if isinstance(module, DynamicLinear):
                w = module.weight if in_p is None else module.weight[:, in_p.to(module.weight.device)]
                module.weight.copy_(w if out_p is None else w[out_p.to(w.device)])
                if out_p is not None and module.bias is not None:
                    module.bias.copy_(module.bias[out_p.to(w.device)])
            elif isinstance(module, DynamicConvBlock):
                dev = module.conv.weight.device
                w = module.conv.weight if out_p is None else module.conv.weight[out_p.to(dev)]
                module.conv.weight.copy_(w if in_p is None else w[:, in_p.to(dev)])
                if out_p is not None:
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        t = getattr(module.bn, name)
                        t.copy_(t[out_p.to(dev)])
        for g, perm in perms.items():
            self.order[g] = self.order[g][perm.numpy()]
        return self

    # -- the active sub-network ------------------------------------------------------------------------
    def _plan(self, arch: Architecture | None) -> _Plan:
        arch = arch if arch is not None else self._active
        if arch is None:
            return _Plan(self.widths, {})
        arch.validate(self.spec)
        too_wide = {g: (w, self.widths[g]) for g, w in arch.widths.items() if w > self.widths[g]}
        if too_wide:
            raise ArchitectureError(f"widths wider than the supernet (asked, available): {too_wide}")
        return _Plan(arch.widths, arch.sparsity)

    def validate(self, arch: Architecture) -> Architecture:
        """``arch`` if it is a sub-network of this supernet (valid for the spec, no group wider than the
        supernet's); else :class:`ArchitectureError` naming the problem."""
        self._plan(arch)
        return arch

    def set_active(self, arch: Architecture | None) -> "DynamicNet":
        """Make ``arch`` the sub-network that ``forward`` runs when called without one (``None``: full width).
        Also sets each module's ``active_out``/``active_sparsity``, so modules run alone follow it."""
        plan = self._plan(arch) if arch is not None else _Plan(self.widths, {})
        self._active = arch
        for layer in self.spec.layers:
            module = self.block(layer.name)
            if isinstance(module, DynamicConvBlock):
                module.conv.active_out = plan.out_width(layer)
                module.conv.active_sparsity = float(plan.sparsity.get(layer.name, 0.0))
            elif isinstance(module, DynamicLinear):
                module.active_out = plan.out_width(layer)
        return self

    @property
    def active(self) -> Architecture:
        """The active sub-network (the full network unless :meth:`set_active` chose another)."""
        return self._active if self._active is not None else self.full_arch()

    # -- forward ---------------------------------------------------------------------------------------
    def _run(self, names: Sequence[str], values: dict[str, torch.Tensor], plan: _Plan, bn: SubnetBN | None,
             bn_momentum: float) -> torch.Tensor:
        out = None
        for name in names:
            layer = self._layers[name]
            module = self.block(name)
            inp = values[layer.input]
            if isinstance(module, DynamicConvBlock):
                stats = None if bn is None else bn[name]
                out = module(inp, values[layer.residual] if layer.residual else None, plan.out_width(layer),
                             float(plan.sparsity.get(name, 0.0)), stats, bn_momentum)
            elif isinstance(module, DynamicLinear):
                out = module(inp, plan.out_width(layer))
            else:
                out = module(inp)
            values[name] = out
        return out

    def _stage(self, i: int, x: torch.Tensor, plan: _Plan, bn: SubnetBN | None, bn_momentum: float = 0.0,
               slice_input: bool = False) -> torch.Tensor:
        stage = self.stages[i]
        want = self.in_channels if stage.input_group is None else plan.widths[stage.input_group]
        if slice_input and stage.input_group is not None and x.shape[1] > want:
            x = x[:, :want]            # the first (most important) channels: what the pruned predecessor passes on
        if x.shape[1] != want:
            what = "image channels" if stage.input_group is None else f"width of group {stage.input_group!r}"
            raise ValueError(f"stage {i} of {self.spec.name!r} takes {want} channels (the {what}), got {x.shape[1]}")
        return self._run(stage.layers, {stage.input: x}, plan, bn, bn_momentum)

    def _head(self, y: torch.Tensor, plan: _Plan, bn: SubnetBN | None, bn_momentum: float = 0.0) -> torch.Tensor:
        last = self.stages[-1]
        y = y[:, : plan.widths[last.output_group]]
        return self._run(self.head_layers, {last.output: y}, plan, bn, bn_momentum)

    def _check_bn(self, bn: SubnetBN | None) -> None:
        if bn is not None and self.training:
            raise ValueError("per-sub-network BN statistics apply in eval mode; training uses batch statistics "
                             "(call net.eval(), or recalibrate with latbench.supernet.recalibrate)")

    def forward(self, x: torch.Tensor, arch: Architecture | None = None, *, bn: SubnetBN | None = None,
                return_stages: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of ``arch``'s sub-network (default: the active one), and with ``return_stages`` the list
        of stage outputs ``[Y_1, …, Y_K]`` (each at the sub-network's width). In eval mode BN uses ``bn``
        (from :func:`~latbench.supernet.calibration.recalibrate`) or the shared running statistics sliced;
        in training mode batch statistics, updating the slice of the running statistics."""
        self._check_bn(bn)
        plan = self._plan(arch)
        outputs, y = [], x
        for i in range(len(self.stages)):
            y = self._stage(i, y, plan, bn)
            outputs.append(y)
        logits = self._head(y, plan, bn)
        return (logits, outputs) if return_stages else logits

    def forward_stage(self, i: int, x: torch.Tensor, arch: Architecture | None = None, *,
                      bn: SubnetBN | None = None) -> torch.Tensor:
        """Output of stage ``i`` of ``arch``'s sub-network on the input ``x``. A wider ``x`` — e.g. the full
        network's output of stage ``i − 1`` — is cut to its first ``arch.widths[input group]`` channels,
        the width the pruned previous stage passes on (in importance order after :meth:`from_parent`)."""
        self._check_bn(bn)
        if not 0 <= i < len(self.stages):
            raise IndexError(f"{self.spec.name!r} has stages 0..{len(self.stages) - 1}, not {i}")
        return self._stage(i, x, self._plan(arch), bn, slice_input=True)

    def head(self, y: torch.Tensor, arch: Architecture | None = None, *, bn: SubnetBN | None = None) -> torch.Tensor:
        """Logits from the last stage's output ``y`` (cut to ``arch``'s width of that stage's group)."""
        self._check_bn(bn)
        return self._head(y, self._plan(arch), bn)

    def stage_channels(self, i: int, arch: Architecture | None = None) -> None:
        """Which full-network channels stage ``i`` of a sub-network outputs: always its first ones (``None``),
        the adaptors' default (an ``OnnxSupernet`` names them)."""
        return None

    def stage_bn_widths(self, i: int, arch: Architecture | None = None) -> dict[str, int]:
        """:meth:`conv_widths` of stage ``i``'s convs only."""
        layers = set(self.stages[i].layers)
        return {name: c for name, c in self.conv_widths(arch).items() if name in layers}

    def _stage_calibration_step(self, i: int, x: torch.Tensor, arch: Architecture | None, stats: SubnetBN,
                                momentum: float) -> None:
        """One training-mode forward of stage ``i`` whose batch statistics move ``stats``."""
        self._stage(i, x, self._plan(arch), stats, momentum, slice_input=True)

    def _calibration_step(self, x: torch.Tensor, arch: Architecture | None, stats: SubnetBN,
                          momentum: float) -> None:
        """One training-mode forward whose batch statistics move ``stats`` (not the shared ones)."""
        plan = self._plan(arch)
        y = x
        for i in range(len(self.stages)):
            y = self._stage(i, y, plan, stats, momentum)
        self._head(y, plan, stats, momentum)

    def conv_widths(self, arch: Architecture | None = None) -> dict[str, int]:
        """Output width of every conv of ``arch``'s sub-network (the BN widths)."""
        plan = self._plan(arch)
        return {layer.name: plan.out_width(layer) for layer in self.spec.layers
                if isinstance(self.block(layer.name), DynamicConvBlock)}

    # -- extraction ------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: Architecture | None = None, bn: SubnetBN | None = None, *,
                device: torch.device | str | None = None) -> GraphNet:
        """``arch``'s sub-network as a plain :class:`GraphNet` (eval mode) on ``device`` (default: this
        net's): kernels, BN parameters and the classifier sliced to the first channels, sparse convs with
        their masked weights as zeros, BN statistics from ``bn`` or the running ones sliced. It equals
        ``materialize(arch, spec, parent, importance=self.order)`` and computes what ``self.eval()(x, arch,
        bn=bn)`` computes."""
        plan = self._plan(arch)
        with torch.random.fork_rng(devices=[]):   # GraphNet initialises its weights; keep the caller's RNG
            net = GraphNet(self.spec, plan.widths, self.in_channels)
        for layer in self.spec.layers:
            src, dst = self.block(layer.name), net.block(layer.name)
            if isinstance(src, DynamicLinear):
                cin, cout = self.spec.channels(plan.widths, layer)
                dst.weight.copy_(src.weight[:cout, :cin])
                if src.bias is not None:
                    dst.bias.copy_(src.bias[:cout])
            elif isinstance(src, DynamicConvBlock):
                assert isinstance(dst, ConvBlock)
                cin = dst.conv.in_channels
                cout = dst.conv.out_channels
                dst.conv.weight.copy_(src.conv.active_weight(cin, cout, float(plan.sparsity.get(layer.name, 0.0))))
                dst.bn.weight.copy_(src.bn.weight[:cout])
                dst.bn.bias.copy_(src.bn.bias[:cout])
                mean, var = bn[layer.name] if bn is not None else (src.bn.running_mean[:cout], src.bn.running_var[:cout])
                dst.bn.running_mean.copy_(mean)
                dst.bn.running_var.copy_(var)
                dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)
        return net.to(device if device is not None else self.device).eval()

    def to_graphnet(self, device: torch.device | str | None = None) -> GraphNet:
        """The full-width network as a plain :class:`GraphNet` (in this net's channel order)."""
        return self.extract(self.full_arch(), device=device)


__all__ = ["DynamicConvBlock", "DynamicNet", "SubnetBN"]
