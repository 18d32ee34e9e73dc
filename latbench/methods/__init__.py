"""Pruning methods, one subpackage per method with its search and its job in one place:
:mod:`.lcp`, :mod:`.jcw`, :mod:`.sp`, :mod:`.ofar`. The plumbing every job shares (checkpoint, budgets,
fine-tuning, export, device measurement, report fields) is :mod:`.common`. See docs/architecture.md.

Submodules are imported on use.
"""
