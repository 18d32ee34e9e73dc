"""Grid design, latency tables (n-linear interpolation) and the import of published tables."""
from .grid import GridSlice, design_grid, refinement_checks
from .table import LatencyTable, OutOfGridError, TableError, TableSlice, table_from_store

__all__ = ["GridSlice", "design_grid", "refinement_checks", "LatencyTable", "OutOfGridError", "TableError",
           "TableSlice", "table_from_store"]
