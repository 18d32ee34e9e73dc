"""What a phone is and what state it is in: identity, CPU topology, frequencies, temperatures.

Everything is read in one shell round trip per snapshot (``FACTS_SCRIPT`` once per connection,
``SNAPSHOT_SCRIPT`` around every batch) and parsed here, so the parsing is testable without a phone.

Units as the kernel reports them: frequencies in kHz (``cpuinfo_max_freq``, ``scaling_cur_freq``,
``scaling_max_freq``), thermal zones in millidegrees Celsius, ``dumpsys battery`` in tenths of a degree.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

PROPS = ("ro.product.model", "ro.product.manufacturer", "ro.board.platform", "ro.build.version.sdk",
         "ro.build.version.release", "ro.build.fingerprint", "ro.product.cpu.abi", "ro.serialno")

# Fixed scripts (no user values): tagged, TAB-separated lines, one fact per line.
FACTS_SCRIPT = (
    "for p in " + " ".join(PROPS) + "; do printf 'prop\\t%s\\t%s\\n' \"$p\" \"$(getprop \"$p\" 2>/dev/null)\"; done; "
    "for d in /sys/devices/system/cpu/cpu[0-9]*; do c=${d##*/cpu}; "
    "printf 'cpu\\t%s\\t%s\\n' \"$c\" \"$(cat \"$d/cpufreq/cpuinfo_max_freq\" 2>/dev/null)\"; done; "
    "for z in /sys/class/thermal/thermal_zone[0-9]*; do "
    "printf 'zonetype\\t%s\\t%s\\n' \"${z##*/thermal_zone}\" \"$(cat \"$z/type\" 2>/dev/null)\"; done; "
    "printf 'uname\\t%s\\n' \"$(uname -m 2>/dev/null)\""
)
SNAPSHOT_SCRIPT = (
    "for d in /sys/devices/system/cpu/cpu[0-9]*; do c=${d##*/cpu}; f=$d/cpufreq; "
    "printf 'freq\\t%s\\t%s\\t%s\\t%s\\n' \"$c\" \"$(cat \"$f/scaling_cur_freq\" 2>/dev/null)\" "
    "\"$(cat \"$f/scaling_max_freq\" 2>/dev/null)\" \"$(cat \"$f/scaling_governor\" 2>/dev/null)\"; done; "
    "for z in /sys/class/thermal/thermal_zone[0-9]*; do "
    "printf 'temp\\t%s\\t%s\\n' \"${z##*/thermal_zone}\" \"$(cat \"$z/temp\" 2>/dev/null)\"; done; "
    "printf 'battery\\t%s\\n' \"$(dumpsys battery 2>/dev/null | grep -i 'temperature' | head -n 1)\""
)

# Zone types that measure the CPU (or the SoC it sits in) across vendors: Qualcomm (cpu-1-0-usr,
# cpuss-0-usr, tsens_tz_sensor*), MediaTek (mtktscpu, cpu_big0…), Exynos (BIG, LITTLE, G3D…), Tensor
# (BIG, MID, LITTLE, soc_therm), generic (cpu-thermal, soc-thermal, x86_pkg_temp).
CPU_ZONE_HINTS = ("cpu", "tsens", "soc", "big", "little", "mid", "prime", "gold", "silver", "x86_pkg")
CPU_ZONE_NAMES = ("ap", "ap_therm")   # Samsung's application-processor zone: matched exactly
PLAUSIBLE_MC = (-20_000, 150_000)   # readings outside are disconnected sensors (e.g. -273000)


def _int(value: str) -> int | None:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class PhoneFacts:
    """Static facts of a phone, read once per connection."""

    props: dict[str, str]
    max_khz: dict[int, int]               # cpu index -> cpuinfo_max_freq
    zone_types: dict[int, str]            # thermal zone index -> type
    machine: str = ""

    @property
    def model(self) -> str:
        return self.props.get("ro.product.model", "")

    @property
    def platform(self) -> str:
        return self.props.get("ro.board.platform", "")

    @property
    def sdk(self) -> str:
        return self.props.get("ro.build.version.sdk", "")

    @property
    def cpus(self) -> list[int]:
        return sorted(self.max_khz)

    def clusters(self) -> list[tuple[int, list[int]]]:
        """(max kHz, cpus) per distinct maximum frequency, slowest first."""
        by_freq: dict[int, list[int]] = {}
        for cpu, khz in sorted(self.max_khz.items()):
            by_freq.setdefault(khz, []).append(cpu)
        return sorted(by_freq.items())

    def big_cores(self) -> list[int]:
        """The cores faster than the slowest cluster (all cores when they are all alike): "big" and
        "prime" cores on big.LITTLE / DynamIQ phones, e.g. cpus 4–7 of a 4+3+1 Snapdragon."""
        clusters = self.clusters()
        if len(clusters) <= 1:
            return self.cpus
        return sorted(c for _, cpus in clusters[1:] for c in cpus)

    def cpu_zones(self) -> list[int]:
        """Thermal zones that measure the CPU/SoC (by their type); all zones when no type says so."""
        hits = [z for z, t in self.zone_types.items()
                if any(h in t.lower() for h in CPU_ZONE_HINTS) or t.lower() in CPU_ZONE_NAMES]
        return sorted(hits or self.zone_types)

    def to_dict(self) -> dict:
        return {"props": self.props, "max_khz": {str(k): v for k, v in self.max_khz.items()},
                "zone_types": {str(k): v for k, v in self.zone_types.items()}, "machine": self.machine}


def parse_facts(text: str) -> PhoneFacts:
    props: dict[str, str] = {}
    max_khz: dict[int, int] = {}
    zones: dict[int, str] = {}
    machine = ""
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t")
        tag = parts[0]
        if tag == "prop" and len(parts) >= 3:
            props[parts[1]] = parts[2].strip()
        elif tag == "cpu" and len(parts) >= 3 and (cpu := _int(parts[1])) is not None:
            if (khz := _int(parts[2])) is not None:
                max_khz[cpu] = khz
        elif tag == "zonetype" and len(parts) >= 3 and (z := _int(parts[1])) is not None:
            zones[z] = parts[2].strip()
        elif tag == "uname" and len(parts) >= 2:
            machine = parts[1].strip()
    return PhoneFacts(props, max_khz, zones, machine)


def cpu_mask(cpus: list[int]) -> str:
    """Hex affinity mask for ``taskset`` (cpus 4–7 → ``f0``)."""
    if not cpus:
        raise ValueError("no cpus for the mask")
    return format(sum(1 << c for c in cpus), "x")


def mask_cpus(mask: str) -> list[int]:
    """The cpus of a hex mask (``f0`` → [4, 5, 6, 7])."""
    try:
        value = int(mask, 16)
    except ValueError:
        raise ValueError(f"cpu mask {mask!r} is not hexadecimal (e.g. f0 for cpus 4-7)") from None
    if value <= 0:
        raise ValueError(f"cpu mask {mask!r} selects no cpu")
    return [i for i in range(value.bit_length()) if value >> i & 1]


@dataclass(frozen=True)
class Snapshot:
    """The phone's state at one moment."""

    at: float
    cur_khz: dict[int, int | None]
    cap_khz: dict[int, int | None]          # scaling_max_freq: lowered by thermal throttling
    governor: dict[int, str]
    temps_mc: dict[int, int]                # thermal zone -> millidegrees (plausible readings only)
    battery_dc: int | None                  # tenths of a degree

    def cpu_temp_c(self, zones: list[int] | None = None) -> float | None:
        vals = [v for z, v in self.temps_mc.items() if zones is None or z in zones]
        return max(vals) / 1e3 if vals else None

    @property
    def battery_c(self) -> float | None:
        return self.battery_dc / 10 if self.battery_dc is not None else None

    def summary(self, cpus: list[int], zones: list[int]) -> dict:
        """A compact JSON-able record (what is stored with a measurement)."""
        return {"at": round(self.at, 3), "cpu_temp_c": self.cpu_temp_c(zones), "battery_c": self.battery_c,
                "cur_khz": {str(c): self.cur_khz.get(c) for c in cpus},
                "cap_khz": {str(c): self.cap_khz.get(c) for c in cpus},
                "governor": sorted({self.governor[c] for c in cpus if self.governor.get(c)})}


