"""OnnxSupernet: every pruned variant of a user's ONNX graph in one module (issue 13: the supernet methods on
imported models). Checked on independently written models (timm, generated at test time): a variant computes
what the graph cut by prune_onnx computes, its gradients land on the shared weights it was cut from, and BN
statistics are recalibrated per variant without moving the shared ones."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latbench.api import load_model
from latbench.models import Architecture, ArchitectureError
from latbench.models.onnx_torch import OnnxNet, full_network
from latbench.supernet import OnnxSupernet, recalibrate, supernet_from
from realworld_models import export_timm_onnx, timm_available

needs_timm = pytest.mark.skipif(not timm_available(), reason="timm is not installed (pip install --no-deps timm)")
# SE + hard-swish, grouped convs, ghost modules (concat + slice), residual adds, dense concatenation.
FAMILIES = ["mobilenetv3_small_050", "regnetx_002", "ghostnet_100", "resnet18", "densenet121"]


def random_arch(net: OnnxSupernet, rng: np.random.Generator, low: float = 0.3, sparsity: float = 0.0) -> Architecture:
    widths = {}
    for name, w in net.spec.groups.items():
        g = net.groups[name]
        widths[name] = max(g.min_width, int(rng.uniform(low, 1.0) * w) // g.multiple * g.multiple)
    convs = [layer.name for layer in net.spec.layers if layer.kind in ("conv", "pointwise")][:4]
    return Architecture(net.spec.name, net.spec.base_resolution, widths, {n: sparsity for n in convs if sparsity})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-supernet")
    cache = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = export_timm_onnx(family, folder / f"{family}.onnx", resolution=32, in_chans=1,
                                             num_classes=10)
        return cache[family]
    return get


@needs_timm
@pytest.mark.parametrize("family", FAMILIES)
def test_every_variant_is_the_graph_prune_onnx_cuts_and_full_width_is_the_graph(models, family):
    spec = load_model(str(models(family)))
    parent = full_network(spec).eval()
    net = OnnxSupernet.from_parent(parent, "l1").eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x, net.full_arch()), parent(x))
        rng = np.random.default_rng(1)
        for _ in range(2):
            arch = random_arch(net, rng, sparsity=0.5)
            small = net.extract(arch)
            assert isinstance(small, OnnxNet) and small.widths == dict(arch.widths)
            torch.testing.assert_close(net(x, arch), small(x), rtol=1e-5, atol=1e-5)
            assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())


@needs_timm
@pytest.mark.parametrize("family", ["mobilenetv3_small_050", "regnetx_002"])
def test_a_variant_trains_the_shared_weights_it_was_cut_from(models, family):
    spec = load_model(str(models(family)))
    net = OnnxSupernet.from_parent(full_network(spec), "l1").train()
    arch = random_arch(net, np.random.default_rng(2), low=0.5)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(net(x, arch), y).backward()
    small = net.extract(arch).train()
    nn.functional.cross_entropy(small(x), y).backward()
    prog = net.program(arch)
    checked = 0
    for name, (source, idx, shape) in prog.gathers.items():
        if net._tensor_keys[source] not in net.params:
            continue                                                    # buffers (BN statistics) have no gradient
        shared, cut = net.tensor(source), small.tensor(name)
        if cut.grad is None:
            continue
        flat = shared.grad.reshape(-1)
        torch.testing.assert_close(flat[idx], cut.grad.reshape(-1), rtol=1e-4, atol=1e-6)
        untouched = torch.ones(flat.numel(), dtype=torch.bool)
        untouched[idx] = False
        assert torch.count_nonzero(flat[untouched]) == 0            # channels the variant drops get no gradient
        checked += 1
    assert checked >= 5


class _BNNet(nn.Module):
    """A network exported with its BatchNormalization nodes kept (training-mode export keeps them)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x):
        return self.body(x)


