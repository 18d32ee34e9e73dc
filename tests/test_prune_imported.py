"""Pruning a user's ONNX model (issue 13): LcP on an independently written CNN (timm's MobileNetV3 with SE blocks
and hard-swish, 1 input channel, 10 classes, 32×32) read from its ONNX file — the file's weights are the parent,
the pruned network is its own graph cut to the widths, fine-tuned in torch (OnnxNet) on real Fashion-MNIST and
shipped as ONNX and TFLite with the trained weights."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from latbench.api import load_model
from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR
from latbench.models.onnx_bn import has_unfolded_batchnorm
from latbench.models.onnx_channels import analyse_channels, prune_onnx
from latbench.models.onnx_load import load_user_onnx
from latbench.models.onnx_torch import OnnxNet
from latbench.search.budget import CostGrid
from latbench.train import load_checkpoint
from latbench.train.checkpoint import CheckpointError
from realworld_models import grey_user_model, timm_available

pytestmark = [pytest.mark.skipif(not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists(),
                                 reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"),
              pytest.mark.skipif(not timm_available(), reason="timm is not installed (pip install --no-deps timm)")]
QUICK = ["--pool", "4", "--candidates", "8", "--fitness-images", "64", "--bn-images", "64", "--finetune-steps", "3",
         "--test-images", "128", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    """What a user brings: a timm MobileNetV3 for grey 32×32 images and 10 classes, as an ONNX file."""
    return grey_user_model(tmp_path_factory, "mobilenetv3_small_050")


def prune(*args):
    return CliRunner().invoke(app, ["prune", "lcp", *map(str, args)])


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_lcp_prunes_an_onnx_model_to_a_flops_budget_and_ships_its_own_graph_trained(user_model, tmp_path):
    spec = load_model(str(user_model))
    full = CostGrid.analytic(spec, "flops", 32).total(spec.groups)
    out = tmp_path / "lcp"
    result = prune("--model", user_model, "--budget-flops", 0.6 * full, "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == spec.name and report["flops"] <= 0.6 * full
    widths = report["architecture"]["widths"]
    assert any(w < spec.groups[g] for g, w in widths.items())
    # SE squeeze widths are ranked by their own conv's filters, not removed first as if worthless
    se = [g for g in spec.groups if "/se/" in g]
    assert se and any(widths[g] > 0.1 * spec.groups[g] + 8 for g in se)
    # The shipped ONNX file is the user's graph cut to those widths (same ops, same order) with trained weights:
    model = load_user_onnx(user_model)
    cut = prune_onnx(model, analyse_channels(model), widths)
    shipped = onnx.load(out / "pruned.onnx")
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in cut.graph.node]
    trained, arch, meta = load_checkpoint(out / "pruned.safetensors")
    assert isinstance(trained, OnnxNet) and arch.widths == widths and meta["source"]["path"] == str(user_model.resolve())
    # fine-tuned with the BN its exporter folded given back, folded again in the shipped file (checked above)
    assert meta["source"]["batchnorm"] == "unfolded" and has_unfolded_batchnorm(trained.model)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = trained(torch.from_numpy(x)).numpy()
    shipped_out = run(ort.InferenceSession(str(out / "pruned.onnx")), x)
    np.testing.assert_allclose(shipped_out, ours, rtol=1e-3, atol=1e-4)
    assert not np.allclose(run(ort.InferenceSession(cut.SerializeToString()), x), ours, atol=1e-5)  # fine-tuned
    from ai_edge_litert.interpreter import Interpreter

    lite = Interpreter(str(out / "pruned.tflite"))
    lite.allocate_tensors()
    inp, outp = lite.get_input_details()[0], lite.get_output_details()[0]
    lite.set_tensor(inp["index"], x.transpose(0, 2, 3, 1) if list(inp["shape"]) == [1, 32, 32, 1] else x)
    lite.invoke()
    np.testing.assert_allclose(lite.get_tensor(outp["index"]).reshape(1, -1), shipped_out, rtol=1e-3, atol=1e-3)
    # A rerun finds the run finished and ships the same file.
    before = (out / "pruned.onnx").read_bytes()
    again = prune("--model", user_model, "--budget-flops", 0.6 * full, "--out", out, *QUICK)
    assert again.exit_code == 0, again.output
    assert (out / "pruned.onnx").read_bytes() == before


@pytest.mark.slow
def test_lcp_lands_an_onnx_model_on_a_latency_budget_measured_on_the_device(user_model, tmp_path):
    """Profiled into a table here, pruned to 90 % of its measured latency, landed by the closed loop on
    host:onnxruntime and the shipped file measured again."""
    table, store = tmp_path / "t.parquet", tmp_path / "store.db"
    profiled = CliRunner().invoke(app, ["profile", str(user_model), "--device", "host:onnxruntime", "--table", str(table),
                                        "--store", str(store), "--calibrate", "4", "--no-progress"])
    assert profiled.exit_code == 0, profiled.output
    out = tmp_path / "lcp"
    result = prune("--model", user_model, "--table", table, "--budget-ratio", 0.9, "--device", "host:onnxruntime",
                   "--store", store, "--out", out, "--repeats", 3, *QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    landing = report["landing"]
    assert landing["steps"] and all(s["measured_ms"] > 0 for s in landing["steps"])
    assert landing["status"] in ("in band", "no unit fits", "over budget")
    assert len(report["shipped_repeats_ms"]) == 3 and report["measured_ms"] > 0
    # The shipped stage starts from the loop's network and may move on from it; what ships is what it chose.
    shipped = report["shipped_landing"]
    assert shipped["steps"] and shipped["steps"][0]["widths"] == landing["architecture"]["widths"]
    assert report["architecture"]["widths"] == shipped["architecture"]["widths"]


def test_an_imported_models_checkpoint_names_its_onnx_file_and_says_when_it_is_gone(user_model, tmp_path):
    moved = tmp_path / "mnv3.onnx"
    shutil.copy(user_model, moved)
    out = tmp_path / "lcp"
    spec = load_model(str(moved))
    full = CostGrid.analytic(spec, "flops", 32).total(spec.groups)
    result = prune("--model", moved, "--budget-flops", 0.8 * full, "--out", out, "--method", "naive", *QUICK)
    assert result.exit_code == 0, result.output
    moved.unlink()
    with pytest.raises(CheckpointError, match="put that ONNX file back"):
        load_checkpoint(out / "pruned.safetensors")


def test_a_zoo_model_still_needs_its_checkpoint(tmp_path):
    result = prune("--model", "resnet20", "--budget-flops", 1e6, "--out", tmp_path / "x", *QUICK)
    assert result.exit_code != 0 and "needs --checkpoint" in result.output
    assert "Traceback" not in result.output


JCW_TINY = ["--population", "4", "--generations", "1", "--supernet-steps", "2", "--supernet-batch-size", "16",
            "--eval-images", "32", "--bn-batches", "1", "--admm-steps-per-epoch", "2", "--admm-batch-size", "16",
            "--admm-update-every", "1", "--admm-rho", "0.5", "--bn-images", "32", "--test-images", "64",
            "--threads", "1", "--no-progress"]


@pytest.mark.slow
def test_jcw_searches_an_onnx_models_supernet_and_ships_its_own_graph_trained(user_model, tmp_path):
    """JCW on a user's ONNX file (issue 13): the weight-sharing supernet is the file's graph (OnnxSupernet),
    searched against a table profiled from that file, the chosen widths and sparsities retrained with ADMM
    and shipped as the user's graph cut to them, with the trained weights and the sparsity as real zeros."""
    table, store = tmp_path / "t.parquet", tmp_path / "store.db"
    profiled = CliRunner().invoke(app, ["profile", str(user_model), "--device", "host:onnxruntime", "--table",
                                        str(table), "--store", str(store), "--calibrate", "0", "--sparsity", "0",
                                        "--sparsity", "0.9", "--no-progress"])   # an imported table spans sparsity when asked
    assert profiled.exit_code == 0, profiled.output
    out = tmp_path / "jcw"
    result = CliRunner().invoke(app, ["prune", "jcw", "--model", str(user_model), "--table", str(table),
                                      # a tiny MobileNetV3 on 32 px: its fixed parts (stem, head, per-kernel cost)
                                      # keep even the narrowest widths near 90 % of the full network, so the
                                      # budget leaves a margin above that floor (0.9 failed once at 90.1 %)
                                      "--budget-ratio", "0.95", "--sparsity-where", "measured", "--out", str(out),
                                      "--min-width-ratio", "0.25", "--coupled-min-width-ratio", "0.25",
                                      *JCW_TINY])
    assert result.exit_code == 0, result.output
    genes = re.search(r"\((\d+) sparsity genes\)", result.output)
    assert genes and int(genes.group(1)) > 0                  # the convs' sparsities were searched too
    report = json.loads((out / "budget-0.95" / "report.json").read_text())
    spec = load_model(str(user_model))
    assert report["model"] == spec.name and report["predicted_ms"] <= report["budget"]["value"]
    widths, sparsity = report["architecture"]["widths"], report["architecture"]["sparsity"]
    model = load_user_onnx(user_model)
    cut = prune_onnx(model, analyse_channels(model), widths)
    shipped = onnx.load(out / "budget-0.95" / "pruned.onnx")
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in cut.graph.node]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in shipped.graph.initializer}
    for layer, s in sparsity.items():                      # the sparsity the search chose, as zeros in the file
        if s > 0:
            node = next(n for n in shipped.graph.node if n.name == layer)
            w = weights[node.input[1]]
            assert (w == 0).mean() >= s - 0.02, layer
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    shipped_out = run(ort.InferenceSession(str(out / "budget-0.95" / "pruned.onnx")), x)
    # ADMM trained the graph with its BN given back; the checkpoint holds it and computes what ships
    trained, arch, meta = load_checkpoint(out / "budget-0.95" / "admm.safetensors")
    assert meta["source"]["batchnorm"] == "unfolded" and arch.widths == widths
    with torch.no_grad():
        np.testing.assert_allclose(trained(torch.from_numpy(x)).numpy(), shipped_out, rtol=1e-3, atol=1e-4)
    assert report["test_accuracy"]["finetuned"] >= 0.0 and report["admm_history"]["phases"]


