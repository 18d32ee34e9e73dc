"""SP (latbench.methods.sp): stage-wise training, exact stage budgets, the distributed search on Ray and in
process, bad input caught before training, and `latbench prune sp` end to end with a rerun that recomputes
nothing. Kept small: ResNet-20 on a few hundred real Fashion-MNIST images or random tensors."""
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR, DataSplits
from latbench.methods.landing import LandingConfig
from latbench.models import Architecture, LayerDef, ModelSpec, build, get_model
from latbench.predictor import Predictor
from latbench.search.budget import Budget, CostGrid
from latbench.supernet import DynamicNet, SearchSpace, StageAdaptors, stages_of
from latbench.tables.table import LatencyTable
from latbench.train import save_checkpoint
from latbench.validation import file_key
from latbench.methods.sp import SPSearchConfig, StageCosts, StageTrainConfig, search, stage_losses, train_stagewise
from latbench.methods.sp.search import BudgetSplitter, Manager, StageWorker
from latbench.methods.sp.training import load_supernet, read_supernet_meta

TABLE = Path(__file__).resolve().parents[1] / "tables" / "host-litert-resnet56-32-dense.parquet"
R20 = get_model("resnet20")
have_fmnist = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists()
needs_fmnist = pytest.mark.skipif(not have_fmnist, reason="Fashion-MNIST not installed "
                                                          "(apt-get install -y dataset-fashion-mnist)")
