"""The supernet core shared by the weight-sharing methods (SP, JCW, OFA-style pruning).

* :mod:`~latbench.supernet.stages` — stages of a model by resolution, each owning its channel groups;
* :mod:`~latbench.supernet.ops` — dynamic-width conv, BatchNorm and linear layers (first-k slicing);
* :mod:`~latbench.supernet.net` — :class:`DynamicNet`: all sub-networks in one module, stage outputs,
  one stage at a time, extraction to a plain :class:`~latbench.models.GraphNet`;
* :mod:`~latbench.supernet.onnx_net` — :class:`OnnxSupernet`: the same for an imported ONNX graph (weights
  gathered from the full tensors per width pattern), extraction to a plain ``OnnxNet``; :func:`supernet_from`
  picks the one a parent needs;
* :mod:`~latbench.supernet.sampling` — search spaces, sandwich / population / resolution samplers;
* :mod:`~latbench.supernet.losses` — cross-entropy, in-place and chained distillation, stage features;
* :mod:`~latbench.supernet.calibration` — per-sub-network BatchNorm statistics.

See docs/supernet.md.
"""
from .calibration import recalibrate
from .losses import StageAdaptors, chain_distillation, cross_entropy, logit_distillation, stage_feature_loss
from .net import DynamicConvBlock, DynamicNet, SubnetBN
from .onnx_net import OnnxSubnetBN, OnnxSupernet, supernet_from
from .ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, magnitude_keep
from .sampling import (METAPRUNING_RATIOS, PopulationSampler, ResolutionSampler, SandwichSampler, SearchSpace, resize,
                       round_width, weight_count, width_choices)
from .stages import Stage, StageError, head_groups, head_of, stage_of_group, stages_of

__all__ = ["DynamicBatchNorm2d", "DynamicConv2d", "DynamicConvBlock", "DynamicLinear", "DynamicNet",
           "METAPRUNING_RATIOS", "OnnxSubnetBN", "OnnxSupernet", "PopulationSampler", "ResolutionSampler", "SandwichSampler", "SearchSpace", "Stage",
           "StageAdaptors", "StageError", "SubnetBN", "chain_distillation", "cross_entropy", "head_groups", "head_of",
           "logit_distillation", "magnitude_keep", "recalibrate", "resize", "round_width", "stage_feature_loss",
           "stage_of_group", "stages_of", "supernet_from", "weight_count", "width_choices"]
