"""Device specs ``KIND:ADDRESS[?key=value&…]``: one parser for host runtimes, phones, farms and simulated phones."""
import pytest

from latbench.devices import DeviceError, DeviceSpec, base_device, open_device
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
