"""The supernet core (latbench.supernet): stages, dynamic ops, DynamicNet (== the parent at full width, ==
materialize for sub-networks), BN recalibration, samplers, losses, devices."""
import doctest

import numpy as np
import pytest
import torch
from torch import nn

import latbench.supernet as sn
from latbench.models import Architecture, ArchitectureError, GraphNet, LayerDef, ModelSpec, get_model, materialize
from latbench.models.torch_net import randomize_bn
from latbench.supernet import (METAPRUNING_RATIOS, DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, DynamicNet,
                               PopulationSampler, ResolutionSampler, SandwichSampler, SearchSpace, StageAdaptors,
                               StageError, chain_distillation, logit_distillation, recalibrate, resize,
                               stage_feature_loss, stages_of, width_choices)
from latbench.train.importance import channel_importance, importance_order, recalibrate_bn

torch.set_num_threads(1)   # the test process only; the library never sets thread counts (tested below)
R20 = get_model("resnet20")


def parent_net(spec=R20, widths=None, seed=0, in_channels=3) -> GraphNet:
    """A random network with non-trivial BN statistics and no zero BN scales (so every layer matters)."""
    torch.manual_seed(seed)
    return randomize_bn(GraphNet(spec, widths or spec.groups, in_channels), shift=0.2).eval()


def arch_at(spec, fraction, resolution, widths=None, sparsity=None) -> Architecture:
    widths = widths or spec.groups
    return Architecture(spec.name, resolution, {g: max(1, int(round(w * fraction))) for g, w in widths.items()},
                        sparsity or {})


def random_arch(spec, rng, resolution, widths=None) -> Architecture:
    widths = widths or spec.groups
    return Architecture(spec.name, resolution, {g: int(rng.integers(1, w + 1)) for g, w in widths.items()})


# ---- stages ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("resnet20", 3), ("resnet56", 3), ("resnet18", 4), ("mobilenet_v1", 5),
                                         ("mobilenet_v2", 5), ("mobilenet_v2_cifar", 4)])
def test_stage_counts_and_ownership(name, count):
    spec = get_model(name)
    stages = stages_of(spec)
    assert len(stages) == count
    assert spec.stages == stages
    names = [layer.name for layer in spec.layers]
    head = sn.head_of(spec)
    assert [spec.layer(h).kind for h in head] == ["avgpool", "linear"]
    # stages + head cover every layer once, in order
    assert [n for s in stages for n in s.layers] + list(head) == names
    owner = {}
    for s in stages:
        assert s.index == stages.index(s)
        assert s.input == ("input" if s.index == 0 else stages[s.index - 1].output)
        assert s.input_group == (None if s.index == 0 else stages[s.index - 1].output_group)
        assert s.output == s.layers[-1] and s.output_group in s.groups
        inside = {s.input, *s.layers}
        for n in s.layers:
            layer = spec.layer(n)
            # one input tensor: nothing inside reads a tensor from before the stage input
            assert layer.input in inside and (layer.residual is None or layer.residual in inside)
            if layer.out_group is not None:
                owner.setdefault(layer.out_group, set()).add(s.index)
    # every group is written in exactly one stage, and that stage lists it
    assert set(owner) == set(spec.groups)
    for g, where in owner.items():
        assert len(where) == 1, (g, where)
        assert g in stages[next(iter(where))].groups
    # resolutions fall from stage to stage
    hws = [s.output_hw for s in stages]
    assert hws == sorted(hws, reverse=True) and len(set(hws)) == len(hws)


def test_stage_details():
    r18 = stages_of(get_model("resnet18"))
    assert r18[0].layers[:2] == ("stem", "maxpool") and [s.output_hw for s in r18] == [56, 28, 14, 7]
    r20 = stages_of(R20)
    assert r20[0].layers[0] == "stem" and [s.output for s in r20] == ["layer1.2.conv2", "layer2.2.conv2",
                                                                        "layer3.2.conv2"]
    assert r20[1].input_group == "stage1" and "stage2" in r20[1].groups and "stage1" not in r20[1].groups
    mb2 = get_model("mobilenet_v2")
    st = stages_of(mb2)
    # a strided inverted-residual block lives entirely in the lower-resolution stage
    assert {"block2.expand", "block2.dw", "block2.project"} <= set(st[1].layers)
    assert "block2.hidden" in st[1].groups and st[1].input == "block1.project"
    assert all(spec_out.endswith(".project") or spec_out == "last" for spec_out in (s.output for s in st))
    mb1 = stages_of(get_model("mobilenet_v1"))
    assert mb1[0].layers == ("stem", "block1.dw") and mb1[1].layers[0] == "block1.pw"
    for s in mb1:   # each depthwise conv sits in the stage that produces its group
        for n in s.layers:
            if n.endswith(".dw"):
                assert get_model("mobilenet_v1").layer(n).out_group in s.groups


