"""``AndroidDevice``: the ``Device`` protocol on a phone over ADB.

A batch of artifacts becomes one *plan* — every (round, artifact) step in the same interleaved random
order as on the host, each artifact run preceded by a run of the reference network — executed by the
phone-side runner (``latbench/device_agents/latbench_runner.sh``) in one shell invocation that prints one line
per tool run. The host pays a few round trips per batch (push the new models, push the plan, run),
not per run. See docs/android.md for the protocol and the choices behind it.

Robustness:

* every completed step is also appended to a results file on the phone; when the link drops
  (``ConnectionResetError``, a timeout, ``BrokenPipeError`` — adb-shell keeps ``available`` True) the
  device reconnects, stops whatever the old runner left running and resumes the plan with the steps
  that have no result yet: nothing is lost, nothing is measured twice;
* before a batch, the device waits while the phone is hotter than ``ThermalPolicy`` allows; steps
  whose pinned cores lost frequency (``scaling_max_freq`` fell) or whose reference ran much slower
  than the batch's best are measured again after a cool-down;
* the conditions (temperatures, frequencies, cool-downs, re-measurements, reconnects) are attached
  to every ``Measurement`` and stored with it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import shlex
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..base import Artifact, DeviceError, MeasureSettings, Measurement
from ..lock import measurement_lock, phone_lock_name
from ..reference import REFERENCES, ReferenceTimed, reference_model
from ..spec import DeviceSpec
from ..timing import robust_stats
from .connection import AdbConnection, AdbLinkError, AdbTarget, UnauthorizedError
from .parsers import ParseError, parse_benchmark_model, parse_perf_test
from .telemetry import (FACTS_SCRIPT, SNAPSHOT_SCRIPT, BatchConditions, PhoneFacts, Snapshot, StepTelemetry,
                        ThermalPolicy, cpu_mask, latency_jumps, mask_cpus, parse_facts, parse_snapshot)

PHONE_ROOT = "/data/local/tmp/latbench"
AGENT_RESOURCE = ("device_agents", "latbench_runner.sh")   # package data of latbench (pyproject.toml)
RUNTIMES = {"tflite": ("tflite", "benchmark_model"), "onnxruntime": ("onnx", "onnxruntime_perf_test")}
TOOL_PATHS = {"tflite": "bin/benchmark_model", "onnxruntime": "ort/onnxruntime_perf_test"}
LAYER_TIMINGS = ("ops", "run")
EXT = {"tflite": ".tflite", "onnx": ".onnx"}


def _phone_exclusive(method):
    """Run ``method`` holding this phone's measurement lock (lock.py): another latbench process on this
    host would otherwise stop our runner (``stop_leftovers``) or heat the phone between our batches."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.measurement_lock().held():
            return method(self, *args, **kwargs)

    return locked


def agent_script() -> bytes:
    """The phone-side runner, from the installed package (``latbench/device_agents/``): found the same way
    in a checkout, an editable install and a wheel."""
    resource = resources.files("latbench")
    for part in AGENT_RESOURCE:
        resource = resource / part
    try:
        return resource.read_bytes()
    except OSError as err:
        raise DeviceError(f"the phone-side runner latbench/{'/'.join(AGENT_RESOURCE)} is missing from this "
                          f"installation ({err}); reinstall latbench") from None


