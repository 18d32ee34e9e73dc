"""One Ray actor per device, on the node its cable is on: it holds the device (the ADB connection of a phone,
the runtime of a host) and answers for it. All phone logic stays in :mod:`latbench.devices`; the agent only
keeps the device open, reconnects when asked after a failure, and says how it is.

Actors take ``num_cpus=0`` (on 2-core machines actors reserving a CPU never started beside the driver) and a
sliver of their node's custom resource ``latbench-node:NAME``, which pins them to that node.
"""
from __future__ import annotations

import socket
import time
import uuid
from typing import Any, Mapping

from .spec import NODE_RESOURCE, Farm, FarmDevice, FarmError

#: Agents are named actors ``latbench-agent/NODE/SPEC/RUN`` (``ray list actors`` shows which device is which).
AGENT_PREFIX = "latbench-agent/"
#: The share of a node resource one agent takes (a node offers 1000: room for any number of phones).
AGENT_SHARE = 0.001
NODE_CAPACITY = 1000.0


class DeviceAgent:
    """The device ``spec`` on node ``node``, opened here; a failure to open is kept as ``last_error``."""

    def __init__(self, spec: str, node: str, threads: int = 1, settings: Any = None) -> None:
        self.spec, self.node = spec, node
        self.threads, self.settings = threads, settings
        self.device = None
        self.fingerprint: str | None = None
        self.last_error: str | None = None
        self.busy = False
        self.measured = 0
        self.connect()

    def connect(self) -> bool:
        """(Re)open the device; False (and ``last_error``) when it is not there."""
        from ..devices import open_device

        if self.device is not None:
            return True
        try:
            self.device = open_device(self.spec, threads=self.threads, settings=self.settings)
            self.device.prepare()
            self.fingerprint = self.device.fingerprint()
            self.last_error = None
            return True
        except Exception as err:        # any failure is the device's state, reported, never the farm's crash
            self.device, self.last_error = None, f"{type(err).__name__}: {err}"
            return False

    def identity(self) -> dict[str, Any]:
        """What the driver needs to keep this device's measurements in the store: fingerprint, the backend
        settings and environment record, the model format, whether it times the reference network."""
        self._open()
        d = self.device
        return {"fingerprint": self.fingerprint, "name": d.name, "model_format": d.model_format,
                "channel_multiple": int(getattr(d, "channel_multiple", 1) or 1),
                "settings": d.backend_settings(), "environment": {**d.environment(), "device": d.name},
                "uses_reference": bool(getattr(d, "uses_reference", False))}

    def measure_reference_nominal(self) -> float:
        return float(self._run(lambda d: d.measure_reference_nominal()))

    def measure_points(self, items: list, reference_ms: float | None = None) -> list:
        """One batch of layer grid points (signature key, point), as ``Profiler`` measures them."""
        from ..profiling import measure_layer_points

        return self._run(lambda d: measure_layer_points(d, items), reference_ms, len(items))

    def measure_artifacts(self, artifacts: list, reference_ms: float | None = None) -> list:
        """Whole exported networks (validation, a pruning job's final check), in the device's protocol."""
        return self._run(lambda d: d.measure(artifacts), reference_ms, len(artifacts))

    def _open(self) -> None:
        if not self.connect():
            raise FarmDeviceError(f"{self.spec} on {self.node}: {self.last_error}")

    def _run(self, work, reference_ms: float | None = None, count: int = 0):
        """``work(device)`` with the device open and in the group's reference unit; a failure closes the
        device (the next call reconnects) and is kept as ``last_error`` before it reaches the driver."""
        self._open()
        if reference_ms is not None:
            self.device.reference_ms = float(reference_ms)
        self.busy = True
        try:
            out = work(self.device)
            self.measured += count
            return out
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            self.close()
            raise
        finally:
            self.busy = False

    def status(self) -> dict[str, Any]:
        """Where the agent runs, the device's fingerprint, whether it is busy, its last error and what the
        device reports about itself (its environment: runtime, settings, phone facts)."""
        self.connect()
        environment: dict = {}
        if self.device is not None:
            try:
                environment = dict(self.device.environment())
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
        return {"spec": self.spec, "node": self.node, "host": socket.gethostname(), "pinned": _pinned_to(),
                "fingerprint": self.fingerprint,
                "busy": self.busy, "measured": self.measured, "last_error": self.last_error, "telemetry": environment,
                "checked_at": time.time()}

    def close(self) -> None:
        if self.device is not None:
            try:
                self.device.close()
            except Exception:           # a dead link cannot be closed cleanly; it is dropped either way
                pass
            self.device = None


