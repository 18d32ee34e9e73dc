import zlib

import numpy as np

from latbench.devices.base import MeasureSettings
from latbench.devices.timing import robust_stats
from latbench.models import get_model
from latbench.profiling import Profiler
from latbench.store import MeasurementStore
from latbench.tables.grid import channel_lattice, design_grid, refinement_checks
from latbench.tables.table import table_from_store


class FormulaDevice:
    """Stands in for hardware in grid-logic tests: latency is a known function of the layer variant,
    with a step at 48 input channels that linear interpolation cannot see from a coarse grid."""

    name = "formula"
    model_format = "onnx"

    def __init__(self):
        self.calls = 0

    def fingerprint(self): return "formula"
    def environment(self): return {}
    def backend_settings(self): return {"formula": 1}
    def prepare(self): pass
    def close(self): pass

    def measure(self, artifacts):
        import onnx
        out = []
        for a in artifacts:
            self.calls += 1
            g = onnx.load_from_string(a.model).graph
            shape = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
            w = [i for i in g.initializer if i.name == "w"]
            cin, hw = shape[1], shape[-1]
            cout = w[0].dims[0] if w else cin
            ms = 0.001 * cin * cout * hw / 10 + (2.0 if cin > 48 else 0.0)
            out.append(robust_stats(a.key, np.full(5, ms), 1))
        return out


def test_channel_lattice_follows_jcw_and_respects_multiples():
    assert channel_lattice(64) == (1, 8, 16, 24, 32, 40, 48, 56, 64)
    assert channel_lattice(96, multiple=8) == (8, 16, 24, 32, 48, 64, 72, 80, 96)
    assert channel_lattice(10, multiple=8) == (8, 10)


def test_adaptive_refinement_adds_knots_only_where_interpolation_misses(tmp_path):
    spec = get_model("resnet56")
    dense = design_grid([spec], {"resnet56": (32,)}, sparsities=(0.0,))
    adaptive = design_grid([spec], {"resnet56": (32,)}, adaptive=True, sparsities=(0.0,))
    dev_d, dev_a = FormulaDevice(), FormulaDevice()
    with MeasurementStore(tmp_path / "d.db") as st:
        Profiler(dev_d, st, progress=False).run(dense)
        t_dense, _ = table_from_store(st, 1)
    with MeasurementStore(tmp_path / "a.db") as st:
        report = Profiler(dev_a, st, progress=False).run(adaptive, adaptive=True, threshold=0.02)
        t_adapt, _ = table_from_store(st, 1)
    assert dev_a.calls < dev_d.calls
    assert report.knots_added > 0
    # Where the step is, both tables agree with the truth at the dense knots.
    s = next(x for x in adaptive if x.signature.key == "conv_k3_s1_p1_relu" and x.input_hw == 8)
    assert 56 in s.knots["in_channels"] or 48 in s.knots["in_channels"]
    from latbench.layers import LayerPoint
    for cin in (16, 48, 56, 64):
        p = LayerPoint(cin, 64, 0.0, 8)
        truth = 0.001 * cin * 64 * 8 / 10 + (2.0 if cin > 48 else 0.0)
        assert abs(t_adapt.lookup("conv_k3_s1_p1_relu", p) - truth) <= 0.02 * truth


def test_refinement_checks_sit_between_knots():
    spec = get_model("resnet56")
    s = next(x for x in design_grid([spec], {"resnet56": (32,)}, adaptive=True) if x.axes)
    for axis, value, point in refinement_checks(s):
        knots = s.knots[axis]
        assert knots[0] < value < knots[-1] and value not in knots


def test_robust_stats_ignore_spikes_but_count_them():
    samples = np.r_[np.full(48, 1.0) + np.linspace(0, 0.02, 48), 1.4, 5.0]
    m = robust_stats("k", samples, 5)
    assert m.outliers == 2 and abs(m.median_ms - 1.01) < 0.01 and m.p90_ms < 1.03