def _tiny_spec(stride: int, head: bool = True) -> ModelSpec:
    layers = [LayerDef("a", "conv", "input", None, "g1", kernel=3, padding=1, fixed_in=3, act="relu"),
              LayerDef("b", "conv", "a", "g1", "g2", kernel=3, stride=stride, padding=1, act="relu")]
    if head:
        layers += [LayerDef("pool", "avgpool", "b", "g2", "g2"), LayerDef("fc", "linear", "pool", "g2", None,
                                                                             fixed_out=10)]
    return ModelSpec("tiny", tuple(layers), {"g1": 8, "g2": 8}, resolutions=(16,), num_classes=10)


def test_stage_errors():
    with pytest.raises(StageError, match="model 'tiny' has no stage boundaries: no layer output"):
        stages_of(_tiny_spec(stride=1))
    with pytest.raises(StageError, match="no stage boundaries: its layers must end in a global average pool"):
        stages_of(_tiny_spec(stride=2, head=False))
    st = stages_of(_tiny_spec(stride=2))
    assert [s.layers for s in st] == [("a",), ("b",)]
    with pytest.raises(StageError, match="no stage boundaries"):
        DynamicNet(_tiny_spec(stride=1))


# ---- dynamic ops ----------------------------------------------------------------------------------

def test_dynamic_conv_and_linear_slice_first_channels():
    torch.manual_seed(0)
    conv = DynamicConv2d(6, 10, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 9)
    conv.active_out = 7
    ref = nn.functional.conv2d(x, conv.weight[:7, :4], None, 2, 1)
    assert torch.equal(conv(x), ref)
    assert conv(x, out_channels=3).shape == (2, 3, 5, 5)
    with pytest.raises(ValueError, match="input width 7 outside 1..6"):
        conv(torch.randn(1, 7, 5, 5))
    dw = DynamicConv2d(6, 6, 3, padding=1, depthwise=True)
    dw.active_out = 2   # ignored: a depthwise conv follows its input
    assert torch.equal(dw(x), nn.functional.conv2d(x, dw.weight[:4], None, 1, 1, 1, 4))
    # full width = the plain module
    plain = nn.Conv2d(6, 10, 3, 2, 1, bias=False)
    conv.active_out = 10
    plain.weight.data.copy_(conv.weight)
    full = torch.randn(2, 6, 9, 9)
    assert torch.equal(conv(full), plain(full))
    lin = DynamicLinear(8, 5)
    lin.active_out = 3
    v = torch.randn(4, 6)
    assert torch.equal(lin(v), nn.functional.linear(v, lin.weight[:3, :6], lin.bias[:3]))


def test_dynamic_conv_sparsity_masks_sliced_weight():
    torch.manual_seed(1)
    conv = DynamicConv2d(8, 8, 3, padding=1)
    w = conv.active_weight(5, 6, sparsity=0.5)
    assert int((w == 0).sum()) == round(0.5 * 6 * 5 * 9)
    from latbench.models import apply_sparsity
    assert torch.equal(w, apply_sparsity(conv.weight[:6, :5].detach().clone(), 0.5))


