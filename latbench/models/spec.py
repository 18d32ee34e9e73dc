"""Model specifications: the layer graph of a prunable network and its channel groups.

A :class:`ModelSpec` is a flat, topologically ordered list of :class:`LayerDef`. Every tensor is named
after the layer that produced it (``"input"`` is the image). Channels that must stay equal — because a
residual addition joins them, or because a depthwise conv keeps its input width — share one *channel
group*; pruning chooses one width per group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CONV_KINDS = ("conv", "depthwise", "pointwise")
POOL_KINDS = ("maxpool", "avgpool")
LAYER_KINDS = CONV_KINDS + POOL_KINDS + ("linear",)
ACTIVATIONS = ("none", "relu", "relu6")


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

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer {self.name!r}: unknown kind {self.kind!r}; expected one of {LAYER_KINDS}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"layer {self.name!r}: unknown activation {self.act!r}; expected one of {ACTIVATIONS}")
        if (self.in_group is None) == (self.fixed_in is None):
            raise ValueError(f"layer {self.name!r}: give exactly one of in_group / fixed_in")
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
        if self.kind == "avgpool" or self.kind == "linear":
            return 1
        return (hw + 2 * self.padding - self.kernel) // self.stride + 1


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

    def __post_init__(self) -> None:
        seen = {"input"}
        for layer in self.layers:
            for src in (layer.input, layer.residual):
                if src is not None and src not in seen:
                    raise ValueError(f"model {self.name!r}: layer {layer.name!r} reads {src!r} before it is computed")
            for g in (layer.in_group, layer.out_group):
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
        cin = layer.fixed_in if layer.in_group is None else widths[layer.in_group]
        cout = layer.fixed_out if layer.out_group is None else widths[layer.out_group]
        return int(cin), int(cout)

    @property
    def stages(self):
        """The stages of this network by resolution (:func:`latbench.supernet.stages.stages_of`): each a
        :class:`latbench.supernet.stages.Stage` with its layers, input tensor, output layer and owned
        channel groups. Raises ``StageError`` for a model without stage boundaries."""
        from ..supernet.stages import stages_of   # imported here: models must not depend on the supernet

        return stages_of(self)
