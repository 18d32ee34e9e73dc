"""The device farm (latbench.farm): its description is validated like a recipe; `latbench farm status` asks each
device's agent on the node its cable is on (a local Ray instance on 127.0.0.1; a loopback phone over TCP)."""
import json
import socket

import pytest
from typer.testing import CliRunner

from latbench.cli import app
from latbench.farm import FarmError, load_farm

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'latbench[ray]'")


def _write(tmp_path, text, name="farm.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line(result) -> str:
    return " ".join(result.output.split())


def test_a_farm_lists_nodes_and_their_devices(tmp_path):
    farm = load_farm(_write(tmp_path, '''
[[nodes]]
name = "a"
devices = ["usb:R58M12AB", "tcp:192.168.1.20:5555", "host:litert"]
[[nodes]]
name = "b"
devices = ["usb:R58M34CD", "host:litert"]
'''))
    assert farm.ray_address is None
    assert [(d.node, d.spec) for d in farm.devices] == [("a", "usb:R58M12AB"), ("a", "tcp:192.168.1.20:5555"),
                                                        ("a", "host:litert"), ("b", "usb:R58M34CD"),
                                                        ("b", "host:litert")]


@pytest.mark.parametrize("text, expected", [
    ('[[nodes]]\nname = "a"\ndevices = ["bluetooth:1"]\n', "unknown device 'bluetooth:1'"),
    ('[[nodes]]\nname = "a"\ndevices = ["tcp:nohost"]\n', "unknown device 'tcp:nohost'"),
    ('[[nodes]]\nname = "a"\ndevices = ["usb:X"]\n[[nodes]]\nname = "b"\ndevices = ["usb:X"]\n',
     "device usb:X is listed twice (nodes a and b)"),
    ('[[nodes]]\nname = "a"\ndevices = ["host:litert", "host:litert"]\n', "listed twice on node a"),
    ('[[nodes]]\nname = "a"\ndevices = ["usb:X"]\ncables = 3\n', "unknown key 'nodes[0].cables'"),
    ('[[nodes]]\nname = "a"\ndevices = ["usb:X"]\n[[nodes]]\nname = "a"\ndevices = ["usb:Y"]\n', "unique"),
    ('ray_address = "auto"\n', "nodes is required"),
])
def test_a_bad_farm_file_is_named_with_what_is_wrong(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(FarmError) as err:
        load_farm(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    result = CliRunner().invoke(app, ["farm", "status", str(path)])
    assert result.exit_code == 2 and expected in one_line(result) and "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_status_asks_every_device_on_its_node(tmp_path):
    """Two nodes on this machine: host runtimes that answer with their fingerprint, and a phone whose port
    nothing listens on — reported absent with the connection's error, not a crash of the farm."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    path = _write(tmp_path, f'''
[[nodes]]
name = "bench-1"
devices = ["host:litert", "host:onnxruntime"]
[[nodes]]
name = "bench-2"
devices = ["tcp:127.0.0.1:{port}"]
''')
    result = CliRunner().invoke(app, ["farm", "status", str(path), "--json", "--timeout", "120"])
    assert result.exit_code == 0, result.output
    rows = {(r["node"], r["spec"]): r for r in json.loads(result.stdout)}
    assert set(rows) == {("bench-1", "host:litert"), ("bench-1", "host:onnxruntime"),
                         ("bench-2", f"tcp:127.0.0.1:{port}")}
    assert all(r["pinned"] == [r["node"]] for r in rows.values())     # each agent holds its node's resource
    for spec, prefix in (("host:litert", "host-litert-"), ("host:onnxruntime", "host-ort-")):
        row = rows[("bench-1", spec)]
        assert row["fingerprint"].startswith(prefix) and row["last_error"] is None
        assert row["busy"] is False and row["telemetry"]
    phone = rows[("bench-2", f"tcp:127.0.0.1:{port}")]
    assert phone["fingerprint"] is None and phone["last_error"] and phone["host"] is not None
    assert not ray.is_initialized()                      # the local instance was shut down again
