"""One group of a farm as one :class:`~latbench.devices.base.Device`: ``--device farm:FILE`` (or ``--farm FILE``)
works wherever a device does — profiling, validation, table calibration, ``latbench measure`` and the pruning
jobs' measurements — with the work spread over the group's units.

* ``measure(artifacts)`` splits the artifacts into small batches that the units take from one queue
  (:func:`~latbench.farm.work.run_batches`); the results come back in the caller's order.
* ``measure_points_into(items, put)`` is the profiler's streaming path: grid points in batches, each handed to
  ``put`` on the driver (the one store writer) as soon as its unit delivers it.
* Every unit measures the same shared reference points when the group is opened (:mod:`.groups`); outliers are
  kept out unless ``mix_units``; the units and their ratios become part of the environment record, hence of
  every table's provenance (``units``).
* Faults are re-queued and kept in :attr:`FarmGroupDevice.faults` (and printed once each).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

from ..devices.base import Artifact, Measurement, MeasureSettings
from ..devices.spec import DeviceSpec
from .groups import DEFAULT_UNIT_THRESHOLD, DeviceGroup, group_devices, judge_units, unit_ratios
from .spec import Farm, FarmError, load_farm
from .work import Batch, Fault, WorkReport, error_line, run_batches, split

#: Model-independent layer points every unit measures to compare itself with its group: a 3×3 conv, a
#: depthwise conv and a pointwise conv of MobileNet-like sizes.
UNIT_POINTS = (("conv_k3_s1_p1_relu6_in3", (3, 32, 0.0, 32)), ("depthwise_k3_s1_p1_relu6", (64, 64, 0.0, 16)),
               ("pointwise_k1_s1_p0_none", (64, 128, 0.0, 16)))


class FarmGroupDevice:
    """The units of one fingerprint on a farm, measured as one device. Owns a Ray session and the agents;
    :meth:`close` stops them."""

    def __init__(self, farm: Farm, group: str | None = None, threads: int = 1,
                 settings: MeasureSettings | None = None, *, mix_units: bool = False,
                 unit_threshold: float = DEFAULT_UNIT_THRESHOLD, batch_size: int = 4, timeout_s: float = 600.0,
                 max_failures: int = 3, log: Callable[[str], None] | None = None, source: str = "the farm") -> None:
        from ..distributed import ray_session
        from .agents import local_resources, start_agents

        self.farm, self.batch_size, self.timeout_s, self.max_failures = farm, batch_size, timeout_s, max_failures
        self.mix_units, self.unit_threshold = mix_units, unit_threshold
        self.log = log or (lambda text: None)
        self.faults: list[Fault] = []
        self.reports: list[WorkReport] = []
        self.reference_ms: float | None = None
        self._session = ray_session(farm.ray_address, resources=None if farm.ray_address else local_resources(farm))
        self.ray = self._session.__enter__()
        try:
            self.agents = start_agents(self.ray, farm, threads, settings)
            self.group, self.absent = self._choose(group, source)
        except BaseException:
            self.close()
            raise
        ident = self.group.identity
        self.name = f"farm:{ident['name']}×{len(self.group.agents)}"
        self.model_format = ident["model_format"]
        self.channel_multiple = int(ident.get("channel_multiple") or 1)
        self.uses_reference = bool(ident["uses_reference"])
        self._prepared = False

    # ---------------------------------------------------------------- the group
    def _choose(self, wanted: str | None, source: str) -> tuple[DeviceGroup, dict[str, str]]:
        groups, absent = _identify(self.ray, self.agents, self.timeout_s)
        for name, error in absent.items():
            self.log(f"{name}: not available ({error})")
        if not groups:
            raise FarmError(f"no device of {source} could be opened: "
                            + "; ".join(f"{a}: {e}" for a, e in absent.items()))
        if wanted is None and len(groups) > 1:
            raise FarmError(f"{source} has {len(groups)} device groups ("
                            + ", ".join(f"{g.fingerprint}: {', '.join(g.agents)}" for g in groups)
                            + "); one group makes one table: pick one with farm:FILE?group=FINGERPRINT (--group)")
        matching = [g for g in groups if wanted in (None, g.fingerprint)]
        if not matching:
            raise FarmError(f"no device group of {source} has fingerprint {wanted}; its groups: "
                            + ", ".join(g.fingerprint for g in groups))
        return matching[0], absent

    def prepare(self) -> None:
        """Compare the units on the shared reference points (once)."""
        if self._prepared:
            return
        self._prepared = True
        units = self.group.working
        if len(units) < 2:
            self.group.units = {a: {"ratio": 1.0, "outlier": False} for a in units}
            return
        from ..layers import LayerPoint

        items = [(sig, LayerPoint(*p)) for sig, p in UNIT_POINTS]
        refs = {a: self.agents[a].measure_points.remote(items, self.reference_ms) for a in units}
        medians = {}
        for agent, ref in refs.items():
            try:
                medians[agent] = [m.median_ms for m in self.ray.get(ref, timeout=self.timeout_s)]
            except Exception as err:
                self.group.excluded[agent] = f"failed the unit check: {error_line(err)}"
                self.log(f"{agent}: {self.group.excluded[agent]}")
        if medians:
            judge_units(self.group, unit_ratios(medians), self.unit_threshold, self.mix_units)
        for agent, why in self.group.excluded.items():
            self.log(f"{agent}: {why}")

    @property
    def units(self) -> dict[str, dict]:
        """Every unit of the group and how it compared ({"ratio", "outlier"}), plus units kept out and why."""
        out = {a: dict(v) for a, v in self.group.units.items()}
        for agent, why in self.group.excluded.items():
            out.setdefault(agent, {})["excluded"] = why
        return out

    # ---------------------------------------------------------------- the Device protocol
    def fingerprint(self) -> str:
        return self.group.fingerprint

    def environment(self) -> dict:
        return dict(self.group.identity["environment"])

    def backend_settings(self) -> dict:
        return dict(self.group.identity["settings"])

    def measure_reference_nominal(self) -> float:
        agent = self.group.working[0]
        return float(self.ray.get(self.agents[agent].measure_reference_nominal.remote()))

    def measure(self, artifacts: Sequence[Artifact]) -> list[Measurement]:
        """The artifacts spread over the group's units (batches of ``batch_size``), in the caller's order."""
        self.prepare()
        out: list[Measurement | None] = [None] * len(artifacts)
        batches = [Batch(self.group.fingerprint, tuple(range(i, i + len(chunk))))
                   for i, chunk in zip(range(0, len(artifacts), self.batch_size),
                                       split(list(artifacts), self.batch_size))]
        # the agents get the artifacts themselves, the driver keeps their positions
        payload = [Batch(b.group, tuple(artifacts[i] for i in b.items)) for b in batches]

        def keep(index: int, _batch: Batch, result: list) -> None:
            for position, m in zip(batches[index].items, result):
                out[position] = m

        self.run_on_units(payload, "measure_artifacts", keep)
        return out  # type: ignore[return-value]

    def measure_points_into(self, items: Sequence[tuple], put: Callable[[tuple, Measurement], None]) -> None:
        """Grid points in batches over the units; ``put(item, measurement)`` on the driver as each batch
        arrives (the profiler stores it there)."""
        self.prepare()
        batches = [Batch(self.group.fingerprint, chunk) for chunk in split(list(items), self.batch_size)]

        def keep(_index: int, batch: Batch, result: list) -> None:
            for item, m in zip(batch.items, result):
                put(item, m)

        self.run_on_units(batches, "measure_points", keep)

    def run_on_units(self, batches: list[Batch], method: str, keep) -> None:
        """``batches`` on the group's working units (``method`` of the agents), ``keep`` on the driver per result."""
        working = {a: self.agents[a] for a in self.group.working}
        report = run_batches(self.ray, working, {a: self.group.fingerprint for a in working}, batches, method, keep,
                             args={self.group.fingerprint: (self.reference_ms,)}, max_failures=self.max_failures,
                             timeout_s=self.timeout_s, node_alive=self._node_alive, on_fault=self._fault)
        for agent, why in report.quarantined.items():
            self.group.excluded[agent] = f"quarantined: {why}"
        for agent in report.gone:
            self.group.excluded.setdefault(agent, "gone (its node stopped answering)")
        self.reports.append(report)

    def _fault(self, fault: Fault) -> None:
        self.faults.append(fault)
        self.log(f"{fault.agent}: {fault.kind} ({fault.error}); its batch goes to another unit")

    def _node_alive(self, agent: str) -> bool:
        node = agent.split("/", 1)[0]
        resource = f"latbench-node:{node}"
        return any(n.get("Alive") and resource in (n.get("Resources") or {}) for n in self.ray.nodes())

    def work_summary(self) -> dict[str, Any]:
        """Batches per unit, re-queued batches, faults, quarantined and lost units of this device's runs."""
        done: dict[str, int] = {}
        for r in self.reports:
            for agent, n in r.done_by.items():
                done[agent] = done.get(agent, 0) + n
        return {"group": self.group.fingerprint, "units": self.units, "batches_by_unit": done,
                "requeued": sum(r.requeued for r in self.reports),
                "faults": [f for r in self.reports for f in r.to_dict()["faults"]],
                "absent": self.absent}

    def close(self) -> None:
        agents = getattr(self, "agents", {})
        for agent in agents.values():
            try:
                self.ray.kill(agent)
            except Exception:
                pass
        self.agents = {}
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None


