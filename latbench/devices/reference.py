"""The reference network timed side by side with every measurement (see ``timing.py``).

A fixed, deterministic MobileNetV2 at half its widths (multiples of 8) on 128×128 input: a mix of
pointwise and depthwise convs and residual adds like the layers being measured, with a working set
big enough to feel the cache and memory contention that slows the networks (~1 ms on the host; a
0.3 ms reference tracked network slowdowns worse: per-round ratio CV 2.5–4.4 % vs 1–2.8 % for 1.6 ms).
One architecture and one set of weights, exported in whichever format a device runs.
"""
from __future__ import annotations

from functools import lru_cache

REFERENCE_NAME = "mobilenet_v2-w0.5-r128"


class ReferenceTimed:
    """For devices that time the reference side by side (``self.settings.reference``): the settings that
    identify a measurement environment are the runtime's own plus the reference's name."""

    def runtime_settings(self) -> dict:
        raise NotImplementedError

    def backend_settings(self) -> dict:
        out = self.runtime_settings()
        if self.settings.reference:
            out["reference"] = REFERENCE_NAME
        return out

    @property
    def uses_reference(self) -> bool:
        return self.settings.reference


@lru_cache(maxsize=None)
def reference_model(fmt: str) -> bytes:
    """The reference network serialised in ``fmt`` (``"onnx"`` or ``"tflite"``)."""
    from ..export import export_network_for
    from ..models import Architecture, get_model, materialize

    spec = get_model("mobilenet_v2")
    widths = {g: max(8, (w // 2) // 8 * 8) for g, w in spec.groups.items()}
    arch = Architecture(spec.name, 128, widths)
    return export_network_for(fmt, materialize(arch, spec, seed=0), arch)


def reference_onnx() -> bytes:
    return reference_model("onnx")


def reference_tflite() -> bytes:
    return reference_model("tflite")
