"""Stand-in for onnxruntime's ``onnxruntime_perf_test`` on the loopback phone.

``onnxruntime_perf_test [options...] model_path [result_file]`` with the real tool's options
(``-e cpu``, ``-m times|duration``, ``-r`` runs, ``-t`` seconds, ``-x``/``-y`` threads, ``-I``,
``-o`` optimisation level, ``-S`` seed, ``-s``, ``-P``, ``-M``, ``-A``, ``-Z``, ``-D``, ``-C``, ``-p``,
``-u``, ``-n``, ``-f``, ``-v``), runs the model with onnxruntime on this host after one warm-up run
and prints the real tool's summary on stdout ("Average inference time cost: X ms", …) and, unless
a result file is given without ``-s``, its latency statistics ("P50 Latency: X s", …).

Inputs are random (free dimensions 1 unless ``-f name:value``), generated with or without ``-I``.
Every timed run is stretched by the simulated CPU clock (``cpuinfo_max_freq / scaling_cur_freq``
of the CPUs ``taskset`` chose) so that throttling shows in the latency like on a phone.
"""
from __future__ import annotations

import getopt
import os
import sys
import time

from latbench.testing.phone_tools._common import clock_stretch, cxx, peak_rss_bytes, timed  # inlined when pushed

OPTSTRING = "b:m:e:r:t:p:x:y:c:d:o:u:i:f:F:S:T:C:AMPIDZvhsqznl"
USAGE = ("usage: onnxruntime_perf_test [options...] model_path [result_file]\n"
         "  -e cpu  -m times|duration  -r runs  -t seconds  -x intra_threads  -y inter_threads  -I  -s\n"
         "  -o 0|1|2|99  -S seed  -P  -M  -A  -Z  -D  -C 'key|value ...'  -p profile  -u optimized.onnx  -n\n")


class UsageError(Exception):
    pass


def parse(argv):
    try:
        opts, args = getopt.getopt(argv, OPTSTRING)
    except getopt.GetoptError as err:
        raise UsageError(str(err)) from None
    config = {"mode": "duration", "runs": 1000, "seconds": 600, "intra": 0, "inter": 0, "level": 99,
              "seed": -1, "stats": False, "parallel": False, "mem_pattern": True, "arena": True, "spin": True,
              "entries": {}, "profile": "", "optimized": "", "exit_after_session": False, "free_dims": {},
              "verbose": False, "help": False, "provider": "cpu"}
    mode_given = False
    for opt, value in opts:
        try:
            if opt == "-m":
                if value not in ("times", "duration"):
                    raise UsageError(f"test mode must be 'times' or 'duration', got {value!r}")
                config["mode"], mode_given = value, True
            elif opt == "-r":
                config["runs"] = int(value)
                config["mode"] = config["mode"] if mode_given else "times"
            elif opt == "-t":
                config["seconds"] = int(value)
            elif opt == "-e":
                config["provider"] = value
            elif opt in ("-x", "-y"):
                config["intra" if opt == "-x" else "inter"] = int(value)
            elif opt == "-o":
                config["level"] = int(value)
            elif opt == "-S":
                config["seed"] = int(value)
            elif opt == "-c" and int(value) != 1:
                raise UsageError("-c (concurrent runs) other than 1 is not supported by the loopback stand-in")
            elif opt == "-C":
                for pair in value.split():
                    key, bar, val = pair.partition("|")
                    if not bar:
                        raise UsageError(f"-C expects 'key|value' pairs, got {pair!r}")
                    config["entries"][key] = val
            elif opt == "-f":
                name, _, dim = value.partition(":")
                config["free_dims"][name] = int(dim)
            else:
                flag = {"-s": "stats", "-P": "parallel", "-v": "verbose", "-h": "help", "-n": "exit_after_session"}
                if opt in flag:
                    config[flag[opt]] = True
                elif opt in ("-M", "-A"):
                    config["mem_pattern" if opt == "-M" else "arena"] = False
                elif opt in ("-Z", "-D"):
                    config["spin"] = False
                elif opt in ("-p", "-u"):
                    config["profile" if opt == "-p" else "optimized"] = value
        except ValueError:
            raise UsageError(f"invalid value {value!r} for {opt}") from None
    if config["help"]:
        return config, None, None
    if not 1 <= len(args) <= 2:
        raise UsageError("expected model_path [result_file]")
    if config["runs"] < 1 or config["intra"] < 0 or config["inter"] < 0:
        raise UsageError("-r must be >= 1 and -x/-y >= 0")
    return config, args[0], (args[1] if len(args) == 2 else None)


