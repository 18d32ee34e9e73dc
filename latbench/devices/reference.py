"""The reference network timed side by side with every measurement (see ``timing.py``).

A fixed, deterministic MobileNetV2 at half its widths (multiples of 8) on 128×128 input: a mix of
pointwise and depthwise convs and residual adds like the layers being measured, with a working set
big enough to feel the cache and memory contention that slows the networks (~1 ms on the host; a
0.3 ms reference tracked network slowdowns worse: per-round ratio CV 2.5–4.4 % vs 1–2.8 % for 1.6 ms).
One architecture and one set of weights, exported in whichever format a device runs.

``large`` (``host:onnxruntime?reference=large``): the same MobileNetV2 at full width on 224×224 (~7 ms on the host),
whose working set is a 224-px network's. Whole 224-px networks timed beside it repeated 2.5–4× more tightly than
beside the small one, measured in the same minutes on both host runtimes (docs/measurement.md, "How well the
ground truth repeats"); every sample then costs that much more time, which matters for layers most.
"""
from __future__ import annotations

from functools import lru_cache

# size → (name, width multiplier, input resolution)
REFERENCES = {"small": ("mobilenet_v2-w0.5-r128", 0.5, 128), "large": ("mobilenet_v2-w1-r224", 1.0, 224)}


class ReferenceTimed:
    """For devices that time the reference side by side (``self.settings.reference``): the settings that
    identify a measurement environment are the runtime's own plus the reference's name."""

    def runtime_settings(self) -> dict:
        raise NotImplementedError

    def backend_settings(self) -> dict:
        out = self.runtime_settings()
        if self.settings.reference:
            out["reference"] = REFERENCES[self.settings.reference_net][0]
        return out

    @property
    def uses_reference(self) -> bool:
        return self.settings.reference


@lru_cache(maxsize=None)
def reference_model(fmt: str, size: str = "small") -> bytes:
    """The reference network of ``size`` (a key of :data:`REFERENCES`) serialised in ``fmt`` (``"onnx"`` or
    ``"tflite"``)."""
    from ..export import export_network_for
    from ..models import Architecture, get_model, materialize

    _, multiplier, resolution = REFERENCES[size]
    spec = get_model("mobilenet_v2")
    widths = {g: max(8, int(w * multiplier) // 8 * 8) for g, w in spec.groups.items()}
    arch = Architecture(spec.name, resolution, widths)
    return export_network_for(fmt, materialize(arch, spec, seed=0), arch)


def reference_onnx() -> bytes:
    return reference_model("onnx")


def reference_tflite() -> bytes:
    return reference_model("tflite")
