"""latbench installed from a wheel (not the checkout, not editable) profiles a phone: what runs on the
phone ships as package data. Also: the checkout's device_agents/ shows exactly what the package ships."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = "latbench/device_agents/latbench_runner.sh"

# Run by the wheel's own Python in a directory outside the checkout: a loopback phone, then the wheel's
# `latbench` command sets it up and profiles ResNet-56's layer variants on it, as a user would.
E2E = r"""
import hashlib, json, os, subprocess, sys
from pathlib import Path

import latbench
from latbench.devices.android.connection import load_or_create_key
from latbench.devices.android.device import PHONE_ROOT
from latbench.testing.adbd import LoopbackPhone, SandboxError
from latbench.testing.phone_tools import write_tool

key = Path(os.environ["LATBENCH_ADB_KEY"])
load_or_create_key(key)
try:
    phone = LoopbackPhone(authorized_keys=[key.with_name("adbkey.pub")]).start()
except SandboxError as err:
    print(json.dumps({"no_sandbox": str(err)}))
    sys.exit(0)
try:
    spec = f"tcp:{phone.serial}"
    cli = [sys.argv[1]]
    setup = subprocess.run(cli + ["android", "setup", "--device", spec, "--benchmark-model",
                                  str(write_tool("benchmark_model", Path("tools")))], capture_output=True, text=True)
    profile = subprocess.run(cli + ["profile", "resnet56", "--resolution", "32", "--dense", "--channel-points", "1",
                                    "--sparsity", "0", "--rounds", "1", "--runs", "2", "--warmup", "1", "--no-progress",
                                    "--device", spec + "?reference=off", "--store", "s.db", "--table", "t.parquet"],
                             capture_output=True, text=True)
    runner = phone.host_path(f"{PHONE_ROOT}/agent/latbench_runner.sh")
    print(json.dumps({"latbench": latbench.__file__, "setup": [setup.returncode, setup.stdout + setup.stderr],
                      "profile": [profile.returncode, profile.stdout + profile.stderr],
                      "runner_sha": hashlib.sha256(runner.read_bytes()).hexdigest() if runner.exists() else None,
                      "table": Path("t.parquet").exists()}))
finally:
    phone.stop()
"""


def test_device_agents_in_the_checkout_is_what_the_package_ships():
    from latbench.devices.android.device import agent_script

    shipped = (REPO / RUNNER).read_bytes()
    assert (REPO / "device_agents" / "latbench_runner.sh").read_bytes() == shipped
    assert agent_script() == shipped


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert res.returncode == 0, f"{' '.join(args)}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow
@pytest.mark.phone
def test_a_wheel_install_profiles_a_phone(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (pip install setuptools)")
    # Built from a copy, so that the build writes nothing (build/, *.egg-info) into the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "latbench", src / "latbench", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(dist), str(src))
    (wheel,) = dist.glob("latbench-*.whl")
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel))
    shutil.rmtree(src)               # nothing of the sources is left to import by mistake
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(target), LATBENCH_ADB_KEY=str(tmp_path / "key" / "adbkey"))
    res = _run(sys.executable, "-c", E2E, str(target / "bin" / "latbench"), cwd=work, env=env)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "no_sandbox" in out:
        pytest.skip(f"the loopback phone cannot start here: {out['no_sandbox']}")
    assert Path(out["latbench"]).is_relative_to(target)       # the wheel's copy, not the checkout's
    assert out["setup"][0] == 0, out["setup"][1]
    assert out["profile"][0] == 0, out["profile"][1]
    text = out["profile"][1]
    report = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert report["measured"] == report["grid_points"] > 0 and out["table"]
    assert out["runner_sha"] == hashlib.sha256((REPO / RUNNER).read_bytes()).hexdigest()