def test_dynamic_bn_train_eval_and_given_stats():
    torch.manual_seed(2)
    dyn = DynamicBatchNorm2d(8)
    randomize_bn(nn.Sequential(dyn))
    ref = nn.BatchNorm2d(5)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(ref, name).data.copy_(getattr(dyn, name)[:5])
    before = dyn.running_mean.clone()
    x = torch.randn(4, 5, 3, 3)
    dyn.train(), ref.train()
    assert torch.allclose(dyn(x), ref(x), atol=1e-6)
    # the slice's running statistics moved like torch's; the rest did not move
    assert torch.allclose(dyn.running_mean[:5], ref.running_mean) and torch.allclose(dyn.running_var[:5], ref.running_var)
    assert torch.equal(dyn.running_mean[5:], before[5:]) and not torch.equal(dyn.running_mean[:5], before[:5])
    dyn.eval(), ref.eval()
    assert torch.allclose(dyn(x), ref(x), atol=1e-6)
    mean, var = torch.randn(5), torch.rand(5) + 0.5
    expect = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + dyn.eps)
    expect = expect * dyn.weight[:5, None, None] + dyn.bias[:5, None, None]
    assert torch.allclose(dyn(x, (mean, var)), expect, atol=1e-5)
    dyn.track_running_stats = False
    dyn.train()
    frozen = dyn.running_mean.clone()
    dyn(x)
    assert torch.equal(dyn.running_mean, frozen)


# ---- DynamicNet -----------------------------------------------------------------------------------

def test_full_width_equals_parent_graphnet():
    parent = parent_net()
    x = torch.randn(3, 3, 32, 32)
    for order in (None, "l1", {g: np.random.default_rng(3).permutation(w) for g, w in R20.groups.items()}):
        net = DynamicNet.from_parent(parent, order).eval()
        assert torch.allclose(net(x), parent(x), atol=1e-5), order
    # identity order: bit-identical at full width
    assert torch.equal(DynamicNet.from_parent(parent).eval()(x), parent(x))
    # state dicts are a GraphNet's
    fresh = DynamicNet(R20)
    fresh.load_state_dict(parent.state_dict())
    assert torch.equal(fresh.eval()(x), parent(x))
    # training mode: same batch-statistics forward and the same running-statistics update
    net, twin = DynamicNet.from_parent(parent).train(), parent_net().train()
    assert torch.allclose(net(x), twin(x), atol=1e-5)
    assert torch.allclose(net.block("layer2.0.conv1").bn.running_mean, twin.block("layer2.0.conv1").bn.running_mean)


def test_fresh_init_matches_graphnet_init():
    torch.manual_seed(5)
    a = GraphNet(R20, R20.groups)
    torch.manual_seed(5)
    b = DynamicNet(R20)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def _check_subnets(spec, parent, archs, x_by_res, tol=1e-4):
    order = importance_order(channel_importance(parent, "l1"))
    net = DynamicNet.from_parent(parent, order).eval()
    for arch in archs:
        x = x_by_res[arch.resolution]
        ref = materialize(arch, spec, parent, importance=order)
        sub = net.extract(arch)
        out = net(x, arch)
        assert torch.allclose(sub(x), ref(x), atol=tol, rtol=tol), arch
        assert torch.allclose(out, ref(x), atol=tol, rtol=tol), arch
        for a, b in zip(sub.parameters(), ref.parameters()):
            assert a.shape == b.shape


def test_subnet_equals_materialize_resnet20():
    parent = parent_net()
    rng = np.random.default_rng(0)
    xs = {r: torch.randn(2, 3, r, r) for r in (24, 28, 32)}
    archs = [arch_at(R20, f, r) for f, r in ((1.0, 32), (0.75, 28), (0.5, 24), (0.25, 32))]
    archs += [random_arch(R20, rng, r) for r in (24, 28, 32)]
    archs.append(arch_at(R20, 0.5, 32, sparsity={"layer2.1.conv1": 0.5, "stem": 0.3}))
    _check_subnets(R20, parent, archs, xs)


