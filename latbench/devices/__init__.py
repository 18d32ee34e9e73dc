"""Devices: where latency is measured. ``open_device("host:onnxruntime")`` is the embedded default."""
from __future__ import annotations

from .base import Artifact, Device, DeviceError, DeviceInfo, MeasureSettings, Measurement

DEFAULT_DEVICE = "host:onnxruntime"
HOST_DEVICES = ("host:onnxruntime", "host:litert", "host:litert:builtin")


def open_device(spec: str = DEFAULT_DEVICE, threads: int = 1, settings: MeasureSettings | None = None,
                **options) -> Device:
    """Open a device by name: ``host:onnxruntime`` (options: ``graph_level``) or ``host:litert``
    (options: ``kernels="xnnpack"`` (default) or ``"builtin"``; ``host:litert:builtin`` spells the latter).

    Phones (``tcp:HOST:PORT``, ``usb[:SERIAL]``) are a separate backend still to come; naming them gives
    a clear error rather than a silent fallback.
    """
    kind, _, rest = spec.partition(":")
    if spec == "host:onnxruntime" or spec == "host":
        from .onnxruntime import OnnxRuntimeDevice

        return OnnxRuntimeDevice(threads=threads, settings=settings, **options)
    if spec == "host:litert" or spec.startswith("host:litert:"):
        from .litert import LiteRTDevice

        kernels = spec[len("host:litert:"):] or None
        if kernels and options.get("kernels", kernels) != kernels:
            raise DeviceError(f"device {spec!r} contradicts kernels={options['kernels']!r}")
        options.setdefault("kernels", kernels or "xnnpack")
        return LiteRTDevice(threads=threads, settings=settings, **options)
    if kind in ("tcp", "usb"):
        raise DeviceError(f"device {spec!r} is not supported by this version of latbench yet; "
                          f"use one of {', '.join(HOST_DEVICES)} (see `latbench devices`)")
    raise DeviceError(f"unknown device {spec!r}; expected host:onnxruntime, host:litert[:builtin], tcp:HOST:PORT "
                      f"or usb[:SERIAL]")


def list_devices() -> list[DeviceInfo]:
    out = []
    for name in HOST_DEVICES:
        try:
            dev = open_device(name)
            out.append(DeviceInfo(name, True, dev.fingerprint(), dev.environment()))
            dev.close()
        except Exception as err:  # report any reason the runtime is unusable, never crash the listing
            out.append(DeviceInfo(name, False, "", {"error": str(err)}))
    return out


__all__ = ["Artifact", "Device", "DeviceError", "DeviceInfo", "MeasureSettings", "Measurement", "open_device",
           "list_devices", "DEFAULT_DEVICE", "HOST_DEVICES"]
