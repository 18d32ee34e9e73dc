"""Run the loopback phone's shell commands in a private file-system view.

Commands must see Android paths (``/data/local/tmp``, ``/system/bin``, ``/sdcard``) and generated
``/sys/devices/system/cpu`` and ``/sys/class/thermal`` trees, without touching the host's own files.

Mechanisms, tried in this order by ``mechanism="auto"``:

``namespace`` (needs CAP_SYS_ADMIN, i.e. root in this container and on CI)
    One long-lived "holder" per phone: ``unshare --mount --pid --fork`` runs a script that mounts a
    tmpfs as the new root, bind-mounts the host's ``/usr``, ``/etc``, ``/var``, ``/opt`` and the Python
    runtime (read-only), the phone's device directories (``/data``, ``/sdcard``, ``/system``, ``/tmp``),
    ``/dev`` and ``/sys``, lays the generated CPU/thermal trees over ``/sys``, mounts a fresh ``/proc``
    for the new PID namespace, ``chroot``s into it and becomes a tiny reaping init. Each command is
    ``nsenter`` into that holder (mount + PID namespace and its root): a few milliseconds. Stopping
    the phone kills the holder, and with it every process the phone started (PID 1 of a namespace
    takes its namespace with it).
``userns`` (no privileges needed where unprivileged user namespaces are allowed)
    The same inside ``unshare --user --map-root-user``; the first choice when not running as root,
    and the fallback when root lacks CAP_SYS_ADMIN.

Rejected: ``proot`` (ptrace, no privileges): Debian bookworm's proot 5.1.0 does not translate
``statx``, so ``ls``/``stat`` of every bound phone path fail with ENOENT; plain path rewriting
cannot reach paths inside pushed scripts. Without a working mechanism the phone refuses to start
with a :class:`SandboxError` that says what to enable, and the tests skip with that reason.

Neither writes outside the phone's work directory on the host.
"""
from __future__ import annotations

import importlib.util
import os
import select
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MECHANISMS = ("namespace", "userns")


class SandboxError(RuntimeError):
    """The sandbox could not be set up; the message says what is missing and what to install."""


# Paths inside the phone that come from the phone's own device directory (relative to it).
DEVICE_MOUNTS = ("data", "sdcard", "system", "tmp")
SYS_OVERLAYS = ("sys/devices/system/cpu", "sys/class/thermal")  # laid over the host's /sys
HOST_DIRS = ("usr", "etc", "var", "opt")          # bound read-only from the host
MERGED_USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

ANDROID_PATH = "/system/bin:/system/xbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def command_env() -> dict[str, str]:
    """The environment of every phone command: Android's variables, nothing inherited from the host."""
    return {"PATH": ANDROID_PATH, "HOME": "/", "TMPDIR": "/data/local/tmp", "ANDROID_DATA": "/data",
            "ANDROID_ROOT": "/system", "EXTERNAL_STORAGE": "/sdcard", "SHELL": "/system/bin/sh",
            "HOSTNAME": "localhost", "USER": "shell", "LANG": "C.UTF-8", "TERM": "dumb"}


TOOL_MODULES = ("numpy", "onnxruntime", "ai_edge_litert")  # what the stand-in tools import


def python_dirs() -> list[Path]:
    """Directories the stand-in tools' interpreter needs (prefixes, site-packages, the runtimes'
    packages), outside the host directories already bound. Not all of ``sys.path``: under pytest that
    would expose the project's checkout to the phone."""
    candidates = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    candidates.add(Path(sys.executable).resolve().parent)
    candidates |= {Path(p) for p in site.getsitepackages()} | {Path(site.getusersitepackages())}
    for name in TOOL_MODULES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.add(Path(location).parent)
    real = sorted({c.resolve() for c in candidates if c.is_absolute() and c.exists()}, key=lambda c: len(c.parts))
    chosen: list[Path] = []
    for path in real:
        if path == Path("/") or path.parts[1] in HOST_DIRS:
            continue
        if not any(path == c or c in path.parents for c in chosen):
            chosen.append(path)
    return chosen


