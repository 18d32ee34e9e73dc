"""Model specifications: the layer graph of a prunable network and its channel groups.

A :class:`ModelSpec` is a flat, topologically ordered list of :class:`LayerDef`. Every tensor is named
after the layer that produced it (``"input"`` is the image). Channels that must stay equal — because a
residual addition joins them, or because a depthwise conv keeps its input width — share one *channel
group*; pruning chooses one width per group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CONV_KINDS = ("conv", "depthwise", "pointwise")
POOL_KINDS = ("maxpool", "avgpool", "avgpool2d")   # avgpool: global, to N×C; avgpool2d: a k×k window
# Kernels of imported networks (latbench.models.onnx_graph): "se" is a squeeze-excitation block measured as one
# kernel (its out_channels axis is the squeeze width; its output keeps the input's channels); "op" is an op that
# pruning does not choose widths for (concat, add, mul, channel shuffle, resize, …), described by ``op``.
LAYER_KINDS = CONV_KINDS + POOL_KINDS + ("linear", "se", "op")
ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "gelu", "leakyrelu", "prelu", "tanh")


def op_scale(op: str) -> float:
    """The spatial factor an op kernel applies: ``x2`` in a resize op's name doubles H and W."""
    for part in op.split("-"):
        if part.startswith("x") and part[1:].replace(".", "", 1).isdigit():
            return float(part[1:])
    return 1.0


def channels_tied(kind: str, op: str = "") -> bool:
    """Kernels whose output has their input's channels: depthwise convs, pools, and ops other than slicing."""
    if kind == "op":
        return True       # slices and splits too: their cost follows the channels they read
    return kind in ("depthwise",) + POOL_KINDS


def output_hw(kind: str, op: str, kernel: int, stride: int, padding: int, hw: int) -> int:
    """Output height (= width) of a layer of ``kind`` on an ``hw``×``hw`` input."""
    if kind in ("avgpool", "linear"):
        return 1
    if kind == "se":
        return hw
    if kind == "op":
        if op.startswith("pad-"):         # pad-BEFORE-AFTER
            before, after = op.split("-")[1:3]
            return hw + int(before) + int(after)
        return 1 if op.startswith(("flatten", "gap", "softmax")) else int(hw * op_scale(op))
    return (hw + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class LayerDef:
    """One layer as the runtime executes it: conv + folded BN (+ residual add) + activation.

    ``in_group``/``out_group`` name the channel groups of its input and output; ``None`` means a fixed
    width (the image channels of the stem, the classes of the classifier), given by
    ``fixed_in``/``fixed_out``. Depthwise convs and pools have ``out_group == in_group``.
    """

    name: str
    kind: str
    input: str
    in_group: str | None
    out_group: str | None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    act: str = "none"
    residual: str | None = None
    fixed_in: int | None = None
    fixed_out: int | None = None
    groups: int = 1                      # conv groups other than depthwise (RegNet's grouped convs)
    op: str = ""                         # what an "op" kernel does, e.g. "concat2", "shuffle2", "resize-nearest-x2"
    extra_inputs: tuple[str, ...] = ()   # further tensors an op reads (concat, add and mul inputs beyond the first)
    in_extra: tuple[str, ...] = ()       # further groups whose channels are concatenated to in_group's
    in_offset: int = 0                   # fixed channels concatenated to the grouped ones (not in the signature)

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name!r}: unknown kind {self.kind!r}; expected one of {LAYER_KINDS}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"layer {self.name!r}: unknown activation {self.act!r}; expected one of {ACTIVATIONS}")
        if (self.in_group is None) == (self.fixed_in is None):
            raise ValueError(f"layer {self.name!r}: give exactly one of in_group / fixed_in")
        if (self.in_extra or self.in_offset) and self.in_group is None:
            raise ValueError(f"layer {self.name!r}: in_extra / in_offset add to in_group; give in_group")
        if (self.kind == "op" and not self.op) or (self.op and self.kind not in ("op", "se")):
            raise ValueError(f"layer {self.name!r}: an op kernel needs ``op`` (a squeeze-excitation names its gate "
                             "there); other kinds have none")
        if self.kind in ("depthwise",) + POOL_KINDS and self.out_group != self.in_group:
            raise ValueError(f"layer {self.name!r}: a {self.kind} layer keeps its input width (out_group == in_group)")

    @property
    def has_weights(self) -> bool:
        return self.kind in CONV_KINDS or self.kind == "linear"

    @property
    def sparsifiable(self) -> bool:
        """Weight sparsity is searched for convolutions (as in JCW), not for the classifier."""
        return self.kind in CONV_KINDS

    def output_hw(self, hw: int) -> int:
        return output_hw(self.kind, self.op, self.kernel, self.stride, self.padding, hw)


