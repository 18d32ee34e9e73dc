"""The loopback phone's sandbox wherever Python is installed: a venv under /tmp (the phone has a /tmp of
its own) must be visible inside the phone, or the stand-in tools cannot run."""
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from latbench.testing.adbd import sandbox
from latbench.testing.adbd.devicefs import DeviceFiles, PhoneProfile

pytestmark = pytest.mark.phone


@pytest.fixture
def python_under_tmp(monkeypatch):
    """A directory under the host's /tmp that the sandbox must bind like a Python install there."""
    folder = Path(tempfile.mkdtemp(prefix="latbench-venv-", dir="/tmp"))
    (folder / "marker").write_text("venv under /tmp\n")
    real = sandbox.python_dirs
    monkeypatch.setattr(sandbox, "python_dirs", lambda: [*real(), folder])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_python_install_under_tmp_is_seen_inside_the_phone(tmp_path, python_under_tmp):
    files = DeviceFiles(tmp_path / "device", PhoneProfile())
    files.create()
    (files.root / "tmp" / "phone-file").write_text("the phone's own /tmp\n")
    box = sandbox.Sandbox(files.root, tmp_path)
    box.start()              # failed before: "mount point does not exist" for the path under /tmp
    try:
        run = lambda cmd: subprocess.run(box.argv(cmd), env=sandbox.command_env(), capture_output=True,  # noqa: E731
                                         text=True, timeout=30)
        seen = run(f"cat {python_under_tmp}/marker")
        assert seen.returncode == 0 and seen.stdout == "venv under /tmp\n", seen.stderr
        own = run("cat /tmp/phone-file")           # the phone's /tmp is still the phone's
        assert own.returncode == 0 and own.stdout == "the phone's own /tmp\n", own.stderr
    finally:
        box.stop()
    assert not (Path("/tmp") / "phone-file").exists()
