"""Work distribution over a farm's device agents: a queue of batches on the driver, taken by whichever agent of
the batch's group is free (work stealing from one shared queue: a fast phone simply takes more batches), with
every fault re-queued and reported.

* **A device error** (phone unplugged mid-batch, tool crash): the batch goes back to the front of the queue and
  to a sibling of the same group if one is free; the agent reconnects on its next batch (its constructor and
  :meth:`~latbench.farm.agents.DeviceAgent.connect` reopen the device), so a phone that comes back rejoins.
  After ``max_failures`` failures in a row it is quarantined with its last error.
* **An agent that died** (its process was killed): Ray restarts it (``max_restarts=-1``), its batch is re-queued.
  While Ray restarts it, calls fail at once as "temporarily unavailable": those are re-queued too but do not count
  as failures; the agent gets no work for a back-off (1, 2, 4 … 30 s) and is given up (gone) only when it has been
  unavailable for ``timeout_s`` (a restart takes seconds, longer on a loaded machine).
* **A node lost**: its agents cannot come back; a batch that outlives ``timeout_s`` on a dead node marks its
  devices gone and is re-queued.

Results go to ``on_result`` on the driver, the only process that writes the store: a batch counts as done only
once its results are handed over, so killing anything loses at most the batches in flight, and a rerun measures
exactly what the store lacks.
"""
from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

from ..recipe import Choice
from .spec import FarmError


class FaultKind(Choice):
    DEVICE_ERROR = "device error"
    AGENT_DIED = "agent died"
    TIMEOUT = "timeout"
    NODE_LOST = "node lost"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class Fault:
    """One fault: which agent, what happened to which batch, the error, when (seconds into the run)."""

    agent: str
    kind: FaultKind
    batch: int
    error: str
    at_s: float


@dataclass(frozen=True)
class Batch:
    """A unit of work for one agent of ``group``: ``items`` go to the agent's ``method``."""

    group: Hashable
    items: tuple


@dataclass
class WorkReport:
    """What a distributed run did: batches done per agent, every fault, the quarantined and lost agents, and
    batches whose results were not needed any more (another agent had delivered them: never stored twice)."""

    batches: int = 0
    done_by: dict[str, int] = field(default_factory=dict)
    requeued: int = 0
    faults: list[Fault] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["faults"] = [{**asdict(f), "kind": str(f.kind)} for f in self.faults]
        return out


class _Never(Exception):
    """Stands for an exception type this Ray does not have (nothing raises it)."""


