"""The device correction a model never measured whole is predicted with (latbench.validation.fit_device_calibration):
per-category scales from lookups to whole networks, learnt on other models and pulled towards one common scale as
strongly as leaving each of those models out in turn shows it pays."""
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from benchmark_scripts import load_benchmark_script

from latbench.predictor import KERNEL_CATEGORIES
from latbench.validation import SHRINKAGE_GRID, _category_fit, fit_device_calibration

C = len(KERNEL_CATEGORIES)
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def table(models: dict) -> SimpleNamespace:
    return SimpleNamespace(meta={"calibration": {m: {"kernel_samples": np.column_stack(xy).tolist()}
                                                 for m, xy in models.items()}})


def model(rng, scales, offset=0.2, factor=1.0, categories=(0, 1, 2), n=10):
    sums = np.zeros((n, C))
    for c in categories:
        sums[:, c] = rng.uniform(0.3, 4.0, n)
    return sums, (sums @ np.asarray(scales) + offset) * factor


def test_categories_that_really_differ_keep_their_own_scales():
    """Noise-free networks whose categories cost 1.0, 0.8 and 0.6 of their lookups: no pull pays, the scales come
    back exactly and the offset too."""
    rng = np.random.default_rng(0)
    truth = [1.0, 0.8, 0.6] + [1.0] * (C - 3)
    fit = fit_device_calibration(table({f"m{i}": model(rng, truth) for i in range(4)}))
    assert fit["shrinkage"] == 0.0 and fit["models"] == ["m0", "m1", "m2", "m3"] and fit["networks"] == 40
    assert [fit["scales"][c] for c in KERNEL_CATEGORIES[:3]] == pytest.approx(truth[:3], abs=1e-9)
    assert fit["offset_ms"] == pytest.approx(0.2, abs=1e-9) and fit["fit_error"] < 1e-9
    assert all(fit["scales"][c] == 1.0 for c in KERNEL_CATEGORIES[3:])        # no model has them: as timed


def test_a_rare_category_is_pulled_towards_the_common_scale_when_models_differ_as_wholes():
    """Every kernel costs 0.8 of its lookup, but each model runs a few % fast or slow as a whole (what whole
    networks on a busy host do), and the SE category appears in two models only: a free fit lets SE absorb those
    two models' factors; leaving models out shows that a pull pays, and the scales end up closer together."""
    rng = np.random.default_rng(3)
    se = KERNEL_CATEGORIES.index("se")
    scales = [0.8] * C
    factors = [1.12, 0.9, 1.05, 0.95, 1.03, 0.97]
    models = {f"m{i}": model(rng, scales, factor=f, categories=(0, 1, 2, se) if i < 2 else (0, 1, 2))
              for i, f in enumerate(factors)}
    fit = fit_device_calibration(table(models))
    assert fit["shrinkage"] in SHRINKAGE_GRID and fit["shrinkage"] > 0
    sums = np.vstack([s for s, _ in models.values()])
    measured = np.concatenate([y for _, y in models.values()])
    free, _ = _category_fit(sums, measured, 0.0)
    used = [0, 1, 2, se]
    pulled = np.array([fit["scales"][KERNEL_CATEGORIES[c]] for c in used])
    assert np.ptp(pulled) < np.ptp(free[used])


def test_one_model_alone_is_its_own_fit_and_fewer_than_asked_is_none():
    rng = np.random.default_rng(1)
    one = table({"m": model(rng, [0.9] * C)})
    assert fit_device_calibration(one) is None
    fit = fit_device_calibration(one, min_models=1)
    assert fit["shrinkage"] == 0.0 and fit["fit_error"] < 1e-9


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_on_the_committed_real_world_runs_the_pull_misses_no_more_networks_than_free_scales(runtime):
    """The real-world benchmark's kept lookups (15 timm models, 2026-12-03): with each model left out in turn, the
    fit latbench uses lands at least as many networks within ±10 % as per-category scales fitted freely."""
    study = load_benchmark_script("realworld_corrections")
    with gzip.open(RESULTS / "realworld-small-ref" / f"kernels-{runtime}.json.gz", "rt") as f:
        data = json.load(f)
    device = study.leave_one_model_out(data, "device")
    free = study.leave_one_model_out(data, "sums")
    assert device[0] >= free[0] and device[2] >= free[2]