def session_for(model, config):
    import onnxruntime as ort

    if config["provider"] != "cpu":
        raise UsageError(f"provider {config['provider']!r} is not supported by the loopback phone (only cpu)")
    levels = {0: ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, 99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if config["level"] not in levels:
        raise UsageError(f"-o must be one of 0, 1, 2, 99; got {config['level']}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[config["level"]]
    if config["intra"] > 0:
        options.intra_op_num_threads = config["intra"]
        print(f"Setting intra_op_num_threads to {config['intra']}")
    if config["inter"] > 0:
        options.inter_op_num_threads = config["inter"]
        print(f"Setting inter_op_num_threads to {config['inter']}")
    if config["parallel"]:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.enable_mem_pattern = config["mem_pattern"]
    options.enable_cpu_mem_arena = config["arena"]
    if not config["spin"]:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in config["entries"].items():
        options.add_session_config_entry(key, value)
    if config["profile"]:
        options.enable_profiling = True
        options.profile_file_prefix = config["profile"]
    if config["optimized"]:
        options.optimized_model_filepath = config["optimized"]
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def random_feed(session, config):
    import numpy as np

    rng = np.random.default_rng(None if config["seed"] < 0 else config["seed"])
    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    feed = {}
    for node in session.get_inputs():
        if node.type not in types:
            raise UsageError(f"input {node.name!r} has type {node.type}, which the stand-in cannot generate")
        shape = [d if isinstance(d, int) and d > 0 else config["free_dims"].get(str(d), 1) for d in node.shape]
        dtype = np.dtype(types[node.type])
        feed[node.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                           else rng.integers(0, 2 if dtype.kind == "b" else 100, size=shape).astype(dtype))
    return feed


def perf_test(config, model, result_file):
    if not os.path.isfile(model):
        raise UsageError(f"model file {model!r} does not exist")
    start = time.perf_counter()
    session = session_for(model, config)
    print(f"Session creation time cost: {cxx(time.perf_counter() - start)} s")
    if config["exit_after_session"]:
        return 0
    feed = random_feed(session, config)

    def run():
        session.run(None, feed)

    stretch = clock_stretch()
    run()  # warm-up, as the real tool
    cpu0, latencies = time.process_time(), []
    wall0 = time.perf_counter()
    while True:
        if config["mode"] == "times" and len(latencies) >= config["runs"]:
            break
        if config["mode"] == "duration" and time.perf_counter() - wall0 >= config["seconds"]:
            break
        latencies.append(timed(run, stretch))
    wall = time.perf_counter() - wall0
    cpu1 = time.process_time()
    if config["profile"]:
        session.end_profiling()
    cpu_pct = int(100 * (cpu1 - cpu0) / max(wall, 1e-9) / (os.cpu_count() or 1))
    total, n = sum(latencies), len(latencies)
    print(f"Total inference time cost: {cxx(total)} s")
    print(f"Total inference requests: {n}")
    print(f"Average inference time cost: {cxx(total / n * 1e3)} ms")
    print(f"Total inference run time: {cxx(wall)} s")
    print(f"Number of inferences per second: {cxx(n / wall)} ")
    print(f"Avg CPU usage: {cpu_pct} %")
    print(f"Peak working set size: {peak_rss_bytes()} bytes")
    if config["stats"] or result_file is None:
        ordered = sorted(latencies)
        print(f"Avg CPU usage:{cpu_pct}\nPeak working set size:{peak_rss_bytes()}\nRuns:{n}")
        print(f"Min Latency: {cxx(ordered[0])} s\nMax Latency: {cxx(ordered[-1])} s")
        for label, q in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999)):
            print(f"{label} Latency: {cxx(ordered[min(int(n * q), n - 1)])} s")
    if result_file:
        with open(result_file, "a") as out:
            out.write(f"{model},{config['provider']},{total / n * 1e3}\n")
    return 0


def main(argv=None):
    try:
        config, model, result_file = parse(sys.argv[1:] if argv is None else argv)
        if config["help"]:
            sys.stdout.write(USAGE)
            return 0
        return perf_test(config, model, result_file)
    except UsageError as err:
        sys.stderr.write(f"{err}\n{USAGE}")
        return 1
    except Exception as err:  # onnxruntime's own errors (bad model, bad option): reported, never a traceback
        sys.stderr.write(f"onnxruntime_perf_test failed: {type(err).__name__}: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
