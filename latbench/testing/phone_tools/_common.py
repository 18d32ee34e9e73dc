"""Helpers shared by the stand-in tools; :func:`tool_script` inlines this file into each pushed script."""
import os
import resource
import time


def _cpu_list(text):
    cpus = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _read(path):
    with open(path) as handle:
        return handle.read()


def clock_stretch(sysfs="/sys/devices/system/cpu"):
    """How much slower the simulated CPUs run than at full clock: max of cpuinfo_max/scaling_cur.

    The CPUs are those ``taskset`` pinned us to (LOOPBACK_SIM_CPUS), else all possible ones. Without
    readable cpufreq files (a real host) the answer is 1.0.
    """
    try:
        cpus = _cpu_list(os.environ.get("LOOPBACK_SIM_CPUS") or _read(f"{sysfs}/possible"))
    except (OSError, ValueError):
        return 1.0
    stretch = 1.0
    for cpu in cpus:
        try:
            top = int(_read(f"{sysfs}/cpu{cpu}/cpufreq/cpuinfo_max_freq"))
            cur = int(_read(f"{sysfs}/cpu{cpu}/cpufreq/scaling_cur_freq"))
        except (OSError, ValueError):
            continue
        if cur > 0:
            stretch = max(stretch, top / cur)
    return stretch


def timed(run, stretch):
    """Seconds one call of ``run`` takes, stretched by ``stretch`` (the extra part is slept)."""
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    if stretch > 1.0:
        until = start + elapsed * stretch
        if until - time.perf_counter() > 0.002:
            time.sleep(until - time.perf_counter() - 0.001)
        while time.perf_counter() < until:  # spin the rest: sleep() overshoots by ~0.1 ms
            pass
    return time.perf_counter() - start


def cxx(value):
    """A double as C++ ``std::ostream`` prints it by default (6 significant digits, like %g)."""
    return format(value, "g")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
