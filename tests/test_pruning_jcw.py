"""JCW end to end through the CLI (search → front → ADMM retraining → exports → device measurement) on real
Fashion-MNIST with the shipped ResNet-56 LiteRT table, kept tiny; plus the choice of front members."""
import json
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR
from latbench.models import Architecture, get_model
from latbench.methods.jcw.job import JCWJob, admm_config_for, best_within, choose, spread_picks
from latbench.search.budget import BudgetError
from latbench.validation import file_key
from latbench.train.admm import ADMMConfig

TABLE = Path(__file__).resolve().parents[1] / "tables" / "host-litert-resnet56-32-dense.parquet"
HAS_DATA = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="Fashion-MNIST not installed (apt-get install -y "
                                                     "dataset-fashion-mnist)")
TINY = ["--population", "4", "--generations", "2", "--supernet-steps", "2", "--supernet-batch-size", "16",
        "--eval-images", "32", "--bn-batches", "1", "--admm-steps-per-epoch", "2", "--admm-batch-size", "16",
        "--admm-update-every", "1", "--admm-rho", "0.5", "--bn-images", "32", "--test-images", "64",
        "--threads", "1", "--no-progress"]


@pytest.fixture
def checkpoint(untrained_resnet56_checkpoint):
    torch.set_num_threads(1)
    return untrained_resnet56_checkpoint


def prune(*args):
    return CliRunner().invoke(app, ["prune", "jcw", *map(str, args)])


def conv_kernels_in_onnx(path: Path) -> list[np.ndarray]:
    """Every Conv kernel of an ONNX file, in graph order (the spec's conv order)."""
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [weights[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]


@pytest.mark.slow
@needs_data
def test_jcw_end_to_end_with_device_and_resume(checkpoint, resnet56_litert_table, tmp_path):
    out = tmp_path / "jcw"
    # Without the dense anchors every genome of the first population has sparsity genes in (0, 1), so the
    # front is sparse and the exported sparsity is a real check (the host table credits no sparsity, so the
    # whole measured range is searched on request).
    args = ["--checkpoint", checkpoint, "--table", resnet56_litert_table, "--pick", "2", "--no-anchor", "--device", "host:litert",
            "--sparsity-where", "measured",
            "--store", tmp_path / "store.db", "--out", out, *TINY]
    result = prune(*args)
    assert result.exit_code == 0, result.output

    lines = [json.loads(line) for line in (out / "front.jsonl").read_text().splitlines()]
    assert lines and all({"latency_ms", "loss", "val_accuracy", "val_loss", "density", "widths", "sparsity"} <= set(d)
                         for d in lines)
    assert [d["latency_ms"] for d in lines] == sorted(d["latency_ms"] for d in lines)
    assert all(d["density"] < 1 for d in lines)
    assert (out / "frontier.png").stat().st_size > 0 and (out / "state.json").exists()
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) == 3                                   # generation 0 + 2

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "jcw" and summary["front"]["size"] == len(lines)
    assert summary["full_latency_ms"]["measured"] > 0
    picked = summary["architectures"]
    assert len(picked) == min(2, len(lines))
    spec = get_model("resnet56")
    for row in picked:
        folder = out / row["label"]
        report = json.loads((folder / "report.json").read_text())
        arch = Architecture.from_dict(report["architecture"])
        assert any(Architecture.from_dict(d) == arch for d in lines)
        assert report["method"] == "jcw" and report["budget"]["kind"] == "pick"
        assert report["measured_ms"] > 0 and report["predicted_ms"] > 0
        assert report["measured_over_predicted"] == pytest.approx(report["measured_ms"] / report["predicted_ms"] - 1)
        assert report["within_5pct"] is (abs(report["measured_over_predicted"]) <= 0.05)
        assert 0 <= report["test_accuracy"]["finetuned"] <= 1 and report["test_images"] == 64
        assert [p["phase"] for p in report["admm_history"]["phases"]] == ["dense", "admm", "finetune"]
        assert report["achieved_sparsity_max_error"] < 0.01      # round(s·n) zeros of n (72 in the stem)
        # The exported network: ONNX runs and its convs are exactly as sparse as the architecture asks.
        session = ort.InferenceSession(str(folder / "pruned.onnx"))
        logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 32, 32), np.float32)})[0]
        assert logits.shape == (1, 10) and (folder / "pruned.tflite").stat().st_size > 0
        # The measured network is the shipped file (its trained weights and zero pattern).
        signature = file_key((folder / "pruned.tflite").read_bytes())
        with sqlite3.connect(tmp_path / "store.db") as db:
            assert db.execute("SELECT COUNT(*) FROM measurements WHERE signature LIKE ?",  # measured beside the full net
                              (signature + "|beside:%",)).fetchone()[0] == 1
        convs = [layer for layer in spec.layers if layer.kind in ("conv", "pointwise", "depthwise")]
        kernels = conv_kernels_in_onnx(folder / "pruned.onnx")
        assert len(kernels) == len(convs)
        for layer, kernel in zip(convs, kernels):
            assert kernel.shape[0] == spec.channels(arch.widths, layer)[1], layer.name
            assert int((kernel == 0).sum()) == round(arch.sparsity.get(layer.name, 0.0) * kernel.size), layer.name

    # A rerun finds everything done: no generation, supernet update or retraining is repeated.
    stamps = {p: p.stat().st_mtime_ns for p in [out / "supernet.safetensors", out / "history.jsonl",
                                                 *out.glob("*/admm.safetensors"), *out.glob("*/pruned.onnx")]}
    again = prune(*args)
    assert again.exit_code == 0, again.output
    assert "finished earlier, kept" in again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "summary.json").read_text())["architectures"] == picked


