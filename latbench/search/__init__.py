"""Architecture search over latency tables (e.g. ``latbench.search.jcw``: JCW's multi-objective
evolutionary search, built on the numpy NSGA-II operators of ``latbench.search.nsga``).

Submodules are imported on use so that importing the package stays cheap and independent searches
can live side by side.
"""
