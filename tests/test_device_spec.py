"""Device specs ``KIND:ADDRESS[?key=value&…]``: one parser for host runtimes, phones, farms and simulated phones."""
import pytest
from onnx import numpy_helper

from latbench.devices import DeviceError, DeviceSpec, MeasureSettings, base_device, open_device
from latbench.devices.android import AndroidOptions
from latbench.farm.spec import FarmError


def test_a_spec_splits_into_its_device_and_options():
    spec = DeviceSpec.parse("tcp:10.0.0.2:5555?runtime=onnxruntime&cores=f0&cores=0f")
    assert (spec.kind, spec.base) == ("tcp", "tcp:10.0.0.2:5555")
    assert spec.options == {"runtime": "onnxruntime", "cores": "0f"}       # the last value of a repeated key wins
    assert spec.unknown({"runtime"}) == ["cores"]
    assert DeviceSpec.parse("usb?runtime=tflite").kind == "usb"
    assert DeviceSpec.parse("host:litert").options == {}
    assert base_device("host:onnxruntime?warm=1") == "host:onnxruntime" == base_device("host:onnxruntime")


@pytest.mark.parametrize("spec", ["host:onnxruntime?warm", "farm:f.yaml?group", "sim:a?run_ms", "tcp:1.2.3.4:5555?x"])
def test_every_kind_refuses_options_that_are_not_key_value_pairs_alike(spec):
    with pytest.raises(DeviceError, match="options must read \\?key=value&key=value"):
        open_device(spec)


def test_each_kind_names_the_options_it_does_not_know(tmp_path):
    with pytest.raises(DeviceError, match="unknown option 'threads'"):
        open_device("host:onnxruntime?threads=2")
    with pytest.raises(DeviceError, match="unknown phone option 'colour'"):
        AndroidOptions.from_query("colour=red")
    with pytest.raises(FarmError, match="unknown farm device option 'colour'"):
        open_device(f"farm:{tmp_path / 'farm.yaml'}?colour=red")
    # Options given by the caller win over the spec's (the command line over a stored spec).
    assert AndroidOptions.from_query("runtime=tflite", runtime="onnxruntime").runtime == "onnxruntime"


def test_a_host_device_times_beside_the_small_or_the_large_reference():
    small, large = open_device("host:onnxruntime"), open_device("host:onnxruntime?reference=large&warm=1")
    assert large.name == "host:onnxruntime?warm=1&reference=large" and large.settings.reference_net == "large"
    assert small.backend_settings()["reference"] == "mobilenet_v2-w0.5-r128"        # what every store so far holds
    assert large.backend_settings()["reference"] == "mobilenet_v2-w1-r224"
    assert large.fingerprint() != small.fingerprint()
    assert "reference_net" not in small.environment()["protocol"]                  # old environments unchanged
    assert large.environment()["protocol"]["reference_net"] == "large"
    assert open_device(large.name).fingerprint() == large.fingerprint()            # its name opens it again
    small.close(), large.close()
    with pytest.raises(DeviceError, match="reference must be small or large, got 'huge'"):
        open_device("host:litert?reference=huge")
    with pytest.raises(ValueError, match="reference network 'huge' unknown"):
        MeasureSettings(reference_net="huge")


def test_the_large_reference_is_mobilenet_v2_at_full_width_on_224_pixels():
    import onnx

    from latbench.devices.reference import reference_model

    small, large = (onnx.load_from_string(reference_model("onnx", size)) for size in ("small", "large"))
    shape = lambda m: [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]  # noqa: E731
    assert shape(small) == [1, 3, 128, 128] and shape(large) == [1, 3, 224, 224]
    width = lambda m: max(numpy_helper.to_array(t).shape[0] for t in m.graph.initializer if t.dims and  # noqa: E731
                          len(t.dims) == 4)
    assert width(large) == 1280 and width(small) == 640


def test_a_phone_takes_the_same_references():
    from latbench.devices.android.connection import AdbTarget
    from latbench.devices.android.device import AndroidDevice

    target = AdbTarget.parse("tcp:127.0.0.1:5555")          # not connected: only the settings are read
    for option, (timed, size) in {"on": (True, "small"), "small": (True, "small"), "large": (True, "large"),
                                  "off": (False, "small")}.items():
        phone = AndroidDevice(target, options=AndroidOptions.from_query(f"reference={option}"))
        assert (phone.settings.reference, phone.settings.reference_net) == (timed, size)
    with pytest.raises(DeviceError, match="choose on \\(= small\\), large or off"):
        AndroidOptions.from_query("reference=huge")
