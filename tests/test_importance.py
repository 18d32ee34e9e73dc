"""Filter importance (ℓ1, ℓ2, Taylor), group sums over residual couplings, orders for materialize, BN
recalibration."""
import numpy as np
import pytest
import torch

from latbench.data import ImageDataset, channel_stats
from latbench.models import Architecture, GraphNet, get_model, materialize
from latbench.train.importance import (channel_importance, group_scores, importance_order, layer_filter_scores,
                                       recalibrate_bn)

R56 = get_model("resnet56")


def net_of(spec, seed=0, in_channels=1, widths=None) -> GraphNet:
    """A network with BN scales as after training (the init zeroes the last BN of residual branches, which
    makes their Taylor scores exactly 0)."""
    torch.manual_seed(seed)
    net = GraphNet(spec, widths or spec.groups, in_channels)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return net


def toy_data(n=64, hw=8, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, hw, hw), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = channel_stats(images)
    return ImageDataset("toy", images, labels, 10, mean, std)


@pytest.mark.parametrize("metric, op", [("l1", torch.abs), ("l2", torch.square)])
def test_weight_metrics_per_layer(metric, op):
    net = net_of(R56)
    scores = layer_filter_scores(net, metric)
    w = net.block("layer2.4.conv1").conv.weight
    np.testing.assert_allclose(scores["layer2.4.conv1"], op(w).sum(dim=(1, 2, 3)).detach().numpy(), rtol=1e-6)
    assert "fc" not in scores and "avgpool" not in scores
    assert scores["stem"].shape == (16,) and scores["layer3.0.down"].shape == (64,)


def test_group_scores_sum_every_layer_writing_into_the_group():
    net = net_of(R56)
    layer = layer_filter_scores(net, "l1")
    groups = group_scores(net, layer)
    writers = {"stage1": ["stem"] + [f"layer1.{b}.conv2" for b in range(9)],
               "stage2": ["layer2.0.down"] + [f"layer2.{b}.conv2" for b in range(9)],
               "layer3.5.mid": ["layer3.5.conv1"]}
    for group, names in writers.items():
        np.testing.assert_allclose(groups[group], sum(layer[n] for n in names), rtol=1e-12)
    assert set(groups) == set(R56.groups)
    # MobileNetV2: the depthwise conv writes into its expansion's group and counts there.
    mb = get_model("mobilenet_v2_cifar")
    mnet = net_of(mb, in_channels=3)
    ml = layer_filter_scores(mnet, "l2")
    np.testing.assert_allclose(group_scores(mnet, ml)["block2.hidden"], ml["block2.expand"] + ml["block2.dw"])


def test_taylor_matches_autograd_and_leaves_the_network_untouched():
    net, data = net_of(get_model("resnet20"), widths={g: 4 for g in get_model("resnet20").groups}), toy_data()
    batches = [(data.normalize(data.images[i:i + 16]), data.labels[i:i + 16]) for i in (0, 16, 32)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = layer_filter_scores(net, "taylor", batches, batches=2)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by scoring"
    w = net.block("layer2.1.conv2").conv.weight
    expected = torch.zeros(w.shape[0])
    net.train()
    for x, y in batches[:2]:
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        expected += (w.grad * w).sum(dim=(1, 2, 3)).abs().detach()
    np.testing.assert_allclose(scores["layer2.1.conv2"], (expected / 2).numpy(), rtol=1e-4, atol=1e-9)
    assert (scores["layer2.1.conv2"] > 0).all()
    with pytest.raises(ValueError, match="needs data"):
        layer_filter_scores(net, "taylor")
    with pytest.raises(ValueError, match="unknown importance metric"):
        layer_filter_scores(net, "random")


def test_order_feeds_materialize_keeping_the_best_channels():
    assert importance_order({"g": np.array([1.0, 3.0, 3.0, 0.5])})["g"].tolist() == [1, 2, 0, 3]
    parent = net_of(R56)
    scores = channel_importance(parent, "l1")
    order = importance_order(scores)
    widths = dict(R56.groups, stage1=6)
    pruned = materialize(Architecture(R56.name, 32, widths), R56, parent, importance=order)
    kept = np.sort(np.argsort(-scores["stage1"])[:6])
    stem = parent.block("stem").conv.weight
    assert torch.equal(pruned.block("stem").conv.weight, stem[torch.as_tensor(kept)])
    # The kept channels really are the top-6 by summed ℓ1 score.
    assert scores["stage1"][kept].min() >= np.delete(scores["stage1"], kept).max()


def test_recalibrate_bn_estimates_exact_batch_statistics():
    spec = get_model("resnet20")
    net = net_of(spec, widths={g: 4 for g in spec.groups}).eval()
    data = toy_data(n=48)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in net.named_parameters()}
    batches = [(data.normalize(data.images[i:i + 16]), data.labels[i:i + 16]) for i in (0, 16, 32)]
    used = recalibrate_bn(net, batches, batches=None)
    assert used == 48 and not net.training  # mode restored
    stem_out = net.block("stem").conv(data.normalize(data.images))
    # Cumulative average of equal-size batch means = the mean over all images.
    np.testing.assert_allclose(net.block("stem").bn.running_mean.numpy(),
                               stem_out.mean(dim=(0, 2, 3)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert net.block("stem").bn.momentum == 0.1
    for k, v in net.named_parameters():
        assert torch.equal(v, weights[k])
    assert recalibrate_bn(net, data, batches=2, batch_size=8) == 16