# ---- SP on a user's graph: the supernet run stage by stage ----------------------------------------------------

SP_QUICK = ["--train-images", "64", "--supernet-batch-size", "32", "--manager-population", "2",
            "--manager-generations", "1", "--stage-population", "4", "--stage-generations", "1", "--eval-images", "16",
            "--calib-images", "16", "--finetune-steps", "2", "--bn-images", "32", "--test-images", "50", "--threads", "1",
            "--no-progress"]


@pytest.fixture(scope="module")
def user_mnv2(tmp_path_factory) -> Path:
    """An inverted-residual CNN with stage boundaries: timm's MobileNetV2 at half width, grey 32×32, 10 classes."""
    return grey_user_model(tmp_path_factory, "mobilenetv2_050")


def _random_arch(spec, net, seed: int):
    from latbench.models import Architecture

    rng = np.random.default_rng(seed)
    widths = {}
    for name, full in spec.groups.items():
        g = net.groups[name]
        choices = [w for w in range(g.min_width, full + 1) if w % g.multiple == 0]
        widths[name] = int(rng.choice(choices[len(choices) // 3:]))
    return net.validate(Architecture(spec.name, spec.base_resolution, widths))


@pytest.mark.parametrize("family", ["mobilenetv2_050", "resnet18"])
def test_an_onnx_supernet_runs_stage_by_stage_as_it_runs_whole(family, tmp_path_factory):
    """Inverted residuals, and a ResNet whose stem and max pool join its first stage: the graph split at the stage
    tensors computes what the whole graph computes, for the full network and for sub-networks; a stage given the
    full network's wider input keeps the channels the sub-network keeps; adaptors read the kept channels' columns."""
    from latbench.models.onnx_torch import full_network
    from latbench.supernet import StageAdaptors, supernet_from

    spec = load_model(str(grey_user_model(tmp_path_factory, family)))
    net = supernet_from(full_network(spec), "l1").eval()
    assert len(net.stages) >= 4
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        logits, full = net(x, return_stages=True)
        torch.testing.assert_close(logits, net(x))
        assert [y.shape[1] for y in full] == [spec.groups[s.output_group] for s in net.stages]
        arch = _random_arch(spec, net, 0)
        sub_logits, sub = net(x, arch, return_stages=True)
        torch.testing.assert_close(sub_logits, net(x, arch))
        torch.testing.assert_close(sub_logits, net.extract(arch)(x), rtol=1e-4, atol=1e-5)
        for i in range(len(net.stages)):
            torch.testing.assert_close(net.forward_stage(i, sub[i - 1] if i else x, arch), sub[i])
            if i:       # the full network's output of the stage before, cut to the channels arch keeps
                keep = net.stage_channels(i - 1, arch)
                narrow = full[i - 1] if keep is None else full[i - 1][:, keep]
                torch.testing.assert_close(net.forward_stage(i, full[i - 1], arch), net.forward_stage(i, narrow, arch))
        torch.testing.assert_close(net.head(sub[-1], arch), sub_logits)
        adaptors = StageAdaptors.for_net(net)          # the identity at first: each kept channel at its position
        narrowed = [i for i in range(len(net.stages)) if net.stage_channels(i, arch) is not None]
        assert narrowed
        for i in narrowed:
            keep = net.stage_channels(i, arch)
            expected = torch.zeros_like(full[i])
            expected[:, keep] = sub[i]
            torch.testing.assert_close(adaptors(i, sub[i], keep), expected)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_an_imported_sp_supernet_checkpoint_is_rebuilt_from_its_file(user_mnv2, tmp_path, batchnorm):
    from latbench.methods.sp.training import load_supernet, save_supernet
    from latbench.models.onnx_bn import unfold_batchnorm
    from latbench.models.onnx_torch import full_network
    from latbench.supernet import OnnxSupernet, StageAdaptors, supernet_from

    spec = load_model(str(user_mnv2))
    parent = full_network(spec)
    if batchnorm:                 # as SP trains it: the BN its exporter folded given back
        parent = unfold_batchnorm(parent, [torch.randn(8, 1, 32, 32)])
    net = supernet_from(parent, "l1")
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)                       # "trained": not the file's weights any more
    adaptors = StageAdaptors.for_net(net)
    save_supernet(tmp_path / "s.safetensors", net, adaptors)
    loaded, loaded_adaptors, meta = load_supernet(tmp_path / "s.safetensors")
    assert isinstance(loaded, OnnxSupernet) and meta["source"] == spec.source
    assert has_unfolded_batchnorm(loaded.model) == batchnorm
    arch = _random_arch(spec, net, 2)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, arch), net.eval()(x, arch))
    assert {g: o.tolist() for g, o in loaded.order.items()} == {g: o.tolist() for g, o in net.order.items()}


