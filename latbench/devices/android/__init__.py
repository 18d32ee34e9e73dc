"""Android phones over ADB (``tcp:HOST:PORT``, ``usb[:SERIAL]``): connection, parsers of the phone-side
tools' output, telemetry, the ``AndroidDevice`` backend and ``latbench android`` commands.

Only :mod:`.parsers` and :mod:`.telemetry` are imported eagerly-safe; the connection imports
adb-shell when it is used.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..base import DeviceInfo
from .connection import AdbConnection, AdbLinkError, AdbTarget, AdbUnreachable, CommandError, UnauthorizedError
from .device import AndroidDevice, AndroidOptions, open_android

TCP_ENV = "LATBENCH_ADB_TCP"   # comma-separated HOST:PORT addresses that `latbench devices` probes


def tcp_addresses(extra: Sequence[str] = ()) -> list[str]:
    """``tcp:HOST:PORT`` specs from ``extra`` and ``$LATBENCH_ADB_TCP`` (duplicates removed)."""
    raw = [*extra, *filter(None, (a.strip() for a in os.environ.get(TCP_ENV, "").split(",")))]
    return list(dict.fromkeys(a if a.startswith("tcp:") else f"tcp:{a}" for a in raw))


def probe(spec: str) -> DeviceInfo:
    """Connect to one phone and describe it; never raises (the reason lands in ``detail['error']``)."""
    try:
        device = open_android(spec)
    except Exception as err:  # any reason the phone is unusable is a row of the listing, not a crash
        return DeviceInfo(spec, False, "", {"error": str(err)})
    try:
        f = device.facts
        detail = {"phone": f.model, "platform": f.platform, "sdk": f.sdk,
                  "cores": f"{len(f.cpus)} (big {device.mask})"}
        try:
            return DeviceInfo(spec, True, device.fingerprint(), detail)
        except Exception as err:  # reachable but not set up: say so
            return DeviceInfo(spec, True, "", {**detail, "error": str(err)})
    except Exception as err:
        return DeviceInfo(spec, False, "", {"error": str(err)})
    finally:
        device.close()


def list_android_devices(tcp: Sequence[str] = ()) -> list[DeviceInfo]:
    """Phones on USB (enumerated with libusb) and at the given / ``$LATBENCH_ADB_TCP`` addresses."""
    from .connection import usb_serials

    out = []
    try:
        serials = usb_serials()
    except Exception as err:  # libusb missing or not permitted: one row that says so
        serials = []
        out.append(DeviceInfo("usb", False, "", {"error": f"cannot enumerate USB: {err}"}))
    out += [probe(f"usb:{s}" if s else "usb") for s in serials]
    out += [probe(spec) for spec in tcp_addresses(tcp)]
    return out


__all__ = ["AdbConnection", "AdbLinkError", "AdbTarget", "AdbUnreachable", "AndroidDevice", "AndroidOptions", "CommandError",
           "UnauthorizedError", "list_android_devices", "open_android", "probe", "tcp_addresses", "TCP_ENV"]