def test_subnet_equals_materialize_mobilenet_v2_cifar():
    spec = get_model("mobilenet_v2_cifar")
    widths = {g: max(2, w // 4) for g, w in spec.groups.items()}     # a narrow parent keeps this fast
    parent = parent_net(spec, widths, seed=1)
    rng = np.random.default_rng(1)
    xs = {r: torch.randn(2, 3, r, r) for r in (24, 32)}
    archs = [arch_at(spec, 1.0, 32, widths), arch_at(spec, 0.5, 24, widths), random_arch(spec, rng, 32, widths)]
    _check_subnets(spec, parent, archs, xs)


def test_stage_outputs_and_single_stage_forward():
    parent = parent_net()
    net = DynamicNet.from_parent(parent, "l1").eval()
    x = torch.randn(2, 3, 32, 32)
    full_logits, full_stages = net(x, return_stages=True)
    assert [tuple(y.shape[1:]) for y in full_stages] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    # chaining single stages reproduces the forward; the head gives the logits
    y = x
    for i in range(3):
        y = net.forward_stage(i, y)
        assert torch.equal(y, full_stages[i])
    assert torch.equal(net.head(y), full_logits)
    arch = arch_at(R20, 0.5, 32)
    logits, stages = net(x, arch, return_stages=True)
    assert [y.shape[1] for y in stages] == [8, 16, 32]
    for i in range(1, 3):
        # a pruned stage fed the full network's previous output takes its first k channels ...
        k = arch.widths[net.stages[i].input_group]
        assert torch.equal(net.forward_stage(i, full_stages[i - 1], arch),
                           net.forward_stage(i, full_stages[i - 1][:, :k], arch))
        # ... and fed its own sub-network's previous output it gives the sub-network's stage output
        assert torch.equal(net.forward_stage(i, stages[i - 1], arch), stages[i])
    assert torch.equal(net.head(stages[-1], arch), logits)
    with pytest.raises(ValueError, match="stage 2 of 'resnet20' takes 16 channels"):
        net.forward_stage(2, full_stages[1][:, :7], arch)
    with pytest.raises(ValueError, match="stage 0 of 'resnet20' takes 3 channels"):
        net.forward_stage(0, torch.randn(1, 1, 32, 32))
    with pytest.raises(IndexError):
        net.forward_stage(3, x)


def test_any_resolution_and_active_subnet():
    net = DynamicNet.from_parent(parent_net()).eval()
    arch = arch_at(R20, 0.5, 32)
    for r in (20, 24, 28, 32, 40):
        assert net(torch.randn(1, 3, r, r), arch).shape == (1, 10)
    x = torch.randn(2, 3, 32, 32)
    net.set_active(arch)
    assert net.active == arch and torch.equal(net(x), net(x, arch))
    assert net.block("layer3.0.conv1").conv.active_out == arch.widths["layer3.0.mid"]
    net.set_active(None)
    assert net.active == net.full_arch() and net(x).shape == (2, 10)
    too_wide = Architecture(R20.name, 32, {g: w for g, w in R20.groups.items()})
    small = DynamicNet.from_parent(parent_net(widths={g: w // 2 for g, w in R20.groups.items()}))
    with pytest.raises(ArchitectureError, match="wider than the supernet"):
        small(x, too_wide)
    with pytest.raises(ValueError, match="apply in eval mode"):
        net.train()(x, arch, bn={})


def test_gradients_stay_in_the_slice():
    net = DynamicNet.from_parent(parent_net()).train()
    arch = arch_at(R20, 0.5, 32)
    nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32), arch), torch.arange(4)).backward()
    g = net.block("layer2.0.conv1").conv.weight.grad
    assert g[:16, :8].abs().sum() > 0 and g[16:].abs().sum() == 0 and g[:, 8:].abs().sum() == 0
    fc = net.block("fc").weight.grad
    assert fc[:, :32].abs().sum() > 0 and fc[:, 32:].abs().sum() == 0


def test_recalibrate_equals_recalibrate_bn_of_extracted():
    parent = parent_net()
    net = DynamicNet.from_parent(parent, "l1").eval()
    arch = arch_at(R20, 0.5, 32)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    shared = {k: v.clone() for k, v in net.state_dict().items()}
    stats = recalibrate(net, arch, batches)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, shared[k]), k          # shared weights and statistics untouched
    ref = net.extract(arch)
    recalibrate_bn(ref, batches, batches=None)
    ref.eval()
    got = net.extract(arch, stats)
    for name, (mean, var) in stats.items():
        assert torch.allclose(mean, ref.block(name).bn.running_mean, atol=1e-5)
        assert torch.allclose(var, ref.block(name).bn.running_var, atol=1e-4)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x, arch, bn=stats), ref(x), atol=1e-4)
    assert torch.allclose(got(x), ref(x), atol=1e-4)
    assert recalibrate(net, arch, [b[0] for b in batches], limit=1)["stem"][0].shape == (8,)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate(net, arch, [])


