"""`latbench profile → table build → validate` end to end on the loopback phone, through the command
line, as a user would with a phone on USB (see docs/android.md). Shares the loopback fixtures of
test_android_loopback.py."""
import json

import pytest

from latbench.cli import app
from latbench.devices.android.device import PHONE_ROOT
from latbench.store import MeasurementStore

import test_android_loopback as loopback

pytestmark = pytest.mark.phone

adb_key, phone = loopback.adb_key, loopback.phone   # fixtures shared with the loopback tests
install_benchmark_model, runner = loopback.install_benchmark_model, loopback.runner


@pytest.mark.slow
def test_profile_table_validate_end_to_end(phone, tmp_path):
    spec = install_benchmark_model(phone, tmp_path)
    res = runner.invoke(app, ["devices", "--tcp", phone.serial])
    assert res.exit_code == 0 and "android-" in res.output and "Loopback" in res.output, res.output
    res = runner.invoke(app, ["android", "info", "--device", spec])
    info = json.loads(res.output)
    assert info["big_cores"] == [4, 5, 6, 7] and info["pinned_mask"] == "f0" and info["tools"]["benchmark_model"]

    store, table = tmp_path / "s.db", tmp_path / "t.parquet"
    # Without the side-by-side reference: half the tool runs (test_android_loopback.py covers the reference protocol).
    spec += "?reference=off"
    tiny = ["--resolution", "32", "--dense", "--channel-points", "1", "--sparsity", "0", "--rounds", "1",
            "--runs", "2", "--warmup", "1", "--no-progress", "--device", spec, "--store", str(store)]
    res = runner.invoke(app, ["profile", "resnet56", *tiny, "--table", str(table), "--calibrate", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert report["measured"] == report["grid_points"] > 0
    res = runner.invoke(app, ["validate", "resnet56", "--table", str(table), "--device", spec, "--n", "3",
                              "--resolution", "32", "--store", str(store), "--json", str(tmp_path / "r.json"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["n"] == 3 and all(w["measured_ms"] > 0 for w in summary["worst"])
    info = runner.invoke(app, ["table", "info", str(table)])
    assert "android-" in info.output and "Loopback Phone 8" in info.output and "calibration" in info.output

    with MeasurementStore(store) as st:
        ((env_id, fingerprint, count),) = st.environments()
        rows = st.rows(env_id)
    nets = [r for r in rows if r.signature.startswith("net:")]
    assert fingerprint.startswith("android-") and count == report["grid_points"] + len(nets) and 3 <= len(nets) <= 5
    for row in rows:   # every measurement carries the phone's conditions
        c = row.conditions
        assert c["before"]["cpu_temp_c"] == pytest.approx(32.0) and c["before"]["cap_khz"]["7"] == 2_840_000
        assert len(c["cpu_temp_c"]) == row.measurement.rounds
    # Models and batch folders are removed once measured (only the reference model would stay).
    left = phone.run(f"ls {PHONE_ROOT}/models {PHONE_ROOT}/batches").stdout.split()
    assert not [n for n in left if n.endswith(".tflite") or n.startswith("b")]