@pytest.mark.slow
@needs_data
def test_budget_networks_land_as_shipped_files_and_a_rerun_redoes_nothing(checkpoint, resnet56_litert_table,
                                                                          tmp_path):
    """Issue 15: with --device, a budget's network lands twice — the loop on exported architectures, then the
    shipped file after retraining (each network of that second landing retrained in its own candidate folder);
    the budget's folder ships the chosen one, and a rerun retrains and measures nothing."""
    out, store = tmp_path / "jcw", tmp_path / "store.db"
    args = ["--checkpoint", checkpoint, "--table", resnet56_litert_table, "--budget-ratio", "0.6", "--channel-only",
            "--device", "host:litert", "--repeats", "3", "--shipped-rounds", "2", "--store", store, "--out", out,
            *TINY]
    result = prune(*args)
    assert result.exit_code == 0, result.output
    folder = out / "budget-0.6"
    report = json.loads((folder / "report.json").read_text())
    landing, shipped = report["landing"], report["shipped_landing"]
    budget = report["budget"]["value"]
    assert shipped["steps"][0]["widths"] == landing["architecture"]["widths"]     # the loop's choice first
    assert 1 <= shipped["iterations"] <= 2 and report["architecture"] == shipped["architecture"]
    assert report["shipped_repeats_ms"] == shipped["repeats"] and len(shipped["repeats"]) == 3
    assert report["measured_upper_ms"] == max(shipped["repeats"]) and report["within_budget"] == (
        max(shipped["repeats"]) <= budget)
    candidates = sorted((folder / "candidates").iterdir())
    assert len(candidates) == len({json.dumps(s["widths"], sort_keys=True) for s in shipped["steps"]})
    chosen = next(c for c in candidates if Architecture.load(c / "arch.json") ==
                  Architecture.from_dict(report["architecture"]))
    for name in ("pruned.tflite", "pruned.onnx", "admm.safetensors"):     # the budget's folder ships the chosen one
        assert (folder / name).read_bytes() == (chosen / name).read_bytes()
    with sqlite3.connect(store) as db:                # what was measured last is the file shipped
        assert db.execute("SELECT COUNT(*) FROM measurements WHERE signature LIKE ?",     # 3 repeats, beside
                          (file_key((folder / "pruned.tflite").read_bytes()) + "%|beside:%",)).fetchone()[0] == 3
        before = db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall()
    stamps = {p: p.stat().st_mtime_ns for p in [*folder.glob("candidates/*/admm.safetensors"),
                                                 folder / "pruned.tflite"]}
    again = prune(*args)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall() == before
    assert json.loads((folder / "report.json").read_text())["architecture"] == report["architecture"]