def parse_snapshot(text: str, at: float | None = None) -> Snapshot:
    cur: dict[int, int | None] = {}
    cap: dict[int, int | None] = {}
    gov: dict[int, str] = {}
    temps: dict[int, int] = {}
    battery = None
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t")
        if parts[0] == "freq" and len(parts) >= 5 and (cpu := _int(parts[1])) is not None:
            cur[cpu], cap[cpu], gov[cpu] = _int(parts[2]), _int(parts[3]), parts[4].strip()
        elif parts[0] == "temp" and len(parts) >= 3 and (z := _int(parts[1])) is not None:
            mc = _int(parts[2])
            if mc is not None and PLAUSIBLE_MC[0] <= mc <= PLAUSIBLE_MC[1]:
                temps[z] = mc
        elif parts[0] == "battery" and len(parts) >= 2:
            # "  temperature: 310" (tenths of a degree)
            value = parts[1].split(":", 1)[-1]
            battery = _int(value)
    return Snapshot(time.time() if at is None else at, cur, cap, gov, temps, battery)


@dataclass(frozen=True)
class StepTelemetry:
    """What the runner script records right after one tool run: per pinned cpu (cur, cap) kHz, and
    the temperatures of the watched zones (millidegrees)."""

    freqs: list[tuple[int | None, int | None]]
    temps_mc: list[int]

    @classmethod
    def parse(cls, freq: str, temp: str) -> "StepTelemetry":
        freqs = []
        for item in filter(None, freq.split(",")):
            cur, _, cap = item.partition("/")
            freqs.append((_int(cur), _int(cap)))
        temps = [t for t in (_int(v) for v in temp.split(",") if v) if t is not None
                 and PLAUSIBLE_MC[0] <= t <= PLAUSIBLE_MC[1]]
        return cls(freqs, temps)

    @property
    def min_cap_khz(self) -> int | None:
        caps = [c for _, c in self.freqs if c]
        return min(caps) if caps else None

    @property
    def max_temp_c(self) -> float | None:
        return max(self.temps_mc) / 1e3 if self.temps_mc else None


