"""Layer signatures: what makes two layers cost the same, and the variable axes a table spans.

A :class:`LayerSignature` fixes the op (kind, kernel, stride, padding, fused residual add and
activation, any fixed channel count). A :class:`LayerPoint` picks values on its variable axes:
in-channels, out-channels, weight sparsity and input height/width. Layers with equal signatures —
within a model or across models — are measured once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .models.spec import CONV_KINDS, LayerDef, ModelSpec, channels_tied, output_hw

AXES = ("in_channels", "out_channels", "sparsity", "input_hw")


@dataclass(frozen=True)
class LayerSignature:
    kind: str
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    act: str = "none"
    residual: bool = False
    fixed_in: int | None = None
    fixed_out: int | None = None
    groups: int = 1
    op: str = ""

    @property
    def key(self) -> str:
        """A stable, readable identifier, e.g. ``conv_k3_s1_p1_relu_add`` or ``op_k1_s1_p0_none_xconcat2``."""
        parts = [self.kind, f"k{self.kernel}", f"s{self.stride}", f"p{self.padding}", self.act]
        if self.residual:
            parts.append("add")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        if self.op:
            parts.append(f"x{self.op}")
        if self.fixed_in is not None:
            parts.append(f"in{self.fixed_in}")
        if self.fixed_out is not None:
            parts.append(f"out{self.fixed_out}")
        return "_".join(parts)

    @classmethod
    def from_key(cls, key: str) -> "LayerSignature":
        parts = key.split("_")
        try:
            kind, k, s, p, act, *rest = parts
            sig = cls(kind, int(k[1:]), int(s[1:]), int(p[1:]), act, "add" in rest,
                      next((int(r[2:]) for r in rest if r.startswith("in")), None),
                      next((int(r[3:]) for r in rest if r.startswith("out")), None),
                      next((int(r[1:]) for r in rest if r.startswith("g")), 1),
                      next((r[1:] for r in rest if r.startswith("x")), ""))
        except (ValueError, IndexError) as err:
            raise ValueError(f"not a layer signature key: {key!r}") from err
        if sig.key != key:
            raise ValueError(f"not a layer signature key: {key!r}")
        return sig

    @property
    def channels_tied(self) -> bool:
        """Depthwise convs, pools and most ops have out_channels == in_channels."""
        return channels_tied(self.kind, self.op)

    @property
    def variable_axes(self) -> tuple[str, ...]:
        """The axes a table of this signature spans."""
        axes = []
        if self.fixed_in is None:
            axes.append("in_channels")
        if self.fixed_out is None and not self.channels_tied:
            axes.append("out_channels")
        if self.kind in CONV_KINDS:
            axes.append("sparsity")
        if self.kind != "linear":
            axes.append("input_hw")
        return tuple(axes)

    def output_hw(self, hw: int) -> int:
        return 1 if self.kind == "avgpool" else output_hw(self.kind, self.op, self.kernel, self.stride, self.padding, hw)

    def point(self, **axes) -> "LayerPoint":
        """Complete the fixed/tied axes of a point given its variable axes."""
        cin = self.fixed_in if self.fixed_in is not None else int(axes["in_channels"])
        if self.fixed_out is not None:
            cout = self.fixed_out
        elif self.channels_tied:
            cout = cin
        else:
            cout = int(axes["out_channels"])
        return LayerPoint(cin, cout, float(axes.get("sparsity", 0.0)), int(axes.get("input_hw", 1)))

    def check_point(self, point: "LayerPoint") -> None:
        if point.in_channels < 1 or point.out_channels < 1:
            raise ValueError(f"{self.key}: channel counts must be ≥ 1, got {point.in_channels}→{point.out_channels}")
        if not 0.0 <= point.sparsity < 1.0:
            raise ValueError(f"{self.key}: sparsity {point.sparsity} outside [0, 1)")
        if self.kind != "linear" and self.output_hw(point.input_hw) < 1:
            raise ValueError(f"{self.key}: input {point.input_hw}×{point.input_hw} too small for kernel {self.kernel}")


@dataclass(frozen=True, order=True)
class LayerPoint:
    in_channels: int
    out_channels: int
    sparsity: float
    input_hw: int

    def axis_values(self, axes: tuple[str, ...]) -> tuple:
        d = asdict(self)
        return tuple(d[a] for a in axes)


def signature_of(layer: LayerDef) -> LayerSignature:
    kind = layer.kind
    if kind == "pointwise" and layer.kernel != 1:
        kind = "conv"
    return LayerSignature(kind, layer.kernel, layer.stride, layer.padding, layer.act, layer.residual is not None,
                          layer.fixed_in, layer.fixed_out, layer.groups, layer.op)


def layer_points(spec: ModelSpec, widths: dict[str, int], sparsity: dict[str, float], resolution: int):
    """(layer, signature, point) for every layer of ``spec`` at one architecture."""
    hw = spec.input_hw(resolution)
    for layer in spec.layers:
        cin, cout = spec.channels(widths, layer)
        yield layer, signature_of(layer), LayerPoint(cin, cout, float(sparsity.get(layer.name, 0.0)), hw[layer.name])
