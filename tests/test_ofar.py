"""OFARPruning (latbench.methods.ofar): similarities, rates, the PNP, joint training (chain, resume, BN modes),
bad inputs before training, and `latbench prune ofar` end to end on two host devices' tables built here."""
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from latbench.data import FASHION_MNIST_DIR, load_dataset
from latbench.methods.landing import LandingConfig
from latbench.methods.ofar import (BNMode, BudgetSpec, GlobalRanking, JointConfig, PoolBuilder, Rate, RatePlan,
                                   SearchConfig, Structures, Target, bn_gamma_scores, chain_for_step, find_rates,
                                   joint_step, load_cost_models, mask_similarity, run_search, structure_floors,
                                   train_joint)
from latbench.methods.ofar.search import SearchOutcome
from latbench.models import Architecture, GraphNet, get_model
from latbench.models.torch_net import randomize_bn
from latbench.search.budget import BudgetError, CostGrid
from latbench.supernet import DynamicNet, chain_distillation, cross_entropy, resize
from latbench.tables.table import LatencyTable
from latbench.train import read_checkpoint_meta, save_checkpoint

torch.set_num_threads(1)   # the test process only; the library never sets thread counts
R20 = get_model("resnet20")
HAS_DATA = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="Fashion-MNIST not installed (apt-get install -y "
                                                     "dataset-fashion-mnist)")


def r20(seed=0) -> GraphNet:
    """A ResNet-20 for grey 32×32 images with random, non-zero BN scales (a non-trivial γ ranking)."""
    torch.manual_seed(seed)
    return randomize_bn(GraphNet(R20, R20.groups, 1), shift=0.2).eval()


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ofar-ckpt") / "r20.safetensors"
    save_checkpoint(path, r20(), arch=Architecture.full(R20, 32))
    return path


@pytest.fixture(scope="session")
def r20_tables(tmp_path_factory) -> dict[str, Path]:
    """ResNet-20 tables at 32 and 24 (28 interpolates) measured here on host:litert and host:onnxruntime, coarse
    on purpose (2 channel knots, 3 runs): the jobs need the devices to match, not good figures."""
    from latbench.cli import app

    folder = tmp_path_factory.mktemp("r20-tables")
    out = {}
    for dev in ("host:litert", "host:onnxruntime"):
        name = dev.split(":")[1]
        table = folder / f"{name}.parquet"
        result = CliRunner().invoke(app, ["profile", "resnet20", "--resolution", "32", "--resolution", "24", "--dense",
                                          "--channel-points", "2", "--sparsity", "0", "--rounds", "1", "--runs", "3",
                                          "--warmup", "1", "--channel-multiple", "8", "--device", dev,
                                          "--store", str(folder / f"{name}.db"), "--table", str(table),
                                          "--calibrate", "3", "--no-progress"])
        assert result.exit_code == 0, result.output
        out[dev] = table
    return out


# ---- similarity ------------------------------------------------------------------------------------------

def test_mask_similarities_on_known_masks():
    a, b = np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])
    assert mask_similarity(a, b, "cosine") == pytest.approx(0.5)
    assert mask_similarity(a, b, "dice") == pytest.approx(0.5)
    assert mask_similarity(a, b, "eq3") == pytest.approx(0.25)
    full, half = np.ones(4), np.array([1, 1, 0, 0])
    assert mask_similarity(full, half, "cosine") == pytest.approx(2 / np.sqrt(8))
    assert mask_similarity(full, half, "dice") == pytest.approx(4 / 6)
    assert mask_similarity(full, half, "eq3") == pytest.approx(2 / 6)
    # Identical masks: cosine and Dice 1, the paper's Eq. 3 as printed only 0.5 (half the Dice).
    m = np.random.default_rng(0).integers(0, 2, 100)
    assert mask_similarity(m, m, "cosine") == pytest.approx(1.0)
    assert mask_similarity(m, m, "dice") == pytest.approx(1.0)
    assert mask_similarity(m, m, "eq3") == pytest.approx(0.5)
    for x, y in [(m, 1 - m), (np.random.default_rng(1).random(7), np.random.default_rng(2).random(7))]:
        assert mask_similarity(x, y, "dice") == pytest.approx(2 * mask_similarity(x, y, "eq3"))
    assert mask_similarity(m, 1 - m, "cosine") == 0.0
    with pytest.raises(ValueError, match="unknown mask similarity"):
        mask_similarity(a, b, "jaccard")


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.01, 2.0])
def test_tau_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match=r"τ \(--tau\) must be in \(0, 1\]"):
        SearchConfig(tau=tau)


