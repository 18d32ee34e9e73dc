"""Stand-in for TensorFlow Lite's ``benchmark_model`` on the loopback phone.

Takes the real tool's flags (``--graph=``, ``--num_threads=``, ``--warmup_runs=``, ``--num_runs=``,
``--min_secs=``, ``--max_secs=``, ``--warmup_min_secs=``, ``--run_delay=``, ``--use_xnnpack=``,
``--enable_op_profiling=`` …), really runs the model with ai-edge-litert on this host and logs
like a recent benchmark_model: ``INFO: `` prefixed lines on stderr, the ``count=… first=… curr=…
min=… max=… avg=… std=…`` run statistics (C++ stream number format), the ``Inference timings in
us`` summary and, with op profiling, the TAB-separated profiler tables.

Two things are not measured but derived, and are documented as such: the op-profiling rows split
each measured run over the graph's ops in proportion to their arithmetic cost (LiteRT's Python API
has no per-op profiler), and every timed run is stretched by the simulated CPU clock
(``cpuinfo_max_freq / scaling_cur_freq`` of the CPUs ``taskset`` chose), so throttling shows up in
the latency like on a phone. Unknown flags are an error (exit 1) so that client bugs surface.
"""
from __future__ import annotations

import math
import os
import sys
import time

from latbench.testing.phone_tools._common import clock_stretch, cxx, peak_rss_bytes, timed  # inlined when pushed

FLAGS = {  # name: (type, default); bools accept true/false/1/0 and a bare --flag
    "graph": (str, ""), "num_threads": (int, -1), "warmup_runs": (int, 1), "num_runs": (int, 50),
    "min_secs": (float, 1.0), "max_secs": (float, 150.0), "warmup_min_secs": (float, 0.5),
    "run_delay": (float, -1.0), "use_xnnpack": (bool, True), "enable_op_profiling": (bool, False),
    "max_profiling_buffer_entries": (int, 1024), "profiling_output_csv_file": (str, ""),
    "verbose": (bool, False), "use_gpu": (bool, False), "use_nnapi": (bool, False), "use_hexagon": (bool, False),
    "allow_fp16": (bool, False), "report_peak_memory_footprint": (bool, False), "benchmark_name": (str, ""),
    "output_prefix": (str, ""), "input_layer": (str, ""), "input_layer_shape": (str, ""),
    "print_preinvoke_state": (bool, False), "print_postinvoke_state": (bool, False), "help": (bool, False),
}
LABELS = {"num_threads": "Num threads", "graph": "Graph", "warmup_runs": "Min warmup runs",
          "num_runs": "Min num runs", "min_secs": "Min runs duration (seconds)",
          "max_secs": "Max runs duration (seconds)", "warmup_min_secs": "Min warmup runs duration (seconds)",
          "run_delay": "Inter-run delay (seconds)", "use_xnnpack": "Use xnnpack",
          "enable_op_profiling": "Enable op profiling", "verbose": "Log parameter values verbosely"}


class UsageError(Exception):
    pass


def log(text=""):
    """One TFLITE_LOG(INFO) call: "INFO: " before the first line only, as the real logger does."""
    sys.stderr.write(("INFO: " + text if text else "") + "\n")


def parse_flags(argv):
    values = {name: default for name, (_, default) in FLAGS.items()}
    given = []
    for arg in argv:
        name, eq, raw = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name not in FLAGS:
            raise UsageError(f"Unconsumed cmdline flags: {arg}")
        kind = FLAGS[name][0]
        try:
            if kind is bool:
                if raw.lower() not in ("", "true", "false", "1", "0") or (not eq and raw):
                    raise ValueError(raw)
                values[name] = raw.lower() in ("", "true", "1")
            else:
                values[name] = kind(raw)
        except ValueError:
            raise UsageError(f"Couldn't interpret value {raw!r} for flag {name}.") from None
        given.append(name)
    return values, given


class Stat:
    """tensorflow::Stat<int64_t>: the numbers behind ``count=… first=… curr=…``."""

    def __init__(self, samples_us):
        self.samples = [round(s) for s in samples_us]

    def __str__(self):
        s = self.samples
        if not s:
            return "count=0"
        if min(s) == max(s):
            return f"count={len(s)} curr={s[-1]}" + ("(all same)" if len(s) > 1 else "")
        avg = sum(s) / len(s)
        std = round(math.sqrt(max(sum(x * x for x in s) / len(s) - avg * avg, 0.0)))
        return f"count={len(s)} first={s[0]} curr={s[-1]} min={min(s)} max={max(s)} avg={cxx(avg)} std={std}"

    @property
    def avg(self):
        return sum(self.samples) / len(self.samples) if self.samples else 0.0


