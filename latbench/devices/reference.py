"""The reference network timed side by side with every measurement (see ``timing.py``).

A fixed, deterministic MobileNetV2 at a quarter of its widths (multiples of 8) on 96×96 input: a mix
of pointwise and depthwise convs and residual adds like the layers being measured, short (~0.3 ms on
the host) so that timing it before every round costs little.
"""
from __future__ import annotations

from functools import lru_cache

REFERENCE_NAME = "mobilenet_v2-w0.25-r96"


@lru_cache(maxsize=1)
def reference_onnx() -> bytes:
    from ..export.onnx import export_network
    from ..models import Architecture, get_model, materialize

    spec = get_model("mobilenet_v2")
    widths = {g: max(8, (w // 4) // 8 * 8) for g, w in spec.groups.items()}
    arch = Architecture(spec.name, 96, widths)
    return export_network(materialize(arch, spec, seed=0), 96)
