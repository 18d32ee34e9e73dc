"""JCW — joint channel and weight pruning (Zhao et al.): an evolutionary search of channel widths and weight
sparsities for the accuracy × latency front, then ADMM retraining of the chosen architectures.

* :mod:`.search` — the multi-objective search (genome encoding, generations, resume, the front), on the
  generic NSGA-II operators of :mod:`latbench.search.nsga`;
* :mod:`.evaluator` — the accuracy estimate: a weight-sharing supernet on the shared core
  (:mod:`latbench.supernet`), trained on the population through the one SGD loop;
* :mod:`.job` — ``latbench prune jcw``: checkpoint + table → search → choices from the front → ADMM
  retraining (:mod:`latbench.train.admm`) → export → measurement → reports.

See docs/jcw.md and docs/jcw-training.md.
"""
from .evaluator import SubnetScore, SupernetConfig, SupernetEvaluator
from .job import JCWJob, run_jcw
from .search import (ArchitectureEncoding, Evaluator, JCWSearch, SearchConfig, SearchError, SearchResult,
                     SyntheticEvaluator, density_experiment)

__all__ = ["ArchitectureEncoding", "Evaluator", "JCWJob", "JCWSearch", "SearchConfig", "SearchError", "SearchResult",
           "SubnetScore", "SupernetConfig", "SupernetEvaluator", "SyntheticEvaluator", "density_experiment", "run_jcw"]