TINY_SEARCH = SPSearchConfig(manager_population=4, manager_generations=2, stage_population=6, stage_generations=2,
                             eval_images=32, calib_images=16, batch_size=32, seed=3)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the session's Ray tests (all in this file), on loopback, with 2 CPUs; shut
    down when they are done, so that its idle processes do not run beside the timing tests of later files."""
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'latbench[ray]')")
    ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def fmnist():
    if not have_fmnist:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    from latbench.data import load_dataset

    data = load_dataset("fashion-mnist")
    return DataSplits(data.name, data.train.head(192), data.val.head(64), data.test.head(64))


@pytest.fixture(scope="module")
def r20_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build(R20, in_channels=1)
    path = tmp_path_factory.mktemp("r20") / "r20.safetensors"
    save_checkpoint(path, net, arch=Architecture.full(R20, 32))
    return path


def supernet(seed: int = 0) -> tuple[DynamicNet, StageAdaptors]:
    torch.manual_seed(seed)
    net = DynamicNet.from_parent(build(R20, in_channels=1), "l1")
    return net, StageAdaptors.for_net(net)


SPACE = SearchSpace.from_spec(R20, multiple=8, resolutions=(32,))


# ---- stage-wise training ------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_lowers_stage_losses_and_resumes_exactly(fmnist, tmp_path):
    config = StageTrainConfig(epochs=1, lr=0.05, batch_size=16, steps_per_epoch=6, augment=False, seed=1)
    x = fmnist.val.normalize(fmnist.val.images[:64])
    smallest = SPACE.smallest(32)

    net, adaptors = supernet()
    before = sum(stage_losses(net, adaptors, x, smallest))
    running_before = net.block("stem").bn.running_mean.clone()
    history = train_stagewise(net, adaptors, fmnist, SPACE, config, checkpoint=tmp_path / "a.safetensors",
                              log_every=2, progress=False)
    after = sum(stage_losses(net, adaptors, x, smallest))
    assert history.complete and history.step == 6 and len(history.records) == 3
    assert after < before
    assert not torch.equal(net.block("stem").bn.running_mean, running_before)   # the full net's statistics move

    # Stopped after 2 steps, resumed in a new process-like setting (fresh objects from the checkpoint).
    net_b, adaptors_b = supernet()
    partial = train_stagewise(net_b, adaptors_b, fmnist, SPACE, config, checkpoint=tmp_path / "b.safetensors",
                              max_steps=2, log_every=2, progress=False)
    assert partial.step == 2 and not partial.complete
    net_c, adaptors_c = supernet(seed=5)     # other initial weights: everything must come from the checkpoint
    resumed = train_stagewise(net_c, adaptors_c, fmnist, SPACE, config, checkpoint=tmp_path / "b.safetensors",
                              log_every=2, progress=False)
    assert resumed.complete and resumed.records == history.records
    for a, b in zip(list(net.state_dict().values()) + list(adaptors.state_dict().values()),
                    list(net_c.state_dict().values()) + list(adaptors_c.state_dict().values())):
        assert torch.equal(a, b)
    assert all(np.array_equal(net.order[g], net_c.order[g]) for g in R20.groups)
    loaded, loaded_adaptors, meta = load_supernet(tmp_path / "b.safetensors")
    assert meta["history"]["complete"] and torch.equal(loaded.block("fc").weight, net.block("fc").weight)
    # A finished checkpoint is returned as is; other settings are refused.
    again = train_stagewise(*supernet(), fmnist, SPACE, config, checkpoint=tmp_path / "b.safetensors", progress=False)
    assert again.to_dict() == resumed.to_dict()
    from latbench.train import CheckpointError
    with pytest.raises(CheckpointError, match="other settings"):
        train_stagewise(*supernet(), fmnist, SPACE, StageTrainConfig(epochs=1, lr=0.1, batch_size=16,
                                                                     steps_per_epoch=6, augment=False, seed=1),
                        checkpoint=tmp_path / "b.safetensors", progress=False)


def test_sub_networks_do_not_move_the_shared_bn_statistics():
    from latbench.methods.sp.training import stagewise_step

    net, adaptors = supernet()
    net.train()
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    reference, _ = supernet()
    reference.train()
    reference(x)                                           # the full network alone
    stagewise_step(net, adaptors, x, y, [SPACE.smallest(32), SPACE.random(np.random.default_rng(0), 32)])
    for a, b in zip(net.state_dict().items(), reference.state_dict().items()):
        if "running" in a[0] or "num_batches" in a[0]:
            assert torch.equal(a[1], b[1]), a[0]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adaptors.parameters())


# ---- budgets ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["latency", "flops", "params"])
def test_stage_budgets_sum_to_the_whole_network_cost(kind):
    predictor = Predictor(R20, LatencyTable.load(TABLE)) if kind == "latency" else None
    grid = CostGrid.for_budget(R20, Budget(kind, 1.0), 32, predictor, step=8)
    costs = StageCosts.from_grid(grid, stages_of(R20))
    rng = np.random.default_rng(0)
    widths = np.array([[SPACE.random(rng, 32).widths[g] for g in R20.groups] for _ in range(50)])
    parts = sum(costs.stage(i, widths) for i in range(3)) + costs.fixed(widths)
    np.testing.assert_allclose(parts, grid.totals(widths), rtol=1e-12)
    if kind == "latency":   # and the grid is the predictor's
        from latbench.predictor import Population
        pop = Population(widths, np.zeros((50, len(R20.sparsifiable_layers))), np.full(50, 32))
        np.testing.assert_allclose(parts, predictor.predict_population(pop), rtol=1e-12)
    # The manager's split: stage budgets + the fixed part never exceed the whole budget, and use it all
    # unless every stage is capped at its widest.
    full = grid.total(R20.groups)
    for ratio in (0.3, 0.6, 0.9):
        budget = Budget(kind, ratio * full)
        splitter = BudgetSplitter(R20, stages_of(R20), costs, SPACE.choices, budget)
        manager = Manager(splitter, SPSearchConfig(manager_population=16, seed=1))
        for gene in manager.initial():
            lo = {g: SPACE.choices[g][0] for g in R20.groups} | dict(zip(splitter.boundary_groups, gene.boundary))
            total = sum(gene.budgets) + costs.fixed(lo)
            assert total <= budget.value * (1 + 1e-12)
            hi = {g: SPACE.choices[g][-1] for g in R20.groups} | dict(zip(splitter.boundary_groups, gene.boundary))
            if any(b < costs.stage(i, hi) - 1e-9 * full for i, b in enumerate(gene.budgets)):
                assert total == pytest.approx(budget.value, rel=1e-9)
            assert all(b >= costs.stage(i, lo) for i, b in enumerate(gene.budgets))


# ---- the search ---------------------------------------------------------------------------------------

def _search_inputs():
    """Random held-out and calibration images at 16×16 (the network pools globally; cheaper than 32×32)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 1, 16, 16, generator=g), torch.randn(16, 1, 16, 16, generator=g)