def test_tau_one_and_eq3_bounds():
    assert SearchConfig(tau=1.0).tau == 1.0
    with pytest.raises(ValueError, match="never be reached with the paper's Eq. 3"):
        SearchConfig(tau=0.9, similarity="eq3")
    assert SearchConfig(tau=0.45, similarity="eq3").similarity == "eq3"


# ---- the global ranking and the rates --------------------------------------------------------------------

def test_gamma_scores_average_the_writers_of_a_coupled_group():
    net = r20()
    scores = bn_gamma_scores(net)
    writers = [layer.name for layer in R20.layers if layer.out_group == "stage2" and layer.kind != "avgpool"]
    assert writers == ["layer2.0.down", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    expected = np.mean([net.block(w).bn.weight.detach().abs().numpy() for w in writers], axis=0)
    assert np.allclose(scores["stage2"], expected)
    assert np.allclose(scores["layer3.1.mid"], net.block("layer3.1.conv1").bn.weight.detach().abs().numpy())


def test_ranking_is_global_nested_and_respects_floors():
    net = r20()
    floors = {g: 8 for g in R20.groups}
    ranking = GlobalRanking.of(net, floors, 8)
    assert ranking.total == sum(R20.groups.values()) == 448
    assert ranking.max_count == sum(w - 8 for w in R20.groups.values())
    masks = [ranking.mask(k) for k in range(0, ranking.max_count + 1, 37)]
    for wide, narrow in zip(masks, masks[1:]):
        assert not (narrow & ~wide).any()                   # pruning more only removes channels
    scores = np.concatenate([bn_gamma_scores(net)[g] for g in R20.groups])
    k = 100
    keep = ranking.mask(k)
    counts = ranking.counts(k)
    # Global: a pruned channel scores no higher than any kept channel of a group that is above its floor.
    above = np.concatenate([np.full(w, counts[g] > floors[g]) for g, w in R20.groups.items()])
    assert scores[~keep].max() <= scores[keep & above].min()
    assert all(counts[g] >= floors[g] for g in R20.groups)
    assert all(w % 8 == 0 and floors[g] <= w <= R20.groups[g] for g, w in ranking.widths(k).items())


def test_rates_meet_flops_budgets_with_the_least_pruning():
    net = r20()
    costs = load_cost_models(R20, [], flops=True)
    floors = structure_floors(R20, costs, (32, 24), 8, 0.1)
    ranking = GlobalRanking.of(net, floors, 8)
    plan = find_rates(ranking, costs, BudgetSpec(ratios=(0.7, 0.5, 0.3)), (32, 28, 24))
    assert [r.count for r in plan.rates] == sorted(r.count for r in plan.rates)
    assert plan.resolutions == (32, 28, 24)
    full = CostGrid.analytic(R20, "flops", 32).total(R20.groups)
    assert plan.full["flops"] == pytest.approx(full)
    assert [b["ratio"] for b in plan.budgets["flops"]] == [0.7, 0.5, 0.3]      # constraints in descending order
    keys = set()
    for rate in plan.rates:
        assert rate.rate == pytest.approx(rate.count / 448)
        for t in rate.targets:
            keys.add(t.key)
            grid = CostGrid.analytic(R20, "flops", t.resolution)
            assert grid.total(ranking.widths(rate.count)) <= t.budget
            if rate.count:   # the least pruning: one channel fewer does not fit
                assert grid.total(ranking.widths(rate.count - 1)) > t.budget
    assert len(keys) == 9                                       # 3 budgets × 3 resolutions, all reachable
    assert RatePlan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_dict() == plan.to_dict()


def test_unreachable_budget_names_the_smallest_reachable_per_device():
    net = r20()
    costs = load_cost_models(R20, [], flops=True)
    ranking = GlobalRanking.of(net, structure_floors(R20, costs, (32,), 8, 0.5), 8)
    with pytest.raises(BudgetError, match=r"no \(structure, resolution\) meets 0.05 .* on flops\. The smallest "
                                          r"reachable .* is flops: [\d.]+ MMACs at resolution 24"):
        find_rates(ranking, costs, BudgetSpec(ratios=(0.9, 0.05)), (32, 24))


# ---- the PNP -------------------------------------------------------------------------------------------------

class _Scored:
    """A stand-in network whose BN γ we set directly (the ranking reads only spec, widths and BN scales)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.net = GraphNet(R20, R20.groups, 1)
        self.set(scores)

    def set(self, scores: np.ndarray) -> "_Scored":
        offset = 0
        with torch.no_grad():
            for g, w in R20.groups.items():
                for layer in R20.layers:
                    if layer.out_group == g and layer.kind in ("conv", "pointwise"):
                        self.net.block(layer.name).bn.weight.copy_(torch.as_tensor(scores[offset:offset + w]))
                offset += w
        return self

    @property
    def spec(self):
        return R20

    @property
    def widths(self):
        return self.net.widths

    def block(self, name):
        return self.net.block(name)


def _plan(counts, floors) -> RatePlan:
    huge = Target("flops", 1e12, None, "any", 32)
    return RatePlan([Rate(k, k / 448, (huge,)) for k in counts], {"flops": []}, {"flops": 1.0}, {}, floors, 1,
                    (32,), 448)


def test_pnp_forms_per_rate_and_names_the_rates_that_never_stabilise(tmp_path):
    floors = {g: 1 for g in R20.groups}
    plan = _plan([10, 100], floors)
    costs = load_cost_models(R20, [], flops=True)
    scores = np.linspace(0.01, 1.0, 448)
    rng = np.random.default_rng(0)
    scores = scores[rng.permutation(448)]
    order = np.argsort(scores)
    swapped = scores.copy()     # channels ranked 99th and 101st swap: rate 100's mask changes, rate 10's does not
    swapped[[order[98], order[100]]] = swapped[[order[100], order[98]]]
    builder = PoolBuilder(plan, costs, SearchConfig(tau=1.0, epochs=4), tmp_path / "state.json", {"id": 1})
    net = _Scored(scores)
    assert builder.observe(0, net) is False
    for epoch in range(1, 5):
        assert builder.observe(epoch, net.set(swapped if epoch % 2 else scores)) is False
    pool = builder.pool()
    assert [e.rate_index for e in pool] == [0] and pool[0].epoch == 1 and pool[0].similarity == 1.0
    assert pool[0].widths == GlobalRanking(R20, dict(zip(R20.groups, np.split(scores, np.cumsum(
        list(R20.groups.values()))[:-1]))), floors, 1).widths(10)
    unstable = builder.unstable()
    assert [u["rate_index"] for u in unstable] == [1] and unstable[0]["last_similarity"] < 1.0
    outcome = SearchOutcome(None, pool, unstable, builder.epochs_run, False, 0.0, {})
    message = outcome.message(plan)
    assert "ran out of epochs (4) before 1 of 2 rates stabilised" in message
    assert f"ρ={100 / 448:.3f}" in message and "Keeping the 1 that did" in message
    # The state replays: a new builder on the same file gives the same PNP; a resumed epoch drops later ones.
    again = PoolBuilder(plan, costs, SearchConfig(tau=1.0, epochs=4), tmp_path / "state.json", {"id": 1})
    assert [e.to_dict() for e in again.pool()] == [e.to_dict() for e in pool]
    again.observe(2, net.set(swapped))
    assert again.epochs_run == 2
    # Another identity (other settings): the old records are not used.
    assert PoolBuilder(plan, costs, SearchConfig(tau=1.0), tmp_path / "state.json", {"id": 2}).records == []


def test_admitted_structures_are_pruned_further_until_they_fit(tmp_path):
    """A structure at its rate that no longer meets its constraint (the ranking moved) is pruned further along
    the current ranking until it does."""
    costs = load_cost_models(R20, [], flops=True)
    floors = {g: 8 for g in R20.groups}
    grid = CostGrid.analytic(R20, "flops", 32)
    ranking = GlobalRanking.of(r20(), floors, 8)
    budget = grid.total(ranking.widths(150))
    plan = RatePlan([Rate(60, 60 / 448, (Target("flops", budget, None, "b", 32),))], {"flops": []}, {"flops": 1.0},
                    {}, floors, 8, (32,), 448)
    builder = PoolBuilder(plan, costs, SearchConfig(tau=0.5), tmp_path / "s.json", {})
    builder.observe(0, r20())
    builder.observe(1, r20())
    (entry,) = builder.pool()
    assert entry.count == 60 and entry.count_used > 60 and entry.fits
    assert grid.total(entry.widths) <= budget < grid.total(ranking.widths(entry.count_used - 1))


@needs_data
@pytest.mark.slow
def test_search_stage_trains_forms_the_pool_and_resumes_without_training(tmp_path, fmnist, monkeypatch):
    costs = load_cost_models(R20, [], flops=True)
    net = r20()
    ranking = GlobalRanking.of(net, structure_floors(R20, costs, (32,), 8, 0.1), 8)
    plan = find_rates(ranking, costs, BudgetSpec(ratios=(0.8, 0.6)), (32, 24))
    config = SearchConfig(epochs=3, tau=0.5, batch_size=32, steps_per_epoch=2, sparsity=1e-3)
    outcome = run_search(net, fmnist.train.head(128), plan, costs, config, tmp_path)
    assert outcome.trained and outcome.stopped_early and outcome.epochs_run == 1
    assert len(outcome.pool) == len(plan.rates) and not outcome.unstable
    meta = read_checkpoint_meta(tmp_path / "search.safetensors")
    assert meta["history"]["complete"] and meta["history"]["step"] == 2
    assert not torch.equal(outcome.net.block("stem").bn.weight, net.block("stem").bn.weight)   # it trained
    import latbench.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a finished search trained again"))
    again = run_search(net, fmnist.train.head(128), plan, costs, config, tmp_path)
    assert not again.trained and [e.to_dict() for e in again.pool] == [e.to_dict() for e in outcome.pool]
    assert torch.equal(again.net.block("stem").bn.weight, outcome.net.block("stem").bn.weight)


def test_slimming_hook_adds_the_l1_subgradient():
    from latbench.methods.ofar.search import slimming_hook

    net = r20()
    bn = net.block("stem").bn
    bn.weight.grad = torch.zeros_like(bn.weight)
    with torch.no_grad():
        bn.weight[0] = -0.5
    slimming_hook(0.01)(net, 0)
    assert torch.allclose(bn.weight.grad, 0.01 * torch.sign(bn.weight.detach()))


# ---- joint training ------------------------------------------------------------------------------------

def _structures() -> Structures:
    full = dict(R20.groups)
    mid = {g: max(8, w * 3 // 4 // 8 * 8) for g, w in full.items()}
    small = {g: 8 for g in full}
    half = {g: max(8, w // 2) for g, w in full.items()}
    return Structures(R20, (full, mid, half, small))


def test_chain_is_teacher_assistants_student_and_a_function_of_the_step():
    s = _structures()
    for step in range(30):
        chain = chain_for_step(len(s), (32, 28, 24), step, seed=3, flops=s.flops)
        assert chain == chain_for_step(len(s), (32, 28, 24), step, seed=3, flops=s.flops)
        assert chain[0] == (0, 32) and chain[-1][0] == 3 and len(chain) == 4
        assert {chain[1][0], chain[2][0]} <= {1, 2}
        assert s.flops(*chain[1]) >= s.flops(*chain[2])               # the larger assistant first
    draws = {tuple(chain_for_step(len(s), (32, 28, 24), step, 0)[-1]) for step in range(40)}
    assert {r for _, r in draws} == {32, 28, 24}                      # the student's resolution is random
    assert chain_for_step(1, (32,), 0) == [(0, 32), (0, 32), (0, 32), (0, 32)]


def test_joint_step_is_ce_of_the_teacher_plus_the_chain():
    s = _structures()
    net = DynamicNet.from_parent(r20(), "l1").train()
    x, y = torch.randn(6, 1, 32, 32), torch.randint(0, 10, (6,))
    config = JointConfig(resolutions=(32, 28, 24), seed=1)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    loss, teacher, chain = joint_step(net, s, config, x, y, step=5)
    net.load_state_dict(state)
    logits = [net(resize(x, r), s.arch(j, r)) for j, r in chain]
    assert torch.allclose(loss, cross_entropy(logits[0], y) + chain_distillation(logits))
    no_ta = JointConfig(resolutions=(32, 28, 24), seed=1, assistants=False)
    net.load_state_dict(state)
    loss2, _, chain2 = joint_step(net, s, no_ta, x, y, step=5)
    assert chain2 == chain
    net.load_state_dict(state)
    logits = [net(resize(x, r), s.arch(j, r)) for j, r in chain]
    direct = sum(chain_distillation([logits[0], lg]) for lg in logits[1:])
    assert torch.allclose(loss2, cross_entropy(logits[0], y) + direct)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("mode", [BNMode.RECALIBRATED, BNMode.PRIVATE])
def test_joint_training_resumes_exactly_in_both_bn_modes(tmp_path, fmnist, mode):
    s = _structures()
    parent = r20()
    data = fmnist.train.head(96)
    config = JointConfig(epochs=2, batch_size=32, steps_per_epoch=2, checkpoint_every=1, resolutions=(32, 24),
                         bn_mode=mode)
    whole = DynamicNet.from_parent(parent, "l1")
    history = train_joint(whole, s, data, config, tmp_path / "whole.safetensors", progress=False)
    assert history.complete and history.step == 4
    part = DynamicNet.from_parent(parent, "l1")
    stopped = train_joint(part, s, data, config, tmp_path / "part.safetensors", max_steps=3, progress=False)
    assert stopped.step == 3 and not stopped.complete
    resumed = DynamicNet.from_parent(parent, "l1")
    history2 = train_joint(resumed, s, data, config, tmp_path / "part.safetensors", progress=False)
    assert history2.step == 4
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    shared = DynamicNet.from_parent(parent, "l1")
    if mode is BNMode.PRIVATE:
        # Private BN: each structure has its own γ/β/statistics (the teacher's and student's trained every
        # step); the shared BN parameters never train.
        assert hasattr(whole, "ofar_bn") and "ofar_bn.weight.s0_stem" in whole.state_dict()
        assert torch.equal(whole.block("stem").bn.weight, shared.block("stem").bn.weight)
        assert not torch.equal(whole.ofar_bn.weight["s0_stem"], shared.block("stem").bn.weight)
        assert not torch.equal(whole.ofar_bn.weight["s3_stem"], whole.ofar_bn.weight["s0_stem"])
        assert not torch.equal(getattr(whole.ofar_bn, "mean_s3_stem"), shared.block("stem").bn.running_mean)
        # Extraction with a structure's private BN swapped in, and the shared BN restored afterwards.
        arch = s.arch(3, 24)
        with whole.ofar_bn.swapped_in(whole, 3):
            small = whole.extract(arch)
        assert torch.equal(small.block("stem").bn.weight, whole.ofar_bn.weight["s3_stem"][:8])
        assert torch.equal(whole.block("stem").bn.weight, shared.block("stem").bn.weight)
        from latbench.methods.ofar.joint import structure_forward

        x = resize(fmnist.val.normalize(fmnist.val.images[:8]), 24)
        assert torch.allclose(small(x), structure_forward(whole.eval(), 3, arch, x), atol=1e-5)
    else:
        assert not hasattr(whole, "ofar_bn")
        assert not torch.equal(whole.block("stem").bn.weight, shared.block("stem").bn.weight)


# ---- the job: bad inputs before training, and end to end ----------------------------------------------

def _forbid_training(monkeypatch):
    import latbench.methods.ofar.job as job
    import latbench.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("training started despite bad input"))
    monkeypatch.setattr(job, "run_search", lambda *a, **k: pytest.fail("the search started despite bad input"))


def _ofar(args, out, tables=(), extra=()):
    from latbench.cli import app

    base = ["prune", "ofar", "--model", "resnet20", "--out", str(out), "--no-progress", "--train-images", "256",
            "--val-images", "128", "--test-images", "128", "--bn-images", "64", "--batch-size", "32"]
    for t in tables:
        base += ["--table", str(t)]
    return CliRunner().invoke(app, base + list(args) + list(extra))


@needs_data
@pytest.mark.slow
def test_bad_inputs_fail_before_training(tmp_path, checkpoint, r20_tables, monkeypatch):
    _forbid_training(monkeypatch)
    ck = ["--checkpoint", str(checkpoint)]
    tables = list(r20_tables.values())
    # A table of another model beside a ResNet-20 one.
    other = Path(__file__).resolve().parents[1] / "tables" / "host-ort-resnet56-32-adaptive.parquet"
    result = _ofar(ck + ["--budget-ratio", "0.9", "--resolutions", "32"], tmp_path / "a", [tables[0], other])
    assert result.exit_code == 2
    assert "tables of different models" in result.output and "resnet56" in result.output
    # A resolution the tables do not cover: both named with the sizes they were profiled at.
    result = _ofar(ck + ["--budget-ratio", "0.9", "--resolutions", "32", "--resolutions", "20"], tmp_path / "b", tables)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "does not cover resolution(s) [20]" in text and "profiled at [24, 32]" in text
    assert "litert.parquet (host:litert)" in text and "onnxruntime.parquet (host:onnxruntime)" in text
    # A budget no (structure, resolution) reaches: the smallest reachable latency per device.
    result = _ofar(ck + ["--budget-ratio", "0.9", "--budget-ratio", "0.05", "--resolutions", "32", "--resolutions",
                         "24"], tmp_path / "c", tables)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "no (structure, resolution) meets 0.05" in text
    assert "host:litert:" in text and "host:onnxruntime:" in text and "ms at resolution 24" in text
    # τ outside (0, 1].
    result = _ofar(ck + ["--budget-ratio", "0.9", "--tau", "1.5"], tmp_path / "d", tables)
    assert result.exit_code == 2 and "must be in (0, 1]" in result.output
    # Neither tables nor FLOPs; an unknown BN mode.
    assert "give the devices' latency tables" in _ofar(ck + ["--budget-ratio", "0.5"], tmp_path / "e").output
    result = _ofar(ck + ["--budget-ratio", "0.9", "--bn-mode", "switchable"], tmp_path / "f", tables)
    text = " ".join(result.output.split())      # the option is the BNMode enum: the CLI names the allowed values
    assert result.exit_code == 2 and "switchable" in text and "recalibrated" in text and "private" in text
    for name in "abcdef":
        assert not (tmp_path / name / "search.safetensors").exists()


def _phone_copy(table: Path, folder: Path) -> Path:
    """The litert table claimed by a phone: a device that is not here, so its choices are predicted."""
    t = LatencyTable.load(table)
    t.meta = {**t.meta, "device": "usb:PHONE0001", "fingerprint": "android-test-0001"}
    return t.save(folder / "phone.parquet")


@needs_data
@pytest.mark.slow
def test_prune_ofar_end_to_end_and_a_rerun_recomputes_nothing(tmp_path, checkpoint, r20_tables, monkeypatch):
    import onnx

    phone = _phone_copy(r20_tables["host:litert"], tmp_path)
    tables = [r20_tables["host:litert"], r20_tables["host:onnxruntime"], phone]
    out = tmp_path / "ofar"
    args = ["--checkpoint", str(checkpoint), "--budget-ratio", "0.9", "--budget-ratio", "0.8", "--resolutions", "32",
            "--resolutions", "28", "--resolutions", "24", "--search-epochs", "2", "--steps-per-epoch", "2",
            "--joint-epochs", "1", "--tau", "0.5", "--store", str(tmp_path / "store.db"), "--repeats", "3"]
    result = _ofar(args, out, tables)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ofar" and report["resolutions"] == [32, 28, 24]
    assert set(report["devices"]) == {"host:litert", "host:onnxruntime", "usb:PHONE0001"}
    assert report["search"]["pnp"] and not report["unmet"]
    cohort = report["cohort"]
    assert {(c["device"], c["budget_ratio"]) for c in cohort} == {(d, r) for d in report["devices"] for r in (0.9, 0.8)}
    scores = {(s["structure"], s["resolution"]): s["val_acc"] for s in report["scores"]}
    for c in cohort:
        landing = c["landing"]
        if landing is None:                                  # predicted only (the phone): within by prediction
            assert not c["device"].startswith("host:") and c["predicted_ms"] <= c["budget_ms"] * (1 + 1e-9)
        else:                                                # here: landed on the budget as measured
            assert landing["steps"][0]["target_ms"] == pytest.approx(c["budget_ms"])
            assert landing["architecture"]["widths"] == landing["steps"][landing["chosen"]]["widths"]
            median, upper = landing["measured_ms"], landing["upper_ms"]
            assert landing["status"] == ("over budget" if upper > c["budget_ms"] else "in band"
                                         if median >= 0.95 * c["budget_ms"] else "no unit fits")
            # ... and its shipped file lands too: the loop's choice first, the chosen file in its own folder
            shipped = c["shipped_landing"]
            assert shipped["steps"][0]["widths"] == landing["architecture"]["widths"]
            assert shipped["architecture"] == c["arch"] and c["measured_ms"] == shipped["measured_ms"]
            assert len(shipped["repeats"]) == 3 and 1 <= shipped["iterations"] <= LandingConfig().shipped_rounds
        assert c["budget_ms"] == pytest.approx(c["budget_ratio"] * report["devices"][c["device"]]["full"])
        assert c["resolution"] in (32, 28, 24) and 0 <= c["test_acc"] <= 1
        # The most accurate fitting pair on the validation split.
        assert c["val_acc"] == scores[(c["structure"], c["resolution"])]
        folder = Path(c["folder"])
        arch = Architecture.from_json((folder / "arch.json").read_text())
        assert arch.resolution == c["resolution"] and arch.to_dict() == c["arch"]
        shape = onnx.load(folder / "pruned.onnx").graph.input[0].type.tensor_type.shape
        assert [d.dim_value for d in shape.dim][-2:] == [c["resolution"], c["resolution"]]
        assert (folder / "pruned.tflite").stat().st_size > 0
        if c["device"].startswith("host:"):                 # here: measured, the file that is shipped
            assert c["measurement"] == "measured" and c["measured_ms"] > 0
        else:
            assert c["measured_ms"] is None and "not a host runtime here" in c["measurement"]
    # A rerun recomputes nothing: no training, recalibration, scoring, export or measurement.
    import latbench.export as export
    import latbench.methods.ofar.job as job
    import latbench.supernet as supernet
    import latbench.train.loop as loop

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("report.json",)}
    for mod, name in ((loop, "train"), (supernet, "recalibrate"), (export, "export_network_for"), (job, "_score")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: pytest.fail(f"the rerun called {_n}"))
    with sqlite3.connect(tmp_path / "store.db") as db:
        measured_before = db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall()
    again = _ofar(args, out, tables)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with sqlite3.connect(tmp_path / "store.db") as db:      # every measurement read back from the store
        assert db.execute("SELECT signature, measured_at FROM measurements ORDER BY 1").fetchall() == measured_before
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["cohort"] == cohort and rerun["seconds"] == report["seconds"]


@needs_data
@pytest.mark.slow
def test_uniform_pool_baseline_on_flops_budgets(tmp_path, checkpoint):
    """The US-Net/MutualNet baseline through the same pipeline: uniform width multipliers, no search stage,
    every network distilled from the largest; FLOPs budgets (nothing to measure)."""
    from latbench.methods.ofar.job import OFARJob, run_ofar

    job = OFARJob(model="resnet20", checkpoint=str(checkpoint), out=str(tmp_path / "usnet"), budgets_flops=(20e6,),
                  budget_ratios=(0.5,), resolutions=(32, 24), pool="uniform", uniform_ratios=(1.0, 0.75, 0.5),
                  joint=JointConfig(epochs=1, batch_size=32, steps_per_epoch=2, assistants=False),
                  train_images=64, val_images=64, test_images=64, bn_images=32, progress=False)
    report = run_ofar(job)
    assert report["pool"] == "uniform" and not (tmp_path / "usnet" / "search.safetensors").exists()
    widths = [s["widths"] for s in report["structures"]]
    assert widths[0] == dict(R20.groups) and all(w["stage3"] in (64, 48, 32) for w in widths)
    assert {c["budget_label"] for c in report["cohort"]} == {"0.5", "2e+07macs"}
    for c in report["cohort"]:
        assert c["device"] == "flops" and c["predicted_flops"] <= c["budget_flops"]
        assert c["measurement"] == "FLOPs (nothing to measure)"


@pytest.mark.slow
def test_an_image_folder_is_streamed_through_every_phase_never_decoded_whole(tmp_path, checkpoint, monkeypatch):
    """ImageFolder data: training batches come from a resumable torch.utils.data loader of random-resized
    crops, BN statistics and scores from streamed centre crops; nothing loads the tree into memory."""
    Image = pytest.importorskip("PIL.Image", reason="Pillow decodes ImageFolder images")
    import latbench.data as data_module
    import latbench.data.stream as stream
    import latbench.methods.ofar.job as ofar_job
    from latbench.data import StreamLoader
    from latbench.methods.ofar.job import OFARJob, run_ofar

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 6)):
        for c in ("a", "b"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40 + i % 3 * 8, 36), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(tmp_path / "tree" / split / c / f"{i}.png")
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: pytest.fail("the tree was loaded into memory"))
    decoded = []
    real_decode = stream.StreamingImageFolder.decode
    monkeypatch.setattr(stream.StreamingImageFolder, "decode", lambda self, i: decoded.append(i) or real_decode(self, i))
    loaders = []
    real_joint = ofar_job.train_joint
    monkeypatch.setattr(ofar_job, "train_joint", lambda *a, **k: loaders.append(k["loader"]) or real_joint(*a, **k))

    job = OFARJob(model="resnet20", checkpoint=str(checkpoint), out=str(tmp_path / "ofar"), data="imagefolder",
                  data_dir=str(tmp_path / "tree"), val_size=8, budgets_flops=(20e6,), resolutions=(32, 24),
                  pool="uniform", uniform_ratios=(1.0, 0.5),
                  joint=JointConfig(epochs=1, batch_size=8, steps_per_epoch=2, assistants=False),
                  bn_images=8, progress=False)
    report = run_ofar(job)
    assert report["data"].startswith("imagefolder:") and report["images"] == {"train": 40, "val": 8, "test": 12,
                                                                             "bn": 8}
    assert isinstance(loaders[0], StreamLoader) and loaders[0].resolutions == (32,) and loaders[0].crop is not None
    assert decoded and report["cohort"] and all(0 <= c["test_acc"] <= 1 for c in report["cohort"])


def test_phase_seconds_add_up_over_runs_that_worked(tmp_path):
    """A phase that works again in a later run (landing proposals exported by a rerun) adds its time; a run
    that only skips it keeps the figure."""
    from latbench.methods.ofar.job import PhaseSeconds

    path = tmp_path / "seconds.json"
    first = PhaseSeconds(path)
    first.add("export", time.perf_counter() - 2.0, worked=True)
    first.add("search", time.perf_counter() - 1.0, worked=True)
    second = PhaseSeconds(path)                       # read back from the file
    second.add("export", time.perf_counter() - 3.0, worked=True)
    second.add("search", time.perf_counter(), worked=False)
    second.add("scoring", time.perf_counter() - 0.5, worked=False)     # skipped with no earlier figure: its time
    again = json.loads(path.read_text())
    assert again["export"] == pytest.approx(5.0, abs=0.1) and again["search"] == pytest.approx(1.0, abs=0.1)
    assert again["scoring"] == pytest.approx(0.5, abs=0.1) and again == second.by_phase


def test_rates_on_the_jcw_phone_table_where_it_fits(tmp_path, jcw_dir):
    """The JCW authors' phone table covers ResNet-18 at 224 only: OFAR's step 1 finds a rate for each budget
    on it (a phone: predicted, never measured here), and a resolution it lacks is named with the one it has."""
    from latbench.cli import app
    from latbench.methods.ofar.rates import check_resolutions
    from latbench.models import build
    from latbench.tables.table import TableError

    table = tmp_path / "phone.parquet"
    assert CliRunner().invoke(app, ["table", "import-jcw", str(jcw_dir), "-o", str(table)]).exit_code == 0
    torch.manual_seed(0)
    parent = build(get_model("resnet18"), in_channels=3)
    randomize_bn(parent)                                   # distinct γ, as a trained network has
    costs = load_cost_models(parent.spec, [str(table)], flops=False)
    (phone,) = costs
    assert phone.kind == "latency" and not phone.device.startswith("host:")
    check_resolutions(costs, [224])
    with pytest.raises(TableError, match=r"does not cover resolution\(s\) \[192\]: it was profiled at \[224\]"):
        check_resolutions(costs, [224, 192])
    floors = structure_floors(parent.spec, costs, [224], 8, 0.25)
    ranking = GlobalRanking.of(parent, floors, 8)
    plan = find_rates(ranking, costs, BudgetSpec(ratios=(0.7, 0.5)), [224])
    budgets = [b["value"] for b in plan.budgets[phone.label]]
    assert budgets == pytest.approx([0.7 * phone.full(224), 0.5 * phone.full(224)])
    assert {t.budget for t in plan.targets} == set(budgets)
    for rate in plan.rates:                    # each rate's structure meets its budgets on the phone's table
        widths = ranking.widths_matrix(np.array([rate.count]))
        cost = float(phone.costs(widths, 224)[0])
        assert all(cost <= t.budget * (1 + 1e-9) for t in rate.targets)
        assert 0 < rate.rate < 1
