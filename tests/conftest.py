from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
JCW_DIR = SHARED / "fixtures" / "jcw_resnet18"


@pytest.fixture
def jcw_dir() -> Path:
    if not (JCW_DIR / "runtime.npy").exists():
        pytest.skip(f"JCW phone table not found at {JCW_DIR} (it lives in ../shared beside the checkout)")
    return JCW_DIR


@pytest.fixture(scope="session")
def untrained_resnet56_checkpoint(tmp_path_factory) -> Path:
    """A full ResNet-56 for 1-channel 32×32 images, freshly initialised: pruning jobs need a checkpoint, not
    a good one."""
    from latbench.models import Architecture, build, get_model
    from latbench.train import save_checkpoint

    torch.manual_seed(0)
    net = build(get_model("resnet56"), in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "r56.safetensors"
    save_checkpoint(path, net, arch=Architecture.full(net.spec, 32))
    return path
