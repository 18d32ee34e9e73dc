"""SP — stage-wise channel pruning (Zhang & Ou), on the shared supernet core (:mod:`latbench.supernet`).

* :mod:`.training` — Algorithm 1: stage-wise supernet training with the sandwich rule;
* :mod:`.costs` — whole-network budgets (latency tables, FLOPs, parameters) split into exact stage budgets;
* :mod:`.search` — Algorithms 2–3: the EA manager over stage budget splits and boundary widths, stage EAs;
* :mod:`.parallel` — stage EAs on Ray actors or in this process (same result);
* :mod:`.job` — ``latbench prune sp``: checkpoint + budget → training → search → retraining → export →
  measurement → report.

See docs/sp.md.
"""
from .costs import StageCosts, grid_layers
from .parallel import RayUnavailableError, check_ray
from .search import SPSearchConfig, SearchResult, recalibrate_stage, search
from .training import StageTrainConfig, load_supernet, save_supernet, stage_losses, train_stagewise

__all__ = ["RayUnavailableError", "SPSearchConfig", "SearchResult", "StageCosts", "StageTrainConfig", "check_ray",
           "grid_layers", "load_supernet", "recalibrate_stage", "save_supernet", "search", "stage_losses",
           "train_stagewise"]
