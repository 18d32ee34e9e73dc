
import numpy as np
import pandas as pd
import pytest

from latbench.layers import LayerPoint, LayerSignature
from latbench.tables.table import _COLUMNS, LatencyTable, OutOfGridError, TableError

SIG = LayerSignature("pointwise", 1, 1, 0, "relu")


def _frame(fn, hws=(14, 28), cins=(8, 16, 32), couts=(8, 24, 64), sps=(0.0, 0.5, 0.9)):
    rows = []
    for hw in hws:
        for ci in cins:
            for co in couts:
                for s in sps:
                    rows.append((SIG.key, hw, ci, co, s, fn(ci, co, s, hw), 0, 0, 0.01, 50))
    return pd.DataFrame.from_records(rows, columns=_COLUMNS)


def multilinear(ci, co, s, hw):
    return 0.1 + 0.01 * ci + 0.02 * co + 0.003 * ci * co - 0.5 * s + 0.001 * ci * s + 0.01 * hw


def test_n_linear_interpolation_reproduces_a_multilinear_function_exactly():
    table = LatencyTable.from_frame(_frame(multilinear), {"fingerprint": "x"})
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = LayerPoint(int(rng.integers(8, 33)), int(rng.integers(8, 65)), float(rng.uniform(0, 0.9)),
                       int(rng.integers(14, 29)))
        assert table.lookup(SIG.key, p) == pytest.approx(multilinear(*p.axis_values(
            ("in_channels", "out_channels", "sparsity", "input_hw"))), rel=1e-9)


def test_queries_outside_the_grid_fail_naming_layer_axis_and_range_unless_clamped():
    table = LatencyTable.from_frame(_frame(multilinear), {"fingerprint": "x"})
    with pytest.raises(OutOfGridError, match=r"layer 'blk.conv'.*out_channels=65.*\[8, 64\]"):
        table.lookup(SIG.key, LayerPoint(16, 65, 0.0, 14), layer="blk.conv")
    with pytest.raises(OutOfGridError, match="input_hw=7"):
        table.lookup(SIG.key, LayerPoint(16, 16, 0.0, 7))
    clamped = table.lookup(SIG.key, LayerPoint(16, 65, 0.0, 14), clamp=True)
    assert clamped == pytest.approx(multilinear(16, 64, 0.0, 14))


def test_off_grid_check_points_are_left_out_of_the_rectilinear_grid():
    frame = _frame(multilinear)
    extra = frame.iloc[[0]].assign(in_channels=12, latency_ms=99.0)   # a refinement check not adopted
    table = LatencyTable.from_frame(pd.concat([frame, extra]), {"fingerprint": "x"})
    s = table.slices[(SIG.key, 14)]
    assert list(s.knots[0]) == [8, 16, 32]
    assert table.lookup(SIG.key, LayerPoint(12, 8, 0.0, 14)) == pytest.approx(multilinear(12, 8, 0.0, 14))


def test_tables_round_trip_through_parquet_with_provenance(tmp_path):
    meta = {"fingerprint": "host-ort-abc", "device": "host:onnxruntime", "backend": {"threads": 1}}
    table = LatencyTable.from_frame(_frame(multilinear), meta)
    path = table.save(tmp_path / "t.parquet")
    back = LatencyTable.load(path)
    assert back.meta["fingerprint"] == "host-ort-abc" and back.meta["format"] == "latbench-table/1"
    p = LayerPoint(20, 40, 0.3, 20)
    assert back.lookup(SIG.key, p) == pytest.approx(table.lookup(SIG.key, p))


def test_corrupt_truncated_or_foreign_table_files_get_a_clear_error(tmp_path):
    table = LatencyTable.from_frame(_frame(multilinear), {"fingerprint": "x"})
    path = table.save(tmp_path / "t.parquet")
    data = path.read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match="corrupt or truncated"):
        LatencyTable.load(tmp_path / "trunc.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"\x80\x04not a table")
    with pytest.raises(TableError, match="corrupt or truncated"):
        LatencyTable.load(tmp_path / "junk.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(TableError, match="not a latbench table"):
        LatencyTable.load(tmp_path / "other.parquet")
    with pytest.raises(TableError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.parquet")


def test_a_table_from_another_device_is_refused():
    table = LatencyTable.from_frame(_frame(multilinear), {"fingerprint": "phone-1", "device": "tcp:phone"})
    with pytest.raises(TableError, match="measured on tcp:phone"):
        table.check_device("host-ort-123", "host:onnxruntime")
    table.check_device("phone-1")


def test_signature_keys_round_trip():
    for sig in [SIG, LayerSignature("conv", 7, 2, 3, "relu", fixed_in=3), LayerSignature("linear", fixed_out=1000),
                LayerSignature("conv", 3, 1, 1, "relu6", residual=True)]:
        assert LayerSignature.from_key(sig.key) == sig
    with pytest.raises(ValueError, match="not a layer signature"):
        LayerSignature.from_key("conv_kx")