def prune_sp(*args):
    return CliRunner().invoke(app, ["prune", "sp", *map(str, args)])


def sp_to_flops(model: Path, ratio: float, out: Path):
    """``latbench prune sp`` of ``model`` to ``ratio`` of its full FLOPs in process: (spec, full FLOPs, report)."""
    spec = load_model(str(model))
    full = CostGrid.analytic(spec, "flops", 32).total(spec.groups)
    result = prune_sp("--model", model, "--budget-flops", ratio * full, "--data", "fashion-mnist", "--out", out,
                      "--no-ray", *SP_QUICK)
    assert result.exit_code == 0, result.output
    return spec, full, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_sp_prunes_an_onnx_model_stage_by_stage_and_ships_its_own_graph_trained(user_mnv2, tmp_path):
    """SP on a user's ONNX file: the stage-wise supernet is the file's graph, searched stage by stage (Ray when
    installed), the chosen sub-network retrained from the supernet's weights and shipped as the user's graph cut
    to its widths."""
    out = tmp_path / "sp"
    spec, full, report = sp_to_flops(user_mnv2, 0.7, out)
    assert report["model"] == spec.name and report["flops"] <= 0.7 * full
    assert len(report["search"]["stage_losses"]) == 5
    widths = report["architecture"]["widths"]
    assert any(w < spec.groups[g] for g, w in widths.items())
    model = load_user_onnx(user_mnv2)
    cut = prune_onnx(model, analyse_channels(model), widths)
    shipped = onnx.load(out / "pruned.onnx")
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in cut.graph.node]
    trained, arch, meta = load_checkpoint(out / "pruned.safetensors")
    assert isinstance(trained, OnnxNet) and arch.widths == widths and meta["source"]["batchnorm"] == "unfolded"
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ours = trained(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(ort.InferenceSession(str(out / "pruned.onnx")), x), ours, rtol=1e-3, atol=1e-4)
    # A rerun recomputes nothing: the shipped file stays as it is.
    before = (out / "pruned.onnx").read_bytes()
    sp_to_flops(user_mnv2, 0.7, out)
    assert (out / "pruned.onnx").read_bytes() == before


