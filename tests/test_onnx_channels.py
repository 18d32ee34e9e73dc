"""Channel dependency groups of ONNX CNNs and their pruned variants (latbench.models.onnx_channels), on small
torch modules exported with the legacy exporter, and (slow) on timm models."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from latbench.models.onnx_channels import ChannelError, analyse_channels, channel_importance, prune_onnx

try:
    from latbench.models.onnx_load import load_user_onnx
except ImportError:     # the loader is written alongside; until then shape inference is all the tests need
    load_user_onnx = None


# ------------------------------------------------------------------------------------------------ helpers

def _randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean = torch.randn(n, generator=g) * 0.2
            m.running_var = torch.rand(n, generator=g) + 0.5
    return module.eval()


def export(module: nn.Module, tmp_path, size: int = 16, seed: int = 0, raw: bool = False) -> onnx.ModelProto:
    """The module's legacy ONNX export, normalised by ``load_user_onnx`` (``raw``: only shape inference)."""
    torch.manual_seed(seed)
    module = _randomise_bn(module, seed)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.randn(1, 3, size, size), f, dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["image"], output_names=["logits"])
    model = onnx.load_from_string(f.getvalue())
    if load_user_onnx is not None and not raw:
        path = tmp_path / "model.onnx"
        onnx.save(model, str(path))
        return load_user_onnx(path)
    return onnx.shape_inference.infer_shapes(model)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def image(size: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def random_widths(graph, rng, low: float = 0.3) -> dict[str, int]:
    out = {}
    for name, g in graph.groups.items():
        if g.prunable:
            lo = max(math.ceil(g.min_width / g.multiple), math.ceil(low * g.width / g.multiple), 1)
            out[name] = g.multiple * int(rng.integers(lo, g.width // g.multiple + 1))
    return out


def random_keep(graph, widths, rng) -> dict[str, list[int]]:
    keep = {}
    for name, w in widths.items():
        g = graph.groups[name]
        size = g.width // g.multiple
        keep[name] = sorted(b * size + int(i) for b in range(g.multiple)
                            for i in rng.choice(size, w // g.multiple, replace=False))
    return keep


def kept_channels(graph, keep, tensor) -> np.ndarray:
    parts, pos = [], 0
    for s in graph.tensors[tensor]:
        parts.append(pos + (np.array(keep[s.group]) if s.group in keep else np.arange(s.width)))
        pos += s.width
    return np.concatenate(parts).astype(int)


def neutralise_dropped(model: onnx.ModelProto, graph, keep) -> onnx.ModelProto:
    """A copy of ``model`` in which the channels ``keep`` drops do nothing: every conv/gemm reading them has
    zero weights for them (so nothing downstream depends on them), and every conv/gemm producing them zero
    filters (and its BN zero gamma), so their importance is zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    consumers = {}
    for n in out.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    for node in out.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        x, y = node.input[0], node.output[0]
        if x not in graph.tensors or y not in graph.tensors:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).copy()
        full_in, full_out = graph.channels(x), graph.channels(y)
        drop_in = np.setdiff1d(np.arange(full_in), kept_channels(graph, keep, x))
        drop_out = np.setdiff1d(np.arange(full_out), kept_channels(graph, keep, y))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            groups = int(attrs.get("group", 1))
            per_in, per_out = full_in // groups, full_out // groups
            for c in drop_in:
                j = c // per_in
                w[j * per_out:(j + 1) * per_out, c % per_in] = 0
            depthwise = groups == full_in == full_out and groups > 1
            if not depthwise:
                w[drop_out] = 0
        elif node.op_type == "Gemm" and attrs.get("transB", 0):
            w[:, drop_in] = 0
            w[drop_out] = 0
        else:
            w[drop_in] = 0
            w[:, drop_out] = 0
        put(node.input[1], w)
        if len(node.input) > 2 and node.input[2] in inits and not (node.op_type == "Conv" and depthwise):
            b = numpy_helper.to_array(inits[node.input[2]]).copy()
            b[..., drop_out] = 0
            put(node.input[2], b)
        cons = consumers.get(y, [])
        if len(cons) == 1 and cons[0].op_type == "BatchNormalization" and node.op_type == "Conv" and not depthwise:
            for k in (1, 2):
                v = numpy_helper.to_array(inits[cons[0].input[k]]).copy()
                v[drop_out] = 0
                put(cons[0].input[k], v)
    return out


def check_pruning(model, graph, classes: int, size: int = 16, rounds: int = 3, seed: int = 0):
    """Full widths reproduce the outputs exactly; random widths give a valid model with [1, classes]; channels
    whose dropped counterparts do nothing give the original outputs (with given keeps and by importance)."""
    x = image(size)
    ref = run(model, x)
    assert ref.shape == (1, classes)
    np.testing.assert_array_equal(run(prune_onnx(model, graph, {}), x), ref)
    np.testing.assert_array_equal(run(prune_onnx(model, graph, graph.prunable_groups()), x), ref)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        widths = random_widths(graph, rng)
        pruned = prune_onnx(model, graph, widths)
        assert run(pruned, x).shape == (1, classes)
        keep = random_keep(graph, widths, rng)
        neutral = neutralise_dropped(model, graph, keep)
        want = run(neutral, x)
        tol = 1e-5 * float(np.abs(want).max())      # float sums in another order; a wrong channel is ~1e-2
        np.testing.assert_allclose(run(prune_onnx(neutral, graph, widths, keep), x), want, rtol=1e-5, atol=tol)
        by_importance = prune_onnx(neutral, graph, widths)
        np.testing.assert_allclose(run(by_importance, x), want, rtol=1e-5, atol=tol)
        for t in pruned.graph.value_info:
            if t.name in graph.tensors:
                assert t.type.tensor_type.shape.dim[1].dim_value == graph.channels(t.name, widths), t.name
    return widths


def cbr(i, o, k=3, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), act())


# ------------------------------------------------------------------------------------------------ modules

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.conv1 = cbr(8, 12)
        self.conv2 = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.conv2(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


class SE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


class InvertedResidualSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16, act=nn.Hardswish)
        self.expand = cbr(16, 48, 1, act=nn.Hardswish)
        self.dw = cbr(48, 48, 3, groups=48, act=nn.Hardswish)
        self.se = SE(48, 12)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = cbr(16, 32, 1, act=nn.Hardswish)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(24, 10))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(self.head(x), 1))


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1, bias=False))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 8, 3, padding=1, bias=False))
        self.trans = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False), nn.AvgPool2d(2))
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 7)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        x = torch.relu(self.norm(self.trans(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Ghost(nn.Module):
    def __init__(self, i, o, relu=True):
        super().__init__()
        self.oup, init = o, math.ceil(o / 2)
        act = nn.ReLU if relu else nn.Identity
        self.primary = cbr(i, init, 1, act=act)
        self.cheap = cbr(init, init, 3, groups=init, act=act)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], 1)
        return out[:, :self.oup, :, :]


class GhostNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.ghost1 = Ghost(16, 24)
        self.ghost2 = Ghost(24, 32, relu=False)
        self.shortcut = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                      nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.ghost3 = Ghost(32, 15)
        self.head = cbr(15, 24, 1)
        self.fc = nn.Linear(24, 6)

    def forward(self, x):
        x = self.stem(x)
        x = self.ghost2(self.ghost1(x)) + self.shortcut(x)
        x = self.head(self.ghost3(x))
        return self.fc(x.mean((2, 3)))


class RegNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 32, 1)
        self.b = cbr(32, 32, 3, groups=4)           # group width 8, in == out
        self.se = SE(32, 8)
        self.c = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.d = cbr(16, 24, 3, groups=4)           # in 16 != out 24
        self.fc = nn.Linear(24, 9)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.c(self.se(self.b(self.a(x)))))
        return self.fc(self.d(x).mean((2, 3)))


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.conv = cbr(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(self.conv(x).mean((2, 3)))


class SplitResizePad(nn.Module):
    """chunk() of a concat along its segments (prunable), chunk() inside a segment (not), Resize, Pad."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(3, 8), cbr(3, 12)
        self.conv = cbr(8, 8)
        self.up = cbr(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x1, x2 = torch.split(torch.cat([self.a(x), self.b(x)], 1), [8, 8], 1)
        c1, c2, c3 = torch.split(self.c(x), [4, 4, 4], 1)
        y = torch.cat([self.conv(x1) + x2, c1 * c3, c2], 1)
        y = nn.functional.interpolate(nn.functional.max_pool2d(y, 2), scale_factor=2.0, mode="nearest")
        y = nn.functional.pad(y, (1, 1, 1, 1))
        return self.fc(self.up(y).mean((2, 3)))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = cbr(3, 8)
        self.pool = nn.MaxPool2d(4)
        self.conv2 = cbr(8, 16)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 3)

    def forward(self, x):
        x = self.conv2(self.pool(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def node_name(model, op, contains):
    names = [n.name for n in model.graph.node if n.op_type == op and contains in n.name]
    assert len(names) == 1, (op, contains, names)
    return names[0]


def group_of(model, op, contains):
    return node_name(model, op, contains) + ".out"


# ------------------------------------------------------------------------------------------------ tests

def test_residual_add_couples(tmp_path):
    model = export(Residual(), tmp_path)
    graph = analyse_channels(model)
    stem, conv1, conv2 = (group_of(model, "Conv", k) for k in ("stem", "conv1", "conv2"))
    fc = group_of(model, "Gemm", "fc")
    assert list(graph.groups) == [stem, conv1, fc]          # conv2 merged into the stem's group (first name)
    assert graph.prunable_groups() == {stem: 8, conv1: 12}
    assert graph.groups[fc].reason == "graph output" and not graph.groups[fc].prunable
    conv2_out = next(n.output[0] for n in model.graph.node if n.name == node_name(model, "Conv", "conv2"))
    assert [s.group for s in graph.tensors[conv2_out]] == [stem]
    assert graph.channels(conv2_out, {stem: 4}) == 4
    assert graph.tensors["image"][0].group is None and graph.channels("image") == 3
    imp = channel_importance(model, graph)
    assert imp[stem].shape == (8,) and (imp[stem] > 0).all()
    check_pruning(model, graph, 5)


def test_inverted_residual_with_se(tmp_path):
    model = export(InvertedResidualSE(), tmp_path)
    graph = analyse_channels(model)
    assert {n.op_type for n in model.graph.node} >= {"HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool"}
    stem, expand, reduce, head = (group_of(model, "Conv", k) for k in ("stem", "expand/expand", "reduce", "head"))
    fc1, fc2 = (group_of(model, "Gemm", k) for k in ("fc.1", "fc.4"))
    assert graph.prunable_groups() == {stem: 16, expand: 48, reduce: 12, head: 32, fc1: 24}
    assert list(graph.groups) == [stem, expand, reduce, head, fc1, fc2]
    se_expand_out = next(n.output[0] for n in model.graph.node if n.name == node_name(model, "Conv", "se/expand"))
    assert graph.tensors[se_expand_out][0].group == expand          # coupled with x by the excitation Mul
    assert graph.groups[fc2].reason == "graph output"
    check_pruning(model, graph, 10)


def test_dense_concat(tmp_path):
    model = export(Dense(), tmp_path)
    graph = analyse_channels(model)
    stem, l1, l2, trans = (group_of(model, "Conv", k) for k in ("stem", "layer1", "layer2", "trans"))
    assert graph.prunable_groups() == {stem: 16, l1: 8, l2: 8, trans: 16}
    cats = [n.output[0] for n in model.graph.node if n.op_type == "Concat"]
    assert [tuple((s.group, s.width) for s in graph.tensors[c]) for c in cats] == [
        ((stem, 16), (l1, 8)), ((stem, 16), (l1, 8), (l2, 8))]
    assert graph.channels(cats[1], {stem: 8, l2: 3}) == 19
    check_pruning(model, graph, 7)


def test_ghost_concat_slice_and_split_groups(tmp_path):
    model = export(GhostNetLike(), tmp_path)
    graph = analyse_channels(model)
    g1, g2, g3 = (group_of(model, "Conv", f"ghost{k}/primary") for k in (1, 2, 3))
    stem, head = group_of(model, "Conv", "stem"), group_of(model, "Conv", "head")
    # ghost2's [p, cheap(p)] is added to the shortcut conv's 32 channels: the shortcut's group is split in two
    # halves, each coupled with ghost2's primary group
    assert graph.prunable_groups() == {stem: 16, g1: 12, g2: 16, head: 24}
    short = next(n.output[0] for n in model.graph.node if n.name == node_name(model, "Conv", "shortcut/shortcut.2"))
    assert [(s.group, s.width) for s in graph.tensors[short]] == [(g2, 16), (g2, 16)]
    slice3 = node_name(model, "Slice", "ghost3")
    assert not graph.groups[g3].prunable and graph.groups[g3].reason == f"sliced by {slice3}"
    # ghost1/ghost2's slices keep every channel: pass-throughs
    imp = channel_importance(model, graph)
    assert imp[g2].shape == (16,)
    check_pruning(model, graph, 6)


def test_grouped_conv_regnet_like(tmp_path):
    model = export(RegNetLike(), tmp_path)
    graph = analyse_channels(model)
    stem, a, b, reduce, d = (group_of(model, "Conv", k) for k in ("stem", "/a/", "/b/", "reduce", "/d/"))
    assert graph.prunable_groups() == {stem: 16, a: 32, b: 32, reduce: 8, d: 24}
    assert (graph.groups[a].multiple, graph.groups[b].multiple, graph.groups[d].multiple) == (4, 4, 4)
    assert graph.groups[stem].multiple == 4         # the stem (coupled with c) feeds grouped conv d
    assert graph.groups[a].min_width == 4
    with pytest.raises(ChannelError, match="multiple of 4"):
        prune_onnx(model, graph, {a: 30})
    with pytest.raises(ChannelError, match="same number"):
        prune_onnx(model, graph, {a: 8}, {a: list(range(8))})
    check_pruning(model, graph, 9)


def test_channel_shuffle_not_prunable(tmp_path):
    model = export(Shuffle(), tmp_path)
    graph = analyse_channels(model)
    stem, conv = group_of(model, "Conv", "stem"), group_of(model, "Conv", "conv")
    assert not graph.groups[stem].prunable and "feeds a channel shuffle" in graph.groups[stem].reason
    assert graph.prunable_groups() == {conv: 16}
    with pytest.raises(ChannelError, match="not prunable"):
        prune_onnx(model, graph, {stem: 8})
    check_pruning(model, graph, 4)


def test_split_resize_pad(tmp_path):
    model = export(SplitResizePad(), tmp_path)
    assert {"Split", "Resize", "Pad"} <= {n.op_type for n in model.graph.node}
    graph = analyse_channels(model)
    a, b, c, conv, up = (group_of(model, "Conv", k) for k in ("/a/", "/b/", "/c/", "/conv/", "/up/"))
    split_c = [n.name for n in model.graph.node if n.op_type == "Split"][1]
    assert graph.prunable_groups() == {a: 8, b: 8, up: 16}      # conv is coupled with b by the Add
    assert graph.groups[c].reason == f"sliced by {split_c}"
    widths = check_pruning(model, graph, 5)
    assert set(widths) == {a, b, up}


@pytest.mark.parametrize("module", [InvertedResidualSE, GhostNetLike])
def test_raw_exports_with_constant_nodes(module, tmp_path):
    """Straight from the exporter (Constant nodes, no loader, no value_info): same groups as the normalised
    graph."""
    model = export(module(), tmp_path, raw=True)
    del model.graph.value_info[:]
    graph = analyse_channels(model)
    if load_user_onnx is not None:
        assert graph.groups == analyse_channels(export(module(), tmp_path)).groups
    check_pruning(model, graph, 10 if module is InvertedResidualSE else 6, rounds=2)


def test_classifier_and_flatten_not_prunable(tmp_path):
    model = export(Classifier(), tmp_path)
    graph = analyse_channels(model)
    conv, conv2 = group_of(model, "Conv", "/conv/"), group_of(model, "Conv", "conv2")
    fc1, fc2 = group_of(model, "Gemm", "fc1"), group_of(model, "Gemm", "fc2")
    assert graph.prunable_groups() == {conv: 8, fc1: 32}
    assert graph.groups[fc2].reason == "graph output"
    assert graph.groups[conv2].reason.startswith("flattened by") and "16 values per channel" in graph.groups[conv2].reason
    check_pruning(model, graph, 3)


def test_errors_and_input_unchanged(tmp_path):
    model = export(Residual(), tmp_path)
    before = model.SerializeToString()
    graph = analyse_channels(model)
    stem = group_of(model, "Conv", "stem")
    prune_onnx(model, graph, {stem: 4})
    assert model.SerializeToString() == before
    for widths, match in [({"nope": 3}, "no channel group"), ({stem: 0}, "between"), ({stem: 9}, "between")]:
        with pytest.raises(ChannelError, match=match):
            prune_onnx(model, graph, widths)
    with pytest.raises(ChannelError, match="keep"):
        prune_onnx(model, graph, {stem: 2}, {stem: [0, 1, 2]})


def test_inconsistent_add_names_node():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])
    w1 = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((6, 3, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"), helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="bad_add")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w1, w2],
                              value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8, 4, 4]),
                                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 6, 4, 4])])
    with pytest.raises(ChannelError, match="bad_add"):
        analyse_channels(helper.make_model(graph))


def test_unknown_op_makes_groups_non_prunable():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])
    w = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("LRN", ["a"], ["b"], name="lrn", size=3),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2")]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, w2])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    cg = analyse_channels(model)
    assert cg.groups["c1.out"].reason == "consumed by LRN node lrn, which no channel rule covers"
    assert cg.tensors["b"][0].group is None


