"""timm's independently written CNNs export with torch's legacy exporter into ONNX files that onnx reads and
onnxruntime runs: the real-world inputs latbench's ONNX importer is tested on."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from realworld_models import REALWORLD, realworld_onnx  # noqa: F401  (a fixture)


def _check_export(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (y,) = session.run(["output"], {"input": x})
    assert y.shape == (1, 1000)
    assert np.isfinite(y).all()


def test_realworld_names_are_timm_models(realworld_onnx):
    import timm

    for family, name in REALWORLD.items():
        assert timm.list_models(name) == [name], family
    assert timm.list_models("*shufflenet*") == []      # why REALWORLD has no ShuffleNetV2


def test_mobilenetv3_small_exports_and_runs(realworld_onnx):
    _check_export(realworld_onnx("mobilenet_v3_small"))


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(REALWORLD))
def test_realworld_model_exports_and_runs(realworld_onnx, family):
    _check_export(realworld_onnx(family))