# PID 1 of the phone's namespace. It reaps orphans (so `kill -0` on a finished background job fails,
# as on a phone) and exits when the daemon's end of the pipe whose read end it holds (argv[1]) closes,
# so a crashed or killed test run leaves no namespace behind: PID 1's exit ends every process in it.
_INIT = (
    "import os,sys,signal,select\n"
    "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n"
    "lifeline = int(sys.argv[1])\n"
    "os.chdir('/')\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "while True:\n"
    "    if select.select([lifeline], [], [], 0.2)[0] and not os.read(lifeline, 1): os._exit(0)\n"
    "    try:\n"
    "        while os.waitpid(-1, os.WNOHANG)[0]: pass\n"
    "    except ChildProcessError: pass\n"
)


@dataclass(frozen=True)
class Bind:
    """One directory of the phone's file system: host ``source`` seen at ``target``."""

    source: Path
    target: str
    read_only: bool = False
    recursive: bool = True


@dataclass(frozen=True)
class Layout:
    """The phone's file system, shared by both mechanisms: binds in mount order, then symlinks."""

    binds: tuple[Bind, ...]
    links: tuple[tuple[str, str], ...]  # (target, link text)

    @classmethod
    def of(cls, device_dir: Path) -> Layout:
        binds, links = [], []
        for name in HOST_DIRS:
            if Path("/", name).is_dir():
                binds.append(Bind(Path("/", name), f"/{name}", read_only=True))
        for name in MERGED_USR_LINKS:
            host = Path("/", name)
            if host.is_symlink():
                links.append((f"/{name}", os.readlink(host)))
            elif host.is_dir():
                binds.append(Bind(host, f"/{name}", read_only=True))
        binds += [Bind(device_dir / name, f"/{name}", recursive=False) for name in DEVICE_MOUNTS]
        binds += [Bind(Path("/dev"), "/dev"), Bind(Path("/sys"), "/sys")]
        binds += [Bind(device_dir / sub, f"/{sub}", recursive=False) for sub in SYS_OVERLAYS]
        # Last, so that a Python installed under a path the phone also has (a venv under /tmp) is laid
        # over the phone's directory instead of being hidden by it.
        binds += [Bind(path, str(path), read_only=True) for path in python_dirs()]
        return cls(tuple(binds), tuple(links))

    def needs_dir(self, bind: Bind) -> bool:
        """Whether the new root needs an empty directory for ``bind``: not inside a read-only host
        directory (it exists there already and cannot be created); inside a phone directory it is made
        in the phone's own work directory."""
        return not any(bind.target.startswith(other.target + "/") for other in self.binds
                       if other is not bind and other.read_only and other.source == Path(other.target))


def _holder_script(root: Path, layout: Layout, lifeline_fd: int) -> str:
    q = shlex.quote
    lines = ["set -eu", f"R={q(str(root))}", 'mount -t tmpfs -o mode=755 phone-root "$R"']
    for bind in layout.binds:
        target = f'"$R"{q(bind.target)}'
        if layout.needs_dir(bind):
            lines.append(f"mkdir -p {target}")
        lines.append(f"mount {'--rbind' if bind.recursive else '--bind'} {q(str(bind.source))} {target}")
        if bind.read_only:  # best effort: a user namespace may refuse to change flags of locked mounts
            lines.append(f"mount -o remount,bind,ro {target} 2>/dev/null || true")
    for target, text in layout.links:
        lines.append(f'ln -s {q(text)} "$R"{q(target)}')
    lines += ['mkdir -p "$R/proc"', 'mount -t proc proc "$R/proc"']  # this PID namespace's processes
    lines.append(f'exec chroot "$R" {q(sys.executable)} -I -S -c {q(_INIT)} {lifeline_fd}')
    return "\n".join(lines) + "\n"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        return found


