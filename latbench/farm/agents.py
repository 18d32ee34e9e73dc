"""One Ray actor per device, on the node its cable is on: it holds the device (the ADB connection of a phone,
the runtime of a host) and answers for it. All phone logic stays in :mod:`latbench.devices`; the agent only
keeps the device open, reconnects when asked after a failure, and says how it is.

Actors take ``num_cpus=0`` (on 2-core machines actors reserving a CPU never started beside the driver) and a
sliver of their node's custom resource ``latbench-node:NAME``, which pins them to that node.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Mapping

from .spec import NODE_RESOURCE, Farm, FarmDevice, FarmError

#: The share of a node resource one agent takes (a node offers 1000: room for any number of phones).
AGENT_SHARE = 0.001
NODE_CAPACITY = 1000.0


class DeviceAgent:
    """The device ``spec`` on node ``node``, opened here; a failure to open is kept as ``last_error``."""

    def __init__(self, spec: str, node: str) -> None:
        self.spec, self.node = spec, node
        self.device = None
        self.fingerprint: str | None = None
        self.last_error: str | None = None
        self.busy = False
        self.connect()

    def connect(self) -> bool:
        """(Re)open the device; False (and ``last_error``) when it is not there."""
        from ..devices import open_device

        if self.device is not None:
            return True
        try:
            self.device = open_device(self.spec)
            self.fingerprint = self.device.fingerprint()
            self.last_error = None
            return True
        except Exception as err:        # any failure is the device's state, reported, never the farm's crash
            self.device, self.last_error = None, f"{type(err).__name__}: {err}"
            return False

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
                "busy": self.busy, "last_error": self.last_error, "telemetry": environment,
                "checked_at": time.time()}

    def close(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None


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


def start_agents(ray, farm: Farm) -> dict[str, Any]:
    """One :class:`DeviceAgent` actor per device of ``farm``, each pinned to its node; keyed ``node/spec``."""
    check_nodes(ray, farm)
    agents = {}
    for device in farm.devices:
        resource = NODE_RESOURCE + device.node
        remote = ray.remote(num_cpus=0, resources={resource: AGENT_SHARE}, max_restarts=-1)(DeviceAgent)
        agents[key_of(device)] = remote.remote(device.spec, device.node)
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


__all__ = ["DeviceAgent", "check_nodes", "farm_status", "key_of", "local_resources", "start_agents"]
