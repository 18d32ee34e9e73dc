"""A loopback Android phone for tests: a protocol-faithful ADB daemon on 127.0.0.1.

It speaks the real ADB transport (CNXN, AUTH with RSA keys, OPEN/OKAY/WRTE/CLSE), so both adb-shell
(``AdbDeviceTcp``) and Google's ``adb`` client (``adb connect 127.0.0.1:PORT``) talk to it. Services:
``shell:`` (stdout and stderr merged, no exit code), ``shell,v2,…:`` (shell protocol: separate
stdout/stderr packets and the exit code; ``pty`` requests run without a pty), ``exec:`` and ``sync:``
(STAT/STA2/LST2/LIST/LIS2/SEND/RECV/QUIT). Commands run as ``/system/bin/sh -c CMD`` in a sandbox
(see :mod:`.sandbox`) that shows ``/data/local/tmp``, ``/sdcard``, ``/system/bin`` and generated
``/sys/devices/system/cpu`` (8 CPUs, big.LITTLE) and ``/sys/class/thermal``; ``getprop``,
``dumpsys battery|thermalservice`` and ``taskset`` are shims. See docs/loopback-adbd.md.

Typical test::

    from latbench.testing.adbd import LoopbackPhone
    from latbench.testing.phone_tools import write_tool

    with LoopbackPhone(authorized_keys=[adbkey_pub]) as phone:   # the test's host key (path or text)
        serial = phone.serial                            # "127.0.0.1:PORT" (adb connect / AdbDeviceTcp)
        # adb-shell: AdbDeviceTcp(phone.host, phone.port).connect(rsa_keys=[PythonRSASigner(pub, priv)])
        tool = write_tool("benchmark_model", tmp_path)   # executable stand-in (really runs the model)
        # … push `tool` to /data/local/tmp/benchmark_model with your client, or without adb:
        phone.install_tool("onnxruntime_perf_test")      # → /data/local/tmp/onnxruntime_perf_test
        phone.set_temperature(48.5)                      # all thermal zones + battery (dumpsys: 485)
        phone.set_temperature(70, zones="cpu-big")       # one zone (profile.thermal_zones)
        phone.set_frequency(fraction=0.5, cluster="big") # throttle: scaling_cur/max_freq of the big policy
        fault = phone.inject_fault("reset", match="run_batch", after_seconds=0.5)  # RST mid-command
        phone.inject_fault("close", match="sync:", after_bytes=1 << 20)            # FIN mid-push
        phone.drop_connections("reset")                  # break every live connection now
        phone.host_path("/data/local/tmp/out.csv")       # the host file behind a device path
        phone.run("ls /data/local/tmp")                  # run a command on the phone without adb

Authorisation: only ``authorized_keys`` (``adbkey.pub`` paths or texts, or ``phone.authorize_key``) get
in; unknown keys stay pending (Google's adb lists the phone as ``unauthorized``) until
``phone.accept_pending()``. ``auto_accept=True`` lets any host key in and ``require_auth=False`` skips
AUTH: opt-ins only, since any local process could then run commands as the phone's owner (root in the
namespace sandbox).

Stand-in tools slow down with the simulated clock: they stretch each timed run by
``cpuinfo_max_freq / scaling_cur_freq`` of the CPUs they are pinned to (``taskset``), so
``set_frequency`` is visible in measured latency. Processes survive a dropped link (as on a phone)
and are killed when the phone stops. Run ``python -m latbench.testing.adbd`` for a standalone phone.
"""
from __future__ import annotations

from .devicefs import CpuCluster, DevicePathError, PhoneProfile
from .phone import LoopbackPhone
from .protocol import AndroidPublicKey
from .sandbox import SandboxError
from .server import Fault

__all__ = ["AndroidPublicKey", "CpuCluster", "DevicePathError", "Fault", "LoopbackPhone", "PhoneProfile",
           "SandboxError"]
