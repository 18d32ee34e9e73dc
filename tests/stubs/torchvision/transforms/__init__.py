"""Stub of ``torchvision.transforms``: the class names timm's data code subclasses or references when its
modules are imported. None of them transforms images (see ``torchvision/__init__.py``)."""
from . import functional
from .functional import InterpolationMode


class _Unavailable:
    """Base of every stub transform: constructing one is fine, applying one is not."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision.transforms.{type(self).__name__} is a test stub (torchvision is "
                                  "not installed); latbench's tests never transform images")


class ToTensor(_Unavailable):
    pass


class PILToTensor(_Unavailable):
    pass


class Compose(_Unavailable):
    pass
