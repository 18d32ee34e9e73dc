"""Devices: where latency is measured. ``open_device("host:onnxruntime")`` is the embedded default."""
from __future__ import annotations

from .base import Artifact, Device, DeviceError, DeviceInfo, MeasureSettings, Measurement

DEFAULT_DEVICE = "host:onnxruntime"


def open_device(spec: str = DEFAULT_DEVICE, threads: int = 1, settings: MeasureSettings | None = None,
                **options) -> Device:
    """Open a device by name: ``host:onnxruntime`` (options: ``graph_level``).

    Phones (``tcp:HOST:PORT``, ``usb[:SERIAL]``) and ``host:litert`` are separate backends still to come;
    naming them gives a clear error rather than a silent fallback.
    """
    kind, _, rest = spec.partition(":")
    if spec == "host:onnxruntime" or spec == "host":
        from .onnxruntime import OnnxRuntimeDevice

        return OnnxRuntimeDevice(threads=threads, settings=settings, **options)
    if kind in ("tcp", "usb") or spec == "host:litert":
        raise DeviceError(f"device {spec!r} is not supported by this version of latbench yet; "
                          f"use {DEFAULT_DEVICE!r} (see `latbench devices`)")
    raise DeviceError(f"unknown device {spec!r}; expected host:onnxruntime, host:litert, tcp:HOST:PORT or usb[:SERIAL]")


def list_devices() -> list[DeviceInfo]:
    out = []
    try:
        dev = open_device(DEFAULT_DEVICE)
        out.append(DeviceInfo(DEFAULT_DEVICE, True, dev.fingerprint(), dev.environment()))
        dev.close()
    except Exception as err:  # report any reason the runtime is unusable, never crash the listing
        out.append(DeviceInfo(DEFAULT_DEVICE, False, "", {"error": str(err)}))
    return out


__all__ = ["Artifact", "Device", "DeviceError", "DeviceInfo", "MeasureSettings", "Measurement", "open_device",
           "list_devices", "DEFAULT_DEVICE"]
