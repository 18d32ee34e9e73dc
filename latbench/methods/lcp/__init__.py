"""LcP — layer-compensated pruning (Chin, Zhang & Marculescu), with its baselines (naïve global ranking,
uniform width), within a latency, FLOPs or parameter budget.

* :mod:`.search` — the global filter ranking, naïve pruning to a budget and the evolution of the layer
  compensations β;
* :mod:`.job` — ``latbench prune lcp``: checkpoint + budget → ranking → (evolution) → fine-tuning → export →
  measurement → report.

See README (section LcP) and docs/architecture.md.
"""
from .job import METHODS, LcPJob, PrunedLoss, run_lcp
from .search import (EvolutionConfig, EvolutionResult, FilterRanking, PrunePlan, learn_compensation, naive_prune,
                     reachable_minimum, uniform_prune)

__all__ = ["EvolutionConfig", "EvolutionResult", "FilterRanking", "LcPJob", "METHODS", "PrunePlan", "PrunedLoss",
           "learn_compensation", "naive_prune", "reachable_minimum", "run_lcp", "uniform_prune"]