# ---- samplers ------------------------------------------------------------------------------------

def test_search_space_grid():
    assert len(METAPRUNING_RATIOS) == 31 and METAPRUNING_RATIOS[0] == 0.1 and METAPRUNING_RATIOS[-1] == 1.0
    assert width_choices(64, multiple=8) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert width_choices(16)[0] == 2 and width_choices(16)[-1] == 16   # 0.1·16 rounds to 2
    space = SearchSpace.from_spec(R20, multiple=4)
    assert space.largest().widths == dict(R20.groups) and space.largest().resolution == 32
    assert space.smallest().widths["stage3"] == 8 and space.smallest().resolution == 24   # round(6.4/4)·4
    assert space.contains(space.largest()) and not space.contains(arch_at(R20, 0.5, 32).__class__(
        R20.name, 32, {**R20.groups, "stage1": 5}))


def test_sandwich_sampler():
    space = SearchSpace.from_spec(R20, multiple=2)
    s = SandwichSampler(space, n_random=3, seed=7)
    a, b = s.sample(0), s.sample(0)
    assert a == b and len(a) == 5
    assert a[0] == space.largest(32) and a[1] == space.smallest(32)
    assert all(space.contains(x) and x.resolution == 32 for x in a)
    assert s.sample(1)[2:] != a[2:] and SandwichSampler(space, 3, seed=8).sample(0)[2:] != a[2:]
    v = SandwichSampler(space, n_random=20, seed=0, vary_resolution=True).sample(0)
    assert v[0].resolution == 32 and v[1].resolution == 24 and {x.resolution for x in v[2:]} == {24, 28, 32}
    u = SandwichSampler(space, n_random=4, seed=0, uniform=True).sample(0)
    for arch in u[2:]:                               # one multiplier for every group
        assert any(arch.widths == {g: sn.round_width(w, r, 2) for g, w in R20.groups.items()}
                   for r in METAPRUNING_RATIOS)
    assert any(a.widths != u[2].widths for a in u[3:])


def test_population_and_resolution_samplers():
    rng = np.random.default_rng(0)
    pop = [random_arch(R20, rng, 32) for _ in range(6)]
    p = PopulationSampler(pop, n=3, seed=1)
    draw = p.sample(4)
    assert draw == p.sample(4) and len(draw) == 3 and len(set(draw)) == 3 and all(a in pop for a in draw)
    ps = PopulationSampler(pop, n=1, seed=1, sandwich=True, spec=R20)
    sizes = [sn.weight_count(R20, a) for a in pop]
    assert ps.sample(0)[:2] == [pop[int(np.argmax(sizes))], pop[int(np.argmin(sizes))]]
    with pytest.raises(ValueError, match="needs the spec"):
        PopulationSampler(pop, sandwich=True)
    r = ResolutionSampler((24, 28, 32), seed=0)
    assert {r.sample(i) for i in range(30)} == {24, 28, 32} and r.sample(5) == r.sample(5)
    x = torch.randn(2, 3, 32, 32)
    assert resize(x, 32) is x and resize(x, 24).shape == (2, 3, 24, 24)


# ---- losses --------------------------------------------------------------------------------------