@dataclass(frozen=True)
class ModelSpec:
    """A prunable network: its layers, its channel groups with their full widths, its resolutions."""

    name: str
    layers: tuple[LayerDef, ...]
    groups: dict[str, int] = field(hash=False)
    resolutions: tuple[int, ...]
    in_channels: int = 3
    num_classes: int = 1000
    description: str = ""
    source: str = ""                  # the ONNX file an imported model came from (pruned variants are cut from it)
    remainder: tuple[str, ...] = ()   # nodes no kernel covers (--skip-unsupported): timed together as one remainder
    multiples: dict[str, int] = field(default_factory=dict, hash=False)  # widths a group must be a multiple of
    input_shape: tuple[int, ...] = ()  # an imported model's fixed N×C×H×W input

    def __post_init__(self) -> None:
        seen = {"input"}
        for layer in self.layers:
            for src in (layer.input, layer.residual, *layer.extra_inputs):
                if src is not None and src not in seen:
                    raise ValueError(f"model {self.name!r}: layer {layer.name!r} reads {src!r} before it is computed")
            for g in (layer.in_group, layer.out_group, *layer.in_extra):
                if g is not None and g not in self.groups:
                    raise ValueError(f"model {self.name!r}: layer {layer.name!r} uses unknown group {g!r}")
            seen.add(layer.name)

    @property
    def base_resolution(self) -> int:
        return max(self.resolutions)

    @property
    def output(self) -> str:
        return self.layers[-1].name

    def layer(self, name: str) -> LayerDef:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"model {self.name!r} has no layer {name!r}")

    @property
    def sparsifiable_layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.sparsifiable)

    def input_hw(self, resolution: int) -> dict[str, int]:
        """Input height (= width) of every layer when the network runs at ``resolution``."""
        hw = {"input": int(resolution)}
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.name] = hw[layer.input]
            hw[layer.name] = layer.output_hw(hw[layer.input])
            if hw[layer.name] < 1:
                raise ValueError(
                    f"model {self.name!r} at resolution {resolution}: layer {layer.name!r} would have an empty output; "
                    f"use a resolution of at least {min(self.resolutions)}"
                )
        return out

    def channels(self, widths: dict[str, int], layer: LayerDef) -> tuple[int, int]:
        if layer.in_group is None:
            cin = layer.fixed_in
        else:
            cin = widths[layer.in_group] + sum(widths[g] for g in layer.in_extra) + layer.in_offset
        if layer.fixed_out is not None:
            cout = layer.fixed_out
        elif channels_tied(layer.kind, layer.op):
            cout = cin        # a concatenated input stays concatenated
        else:
            cout = widths[layer.out_group]
        return int(cin), int(cout)

    @property
    def stages(self):
        """The stages of this network by resolution (:func:`latbench.supernet.stages.stages_of`): each a
        :class:`latbench.supernet.stages.Stage` with its layers, input tensor, output layer and owned
        channel groups. Raises ``StageError`` for a model without stage boundaries."""
        from ..supernet.stages import stages_of   # imported here: models must not depend on the supernet

        return stages_of(self)
