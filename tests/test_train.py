"""Training loop, schedules, safetensors checkpoints, exact resume, and real learning on Fashion-MNIST."""
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from latbench.cli import app
from latbench.data import FASHION_MNIST_DIR, Augment, ImageDataset, channel_stats, load_fashion_mnist
from latbench.models import Architecture, GraphNet, get_model, materialize
from latbench.train import (CheckpointError, TrainConfig, evaluate, load_checkpoint, read_checkpoint_meta,
                            save_checkpoint, train)
from test_data import fake_mnist

SPEC = get_model("resnet20")


def tiny_net(seed=0, width=4, in_channels=1) -> GraphNet:
    torch.manual_seed(seed)
    return GraphNet(SPEC, {g: width for g in SPEC.groups}, in_channels)


def toy_data(n=48, hw=8, seed=0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, hw, hw), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = channel_stats(images)
    return ImageDataset("toy", images, labels, 10, mean, std)


KW = dict(batch_size=8, progress=False, threads=1, augment=Augment(crop_padding=2))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    data = toy_data()
    straight = tiny_net()
    h_straight = train(straight, data, 2, 0.05, checkpoint=tmp_path / "a.safetensors", **KW)
    assert h_straight.complete and h_straight.step == 12 and len(h_straight.epochs) == 2

    ckpt = tmp_path / "b.safetensors"
    first = tiny_net()
    h_part = train(first, data, 2, 0.05, checkpoint=ckpt, max_steps=4, checkpoint_every=3, **KW)
    assert not h_part.complete and h_part.step == 4 and h_part.epochs == []
    assert read_checkpoint_meta(ckpt)["step"] == 4

    resumed = tiny_net(seed=123)  # different initial weights: everything must come from the checkpoint
    h_resumed = train(resumed, data, 2, 0.05, checkpoint=ckpt, resume=True, **KW)
    assert h_resumed.complete and h_resumed.step == 12
    for key, value in straight.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-6), key
    assert [e.train_loss for e in h_resumed.epochs] == pytest.approx([e.train_loss for e in h_straight.epochs])

    # A finished run is returned as is; other settings are refused instead of silently mixed.
    assert train(tiny_net(seed=5), data, 2, 0.05, checkpoint=ckpt, resume=True, **KW).step == 12
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        train(tiny_net(), data, 2, 0.01, checkpoint=ckpt, resume=True, **KW)


def test_schedules():
    one = TrainConfig(epochs=1, lr=0.4, schedule="onecycle")
    rates = [one.lr_at(s, 1000) for s in range(1000)]
    assert rates[0] == pytest.approx(0.4 / 25)
    assert max(rates) == pytest.approx(0.4, rel=1e-3) and rates.index(max(rates)) == 300
    assert rates[-1] < 1e-4
    cos = TrainConfig(epochs=1, lr=0.1, schedule="cosine", warmup=0.1)
    rates = [cos.lr_at(s, 100) for s in range(100)]
    assert rates[0] == pytest.approx(0.01) and rates[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] < 1e-3
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(epochs=1, lr=0.1, schedule="step")


def test_checkpoint_rebuilds_a_pruned_network(tmp_path):
    spec = get_model("resnet56")
    torch.manual_seed(0)
    parent = GraphNet(spec, spec.groups, in_channels=1)
    widths = {g: max(1, w // 2) for g, w in spec.groups.items()}
    arch = Architecture(spec.name, 32, widths, {"layer2.3.conv1": 0.5})
    pruned = materialize(arch, spec, parent)
    path = save_checkpoint(tmp_path / "p.safetensors", pruned, arch=arch, meta={"note": "half"})
    net, arch_back, meta = load_checkpoint(path)
    assert arch_back == arch and meta["in_channels"] == 1 and meta["note"] == "half"
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x), pruned(x))
    assert net.block("layer1.0.conv1").conv.out_channels == 8


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a latbench checkpoint"):
        load_checkpoint(foreign)


def test_evaluate_matches_a_direct_computation():
    data, net = toy_data(n=20), tiny_net()
    loss, acc = evaluate(net, data, batch_size=7)
    net.eval()
    with torch.no_grad():
        logits = net(data.normalize(data.images))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, data.labels)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == data.labels).float().mean()))


def test_cli_train_writes_checkpoint_and_history(tmp_path):
    fake_mnist(tmp_path, n_train=40, n_test=12)
    out = tmp_path / "run" / "r20.safetensors"
    args = ["train", "--model", "resnet20", "--data", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
            "--batch-size", "8", "--steps-per-epoch", "2", "--val-size", "8", "--out", str(out), "--no-progress",
            "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    history = json.loads(out.with_suffix(".json").read_text())
    assert history["complete"] and history["step"] == 2 and 0.0 <= history["test_acc"] <= 1.0
    net, arch, meta = load_checkpoint(out)
    assert arch.model == "resnet20" and meta["in_channels"] == 1 and meta["dataset"]["name"] == "mnist"
    evaluated = CliRunner().invoke(app, ["evaluate", str(out), "--data-dir", str(tmp_path), "--split", "val",
                                         "--val-size", "8", "--threads", "1"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["data"] == "mnist" and report["split"] == "val"
    assert report["accuracy"] == pytest.approx(history["epochs"][-1]["val_acc"])
    args[args.index("--data-dir") + 1] = str(tmp_path / "none")
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "does not exist" in " ".join(bad.output.split())


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist()


@pytest.mark.slow
def test_learning_happens_on_real_fashion_mnist(fashion):
    torch.manual_seed(0)
    net = GraphNet(SPEC, {g: w // 4 for g, w in SPEC.groups.items()}, in_channels=1)  # 4/8/16 channels: fast
    before = evaluate(net, fashion.test.head(1000))[1]
    # One thread: on a machine that is busy with latency measurements, 2 threads spin and crawl.
    history = train(net, fashion.train.head(2000), 3, 0.1, batch_size=32, progress=False, threads=1)
    loss, acc = evaluate(net, fashion.test.head(1000))
    assert len(history.epochs) == 3 and history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert before < 0.2 and acc > before + 0.35, (before, acc)   # chance is 0.1; measured 0.56 after
