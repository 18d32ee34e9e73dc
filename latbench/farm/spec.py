"""A device farm's description: the Ray cluster, its nodes and the devices on each node's cables.

.. code-block:: toml

    ray_address = "auto"                 # optional; default: a local instance on 127.0.0.1
    [[nodes]]
    name = "bench-1"                     # the Ray node carries the custom resource "latbench-node:bench-1"
    devices = ["usb:R58M12AB", "tcp:192.168.1.20:5555", "host:litert"]
    [[nodes]]
    name = "bench-2"
    devices = ["usb:R58M34CD"]

It is loaded like a recipe (:func:`latbench.recipe.build_job`: pydantic against these dataclasses), so an
unknown key, a wrong type, an unknown device kind or a device listed twice is named with the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from ..recipe import Opt, RecipeError, build_job, read_recipe

#: The custom resource prefix that pins a device's actor to the node its cable is on.
NODE_RESOURCE = "latbench-node:"
_TCP = re.compile(r"^tcp:[^:\s]+:\d{1,5}$")


class FarmError(RecipeError):
    """A farm description that cannot work (bad device, duplicate, unknown key)."""


def check_device_spec(spec: str) -> str:
    """``spec`` if it names a device kind the farm drives: ``usb:SERIAL``, ``tcp:HOST:PORT`` or a host runtime."""
    from ..devices import HOST_DEVICES, base_device

    base = base_device(spec)
    if base in HOST_DEVICES or _TCP.match(base) or (base.startswith(("usb:", "sim:")) and len(base) > 4):
        return spec
    raise FarmError(f"unknown device {spec!r}: a farm device is usb:SERIAL, tcp:HOST:PORT, one of "
                    f"{', '.join(HOST_DEVICES)}, or sim:NAME (a simulated phone, for scaling benchmarks)")


@dataclass(frozen=True)
class FarmNode:
    """One machine of the farm and the devices on its cables."""

    name: Annotated[str, Opt(help="the node's name (its Ray resource is latbench-node:NAME)")]
    devices: Annotated[tuple[str, ...], Opt(help="usb:SERIAL, tcp:HOST:PORT or host runtimes")] = ()

    @property
    def resource(self) -> str:
        return NODE_RESOURCE + self.name


@dataclass(frozen=True)
class FarmDevice:
    """A device of the farm and the node it hangs on."""

    spec: str
    node: str


@dataclass(frozen=True, kw_only=True)
class Farm:
    """``ray_address``: the cluster (None: a local instance, every node on this machine); ``nodes``: the
    machines and their devices."""

    ray_address: Annotated[str | None, Opt(help="Ray cluster address (default: a local instance)")] = None
    nodes: tuple[FarmNode, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise FarmError("a farm needs at least one node with devices ([[nodes]] name = …, devices = […])")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise FarmError(f"node names must be unique, got {names}")
        phones: dict[str, str] = {}          # a phone hangs on one cable; a host runtime runs on every node's CPU
        hosts: set[tuple[str, str]] = set()
        for node in self.nodes:
            for spec in node.devices:
                check_device_spec(spec)
                if spec.startswith("host:"):
                    if (spec, node.name) in hosts:
                        raise FarmError(f"host runtime {spec} is listed twice on node {node.name}")
                    hosts.add((spec, node.name))
                elif spec in phones:
                    raise FarmError(f"device {spec} is listed twice (nodes {phones[spec]} and {node.name}): a phone "
                                    "hangs on one node's cable")
                else:
                    phones[spec] = node.name
        if not phones and not hosts:
            raise FarmError("the farm lists no devices")

    @property
    def devices(self) -> list[FarmDevice]:
        return [FarmDevice(spec, node.name) for node in self.nodes for spec in node.devices]


def load_farm(path: str | Path) -> Farm:
    """The farm described in the TOML file ``path``; a :class:`FarmError` (or ``RecipeError``) names what
    is wrong."""
    try:
        return build_job(Farm, read_recipe(path), str(path))
    except RecipeError as err:
        raise FarmError(str(err)) from None


__all__ = ["Farm", "FarmDevice", "FarmError", "FarmNode", "NODE_RESOURCE", "check_device_spec", "load_farm"]
