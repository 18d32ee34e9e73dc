"""The measurement store: every measurement ever taken, one SQLite transaction each."""
from .sqlite import MeasurementStore, StoreError, StoredMeasurement

__all__ = ["MeasurementStore", "StoreError", "StoredMeasurement"]
