"""JCW's weight-sharing supernet (latbench.methods.jcw.evaluator, built on the core latbench.supernet):
magnitude masks, channel reordering, slicing == materialize, per-subnet BN, extraction, the search's
evaluator protocol (with a real JCW search), training lowers the loss, resume, no thread settings."""
import numpy as np
import pytest
import torch

from latbench.data import FASHION_MNIST_DIR, NO_AUGMENT, DataSplits, ImageDataset, channel_stats, load_fashion_mnist
from latbench.models import Architecture, ArchitectureError, GraphNet, apply_sparsity, get_model, materialize
from latbench.models import random_architectures
from latbench.models.torch_net import randomize_bn
from latbench.methods.jcw.evaluator import SupernetConfig, SupernetEvaluator
from latbench.supernet import magnitude_keep
from latbench.train import CheckpointError, save_checkpoint
from latbench.train.importance import channel_importance, recalibrate_bn

torch.set_num_threads(1)   # a busy 2-core machine: one thread is several times faster than two
R20 = get_model("resnet20")


def small_widths() -> dict[str, int]:
    """ResNet-20 at half width (8/16/32 channels): the tests' parent network."""
    return {g: w // 2 for g, w in R20.groups.items()}


def parent_net(spec=R20, widths=None, seed=0, in_channels=1) -> GraphNet:
    """A randomly initialised network with non-trivial BN statistics (so that BN handling is exercised)."""
    torch.manual_seed(seed)
    return randomize_bn(GraphNet(spec, widths or spec.groups, in_channels), shift=0.2).eval()


def separable_data(n_train=384, n_val=128, hw=8, classes=10, seed=0, noise=90) -> DataSplits:
    """A synthetic task any conv net learns in a few dozen steps: each class is a fixed random pattern,
    samples are the pattern plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(0, 256, (classes, 1, hw, hw), generator=g).float()

    def draw(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        images = prototypes[labels] * 0.65 + torch.randint(0, noise, (n, 1, hw, hw), generator=g)
        return images.clamp(0, 255).to(torch.uint8), labels

    (xt, yt), (xv, yv), (xs, ys) = draw(n_train), draw(n_val), draw(n_val)
    mean, std = channel_stats(xt)

    def make(name, x, y):
        return ImageDataset(name, x, y, classes, mean, std)

    return DataSplits("separable", make("separable:train", xt, yt), make("separable:val", xv, yv),
                      make("separable:test", xs, ys))


def some_archs(spec, n, seed, widths=None, sparsities=(0.0, 0.5, 0.9)):
    """Random architectures between half and all of ``widths`` (the parent's), with their sparsities."""
    widths = widths or spec.groups
    rng = np.random.default_rng(seed)
    out = []
    for arch in random_architectures(spec, n, seed=seed, sparsities=sparsities):
        w = {g: int(rng.integers(max(1, widths[g] // 2), widths[g] + 1)) for g in spec.groups}
        out.append(Architecture(spec.name, arch.resolution, w, arch.sparsity))
    return out


# ---- masks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (24, 1, 3, 3), (10, 7)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_keep_drops_exactly_the_smallest(shape, sparsity):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    keep = magnitude_keep(w, sparsity)
    assert keep.shape == w.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == round(sparsity * w.numel())
    if 0 < sparsity:
        assert w.abs()[~keep].max() <= w.abs()[keep].min()
    # The same choice as materialize's apply_sparsity, so a masked slice equals a materialized weight.
    assert torch.equal(apply_sparsity(w.clone(), sparsity) == 0, ~keep)


def test_magnitude_keep_with_ties_still_drops_exactly_k():
    w = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 2.0, 3.0])
    keep = magnitude_keep(w, 0.25)                    # 2 of the 4 zeros
    assert int((~keep).sum()) == 2 and bool(keep[4:].all())
    keep = magnitude_keep(w, 0.625)                   # 5: the zeros and one of ±1
    assert int((~keep).sum()) == 5 and bool(keep[6:].all()) and int(keep[4:6].sum()) == 1


@pytest.mark.parametrize("cout, block", [(16, 4), (10, 4), (7, 8)])
def test_block_masks_give_each_block_its_sparsity(cout, block):
    w = torch.randn(cout, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    keep = magnitude_keep(w, 0.6, block=block)
    for start in range(0, cout, block):
        wb, kb = w[start:start + block], keep[start:start + block]
        assert int((~kb).sum()) == round(0.6 * wb.numel())
        assert wb.abs()[~kb].max() <= wb.abs()[kb].min()
    # With more than one block it is not the layer-wide choice (where a block of large weights keeps more).
    w[:block] *= 10
    assert torch.equal(magnitude_keep(w, 0.6, block=block), magnitude_keep(w, 0.6)) == (block >= cout)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_keep(w, 1.0)


# ---- reordering and slicing -------------------------------------------------------------------------

def tiny_config(**kw):
    base = dict(steps_per_generation=6, batch_size=32, bn_batches=2, bn_batch_size=64, eval_batch_size=128,
                augment=NO_AUGMENT, lr=0.05)
    return SupernetConfig(**{**base, **kw})


def evaluator_for(parent, data=None, order="l1", **kw) -> SupernetEvaluator:
    """JCW's evaluator on ``parent`` (its supernet is ``.net``, a core DynamicNet)."""
    return SupernetEvaluator(parent, data or separable_data(n_train=64, n_val=32), tiny_config(**kw), order=order)


def test_reordering_keeps_the_function_and_puts_the_best_channels_first():
    net = parent_net(widths=small_widths())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
    supernet = evaluator_for(net).net
    with torch.no_grad():
        after = supernet(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    for group, scores in channel_importance(supernet.to_graphnet(), "l1").items():
        assert np.all(np.diff(scores) <= 1e-9), group                   # best first
        np.testing.assert_allclose(scores, channel_importance(net, "l1")[group][supernet.order[group]], rtol=1e-5)
    assert not torch.equal(supernet.block("stem").conv.weight, net.block("stem").conv.weight)  # a copy
    with pytest.raises(ValueError, match="permutation"):
        evaluator_for(net, order={"stage1": [0, 0, 1, 2, 3, 4, 5, 6]})


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar"])
def test_slicing_equals_materialize_of_the_reordered_parent(name):
    spec = get_model(name)
    parent = parent_net(spec)
    supernet = evaluator_for(parent).net
    x = torch.randn(3, 1, 8, 8)
    archs = [Architecture.full(spec)] + some_archs(spec, 2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, archs[0]), parent(x), rtol=1e-5, atol=1e-5)
        for arch in archs[1:]:
            assert arch.sparsity
            out = supernet(x, arch)
            reference = materialize(arch, spec, supernet.to_graphnet())(x)  # same BN statistics (the parent's)
            torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
            # ...and the original parent sliced by the importance order is the same network.
            original = materialize(arch, spec, parent, importance=supernet.order)(x)
            torch.testing.assert_close(out, original, rtol=1e-5, atol=1e-5)
            assert (out - supernet(x, Architecture(arch.model, arch.resolution, arch.widths))).abs().max() > 1e-4


def test_recalibrated_bn_and_extraction_match_recalibrate_bn_on_materialize():
    spec = get_model("mobilenet_v2_cifar")
    evaluator = evaluator_for(parent_net(spec))
    supernet = evaluator.net
    arch = some_archs(spec, 1, seed=5)[0]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 1, 8, 8, generator=g), None) for _ in range(3)]
    x = torch.randn(4, 1, 8, 8, generator=g)
    shared = {k: v.clone() for k, v in supernet.state_dict().items()}
    bn = evaluator.calibrate(arch, batches)
    reference = materialize(arch, spec, supernet.to_graphnet())
    recalibrate_bn(reference, batches)
    extracted = evaluator.extract(arch, bn)
    for name, (mean, var) in bn.items():
        torch.testing.assert_close(mean, reference.block(name).bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, reference.block(name).bn.running_var, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        out = supernet(x, arch, bn=bn)
        torch.testing.assert_close(extracted(x), out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reference(x), out, rtol=1e-4, atol=1e-5)
        assert (out - supernet(x, arch)).abs().max() > 1e-3             # the recalibration changed something
    for k, v in supernet.state_dict().items():                          # the shared weights are untouched
        assert torch.equal(v, shared[k]), k
    # The extracted network has real zeros where the masks drop weights, and can be kept dense.
    for layer, s in arch.sparsity.items():
        w = extracted.block(layer).conv.weight
        assert int((w == 0).sum()) == round(s * w.numel())
    dense = evaluator.extract(arch, bn, sparse=False)
    assert all(int((dense.block(n).conv.weight == 0).sum()) == 0 for n in arch.sparsity)


def test_block_sparsity_supernet_forward_equals_its_extraction():
    evaluator = evaluator_for(parent_net(), sparsity_block=4)
    arch = some_archs(R20, 1, seed=7, sparsities=(0.5,))[0]
    x = torch.randn(2, 1, 8, 8)
    extracted = evaluator.extract(arch)
    with torch.no_grad():
        torch.testing.assert_close(extracted(x), evaluator.net(x, arch), rtol=1e-5, atol=1e-6)
    w = extracted.block("layer2.1.conv1").conv.weight
    for start in range(0, w.shape[0], 4):
        block = w[start:start + 4]
        assert int((block == 0).sum()) == round(0.5 * block.numel())


def test_training_forward_uses_slices_masks_and_batch_statistics():
    supernet = evaluator_for(parent_net(widths=small_widths())).net.train()
    arch = Architecture("resnet20", 32, {g: w // 2 for g, w in small_widths().items()},
                        {"layer2.1.conv1": 0.5})
    running = supernet.block("layer2.1.conv1").bn.running_mean.clone()
    x = torch.randn(8, 1, 8, 8)
    supernet(x, arch).logsumexp(1).sum().backward()
    conv = supernet.block("layer2.1.conv1").conv.weight
    assert torch.equal(supernet.block("layer2.1.conv1").bn.running_mean, running)       # shared stats untouched
    assert conv.grad[8:].abs().sum() == 0 and conv.grad[:, 8:].abs().sum() == 0         # outside the slice
    keep = magnitude_keep(conv.detach()[:8, :8], 0.5)
    assert conv.grad[:8, :8][~keep].abs().sum() == 0 < conv.grad[:8, :8][keep].abs().sum()
    with pytest.raises(ArchitectureError, match="wider than the supernet"):
        supernet(x, Architecture.full(R20))


# ---- the evaluator ----------------------------------------------------------------------------------

def test_evaluator_protocol_inside_a_real_jcw_search():
    """ResNet-18 on the shipped host table; the supernet (10 classes, grey 16×16 inputs) scores P ∪ Q."""
    from pathlib import Path

    from latbench.predictor import Predictor
    from latbench.methods.jcw.search import Evaluator, JCWSearch, SearchConfig
    from latbench.tables import LatencyTable

    spec = get_model("resnet18")
    table = Path(__file__).resolve().parents[1] / "tables" / "host-ort-resnet18-224-adaptive.parquet"
    data = separable_data(n_train=128, n_val=64, hw=16)
    evaluator = SupernetEvaluator(parent_net(get_model("resnet18", num_classes=10)), data,
                                  tiny_config(steps_per_generation=2, batch_size=16, bn_batches=1, bn_batch_size=32,
                                              objective="error"))
    assert isinstance(evaluator, Evaluator)
    result = JCWSearch(spec, Predictor(spec, LatencyTable.load(table)), evaluator,
                       SearchConfig(population=4, generations=1)).run()
    assert [r.architectures for r in evaluator.history] == [8] and evaluator.history[0].steps == 2
    last = result.history[-1]
    assert len(last.loss) == 4 and np.all((last.loss >= 0) & (last.loss <= 1))
    assert len(evaluator.last_accuracies) == 8
    # The survivors' losses are the supernet's errors of P ∪ Q (the search kept 4 of the 8).
    assert set(np.round(last.loss, 9)) <= set(np.round(1 - evaluator.last_accuracies, 9))


def test_evaluate_scores_duplicates_once_and_returns_the_chosen_objective():
    data = separable_data()
    parent = parent_net(widths=small_widths())
    archs = some_archs(R20, 2, seed=1, widths=small_widths())
    evaluator = SupernetEvaluator(parent, data, tiny_config())
    losses = evaluator.evaluate([archs[0], archs[1], archs[0]])
    assert losses.shape == (3,) and losses[0] == losses[2] and np.all(losses > 0)
    assert evaluator.score(archs[1]).loss == losses[1] and len(evaluator._scores) == 2
    np.testing.assert_allclose(evaluator.last_losses, losses)
    # The score is the extracted network's, recalibrated on the same batches, on the validation split.
    bn = evaluator.calibrate(archs[1], evaluator._bn_batches)
    net = evaluator.extract(archs[1], bn)
    with torch.no_grad():
        logits = torch.cat([net(x) for x, _ in evaluator._val_batches])
    labels = data.val.labels
    assert evaluator.score(archs[1]).accuracy == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert losses[1] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    errors = SupernetEvaluator(parent, data, tiny_config(objective="error")).evaluate(archs)
    np.testing.assert_allclose(errors, 1 - evaluator.last_accuracies[:2])
    with pytest.raises(ValueError, match="validation split"):
        SupernetEvaluator(parent, DataSplits("x", data.train, None, data.test))
    with pytest.raises(ValueError, match="objective"):
        SupernetConfig(objective="accuracy")


def test_update_lowers_the_loss():
    data = separable_data()
    archs = some_archs(R20, 3, seed=2, widths=small_widths(), sparsities=(0.0, 0.5))
    evaluator = SupernetEvaluator(parent_net(widths=small_widths()), data,
                                  tiny_config(steps_per_generation=15, sandwich=True))
    before = evaluator.evaluate(archs)
    record = evaluator.update(archs)
    after = evaluator.evaluate(archs)
    # (15 steps: at 10 the drop is ~0.8 for old and new alike, the margin depending on the seed's draws.)
    assert record.steps == 15 and record.architectures == 3 and not record.skipped
    assert after.mean() < 0.8 * before.mean(), (before, after)


@pytest.mark.parametrize("warm", [False, True])
def test_restart_mode_forgets_the_previous_generation_and_warm_mode_continues(warm):
    """Two runs that train different populations first and the same one second: by default each generation
    starts from the parent, so they end identical; warm-started, the first generation still shows."""
    data = separable_data()
    parent = parent_net(widths=small_widths())
    first_a, first_b, second = (some_archs(R20, 2, seed=s, widths=small_widths()) for s in (10, 11, 12))
    finals, steps = [], []
    for first in (first_a, first_b):
        evaluator = SupernetEvaluator(parent, data, tiny_config(steps_per_generation=4, warm_start=warm))
        evaluator.update(first)
        steps.append(evaluator.update(second).steps)
        finals.append(evaluator.net.block("layer2.0.conv1").conv.weight.detach().clone())
    assert steps == [1, 1] if warm else steps == [4, 4]                   # warm: a quarter of the steps
    assert torch.equal(finals[0], finals[1]) != warm


def test_checkpoint_resume_skips_an_update_it_already_holds(tmp_path):
    data = separable_data()
    parent = parent_net(widths=small_widths())
    archs = some_archs(R20, 2, seed=6, widths=small_widths())
    path = tmp_path / "supernet.safetensors"
    first = SupernetEvaluator(parent, data, tiny_config(warm_start=True), checkpoint=path)
    first.update(archs)
    losses = first.evaluate(archs)
    # A search killed after update() but before it saved its state repeats that generation on resume.
    again = SupernetEvaluator(parent, data, tiny_config(warm_start=True), checkpoint=path)
    assert again.step == first.step == 6 and again.updates == 1
    record = again.update(archs)
    assert record.skipped and again.step == 6
    np.testing.assert_allclose(again.evaluate(archs), losses)
    assert not again.update(archs[:1]).skipped and again.step == 6 + 1   # warm steps: 6 // 4
    with pytest.raises(Exception, match="other config"):
        SupernetEvaluator(parent, data, tiny_config(warm_start=True, lr=0.1), checkpoint=path)
    fresh = SupernetEvaluator(parent, data, tiny_config(warm_start=True), checkpoint=path, resume=False)
    assert fresh.step == 0


def test_a_resumed_supernet_trains_on_exactly_as_an_uninterrupted_one(tmp_path):
    """Weights, momentum and the position in the data stream and in the sampler's draws come back: a run
    stopped after its first update and resumed ends bit for bit where an uninterrupted one ends."""
    data = separable_data()
    parent = parent_net(widths=small_widths())
    first, second = (some_archs(R20, 3, seed=s, widths=small_widths(), sparsities=(0.0, 0.5)) for s in (20, 21))
    config = tiny_config(warm_start=True, warm_steps=5, sandwich=True, archs_per_step=2)
    straight = SupernetEvaluator(parent, data, config)
    straight.update(first)
    straight.update(second)
    path = tmp_path / "supernet.safetensors"
    SupernetEvaluator(parent, data, config, checkpoint=path).update(first)
    resumed = SupernetEvaluator(parent, data, config, checkpoint=path)
    resumed.update(second)
    assert resumed.step == straight.step == 6 + 5
    for key, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(resumed.evaluate(second), straight.evaluate(second))


def test_a_checkpoint_of_the_old_supernet_is_refused_by_name(tmp_path):
    data = separable_data(n_train=64, n_val=32)
    parent = parent_net(widths=small_widths())
    old = save_checkpoint(tmp_path / "old.safetensors", parent, meta={"supernet": {"format": "latbench-supernet/1"}})
    with pytest.raises(CheckpointError, match="older latbench.*delete it to retrain"):
        SupernetEvaluator(parent, data, tiny_config(), checkpoint=old)
    other = save_checkpoint(tmp_path / "other.safetensors", parent, meta={"history": {}})
    with pytest.raises(CheckpointError, match="not a supernet checkpoint"):
        SupernetEvaluator(parent, data, tiny_config(), checkpoint=other)


def test_device_argument_and_no_thread_settings(monkeypatch):
    """The evaluator builds, scores and extracts on the given torch device, and never sets thread counts
    (the application's choice) while it is built or scores."""
    def forbidden(*_):
        raise AssertionError("library code must not set thread counts")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    parent = parent_net(widths=small_widths())
    evaluator = SupernetEvaluator(parent, separable_data(n_train=64, n_val=32), tiny_config(), device="cpu")
    assert evaluator.device == torch.device("cpu") and evaluator.net.device == torch.device("cpu")
    arch = some_archs(R20, 1, seed=8, widths=small_widths())[0]
    assert evaluator.evaluate([arch]).shape == (1,)
    assert evaluator.extract(arch).block("stem").conv.weight.device.type == "cpu"


# ---- real data --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: apt-get install -y dataset-fashion-mnist")
    full = load_fashion_mnist()
    return DataSplits(full.name, full.train.head(4000), full.val.head(400), full.test.head(10))


@pytest.mark.slow
def test_update_lowers_the_validation_loss_on_fashion_mnist(fashion):
    widths = {g: max(4, w // 4) for g, w in R20.groups.items()}     # 4/8/16 channels: quick
    archs = some_archs(R20, 3, seed=0, widths=widths, sparsities=(0.0, 0.5))
    evaluator = SupernetEvaluator(parent_net(widths=widths), fashion,
                                  tiny_config(steps_per_generation=40, lr=0.1, bn_batch_size=100))
    before = evaluator.evaluate(archs)
    accuracy_before = evaluator.last_accuracies
    evaluator.update(archs)                                          # 40 steps of 32 images
    after = evaluator.evaluate(archs)
    assert np.all(after < before - 0.3), (before, after)
    assert np.all(evaluator.last_accuracies > np.maximum(0.25, accuracy_before + 0.1)), \
        (accuracy_before, evaluator.last_accuracies)                 # chance: 0.1