def _identify(ray, agents: dict, timeout_s: float) -> tuple[list[DeviceGroup], dict[str, str]]:
    """Ask every agent for its identity; group them by fingerprint (absent devices with their errors)."""
    refs = {name: agent.identity.remote() for name, agent in agents.items()}
    identities, errors = {}, {}
    for name, ref in refs.items():
        try:
            identities[name] = ray.get(ref, timeout=timeout_s)
        except Exception as err:            # a device that cannot be opened is reported, the others work
            identities[name], errors[name] = None, error_line(err)
    return group_devices(identities, errors)


def farm_groups(farm: Farm, timeout_s: float = 600.0) -> tuple[list[DeviceGroup], dict[str, str]]:
    """The device groups of ``farm`` (one per fingerprint) and the devices that could not be opened."""
    from ..distributed import ray_session
    from .agents import local_resources, start_agents

    with ray_session(farm.ray_address, resources=None if farm.ray_address else local_resources(farm)) as ray:
        agents = start_agents(ray, farm)
        try:
            return _identify(ray, agents, timeout_s)
        finally:
            for agent in agents.values():
                ray.kill(agent)


def farm_device_spec(farm: str | Path, group: str | None = None, mix_units: bool = False) -> str:
    """The device spec ``farm:FILE[?group=…&mix_units=1]`` the commands' ``--farm`` options stand for."""
    query = {k: v for k, v in (("group", group), ("mix_units", "1" if mix_units else None)) if v}
    return f"farm:{farm}" + (f"?{urlencode(query)}" if query else "")