@pytest.mark.slow
def test_sp_lands_an_onnx_model_on_a_latency_budget_measured_on_the_device(user_mnv2, tmp_path):
    """Profiled into a table here, SP's stage budgets taken from it, and the shipped file of the user's graph landed
    on 85 % of the full network's latency measured on host:onnxruntime."""
    table, store = tmp_path / "t.parquet", tmp_path / "store.db"
    profiled = CliRunner().invoke(app, ["profile", str(user_mnv2), "--device", "host:onnxruntime", "--table", str(table),
                                        "--store", str(store), "--calibrate", "4", "--no-progress"])
    assert profiled.exit_code == 0, profiled.output
    out = tmp_path / "sp"
    result = prune_sp("--model", user_mnv2, "--table", table, "--budget-ratio", 0.85, "--device", "host:onnxruntime",
                      "--store", store, "--data", "fashion-mnist", "--out", out, "--repeats", 3, "--no-ray", *SP_QUICK)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    landing = report["landing"]
    assert landing["steps"] and all(s["measured_ms"] > 0 for s in landing["steps"])
    assert landing["status"] in ("in band", "no unit fits", "over budget")
    assert len(report["shipped_repeats_ms"]) == 3 and report["measured_ms"] > 0
    assert report["predicted_ms"] > 0 and report["architecture"]["widths"] == report["shipped_landing"]["architecture"][
        "widths"]
    shipped = onnx.load(out / "pruned.onnx")
    spec = load_model(str(user_mnv2))
    assert shipped.graph.input[0].type.tensor_type.shape.dim[1].dim_value == spec.in_channels