@dataclass(frozen=True)
class AndroidOptions:
    """Per-device settings, given as ``tcp:HOST:PORT?key=value&…`` or as keyword arguments.

    runtime       ``tflite`` (benchmark_model, default) or ``onnxruntime`` (onnxruntime_perf_test)
    cores         ``big`` (default: the cores faster than the slowest cluster), ``all`` or a hex mask
    layer_timing  ``ops``: a layer is the sum of its ops in benchmark_model's op profile (default);
                  ``run``: the whole run (the only choice for onnxruntime_perf_test)
    step_timeout  seconds of silence allowed per tool run before the link counts as hung (≥ 4× the
                  longest run seen so far is used anyway, and it doubles after every timeout)
    reconnects    attempts after a dropped link before giving up
    auth_timeout  seconds to wait for the user to accept this computer's key on the phone
    reference     ``on`` (default) or ``small``: time the small reference network side by side (timing.py);
                  ``large``: the full-width one at 224 px, as ``host:…?reference=large``; ``off``: raw times,
                  half the tool runs (each a separate environment: their measurements never mix)
    max_cpu_c, max_battery_c, max_wait_s, poll_s: the cool-down (``ThermalPolicy``)
    root          the directory on the phone (must end in /latbench)
    """

    runtime: str = "tflite"
    cores: str = "big"
    layer_timing: str = "ops"
    step_timeout: float = 120.0
    reconnects: int = 8
    auth_timeout: float = 30.0
    reference: str = "on"
    thermal: ThermalPolicy = field(default_factory=ThermalPolicy)
    root: str = PHONE_ROOT

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise DeviceError(f"runtime {self.runtime!r} unknown; choose one of {sorted(RUNTIMES)}")
        if self.reference not in ("on", "off", *REFERENCES):
            raise DeviceError(f"reference={self.reference!r}: choose on (= small), large or off")
        if self.layer_timing not in LAYER_TIMINGS:
            raise DeviceError(f"layer_timing {self.layer_timing!r} unknown; choose one of {LAYER_TIMINGS}")
        if self.cores not in ("big", "all"):
            try:
                mask_cpus(self.cores)
            except ValueError as err:
                raise DeviceError(f"cores: {err}") from None
        if not self.root.startswith("/") or not self.root.endswith("/latbench") or ".." in self.root:
            raise DeviceError(f"phone directory {self.root!r} must be an absolute path ending in /latbench")

    @classmethod
    def from_query(cls, query: str, **overrides) -> "AndroidOptions":
        """The options of a spec's ``key=value&…`` part (``overrides``, e.g. from the command line, win)."""
        return cls.from_options({**DeviceSpec.parse(f"?{query}").options, **overrides})

    @classmethod
    def from_options(cls, options: dict) -> "AndroidOptions":
        values: dict = {}
        thermal: dict = {}
        names = {f.name for f in dataclasses.fields(cls)}
        thermal_names = {f.name for f in dataclasses.fields(ThermalPolicy)}
        for key, value in options.items():
            if key in thermal_names:
                thermal[key] = _number(key, value)
            elif key in ("step_timeout", "reconnects", "auth_timeout"):
                values[key] = int(_number(key, value)) if key == "reconnects" else _number(key, value)
            elif key in names and key != "thermal":
                values[key] = str(value)
            else:
                raise DeviceError(f"unknown phone option {key!r}; known: {sorted(names - {'thermal'} | thermal_names)}")
        return cls(**values, thermal=ThermalPolicy(**thermal))

    @property
    def tool(self) -> str:
        return RUNTIMES[self.runtime][1]

    @property
    def model_format(self) -> str:
        return RUNTIMES[self.runtime][0]

    @property
    def effective_layer_timing(self) -> str:
        return self.layer_timing if self.runtime == "tflite" else "run"


