"""Parsers for the text the phone-side benchmark tools print.

TFLite's ``benchmark_model`` has changed its output over the years; all known generations are read:

* TF 2.x: ``count=50 first=… curr=… min=… max=… avg=2.95034e+06 std=109798`` (one line for the warm-up,
  one for the regular runs; large values in scientific notation) and
  ``Inference timings in us: Init: …, First inference: …, Warmup (avg): …, Inference (avg): …``;
* TF 1.x: ``Average inference timings in us: Warmup: …, Init: …, no stats: …``;
* builds that stop after the ``count=`` lines (e.g. TF 2.1 with memory reports);
* lines prefixed by ``INFO: ``, by logcat (``threadtime`` and ``brief`` formats) or by absl/glog
  (``I0102 03:04:05.678901  123 file.cc:45] ``);
* ``--enable_op_profiling=true`` tables (TAB-separated columns) per section ("Profiling Info for
  Benchmark Initialization", "Operator-wise Profiling Info for Regular Benchmark Runs", …).

onnxruntime's ``onnxruntime_perf_test`` prints ``Average inference time cost: 19.918 ms``, ``Total
inference requests: 100`` and, in newer builds, ``P50 Latency: 0.0199047 s`` with units that differ
from line to line; every value is converted to milliseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PREFIXES = [
    re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+ [VDIWEF] [^:]*: "),  # logcat -v threadtime
    re.compile(r"^[VDIWEF]/[^(]*\(\s*\d+\): "),                                  # logcat -v brief
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] "),             # absl / glog
    re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): "),                            # TFLite's own logger
]
_UNITS_MS = {"s": 1e3, "sec": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}


class ParseError(ValueError):
    """Tool output without the numbers latbench needs; the message quotes what was seen."""


def strip_prefix(line: str) -> str:
    """``line`` without a logcat / absl / ``INFO:`` prefix (at most one of each, outermost first)."""
    line = line.rstrip("\r\n")
    for pattern in _PREFIXES:
        line = pattern.sub("", line, count=1)
    return line


def clean_lines(text: str) -> list[str]:
    return [strip_prefix(line) for line in text.replace("\r\n", "\n").split("\n")]


def _number(value: str) -> float:
    return float(value)


def _key_values(text: str) -> dict[str, float]:
    """``key=value`` pairs (``count=50 avg=2.95e+06``) → floats."""
    return {k: _number(v) for k, v in re.findall(rf"(\w+)=({NUMBER})", text)}


def _excerpt(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " …"


# --------------------------------------------------------------------------------------------- TFLite

@dataclass(frozen=True)
class RunStats:
    """One ``count=… avg=…`` line of benchmark_model (microseconds)."""

    count: int
    avg_us: float
    std_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    first_us: float | None = None
    curr_us: float | None = None

    @classmethod
    def from_line(cls, line: str) -> "RunStats":
        kv = _key_values(line)
        if "count" not in kv:
            raise ParseError(f"no count= in {line!r}")
        avg = kv.get("avg", kv.get("curr"))  # a single run prints only count=1 curr=…
        if avg is None:
            raise ParseError(f"no avg= or curr= in {line!r}")
        return cls(int(kv["count"]), avg, kv.get("std"), kv.get("min"), kv.get("max"), kv.get("first"), kv.get("curr"))


@dataclass(frozen=True)
class OpRow:
    """One row of an op-profiling table (times in ms)."""

    node_type: str
    start_ms: float
    first_ms: float
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int
    name: str


@dataclass(frozen=True)
class OpProfile:
    """One profiling section: its "Run Order" rows and its ``Timings (microseconds)`` line."""

    title: str
    rows: list[OpRow]
    timings: RunStats | None = None

    @property
    def total_avg_ms(self) -> float:
        """Sum of the average time of every node, as run: the model's kernels without the runtime's
        per-invocation overhead."""
        return float(sum(r.avg_ms for r in self.rows))


REGULAR_RUNS = "Operator-wise Profiling Info for Regular Benchmark Runs"


@dataclass(frozen=True)
class BenchmarkModelResult:
    """What one ``benchmark_model`` run printed."""

    runs: list[RunStats]                      # the top-level count= lines, in order (warm-up, regular)
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None     # "Inference (avg)" (TF 2.x) / "no stats" (TF 1.x)
    profiles: dict[str, OpProfile] = field(default_factory=dict)

    @property
    def regular(self) -> RunStats | None:
        """Statistics of the regular (timed) runs: the last top-level count= line."""
        return self.runs[-1] if self.runs else None

    @property
    def latency_ms(self) -> float:
        """Mean latency of one whole run (ms)."""
        if self.inference_avg_us is not None:
            return self.inference_avg_us / 1e3
        if self.regular is not None:
            return self.regular.avg_us / 1e3
        prof = self.profiles.get(REGULAR_RUNS)
        if prof is not None and prof.timings is not None:   # an op-profile excerpt on its own
            return prof.timings.avg_us / 1e3
        raise ParseError("benchmark_model printed no timings")

    @property
    def ops_ms(self) -> float:
        """Mean time of the model's nodes per run (ms), from ``--enable_op_profiling=true``."""
        prof = self.profiles.get(REGULAR_RUNS)
        if prof is None or not prof.rows:
            raise ParseError("benchmark_model printed no op profile for the regular runs; "
                             "run it with --enable_op_profiling=true (or time layers with layer_timing=run)")
        return prof.total_avg_ms


