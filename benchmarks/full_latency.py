"""The full network's end-to-end latency on a device, in the table's unit, printed in ms (stored in the
measurement store, so a rerun reuses it). The acceptance scripts take their budgets as fractions of it.

    python benchmarks/full_latency.py TABLE DEVICE STORE [MODEL [RESOLUTION]] [--checkpoint CKPT]

Default resnet56 at 32. With ``--checkpoint`` the network has that checkpoint's input channels (a grey model's
1-channel stem), as the pruning jobs measure and ship it.
"""
import argparse
import dataclasses

from latbench.methods.common import measure_architectures
from latbench.models import Architecture, get_model
from latbench.tables.table import LatencyTable
from latbench.train import read_checkpoint_meta

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("table")
ap.add_argument("device")
ap.add_argument("store")
ap.add_argument("model", nargs="?", default="resnet56")
ap.add_argument("resolution", nargs="?", type=int, default=32)
ap.add_argument("--checkpoint")
args = ap.parse_args()
spec = get_model(args.model)
if args.checkpoint:
    spec = dataclasses.replace(spec, in_channels=int(read_checkpoint_meta(args.checkpoint)["in_channels"]))
print(float(measure_architectures(spec, [Architecture.full(spec, args.resolution)], LatencyTable.load(args.table),
                                  args.device, args.store, progress=False)[0]))