def test_candidates_are_scored_against_the_recalibrated_full_network():
    """A fresh supernet's running statistics are the initial ones (mean 0, var 1), nothing like its real
    statistics: the full network still scores ≈ 0 and far below the narrowest, and the search's workers
    measure what stage_losses measures."""
    from latbench.methods.sp.search import _setup, stage_data

    net, adaptors = supernet()
    images, calibration = _search_inputs()
    full = stage_losses(net, adaptors, images, SPACE.largest(32), calibration)
    small = stage_losses(net, adaptors, images, SPACE.smallest(32), calibration)
    assert sum(full) < 0.05 * sum(small)
    costs = StageCosts.from_grid(CostGrid.analytic(R20, "flops", 32, 8), net.stages)
    config = SPSearchConfig(batch_size=64)
    setup = _setup(net, adaptors, costs, SPACE, 32, config, "cpu")
    for i, data in enumerate(stage_data(net, images, calibration, 64)):
        worker = StageWorker(setup, data)
        assert worker.loss(SPACE.smallest(32).widths) == pytest.approx(small[i], rel=1e-4)
        assert worker.loss(dict(R20.groups)) == pytest.approx(full[i], rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_search_respects_the_budget_and_ray_equals_in_process(ray_instance, tmp_path):
    net, adaptors = supernet()
    grid = CostGrid.analytic(R20, "flops", 32, 8)
    costs = StageCosts.from_grid(grid, net.stages)
    budget = Budget("flops", 0.5 * grid.total(R20.groups))
    images, calibration = _search_inputs()
    local = search(net, adaptors, SPACE, costs, budget, images, calibration, TINY_SEARCH, resolution=32,
                   state=tmp_path / "local.json", progress=False)
    remote = search(net, adaptors, SPACE, costs, budget, images, calibration, TINY_SEARCH, resolution=32,
                    use_ray=True, state=tmp_path / "ray.json", progress=False)
    assert ray_instance.is_initialized()            # the session's instance was reused, not shut down
    assert (local.parallel, remote.parallel) == ("in-process", "ray")
    assert local.arch == remote.arch
    assert local.stage_losses == pytest.approx(remote.stage_losses, rel=1e-5)
    assert local.stage_budgets == remote.stage_budgets and local.evaluations == remote.evaluations
    for r in (local, remote):
        assert r.cost <= budget.value and r.cost == pytest.approx(grid.total(r.arch.widths))
        assert all(c <= b * (1 + 1e-9) for c, b in zip(r.stage_costs, r.stage_budgets))
        assert r.cost == pytest.approx(sum(r.stage_costs) + r.fixed_cost)
        assert SPACE.contains(r.arch) and len(r.history) == 2
    # Another seed searches differently but within the budget too.
    other = search(net, adaptors, SPACE, costs, budget, images, calibration,
                   SPSearchConfig(**{**TINY_SEARCH.to_dict(), "seed": 4}), resolution=32, progress=False)
    assert other.cost <= budget.value


@pytest.mark.slow
def test_search_resumes_after_a_kill_and_a_finished_search_is_not_redone(tmp_path, monkeypatch):
    net, adaptors = supernet()
    grid = CostGrid.analytic(R20, "params", 32, 8)
    costs = StageCosts.from_grid(grid, net.stages)
    budget = Budget("params", 0.4 * grid.total(R20.groups))
    images, calibration = _search_inputs()
    config = SPSearchConfig(**{**TINY_SEARCH.to_dict(), "eval_images": 8, "calib_images": 8})
    images, calibration = images[:8], calibration[:8]
    whole = search(net, adaptors, SPACE, costs, budget, images, calibration, config, resolution=32, progress=False)

    run = StageWorker.run
    calls = []

    def dies(self, task):
        calls.append(task)
        if len(calls) == 17:          # in the second generation
            raise KeyboardInterrupt
        return run(self, task)

    state = tmp_path / "state.json"
    monkeypatch.setattr(StageWorker, "run", dies)
    with pytest.raises(KeyboardInterrupt):
        search(net, adaptors, SPACE, costs, budget, images, calibration, config, resolution=32, state=state,
               progress=False)
    saved = json.loads(state.read_text())
    assert saved["generation"] == 1 and not saved["complete"]
    monkeypatch.setattr(StageWorker, "run", run)
    resumed = search(net, adaptors, SPACE, costs, budget, images, calibration, config, resolution=32, state=state,
                     progress=False)
    assert resumed.arch == whole.arch and resumed.fitness == pytest.approx(whole.fitness, rel=1e-6)
    assert resumed.stage_budgets == whole.stage_budgets

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished search ran a stage EA")

    monkeypatch.setattr(StageWorker, "__init__", forbidden)
    assert search(net, adaptors, SPACE, costs, budget, images, calibration, config, resolution=32, state=state,
                  progress=False).arch == whole.arch
    with pytest.raises(ValueError, match="other settings.*budget"):
        search(net, adaptors, SPACE, costs, Budget("params", 0.5 * grid.total(R20.groups)), images,
               calibration, config, state=state, progress=False)
    with pytest.raises(ValueError, match="other settings.*supernet"):     # e.g. the supernet was retrained
        search(*supernet(seed=1), SPACE, costs, budget, images, calibration, config, state=state, progress=False)


# ---- bad input: a clear error before any training -----------------------------------------------------

def prune(*args):
    return CliRunner().invoke(app, ["prune", "sp", *map(str, args)])


QUICK = ["--train-images", "64", "--supernet-batch-size", "32", "--manager-population", "2", "--manager-generations",
         "1", "--stage-population", "4", "--stage-generations", "1", "--eval-images", "16", "--calib-images", "16",
         "--finetune-steps", "1", "--bn-images", "32", "--test-images", "50", "--no-progress"]


def _tiny_spec(num_classes: int = 10) -> ModelSpec:
    layers = [LayerDef("a", "conv", "input", None, "g1", kernel=3, padding=1, act="relu", fixed_in=1),
              LayerDef("b", "conv", "a", "g1", "g2", kernel=3, padding=1, act="relu"),
              LayerDef("pool", "avgpool", "b", "g2", "g2"),
              LayerDef("fc", "linear", "pool", "g2", None, fixed_out=num_classes)]
    return ModelSpec("tiny", tuple(layers), {"g1": 8, "g2": 8}, resolutions=(32,), num_classes=num_classes)


def _refused(result, out: Path, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for phrase in phrases:
        assert phrase in text, text
    assert not (out / "supernet.safetensors").exists()


def test_search_on_an_imported_graph_runs_on_ray_as_in_process(ray_instance, tmp_path):
    """An imported model's supernet (an OnnxSupernet) travels to the Ray stage workers as its graph and weights
    and searches there exactly as in this process."""
    from realworld_models import export_timm_onnx, timm_available

    if not timm_available():
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    from latbench.api import load_model
    from latbench.models.onnx_torch import full_network
    from latbench.supernet import OnnxSupernet, supernet_from

    spec = load_model(str(export_timm_onnx("mobilenetv2_050", tmp_path / "m.onnx", resolution=32, in_chans=1,
                                           num_classes=10)))
    net = supernet_from(full_network(spec), "l1")
    assert isinstance(net, OnnxSupernet)
    adaptors = StageAdaptors.for_net(net)
    grid = CostGrid.analytic(spec, "flops", 32)
    space = SearchSpace.from_spec(spec, multiple=1, resolutions=(32,))
    costs = StageCosts.from_grid(grid, net.stages)
    budget = Budget("flops", 0.6 * grid.total(spec.groups))
    g = torch.Generator().manual_seed(0)
    images, calibration = torch.randn(32, 1, 32, 32, generator=g), torch.randn(16, 1, 32, 32, generator=g)
    local = search(net, adaptors, space, costs, budget, images, calibration, TINY_SEARCH, resolution=32,
                   progress=False)
    remote = search(net, adaptors, space, costs, budget, images, calibration, TINY_SEARCH, resolution=32,
                    use_ray=True, progress=False)
    assert (local.parallel, remote.parallel) == ("in-process", "ray")
    assert local.arch == remote.arch and local.cost <= budget.value
    assert local.stage_losses == pytest.approx(remote.stage_losses, rel=1e-5)


@needs_fmnist
def test_model_without_stage_boundaries(tmp_path, monkeypatch):
    from latbench.models import zoo

    monkeypatch.setitem(zoo.ZOO, "tiny", _tiny_spec)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, build(_tiny_spec(), in_channels=1), arch=Architecture.full(_tiny_spec(), 32))
    out = tmp_path / "out"
    _refused(prune("--model", "tiny", "--checkpoint", ckpt, "--budget-flops", 1e5, "--out", out, *QUICK), out,
             "model 'tiny' has no stage boundaries")


@needs_fmnist
def test_budget_below_the_narrowest_widths_names_their_latency(r20_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--table", TABLE, "--budget-ms", 0.01,
                   "--out", out, "--no-ray", *QUICK)
    _refused(result, out, "below what pruning resnet20 can reach", "the network needs")
    predictor = Predictor(R20, LatencyTable.load(TABLE))
    floor = float(predictor.predict(SPACE.smallest(32))[0])
    assert f"{floor:.4g} ms" in " ".join(result.output.split())


@needs_fmnist
def test_table_of_another_model_or_resolution(tmp_path):
    torch.manual_seed(0)
    spec = get_model("mobilenet_v2_cifar")
    ckpt = tmp_path / "mbv2.safetensors"
    save_checkpoint(ckpt, build(spec, in_channels=1), arch=Architecture.full(spec, 32))
    out = tmp_path / "a"
    _refused(prune("--model", "mobilenet_v2_cifar", "--checkpoint", ckpt, "--table", TABLE, "--budget-ratio", 0.5,
                   "--out", out, "--no-ray", *QUICK), out, "the table has no measurements", "mobilenet_v2_cifar")

    # The same layers, measured at other input sizes (a table of the model at 64×64).
    table = LatencyTable.load(TABLE)
    frame = table.frame()
    frame["input_hw"] = frame["input_hw"] * 2
    moved = tmp_path / "r20-64.parquet"
    LatencyTable.from_frame(frame, dict(table.meta)).save(moved)
    torch.manual_seed(0)
    r20 = tmp_path / "r20.safetensors"
    save_checkpoint(r20, build(R20, in_channels=1), arch=Architecture.full(R20, 32))
    out = tmp_path / "b"
    _refused(prune("--model", "resnet20", "--checkpoint", r20, "--table", moved, "--budget-ratio", 0.5,
                   "--out", out, "--no-ray", *QUICK), out, "table covers none of resnet20's resolutions")


@needs_fmnist
def test_ray_missing_or_unreachable(r20_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _refused(prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--budget-flops", 2e7, "--out", out,
                   "--ray-address", "127.0.0.1:1", *QUICK), out, "Ray cluster at 127.0.0.1:1 is unreachable")
    monkeypatch.setitem(sys.modules, "ray", None)          # as if not installed
    _refused(prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--budget-flops", 2e7, "--out", out,
                   "--ray", *QUICK), out, "Ray was asked for", "not installed", "--no-ray")
    assert "exactly one budget" in prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--out", out,
                                         *QUICK).output


