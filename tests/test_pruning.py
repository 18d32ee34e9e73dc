"""End-to-end pruning jobs (LcP, naive, uniform) on real Fashion-MNIST, kept tiny. Jobs that measure on the
device use a table built on this machine; the shipped table serves jobs that only predict."""
import json
import sqlite3
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR
from latbench.methods.landing import LandingConfig
from latbench.models import get_model
from latbench.validation import file_key

TABLE = Path(__file__).resolve().parents[1] / "tables" / "host-litert-resnet56-32-dense.parquet"
pytestmark = pytest.mark.skipif(not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
QUICK = ["--pool", "4", "--candidates", "8", "--fitness-images", "128", "--bn-images", "128", "--finetune-steps", "2",
         "--test-images", "200", "--no-progress"]


@pytest.fixture
def checkpoint(untrained_resnet56_checkpoint):
    return untrained_resnet56_checkpoint


def stored_medians(store: Path, signature: str) -> list[float]:
    with sqlite3.connect(store) as db:
        return [r[0] for r in db.execute("SELECT median_ms FROM measurements WHERE signature=? OR signature LIKE ?",
                                              (signature, signature + "|beside:%"))]


def prune(*args):
    return CliRunner().invoke(app, ["prune", "lcp", *map(str, args)])


@pytest.mark.slow
def test_lcp_job_end_to_end_with_device_measurement_and_resume(checkpoint, resnet56_litert_table,
                                                               midway_latency_budget, tmp_path, monkeypatch):
    from latbench.methods.lcp.job import PrunedLoss

    fitness_calls = []
    evaluate = PrunedLoss.__call__
    monkeypatch.setattr(PrunedLoss, "__call__", lambda self, plan: fitness_calls.append(plan) or evaluate(self, plan))
    out = tmp_path / "lcp"
    wanted = midway_latency_budget("resnet56", resnet56_litert_table)
    args = ["--checkpoint", checkpoint, "--table", resnet56_litert_table, "--budget-ms", wanted, "--device", "host:litert",
            "--store", tmp_path / "store.db", "--out", out, *QUICK]
    result = prune(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    budget = report["budget"]["value"]
    assert budget == pytest.approx(wanted)
    # The closed loop: measured on the device, grown or shrunk by the method's own ranking until it lands; the
    # shipped file measured again, within budget under its own spread; every step in the report.
    landing = report["landing"]
    assert landing["iterations"] >= 1 and landing["steps"][0]["target_ms"] == pytest.approx(budget)  # search's first
    assert all(s["measured_ms"] > 0 and s["target_ms"] > 0 for s in landing["steps"])
    assert landing["architecture"]["widths"] == landing["steps"][landing["chosen"]]["widths"]
    assert len(landing["repeats"]) == 9 and all(len(s["repeats"]) == 9 for s in landing["steps"])   # the default
    median, upper = landing["measured_ms"], landing["upper_ms"]      # the status follows the measurements
    assert landing["status"] == ("over budget" if upper > budget else "in band" if median >= 0.95 * budget
                                 else "no unit fits")
    # The shipped file lands too: the loop's choice retrained and checked first, then (when its file measures
    # outside [0.95, 1] × budget) the method's next network, retrained in its own folder; the chosen one ships.
    shipped = report["shipped_landing"]
    assert shipped["steps"][0]["widths"] == landing["architecture"]["widths"]
    assert 1 <= shipped["iterations"] <= LandingConfig().shipped_rounds and report["architecture"] == shipped["architecture"]
    assert report["shipped_repeats_ms"] == shipped["repeats"] and len(shipped["repeats"]) == 9
    chosen = shipped["steps"][shipped["chosen"]]
    assert chosen["repeats"] == shipped["repeats"] and chosen["widths"] == report["architecture"]["widths"]
    assert shipped["status"] == ("over budget" if shipped["upper_ms"] > budget else "in band"
                                 if shipped["measured_ms"] >= 0.95 * budget else "no unit fits")
    if shipped["status"] == "in band" and shipped["chosen"] > 0:    # the loop went on only while outside the band
        assert all(s["measured_ms"] > budget or s["measured_ms"] < 0.95 * budget for s in shipped["steps"][:-1])
    assert len(list((out / "candidates").iterdir())) == len({json.dumps(s["widths"]) for s in shipped["steps"]})
    assert report["measured_ms"] > 0 and report["measured_ms"] == shipped["measured_ms"]
    assert report["measured_upper_ms"] == sorted(report["shipped_repeats_ms"])[6]    # the 87.5 % bound of nine
    assert report["within_budget"] == (report["measured_upper_ms"] <= budget)
    assert report["search"]["candidates"] == 8 and report["search"]["prune_ms_per_candidate"] > 0
    widths = report["architecture"]["widths"]
    assert all(w % 8 == 0 for w in widths.values())
    if budget < report["full_latency_ms"]["predicted"]:   # (a loaded machine can measure the full net slow)
        assert sum(widths.values()) < sum(get_model("resnet56").groups.values())
    session = ort.InferenceSession(str(out / "pruned.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 32, 32), np.float32)})[0]
    assert logits.shape == (1, 10) and (out / "pruned.tflite").stat().st_size > 0
    # What was measured is the file the job ships, not a re-export of its architecture.
    assert stored_medians(tmp_path / "store.db", file_key((out / "pruned.tflite").read_bytes()))
    with sqlite3.connect(tmp_path / "store.db") as db:    # every landing step and shipped check beside the full net
        keys = [r[0] for r in db.execute("SELECT signature FROM measurements")]
    alone = [k for k in keys if "|beside:" not in k and "|anchor-of:" not in k]   # the full network, for the budget
    assert len(alone) == 1 and alone[0].startswith("net:"), alone
    # ... with the checkpoint's grey stem, as shipped: every network the loop measures has it
    assert alone[0].endswith("|in1") and all("|in1" in k for k in keys if k.startswith("net:"))
    beside = [k for k in keys if "|beside:" in k]
    assert len(beside) == sum("|anchor-of:" in k for k in keys) >= \
        9 * len({json.dumps(s["widths"], sort_keys=True) for s in landing["steps"]}) + 9 * len(shipped["steps"])
    state = json.loads((out / "lcp-state.json").read_text())
    assert len(state["history"]) == 8   # candidates pruned to the same network share one evaluation:
    assert len(fitness_calls) == len({json.dumps(c["widths"], sort_keys=True) for c in state["history"]})
    # A rerun finds everything done (evolution state, fine-tuning checkpoint, stored measurements) and
    # recomputes none of it: no candidate evaluated, no fine-tuning step, nothing measured.
    fitness_calls.clear()
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "lcp-state.json", out / "pruned.safetensors")}
    with sqlite3.connect(tmp_path / "store.db") as db:
        measured_before = db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall()
    again = prune(*args)
    assert again.exit_code == 0, again.output
    assert fitness_calls == []
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall() == measured_before
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["architecture"] == report["architecture"] and rerun["measured_ms"] == report["measured_ms"]


@pytest.mark.slow
def test_baselines_share_the_job_and_meet_a_flops_budget(checkpoint, tmp_path):
    full_flops = 125.75e6
    reports = {}
    for method in ("uniform", "naive"):
        result = prune("--checkpoint", checkpoint, "--budget-flops", 0.4 * full_flops, "--method", method,
                       "--unit", 4, "--out", tmp_path / method, *QUICK)
        assert result.exit_code == 0, result.output
        reports[method] = json.loads((tmp_path / method / "report.json").read_text())
        assert reports[method]["flops"] <= 0.4 * full_flops and reports[method]["measured_ms"] is None
    assert reports["uniform"]["architecture"] != reports["naive"]["architecture"]
    assert reports["uniform"]["finetune"] == reports["naive"]["finetune"]


def test_unreachable_budget_fails_at_once_with_the_smallest_latency(checkpoint, tmp_path):
    result = prune("--checkpoint", checkpoint, "--table", TABLE, "--budget-ms", 0.01, "--out", tmp_path / "x", *QUICK)
    assert result.exit_code == 2
    assert "below what pruning resnet56 can reach" in result.output and "ms" in result.output
    assert not (tmp_path / "x" / "pruned.safetensors").exists()


def test_exactly_one_budget_is_required(checkpoint, tmp_path):
    result = prune("--checkpoint", checkpoint, "--table", TABLE, "--out", tmp_path / "y", *QUICK)
    assert result.exit_code == 2 and "exactly one budget" in result.output


@pytest.mark.slow
def test_a_phone_that_cannot_be_reached_keeps_the_predicted_network_not_verified(checkpoint, tmp_path,
                                                                                  monkeypatch):
    """Issue 15: the closed loop's device is gone (nothing listens at the phone's address): the job still
    prunes, fine-tunes and exports the network its search predicted, marks it "not verified" and prints how to
    verify the shipped file later with ``latbench measure``."""
    import socket

    monkeypatch.setenv("LATBENCH_ADB_KEY", str(tmp_path / "adbkey"))
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "lcp"
    result = prune("--checkpoint", checkpoint, "--table", TABLE, "--budget-ms", 1.2, "--device", f"tcp:127.0.0.1:{port}",
                   "--store", tmp_path / "store.db", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["landing"]["status"] == "not verified" and report["landing"]["steps"] == []
    assert report["architecture"] == report["landing"]["architecture"]       # the predicted network, kept
    assert report["measured_ms"] is None and report["within_budget"] is None and report["shipped_repeats_ms"] == []
    assert report["predicted_ms"] <= 1.2 and (out / "pruned.tflite").exists()
    said = " ".join(result.output.split())
    assert "cannot be reached" in said and f"latbench measure {out / 'pruned.tflite'} --device tcp:127.0.0.1:{port}" in said