@dataclass(frozen=True)
class ThermalPolicy:
    """When to wait before a batch and what counts as throttling.

    ``max_cpu_c`` / ``max_battery_c``: a batch starts only below these (waiting up to ``max_wait_s``,
    polling every ``poll_s``). ``cap_drop``: throttling when a pinned core's ``scaling_max_freq`` falls
    below this fraction of its ``cpuinfo_max_freq`` baseline at the batch start.
    """

    max_cpu_c: float = 50.0
    max_battery_c: float = 40.0
    max_wait_s: float = 300.0
    poll_s: float = 5.0
    cap_drop: float = 0.95

    def too_hot(self, snap: Snapshot, zones: list[int]) -> bool:
        cpu = snap.cpu_temp_c(zones)
        return bool((cpu is not None and cpu > self.max_cpu_c)
                    or (snap.battery_c is not None and snap.battery_c > self.max_battery_c))

    def throttled(self, baseline_cap_khz: int | None, step: StepTelemetry) -> bool:
        """A pinned core's frequency cap fell during the run (the kernel's thermal governor at work)."""
        cap = step.min_cap_khz
        return bool(baseline_cap_khz and cap and cap < self.cap_drop * baseline_cap_khz)


def latency_jumps(reference_ms: np.ndarray, max_slowdown: float) -> np.ndarray:
    """Which reference runs were more than ``max_slowdown`` slower than the batch's fastest one — a
    latency jump (throttling, a background task) that the side-by-side ratio may not fully cancel."""
    ref = np.asarray(reference_ms, dtype=float)
    return ref > np.nanmin(ref) * (1.0 + max_slowdown)


@dataclass
class BatchConditions:
    """The conditions of one batch, stored with each of its measurements (JSON)."""

    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    cooldown_s: float = 0.0
    remeasured_steps: int = 0
    throttled_steps: int = 0
    reconnects: int = 0
    cpu_temp_c: list = field(default_factory=list)       # max watched zone per step of this artifact
    min_cap_khz: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