def _ray_errors(ray) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(errors meaning the agent's process died, errors raised by the work itself)."""
    exc = ray.exceptions
    died = tuple(getattr(exc, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                            "WorkerCrashedError") if hasattr(exc, n))
    return died, (exc.RayTaskError,)


def error_line(err: BaseException) -> str:
    """A Ray error as one line: the type and last line of what the device or agent raised."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def run_batches(ray, agents: Mapping[str, Any], group_of: Mapping[str, Hashable], batches: Sequence[Batch],
                method: str, on_result: Callable[[int, Batch, Any], None], *, args: Mapping[Hashable, tuple] = {},
                max_failures: int = 3, timeout_s: float = 600.0, node_alive: Callable[[str], bool] | None = None,
                on_fault: Callable[[Fault], None] | None = None, poll_s: float = 1.0,
                backoff_s: float = 1.0) -> WorkReport:
    """Run every batch on an agent of its group (``agents``: name → actor handle; ``group_of``: name → group),
    calling ``agent.<method>.remote(batch.items, *args[group])``; ``on_result(index, batch, result)`` on the
    driver as each finishes. Raises :class:`FarmError` when a group's work is left with no working agent.
    ``backoff_s``: the first wait before an agent Ray is restarting gets work again (doubling, at most 30 s)."""
    died_errors, task_errors = _ray_errors(ray)
    unavailable_errors = tuple(e for e in died_errors if e.__name__ == "ActorUnavailableError") or (_Never,)
    t0 = time.monotonic()
    report = WorkReport(batches=len(batches), done_by={a: 0 for a in agents})
    queue = collections.deque(range(len(batches)))
    done: set[int] = set()
    avoid: dict[int, str] = {}                       # a re-queued batch goes to a sibling first
    failures = collections.Counter()
    unavailable_since: dict[str, float] = {}         # agents Ray is restarting: since when, and
    cooling: dict[str, float] = {}                   # no work for them before this time (back-off)
    healthy = set(agents)
    pending: dict[Any, tuple[str, int, float]] = {}  # object ref → (agent, batch index, started)
    busy: set[str] = set()

    def fault(agent: str, kind: FaultKind, index: int, error: str) -> None:
        f = Fault(agent, kind, index, error, round(time.monotonic() - t0, 3))
        report.faults.append(f)
        if on_fault:
            on_fault(f)

    def requeue(index: int, agent: str) -> None:
        if index not in done:
            queue.appendleft(index)
            avoid[index] = agent
            report.requeued += 1

    def take(agent: str) -> int | None:
        group = group_of[agent]
        siblings_free = any(a != agent and a in healthy and a not in busy and group_of[a] == group for a in agents)
        for index in queue:
            if batches[index].group == group and not (avoid.get(index) == agent and siblings_free):
                queue.remove(index)
                return index
        return None

    while queue or pending:
        now = time.monotonic()
        for agent in sorted(healthy - busy):
            if cooling.get(agent, 0.0) > now:
                continue
            index = take(agent)
            if index is None:
                continue
            batch = batches[index]
            ref = getattr(agents[agent], method).remote(list(batch.items), *args.get(batch.group, ()))
            pending[ref] = (agent, index, time.monotonic())
            busy.add(agent)
        orphaned = {batches[i].group for i in queue} - {group_of[a] for a in healthy}
        if orphaned and not pending:
            lost = {a: report.quarantined.get(a, "gone") for a in agents if group_of[a] in orphaned}
            raise FarmError(f"no working device is left for group {sorted(map(str, orphaned))[0]}: "
                            + "; ".join(f"{a}: {e}" for a, e in lost.items())
                            + ". What was measured is kept: fix the devices and run the same command again")
        if not pending:
            waits = [t - time.monotonic() for a, t in cooling.items() if a in healthy]
            time.sleep(min([poll_s, *[w for w in waits if w > 0]]) if waits else 0.0)
            continue
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
        for ref in ready:
            agent, index, _ = pending.pop(ref)
            busy.discard(agent)
            try:
                result = ray.get(ref)
            except unavailable_errors as err:        # Ray is restarting the agent: it comes back
                now = time.monotonic()
                since = unavailable_since.setdefault(agent, now)
                cooling[agent] = now + min(30.0, backoff_s * 2.0 ** min(5, int((now - since) / backoff_s).bit_length()))
                fault(agent, FaultKind.AGENT_DIED, index, error_line(err))
                requeue(index, agent)
                if now - since > timeout_s and agent in healthy:
                    healthy.discard(agent)
                    report.gone.append(agent)
                    fault(agent, FaultKind.TIMEOUT, index, f"unavailable for more than {timeout_s:g} s")
                continue
            except died_errors as err:
                failures[agent] += 1
                fault(agent, FaultKind.AGENT_DIED, index, error_line(err))
                requeue(index, agent)
            except task_errors as err:
                failures[agent] += 1
                fault(agent, FaultKind.DEVICE_ERROR, index, error_line(err))
                requeue(index, agent)
            else:
                failures[agent] = 0
                unavailable_since.pop(agent, None)
                cooling.pop(agent, None)
                if index not in done:
                    done.add(index)
                    report.done_by[agent] += 1
                    on_result(index, batches[index], result)
                continue
            if failures[agent] >= max_failures and agent in healthy:
                healthy.discard(agent)
                report.quarantined[agent] = report.faults[-1].error
                fault(agent, FaultKind.QUARANTINED, index, f"{failures[agent]} failures in a row; last: "
                                                           f"{report.faults[-1].error}")
        now = time.monotonic()
        for ref, (agent, index, started) in list(pending.items()):
            if now - started <= timeout_s:
                continue
            pending.pop(ref)
            busy.discard(agent)
            healthy.discard(agent)
            node_gone = node_alive is not None and not node_alive(agent)
            kind = FaultKind.NODE_LOST if node_gone else FaultKind.TIMEOUT
            fault(agent, kind, index, f"no answer within {timeout_s:g} s")
            report.gone.append(agent)
            requeue(index, agent)
    report.seconds = time.monotonic() - t0
    return report


def split(items: Sequence, size: int) -> list[tuple]:
    """``items`` in consecutive chunks of at most ``size``."""
    return [tuple(items[i:i + size]) for i in range(0, len(items), max(1, size))]


__all__ = ["Batch", "Fault", "FaultKind", "WorkReport", "error_line", "run_batches", "split"]