def _number(key: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DeviceError(f"phone option {key}={value!r} must be a number") from None


@dataclass(frozen=True)
class Step:
    """One tool run of the plan: ``item`` is the artifact index (-1 for the reference)."""

    id: int
    role: str
    item: int
    round: int
    model: str
    runs: int
    profile: bool

    def plan_line(self) -> str:
        return f"{self.id} {self.role} {self.model} {self.runs} {'true' if self.profile else 'false'}"


@dataclass(frozen=True)
class StepResult:
    step: int
    rc: int
    value_ms: float
    telemetry: StepTelemetry
    seconds: float = 0.0


def parse_runner_line(line: str) -> dict | None:
    """A runner output line → its fields (``None`` for anything else, e.g. a truncated line)."""
    if not line.startswith("@LB\t") or not line.endswith("\t@END"):
        return None
    head, sep, out = line[: -len("\t@END")].partition("\tout=")
    fields: dict = {"out": out.replace("\x1e", "\n")} if sep else {}
    for part in head.split("\t")[1:]:
        key, eq, value = part.partition("=")
        fields[key] = value if eq else True
    return fields


class AndroidDevice(ReferenceTimed):
    """A phone reached over ADB (``tcp:HOST:PORT`` or ``usb[:SERIAL]``), timing models with TFLite's
    ``benchmark_model`` or ``onnxruntime_perf_test`` pushed once by ``latbench android setup``.

    >>> dev = open_android("tcp:192.168.1.20:5555")                       # doctest: +SKIP
    >>> dev.prepare(); dev.measure([Artifact("conv", tflite, format="tflite")])  # doctest: +SKIP
    """

    channel_multiple = 1   # not measured on any phone yet: grids use every width (docs/android.md)

    def __init__(self, target: AdbTarget, threads: int = 1, settings: MeasureSettings | None = None,
                 options: AndroidOptions | None = None, connection: AdbConnection | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if threads < 1:
            raise DeviceError(f"threads must be ≥ 1, got {threads}")
        self.target = target
        self.threads = threads
        self.options = options or AndroidOptions()
        self.settings = settings or MeasureSettings()
        if self.options.reference == "off":
            self.settings = dataclasses.replace(self.settings, reference=False)
        elif self.options.reference == "large":
            self.settings = dataclasses.replace(self.settings, reference_net="large")
        self.name = str(target)
        self.model_format = self.options.model_format
        self.conn = connection or AdbConnection(target, auth_timeout_s=self.options.auth_timeout)
        self.log = log or (lambda msg: None)
        self.reference_ms: float | None = None
        self._facts: PhoneFacts | None = None
        self._tool_hash: str | None = None
        self._longest_step_s = 0.0
        self._timeout_boost = 1.0     # doubles after each timeout: a run longer than expected still finishes
        self._batches = 0
        self._reference_name: str | None = None
        self._on_phone: set[str] = set()

    # ------------------------------------------------------------------------------ identity
    def _run(self, command: str, timeout_s: float = 30.0, check: bool = True):
        """A short shell command, retried once over a fresh connection when the link drops."""
        for attempt in range(2):
            try:
                return self.conn.shell(command, timeout_s=timeout_s, check=check)
            except UnauthorizedError:
                raise
            except AdbLinkError as err:
                if not err.transient or attempt:
                    raise
                self.log(f"link to {self.name} lost ({err}); reconnecting")
                self.conn.reconnect(self.options.reconnects, log=self.log)
        raise AssertionError("unreachable")

    @property
    def facts(self) -> PhoneFacts:
        if self._facts is None:
            facts = parse_facts(self._run(FACTS_SCRIPT).output)
            if not facts.max_khz:
                raise DeviceError(f"{self.name} shows no CPU in /sys/devices/system/cpu/*/cpufreq; "
                                  f"is it an Android phone with a Linux kernel?")
            self._facts = facts
        return self._facts

    @property
    def pinned_cpus(self) -> list[int]:
        cores = self.options.cores
        if cores == "big":
            return self.facts.big_cores()
        if cores == "all":
            return self.facts.cpus
        cpus = mask_cpus(cores)
        missing = sorted(set(cpus) - set(self.facts.cpus))
        if missing:
            raise DeviceError(f"cpu mask {cores} names cpus {missing} that {self.name} does not have "
                              f"(it has {self.facts.cpus})")
        return cpus

    @property
    def mask(self) -> str:
        return cpu_mask(self.pinned_cpus)

    def _path(self, *parts: str) -> str:
        return "/".join([self.options.root, *parts])

    def tool_hash(self) -> str:
        """A hash of the tool binary on the phone: a different build is a different environment."""
        if self._tool_hash is None:
            tool = shlex.quote(self._path(TOOL_PATHS[self.options.runtime]))
            res = self._run(f"if [ -x {tool} ]; then (sha256sum {tool} || md5sum {tool} || cksum {tool}) "
                            f"2>/dev/null | head -n 1; else echo __missing; fi")
            text = res.output.strip()
            if not text or text == "__missing":
                raise DeviceError(f"{self.options.tool} is not installed on {self.name} "
                                  f"({self._path(TOOL_PATHS[self.options.runtime])}); run "
                                  f"`latbench android setup --device {self.name} "
                                  f"{'--benchmark-model PATH' if self.options.runtime == 'tflite' else '--perf-test DIR'}`")
            self._tool_hash = text.split()[0][:16]
        return self._tool_hash

    def runtime_settings(self) -> dict:
        return {"runtime": self.options.tool, "tool_hash": self.tool_hash(), "threads": self.threads,
                "cores": self.mask, "layer_timing": self.options.effective_layer_timing}

    def fingerprint(self) -> str:
        f = self.facts
        ident = {"model": f.model, "manufacturer": f.props.get("ro.product.manufacturer", ""),
                 "platform": f.platform, "sdk": f.sdk, "abi": f.props.get("ro.product.cpu.abi", ""),
                 "max_khz": sorted(f.max_khz.items()), **self.backend_settings()}
        return "android-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    def environment(self) -> dict:
        f = self.facts
        return {"phone": f.model, "manufacturer": f.props.get("ro.product.manufacturer", ""),
                "platform": f.platform, "sdk": f.sdk, "android": f.props.get("ro.build.version.release", ""),
                "build": f.props.get("ro.build.fingerprint", ""), "abi": f.props.get("ro.product.cpu.abi", ""),
                "cpu_max_khz": {str(k): v for k, v in f.max_khz.items()}, "pinned_cpus": self.pinned_cpus,
                "thermal_zones": {str(z): f.zone_types[z] for z in f.cpu_zones()},
                "thermal_policy": dataclasses.asdict(self.options.thermal),
                **self.backend_settings(), "protocol": self.settings.to_dict()}

    def measurement_lock(self):
        """This phone's lock, named by its serial number: the same phone over USB and over TCP takes one."""
        serial = self.facts.props.get("ro.serialno") or str(self.target)
        return measurement_lock(phone_lock_name(serial), f"on phone {serial}")

    # ------------------------------------------------------------------------------ preparing
    @_phone_exclusive
    def prepare(self) -> None:
        """Install the runner script (when it changed), create the folders, stop leftovers of an earlier
        connection and check that the tool is there."""
        script = agent_script()
        remote = self._path("agent", "latbench_runner.sh")
        digest = hashlib.sha256(script).hexdigest()
        q = shlex.quote
        have = self._run(f"mkdir -p {q(self._path('agent'))} {q(self._path('models'))} {q(self._path('batches'))}"
                         f" && (sha256sum {q(remote)} 2>/dev/null || true)").output.split()
        if not have or have[0] != digest:
            self.conn.push_bytes(script, remote, mode=0o755)
        self.stop_leftovers()
        self.tool_hash()

    def install(self, benchmark_model: Path | None = None, perf_test: Path | None = None) -> list[str]:
        """Push the tools once: ``benchmark_model`` → ``ROOT/bin/``; an onnxruntime_perf_test folder (the
        binary and its ``.so`` files) → ``ROOT/ort/``. Returns the phone paths written."""
        if benchmark_model is None and perf_test is None:
            raise DeviceError("nothing to install: give --benchmark-model PATH and/or --perf-test DIR")
        q = shlex.quote
        pushes: list[tuple[Path, str, int]] = []
        if benchmark_model is not None:
            path = Path(benchmark_model)
            if not path.is_file():
                raise DeviceError(f"{path} is not a file; give the benchmark_model binary for the phone "
                                  f"(e.g. android_aarch64_benchmark_model, docs/android.md)")
            pushes.append((path, self._path(TOOL_PATHS["tflite"]), 0o755))
        if perf_test is not None:
            folder = Path(perf_test)
            binary = folder / "onnxruntime_perf_test" if folder.is_dir() else folder
            if not binary.is_file():
                raise DeviceError(f"no onnxruntime_perf_test in {folder}; give the folder with the binary and "
                                  f"its .so files (libonnxruntime.so)")
            libs = sorted(p for p in binary.parent.iterdir() if p.is_file() and ".so" in p.suffixes)
            pushes.append((binary, self._path(TOOL_PATHS["onnxruntime"]), 0o755))
            pushes += [(lib, self._path("ort", lib.name), 0o644) for lib in libs]
        for _, remote, _ in pushes:
            if not all(c.isalnum() or c in "/._-+" for c in remote):
                raise DeviceError(f"file name {remote!r} has characters latbench does not push")
        self._run(f"mkdir -p {q(self._path('bin'))} {q(self._path('ort'))}")
        for local, remote, mode in pushes:
            self.log(f"pushing {local} → {remote} ({local.stat().st_size / 1e6:.1f} MB)")
            self.conn.push_file(local, remote, mode)
            self._run(f"chmod {mode:o} {q(remote)}")
        self._tool_hash = None
        return [remote for _, remote, _ in pushes]

    def use_runtime(self, runtime: str) -> None:
        """Switch between the installed tools (``tflite`` / ``onnxruntime``) on this connection."""
        self.options = dataclasses.replace(self.options, runtime=runtime)
        self.model_format = self.options.model_format
        self._tool_hash = None

    def installed_tools(self) -> dict[str, bool]:
        q = shlex.quote
        out = {}
        for runtime, rel in TOOL_PATHS.items():
            res = self._run(f"[ -x {q(self._path(rel))} ]", check=False)
            out[RUNTIMES[runtime][1]] = res.rc == 0
        return out

    @_phone_exclusive
    def clean(self, everything: bool = False) -> None:
        """Delete pushed models and batch folders (``everything``: the whole latbench folder, tools too)."""
        q = shlex.quote
        self.stop_leftovers()
        targets = [self.options.root] if everything else [self._path("models"), self._path("batches")]
        self._run("rm -rf " + " ".join(q(t) for t in targets))
        self._on_phone.clear()

    def stop_leftovers(self) -> str:
        """End a runner (and its tool run) that an earlier, dropped connection left on the phone."""
        q = shlex.quote
        script = q(self._path("agent", "latbench_runner.sh"))
        return self._run(f"if [ -f {script} ]; then sh {script} stop {q(self.options.root)}; fi").output

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------------------ telemetry
    def snapshot(self) -> Snapshot:
        return parse_snapshot(self._run(SNAPSHOT_SCRIPT).output)

    def cool_down(self) -> tuple[Snapshot, float]:
        """Wait (up to the policy's limit) until the watched temperatures are below the thresholds."""
        policy, zones = self.options.thermal, self.facts.cpu_zones()
        t0 = time.monotonic()
        snap = self.snapshot()
        while policy.too_hot(snap, zones) and time.monotonic() - t0 < policy.max_wait_s:
            self.log(f"{self.name} is hot (CPU {snap.cpu_temp_c(zones)} °C, battery {snap.battery_c} °C); "
                     f"cooling down")
            time.sleep(policy.poll_s)
            snap = self.snapshot()
        return snap, time.monotonic() - t0

    # ------------------------------------------------------------------------------ running plans
    def _ensure_models(self, models: dict[str, bytes]) -> None:
        """Push the models the phone lacks (content-addressed names, so a resumed batch pushes nothing)."""
        missing = [n for n in models if n not in self._on_phone]
        if missing:
            listing = self._run(f"ls {shlex.quote(self._path('models'))}").output.split()
            self._on_phone = set(listing)
        for name in missing:
            if name not in self._on_phone:
                self.conn.push_bytes(models[name], self._path("models", name))
                self._on_phone.add(name)

    def _model_name(self, model: bytes) -> str:
        return hashlib.sha256(model).hexdigest()[:24] + EXT[self.model_format]

    def _value_ms(self, fields: dict, step: Step) -> float:
        text = fields.get("out", "")
        try:
            if self.options.runtime == "onnxruntime":
                return parse_perf_test(text).latency_ms
            result = parse_benchmark_model(text)
            return result.ops_ms if step.profile else result.latency_ms
        except ParseError as err:
            raise DeviceError(f"{self.options.tool} on {self.name} printed no usable timings for step "
                              f"{step.id} (exit status {fields.get('rc')}): {err}") from err

    def _collect(self, line: str, steps: dict[int, Step], results: dict[int, StepResult], started: float) -> None:
        fields = parse_runner_line(line)
        if fields is None:
            return
        if "error" in fields:
            raise DeviceError(f"the runner on {self.name} refused the plan: {fields['error']}")
        if "busy" in fields:
            raise AdbLinkError(f"another latbench runner (pid {fields['busy']}) is running on {self.name}",
                               transient=True)
        if "step" not in fields:
            return
        step = steps.get(int(fields["step"]))
        if step is None or step.id in results:
            return
        rc = int(fields.get("rc", "1"))
        if rc != 0:
            raise DeviceError(f"{self.options.tool} failed on {self.name} (exit status {rc}) for "
                              f"{step.role} model {step.model}: {fields.get('out', '')[-800:].strip()}")
        results[step.id] = StepResult(step.id, rc, self._value_ms(fields, step),
                                      StepTelemetry.parse(fields.get("freq", ""), fields.get("temp", "")),
                                      time.monotonic() - started)

    def _read_finished(self, batch: str, steps: dict[int, Step], results: dict[int, StepResult]) -> None:
        """Steps a runner finished on the phone while the host was not listening."""
        out = self._run(f"cat {shlex.quote(self._path('batches', batch, 'results'))} 2>/dev/null || true",
                        timeout_s=60).output
        for line in out.split("\n"):   # not splitlines(): it also splits at \x1e, the runner's newline stand-in
            self._collect(line.rstrip("\r"), steps, results, time.monotonic())

    def run_plan(self, batch: str, steps: Sequence[Step], models: dict[str, bytes]) -> tuple[dict[int, StepResult], int]:
        """Run ``steps`` on the phone, resuming after dropped links; returns results and reconnects."""
        by_id = {s.id: s for s in steps}
        results: dict[int, StepResult] = {}
        reconnects = 0
        q = shlex.quote
        f = self.facts
        cpus = ",".join(map(str, self.pinned_cpus)) or "-"
        zones = ",".join(map(str, f.cpu_zones())) or "-"
        command = " ".join(q(str(a)) for a in (
            "sh", self._path("agent", "latbench_runner.sh"), "run", self.options.root, batch, self.options.runtime,
            self.mask, self.threads, self.settings.warmup, cpus, zones))
        while True:
            pending = [s for s in steps if s.id not in results]
            if not pending:
                return results, reconnects
            try:
                self._ensure_models(models)
                self._run(f"mkdir -p {q(self._path('batches', batch))}")
                self.conn.push_bytes(("\n".join(s.plan_line() for s in pending) + "\n").encode(),
                                     self._path("batches", batch, "plan"))
                timeout = max(self.options.step_timeout, 4 * self._longest_step_s) * self._timeout_boost
                last = time.monotonic()
                for line in self.conn.stream_lines(command, timeout_s=timeout):
                    before = len(results)
                    self._collect(line, by_id, results, last)
                    if len(results) > before:
                        now = time.monotonic()
                        self._longest_step_s = max(self._longest_step_s, now - last)
                        last = now
            except UnauthorizedError:
                raise
            except AdbLinkError as err:
                if not err.transient or reconnects >= self.options.reconnects:
                    raise
                reconnects += 1
                if err.timeout:
                    self._timeout_boost *= 2
                self.log(f"link to {self.name} lost during batch {batch} ({err}); reconnecting and resuming "
                         f"({len(results)}/{len(steps)} runs done)")
                self.conn.reconnect(self.options.reconnects, log=self.log)
                self._on_phone.clear()
                self.stop_leftovers()
                self._read_finished(batch, by_id, results)
                continue
            except DeviceError:
                # A tool that failed or printed nothing usable, or a plan the runner refused: the rest of the
                # plan is pointless. The models are listed afresh next time: one may have gone from the phone.
                self._on_phone.clear()
                with contextlib.suppress(DeviceError):
                    self.stop_leftovers()
                raise
            missing = [s.id for s in pending if s.id not in results]
            if missing:  # the shell ended without a line for some steps (e.g. the runner was killed)
                if reconnects >= self.options.reconnects:
                    raise DeviceError(f"the runner on {self.name} stopped before steps {missing[:5]} of batch "
                                      f"{batch}; see `latbench android info --device {self.name}`")
                reconnects += 1
                self.stop_leftovers()
                self._read_finished(batch, by_id, results)

    def _cleanup(self, batch: str, models: Sequence[str]) -> None:
        q = shlex.quote
        doomed = [self._path("batches", batch)] + [self._path("models", m) for m in models
                                                   if m != self._reference_name]
        self._run("rm -rf " + " ".join(q(p) for p in doomed))
        self._on_phone.difference_update(models)

    def _batch_name(self) -> str:
        self._batches += 1
        return f"b{int(time.time())}-{self._batches}"

    def _reference(self) -> tuple[str, bytes]:
        model = reference_model(self.model_format, self.settings.reference_net)
        self._reference_name = self._model_name(model)
        return self._reference_name, model

    # ------------------------------------------------------------------------------ the protocol
    @_phone_exclusive
    def measure_reference_nominal(self, invocations: int = 5, runs: int = 40) -> float:
        """The reference network's median latency now (ms): the unit of this device environment."""
        name, model = self._reference()
        steps = [Step(i, "ref", -1, i, name, runs, False) for i in range(invocations)]
        self.cool_down()
        batch = self._batch_name()
        results, _ = self.run_plan(batch, steps, {name: model})
        self._cleanup(batch, [])
        self.reference_ms = float(np.median([r.value_ms for r in results.values()]))
        return self.reference_ms

    def check_formats(self, artifacts: Sequence[Artifact]) -> None:
        wrong = [a.key for a in artifacts if a.format != self.model_format]
        if wrong:
            raise DeviceError(f"{self.name} runs {self.model_format} models with {self.options.tool}; got another "
                              f"format for {wrong[:3]}")

    def _plan(self, names: list[str], artifacts: Sequence[Artifact], rounds: Sequence[tuple[int, int]],
              first_id: int) -> list[Step]:
        """Steps for (round, item) pairs in the given order: the reference right before each item."""
        steps, next_id = [], first_id
        ops = self.options.effective_layer_timing == "ops"
        ref_name = self._reference_name
        for rnd, item in rounds:
            if self.settings.reference:
                steps.append(Step(next_id, "ref", item, rnd, ref_name, self.settings.runs_per_round, False))
                next_id += 1
            steps.append(Step(next_id, "item", item, rnd, names[item], self.settings.runs_per_round,
                              ops and artifacts[item].kind == "layer"))
            next_id += 1
        return steps

    @_phone_exclusive
    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]:
        """Time a batch on the phone with the interleaved reference protocol; one Measurement each."""
        self.check_formats(artifacts)
        if not artifacts:
            return []
        s = self.settings
        models = {self._model_name(a.model): a.model for a in artifacts}
        names = [self._model_name(a.model) for a in artifacts]
        if s.reference:
            ref_name, ref_model = self._reference()
            models[ref_name] = ref_model
            if self.reference_ms is None:
                self.measure_reference_nominal()
        rng = np.random.default_rng(s.seed)
        order = [(rnd, int(i)) for rnd in range(s.rounds) for i in rng.permutation(len(artifacts))]
        steps = self._plan(names, artifacts, order, 0)
        before, cooldown = self.cool_down()
        baseline_cap = min((before.cap_khz.get(c) or 0 for c in self.pinned_cpus), default=0) or None
        batch = self._batch_name()
        conditions = BatchConditions(cooldown_s=round(cooldown, 1))
        results, reconnects = self.run_plan(batch, steps, models)
        conditions.reconnects = reconnects
        # Pairs (ref, item) per (round, item); redo those hit by throttling or a latency jump.
        pairs = self._pairs(steps)
        for _ in range(s.max_retries):
            bad = self._suspect_pairs(pairs, results, baseline_cap)
            if not bad:
                break
            conditions.remeasured_steps += len(bad)
            self.log(f"{len(bad)} of {len(pairs)} runs on {self.name} were throttled (frequency cap fell) or the "
                     f"reference ran >{s.max_slowdown:.0%} slower than its best; cooling down and redoing them")
            _, extra = self.cool_down()
            conditions.cooldown_s = round(conditions.cooldown_s + extra, 1)
            redo = self._plan(names, artifacts, [k for k in pairs if k in bad], max(results) + 1)
            new, more = self.run_plan(batch, redo, models)
            conditions.reconnects += more
            results.update(new)
            for key, redone in self._pairs(redo).items():
                pairs[key] = redone
        conditions.throttled_steps = len(self._suspect_pairs(pairs, results, baseline_cap))
        after = self.snapshot()
        zones = self.facts.cpu_zones()
        conditions.before = before.summary(self.pinned_cpus, zones)
        conditions.after = after.summary(self.pinned_cpus, zones)
        self._cleanup(batch, list(dict.fromkeys(names)))
        return [self._statistics(a, i, pairs, results, conditions) for i, a in enumerate(artifacts)]

    @staticmethod
    def _pairs(steps: Sequence[Step]) -> dict[tuple[int, int], tuple[Step | None, Step]]:
        refs: dict[tuple[int, int], Step] = {}
        out: dict[tuple[int, int], tuple[Step | None, Step]] = {}
        for st in steps:
            if st.role == "ref":
                refs[(st.round, st.item)] = st
            else:
                out[(st.round, st.item)] = (refs.get((st.round, st.item)), st)
        return out

    def _suspect_pairs(self, pairs, results: dict[int, StepResult], baseline_cap: int | None) -> set:
        policy = self.options.thermal
        keys = list(pairs)
        bad = {k for k in keys if policy.throttled(baseline_cap, results[pairs[k][1].id].telemetry)}
        if self.settings.reference and keys:
            ref = np.array([results[pairs[k][0].id].value_ms for k in keys])
            bad |= {k for k, jump in zip(keys, latency_jumps(ref, self.settings.max_slowdown)) if jump}
        return bad

    def _statistics(self, artifact: Artifact, item: int, pairs, results: dict[int, StepResult],
                    batch: BatchConditions) -> Measurement:
        keys = sorted(k for k in pairs if k[1] == item)
        values = np.array([results[pairs[k][1].id].value_ms for k in keys])
        if self.settings.reference:
            refs = np.array([results[pairs[k][0].id].value_ms for k in keys])
            values = values / refs * self.reference_ms
        m = robust_stats(artifact.key, values, self.settings.rounds)
        tele = [results[pairs[k][1].id].telemetry for k in keys]
        conditions = dataclasses.replace(batch, cpu_temp_c=[t.max_temp_c for t in tele],
                                         min_cap_khz=[t.min_cap_khz for t in tele]).to_dict()
        return dataclasses.replace(m, runs=m.runs * self.settings.runs_per_round, conditions=conditions)


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]{message}[/]", highlight=False)


def open_android(spec: str, threads: int = 1, settings: MeasureSettings | None = None,
                 log: Callable[[str], None] | None = None, **options) -> AndroidDevice:
    """``tcp:HOST:PORT[?option=value&…]`` or ``usb[:SERIAL][?…]`` → a connected :class:`AndroidDevice`
    (options: see :class:`AndroidOptions`)."""
    parsed = DeviceSpec.parse(spec)
    target = AdbTarget.parse(parsed.base)
    opts = AndroidOptions.from_options({**parsed.options, **options})
    device = AndroidDevice(target, threads=threads, settings=settings, options=opts, log=log or _warn)
    device.conn.connect()
    return device
