"""Training stack shared by the pruning methods: the SGD loop, evaluation, fine-tuning and safetensors
checkpoints. Importance metrics and BN recalibration live in :mod:`latbench.train.importance`."""
from .checkpoint import (CheckpointError, load_checkpoint, load_optimizer_state, load_weights, read_checkpoint_meta,
                         save_checkpoint)
from .loop import SCHEDULES, EpochRecord, TrainConfig, TrainHistory, evaluate, finetune, train

__all__ = ["CheckpointError", "load_checkpoint", "load_optimizer_state", "load_weights", "read_checkpoint_meta",
           "save_checkpoint", "SCHEDULES", "EpochRecord", "TrainConfig", "TrainHistory", "evaluate", "finetune",
           "train"]
