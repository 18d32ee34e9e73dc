"""OFARPruning on a user's ONNX model (issue 13): an independently written CNN (timm) whose exporter folded its
BN, pruned over widths *and* input resolutions — BN given back for Network Slimming and the joint training, the
sub-networks shipped as the user's graph (BN folded again) at their own resolution, trained on real
Fashion-MNIST."""
import json
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from latbench.api import load_model
from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR
from latbench.models import Architecture
from latbench.models.onnx_channels import analyse_channels, prune_onnx
from latbench.models.onnx_load import load_user_onnx
from latbench.search.budget import CostGrid
from realworld_models import grey_user_model, timm_available
from test_onnx_bn import _fixed_reshape_model

pytestmark = [pytest.mark.skipif(not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists(),
                                 reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"),
              pytest.mark.skipif(not timm_available(), reason="timm is not installed (pip install --no-deps timm)")]
TINY = ["--search-epochs", "2", "--steps-per-epoch", "3", "--joint-epochs", "1", "--tau", "0.5", "--batch-size", "32",
        "--train-images", "256", "--val-images", "64", "--test-images", "64", "--bn-images", "64", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def user_mnv3(tmp_path_factory) -> Path:
    """timm's MobileNetV3-small at half width (SE blocks, hard-swish), grey 32×32, 10 classes."""
    return grey_user_model(tmp_path_factory, "mobilenetv3_small_050")


@pytest.fixture(scope="module")
def user_mnv2(tmp_path_factory) -> Path:
    return grey_user_model(tmp_path_factory, "mobilenetv2_050")


def ofar(model: Path, out: Path, *args):
    return CliRunner().invoke(app, ["prune", "ofar", "--model", str(model), "--out", str(out), "--resolutions", "32",
                                    "--resolutions", "24", *map(str, args), *TINY])


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_ofar_prunes_an_onnx_model_over_widths_and_resolutions_and_ships_its_own_graph(user_mnv3, tmp_path,
                                                                                       monkeypatch):
    from latbench.methods.ofar.data import CohortData
    from latbench.supernet import resize

    spec = load_model(str(user_mnv3))
    full = CostGrid.analytic(spec, "flops", 32).total(spec.groups)
    out = tmp_path / "ofar"
    result = ofar(user_mnv3, out, "--budget-flops", 0.7 * full, "--budget-flops", 0.45 * full)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == spec.name and report["resolutions"] == [32, 24] and not report["unmet"]
    widths = [s["widths"] for s in report["structures"]]
    se = [g for g in spec.groups if "/se/" in g]
    # Slimming ranks by BN γ: the SE squeeze widths have no BN and keep their width; the rest is pruned.
    assert se and all(w[g] == spec.groups[g] for w in widths for g in se)
    assert all(any(w[g] < spec.groups[g] for g in spec.groups) for w in widths[1:])
    model = load_user_onnx(user_mnv3)
    data = CohortData.load("fashion-mnist", None, 5000, stream=False, in_channels=1, resolution=None, test_images=64)
    assert len(report["cohort"]) == 2
    for c in report["cohort"]:
        r = c["resolution"]
        assert c["predicted_flops"] <= c["budget_flops"] and r in (32, 24)
        assert CostGrid.analytic(spec, "flops", r).total(c["arch"]["widths"]) == pytest.approx(c["predicted_flops"])
        folder = Path(c["folder"])
        arch = Architecture.from_json((folder / "arch.json").read_text())
        assert arch.resolution == r and arch.widths == c["arch"]["widths"]
        # The shipped file is the user's graph cut to those widths (its BN folded again), at its resolution ...
        shipped = onnx.load(folder / "pruned.onnx")
        cut = prune_onnx(model, analyse_channels(model), arch.widths)
        assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in cut.graph.node]
        assert [d.dim_value for d in shipped.graph.input[0].type.tensor_type.shape.dim] == [1, 1, r, r]
        # ... with the jointly trained weights and recalibrated BN: its accuracy on the test images is the one
        # the job reported for the network it evaluated in torch.
        session = ort.InferenceSession(str(folder / "pruned.onnx"))
        correct = sum(int(run(session, x[i:i + 1].numpy()).argmax() == y[i])
                      for x, y in data.batches(data.test, r) for i in range(len(y)))
        assert abs(correct / 64 - c["test_acc"]) <= 1 / 64
        from ai_edge_litert.interpreter import Interpreter

        lite = Interpreter(str(folder / "pruned.tflite"))
        lite.allocate_tensors()
        inp, outp = lite.get_input_details()[0], lite.get_output_details()[0]
        x = resize(next(iter(data.batches(data.test, r)))[0][:1], r).numpy()
        lite.set_tensor(inp["index"], x.transpose(0, 2, 3, 1).reshape(inp["shape"]).astype(np.float32))
        lite.invoke()
        np.testing.assert_allclose(lite.get_tensor(outp["index"]).reshape(1, -1), run(session, x), rtol=1e-3,
                                   atol=1e-4)
    # A rerun trains, recalibrates, scores and exports nothing.
    import latbench.export as export
    import latbench.methods.ofar.job as job
    import latbench.supernet as supernet
    import latbench.train.loop as loop

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "report.json"}
    for mod, name in ((loop, "train"), (supernet, "recalibrate"), (export, "export_network_for"), (job, "_score")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: pytest.fail(f"the rerun called {_n}"))
    again = ofar(user_mnv3, out, "--budget-flops", 0.7 * full, "--budget-flops", 0.45 * full)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "report.json").read_text())["cohort"] == report["cohort"]


