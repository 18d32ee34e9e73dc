"""The sparsity-credit test: real speed-ups stay, noise is flattened to the dense latency."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.tables import LatencyTable
from latbench.tables.sparsity import credit_significant_sparsity, summarize

ROOT = Path(__file__).resolve().parents[1]


def _frame(rng, signature, speedup, noise, channels=(8, 16, 24, 32), levels=(0.5, 0.9)):
    rows = []
    for cin in channels:
        for cout in channels:
            dense = 0.01 * cin * cout
            rows.append((signature, 8, cin, cout, 0.0, dense))
            for s in levels:
                factor = (1 - speedup * s) * np.exp(rng.normal(0, noise))
                rows.append((signature, 8, cin, cout, s, dense * factor))
    return pd.DataFrame(rows, columns=["signature", "input_hw", "in_channels", "out_channels", "sparsity", "latency_ms"])


def test_real_speedups_are_kept_and_noise_is_flattened():
    rng = np.random.default_rng(0)
    frame = pd.concat([_frame(rng, "fast_sparse", speedup=0.6, noise=0.05),
                       _frame(rng, "flat", speedup=0.0, noise=0.10)], ignore_index=True)
    out, report = credit_significant_sparsity(frame)
    assert report["fast_sparse"]["0.9"]["credited"] and report["fast_sparse"]["0.5"]["credited"]
    assert not report["flat"]["0.5"]["credited"] and not report["flat"]["0.9"]["credited"]
    # Credited levels keep their measurements; flattened ones take the dense twin's latency.
    sparse_fast = (out.signature == "fast_sparse") & (out.sparsity > 0)
    assert np.array_equal(out.latency_ms[sparse_fast], frame.latency_ms[sparse_fast])
    flat = out[out.signature == "flat"].pivot_table(index=["in_channels", "out_channels"], columns="sparsity",
                                                    values="latency_ms")
    assert np.allclose(flat[0.5], flat[0.0]) and np.allclose(flat[0.9], flat[0.0])
    assert not np.allclose(frame[frame.signature == "flat"].latency_ms, out[out.signature == "flat"].latency_ms)
    assert "fast_sparse@0.9" in summarize(report)


def test_a_few_points_are_not_evidence_and_zero_latency_counts_as_a_speedup():
    rng = np.random.default_rng(1)
    few = _frame(rng, "few", speedup=0.6, noise=0.01, channels=(8,))        # 1 paired point per level
    empty = _frame(rng, "empty", speedup=0.0, noise=0.0, levels=(1.0,))
    empty.loc[empty.sparsity == 1.0, "latency_ms"] = 0.0                     # a fully pruned layer costs nothing
    _, report = credit_significant_sparsity(pd.concat([few, empty], ignore_index=True))
    assert not report["few"]["0.9"]["credited"] and report["few"]["0.9"]["p_value"] is None
    assert report["empty"]["1"]["credited"] and report["empty"]["1"]["median_ratio"] < 1e-6
    with pytest.raises(ValueError, match="min_speedup"):
        credit_significant_sparsity(few, min_speedup=1.5)


def test_shipped_host_tables_record_the_decision(tmp_path):
    table = LatencyTable.load(ROOT / "tables" / "host-litert-resnet56-32-dense.parquet")
    levels = table.meta["sparsity_axis"]["levels"]
    assert levels and not any(r["credited"] for lv in levels.values() for r in lv.values())
    # On the flat host table a 90 %-sparse layer predicts exactly its dense latency.
    s = table.slices[("conv_k3_s1_p1_relu", 8)]
    axis = s.axes.index("sparsity")
    values = np.moveaxis(s.values, axis, 0)
    assert np.array_equal(values[0], values[-1])
    result = CliRunner().invoke(app, ["table", "sparsity", str(ROOT / "tables" / "host-litert-resnet56-32-dense.parquet"),
                                      "-o", str(tmp_path / "t.parquet")])
    assert result.exit_code == 0, result.output
    assert "sparsity axis flat" in result.output and (tmp_path / "t.parquet").exists()

