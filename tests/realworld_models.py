"""Real-world test models: CNN definitions written independently of latbench (timm 1.0.31, random weights),
exported to ONNX with torch's legacy exporter as a user would. They test that latbench reads ONNX files it
did not write itself.

Used by the tests (``from realworld_models import realworld_onnx``; pytest puts ``tests/`` on ``sys.path``)
and by ``benchmarks/realworld.py`` (which puts this file's folder on ``sys.path``). timm is installed with
``--no-deps`` (see ``.ci/run``): torchvision has no build for the project's torch, and timm needs it only for
its data pipeline, so ``tests/stubs/torchvision`` stands in for it when a real one cannot be imported.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

try:
    import pytest
except ImportError:     # a benchmark run without the test extra: everything but the fixture works
    pytest = None

TIMM_VERSION = "1.0.31"
STUBS = Path(__file__).resolve().parent / "stubs"     # relative to this file: works from tests/ and benchmarks/

# Our family name → timm model name (each checked with timm.list_models in timm 1.0.31).
# timm has no ShuffleNetV2 (timm.list_models("*shuffle*") is empty in 1.0.31), so that family has no entry.
REALWORLD = {
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_lite0": "efficientnet_lite0",        # PyTorch-style symmetric padding
    "efficientnet_lite0_tf": "tf_efficientnet_lite0",  # TF 'SAME' padding: explicit Pad nodes before strided convs
    "regnetx_200mf": "regnetx_002",
    "regnety_200mf": "regnety_002",
    "ghostnet": "ghostnet_100",
    "mnasnet": "mnasnet_100",
    "fbnet_c": "fbnetc_100",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
}


def _ensure_torchvision() -> None:
    """Make ``import torchvision`` work: the real one if it imports, else the test stub."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:       # absent, or built for another torch (raises at import)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    importlib.invalidate_caches()


def timm_available() -> bool:
    """Whether ``import timm`` works (with the torchvision stub if needed)."""
    _ensure_torchvision()
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


def benchmark_families(names) -> list[str]:
    """The families a benchmark run asks for (all when none), checked: ends the run with a one-line message when
    timm is missing or a name is unknown."""
    if not timm_available():
        raise SystemExit(f"timm is not installed: pip install --no-deps timm=={TIMM_VERSION} (see .ci/run)")
    names = list(names or REALWORLD)
    unknown = [n for n in names if n not in REALWORLD]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(REALWORLD)}")
    return names


def exported_family(name: str, folder: str | Path) -> Path:
    """Family ``name`` exported as a user would (224×224) to ``folder``, once: a later run reuses the file."""
    path = Path(folder) / f"{REALWORLD[name]}.onnx"
    if not path.exists():
        export_timm_onnx(REALWORLD[name], path)
    return path


def timm_name(name: str) -> str:
    """The timm model name for one of our family names (or a timm name itself)."""
    return REALWORLD.get(name, name)


def export_timm_onnx(name: str, path: str | Path, resolution: int = 224, opset: int = 17, seed: int = 0,
                     in_chans: int = 3, num_classes: int = 1000) -> Path:
    """Export timm model ``name`` (a family name from :data:`REALWORLD` or a timm name) with random weights to
    ``path`` with torch's legacy (TorchScript) exporter; the file appears atomically (temp file + rename).
    ``in_chans``/``num_classes``: e.g. 1 and 10 for a model a user trains on Fashion-MNIST."""
    import torch
    _ensure_torchvision()
    import timm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model(timm_name(name), pretrained=False, num_classes=num_classes, in_chans=in_chans).eval()
    x = torch.randn(1, in_chans, resolution, resolution)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(model, x, tmp, opset_version=opset, dynamo=False,
                              input_names=["input"], output_names=["output"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def grey_user_model(tmp_path_factory, name: str) -> Path:
    """What a user brings to prune on Fashion-MNIST: timm model ``name`` for grey 32×32 images and 10 classes, as an
    ONNX file, exported once per session (tests only read it)."""
    path = tmp_path_factory.getbasetemp() / "grey-user-models" / f"{name}.onnx"
    if not path.exists():
        export_timm_onnx(name, path, resolution=32, in_chans=1, num_classes=10)
    return path


def _realworld_onnx(tmp_path_factory):
    """``get(name, resolution=224, opset=17) -> Path``: the timm model's ONNX export, made once per session.

    Skips when timm is not installed (``.ci/run`` installs it, so under CI=true that skip fails). The cache is
    a fixed folder under the session's base temp dir, so modules that import this fixture share the files."""
    if not timm_available():
        pytest.skip(f"timm is not installed (python -m pip install --no-deps timm=={TIMM_VERSION})")
    folder = tmp_path_factory.getbasetemp() / "realworld-onnx"
    folder.mkdir(exist_ok=True)

    def get(name: str, resolution: int = 224, opset: int = 17) -> Path:
        path = folder / f"{timm_name(name)}-{resolution}-op{opset}.onnx"
        if not path.exists():
            export_timm_onnx(name, path, resolution=resolution, opset=opset)
        return path

    return get


if pytest is not None:
    realworld_onnx = pytest.fixture(scope="session", name="realworld_onnx")(_realworld_onnx)