def test_side_by_side_reference_cancels_a_machine_that_changes_speed():
    from latbench.devices.timing import measure_interleaved

    rng = np.random.default_rng(0)
    speed = {"factor": 1.0}
    true_ms = [0.5, 2.0, 7.0]

    def slow_down_sometimes():
        # Every call the machine may switch between a fast and a 40 % slower state.
        if rng.random() < 0.3:
            speed["factor"] = float(rng.choice([1.0, 1.4]))

    def run(item, runs):
        out = []
        for _ in range(runs):
            slow_down_sometimes()
            out.append(true_ms[item] * speed["factor"])
        return np.array(out)

    def reference(runs):
        return np.array([1.0 * speed["factor"] for _ in range(runs)])

    settings = MeasureSettings(warmup=1, rounds=8, runs_per_round=10)
    stats, _ = measure_interleaved(["a", "b", "c"], settings, run, reference, nominal_ms=1.0)
    for m, t in zip(stats, true_ms):
        assert abs(m.median_ms - t) <= 0.02 * t
    # Without the reference, the spread shows the two speeds.
    raw, _ = measure_interleaved(["a", "b", "c"], settings, run)
    assert all(m.p90_ms / m.p10_ms > 1.3 for m in raw)


class SparseFormulaDevice(FormulaDevice):
    """Latency ∝ kept weights for 1×1 convs (a sparse kernel) and independent of sparsity for the others,
    times ±10 % noise drawn per variant: the sparsity test must tell the two apart."""

    def measure(self, artifacts):
        import onnx
        from onnx import numpy_helper
        out = []
        for a in artifacts:
            g = onnx.load_from_string(a.model).graph
            weights = [numpy_helper.to_array(i) for i in g.initializer if len(i.dims) == 4]
            cin = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim][1]
            w = weights[0] if weights else np.ones((cin, cin, 1, 1))
            density = float(np.count_nonzero(w)) / w.size
            ms = 0.001 * w.size * (density if w.shape[-1] == 1 else 1.0)
            noise = np.random.default_rng(zlib.crc32(a.key.encode())).lognormal(0, 0.1)
            out.append(robust_stats(a.key, np.full(5, ms * noise), 1))
        return out


def test_built_tables_credit_sparsity_only_where_the_device_shows_it(tmp_path):
    spec = get_model("resnet56")
    grid = design_grid([spec], {"resnet56": (32,)}, channel_points=4, sparsities=(0.0, 0.5, 0.9))
    with MeasurementStore(tmp_path / "s.db") as st:
        Profiler(SparseFormulaDevice(), st, progress=False).run(grid)
        table, frame = table_from_store(st, 1)
        raw, _ = table_from_store(st, 1, sparsity_credit=False)
    levels = table.meta["sparsity_axis"]["levels"]
    assert levels["pointwise_k1_s2_p0_none"]["0.9"]["credited"] and levels["pointwise_k1_s2_p0_none"]["0.5"]["credited"]
    assert not any(r["credited"] for r in levels["conv_k3_s1_p1_relu"].values())
    assert "sparsity_axis" not in raw.meta
    from latbench.layers import LayerPoint
    dense, sparse = LayerPoint(16, 16, 0.0, 32), LayerPoint(16, 16, 0.9, 32)
    assert table.lookup("conv_k3_s1_p1_relu", sparse) == table.lookup("conv_k3_s1_p1_relu", dense)
    assert raw.lookup("conv_k3_s1_p1_relu", sparse) != raw.lookup("conv_k3_s1_p1_relu", dense)   # noise, removed
    p_dense, p_sparse = LayerPoint(16, 32, 0.0, 32), LayerPoint(16, 32, 0.9, 32)
    assert table.lookup("pointwise_k1_s2_p0_none", p_sparse) < 0.3 * table.lookup("pointwise_k1_s2_p0_none", p_dense)
