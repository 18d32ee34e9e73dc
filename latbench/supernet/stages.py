"""Stages of a network: the stretches between resolution drops, each owning its own channel groups.

Stage-wise methods (SP) train and search every stage on its own, given the full network's output of the
stage before. That needs a split where

* a stage's input is **one tensor** (the previous stage's output, or the image), and
* every channel group is **written only inside one stage** — the stage that owns it — so that a stage's
  widths can be chosen without touching another stage's layers.

**The rule** (:func:`stages_of`). A tensor ``T`` may end a stage when

1. it is a *cut*: no layer after ``T`` reads a tensor computed before ``T`` (residual shortcuts do not
   jump over it), and
2. its channel group is *closed*: no layer after ``T`` writes that group — not a residual addition (the
   groups of ResNet stages), and not a depthwise conv or pool, which keep their input width.

For every layer that lowers the resolution (at ``spec.base_resolution``), the boundary is the **latest
closed cut before that layer** and after the previous boundary. When there is none, the stretch before the
drop joins the next stage. The head — the last global pool and what follows it, ending in a linear
classifier — is in no stage. A channel group the head writes (MobileNetV3's 1×1 conv after the pool,
:func:`head_groups`) belongs to no stage either: a stage-wise search keeps it at full width.

What this gives on the zoo:

* CIFAR ResNet-20/56: 3 stages; the stem runs at 32×32 like the first blocks and is part of stage 1.
* ResNet-18 (224): 4 stages. The stem's output (112×112) is not closed — the residual blocks of
  ``layer1`` write its group ``stage1`` — and neither is the max-pool's, so stem and max-pool join
  ``layer1``'s stage.
* MobileNetV2 (224): 5 stages, each ending at a block output. The expansion group of a strided block is
  written by its 1×1 expansion (at the high resolution) *and* by its stride-2 depthwise conv (at the low
  one), so the expansion output is not closed: the boundary is the block's input and **the whole
  inverted-residual block lives in the lower-resolution stage**. Its expansion, depthwise and
  projection widths are then chosen by one stage, and the stage input is the narrow block output
  (16–96 channels), not the 6× wider expansion tensor.
* MobileNetV1 (224): 5 stages. Each 1×1 conv's group is also written by the next block's depthwise
  conv, so a pointwise output is never closed; the boundaries fall on the depthwise outputs just before
  a strided block: stage 1 = stem + ``block1.dw`` (112×112), stage 2 starts at ``block1.pw``.
  Every depthwise conv stays with the layer that produces its group.

The alternative for MobileNets — cut after the producing conv and let the next stage's depthwise conv
follow a width owned by the previous stage — keeps ownership single too, but then a stage's
depthwise widths (and their latency) would be chosen by another stage's search, and MobileNetV2's stage
inputs would be the wide expansion tensors. With the rule above, a stage depends on its predecessor only
through its input width, exactly as a ResNet stage does.

>>> from latbench.models import get_model
>>> [s.output for s in stages_of(get_model("resnet20"))]
['layer1.2.conv2', 'layer2.2.conv2', 'layer3.2.conv2']
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.spec import LayerDef, ModelSpec


class StageError(ValueError):
    """A model whose stages cannot be derived."""


@dataclass(frozen=True)
class Stage:
    """One stage of a :class:`ModelSpec`.

    ``layers``: its layers in forward order; ``input``: the tensor it reads (``"input"`` = the image, else
    the previous stage's ``output``); ``output``: the layer whose output is the stage output;
    ``groups``: the channel groups it owns (written only by its layers), in order of first write;
    ``input_group``: the group of ``input`` (owned by the previous stage; ``None`` for the image);
    ``output_group``: the group of ``output`` (one of ``groups``); ``output_hw``: the output's height
    (= width) at the spec's base resolution.
    """

    index: int
    layers: tuple[str, ...]
    input: str
    output: str
    groups: tuple[str, ...]
    input_group: str | None
    output_group: str
    output_hw: int


def head_of(spec: ModelSpec) -> tuple[str, ...]:
    """Names of the head's layers: the last global average pool and everything after it (on 1×1 maps), which
    ends in a linear classifier — pool + classifier, or MobileNetV3's pool → 1×1 conv → act → classifier."""
    layers = spec.layers
    pools = [i for i, layer in enumerate(layers)               # a global pool: with its flatten, or alone
             if layer.kind == "avgpool" or (layer.kind == "op" and layer.op == "gap")]
    start = pools[-1] if pools else len(layers)
    head = layers[start:]
    if not head or head[-1].kind != "linear" or start == 0:
        raise StageError(f"model {spec.name!r} has no stage boundaries: its layers must end in a global average "
                         f"pool and a linear classifier (the head), after at least one conv; they end in "
                         f"{[l.kind for l in layers[-3:]]}")
    return tuple(layer.name for layer in head)


def head_groups(spec: ModelSpec) -> tuple[str, ...]:
    """Channel groups the head writes (MobileNetV3's 1×1 conv after the pool): owned by no stage, they stay at
    full width in a stage-wise search."""
    head = set(head_of(spec))          # pools and flattens pass their input's group on: they write none
    return tuple(dict.fromkeys(layer.out_group for layer in spec.layers if layer.name in head
                               and layer.out_group is not None and layer.out_group != layer.in_group))


def _reads(layer: LayerDef) -> list[str]:
    return [src for src in (layer.input, layer.residual) if src is not None]


def stages_of(spec: ModelSpec) -> tuple[Stage, ...]:
    """Split ``spec`` into stages by resolution (see the module docstring for the rule).

    Raises :class:`StageError` naming the reason when the model has fewer than two stages, no
    pool + linear head, or a channel group written in two stages.
    """
    head = head_of(spec)
    body = spec.layers[: len(spec.layers) - len(head)]
    pos = {"input": -1, **{layer.name: i for i, layer in enumerate(spec.layers)}}
    n = len(spec.layers)

    # earliest[p]: the earliest-computed tensor read by any layer after position p (head included).
    earliest = [n] * n
    running = n
    for q in range(n - 1, -1, -1):
        earliest[q] = running
        running = min(running, *(pos[src] for src in _reads(spec.layers[q])))

    def is_cut(p: int) -> bool:
        return earliest[p] >= p

    def is_closed(p: int) -> bool:
        group = body[p].out_group
        return all(later.out_group != group for later in body[p + 1:])

    in_hw = spec.input_hw(spec.base_resolution)
    out_hw = {layer.name: layer.output_hw(in_hw[layer.name]) for layer in spec.layers}

    boundaries: list[int] = []
    for i, layer in enumerate(body):
        if out_hw[layer.name] >= in_hw[layer.name]:
            continue                                    # not a resolution drop
        start = boundaries[-1] + 1 if boundaries else 0
        candidates = [p for p in range(start, i) if is_cut(p) and is_closed(p)]
        if candidates:
            boundaries.append(max(candidates))
    ends = boundaries + [len(body) - 1]
    if len(ends) < 2:
        raise StageError(f"model {spec.name!r} has no stage boundaries: no layer output before a resolution drop "
                         "is a single tensor whose channel group no later layer writes (see "
                         "latbench.supernet.stages for the rule)")

    stages, start, owner = [], 0, {}
    for index, end in enumerate(ends):
        layers = body[start: end + 1]
        groups = tuple(dict.fromkeys(l.out_group for l in layers if l.out_group is not None))
        for g in groups:
            if g in owner:
                raise StageError(f"model {spec.name!r} has no stage boundaries: group {g!r} is written in stage "
                                 f"{owner[g]} and in stage {index}")
            owner[g] = index
        inp = "input" if start == 0 else body[start - 1].name
        stages.append(Stage(index, tuple(l.name for l in layers), inp, body[end].name, groups,
                            None if start == 0 else body[start - 1].out_group, body[end].out_group,
                            out_hw[body[end].name]))
        start = end + 1
    shared = sorted(set(head_groups(spec)) & set(owner))
    if shared:
        raise StageError(f"model {spec.name!r} has no stage boundaries: group {shared[0]!r} is written in stage "
                         f"{owner[shared[0]]} and in the head")
    unowned = set(spec.groups) - set(owner) - set(head_groups(spec))
    if unowned:
        raise StageError(f"model {spec.name!r}: groups {sorted(unowned)} are written by no stage layer")
    return tuple(stages)


def stage_of_group(stages: tuple[Stage, ...], group: str) -> int:
    """Index of the stage that owns ``group``."""
    for stage in stages:
        if group in stage.groups:
            return stage.index
    raise KeyError(f"no stage owns group {group!r}")


__all__ = ["Stage", "StageError", "head_groups", "head_of", "stage_of_group", "stages_of"]
