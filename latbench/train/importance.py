"""Filter importance, channel orders for :func:`latbench.models.materialize`, and BN recalibration.

Metrics per output filter of every conv layer:

* ``l1`` — sum of absolute weights of the filter;
* ``l2`` — sum of squared weights;
* ``taylor`` — first-order Taylor estimate of the loss change when the filter is removed:
  ``|Σ_filter (∂L/∂W ⊙ W)|`` per batch (the gradient of the batch-mean loss, i.e. the mean over the
  batch), averaged over a few batches.

Channels joined by residual additions form one *channel group* and are pruned together, so a channel's
score in a group is the sum of the scores of that channel's filters over every layer writing into the
group (for ResNet-56 ``stage1``: the stem, each ``layer1.*.conv2``; ``stage2`` also the projection
``layer2.0.down``). Depthwise convs write into their input's group and count there.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchLoader, ImageDataset
from ..models import CONV_KINDS, GraphNet, LayerDef

METRICS = ("l1", "l2", "taylor")
SCORED_KINDS = (*CONV_KINDS, "linear", "se")
Batches = ImageDataset | Iterable[tuple[torch.Tensor, torch.Tensor]]


def _scored_layers(net: GraphNet) -> list[LayerDef]:
    """Conv and fc layers whose output channels belong to a prunable group (and, in an imported network,
    the squeeze-excitation kernels, whose first conv writes the squeeze width)."""
    return [layer for layer in net.spec.layers if layer.out_group and layer.kind in SCORED_KINDS]


def _batches(data: Batches, batch_size: int, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, ImageDataset):  # shuffled so that "a few batches" cover all classes
        return BatchLoader(data, batch_size, shuffle=True, seed=seed)
    return data


def _reduce_per_filter(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _taylor_scores(net: GraphNet, layers: list[LayerDef], data: Batches, batches: int, batch_size: int,
                   seed: int) -> dict[str, np.ndarray]:
    weights = [net.filter_weight(layer.name) for layer in layers]
    totals = [torch.zeros(w.shape[0], dtype=torch.float64) for w in weights]
    # Train-mode forward (batch statistics, as during fine-tuning); BN buffers are restored afterwards so
    # that scoring has no side effects on the network.
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = net.training
    net.train()
    seen = 0
    try:
        for x, y in _batches(data, batch_size, seed):
            if seen >= batches:
                break
            loss = F.cross_entropy(net(x), y)
            grads = torch.autograd.grad(loss, weights)
            for total, w, g in zip(totals, weights, grads):
                total += _reduce_per_filter(g * w.detach()).abs().double()
            seen += 1
    finally:
        net.load_state_dict(buffers, strict=False)
        net.train(was_training)
    if seen == 0:
        raise ValueError("taylor importance needs at least one batch of data")
    return {layer.name: (total / seen).numpy() for layer, total in zip(layers, totals)}


@torch.no_grad()
def _weight_scores(net: GraphNet, layers: list[LayerDef], metric: str) -> dict[str, np.ndarray]:
    op = torch.abs if metric == "l1" else torch.square
    return {layer.name: _reduce_per_filter(op(net.filter_weight(layer.name))).double().numpy() for layer in layers}


def layer_filter_scores(net: GraphNet, metric: str = "l1", data: Batches | None = None, batches: int = 4,
                        batch_size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Score of every output filter of every conv layer writing into a channel group:
    ``{layer name: array of length out_channels}``. ``taylor`` needs ``data`` (a data set — shuffled
    batches are drawn from it — or any iterable of ``(images, labels)``) and uses ``batches`` batches."""
    if metric not in METRICS:
        raise ValueError(f"unknown importance metric {metric!r}; choose one of {', '.join(METRICS)}")
    layers = _scored_layers(net)
    if metric == "taylor":
        if data is None:
            raise ValueError("the taylor metric needs data: pass a data set or batches of (images, labels)")
        return _taylor_scores(net, layers, data, batches, batch_size, seed)
    return _weight_scores(net, layers, metric)


def group_scores(net: GraphNet, layer_scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum per-layer filter scores into per-channel scores of each channel group."""
    scores = {g: np.zeros(w, dtype=np.float64) for g, w in net.widths.items()}
    for layer in _scored_layers(net):
        if layer.name not in layer_scores:
            continue
        values = np.asarray(layer_scores[layer.name], dtype=np.float64)
        if len(values) == len(scores[layer.out_group]):
            scores[layer.out_group] += values
            continue
        # A depthwise kernel of an imported graph reading a concatenation (GhostNet's ghost modules): its filters
        # span several groups, in the order of its input tensor's segments.
        pos = 0
        for segment in _output_segments(net, layer):
            if segment.group in scores:
                scores[segment.group] += values[pos:pos + segment.width]
            pos += segment.width
    return scores


def _output_segments(net, layer: LayerDef):
    channel_graph = getattr(net, "channel_graph", None)
    node = next((n for n in getattr(net, "nodes", ()) if n.name == layer.name), None)
    segments = channel_graph().tensors.get(node.output[0]) if channel_graph and node is not None else None
    if not segments or sum(s.width for s in segments) != len(net.filter_weight(layer.name)):
        raise ValueError(f"layer {layer.name!r}: its {len(net.filter_weight(layer.name))} filters do not match its "
                         f"channel group {layer.out_group!r}; it cannot be scored")
    return segments


def channel_importance(net: GraphNet, metric: str = "l1", data: Batches | None = None, batches: int = 4,
                       batch_size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-channel scores of every channel group, ``{group: array of length width}`` (higher = keep)."""
    return group_scores(net, layer_filter_scores(net, metric, data, batches, batch_size, seed))


def importance_order(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Channel indices per group, most important first (ties keep the lower index first) — the
    ``importance`` argument of :func:`latbench.models.materialize`."""
    return {g: np.argsort(-np.asarray(s, dtype=np.float64), kind="stable") for g, s in scores.items()}


@torch.no_grad()
def recalibrate_bn(net: nn.Module, data: Batches, batches: int | None = 50, batch_size: int = 128,
                   seed: int = 0) -> int:
    """Re-estimate BatchNorm running statistics of ``net`` from ``batches`` batches of ``data`` (all when
    None): statistics are reset and accumulated as a plain cumulative average (``momentum=None``) in
    train mode, under ``no_grad`` so weights are untouched. A pruned network's BN statistics no longer
    match its thinner inputs; this fixes them in seconds. Returns the number of images used."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    was_training = net.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    graphs = [m for m in net.modules() if hasattr(m, "cumulative_bn")]     # imported graphs' BN nodes (OnnxNet)
    for m in graphs:
        m.cumulative_bn(True)
    net.train()
    images = 0
    try:
        for i, (x, _) in enumerate(_batches(data, batch_size, seed)):
            if batches is not None and i >= batches:
                break
            net(x)
            images += int(x.shape[0])
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for m in graphs:
            m.cumulative_bn(False)
        net.train(was_training)
    if images == 0:
        raise ValueError("recalibrate_bn: no data")
    return images
