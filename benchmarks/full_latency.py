"""The full network's end-to-end latency on a device, in the table's unit, printed in ms (stored in the
measurement store, so a rerun reuses it). The acceptance scripts take their budgets as fractions of it.

    python benchmarks/full_latency.py TABLE DEVICE STORE [MODEL [RESOLUTION]]     # default resnet56 at 32
"""
import sys

from latbench.methods.common import measure_architectures
from latbench.models import Architecture, get_model
from latbench.tables.table import LatencyTable

table, device, store, *rest = sys.argv[1:]
spec = get_model(rest[0] if rest else "resnet56")
resolution = int(rest[1]) if len(rest) > 1 else 32
print(float(measure_architectures(spec, [Architecture.full(spec, resolution)], LatencyTable.load(table), device,
                                  store, progress=False)[0]))