def run_phase(interpreter, min_runs, min_secs, max_secs, delay, stretch):
    log(f"Running benchmark for at least {min_runs} iterations and at least {cxx(min_secs)} seconds but "
        f"terminate if exceeding {cxx(max_secs)} seconds.")
    samples, start = [], time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_runs and elapsed >= min_secs) or (samples and elapsed >= max_secs):
            break
        samples.append(timed(interpreter.invoke, stretch) * 1e6)
        if delay > 0:
            time.sleep(delay)
    stat = Stat(samples)
    log(str(stat))
    log()
    return stat


# ------------------------------------------------------------------------------------ op profile
def op_costs(interpreter):
    """(type, name, cost) per op: MACs for convolutions and fully connected layers, elements otherwise."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def size(index):
        return math.prod(int(d) for d in tensors[index]["shape"]) if index in tensors else 0

    rows = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":  # the XNNPACK kernel standing for ops listed on their own
            continue
        kind, inputs, outputs = op["op_name"], [int(i) for i in op["inputs"]], [int(i) for i in op["outputs"]]
        out = sum(size(i) for i in outputs)
        weights = [int(d) for d in tensors[inputs[1]]["shape"]] if len(inputs) > 1 and inputs[1] in tensors else []
        if kind == "CONV_2D" and len(weights) == 4:
            cost = out * weights[1] * weights[2] * weights[3]
        elif kind == "DEPTHWISE_CONV_2D" and len(weights) == 4:
            cost = out * weights[1] * weights[2]
        elif kind == "FULLY_CONNECTED" and len(weights) == 2:
            cost = out * weights[1]
        else:
            cost = out + sum(size(i) for i in inputs if i >= 0)
        names = ", ".join(tensors[i]["name"] for i in outputs if i in tensors)
        rows.append((kind, f"[{names}]:{op['index']}", max(cost, 1)))
    return rows


HEADER = "\t" + "\t".join(["[node type]".rjust(24), "[start]".rjust(17), "[first]".rjust(9), "[avg ms]".rjust(9),
                           "[%]".rjust(8), "[cdf%]".rjust(8), "[mem KB]".rjust(10), "[times called]", "[Name]"])
TYPE_HEADER = "\t" + "\t".join(["[Node type]".rjust(24), "[count]".rjust(9), "[avg ms]".rjust(10),
                                "[avg %]".rjust(11), "[cdf %]".rjust(11), "[mem KB]".rjust(10), "[times called]"])


def profile_tables(title, nodes, run_stat):
    """StatSummarizer's text: nodes are (type, name, start_ms, first_ms, avg_ms, times_called)."""
    total = sum(n[4] for n in nodes) or 1.0

    def node_rows(ordered):
        rows, cdf = [], 0.0
        for kind, name, start, first, avg, called in ordered:
            pct = 100.0 * avg / total
            cdf += pct
            rows.append("\t" + "\t".join([kind.rjust(24), f"{start:17.3f}", f"{first:9.3f}", f"{avg:9.3f}",
                                          f"{pct:7.3f}%", f"{cdf:7.3f}%", f"{0.0:10.3f}", f"{called:9d}", name]))
        return rows

    by_type = {}
    for kind, _, _, _, avg, called in nodes:
        count, ms, calls = by_type.get(kind, (0, 0.0, 0))
        by_type[kind] = (count + 1, ms + avg, calls + called)
    type_rows, cdf = [], 0.0
    for kind, (count, ms, calls) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        pct = 100.0 * ms / total
        cdf += pct
        type_rows.append("\t" + "\t".join([kind.rjust(24), f"{count:9d}", f"{ms:10.3f}", f"{pct:10.3f}%",
                                           f"{cdf:10.3f}%", f"{0.0:10.3f}", f"{calls:9d}"]))
    bar = "=" * 30
    lines = [f"{title}:", f"{bar} Run Order {bar}", HEADER, *node_rows(nodes), "",
             f"{bar} Top by Computation Time {bar}", HEADER,
             *node_rows(sorted(nodes, key=lambda n: -n[4])[:10]), "",
             f"Number of nodes executed: {len(nodes)}", f"{bar} Summary by node type {bar}", TYPE_HEADER,
             *type_rows, "", f"Timings (microseconds): {run_stat}", "Memory (bytes): count=0",
             f"{len(nodes)} nodes observed", "", ""]
    return "\n".join(lines)


