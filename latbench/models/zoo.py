"""The prunable model zoo: ResNet-18, MobileNetV1/V2 at ImageNet shapes, ResNet-20/56 and MobileNetV2 at
CIFAR shapes. Each builder lists layers in forward order and declares the channel groups."""
from __future__ import annotations

from typing import Callable

from .spec import LayerDef, ModelSpec


class _Builder:
    """Collects layers and groups; keeps the zoo definitions short and readable."""

    def __init__(self) -> None:
        self.layers: list[LayerDef] = []
        self.groups: dict[str, int] = {}

    def group(self, name: str, width: int) -> str:
        self.groups.setdefault(name, width)
        return name

    def add(self, name: str, kind: str, src: str, in_group: str | None, out_group: str | None, **kw) -> str:
        self.layers.append(LayerDef(name=name, kind=kind, input=src, in_group=in_group, out_group=out_group, **kw))
        return name

    def head(self, src: str, group: str, num_classes: int) -> None:
        pooled = self.add("avgpool", "avgpool", src, group, group)
        self.add("fc", "linear", pooled, group, None, fixed_out=num_classes)


def _basic_block(b: _Builder, x: str, x_group: str, name: str, width: int, stride: int, out_group: str) -> str:
    """ResNet basic block; a strided or widening block gets a 1×1 projection shortcut."""
    mid = b.group(f"{name}.mid", width)
    h = b.add(f"{name}.conv1", "conv", x, x_group, mid, kernel=3, stride=stride, padding=1, act="relu")
    if stride != 1 or x_group != out_group:
        shortcut = b.add(f"{name}.down", "pointwise", x, x_group, out_group, kernel=1, stride=stride)
    else:
        shortcut = x
    return b.add(f"{name}.conv2", "conv", h, mid, out_group, kernel=3, padding=1, act="relu", residual=shortcut)


def resnet18(num_classes: int = 1000) -> ModelSpec:
    b = _Builder()
    g = b.group("stage1", 64)
    x = b.add("stem", "conv", "input", None, g, kernel=7, stride=2, padding=3, act="relu", fixed_in=3)
    x = b.add("maxpool", "maxpool", x, g, g, kernel=3, stride=2, padding=1)
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        out = b.group(f"stage{stage}", width)
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(b, x, g, f"layer{stage}.{block}", width, stride, out)
            g = out
    b.head(x, g, num_classes)
    return ModelSpec("resnet18", tuple(b.layers), b.groups, resolutions=(160, 192, 224), num_classes=num_classes,
                     description="ResNet-18, ImageNet shapes (224×224)")


def _cifar_resnet(name: str, blocks_per_stage: int, num_classes: int) -> ModelSpec:
    """CIFAR ResNet-(6n+2) (He et al. 2016): 3 stages × n basic blocks, 16/32/64 channels, projection shortcuts."""
    b = _Builder()
    g = b.group("stage1", 16)
    x = b.add("stem", "conv", "input", None, g, kernel=3, padding=1, act="relu", fixed_in=3)
    for stage, width in enumerate((16, 32, 64), start=1):
        out = b.group(f"stage{stage}", width)
        for block in range(blocks_per_stage):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(b, x, g, f"layer{stage}.{block}", width, stride, out)
            g = out
    b.head(x, g, num_classes)
    depth = 6 * blocks_per_stage + 2
    return ModelSpec(name, tuple(b.layers), b.groups, resolutions=(24, 28, 32), num_classes=num_classes,
                     description=f"ResNet-{depth}, CIFAR shapes (32×32)")


def resnet56(num_classes: int = 10) -> ModelSpec:
    """CIFAR ResNet-56: 3 stages × 9 basic blocks."""
    return _cifar_resnet("resnet56", 9, num_classes)


def resnet20(num_classes: int = 10) -> ModelSpec:
    """CIFAR ResNet-20: 3 stages × 3 basic blocks (a quick model for tests and short runs)."""
    return _cifar_resnet("resnet20", 3, num_classes)


def mobilenet_v1(num_classes: int = 1000) -> ModelSpec:
    b = _Builder()
    g = b.group("stem", 32)
    x = b.add("stem", "conv", "input", None, g, kernel=3, stride=2, padding=1, act="relu", fixed_in=3)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (width, stride) in enumerate(plan, start=1):
        x = b.add(f"block{i}.dw", "depthwise", x, g, g, kernel=3, stride=stride, padding=1, act="relu")
        out = b.group(f"block{i}", width)
        x = b.add(f"block{i}.pw", "pointwise", x, g, out, act="relu")
        g = out
    b.head(x, g, num_classes)
    return ModelSpec("mobilenet_v1", tuple(b.layers), b.groups, resolutions=(160, 192, 224), num_classes=num_classes,
                     description="MobileNetV1 1.0, ImageNet shapes (224×224)")


# (expansion t, channels c, repeats n, first stride s) — Sandler et al. 2018, Table 2
_MBV2_PLAN = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _mobilenet_v2(name: str, num_classes: int, stem_stride: int, strides: list[int], resolutions, description) -> ModelSpec:
    b = _Builder()
    g = b.group("stem", 32)
    x = b.add("stem", "conv", "input", None, g, kernel=3, stride=stem_stride, padding=1, act="relu6", fixed_in=3)
    block = 0
    for stage, ((t, c, n, _), s) in enumerate(zip(_MBV2_PLAN, strides), start=1):
        out = b.group(f"stage{stage}", c)
        for i in range(n):
            block += 1
            stride = s if i == 0 else 1
            in_width = b.groups[g]
            h = x
            hidden = g
            if t != 1:
                hidden = b.group(f"block{block}.hidden", in_width * t)
                h = b.add(f"block{block}.expand", "pointwise", x, g, hidden, act="relu6")
            h = b.add(f"block{block}.dw", "depthwise", h, hidden, hidden, kernel=3, stride=stride, padding=1, act="relu6")
            residual = x if (stride == 1 and g == out) else None
            x = b.add(f"block{block}.project", "pointwise", h, hidden, out, residual=residual)
            g = out
    last = b.group("last", 1280)
    x = b.add("last", "pointwise", x, g, last, act="relu6")
    b.head(x, last, num_classes)
    return ModelSpec(name, tuple(b.layers), b.groups, resolutions=resolutions, num_classes=num_classes,
                     description=description)


def mobilenet_v2(num_classes: int = 1000) -> ModelSpec:
    return _mobilenet_v2("mobilenet_v2", num_classes, 2, [s for *_, s in _MBV2_PLAN], (160, 192, 224),
                         "MobileNetV2 1.0, ImageNet shapes (224×224)")


def mobilenet_v2_cifar(num_classes: int = 10) -> ModelSpec:
    """MobileNetV2 for 32×32 inputs: stem and the first two strided stages at stride 1 (common CIFAR variant)."""
    return _mobilenet_v2("mobilenet_v2_cifar", num_classes, 1, [1, 1, 2, 2, 1, 2, 1], (24, 28, 32),
                         "MobileNetV2 1.0, CIFAR shapes (32×32)")


ZOO: dict[str, Callable[..., ModelSpec]] = {
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_cifar": mobilenet_v2_cifar,
}


def get_model(name: str, **kw) -> ModelSpec:
    """Return the zoo model ``name``; raises a ``KeyError`` listing the known names."""
    key = name.lower().replace("-", "_")
    if key not in ZOO:
        raise KeyError(f"unknown model {name!r}; the zoo has {', '.join(sorted(ZOO))} (or give a path to an .onnx file)")
    return ZOO[key](**kw)
