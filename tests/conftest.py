from pathlib import Path

import pytest
import torch

pytest_plugins = ["no_hidden_skips", "pytester"]

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


@pytest.fixture(scope="session")
def resnet56_litert_table(tmp_path_factory) -> Path:
    """A small ResNet-56 (32×32) table measured on this machine's host:litert, as tests need a table that
    matches the device they measure on: the shipped tables match only the machine that measured them.
    Coarse on purpose (2 channel knots, 3 runs): the jobs need the device to match, not good figures.
    Sparsity knots as the shipped table has them, so JCW can search measured sparsities."""
    from latbench.cli import app
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("litert-table")
    table, store = folder / "resnet56-32.parquet", folder / "store.db"
    result = CliRunner().invoke(app, ["profile", "resnet56", "--resolution", "32", "--dense", "--channel-points", "2",
                                      "--sparsity", "0", "--sparsity", "0.5", "--sparsity", "0.9", "--rounds", "1", "--runs", "3", "--warmup", "1",
                                      "--channel-multiple", "8", "--device", "host:litert", "--store", str(store),
                                      "--table", str(table), "--calibrate", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    return table


@pytest.fixture(scope="session")
def midway_latency_budget():
    """``f(model, table) -> ms``: halfway between the table's prediction for the model with every group at
    its narrowest width (0.1 of full, multiples of 8) and at full width. Reachable on any machine, unlike a
    ratio of the *measured* full latency, which on a loaded or different CPU can fall below the narrowest."""
    from latbench.models import get_model
    from latbench.predictor import Predictor
    from latbench.search.budget import Budget, CostGrid
    from latbench.supernet import SearchSpace
    from latbench.tables.table import LatencyTable

    def budget(model: str, table: Path, resolution: int = 32) -> float:
        spec = get_model(model)
        grid = CostGrid.for_budget(spec, Budget("latency", 1.0), resolution, Predictor(spec, LatencyTable.load(table)),
                                   step=8)
        narrowest = SearchSpace.from_spec(spec, multiple=8, resolutions=(resolution,)).smallest(resolution)
        return 0.5 * (grid.total(narrowest.widths) + grid.total(spec.groups))
    return budget
