"""Running SP's stage searches in parallel: on Ray actors, or in this process with the same result.

**Ray is optional** (``pip install 'latbench[ray]'``). A search asked to use it

* starts a local instance bound to loopback (``ray.init(_node_ip_address="127.0.0.1")``) when no address is
  given and none is running in this process (a running one, e.g. a test session's, is reused and left
  running);
* connects to a cluster at ``address`` (``HOST:PORT`` of the head's GCS, ``ray://HOST:PORT`` for Ray
  Client, or ``auto``); the address is probed with a short TCP timeout first, so an unreachable one fails
  at once instead of after Ray's own minute-long retries;
* runs one actor per stage with ``num_cpus=0``: on small machines (2 cores) actors that reserve a CPU do
  not start when the driver holds the others, and the work here is one torch forward at a time anyway.

Workers on a cluster import ``latbench`` from their own Python: install it on every node.

:class:`InProcessPool` runs the same workers in this process in task order. Each stage task carries its own
seed and a worker's result depends only on the task and the worker's data, so both paths give the same
search (a test checks it).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

from ...distributed import DEFAULT_TIMEOUT, RayUnavailableError, check_ray, ray_module, ray_session  # noqa: F401


class InProcessPool:
    """Runs stage tasks on one worker per stage, in this process, in task order."""

    name = "in-process"

    def __init__(self, make_worker: Callable[[int], object], stages: int) -> None:
        self._make, self._workers = make_worker, {}
        self.stages = stages

    def worker(self, stage: int):
        if stage not in self._workers:
            self._workers[stage] = self._make(stage)
        return self._workers[stage]

    def run(self, tasks: Sequence, on_result: Callable[[int, object], None]) -> None:
        for index, task in enumerate(tasks):
            on_result(index, self.worker(task.stage).run(task))

    def close(self) -> None:
        self._workers.clear()


class RayPool:
    """Runs stage tasks on Ray actors (``num_cpus=0``): ``actors_per_stage`` per stage, tasks of a stage
    dealt round-robin; results are handed over as they finish."""

    name = "ray"

    def __init__(self, ray, worker_cls: type, stage_args: Sequence[tuple], actors_per_stage: int = 1) -> None:
        self.ray = ray
        remote = ray.remote(num_cpus=0)(worker_cls)
        self.actors = [[remote.remote(*args) for _ in range(actors_per_stage)] for args in stage_args]
        self._next = [0] * len(self.actors)
        self.stages = len(self.actors)

    def run(self, tasks: Sequence, on_result: Callable[[int, object], None]) -> None:
        pending = {}
        for index, task in enumerate(tasks):
            replicas = self.actors[task.stage]
            actor = replicas[self._next[task.stage] % len(replicas)]
            self._next[task.stage] += 1
            pending[actor.run.remote(task)] = index
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_result(pending.pop(ref), self.ray.get(ref))

    def close(self) -> None:
        for replicas in self.actors:
            for actor in replicas:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
        self.actors = []


def wait_for_actors(pool: RayPool, timeout: float = 120.0) -> None:
    """Block until every actor answers (their start-up is otherwise counted in the first generation)."""
    deadline = time.monotonic() + timeout
    refs = [actor.ping.remote() for replicas in pool.actors for actor in replicas]
    ready, missing = pool.ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
    if missing:
        raise RayUnavailableError(f"{len(missing)} of {len(refs)} Ray actors did not start within {timeout:g} s; is "
                                  "the cluster out of memory, or are actors waiting for CPUs?")


__all__ = ["InProcessPool", "RayPool", "RayUnavailableError", "check_ray", "ray_module", "ray_session",
           "wait_for_actors"]
