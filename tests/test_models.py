import pytest
import torch

from latbench.models import Architecture, ArchitectureError, ZOO, get_model, materialize, random_architectures
from latbench.models.torch_net import build


@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("mobilenet_v2", 3_504_872)])
def test_full_models_match_the_reference_parameter_counts(name, params):
    spec = get_model(name)
    net = build(spec)
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_runs_at_every_resolution(name):
    spec = get_model(name)
    for res in spec.resolutions:
        net = materialize(Architecture.full(spec, res), spec)
        assert net(torch.randn(1, 3, res, res)).shape == (1, spec.num_classes)


def test_residual_additions_couple_channels_into_one_group():
    spec = get_model("resnet18")
    conv2 = spec.layer("layer2.1.conv2")
    assert conv2.residual == "layer2.0.conv2"
    assert spec.layer("layer2.0.conv2").out_group == conv2.out_group == spec.layer("layer2.0.down").out_group
    mb = get_model("mobilenet_v2")
    dw = mb.layer("block3.dw")
    assert dw.in_group == dw.out_group == mb.layer("block3.expand").out_group


def test_materialize_builds_real_smaller_convs_and_slices_by_importance():
    spec = get_model("resnet56")
    parent = build(spec).eval()
    arch = random_architectures(spec, 1, seed=3)[0]
    order = {g: torch.randperm(w) for g, w in spec.groups.items()}
    child = materialize(arch, spec, parent=parent, importance=order)
    conv = child.block("layer1.0.conv1").conv
    assert conv.out_channels == arch.widths["layer1.0.mid"] and conv.in_channels == arch.widths["stage1"]
    keep_out = order["layer1.0.mid"][: conv.out_channels].sort().values
    keep_in = order["stage1"][: conv.in_channels].sort().values
    expected = parent.block("layer1.0.conv1").conv.weight[keep_out][:, keep_in]
    assert torch.equal(conv.weight, expected)
    assert child(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_materialize_leaves_the_global_rng_alone_and_repeats_for_a_seed():
    spec = get_model("resnet56")
    arch = random_architectures(spec, 1, seed=3, sparsities=(0.0, 0.5))[0]
    parent = build(spec).eval()
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    nets = [materialize(arch, spec, seed=5), materialize(arch, spec, parent=parent), materialize(arch, spec, seed=5)]
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(torch.rand(5), expected)
    first, _, again = (n.state_dict() for n in nets)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = materialize(arch, spec, seed=6).state_dict()
    assert not torch.equal(first["blocks.stem.conv.weight"], other["blocks.stem.conv.weight"])
    # every tensor initialised: He-normal convs, random BN statistics, torch's default linear init
    w = first["blocks.layer3_0_conv1.conv.weight"]
    assert w.std().item() == pytest.approx((2 / (w.shape[0] * 9)) ** 0.5, rel=0.1)
    assert all(torch.isfinite(v.float()).all() for v in first.values())
    var = [v for k, v in first.items() if k.endswith("running_var")]
    assert all(((0.5 <= v) & (v <= 1.5)).all() for v in var)
    assert all(v.item() == 0 for k, v in first.items() if k.endswith("num_batches_tracked"))
    fc = first["blocks.fc.weight"]
    assert fc.abs().max().item() <= 1 / fc.shape[1] ** 0.5 and fc.std().item() > 0


def test_sparsity_is_real_zeros_in_the_weights():
    spec = get_model("mobilenet_v2_cifar")
    arch = Architecture(spec.name, 32, spec.groups, {"block5.expand": 0.75})
    w = materialize(arch, spec).block("block5.expand").conv.weight
    assert abs((w == 0).float().mean().item() - 0.75) < 0.01


def test_architecture_json_is_stable_and_round_trips():
    spec = get_model("mobilenet_v2")
    arch = random_architectures(spec, 1, seed=1, sparsities=(0.0, 0.5))[0]
    text = arch.to_json()
    assert Architecture.from_json(text) == arch
    assert Architecture.from_json(text).to_json() == text


@pytest.mark.parametrize("mutate,message", [
    (lambda a: {**a, "widths": {**a["widths"], "stage1": 999}}, "outside 1..64"),
    (lambda a: {**a, "widths": {k: v for k, v in a["widths"].items() if k != "stage1"}}, "missing groups"),
    (lambda a: {**a, "sparsity": {"stem": 1.5}}, "outside [0, 1)"),
    (lambda a: {**a, "sparsity": {"fc": 0.5}}, "not prunable convs"),
    (lambda a: {**a, "model": "resnet56"}, "not 'resnet18'"),
])
def test_architectures_that_do_not_fit_the_model_get_a_clear_error(mutate, message):
    spec = get_model("resnet18")
    data = mutate(Architecture.full(spec).to_dict())
    with pytest.raises(ArchitectureError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Architecture.from_dict(data).validate(spec)


def test_unknown_model_names_list_the_zoo():
    with pytest.raises(KeyError, match="resnet18"):
        get_model("vgg16")


def test_networks_measured_for_a_grey_checkpoint_have_its_stem_and_their_own_store_keys(tmp_path):
    """A network trained on grey images ships with a 1-channel stem; what the closed loop measures (a network
    materialized from the job's spec, without the parent) must have that stem too, and be stored apart from
    the zoo's 3-channel networks of the same widths."""
    from latbench.train import load_checkpoint, save_checkpoint
    from latbench.validation import network_key

    spec = get_model("resnet20")
    grey = build(spec, in_channels=1)
    path = save_checkpoint(tmp_path / "grey.safetensors", grey)
    parent, arch, _ = load_checkpoint(path)
    assert parent.spec.in_channels == 1
    net = materialize(arch, parent.spec)                        # as the loop builds it: no parent weights
    assert net.block(next(ly.name for ly in spec.layers if ly.fixed_in)).conv.in_channels == 1
    assert network_key(arch, parent.spec) == network_key(arch) + "|in1" != network_key(arch, spec)
    assert network_key(arch, spec) == network_key(arch)          # the zoo's own stem: keys as before
