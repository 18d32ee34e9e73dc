"""Stub of ``torchvision.ops``: only ``ops.misc.FrozenBatchNorm2d`` (see ``torchvision/__init__.py``)."""