@pytest.mark.slow
def test_ofar_lands_an_onnx_model_at_its_chosen_resolution_on_the_device(user_mnv2, tmp_path):
    """Profiled at two resolutions into a table here; the choice for 90 % of the full network's latency is landed
    by the closed loop on host:onnxruntime and the shipped file (at its own resolution) measured again. (A tiny
    MobileNetV2 on 32 px: its narrowest widths at 24 px are ≈ 81 % of the full network — 80 % failed once.)"""
    table, store = tmp_path / "t.parquet", tmp_path / "store.db"
    profiled = CliRunner().invoke(app, ["profile", str(user_mnv2), "--device", "host:onnxruntime", "--table",
                                        str(table), "--store", str(store), "--calibrate", "4", "--resolution", "32",
                                        "--resolution", "24", "--no-progress"])
    assert profiled.exit_code == 0, profiled.output
    out = tmp_path / "ofar"
    result = ofar(user_mnv2, out, "--table", table, "--budget-ratio", 0.9, "--store", store, "--repeats", 3)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    [c] = report["cohort"]
    assert c["device"] == "host:onnxruntime" and c["measurement"] == "measured"
    landing, shipped = c["landing"], c["shipped_landing"]
    assert landing["steps"] and all(s["measured_ms"] > 0 for s in landing["steps"])
    assert landing["status"] in ("in band", "no unit fits", "over budget")
    assert shipped["steps"][0]["widths"] == landing["architecture"]["widths"] and len(shipped["repeats"]) == 3
    assert c["measured_ms"] == shipped["measured_ms"] > 0
    dims = onnx.load(Path(c["folder"]) / "pruned.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, c["resolution"], c["resolution"]]
    with sqlite3.connect(store) as db:       # every shipped candidate's measurement is stored
        assert db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] > 0


def test_ofar_refuses_private_bn_for_an_onnx_model_before_training(user_mnv2, tmp_path):
    out = tmp_path / "ofar"
    result = ofar(user_mnv2, out, "--budget-flops", 1e6, "--bn-mode", "private")
    assert result.exit_code != 0 and "--bn-mode private" in result.output and "recalibrated" in result.output
    assert "Traceback" not in result.output and not (out / "search.safetensors").exists()


def test_ofar_refuses_a_resolution_the_onnx_graph_cannot_run_at_naming_the_node(tmp_path):
    model = _fixed_reshape_model(tmp_path / "fixed.onnx")
    out = tmp_path / "ofar"
    result = CliRunner().invoke(app, ["prune", "ofar", "--model", str(model), "--out", str(out), "--resolutions", "8",
                                      "--resolutions", "6", "--budget-flops", "1e4", *TINY])
    assert result.exit_code != 0 and "flatten_fixed" in result.output and "6×6" in result.output
    assert "Traceback" not in result.output and not (out / "search.safetensors").exists()


def test_rates_round_grouped_conv_groups_to_their_number_of_conv_groups(tmp_path_factory):
    """RegNet's grouped convs keep their number of groups: every width the ranking gives is a multiple of it as
    well as of the tables' channel multiple, so every structure is a network the graph can be cut to."""
    from latbench.methods.ofar.rates import GlobalRanking, structure_floors

    spec = load_model(str(grey_user_model(tmp_path_factory, "regnety_002")))
    odd = {g: m for g, m in spec.multiples.items() if m > 1 and m % 8}
    assert odd                                       # group widths such as 24 (3 conv groups of 8)
    rng = np.random.default_rng(0)
    floors = structure_floors(spec, [], [32], 8, 0.1)
    ranking = GlobalRanking(spec, {g: rng.random(w) for g, w in spec.groups.items()}, floors, 8)
    for row in ranking.widths_matrix(np.linspace(0, ranking.max_count, 25).astype(int)):
        Architecture(spec.name, 32, dict(zip(spec.groups, map(int, row)))).validate(spec)
