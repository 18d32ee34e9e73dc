"""The scripts under ``benchmarks/`` are not a package: tests load one by file name
(``from benchmark_scripts import load_benchmark_script``; pytest puts ``tests/`` on ``sys.path``)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` imported as module ``NAME``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
