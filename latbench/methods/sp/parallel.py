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
import socket
import time
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

DEFAULT_TIMEOUT = 5.0


class RayUnavailableError(ValueError):
    """Ray was asked for but cannot be used: not installed, or the cluster address does not answer (bad
    input, like a bad option value: the CLI reports it as such)."""


def ray_module():
    """The ``ray`` module; :class:`RayUnavailableError` with the fix when it is not installed."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError("Ray was asked for (--ray / --ray-address) but is not installed: "
                                  "pip install 'latbench[ray]' (ray>=2.9), or run with --no-ray (the in-process "
                                  "search gives the same result)") from err
    return ray


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) to probe for a Ray address; None for ``auto`` (found by Ray itself)."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname:
        raise RayUnavailableError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    return parsed.hostname, parsed.port or (10001 if client else 6379)


def check_ray(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Fail fast, before any work: Ray must be importable and ``address`` (when given) must accept a TCP
    connection within ``timeout`` seconds."""
    ray_module()
    if not address:
        return
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as err:
        raise RayUnavailableError(f"the Ray cluster at {address} is unreachable ({endpoint[0]}:{endpoint[1]} did not "
                                  f"answer within {timeout:g} s: {err}); start its head with `ray start --head "
                                  "--node-ip-address=…`, check the address, or drop --ray-address for a local "
                                  "instance") from err


@contextlib.contextmanager
def ray_session(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Iterator[object]:
    """Ray connected for the duration of the block (see the module docstring); yields the ``ray`` module.
    An instance this process already had is reused and not shut down."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    check_ray(address, timeout)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(_node_ip_address="127.0.0.1", **kwargs)
    except Exception as err:     # Ray raises ConnectionError, RuntimeError, ValueError … depending on the cause
        where = f"address {address}" if address else "a local instance"
        raise RayUnavailableError(f"could not start or join Ray ({where}): {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


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