def test_torch_device_that_is_not_there(r20_checkpoint, tmp_path):
    wanted = "cuda" if not torch.cuda.is_available() else "mps"
    out = tmp_path / "out"
    _refused(prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--budget-flops", 2e7, "--out", out,
                   "--torch-device", wanted, *QUICK), out, f"no {wanted} device")


# ---- the job end to end -------------------------------------------------------------------------------

def _stored_medians(store: Path, signature: str) -> list[float]:
    with sqlite3.connect(store) as db:
        return [r[0] for r in db.execute("SELECT median_ms FROM measurements WHERE signature=? OR signature LIKE ?",
                                              (signature, signature + "|beside:%"))]


@pytest.mark.slow
def test_prune_sp_end_to_end_on_the_device_and_a_rerun_recomputes_nothing(r20_checkpoint, resnet56_litert_table,
                                                                          midway_latency_budget, ray_instance,
                                                                          tmp_path, monkeypatch):
    out, store = tmp_path / "sp", tmp_path / "store.db"
    wanted = midway_latency_budget("resnet20", resnet56_litert_table)
    args = ["--model", "resnet20", "--checkpoint", r20_checkpoint, "--table", resnet56_litert_table,
            "--budget-ms", wanted, "--device", "host:litert", "--store", store, "--out", out, "--ray", *QUICK,
            "--manager-generations", 2, "--train-images", 96, "--repeats", 3]
    result = prune(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    budget = report["budget"]["value"]
    assert report["method"] == "sp" and report["retrain_from"] == "inherited"
    assert budget == pytest.approx(wanted)
    # The closed loop: the search's own network measured first, then SP's search at corrected targets.
    landing = report["landing"]
    assert landing["steps"][0]["target_ms"] == pytest.approx(budget) and report["measured_ms"] > 0
    median, upper = landing["measured_ms"], landing["upper_ms"]
    assert landing["status"] == ("over budget" if upper > budget else "in band" if median >= 0.95 * budget
                                 else "no unit fits")
    # ... and the shipped file lands too: the loop's choice retrained first, further networks in candidates/
    shipped = report["shipped_landing"]
    assert shipped["steps"][0]["widths"] == landing["architecture"]["widths"]
    assert report["architecture"] == shipped["architecture"] and 1 <= shipped["iterations"] <= LandingConfig().shipped_rounds
    assert report["shipped_repeats_ms"] == shipped["repeats"] and len(shipped["repeats"]) == 3
    assert report["within_budget"] == (report["measured_upper_ms"] <= budget)
    assert len(list((out / "candidates").iterdir())) == len({json.dumps(s["widths"]) for s in shipped["steps"]})
    if landing["chosen"] == 0 and shipped["chosen"] == 0:   # the search's own network: its cost is the prediction
        assert report["predicted_ms"] == pytest.approx(report["cost"]) and report["predicted_ms"] <= budget + 1e-9
    assert set(report["seconds"]) == {"supernet", "search", "retrain"}
    assert all(v > 0 for v in report["seconds"].values())
    assert report["search"]["parallel"] == "ray" and report["search"]["generations"] == 2
    assert sum(report["search"]["stage_costs"]) + report["search"]["fixed_cost"] == pytest.approx(report["cost"])
    assert all(w % 8 == 0 for w in report["architecture"]["widths"].values())
    assert 0 <= report["test_accuracy"]["pruned"] <= 1 and 0 <= report["test_accuracy"]["finetuned"] <= 1
    assert read_supernet_meta(out / "supernet.safetensors")["history"]["complete"]
    session = ort.InferenceSession(str(out / "pruned.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 32, 32), np.float32)})[0]
    assert logits.shape == (1, 10) and (out / "pruned.tflite").stat().st_size > 0
    assert _stored_medians(store, file_key((out / "pruned.tflite").read_bytes()))     # the shipped file was measured

    # The rerun finds every phase done: no training step, no stage EA, no export, no measurement, no file
    # rewritten.
    from latbench import export
    from latbench.methods.sp import training

    def forbidden(*a, **k):
        raise AssertionError("a finished phase ran again")

    monkeypatch.setattr(training, "stagewise_step", forbidden)
    monkeypatch.setattr(StageWorker, "__init__", forbidden)
    monkeypatch.setattr(export, "export_network_for", forbidden)
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    with sqlite3.connect(store) as db:
        measured_before = db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall()
    again = prune(*args)
    assert again.exit_code == 0, again.output
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == kept
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall() == measured_before


@pytest.mark.slow
@needs_fmnist
def test_flops_budget_retrained_from_scratch_in_process(r20_checkpoint, tmp_path):
    full = CostGrid.analytic(R20, "flops", 32).total(R20.groups)
    out = tmp_path / "scratch"
    result = prune("--model", "resnet20", "--checkpoint", r20_checkpoint, "--budget-flops", 0.5 * full,
                   "--retrain-from", "scratch", "--no-ray", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["retrain_from"] == "scratch" and report["search"]["parallel"] == "in-process"
    assert report["flops"] <= 0.5 * full and report["measured_ms"] is None and report["predicted_ms"] is None
    assert json.loads((out / "arch.json").read_text())["widths"] == report["architecture"]["widths"]
