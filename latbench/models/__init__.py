"""Prunable model zoo, architectures and materialisation of pruned networks."""
from .arch import Architecture, ArchitectureError, random_architectures
from .spec import CONV_KINDS, LayerDef, ModelSpec
from .torch_net import GraphNet, apply_sparsity, build, materialize
from .zoo import ZOO, get_model

__all__ = ["Architecture", "ArchitectureError", "random_architectures", "CONV_KINDS", "LayerDef", "ModelSpec",
           "GraphNet", "apply_sparsity", "build", "materialize", "ZOO", "get_model"]
