"""Sparse TFLite convs timed inside XNNPACK's sparse subgraph (``sparse_wrapper_tflite``), minus the subgraph."""
import json
from dataclasses import astuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert.interpreter import Interpreter

from latbench.devices import MeasureSettings, Measurement, open_device
from latbench.export.onnx import random_layer_weights
from latbench.export.tflite import (TFLiteExportError, layer_variant_tflite, needs_sparse_wrapper,
                                    sparse_wrapper_stem, sparse_wrapper_tflite)
from latbench.layers import LayerPoint, LayerSignature
from latbench.profiling import Profiler, difference
from latbench.store import MeasurementStore

from test_tflite import _ops  # noqa: E402  (tests/ is on sys.path under pytest)
from test_xnnpack_sparse import QEMU, _under_qemu, qemu_python  # noqa: F401  (qemu_python is a fixture)

POINTWISE = LayerSignature("pointwise", act="relu")
WRAPPED = [
    (LayerSignature("pointwise", act="relu6"), LayerPoint(8, 12, 0.9, 7)),
    (LayerSignature("pointwise", residual=True), LayerPoint(8, 8, 0.9, 6)),  # residual: the stem's output
    (LayerSignature("conv", act="relu"), LayerPoint(6, 10, 0.5, 5)),          # a 1×1 "conv" is the same op
]


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_content=model)  # default resolver: through XNNPACK
    it.allocate_tensors()
    (d,) = it.get_input_details()
    assert list(d["shape"]) == list(x.shape)
    it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _reference(sig: LayerSignature, point: LayerPoint, x: torch.Tensor, with_layer: bool) -> np.ndarray:
    """mean(layer(relu(stem(x)))) in torch, NCHW, from the exporters' weights."""
    w, b = (torch.from_numpy(a) for a in sparse_wrapper_stem(point.in_channels))
    y = F.relu(F.conv2d(x, w, b, stride=2, padding=1))
    if with_layer:
        w, b = (torch.from_numpy(a) for a in random_layer_weights(sig, point))
        groups = point.in_channels if sig.kind == "depthwise" else 1
        z = F.conv2d(y, w, b, stride=sig.stride, padding=sig.padding, groups=groups)
        z = z + y if sig.residual else z
        y = {"none": z, "relu": F.relu(z), "relu6": F.relu6(z)}[sig.act]
    return y.mean(dim=(2, 3)).numpy()


@pytest.mark.parametrize("sig,point", WRAPPED, ids=[f"{s.key}-{p.sparsity:g}" for s, p in WRAPPED])
def test_wrapper_computes_the_layer_on_the_stem(sig, point):
    wrapped, baseline = sparse_wrapper_tflite(sig, point)
    assert "DENSIFY" in _ops(wrapped) and "DENSIFY" not in _ops(baseline)  # only the layer is stored sparse
    assert _ops(baseline) == ["PAD", "CONV_2D", "MEAN"]
    x = torch.rand(1, 3, 2 * point.input_hw, 2 * point.input_hw, generator=torch.Generator().manual_seed(1))
    x_nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    for model, with_layer, channels in ((wrapped, True, point.out_channels), (baseline, False, point.in_channels)):
        out, ref = _run(model, x_nhwc), _reference(sig, point, x, with_layer)
        assert out.shape == ref.shape == (1, channels)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_which_variants_need_the_wrapper():
    sparse = LayerPoint(16, 16, 0.9, 8)
    for sig in (POINTWISE, LayerSignature("pointwise", residual=True)):
        assert needs_sparse_wrapper(sig, sparse), sig.key
    assert not needs_sparse_wrapper(POINTWISE, LayerPoint(16, 16, 0.0, 8))                   # dense
    assert not needs_sparse_wrapper(LayerSignature("conv", 3, 1, 1), LayerPoint(16, 16, 0.0, 8))
    for sig, point in [(LayerSignature("conv", 3, 1, 1), sparse),                            # 3×3 conv
                       (LayerSignature("pointwise", 1, 2, 0), sparse),                       # k1 s2
                       (LayerSignature("pointwise", 1, 1, 1), sparse),                       # padded 1×1
                       (LayerSignature("depthwise", 3, 1, 1), sparse),                       # depthwise: no sparse kernel
                       (LayerSignature("depthwise", 5, 2, 2), sparse),
                       (LayerSignature("pointwise", residual=True), LayerPoint(16, 32, 0.9, 8)),   # residual ≠ stem
                       (LayerSignature("depthwise", 3, 2, 1, residual=True), sparse)]:
        assert not needs_sparse_wrapper(sig, point), sig.key
        with pytest.raises(TFLiteExportError, match="sparse subgraph"):
            sparse_wrapper_tflite(sig, point)


