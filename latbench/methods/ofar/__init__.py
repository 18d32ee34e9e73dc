"""OFARPruning (Sun et al., "An Once-for-All Budgeted Pruning Framework for ConvNets Considering Resolution"):
one training gives a cohort of pruned networks over widths and input resolutions, one per device budget.

* :mod:`.rates` — step 1: pruning rates ρ (global BN-γ ranking) meeting each device's constraint at each
  resolution, from latency tables or FLOPs;
* :mod:`.search` — the search stage: Network-Slimming training, per-epoch masks, the Pruned Network Pool;
* :mod:`.joint` — joint training of the PNP: teacher → assistants → student distillation across
  resolutions, private or recalibrated BN;
* :mod:`.job` — ``latbench prune ofar``: selection per (device, budget), export, measurement, report.

See docs/ofar.md.
"""
from .joint import BNMode, JointConfig, PrivateBN, Structures, chain_for_step, joint_step, train_joint
from .rates import (BudgetSpec, CostModel, GlobalRanking, Rate, RatePlan, Target, bn_gamma_scores, check_resolutions,
                    find_rates, load_cost_models, structure_floors)
from .search import SIMILARITIES, PoolBuilder, PoolEntry, SearchConfig, mask_similarity, run_search

__all__ = ["BNMode", "BudgetSpec", "CostModel", "GlobalRanking", "JointConfig", "PoolBuilder", "PoolEntry",
           "PrivateBN", "Rate", "RatePlan", "SIMILARITIES", "SearchConfig", "Structures", "Target",
           "bn_gamma_scores", "chain_for_step", "check_resolutions", "find_rates", "joint_step",
           "load_cost_models", "mask_similarity", "run_search", "structure_floors", "train_joint"]
