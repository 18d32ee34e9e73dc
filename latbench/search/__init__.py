"""Search building blocks shared by the pruning methods: resource budgets as per-layer cost grids
(:mod:`latbench.search.budget`) and the generic NSGA-II operators (:mod:`latbench.search.nsga`). The methods'
own searches live with each method, in :mod:`latbench.methods`.

Submodules are imported on use so that importing the package stays cheap.
"""