@dataclass
class Sandbox:
    """Per-phone command runner. ``start()`` once, then ``argv(command)`` for each command."""

    device_dir: Path
    work_dir: Path
    mechanism: str = "auto"
    chosen: str = field(default="", init=False)
    _holder: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _init_pid: int = field(default=0, init=False)
    _user_ns: bool = field(default=False, init=False)
    _lifeline: int = field(default=-1, init=False)  # write end; its closing (or our death) ends the holder

    def start(self) -> None:
        if self.mechanism not in ("auto", *MECHANISMS):
            raise SandboxError(f"unknown sandbox mechanism {self.mechanism!r}; use auto, {', '.join(MECHANISMS)}")
        errors = []
        order = (MECHANISMS if os.geteuid() == 0 else ("userns",)) if self.mechanism == "auto" else (self.mechanism,)
        for mech in order:
            self.chosen = mech
            try:
                getattr(self, f"_start_{mech}")()
                return
            except SandboxError as err:
                self.chosen = ""
                errors.append(f"{mech}: {err}")
        raise SandboxError("no sandbox mechanism works here:\n  " + "\n  ".join(errors)
                           + "\nNeed util-linux `unshare`/`nsenter` and either CAP_SYS_ADMIN or unprivileged user "
                             "namespaces (sysctl kernel.unprivileged_userns_clone=1; Docker: --cap-add SYS_ADMIN "
                             "or a seccomp profile that allows unshare).")

    # ----------------------------------------------------------------------------- namespace
    def _start_namespace(self, user_ns: bool = False) -> None:
        for tool in ("unshare", "nsenter", "chroot", "mount"):
            if shutil.which(tool) is None:
                raise SandboxError(f"`{tool}` not found (util-linux / coreutils)")
        root = self.work_dir / "root"
        root.mkdir(exist_ok=True)
        lifeline_read, self._lifeline = os.pipe()  # both non-inheritable: commands never get them
        script = self.work_dir / "holder.sh"
        script.write_text(_holder_script(root, Layout.of(self.device_dir), lifeline_read))
        self._user_ns = user_ns
        argv = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child=SIGKILL"]
        if self._user_ns:
            argv += ["--user", "--map-root-user"]
        argv += ["/bin/sh", str(script)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, pass_fds=(lifeline_read,))
        finally:
            os.close(lifeline_read)
        self._holder = proc
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            self.stop()
            raise SandboxError(f"namespace holder failed: {err.decode(errors='replace').strip() or 'no output'}")
        deadline = time.monotonic() + 5
        while not (kids := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not kids:
            self.stop()
            raise SandboxError("namespace holder started but its init process was not found in /proc")
        self._init_pid = kids[0]
        self._check("userns" if user_ns else "namespace")

    def _start_userns(self) -> None:
        self._start_namespace(user_ns=True)

    def _check(self, mech: str) -> None:
        probe = subprocess.run(self.argv("cat /sys/devices/system/cpu/possible && ls -d /data/local/tmp"),
                               env=command_env(), capture_output=True, timeout=30)
        expected = (self.device_dir / "sys/devices/system/cpu/possible").read_bytes()
        if probe.returncode != 0 or not probe.stdout.startswith(expected):
            self.stop()
            raise SandboxError(f"{mech} sandbox does not show the phone's files (exit {probe.returncode}): "
                               f"{probe.stderr.decode(errors='replace').strip()}")

    # ------------------------------------------------------------------------------- commands
    def argv(self, command: str | None) -> list[str]:
        """The host argv that runs ``command`` with ``/system/bin/sh -c`` inside the phone (None: interactive)."""
        shell = ["/system/bin/sh"] + ([] if command is None else ["-c", command])
        if self.chosen in MECHANISMS:
            ns = ["nsenter", "-t", str(self._init_pid), "--mount", "--pid", "--root", "--wd"]
            if self._user_ns:
                ns += ["--user", "--preserve-credentials"]
            return ns + ["--"] + shell
        raise SandboxError("sandbox not started")

    @property
    def kills_whole_tree(self) -> bool:
        """True when stopping the sandbox ends every process it started (PID namespace)."""
        return self.chosen in MECHANISMS

    def stop(self) -> None:
        if self._holder is not None:
            if self._holder.poll() is None:
                os.killpg(self._holder.pid, signal.SIGTERM)  # unshare --kill-child SIGKILLs the init
                try:
                    self._holder.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self._holder.pid, signal.SIGKILL)
                    self._holder.wait(timeout=5)
            for stream in (self._holder.stdout, self._holder.stderr):
                if stream:
                    stream.close()
            self._holder = None
        self._init_pid = 0
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