def op_profile(interpreter, stat):
    costs = op_costs(interpreter)
    total_cost = sum(c for _, _, c in costs)
    avg_ms, first_ms = stat.avg / 1e3, stat.samples[0] / 1e3
    nodes, start = [], 0.0
    for kind, name, cost in costs:
        share = cost / total_cost
        nodes.append((kind, name, start, first_ms * share, avg_ms * share, 1))
        start += avg_ms * share
    return nodes


# ------------------------------------------------------------------------------------------ main
def random_inputs(interpreter, np):
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        shape, dtype = detail["shape"], np.dtype(detail["dtype"])
        if dtype.kind == "f":
            data = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(max(info.min, -128), min(info.max, 127), size=shape, dtype=dtype, endpoint=True)
        interpreter.set_tensor(detail["index"], data)


def benchmark(flags, given):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    log("STARTING!")
    log(f"Log parameter values verbosely: [{int(flags['verbose'])}]")
    for name in given:
        if name in LABELS and name != "verbose":
            value = flags[name]
            log(f"{LABELS[name]}: [{int(value) if isinstance(value, bool) else cxx(value) if isinstance(value, float) else value}]")
    for accelerator in ("use_gpu", "use_nnapi", "use_hexagon"):
        if flags[accelerator]:
            log(f"ERROR: {accelerator[4:].upper()} acceleration is unsupported on the loopback phone.")
            return 1
    graph = flags["graph"]
    if not graph:
        sys.stderr.write("ERROR: Please specify the name of your TF Lite input file with --graph\n")
        return 1
    if not os.path.isfile(graph):
        sys.stderr.write(f"ERROR: Could not open '{graph}'.\nERROR: Failed to mmap model {graph}\n")
        return 1
    threads = flags["num_threads"]
    if threads > 0:
        log(f"#threads used for CPU inference: [{threads}]")
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    log(f"Loaded model {graph}")
    resolver = OpResolverType.AUTO if flags["use_xnnpack"] else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_path=graph, num_threads=threads if threads > 0 else None,
                                  experimental_op_resolver_type=resolver)
    except ValueError as err:
        sys.stderr.write(f"ERROR: Failed to construct interpreter: {err}\n")
        return 1
    t1 = time.perf_counter()
    interpreter.allocate_tensors()
    t2 = time.perf_counter()
    init_us = int((t2 - t0) * 1e6)
    log(f"The input model file size (MB): {cxx(os.path.getsize(graph) / 1e6)}")
    log(f"Initialized session in {cxx(init_us / 1e3)}ms.")
    random_inputs(interpreter, np)
    rss_init = peak_rss_bytes()

    stretch = clock_stretch()
    warm = run_phase(interpreter, flags["warmup_runs"], flags["warmup_min_secs"], flags["max_secs"],
                     flags["run_delay"], stretch)
    regular = run_phase(interpreter, flags["num_runs"], flags["min_secs"], flags["max_secs"],
                        flags["run_delay"], stretch)
    first = warm.samples[0] if warm.samples else 0
    log(f"Inference timings in us: Init: {init_us}, First inference: {first}, Warmup (avg): {cxx(warm.avg)}, "
        f"Inference (avg): {cxx(regular.avg)}")
    log("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
        "actual memory footprint of the model at runtime. Take the information at your discretion.")
    log(f"Memory footprint delta from the start of the tool (MB): init={cxx((rss_init - rss0) / 2**20)} "
        f"overall={cxx((peak_rss_bytes() - rss0) / 2**20)}")
    if flags["enable_op_profiling"]:
        init_nodes = [("AllocateTensors", "AllocateTensors/0", (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t1) * 1e3, 1)]
        if flags["use_xnnpack"]:
            init_nodes.insert(0, ("ModifyGraphWithDelegate", "ModifyGraphWithDelegate/0", 0.0, (t1 - t0) * 1e3,
                                  (t1 - t0) * 1e3, 1))
        init_stat = Stat([sum(n[4] for n in init_nodes) * 1e3])
        log(profile_tables("Profiling Info for Benchmark Initialization", init_nodes, init_stat) + "\n\n"
            + profile_tables("Operator-wise Profiling Info for Regular Benchmark Runs",
                             op_profile(interpreter, regular), regular))
    return 0


def main(argv=None):
    try:
        flags, given = parse_flags(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        sys.stderr.write(f"ERROR: {err}\n")
        return 1
    if flags["help"]:
        sys.stderr.write("usage: benchmark_model --graph=MODEL.tflite [--num_threads=N] [--warmup_runs=N] "
                         "[--num_runs=N] [--min_secs=S] [--max_secs=S] [--use_xnnpack=true|false] "
                         "[--enable_op_profiling=true]\n")
        return 0
    return benchmark(flags, given)


if __name__ == "__main__":
    sys.exit(main())
