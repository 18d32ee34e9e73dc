"""Ray, for every part of latbench that runs on many processes or machines (SP's distributed search, the
device farm): joined or started the same way everywhere.

* A local instance binds to loopback (``ray.init(_node_ip_address="127.0.0.1")``) when no address is given and
  none is running in this process (a running one, e.g. a test session's, is reused and left running).
* A cluster is joined at ``address`` (``HOST:PORT`` of the head's GCS, ``ray://HOST:PORT`` for Ray Client, or
  ``auto``); the address is probed with a short TCP timeout first, so an unreachable one fails at once instead
  of after Ray's own minute-long retries.
* Actors are started with ``num_cpus=0`` by their users: on 2-core machines actors that reserve a CPU do not
  start while the driver holds the others.

Ray is optional (``pip install 'latbench[ray]'``); :class:`RayUnavailableError` says how to get it.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Iterator, Mapping
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
def _loopback_bootstrap(ray, loopback: bool) -> Iterator[dict]:
    """Joining a cluster whose head is on 127.0.0.1: Ray rewrites a loopback address to the machine's outward IP
    before connecting (``resolve_ip_for_localhost``), where a head bound to loopback does not answer; for the
    duration of ``ray.init`` Ray is told to keep loopback (its own switch for single-machine clusters)."""
    if not loopback:
        yield {}
        return
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None and before is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield {"_node_ip_address": "127.0.0.1"}
    finally:
        if constants is not None and before is not None:
            constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def ray_session(address: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                resources: Mapping[str, float] | None = None) -> Iterator[object]:
    """Ray connected for the duration of the block (see the module docstring); yields the ``ray`` module.
    An instance this process already had is reused and not shut down. ``resources``: custom resources of a
    local instance (e.g. the farm's node labels)."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    check_ray(address, timeout)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            endpoint = _endpoint(address)
            with _loopback_bootstrap(ray, bool(endpoint and endpoint[0] in ("127.0.0.1", "localhost"))) as extra:
                ray.init(address=address, **kwargs, **extra)
        else:
            ray.init(_node_ip_address="127.0.0.1", resources=dict(resources or {}), **kwargs)
    except Exception as err:     # Ray raises ConnectionError, RuntimeError, ValueError … depending on the cause
        where = f"address {address}" if address else "a local instance"
        raise RayUnavailableError(f"could not start or join Ray ({where}): {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


__all__ = ["DEFAULT_TIMEOUT", "RayUnavailableError", "check_ray", "ray_module", "ray_session"]
