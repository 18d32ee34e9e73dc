"""The offline correction study (benchmarks/realworld_corrections.py) on kernels files the test writes."""
import gzip
import json

import numpy as np
import pytest
from benchmark_scripts import load_benchmark_script

study = load_benchmark_script("realworld_corrections")


def networks(rng, depthwise_cost: float, n: int = 6) -> list[dict]:
    """A model's networks: a dense conv and a depthwise conv whose lookups vary; measured = 0.9·conv +
    ``depthwise_cost``·depthwise + 0.05 ms."""
    out = []
    for _ in range(n):
        conv, dw = rng.uniform(0.5, 2.0), rng.uniform(0.2, 1.0)
        out.append({"measured_ms": 0.9 * conv + depthwise_cost * dw + 0.05, "kernels": [
            ["conv", "relu", 3, 1, 1, 16, 32, 32, conv], ["depthwise", "relu", 3, 1, 1, 32, 32, 32, dw]]})
    return out


def test_a_per_category_correction_shared_by_every_model_predicts_the_model_left_out(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = {f"m{i}": networks(rng, 0.7) for i in range(4)}
    assert study.leave_one_model_out(data, "sums") == (1.0, 1.0, 1.0, 1.0)
    # one scale for the total cannot hold when the categories' scales differ and their mix varies
    assert study.leave_one_model_out(data, "total")[3] < 1.0
    path = tmp_path / "kernels.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    study.main(str(path), ["sums", "sums+n+io"])
    assert "sums " in capsys.readouterr().out


def test_a_model_whose_kernels_behave_otherwise_is_missed_not_hidden():
    rng = np.random.default_rng(1)
    data = {f"m{i}": networks(rng, 0.7) for i in range(3)} | {"odd": networks(rng, 2.0)}
    assert study.leave_one_model_out(data, "sums")[0] < 1.0


def test_one_model_cannot_be_left_out(tmp_path):
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({"m": networks(np.random.default_rng(2), 0.7)}))
    with pytest.raises(SystemExit, match="at least two"):
        study.main(str(path), ["sums"])