def test_difference_of_two_measurements():
    wrapped = Measurement("w", 5.0, 4.0, 7.0, 0.3, 50, 5, 2)
    baseline = Measurement("b", 2.0, 1.5, 2.5, 0.4, 48, 5, 1)
    d = difference(wrapped, baseline, "layer")
    assert d == Measurement("layer", 3.0, 1.5, 5.5, pytest.approx(0.5), 48, 5, 3)
    noise = difference(baseline, Measurement("b2", 2.2, 2.1, 3.0, 0.1, 50, 5, 0), "noise")
    assert (noise.median_ms, noise.p10_ms, noise.p90_ms) == (0.0, 0.0, pytest.approx(0.4))


def test_profiler_wraps_sparse_items_only(tmp_path):
    dev = open_device("host:litert", settings=MeasureSettings(warmup=1, rounds=2, runs_per_round=3))
    sent: list[tuple[list[str], list[Measurement]]] = []
    measure = dev.measure

    def spy(artifacts):
        results = measure(artifacts)
        sent.append(([a.key for a in artifacts], results))
        return results

    dev.measure = spy
    sig = POINTWISE.key
    sparse, dense = LayerPoint(32, 32, 0.9, 8), LayerPoint(32, 32, 0.0, 8)
    with MeasurementStore(tmp_path / "m.sqlite") as store:
        profiler = Profiler(dev, store, progress=False)
        assert profiler.measure_points([(sig, sparse), (sig, dense)]) == 2
        rows = {r.point: r.measurement for r in store.rows(profiler.env_id)}
    (keys, results), = sent  # one batch
    assert keys == [f"{sig}|{sparse}|wrapped", f"{sig}|{sparse}|baseline", f"{sig}|{dense}"]
    assert set(rows) == {sparse, dense}
    for m in results:   # each timed model: real, ordered statistics over every timed run (2 rounds × 3)
        assert np.isfinite([m.p10_ms, m.median_ms, m.p90_ms]).all() and 0 < m.p10_ms <= m.median_ms <= m.p90_ms
        assert m.runs + m.outliers == 6 and m.rounds == 2
    layer = rows[sparse]   # a part of the wrapped model's time: inside its band, never above it
    assert 0 <= layer.p10_ms <= layer.median_ms <= layer.p90_ms < results[0].p90_ms
    stats = lambda m: astuple(m)[1:]  # noqa: E731  (the store keys rows by signature alone)
    assert stats(rows[sparse]) == stats(difference(results[0], results[1], "layer"))
    assert stats(rows[dense]) == stats(results[2])


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed: XNNPACK's sparse path only runs under "
                                         "'qemu-x86_64 -cpu Nehalem' on this AVX host")
@pytest.mark.slow
@pytest.mark.qemu
def test_wrapped_sparse_layer_is_faster_than_dense_under_qemu(qemu_python, tmp_path):
    """Under qemu -cpu Nehalem (XNNPACK's sparse kernels on) a 90 %-sparse 128→128 1×1 at 56×56, as
    wrapped minus baseline, costs a fraction of the dense layer (measured ~94 ms against ~520 ms)."""
    paths = [tmp_path / f"{n}.tflite" for n in ("wrapped", "baseline", "dense")]
    models = [*sparse_wrapper_tflite(POINTWISE, LayerPoint(128, 128, 0.9, 56)),
              layer_variant_tflite(POINTWISE, LayerPoint(128, 128, 0.0, 56))]
    for path, model in zip(paths, models):
        path.write_bytes(model)
    script = ("import json, sys; from latbench.testing.sparse_probe import probe; "
              "print(json.dumps([probe(p, 5)['median_ms'] for p in sys.argv[1:]]))")
    done = _under_qemu("-c", script, *map(str, paths * 2))  # twice, interleaved: keep each model's faster pass
    assert done.returncode == 0, done.stderr[-2000:]
    medians = json.loads(done.stdout.strip().splitlines()[-1])
    wrapped, baseline, dense = (min(medians[i], medians[i + 3]) for i in range(3))
    layer = wrapped - baseline
    assert layer < dense / 2, (f"wrapped − baseline = {wrapped:.0f} − {baseline:.0f} = {layer:.0f} ms is not "
                               f"clearly below the dense layer's {dense:.0f} ms: XNNPACK did not take its sparse path")
