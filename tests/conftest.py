from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
JCW_DIR = SHARED / "fixtures" / "jcw_resnet18"


@pytest.fixture
def jcw_dir() -> Path:
    if not (JCW_DIR / "runtime.npy").exists():
        pytest.skip(f"JCW phone table not found at {JCW_DIR} (it lives in ../shared beside the checkout)")
    return JCW_DIR
