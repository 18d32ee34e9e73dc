"""Test-only stub of torchvision: just the modules and names timm 1.0.31 imports at ``import timm``.

torchvision has no build for the torch the project pins (2.13.0), and timm only needs it for its data
pipeline (``timm.data.transforms``) and for ``FrozenBatchNorm2d``. ``tests/realworld_models.py`` puts
``tests/stubs`` on ``sys.path`` only when a real torchvision cannot be imported. Nothing here transforms
images: the image functions raise ``NotImplementedError``; latbench only builds models (random weights)
and exports them to ONNX.
"""
__version__ = "0.0.0+latbench-test-stub"
IS_LATBENCH_STUB = True