_TIMINGS_TF2 = re.compile(r"Inference timings in us:(.*)")
_TIMINGS_TF1 = re.compile(r"Average inference timings in us:(.*)")
_PROFILE_TITLE = re.compile(r"^(.*Profiling Info.*?):?\s*$")
_TABLE_HEADER = re.compile(r"^=+ (.+?) =+$")


def _labelled(fields: str) -> dict[str, float]:
    """``Init: 17187, First inference: 3512391, Warmup (avg): 3.5e+06`` → {label: value}."""
    return {k.strip().lower(): _number(v) for k, v in re.findall(rf"([A-Za-z][A-Za-z ()]*):\s*({NUMBER})", fields)}


def _op_row(line: str) -> OpRow | None:
    cells = [c.strip() for c in line.split("\t")]
    cells = [c for c in cells if c != ""] if cells and cells[0] == "" else cells
    if len(cells) < 9 or cells[0].startswith("["):
        return None
    try:
        return OpRow(cells[0], float(cells[1]), float(cells[2]), float(cells[3]), float(cells[4].rstrip("%")),
                     float(cells[5].rstrip("%")), float(cells[6]), int(float(cells[7])), "\t".join(cells[8:]))
    except ValueError:
        return None


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """Parse the output of TFLite's ``benchmark_model`` (any known generation, any log prefix)."""
    runs: list[RunStats] = []
    labels: dict[str, float] = {}
    profiles: dict[str, OpProfile] = {}
    title: str | None = None
    table: str | None = None
    rows: list[OpRow] = []

    def close_profile(timings: RunStats | None = None) -> None:
        nonlocal title, rows, table
        if title is not None:
            profiles[title] = OpProfile(title, rows, timings)
        title, rows, table = None, [], None

    for line in clean_lines(text):
        stripped = line.strip()
        if (m := _PROFILE_TITLE.match(stripped)) and "=" not in stripped:
            close_profile()   # a section without a Timings line ends where the next one starts
            title = m.group(1).strip()
            continue
        if title is not None:
            if m := _TABLE_HEADER.match(stripped):
                table = m.group(1)
            elif stripped.startswith("Timings (microseconds):"):
                close_profile(RunStats.from_line(stripped))
            elif table == "Run Order" and (row := _op_row(line)) is not None:
                rows.append(row)
            continue
        if stripped.startswith("count="):
            runs.append(RunStats.from_line(stripped))
        elif m := _TIMINGS_TF1.search(stripped):
            tf1 = _labelled(m.group(1))
            labels.update({"init": tf1.get("init"), "warmup (avg)": tf1.get("warmup"),
                           "inference (avg)": tf1.get("no stats")})
        elif m := _TIMINGS_TF2.search(stripped):
            labels.update(_labelled(m.group(1)))
    close_profile()
    if not runs and labels.get("inference (avg)") is None and not profiles:
        raise ParseError(f"no benchmark_model timings in the output: {_excerpt(text)!r}")
    return BenchmarkModelResult(runs, labels.get("init"), labels.get("first inference"), labels.get("warmup (avg)"),
                                labels.get("inference (avg)"), profiles)


# ------------------------------------------------------------------------------------ onnxruntime

@dataclass(frozen=True)
class PerfTestResult:
    """What one ``onnxruntime_perf_test`` run printed (all times in ms)."""

    average_ms: float
    requests: int | None = None
    session_creation_ms: float | None = None
    latencies_ms: dict[str, float] = field(default_factory=dict)   # "min", "max", "p50", "p90", …

    @property
    def latency_ms(self) -> float:
        return self.average_ms


_PERF_LINE = re.compile(rf"^(?P<label>[A-Za-z][A-Za-z0-9 ]*?)\s*:\s*(?P<value>{NUMBER})\s*(?P<unit>[a-zµ]+)?\s*$")


def _to_ms(value: str, unit: str | None, line: str) -> float:
    if unit is None or unit not in _UNITS_MS:
        raise ParseError(f"no time unit in {line!r}")
    return _number(value) * _UNITS_MS[unit]


def parse_perf_test(text: str) -> PerfTestResult:
    """Parse the output of onnxruntime's ``onnxruntime_perf_test``; mixed units become milliseconds."""
    average = session = None
    requests = None
    latencies: dict[str, float] = {}
    for line in clean_lines(text):
        m = _PERF_LINE.match(line.strip())
        if not m:
            continue
        label, value, unit = m.group("label").strip().lower(), m.group("value"), m.group("unit")
        if label == "average inference time cost":
            average = _to_ms(value, unit, line)
        elif label == "session creation time cost":
            session = _to_ms(value, unit, line)
        elif label in ("total inference requests", "runs"):
            requests = int(float(value))
        elif label.endswith(" latency"):
            latencies[label[: -len(" latency")]] = _to_ms(value, unit, line)
    if average is None:
        if "p50" not in latencies:
            raise ParseError(f"no onnxruntime_perf_test timings in the output: {_excerpt(text)!r}")
        average = latencies["p50"]
    return PerfTestResult(average, requests, session, latencies)


def parse_tool_output(tool: str, text: str) -> BenchmarkModelResult | PerfTestResult:
    """Dispatch on the tool name used by the runner (``tflite`` or ``onnxruntime``)."""
    if tool == "tflite":
        return parse_benchmark_model(text)
    if tool == "onnxruntime":
        return parse_perf_test(text)
    raise ValueError(f"unknown tool {tool!r}")