def test_bn_statistics_are_recalibrated_per_variant_and_the_shared_ones_stay(tmp_path):
    torch.manual_seed(0)
    module = _BNNet().eval()
    path = tmp_path / "bn.onnx"
    torch.onnx.export(module, torch.zeros(1, 1, 16, 16), str(path), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
    spec = load_model(str(path))
    net = supernet_from(full_network(spec), "l1")
    assert isinstance(net, OnnxSupernet) and net.batch_norms()
    shared = [(m.clone(), v.clone()) for m, v in net.batch_norms()]
    arch = Architecture(spec.name, 16, {g: w // 2 for g, w in spec.groups.items()})
    batches = [torch.randn(32, 1, 16, 16) * 2 + 1 for _ in range(4)]
    net.train()
    net(batches[0], arch).sum().backward()                          # training a variant ...
    for (m, v), (m0, v0) in zip(net.batch_norms(), shared):          # ... leaves the shared statistics alone
        assert torch.equal(m, m0) and torch.equal(v, v0)
    stats = recalibrate(net, arch, batches)
    assert set(stats) == set(net.conv_widths(arch)) and all(len(m) == w for (m, _), w in
                                                            zip(stats.values(), net.conv_widths(arch).values()))
    small = net.extract(arch, stats)
    # the statistics are the plain average of the batches' own: what torch's cumulative BN gives the cut net
    reference = net.extract(arch)
    reference.cumulative_bn(True)
    reference.train()
    with torch.no_grad():
        for b in batches:
            reference(b)
    for (m, v), (mr, vr) in zip(small.batch_norms(), reference.batch_norms()):
        torch.testing.assert_close(m, mr)
        torch.testing.assert_close(v, vr)


@needs_timm
def test_an_impossible_width_is_refused_by_name(models):
    spec = load_model(str(models("regnetx_002")))
    net = OnnxSupernet.from_parent(full_network(spec), "l1")
    grouped = next(name for name, g in net.groups.items() if g.multiple > 1)
    widths = dict(spec.groups)
    widths[grouped] = net.groups[grouped].multiple + 1
    with pytest.raises(ArchitectureError, match="multiple of"):
        net(torch.zeros(1, 1, 32, 32), Architecture(spec.name, 32, widths))
    with pytest.raises(ValueError, match="'l1'"):
        OnnxSupernet.from_parent(full_network(spec), "l2")


@needs_timm
def test_filter_scores_of_a_depthwise_conv_over_a_concatenation_go_to_each_group(models):
    """GhostNet's ghost modules concatenate two groups and a depthwise conv reads both: its filters' scores are
    split by the concatenation's segments (LcP's filter ranking used to fail there)."""
    from latbench.train.importance import channel_importance, group_scores, layer_filter_scores

    spec = load_model(str(models("ghostnet_100")))
    net = full_network(spec)
    layer = next(l for l in spec.layers if l.kind == "depthwise" and l.in_extra)
    scores, per_layer = channel_importance(net, "l1"), layer_filter_scores(net, "l1")
    assert set(scores) == set(spec.groups) and all(len(scores[g]) == w for g, w in spec.groups.items())
    node = next(n for n in net.nodes if n.name == layer.name)
    segments = net.channel_graph().tensors[node.output[0]]
    assert len(segments) > 1 and len(per_layer[layer.name]) == sum(seg.width for seg in segments)
    expected, pos = {}, 0
    for seg in segments:             # e.g. [A, A]: a ghost module's primary half and its cheap (depthwise) half
        expected[seg.group] = expected.get(seg.group, 0) + per_layer[layer.name][pos:pos + seg.width]
        pos += seg.width
    without = dict(per_layer)
    without[layer.name] = np.zeros_like(per_layer[layer.name])
    rest = group_scores(net, without)
    for group, value in expected.items():
        if group is not None:
            np.testing.assert_allclose(scores[group] - rest[group], value, rtol=1e-9, atol=1e-9)


class _BNStagesNet(nn.Module):
    """Three resolutions, BatchNormalization kept: stages an SP search recalibrates one at a time."""

    def __init__(self):
        super().__init__()
        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(*block(1, 16, 1), *block(16, 24, 2), *block(24, 32, 2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def test_a_stage_recalibrated_alone_gets_the_statistics_the_whole_sub_network_gets(tmp_path):
    """SP scores a stage candidate after recalibrating that stage's BN on its own inputs: fed the sub-network's
    own stage inputs, that equals recalibrating the whole sub-network (restricted to the stage's BNs)."""
    from latbench.methods.sp.search import recalibrate_stage

    torch.manual_seed(0)
    path = tmp_path / "stages.onnx"
    torch.onnx.export(_BNStagesNet().eval(), torch.zeros(1, 1, 16, 16), str(path), dynamo=False,
                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
    spec = load_model(str(path))
    net = supernet_from(full_network(spec), "l1")
    assert len(net.stages) == 3 and len(net.batch_norms()) == 3
    arch = Architecture(spec.name, 16, {g: w // 2 for g, w in spec.groups.items()})
    batches = [torch.randn(8, 1, 16, 16) * 2 + 1 for _ in range(3)]
    whole = recalibrate(net, arch, batches)
    inputs = batches
    net.train()
    for i in range(len(net.stages)):
        alone = recalibrate_stage(net, i, arch, inputs)
        assert len(alone) == 1 and set(alone) <= set(whole)
        for name, (m, v) in alone.items():
            torch.testing.assert_close(m, whole[name][0])
            torch.testing.assert_close(v, whole[name][1])
        with torch.no_grad():        # the next stage's inputs: this stage's outputs with batch statistics
            inputs = [net.forward_stage(i, x, arch) for x in inputs]
