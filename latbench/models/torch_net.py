"""Plain static torch networks built from a :class:`ModelSpec` at the widths of an :class:`Architecture`.

Pruned networks have real, smaller convolutions (no masks), so what is exported is what runs.
"""
from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .arch import Architecture
from .spec import LayerDef, ModelSpec


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity()}[name]


class ConvBlock(nn.Module):
    """conv → BN (→ + residual) → activation: the unit a runtime fuses into one kernel."""

    def __init__(self, layer: LayerDef, cin: int, cout: int) -> None:
        super().__init__()
        groups = cin if layer.kind == "depthwise" else 1
        self.conv = nn.Conv2d(cin, cout, layer.kernel, layer.stride, layer.padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = _activation(layer.act)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if residual is not None:
            y = y + residual
        return self.act(y)


def _make_module(layer: LayerDef, cin: int, cout: int) -> nn.Module:
    if layer.kind == "maxpool":
        return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
    if layer.kind == "avgpool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if layer.kind == "linear":
        return nn.Linear(cin, cout)
    return ConvBlock(layer, cin, cout)


class GraphNet(nn.Module):
    """Executes the layers of a spec in order; each layer's output is kept under its name.

    Weights are drawn from ``generator`` when one is given, and then torch's global RNG is left untouched;
    else from the global RNG (``torch.manual_seed`` before building makes a training run reproducible)."""

    def __init__(self, spec: ModelSpec, widths: Mapping[str, int], in_channels: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.widths = dict(widths)
        self._order = [layer for layer in spec.layers]
        self.blocks = nn.ModuleDict()
        # torch's modules initialise themselves from the global RNG; built without storage, they draw nothing.
        with torch.device("meta") if generator is not None else contextlib.nullcontext():
            for layer in spec.layers:
                cin, cout = spec.channels(self.widths, layer)
                if layer.fixed_in is not None and in_channels is not None:
                    cin = in_channels
                self.blocks[layer.name.replace(".", "_")] = _make_module(layer, cin, cout)
        if generator is not None:
            self.to_empty(device="cpu")
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He-normal convs (fan-out), and the BN scale of every block that ends in a residual add set to 0, so
        each residual branch starts as the identity (Goyal et al. 2017). Deep CIFAR ResNets need it: ResNet-56
        with PyTorch's default init reached only 64 % on Fashion-MNIST after an epoch (measured).

        With ``generator`` every tensor is set here (BN statistics, and linear layers as torch's default
        init does), as :meth:`__init__` then builds the modules without initialising them."""
        for layer in self._order:
            module = self.block(layer.name)
            if isinstance(module, ConvBlock):
                w = module.conv.weight
                fan_out = w.shape[0] * w[0, 0].numel()
                # kaiming_normal_(mode="fan_out", nonlinearity="relu"), the same arithmetic, with a generator
                w.normal_(0, math.sqrt(2.0) / math.sqrt(fan_out), generator=generator)
                if generator is not None:
                    module.bn.reset_running_stats()
                nn.init.ones_(module.bn.weight)
                nn.init.zeros_(module.bn.bias)
                if layer.residual is not None:
                    nn.init.zeros_(module.bn.weight)
            elif isinstance(module, nn.Linear) and generator is not None:
                bound = 1.0 / math.sqrt(module.in_features)   # torch's default Linear init, U(±1/√fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)

    def block(self, name: str) -> nn.Module:
        return self.blocks[name.replace(".", "_")]

    def filter_weight(self, layer: str) -> torch.Tensor:
        """The weight of ``layer``: one row per output channel (what filter metrics score)."""
        module = self.block(layer)
        return module.conv.weight if isinstance(module, ConvBlock) else module.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {"input": x}
        # Tensors are released once no later layer reads them, to keep memory flat on deep nets.
        for layer in self._order:
            module = self.block(layer.name)
            inp = values[layer.input]
            if isinstance(module, ConvBlock):
                out = module(inp, values[layer.residual] if layer.residual else None)
            else:
                out = module(inp)
            values[layer.name] = out
        return values[self._order[-1].name]


def build(spec: ModelSpec, widths: Mapping[str, int] | None = None, in_channels: int | None = None) -> GraphNet:
    """A freshly initialised network of ``spec`` at ``widths`` (full widths by default)."""
    return GraphNet(spec, widths or spec.groups, in_channels)


def _keep(order: Sequence[int] | torch.Tensor | None, width: int) -> torch.Tensor:
    if order is None:
        return torch.arange(width)
    return torch.as_tensor(order[:width], dtype=torch.long).sort().values


@torch.no_grad()
def randomize_bn(net: nn.Module, shift: float = 0.1, generator: torch.Generator | None = None) -> nn.Module:
    """Draw every BatchNorm's running mean and bias from U(−shift, shift) and its running variance and weight
    from U(0.5, 1.5) (from ``generator``, default torch's global RNG): statistics that make BN handling visible
    in tests and exports."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-shift, shift, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.uniform_(0.5, 1.5, generator=generator)
            module.bias.uniform_(-shift, shift, generator=generator)
    return net


@torch.no_grad()
def materialize(arch: Architecture, spec: ModelSpec, parent: GraphNet | None = None,
                importance: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> GraphNet:
    """Return a plain static network with the smaller shapes of ``arch``.

    With ``parent``, weights are sliced from it: in each group the channels kept are the first
    ``width`` of ``importance[group]`` (most important first; identity order when absent).
    Weight sparsity is applied as real zeros: the smallest-magnitude weights of each conv. An imported model
    (``spec.source``, issue 13) is cut from its own graph with the file's weights (or ``parent``'s, an
    :class:`~latbench.models.onnx_torch.OnnxNet`): see :func:`~latbench.models.onnx_torch.materialize_imported`.
    Random weights come
    from a generator seeded with ``seed``: the same seed gives the same network, and torch's global RNG is
    left alone (LcP materializes hundreds of candidates inside a seeded run).
    """
    if spec.source:     # an imported model: its own graph cut to the widths (an OnnxNet)
        from .onnx_torch import materialize_imported

        return materialize_imported(arch, spec, parent, importance)
    arch.validate(spec)
    generator = torch.Generator().manual_seed(seed)
    stem = next(layer for layer in spec.layers if layer.fixed_in is not None)
    # The stem reads the parent's channels, else the spec's input (1 for a network trained on grey images:
    # what the closed loop measures must be what ships).
    in_channels = parent.block(stem.name).conv.in_channels if parent is not None else spec.in_channels
    net = GraphNet(spec, arch.widths, in_channels, generator=generator)
    if parent is None:
        randomize_bn(net, generator=generator)   # non-trivial BN statistics, so that exported graphs exercise BN folding for real
    else:
        keep = {g: _keep((importance or {}).get(g), w) for g, w in arch.widths.items()}
        for layer in spec.layers:
            src, dst = parent.block(layer.name), net.block(layer.name)
            in_idx = keep[layer.in_group] if layer.in_group else None
            out_idx = keep[layer.out_group] if layer.out_group else None
            if layer.kind == "linear":
                w = src.weight if in_idx is None else src.weight[:, in_idx]
                dst.weight.copy_(w)
                dst.bias.copy_(src.bias)
            elif isinstance(dst, ConvBlock):
                w = src.conv.weight
                if out_idx is not None:
                    w = w[out_idx]
                if in_idx is not None and layer.kind != "depthwise":
                    w = w[:, in_idx]
                dst.conv.weight.copy_(w)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(src.bn, name)
                    getattr(dst.bn, name).copy_(t if out_idx is None else t[out_idx])
    for layer_name, sparsity in arch.sparsity.items():
        apply_sparsity(net.block(layer_name).conv.weight, sparsity)
    return net.eval()


@torch.no_grad()
def apply_sparsity(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``round(sparsity·numel)`` smallest-magnitude entries of ``weight`` in place."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1)")
    k = int(round(sparsity * weight.numel()))
    if k > 0:
        idx = weight.abs().flatten().argsort()[:k]
        weight.view(-1)[idx] = 0.0
    return weight