@pytest.mark.slow
@needs_data
def test_channel_only_budget_gives_dense_networks(checkpoint, tmp_path):
    out = tmp_path / "channel"
    result = prune("--checkpoint", checkpoint, "--table", TABLE, "--budget-ratio", "0.6", "--channel-only",
                   "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "front.jsonl").read_text().splitlines()]
    assert lines and all(d["sparsity"] == {} and d["density"] == 1.0 for d in lines)
    report = json.loads((out / "budget-0.6" / "report.json").read_text())
    assert report["method"] == "jcw-channel-only" and report["measured_ms"] is None
    budget = report["budget"]["value"]
    assert report["predicted_ms"] <= budget == pytest.approx(0.6 * report["full_latency_ms"]["predicted"])
    assert report["architecture"]["sparsity"] == {}
    # Nothing to prune: the ADMM epochs were trained dense, so the network got as many steps as a sparse one.
    assert [p["phase"] for p in report["admm_history"]["phases"]] == ["dense", "admm", "finetune"]
    assert report["admm_history"]["phases"][0]["steps"] == (1 + 2) * 2       # dense + ADMM epochs, 2 steps each
    assert all(int((k == 0).sum()) == 0 for k in conv_kernels_in_onnx(out / "budget-0.6" / "pruned.onnx"))


@needs_data
def test_unreachable_budget_names_the_fastest_front_member(checkpoint, tmp_path):
    result = prune("--checkpoint", checkpoint, "--table", TABLE, "--budget-ms", "0.001", "--channel-only",
                   "--out", tmp_path / "x", *TINY[:2], "--generations", "0", *TINY[4:])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "no architecture of the front meets budget-0.001ms" in output and "the fastest is" in output
    assert (tmp_path / "x" / "state.json").exists()             # the search is kept for a rerun


def test_options_are_checked_before_anything_runs(tmp_path):
    cases = [([], "choose the architectures"), (["--pick", "2", "--budget-ratio", "0.5"], "not both"),
             (["--budget-ratio", "1.5"], "(0, 1]"), (["--pick", "1", "--measure-front"], "needs --device")]
    for extra, message in cases:
        result = prune("--checkpoint", tmp_path / "none.safetensors", "--table", TABLE, "--out", tmp_path / "y", *extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    assert not (tmp_path / "y").exists()


# ---- choosing front members ---------------------------------------------------------------------------

def test_spread_picks_cover_the_latency_range():
    latency = np.array([5.0, 1.0, 2.0, 2.1, 9.0, 7.0])
    assert spread_picks(latency, 3) == [1, 0, 4]                    # 1 ms, 5 ms (nearest to 5), 9 ms
    assert spread_picks(latency, 2) == [1, 4]
    assert spread_picks(latency, 10) == [1, 2, 3, 0, 5, 4]          # all, by latency
    assert len(set(spread_picks(np.array([1.0, 1.0, 1.0, 8.0]), 3))) == 3


def test_best_within_prefers_accuracy_then_loss():
    latency, acc, loss = [1.0, 2.0, 3.0, 4.0], [0.5, 0.7, 0.7, 0.9], [1.0, 0.9, 0.8, 0.3]
    assert best_within(latency, acc, loss, 3.5) == 2               # 0.7 twice: the lower loss
    assert best_within(latency, acc, loss, 10) == 3
    assert best_within(latency, acc, loss, 0.5) is None


def test_choose_budgets_by_ratio_and_ms():
    spec = get_model("resnet20")
    archs = [Architecture.full(spec, 32)] * 4
    front = pd.DataFrame({"architecture": archs, "latency_ms": [2.0, 4.0, 6.0, 10.0],
                          "val_accuracy": [0.6, 0.7, 0.8, 0.9], "loss": [1.0, 0.8, 0.6, 0.4]})
    job = JCWJob(model="resnet20", checkpoint="c", table="t", out="o", budget_ratios=(0.5, 0.7, 0.5),
                 budgets_ms=(4.5,))
    choices = choose(front, job, full_ms=10.0)
    assert [(c.label, c.front_index) for c in choices] == [("budget-4.5ms", 1), ("budget-0.5", 1), ("budget-0.7", 2)]
    assert choices[1].budget() == {"kind": "latency", "value": 5.0, "ratio": 0.5, "label": "budget-0.5"}
    with pytest.raises(BudgetError, match="budget-0.1 \\(1 ms\\).*the fastest is 2 ms \\(20%"):
        choose(front, JCWJob(model="resnet20", checkpoint="c", table="t", out="o", budget_ratios=(0.1,)), 10.0)
    picks = choose(front, JCWJob(model="resnet20", checkpoint="c", table="t", out="o", pick=2), 10.0)
    assert [(c.label, c.front_index, c.budget()["kind"]) for c in picks] == [("pick-1-of-2", 0, "pick"),
                                                                             ("pick-2-of-2", 3, "pick")]


def test_dense_architectures_train_their_admm_epochs_dense():
    spec = get_model("resnet20")
    config = ADMMConfig(dense_epochs=1, admm_epochs=3, finetune_epochs=1)
    dense = Architecture.full(spec, 32)
    sparse = Architecture(spec.name, 32, dict(spec.groups), {spec.sparsifiable_layers[1]: 0.5})
    assert admm_config_for(sparse, config) == config
    merged = admm_config_for(dense, config)
    assert (merged.dense_epochs, merged.admm_epochs, merged.finetune_epochs) == (4, 0, 1)



@pytest.mark.slow
def test_budget_choices_land_along_the_front_on_the_device(checkpoint, resnet56_litert_table, tmp_path):
    """With --device, each budget's network is measured and replaced by a wider or narrower one when the device
    disagrees with the prediction: a front member grown towards the next slower member as far as the target
    allows, scored like the members; an earlier retraining of another architecture is moved aside."""
    from latbench.methods.jcw.evaluator import SubnetScore
    from latbench.methods.jcw.job import Choice, _land_choices
    from latbench.methods.jcw.search import JCWSearch, SearchConfig, SearchResult, SearchTiming, SyntheticEvaluator
    from latbench.methods.landing import LandingConfig
    from latbench.predictor import Predictor
    from latbench.tables.table import LatencyTable

    class Scored(SyntheticEvaluator):
        def score(self, arch):
            loss = float(self.evaluate([arch])[0])
            return SubnetScore(loss, 1.0 - loss)

    spec = get_model("resnet56")
    table = LatencyTable.load(resnet56_litert_table)
    predictor = Predictor(spec, table)
    search = JCWSearch(spec, predictor, Scored(spec), SearchConfig(population=4, generations=1, channel_only=True))
    result = SearchResult(search.encoding, [], SearchTiming(), search.full_latency_ms)
    archs = [Architecture(spec.name, 32, {g: max(8, int(w * r) // 8 * 8) for g, w in spec.groups.items()})
             for r in (0.25, 0.5, 0.75, 1.0)]
    predicted = predictor.predict(archs)
    front = pd.DataFrame({"architecture": archs, "latency_ms": predicted, "val_accuracy": [0.5, 0.6, 0.7, 0.8],
                          "loss": [1.0, 0.8, 0.6, 0.4]})
    budget = float(predicted[2] + 0.6 * (predicted[3] - predicted[2]))     # in the gap between two members
    job = JCWJob(checkpoint=str(checkpoint), table=str(resnet56_litert_table), out=str(tmp_path / "jcw"),
                 budgets_ms=(budget,), device="host:litert", store=str(tmp_path / "store.db"), progress=False,
                 landing=LandingConfig(repeats=2))
    choice = Choice("budget-x", archs[2], 2, budget, None)
    earlier = tmp_path / "jcw" / "budget-x"
    earlier.mkdir(parents=True)
    (earlier / "arch.json").write_text(archs[0].to_json())          # retrained before for another member
    landed, landings, candidates, _ = _land_choices([choice], front, search, result, search.evaluator, spec, table,
                                                 job)
    result = landings["budget-x"]
    first = result.steps[0]                          # the budget's proposal: grown from the 0.75× member
    assert predicted[2] < first.predicted_ms <= budget and first.widths not in [a.widths for a in archs]
    assert all(archs[2].widths[g] <= first.widths[g] <= archs[3].widths[g] for g in spec.groups)
    assert landed[0].architecture == result.arch
    row = candidates.iloc[landed[0].front_index]
    assert row.architecture == result.arch and row.latency_ms == pytest.approx(predictor.predict([result.arch])[0])
    grown = candidates.iloc[len(front):]
    assert len(grown) >= 1 and all(b is not None for b in grown.grown_from)
    assert np.allclose(grown.loss, search.evaluator.evaluate(list(grown.architecture)))
    median, upper = result.measured_ms, result.upper_ms
    assert str(result.status) == ("over budget" if upper > budget else "in band" if median >= 0.95 * budget
                                  else "no unit fits")
    if result.arch != archs[0]:
        assert (tmp_path / "jcw" / "budget-x~unlanded" / "arch.json").exists() and not earlier.exists()
