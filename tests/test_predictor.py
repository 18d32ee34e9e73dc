import numpy as np
import pytest

from latbench.models import Architecture, ArchitectureError, get_model, random_architectures
from latbench.predictor import Population, Predictor
from latbench.tables.jcw import import_jcw_table
from latbench.tables.table import OutOfGridError, TableError


def test_jcw_table_imports_with_its_published_figures(jcw_dir):
    table, _ = import_jcw_table(jcw_dir)
    spec = get_model("resnet18")
    pred = Predictor(spec, table)
    full = Architecture.full(spec, 224)
    # 373.8 ms over the 19 convs after the stem (the figure in SOURCES.md) + 23.3 ms for the stem.
    bd = pred.breakdown(full)
    assert bd[bd.layer != "stem"].latency_ms.sum() == pytest.approx(373.76, abs=0.05)
    assert pred.predict(full)[0] == pytest.approx(bd.latency_ms.sum())
    # Weight sparsity pays on that phone: layer 1 at density 1.0 → 0.5 goes from 26.4 to 19.0 ms.
    from latbench.layers import LayerPoint, signature_of
    sig = signature_of(spec.layer("layer1.0.conv1")).key
    assert table.lookup(sig, LayerPoint(64, 64, 0.0, 56)) == pytest.approx(26.4, abs=0.1)
    assert table.lookup(sig, LayerPoint(64, 64, 0.5, 56)) == pytest.approx(19.0, abs=0.1)


def test_vectorised_prediction_equals_the_per_layer_sum(jcw_dir):
    table, _ = import_jcw_table(jcw_dir)
    spec = get_model("resnet18")
    pred = Predictor(spec, table)
    archs = random_architectures(spec, 40, seed=5, resolutions=(224,), sparsities=(0.0, 0.17, 0.5, 0.93))
    fast = pred.predict(archs)
    slow = np.array([pred.breakdown(a).latency_ms.sum() for a in archs])
    np.testing.assert_allclose(fast, slow, rtol=1e-9)
    pop = Population.from_architectures(spec, archs)
    np.testing.assert_allclose(pred.predict_population(pop), fast)
    # Widths in multiples of 8 take the compact compiled layout; it must agree too.
    eights = random_architectures(spec, 40, seed=6, resolutions=(224,), sparsities=(0.0, 0.35, 0.9), divisor=8)
    assert pred._step(Population.from_architectures(spec, eights).widths) == 8
    np.testing.assert_allclose(pred.predict(eights), [pred.breakdown(a).latency_ms.sum() for a in eights], rtol=1e-9)


def test_out_of_grid_architectures_fail_with_the_layer_named(jcw_dir):
    table, _ = import_jcw_table(jcw_dir)
    spec = get_model("resnet18")
    with pytest.raises(OutOfGridError, match="resolution 192"):
        Predictor(spec, table).predict(Architecture.full(spec, 192))
    assert Predictor(spec, table, clamp=True).predict(Architecture.full(spec, 192))[0] > 0
    with pytest.raises(ArchitectureError, match="outside 1..64"):
        Predictor(spec, table).predict(Architecture("resnet18", 224, {**spec.groups, "stage1": 65}))


def test_a_table_missing_the_models_layers_is_refused(jcw_dir):
    table, _ = import_jcw_table(jcw_dir)
    with pytest.raises(TableError, match="mobilenet_v2"):
        Predictor(get_model("mobilenet_v2"), table)


def test_calibration_line_recovers_scale_and_offset_and_falls_back_to_the_ratio():
    from latbench.validation import fit_calibration

    raw = np.array([1.0, 1.2, 1.5, 1.9, 2.4, 2.85])
    measured = 0.87 * raw - 0.11
    scale, offset = fit_calibration(raw, measured, "line")
    assert scale == pytest.approx(0.87) and offset == pytest.approx(-0.11)
    # The median ratio alone over-predicts the narrowest network, the line does not.
    ratio, zero = fit_calibration(raw, measured, "ratio")
    assert zero == 0.0 and ratio * raw[0] > 1.04 * measured[0]
    # Too narrow a span of sums to fit a slope: the ratio.
    assert fit_calibration(np.array([1.0, 1.1, 1.2, 1.3]), np.array([0.8, 0.9, 1.0, 1.0]), "line")[1] == 0.0
    with pytest.raises(ValueError, match="unknown calibration fit"):
        fit_calibration(raw, measured, "spline")


def test_calibration_networks_reach_down_to_the_narrowest_network():
    from latbench.validation import calibration_architectures

    spec = get_model("resnet56")
    archs = calibration_architectures(spec, 24, seed=3, resolutions=(32,), divisor=8)
    assert 20 <= len(archs) <= 24 and len(set(archs)) == len(archs) and archs[0] == Architecture.full(spec, 32)
    ratios = [np.mean([a.widths[g] / c for g, c in spec.groups.items()]) for a in archs]
    assert min(ratios) <= 0.35 and max(ratios[1:13]) > 0.6         # random half, then the narrow ones
    assert all(r <= 0.8 for r in ratios[13:])
    with pytest.raises(ArchitectureError, match="max_ratio"):
        random_architectures(spec, 1, min_ratio=0.5, max_ratio=0.4)
