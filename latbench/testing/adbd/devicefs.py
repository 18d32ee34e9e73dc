"""The loopback phone's files: generated sysfs (CPUs, thermal zones), properties, battery, shims.

Layout of the device directory on the host (each top-level entry is what the phone sees at ``/<entry>``)::

    data/local/tmp/                   pushed files, tools, results
    sdcard/
    tmp/
    system/bin/{sh,getprop,dumpsys,taskset}
    system/etc/loopback/{props.json,battery.json,thermal.json,host_cpus}
    sys/devices/system/cpu/{possible,present,online,offline,kernel_max}
    sys/devices/system/cpu/cpuN/{online,cpu_capacity,topology/*,cpufreq -> ../cpufreq/policyK}
    sys/devices/system/cpu/cpufreq/policyK/{cpuinfo_max_freq,scaling_cur_freq,scaling_governor,...}
    sys/class/thermal/thermal_zoneN/{type,temp,mode,policy}

All updates are atomic file replacements in place, so commands running in the sandbox (which binds
these directories) see a change at once.
"""
from __future__ import annotations

import errno
import json
import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ...files import atomic_write_text
from . import shims


@dataclass(frozen=True)
class CpuCluster:
    """Identical cores sharing one cpufreq policy."""

    name: str
    cores: int
    max_khz: int
    min_khz: int = 300_000
    capacity: int = 1024
    governor: str = "schedutil"