# ------------------------------------------------------------------------------------------------ timm (slow)

REAL = ["mobilenetv3_small_100", "efficientnet_b0", "regnety_002", "ghostnet_100", "densenet121", "resnet34",
        "mnasnet_100"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_timm_models_prune_and_run(name, tmp_path_factory):
    try:
        from realworld_models import export_timm_onnx, timm_available
    except ImportError:
        pytest.skip("tests/realworld_models.py (export_timm_onnx) is not there")
    if not timm_available():
        pytest.skip("timm is not installed (python -m pip install --no-deps timm; see tests/realworld_models.py)")
    if load_user_onnx is None:
        pytest.skip("latbench.models.onnx_load is not there to normalise the export")
    path = tmp_path_factory.mktemp("timm") / f"{name}.onnx"
    export_timm_onnx(name, path, resolution=96)
    model = load_user_onnx(path)
    graph = analyse_channels(model)
    assert graph.prunable_groups(), name
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    ref = run(model, x)
    np.testing.assert_array_equal(run(prune_onnx(model, graph, {}), x), ref)
    rng = np.random.default_rng(1)
    widths = random_widths(graph, rng, low=0.5)
    out = run(prune_onnx(model, graph, widths), x)
    assert out.shape == ref.shape == (1, 1000)
    assert np.isfinite(out).all()
    # equivalence: the dropped channels made to do nothing, the pruned model computes what the full one does
    keep = random_keep(graph, widths, rng)
    neutral = neutralise_dropped(model, graph, keep)
    want = run(neutral, x)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(run(prune_onnx(neutral, graph, widths, keep), x), want, rtol=1e-4, atol=1e-5 * scale)
    fixed = {n: g.reason for n, g in graph.groups.items() if not g.prunable}
    print(f"\n{name}: {len(graph.groups)} groups, {len(graph.prunable_groups())} prunable; non-prunable: {fixed}")
