"""Pruning methods, one subpackage per method (search + job in one place; see :mod:`latbench.methods.sp`)."""