@dataclass(frozen=True)
class PhoneProfile:
    """What the loopback phone claims to be. Defaults: an 8-core big.LITTLE arm64 phone on Android 13."""

    product_name: str = "loopback"
    model: str = "Loopback Phone 8"
    device: str = "loopback"
    manufacturer: str = "latbench"
    board_platform: str = "lahaina"
    sdk: int = 33
    release: str = "13"
    abi: str = "arm64-v8a"
    serialno: str = "LOOPBACK0001"
    clusters: tuple[CpuCluster, ...] = (
        CpuCluster("little", 4, 1_800_000, capacity=448),
        CpuCluster("big", 3, 2_420_000, capacity=1024, min_khz=710_400),
        CpuCluster("prime", 1, 2_840_000, capacity=1024, min_khz=844_800),
    )
    thermal_zones: tuple[str, ...] = ("cpu-little", "cpu-big", "cpu-prime", "gpu", "battery", "skin")
    temperature_c: float = 32.0
    battery_level: int = 85
    extra_props: tuple[tuple[str, str], ...] = ()

    @property
    def cpu_count(self) -> int:
        return sum(c.cores for c in self.clusters)

    def cluster_cpus(self) -> dict[str, list[int]]:
        out, first = {}, 0
        for cluster in self.clusters:
            out[cluster.name] = list(range(first, first + cluster.cores))
            first += cluster.cores
        return out

    def props(self) -> dict[str, str]:
        props = {
            "ro.product.name": self.product_name, "ro.product.model": self.model,
            "ro.product.device": self.device, "ro.product.manufacturer": self.manufacturer,
            "ro.product.brand": self.manufacturer, "ro.product.board": self.board_platform,
            "ro.board.platform": self.board_platform, "ro.hardware": self.board_platform,
            "ro.build.version.sdk": str(self.sdk), "ro.build.version.release": self.release,
            "ro.product.cpu.abi": self.abi, "ro.product.cpu.abilist": self.abi,
            "ro.serialno": self.serialno, "ro.build.type": "userdebug", "ro.debuggable": "1",
            "ro.secure": "1", "ro.adb.secure": "1", "sys.boot_completed": "1",
            "ro.build.fingerprint": f"{self.manufacturer}/{self.product_name}/{self.device}:{self.release}/"
                                    f"LB1A.000000.001/1:userdebug/test-keys",
        }
        props.update(dict(self.extra_props))
        return props


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (readers never see a half-written value). Not fsynced: these files are
    regenerated on every start, only atomicity matters."""
    atomic_write_text(path, text, durable=False)


WRITABLE = ("/data/local/tmp", "/sdcard", "/tmp")


class DevicePathError(ValueError):
    """A device path outside what the loopback phone exposes."""


@dataclass
class DeviceFiles:
    """Creates and updates the phone's files under ``root`` (the device directory)."""

    root: Path
    profile: PhoneProfile
    _policies: dict[str, Path] = field(default_factory=dict, init=False)

    # ------------------------------------------------------------------------------ creation
    def create(self) -> None:
        for sub in ("data/local/tmp", "sdcard", "tmp", "system/bin", "system/xbin", "system/etc/loopback"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").chmod(0o1777)
        self._create_cpus()
        self._create_thermal()
        self.write_props(self.profile.props())
        self.set_battery(temperature_c=self.profile.temperature_c, level=self.profile.battery_level)
        _write(self.state_dir / "host_cpus", " ".join(map(str, sorted(os.sched_getaffinity(0)))) + "\n")
        shims.install(self.root / "system/bin", sys.executable)

    @property
    def state_dir(self) -> Path:
        return self.root / "system/etc/loopback"

    @property
    def cpu_dir(self) -> Path:
        return self.root / "sys/devices/system/cpu"

    @property
    def thermal_dir(self) -> Path:
        return self.root / "sys/class/thermal"

    def _create_cpus(self) -> None:
        n = self.profile.cpu_count
        span = f"0-{n - 1}\n" if n > 1 else "0\n"
        for name, text in (("possible", span), ("present", span), ("online", span), ("offline", "\n"),
                           ("kernel_max", f"{max(n - 1, 0)}\n")):
            _write(self.cpu_dir / name, text)
        for cluster_id, (cluster, cpus) in enumerate(zip(self.profile.clusters, self.profile.cluster_cpus().values())):
            policy = self.cpu_dir / "cpufreq" / f"policy{cpus[0]}"
            self._policies[cluster.name] = policy
            related = " ".join(map(str, cpus)) + "\n"
            steps = _frequency_steps(cluster.min_khz, cluster.max_khz)
            values = {
                "cpuinfo_max_freq": cluster.max_khz, "cpuinfo_min_freq": cluster.min_khz,
                "scaling_max_freq": cluster.max_khz, "scaling_min_freq": cluster.min_khz,
                "scaling_cur_freq": cluster.max_khz, "cpuinfo_cur_freq": cluster.max_khz,
                "scaling_governor": cluster.governor, "scaling_driver": "qcom-cpufreq-hw",
                "scaling_available_governors": "ondemand userspace powersave performance schedutil",
                "scaling_available_frequencies": " ".join(map(str, steps)),
                "related_cpus": related.strip(), "affected_cpus": related.strip(), "cpuinfo_transition_latency": 0,
            }
            for key, value in values.items():
                _write(policy / key, f"{value}\n")
            for core_id, cpu in enumerate(cpus):
                cpu_dir = self.cpu_dir / f"cpu{cpu}"
                _write(cpu_dir / "online", "1\n")
                _write(cpu_dir / "cpu_capacity", f"{cluster.capacity}\n")
                for key, value in (("cluster_id", cluster_id), ("core_id", core_id), ("physical_package_id", 0),
                                   ("core_siblings_list", f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else cpus[0]),
                                   ("thread_siblings_list", cpu)):
                    _write(cpu_dir / "topology" / key, f"{value}\n")
                link = cpu_dir / "cpufreq"
                if not link.is_symlink():
                    link.symlink_to(f"../cpufreq/{policy.name}")

    def _create_thermal(self) -> None:
        for index, zone in enumerate(self.profile.thermal_zones):
            zone_dir = self.thermal_dir / f"thermal_zone{index}"
            _write(zone_dir / "type", f"{zone}\n")
            _write(zone_dir / "mode", "enabled\n")
            _write(zone_dir / "policy", "step_wise\n")
        self.set_temperature(self.profile.temperature_c)

    # ------------------------------------------------------------------------------- updates
    def zones(self) -> dict[str, Path]:
        return {(d / "type").read_text().strip(): d for d in sorted(self.thermal_dir.glob("thermal_zone*"))}

    def set_temperature(self, celsius: float, zones: str | list[str] | tuple[str, ...] | None = None) -> None:
        all_zones = self.zones()
        names = list(all_zones) if zones is None else ([zones] if isinstance(zones, str) else list(zones))
        unknown = [z for z in names if z not in all_zones]
        if unknown:
            raise ValueError(f"unknown thermal zone(s) {unknown}; this phone has {sorted(all_zones)}")
        for name in names:
            _write(all_zones[name] / "temp", f"{round(celsius * 1000)}\n")  # millidegrees Celsius

    def temperature(self, zone: str) -> float:
        zones = self.zones()
        if zone not in zones:
            raise ValueError(f"unknown thermal zone {zone!r}; this phone has {sorted(zones)}")
        return int((zones[zone] / "temp").read_text()) / 1000

    def set_battery(self, temperature_c: float | None = None, level: int | None = None) -> None:
        path = self.state_dir / "battery.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        if temperature_c is not None:
            state["temperature"] = round(temperature_c * 10)  # dumpsys battery: tenths of a degree
        if level is not None:
            if not 0 <= level <= 100:
                raise ValueError(f"battery level must be 0..100, got {level}")
            state["level"] = level
        _write(path, json.dumps(state))

    def set_frequency(self, khz: int | None = None, cluster: str | None = None, *, fraction: float | None = None,
                      cap: bool = True) -> None:
        """Set ``scaling_cur_freq`` of one cluster (all if None) to ``khz`` or ``fraction`` of its max.

        With ``cap`` the cluster's ``scaling_max_freq`` follows (as a thermal cap does); a value
        at or above the hardware maximum restores it.
        """
        if (khz is None) == (fraction is None):
            raise ValueError("give exactly one of khz= or fraction=")
        clusters = {c.name: c for c in self.profile.clusters}
        names = list(clusters) if cluster is None else [cluster]
        for name in names:
            if name not in clusters:
                raise ValueError(f"unknown cluster {name!r}; this phone has {list(clusters)}")
            spec = clusters[name]
            value = round(spec.max_khz * fraction) if fraction is not None else int(khz)
            value = max(spec.min_khz, min(spec.max_khz, value))
            policy = self._policies[name]
            for key in ("scaling_cur_freq", "cpuinfo_cur_freq"):
                _write(policy / key, f"{value}\n")
            if cap:
                _write(policy / "scaling_max_freq", f"{value}\n")

    def write_props(self, props: dict[str, str]) -> None:
        _write(self.state_dir / "props.json", json.dumps(props, sort_keys=True))

    def props(self) -> dict[str, str]:
        return json.loads((self.state_dir / "props.json").read_text())

    # --------------------------------------------------------------------------------- paths
    def writable_path(self, device_path: str) -> Path:
        """Like :meth:`host_path`, for writing: only under ``/data/local/tmp``, ``/sdcard`` and ``/tmp``
        (what adb's ``shell`` user may write on a phone); elsewhere raises :class:`PermissionError`."""
        norm = posixpath.normpath(device_path) if device_path.startswith("/") else device_path
        if not any(norm == top or norm.startswith(top + "/") for top in WRITABLE):
            raise PermissionError(errno.EACCES, f"{device_path}: only {', '.join(WRITABLE)} are writable")
        return self.host_path(device_path)

    def host_path(self, device_path: str) -> Path:
        """The host file behind an absolute device path (which need not exist).

        Raises :class:`DevicePathError` for relative paths and for paths that resolve (through
        symlinks) outside the phone's device directory.
        """
        if not device_path.startswith("/"):
            raise DevicePathError(f"device path {device_path!r} is not absolute")
        norm = posixpath.normpath(device_path).lstrip("/")
        host = self.root / norm if norm not in ("", ".") else self.root
        root = self.root.resolve()
        resolved = host.resolve()
        if resolved != root and root not in resolved.parents:
            raise DevicePathError(f"device path {device_path!r} leaves the phone's file system")
        return host


def _frequency_steps(min_khz: int, max_khz: int, count: int = 8) -> list[int]:
    step = (max_khz - min_khz) / (count - 1)
    return sorted({round((min_khz + i * step) / 100) * 100 for i in range(count - 1)} | {max_khz})