@pytest.mark.parametrize("args, message", [
    (["--order", "l2"], "an imported model ranks its channels by l1"),
    (["--retrain-from", "scratch"], "--retrain-from scratch needs a zoo model"),
])
def test_sp_options_an_imported_model_cannot_take_are_refused_before_training(user_mnv2, tmp_path, args, message):
    out = tmp_path / "sp"
    result = prune_sp("--model", user_mnv2, "--budget-flops", 1e6, "--data", "fashion-mnist", "--out", out,
                      "--no-ray", *args, *SP_QUICK)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not (out / "supernet.safetensors").exists()


def test_sp_keeps_mobilenetv3s_head_conv_at_full_width(user_model, tmp_path):
    """MobileNetV3's head runs a 1×1 conv (its own channel group) after the global pool: the head is everything
    from the last global pool on, its group belongs to no stage and stays at full width; the stages are pruned."""
    from latbench.supernet import head_groups, stages_of

    out = tmp_path / "sp"
    spec, full, report = sp_to_flops(user_model, 0.8, out)
    (head,) = head_groups(spec)
    assert "conv_head" in head and len(stages_of(spec)) >= 3
    widths = report["architecture"]["widths"]
    assert widths[head] == spec.groups[head] and report["flops"] <= 0.8 * full
    assert any(w < spec.groups[g] for g, w in widths.items())
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    assert np.isfinite(run(ort.InferenceSession(str(out / "pruned.onnx")), x)).all()