class FarmDeviceError(RuntimeError):
    """A farm device that cannot be opened (its last error); the driver re-queues its work."""


def _pinned_to() -> list[str]:
    """The farm nodes whose resource this actor holds (what pins it), as Ray assigned them."""
    try:
        import ray

        held = ray.get_runtime_context().get_assigned_resources()
    except Exception:                   # not inside a Ray actor (a direct call)
        return []
    return sorted(k.removeprefix(NODE_RESOURCE) for k in held if k.startswith(NODE_RESOURCE))


def local_resources(farm: Farm) -> Mapping[str, float]:
    """The node resources a local instance offers (every node of the farm on this machine)."""
    return {node.resource: NODE_CAPACITY for node in farm.nodes}


def check_nodes(ray, farm: Farm) -> None:
    """Refuse a cluster that lacks a node of the farm (its resource ``latbench-node:NAME``)."""
    available = ray.cluster_resources()
    missing = [n for n in farm.nodes if available.get(n.resource, 0) <= 0]
    if missing:
        first = missing[0]
        raise FarmError(f"no Ray node offers {first.resource} (node {first.name!r} of the farm): start it with "
                        f"`ray start --address=HEAD:6379 --resources='{{\"{first.resource}\": {NODE_CAPACITY:g}}}'`"
                        + (f" (also missing: {', '.join(n.name for n in missing[1:])})" if len(missing) > 1 else ""))


def start_agents(ray, farm: Farm, threads: int = 1, settings: Any = None) -> dict[str, Any]:
    """One :class:`DeviceAgent` actor per device of ``farm``, each pinned to its node; keyed ``node/spec``.
    A killed agent is restarted by Ray (its constructor reconnects); its calls are not retried by Ray — the
    driver re-queues the work (:mod:`.work`)."""
    check_nodes(ray, farm)
    agents, run = {}, uuid.uuid4().hex[:8]
    for device in farm.devices:
        resource = NODE_RESOURCE + device.node
        remote = ray.remote(num_cpus=0, resources={resource: AGENT_SHARE}, max_restarts=-1,
                            max_task_retries=0)(DeviceAgent).options(name=f"{AGENT_PREFIX}{key_of(device)}/{run}")
        agents[key_of(device)] = remote.remote(device.spec, device.node, threads, settings)
    return agents


def key_of(device: FarmDevice) -> str:
    return f"{device.node}/{device.spec}"


def farm_status(farm: Farm, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every device's status (see :meth:`DeviceAgent.status`), asked of its agent on its node; an agent that
    does not answer within ``timeout`` seconds is reported gone."""
    from ..distributed import ray_session

    with ray_session(farm.ray_address, resources=None if farm.ray_address else local_resources(farm)) as ray:
        agents = start_agents(ray, farm)
        pending = {agent.status.remote(): key for key, agent in agents.items()}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
        answers = {pending[ref]: ray.get(ref) for ref in ready}
        rows = []
        for device in farm.devices:
            key = key_of(device)
            rows.append(answers.get(key) or {"spec": device.spec, "node": device.node, "host": None,
                                             "fingerprint": None, "busy": None, "telemetry": {},
                                             "last_error": f"no answer within {timeout:g} s (node gone?)"})
        for agent in agents.values():
            ray.kill(agent)
        return rows


__all__ = ["DeviceAgent", "FarmDeviceError", "check_nodes", "farm_status", "key_of", "local_resources", "start_agents"]