def open_farm_device(spec: str, threads: int = 1, settings: MeasureSettings | None = None,
                     **options: Any) -> FarmGroupDevice:
    """``farm:FILE[?group=FINGERPRINT&mix_units=1&unit_threshold=0.1&batch=4&timeout=600]``."""
    parsed = DeviceSpec.parse(spec)
    path, params = parsed.base.removeprefix("farm:"), parsed.options
    known = {"group", "mix_units", "unit_threshold", "batch", "timeout"}
    unknown = parsed.unknown(known)
    if unknown:
        raise FarmError(f"unknown farm device option {unknown[0]!r} in {spec!r}; known: {', '.join(sorted(known))}")
    try:
        kwargs = dict(group=params.get("group") or options.pop("group", None),
                      mix_units=params.get("mix_units", str(options.pop("mix_units", False))).lower()
                      in ("1", "true", "yes"),
                      unit_threshold=float(params.get("unit_threshold", options.pop("unit_threshold",
                                                                                     DEFAULT_UNIT_THRESHOLD))),
                      batch_size=int(params.get("batch", options.pop("batch_size", 4))),
                      timeout_s=float(params.get("timeout", options.pop("timeout_s", 600.0))))
    except ValueError as err:
        raise FarmError(f"bad farm device option in {spec!r}: {err}") from None
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    return FarmGroupDevice(load_farm(path), threads=threads, settings=settings, source=path,
                           log=lambda text: console.print(f"[yellow]farm:[/] {escape(text)}", highlight=False),
                           **kwargs, **options)


__all__ = ["FarmGroupDevice", "UNIT_POINTS", "farm_device_spec", "farm_groups", "open_farm_device"]
