"""How the device farm scales (issue 14): throughput with 1, 2, 4, 8 and 16 phones, the overhead per measurement
and the scaling efficiency, plus a fault run (agents killed mid-run: nothing lost, nothing twice).

The phones are simulated (``sim:``, :mod:`latbench.testing.simphone`): each timed run takes a fixed wall time
and no CPU, so that this 2-core machine can stand in for a lab. Everything else is the real farm: one Ray actor
per phone pinned to its node (two nodes of a local instance on 127.0.0.1), the driver's queue of batches
(:func:`latbench.farm.work.run_batches`), and the driver storing every result in the SQLite store as it arrives.
Each phone gets the same amount of work (``per_phone`` artifacts), so perfect scaling keeps the wall time flat.

    python benchmarks/farm_scaling.py            # ≈3 min; writes benchmarks/results/farm/summary.json
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from annotated_types import Ge, Gt

from latbench.cli.options import script_main
from latbench.files import atomic_write_json, atomic_write_text
from latbench.recipe import Opt, resolved

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class FarmScaling:
    phones: Annotated[tuple[int, ...], Opt(help="farm sizes to time")] = (1, 2, 4, 8, 16)
    run_ms: Annotated[float, Gt(0), Opt(help="wall time of one simulated run")] = 2.0
    per_phone: Annotated[int, Ge(1), Opt(help="artifacts measured per phone")] = 24
    batch: Annotated[int, Ge(1), Opt(help="artifacts per batch")] = 4
    warmup: Annotated[int, Ge(0)] = 5
    rounds: Annotated[int, Ge(1)] = 5
    runs: Annotated[int, Ge(1)] = 10
    fault_phones: Annotated[int, Ge(3)] = 4
    out: str = "benchmarks/results/farm/summary.json"


EXPERIMENT = FarmScaling


def _farm_file(folder: Path, n: int, run_ms: float) -> Path:
    """n simulated phones of one model over two nodes."""
    nodes = {"a": [], "b": []}
    for i in range(n):
        nodes["ab"[i % 2]].append(f"sim:p{i}?run_ms={run_ms}&model=X")
    text = "".join(f'[[nodes]]\nname = "{name}"\ndevices = {json.dumps(devs)}\n' for name, devs in nodes.items()
                   if devs)
    path = folder / f"farm-{n}.toml"
    atomic_write_text(path, text)
    return path


def _run(exp: FarmScaling, folder: Path, n: int, kill: int = 0) -> dict:
    """Measure ``n × per_phone`` artifacts on an n-phone farm, storing every result on the driver; with
    ``kill``, that many agents are killed mid-run (Ray restarts them)."""
    from latbench.devices import MeasureSettings, open_device
    from latbench.devices.base import Artifact
    from latbench.farm.work import Batch, split
    from latbench.layers import LayerPoint
    from latbench.profiling import environment_of
    from latbench.store import MeasurementStore

    settings = MeasureSettings(warmup=exp.warmup, rounds=exp.rounds, runs_per_round=exp.runs, reference=False)
    dev = open_device(f"farm:{_farm_file(folder, n, exp.run_ms)}?batch={exp.batch}", settings=settings)
    try:
        dev.prepare()
        total = n * exp.per_phone
        artifacts = [Artifact(f"a{i}", b"sim", format="tflite") for i in range(total)]
        batches = [Batch(dev.group.fingerprint, chunk) for chunk in split(artifacts, exp.batch)]
        delivered: list[str] = []
        with MeasurementStore(folder / f"store-{n}-{kill}.db") as store:
            env_id = environment_of(dev, store)

            def keep(_index, _batch, result):
                for m in result:
                    delivered.append(m.key)
                    store.put(env_id, "net:sim", LayerPoint(1, 1, 0.0, int(m.key[1:])), m)

            killers = []
            for agent in list(dev.group.working)[:kill]:
                killers.append(threading.Timer(0.5 + 0.3 * len(killers),
                                               lambda a=agent: dev.ray.kill(dev.agents[a], no_restart=False)))
            for k in killers:
                k.start()
            t0 = time.perf_counter()
            dev.run_on_units(batches, "measure_artifacts", keep)
            seconds = time.perf_counter() - t0
            for k in killers:
                k.join()
            stored = len(store.rows(env_id))
        faults = dev.work_summary()["faults"]
    finally:
        dev.close()
    per_artifact_s = (exp.warmup + exp.rounds * exp.runs) * exp.run_ms / 1000.0
    return {"phones": n, "measurements": total, "seconds": seconds, "measurements_per_s": total / seconds,
            "ideal_per_s": n / per_artifact_s, "stored": stored, "delivered": len(delivered),
            "duplicated": len(delivered) - len(set(delivered)), "lost": total - len(set(delivered)),
            "killed": sum(f["kind"] == "agent died" for f in faults), "faults": faults}


def main(exp: FarmScaling) -> None:
    import tempfile

    from latbench.distributed import ray_session

    with tempfile.TemporaryDirectory() as tmp, \
            ray_session(resources={"latbench-node:a": 1000.0, "latbench-node:b": 1000.0}):
        folder = Path(tmp)
        rows = [_run(exp, folder, n) for n in exp.phones]
        fault = _run(exp, folder, exp.fault_phones, kill=2)
    base = rows[0]["measurements_per_s"] / rows[0]["phones"]
    per_artifact_ms = (exp.warmup + exp.rounds * exp.runs) * exp.run_ms
    summary = {
        "phones": [r["phones"] for r in rows],
        "measurements_per_s": [round(r["measurements_per_s"], 3) for r in rows],
        "efficiency": [round(r["measurements_per_s"] / (r["phones"] * base), 4) for r in rows],
        "efficiency_vs_ideal": [round(r["measurements_per_s"] / r["ideal_per_s"], 4) for r in rows],
        "overhead_ms_per_measurement": round(1000.0 * rows[0]["seconds"] / rows[0]["measurements"] - per_artifact_ms, 3),
        "faults_test": {"phones": exp.fault_phones, "killed": fault["killed"], "lost": fault["lost"],
                        "duplicated": fault["duplicated"], "stored": fault["stored"],
                        "measurements": fault["measurements"]},
        "settings": resolved(exp), "runs": rows,
    }
    atomic_write_json(ROOT / exp.out, summary, indent=1)
    print(json.dumps({k: summary[k] for k in ("phones", "measurements_per_s", "efficiency", "efficiency_vs_ideal",
                                              "overhead_ms_per_measurement", "faults_test")}, indent=1))


if __name__ == "__main__":
    script_main(FarmScaling, main, doc=__doc__)
