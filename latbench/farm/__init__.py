"""A device farm on Ray: many phones (and hosts) on several machines, driven as one.

* :mod:`.spec` — the farm description (TOML): the Ray address, the nodes and the devices on their cables;
* :mod:`.agents` — one Ray actor per device, pinned to its node, holding the device; ``farm status``.
"""
from .agents import DeviceAgent, farm_status, start_agents
from .spec import Farm, FarmDevice, FarmError, FarmNode, load_farm

__all__ = ["DeviceAgent", "Farm", "FarmDevice", "FarmError", "FarmNode", "farm_status", "load_farm", "start_agents"]