def test_logit_distillation_and_chain():
    torch.manual_seed(0)
    teacher = torch.randn(4, 10, requires_grad=True)
    student = torch.randn(4, 10, requires_grad=True)
    loss = logit_distillation(student, teacher, temperature=2.0)
    p = torch.softmax(teacher / 2, 1)
    manual = (p * (torch.log(p) - torch.log_softmax(student / 2, 1))).sum(1).mean() * 4
    assert torch.allclose(loss, manual, atol=1e-6) and float(loss) > 0
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert float(logit_distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    t, a, s = (torch.randn(4, 10, requires_grad=True) for _ in range(3))
    chain = chain_distillation([t, a, s])
    assert torch.allclose(chain, logit_distillation(a, t) + logit_distillation(s, a))
    logit_distillation(s, a).backward()
    assert a.grad is None       # the student's link does not train the assistant
    with pytest.raises(ValueError):
        chain_distillation([t])


def test_stage_feature_loss_definition():
    torch.manual_seed(0)
    adaptors = StageAdaptors([6])
    y_full = torch.randn(2, 6, 4, 4)
    assert float(stage_feature_loss(y_full, y_full, lambda y: adaptors(0, y))) == 0.0   # identity at start
    y = torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        adaptors.convs[0].weight.normal_()
    loss = stage_feature_loss(y, y_full, lambda v: adaptors(0, v))
    mapped = torch.einsum("oi,nihw->nohw", adaptors.convs[0].weight[:, :3, 0, 0], y)
    manual = ((mapped - y_full) ** 2).sum(1).div(6).mean()      # (1/C)·Σ_c, averaged over n, h, w
    assert torch.allclose(loss, manual, atol=1e-5)
    loss.backward()
    assert adaptors.convs[0].weight.grad[:, 3:].abs().sum() == 0 and y.grad is not None
    with pytest.raises(ValueError, match="adaptor"):
        stage_feature_loss(y, y_full)
    net = DynamicNet(R20)
    assert StageAdaptors.for_net(net).widths == (16, 32, 64)


def test_sp_style_step_lowers_stage_loss():
    """A few steps of SP's Algorithm 1 on one batch (full net + a random and the smallest stage sub-net
    per stage, stage-feature losses through adaptors): the stage losses must fall."""
    torch.manual_seed(0)
    half = {g: w // 2 for g, w in R20.groups.items()}
    net = DynamicNet.from_parent(parent_net(widths=half), "l1").train()
    adaptors = StageAdaptors.for_net(net)
    space = SearchSpace.from_spec(R20, max_widths=half, resolutions=(16,))
    sampler = SandwichSampler(space, n_random=1, seed=0)
    opt = torch.optim.SGD(list(net.parameters()) + list(adaptors.parameters()), lr=0.05, momentum=0.9)
    x, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    history = []
    for step in range(6):
        opt.zero_grad()
        logits, full = net(x, return_stages=True)
        total = nn.functional.cross_entropy(logits, labels)
        inputs = [x] + [y.detach() for y in full[:-1]]
        stage_loss = 0.0
        for arch in sampler.sample(step)[1:]:          # the smallest and a random one
            for i in range(len(net.stages)):
                y = net.forward_stage(i, inputs[i], arch)
                stage_loss = stage_loss + stage_feature_loss(y, full[i], lambda v, i=i: adaptors(i, v))
        (total + stage_loss).backward()
        opt.step()
        history.append(float(stage_loss))
    assert history[-1] < history[0]


# ---- device, threads, docs -----------------------------------------------------------------------

def test_device_argument_and_no_thread_settings(monkeypatch):
    def forbidden(*_):
        raise AssertionError("library code must not set thread counts")
    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    # the meta device: anything hard-wired to the CPU would fail to mix with it
    meta = DynamicNet(R20, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    arch = arch_at(R20, 0.5, 32, sparsity={"layer1.0.conv1": 0.5})
    out, stages = meta.eval()(torch.empty(2, 3, 32, 32, device="meta"), arch, return_stages=True)
    assert out.device.type == "meta" and out.shape == (2, 10) and stages[0].shape == (2, 8, 32, 32)
    stats = recalibrate(meta, arch, [torch.empty(2, 3, 32, 32, device="meta")], device="meta")
    assert stats["stem"][0].device.type == "meta"
    assert StageAdaptors.for_net(meta).convs[0].weight.device.type == "meta"
    net = DynamicNet.from_parent(parent_net(), "l1", device="cpu").to("cpu")
    assert net.device == torch.device("cpu")
    recalibrate(net, arch, [torch.randn(2, 3, 32, 32)], device=torch.device("cpu"))
    assert net.extract(arch, device="cpu").block("stem").conv.weight.device.type == "cpu"


def test_docstring_examples():
    import latbench.supernet.losses as losses
    import latbench.supernet.net as net
    import latbench.supernet.ops as ops
    import latbench.supernet.sampling as sampling
    import latbench.supernet.stages as stages
    for module in (ops, net, sampling, losses, stages):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
