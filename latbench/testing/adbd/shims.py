"""Stand-ins for the Android commands a latency client calls: ``getprop``, ``dumpsys``, ``taskset``.

They are small Python scripts (``#!<this interpreter> -IS``: no site-packages, fast start) installed in
the phone's ``/system/bin`` and reading the state files that :class:`DeviceFiles` keeps in
``/system/etc/loopback``, so the test's Python API and the phone's shell always agree.
"""
from __future__ import annotations

from pathlib import Path

STATE = "/system/etc/loopback"

GETPROP = f'''
"""getprop [NAME [DEFAULT]]: Android's property reader; no NAME lists "[name]: [value]" lines."""
import json, sys
props = json.load(open("{STATE}/props.json"))
args = sys.argv[1:]
if not args:
    sys.stdout.write("".join(f"[{{k}}]: [{{v}}]\\n" for k, v in sorted(props.items())))
else:
    sys.stdout.write(props.get(args[0], args[1] if len(args) > 1 else "") + "\\n")
'''

DUMPSYS = f'''
"""dumpsys SERVICE: only ``battery`` and ``thermalservice`` exist on the loopback phone."""
import json, os, sys
args = sys.argv[1:]
if not args:
    sys.stdout.write("Currently running services:\\n  battery\\n  thermalservice\\n")
    sys.exit(0)
if args[0] == "battery":
    state = json.load(open("{STATE}/battery.json"))
    sys.stdout.write(
        "Current Battery Service state:\\n"
        "  AC powered: false\\n  USB powered: true\\n  Wireless powered: false\\n  Dock powered: false\\n"
        "  Max charging current: 500000\\n  Max charging voltage: 5000000\\n  Charge counter: 3612000\\n"
        "  status: 2\\n  health: 2\\n  present: true\\n"
        f"  level: {{state['level']}}\\n  scale: 100\\n  voltage: 4187\\n"
        f"  temperature: {{state['temperature']}}\\n  technology: Li-ion\\n")
elif args[0] == "thermalservice":
    base = "/sys/class/thermal"
    lines = ["IsStatusOverride: false", "ThermalEventListeners:", "\\tcallbacks: 0",
             "ThermalStatusListeners:", "\\tcallbacks: 0", "Thermal Status: 0", "Cached temperatures:"]
    for zone in sorted(os.listdir(base), key=lambda z: int(z[len("thermal_zone"):])):
        name = open(f"{{base}}/{{zone}}/type").read().strip()
        value = int(open(f"{{base}}/{{zone}}/temp").read()) / 1000
        lines.append(f"\\tTemperature{{{{mValue={{value}}, mType=0, mName={{name}}, mStatus=0}}}}")
    lines.append("HAL Ready: true")
    sys.stdout.write("\\n".join(lines) + "\\n")
else:
    sys.stdout.write(f"Can't find service: {{args[0]}}\\n")
'''

TASKSET = f'''
"""taskset [-a] [-c] MASK|LIST COMMAND [ARG...] | taskset -p [-c] [MASK|LIST] PID

The loopback phone simulates more CPUs than the host has, so affinity is checked against the
simulated CPUs (an empty or out-of-range selection fails like util-linux taskset) and then applied
to host CPUs: simulated CPU i runs on host CPU host_cpus[i % len(host_cpus)]. The simulated CPU
list is exported as LOOPBACK_SIM_CPUS for the stand-in benchmark tools.
"""
import os, sys

def fail(msg, code=1):
    sys.stderr.write(f"taskset: {{msg}}\\n"); sys.exit(code)

def span(text):
    a, _, b = text.partition("-")
    return range(int(a), int(b or a) + 1)

possible = [c for part in open("/sys/devices/system/cpu/possible").read().strip().split(",") for c in span(part)]
host = [int(c) for c in open("{STATE}/host_cpus").read().split()]

def parse(text, as_list):
    try:
        if as_list:
            cpus = {{c for part in text.split(",") if part for c in span(part)}}
        else:
            value = int(text, 16)
            cpus = {{i for i in range(value.bit_length()) if value >> i & 1}}
    except ValueError:
        fail(f"failed to parse CPU {{'list' if as_list else 'mask'}}: {{text}}")
    cpus &= set(possible)
    if not cpus:
        fail(f"failed to set pid {{os.getpid()}}'s affinity: Invalid argument")
    return sorted(cpus)

def mask(cpus):
    return format(sum(1 << c for c in cpus), "x")

def on_host(cpus):
    return {{host[c % len(host)] for c in cpus}}

args = sys.argv[1:]
opts = set()
LONG = {{"--all-tasks": "a", "--cpu-list": "c", "--pid": "p"}}
while args and args[0].startswith("-") and len(args[0]) > 1:
    flag = args.pop(0)
    if flag in LONG: opts.add(LONG[flag])
    elif not flag.startswith("--") and set(flag[1:]) <= set("acp"): opts |= set(flag[1:])
    else: fail(f"invalid option -- '{{flag.lstrip('-')}}'")
if "p" in opts:
    if len(args) == 1:
        pid = int(args[0])
        current = [c for c in possible if host[c % len(host)] in os.sched_getaffinity(pid)]
        print(f"pid {{pid}}'s current affinity {{'list' if 'c' in opts else 'mask'}}: "
              f"{{','.join(map(str, current)) if 'c' in opts else mask(current)}}")
        sys.exit(0)
    if len(args) != 2:
        fail("usage: taskset -p [-c] [mask|list] pid", 1)
    cpus, pid = parse(args[0], "c" in opts), int(args[1])
    os.sched_setaffinity(pid, on_host(cpus))
    print(f"pid {{pid}}'s new affinity {{'list' if 'c' in opts else 'mask'}}: "
          f"{{','.join(map(str, cpus)) if 'c' in opts else mask(cpus)}}")
    sys.exit(0)
if len(args) < 2:
    fail("usage: taskset [-c] mask|list command [arg...]", 1)
cpus = parse(args[0], "c" in opts)
os.sched_setaffinity(0, on_host(cpus))
os.environ["LOOPBACK_SIM_CPUS"] = ",".join(map(str, cpus))
try:
    os.execvp(args[1], args[1:])
except OSError as err:
    fail(f"failed to execute {{args[1]}}: {{err.strerror}}", 127 if isinstance(err, FileNotFoundError) else 126)
'''

SCRIPTS = {"getprop": GETPROP, "dumpsys": DUMPSYS, "taskset": TASKSET}


def install(bin_dir: Path, python: str) -> None:
    """Write the shims (and ``sh`` → the host's ``/bin/sh``) into the phone's ``/system/bin``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in SCRIPTS.items():
        path = bin_dir / name
        path.write_text(f"#!{python} -IS\n" + body.lstrip("\n"))
        path.chmod(0o755)
    sh = bin_dir / "sh"
    if not sh.is_symlink():
        sh.symlink_to("/bin/sh")
