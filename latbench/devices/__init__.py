"""Devices: where latency is measured. ``open_device("host:onnxruntime")`` is the embedded default."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .base import Artifact, Device, DeviceError, DeviceInfo, DeviceUnreachable, MeasureSettings, Measurement
from .reference import REFERENCES
from .spec import DeviceSpec, base_device

DEFAULT_DEVICE = "host:onnxruntime"
HOST_DEVICES = ("host:onnxruntime", "host:litert", "host:litert:builtin")


def open_device(spec: str = DEFAULT_DEVICE, threads: int = 1, settings: MeasureSettings | None = None,
                **options) -> Device:
    """Open a device by name: ``host:onnxruntime`` (options: ``graph_level``) or ``host:litert``
    (options: ``kernels="xnnpack"`` (default) or ``"builtin"``; ``host:litert:builtin`` spells the latter).
    A host device followed by ``?warm=N`` takes every timed sample after N untimed runs of the same model
    (:class:`MeasureSettings` ``warm``), e.g. ``host:onnxruntime?warm=1``; ``?reference=large`` times beside the
    full-width MobileNetV2 at 224 px instead of the small reference (``reference_net``).

    Phones over ADB: ``tcp:HOST:PORT`` or ``usb[:SERIAL]``, optionally followed by ``?option=value&…``
    (e.g. ``tcp:192.168.1.20:5555?runtime=onnxruntime&cores=f0``; see
    :class:`latbench.devices.android.AndroidOptions` and docs/android.md).
    """
    parsed = DeviceSpec.parse(spec)
    kind = parsed.kind
    if kind == "host" and "?" in spec:
        spec, settings = parsed.base, _host_settings(parsed, settings)
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
    if kind == "farm":
        from ..farm.device import open_farm_device

        return open_farm_device(spec, threads=threads, settings=settings, **options)
    if kind == "sim":
        from ..testing.simphone import open_simulated_phone

        return open_simulated_phone(spec, settings=settings)
    if kind in ("tcp", "usb"):
        from .android import open_android

        return open_android(spec, threads=threads, settings=settings, **options)
    raise DeviceError(f"unknown device {spec!r}; expected host:onnxruntime, host:litert[:builtin], tcp:HOST:PORT "
                      f"or usb[:SERIAL], farm:FILE (a farm group)")


def _host_settings(spec: DeviceSpec, settings: MeasureSettings | None) -> MeasureSettings:
    """The settings of ``host:…?warm=N&reference=small|large``: ``settings`` with those; a clear error for any other
    option."""
    settings = settings or MeasureSettings()
    for key in spec.unknown({"warm", "reference"}):
        raise DeviceError(f"device {spec.text!r}: unknown option {key!r}; a host device takes ?warm=N (untimed runs "
                          "before each timed sample) and ?reference=small|large (the reference network)")
    changes = {}
    if "warm" in spec.options:
        value = spec.options["warm"]
        if not value.isdigit():
            raise DeviceError(f"device {spec.text!r}: warm must be a whole number ≥ 0, got {value!r}")
        changes["warm"] = int(value)
    if "reference" in spec.options:
        value = spec.options["reference"]
        if value not in REFERENCES:
            raise DeviceError(f"device {spec.text!r}: reference must be small or large, got {value!r}")
        changes["reference_net"] = value
    return dataclasses.replace(settings, **changes)


def list_devices(tcp: Sequence[str] = (), phones: bool = True) -> list[DeviceInfo]:
    """The host runtimes, then (``phones``) phones on USB and at the ``tcp`` addresses (``HOST:PORT``;
    also ``$LATBENCH_ADB_TCP``)."""
    out = []
    for name in HOST_DEVICES:
        try:
            dev = open_device(name)
            out.append(DeviceInfo(name, True, dev.fingerprint(), dev.environment()))
            dev.close()
        except Exception as err:  # report any reason the runtime is unusable, never crash the listing
            out.append(DeviceInfo(name, False, "", {"error": str(err)}))
    if phones:
        from .android import list_android_devices

        out += list_android_devices(tcp)
    return out


__all__ = ["Artifact", "Device", "DeviceError", "DeviceInfo", "DeviceSpec", "DeviceUnreachable", "MeasureSettings",
           "Measurement", "open_device", "list_devices", "base_device", "DEFAULT_DEVICE", "HOST_DEVICES"]
