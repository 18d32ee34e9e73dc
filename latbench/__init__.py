"""latbench: measured layer latency tables, network latency prediction and validation.

The main objects, imported lazily so that ``import latbench`` stays cheap::

    from latbench import get_model, Architecture, materialize, open_device, MeasurementStore
    from latbench import LatencyTable, Predictor, api
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Architecture": "latbench.models", "get_model": "latbench.models", "materialize": "latbench.models",
    "random_architectures": "latbench.models", "LayerSignature": "latbench.layers", "LayerPoint": "latbench.layers",
    "open_device": "latbench.devices", "MeasurementStore": "latbench.store", "LatencyTable": "latbench.tables",
    "Predictor": "latbench.predictor", "Population": "latbench.predictor", "api": "latbench.api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latbench' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if name == "api" else getattr(module, name)
