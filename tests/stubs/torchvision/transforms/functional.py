"""Stub of ``torchvision.transforms.functional``: ``InterpolationMode`` (timm maps it to names at import time);
the image functions raise ``NotImplementedError`` (see ``torchvision/__init__.py``)."""
from enum import Enum


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def __getattr__(name: str):
    # Module-level attribute hook: `F.resize` etc. resolve (timm only looks them up when a transform runs),
    # and calling one says why it cannot work.
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise NotImplementedError(f"torchvision.transforms.functional.{name} is a test stub (torchvision is not "
                                  "installed); latbench's tests never transform images")
    unavailable.__name__ = name
    return unavailable
