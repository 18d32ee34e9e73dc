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


def _json_documents(text: str) -> list:
    """The JSON objects printed one after another (pretty-printed, with other lines between)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (start := text.find("{", i)) >= 0:
        obj, i = decoder.raw_decode(text, start)
        out.append(obj)
    return out


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


# ---------------------------------------------------------------- work distribution and faults

@pytest.fixture
def local_ray():
    """A local Ray instance on loopback for the test, shut down after it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, configure_logging=False,
             resources={"latbench-node:a": 1000.0, "latbench-node:b": 1000.0})
    yield ray
    ray.shutdown()


def _worker_class():
    """A stand-in agent: doubles numbers after ``delay`` seconds; fails while ``failing``. (Defined in a
    function so that Ray ships the class by value: the test module is not importable in its workers.)"""

    class Worker:
        def __init__(self, delay: float = 0.0, failing: bool = False, started: str | None = None) -> None:
            self.delay, self.failing, self.calls, self.started = delay, failing, 0, started

        def work(self, items: list) -> list:
            import pathlib
            import time

            self.calls += 1
            if self.started:                              # tells the test this worker is inside a batch now
                pathlib.Path(self.started).touch()
            time.sleep(self.delay)
            if self.failing:
                raise RuntimeError("the phone was unplugged")
            return [2 * x for x in items]

    return Worker


@pytest.mark.slow     # a Ray instance starts: seconds, not the fast tier
def test_every_batch_is_done_once_despite_a_failing_unit_and_a_killed_one(local_ray, tmp_path):
    import threading
    import time

    from latbench.farm.work import Batch, FaultKind, run_batches

    ray = local_ray
    remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(_worker_class())
    # The unit to kill takes 3 s a batch and is killed as soon as it has started one, so the kill always hits a
    # batch in flight however slowly its process starts (killed before it starts, Ray would simply run the batch
    # on the restarted process: no fault to see).
    started = tmp_path / "killed-started"
    agents = {"good": remote.remote(0.05), "broken": remote.remote(0.0, True),
              "killed": remote.remote(3.0, False, str(started)), "other-model": remote.remote(0.01)}
    group_of = {"good": "X", "broken": "X", "killed": "X", "other-model": "Y"}
    batches = [Batch("X", (i, i + 100)) for i in range(30)] + [Batch("Y", (i,)) for i in range(5)]
    results: dict[int, list] = {}

    def keep(index, batch, result):
        assert index not in results                   # handed over once
        results[index] = result

    def kill_when_started():
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        ray.kill(agents["killed"], no_restart=False)  # mid-batch: its batch goes back to the queue

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    report = run_batches(ray, agents, group_of, batches, "work", keep, max_failures=3, poll_s=0.1)
    killer.join(timeout=5)
    assert results == {i: [2 * x for x in b.items] for i, b in enumerate(batches)}
    assert "broken" in report.quarantined and "unplugged" in report.quarantined["broken"]
    kinds = [(f.agent, f.kind) for f in report.faults]
    assert kinds.count(("broken", FaultKind.DEVICE_ERROR)) == 3 and ("broken", FaultKind.QUARANTINED) in kinds
    assert ("killed", FaultKind.AGENT_DIED) in kinds                      # its batch went to another unit …
    assert report.requeued == sum(k in (FaultKind.DEVICE_ERROR, FaultKind.AGENT_DIED) for _, k in kinds)
    assert report.done_by["other-model"] == 5                              # … of its own group only
    assert sum(report.done_by.values()) == len(batches)


@pytest.mark.slow     # a Ray instance starts: seconds, not the fast tier
def test_a_group_without_working_units_stops_with_their_errors(local_ray):
    from latbench.farm.work import Batch, run_batches

    remote = local_ray.remote(num_cpus=0, max_task_retries=0)(_worker_class())
    agents = {"only": remote.remote(0.0, True)}
    with pytest.raises(FarmError, match="no working device is left for group X: only: .*the phone was unplugged.*"
                                        "run the same command again"):
        run_batches(local_ray, agents, {"only": "X"}, [Batch("X", (1,))], "work", lambda *a: None, poll_s=0.1)


def test_unit_outliers_are_flagged_and_kept_out_unless_mixed():
    from latbench.farm.groups import DeviceGroup, judge_units, unit_ratios

    ratios = unit_ratios({"u1": [1.0, 2.0, 4.0], "u2": [1.02, 1.98, 4.1], "u3": [1.3, 2.7, 5.1]})
    assert ratios["u1"] == pytest.approx(1.0, abs=0.03) and ratios["u3"] > 1.25
    group = DeviceGroup("fp", ["u1", "u2", "u3"], {})
    judge_units(group, ratios, threshold=0.10, mix_units=False)
    assert group.working == ["u1", "u2"] and "outlier unit" in group.excluded["u3"]
    assert group.units["u3"]["outlier"] and not group.units["u1"]["outlier"]
    mixed = DeviceGroup("fp", ["u1", "u2", "u3"], {})
    judge_units(mixed, ratios, threshold=0.10, mix_units=True)
    assert mixed.working == ["u1", "u2", "u3"] and mixed.units["u3"]["outlier"]
    two = DeviceGroup("fp", ["u1", "u3"], {})
    with pytest.raises(FarmError, match="apart.*--mix-units"):
        judge_units(two, unit_ratios({"u1": [1.0, 2.0], "u3": [1.3, 2.6]}), threshold=0.10, mix_units=False)


@pytest.mark.slow     # a Ray instance starts: seconds, not the fast tier
def test_simulated_phones_share_the_work_of_one_group_and_record_their_units(tmp_path, local_ray):
    """A farm group of three simulated phones as one device: artifacts come back in order, spread over the
    units; the units and their ratios are in the store's environment (a table's provenance)."""
    from latbench.devices import open_device
    from latbench.devices.base import Artifact
    from latbench.profiling import environment_of
    from latbench.store import MeasurementStore

    path = _write(tmp_path, '''
[[nodes]]
name = "a"
devices = ["sim:p1?run_ms=0.5&model=X", "sim:p2?run_ms=0.5&model=X"]
[[nodes]]
name = "b"
devices = ["sim:p3?run_ms=0.5&model=X"]
''')
    dev = open_device(f"farm:{path}?batch=2")
    try:
        assert dev.fingerprint().startswith("sim-") and len(dev.group.agents) == 3
        artifacts = [Artifact(f"net{i}", b"x", format="tflite") for i in range(12)]
        out = dev.measure(artifacts)
        assert [m.key for m in out] == [a.key for a in artifacts]
        summary = dev.work_summary()
        assert sum(summary["batches_by_unit"].values()) == 6 and min(summary["batches_by_unit"].values()) >= 1
        with MeasurementStore(tmp_path / "s.db") as store:
            env = store.environment(environment_of(dev, store))["environment"]
        assert set(env["units"]) == {"a/sim:p1?run_ms=0.5&model=X", "a/sim:p2?run_ms=0.5&model=X",
                                     "b/sim:p3?run_ms=0.5&model=X"}
        assert all(u["ratio"] == pytest.approx(1.0) for u in env["units"].values())
    finally:
        dev.close()


# ---------------------------------------------------------------- a two-node cluster with loopback phones

@pytest.mark.slow
@pytest.mark.phone
def test_a_two_node_farm_profiles_each_group_once_through_a_lost_phone_and_a_killed_agent(tmp_path, monkeypatch):
    """`ray.cluster_utils.Cluster` with two nodes on 127.0.0.1; node a: phone X1 and host:litert, node b: phone X2
    (the same model as X1) and phone Y1 (another model). `latbench profile --farm` makes one table per group.
    Mid-profile X2's adbd stops (its batch goes to X1) and X1's agent is killed (Ray restarts it, its batch is
    re-queued); both faults are in the report. Every grid point is stored once per group, with the keys a
    single-device run plans."""
    import threading
    import time
    import time

    import ray
    from ray.cluster_utils import Cluster

    from latbench.devices.android.connection import load_or_create_key
    from latbench.distributed import ray_session
    from latbench.models import get_model
    from latbench.store import MeasurementStore
    from latbench.tables.grid import design_grid
    from latbench.tables.table import LatencyTable

    adbd = pytest.importorskip("latbench.testing.adbd")
    phone_tools = pytest.importorskip("latbench.testing.phone_tools")
    key = tmp_path / "adbkey" / "adbkey"
    monkeypatch.setenv("LATBENCH_ADB_KEY", str(key))       # the agents' processes inherit it from the nodes
    load_or_create_key(key)
    if ray.is_initialized():
        ray.shutdown()
    phones = {}
    for name, model in (("X1", "Pixel X"), ("X2", "Pixel X"), ("Y1", "Galaxy Y")):
        profile = adbd.PhoneProfile(model=model, serialno=f"LOOP{name}")
        try:
            phones[name] = adbd.LoopbackPhone(profile, authorized_keys=[f"{key}.pub"]).start()
        except adbd.SandboxError as err:
            pytest.skip(f"the loopback phone cannot start here: {err}")
    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1,
                                                            "resources": {"latbench-node:a": 1000.0}})
    try:
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={"latbench-node:b": 1000.0})
        tool = phone_tools.write_tool("benchmark_model", tmp_path / "tools")
        for p in phones.values():
            res = CliRunner().invoke(app, ["android", "setup", "--device", f"tcp:{p.serial}", "--benchmark-model",
                                           str(tool)])
            assert res.exit_code == 0, res.output
        spec = {n: f"tcp:{p.serial}?reconnects=1" for n, p in phones.items()}
        farm = _write(tmp_path, f'''
ray_address = "{cluster.address}"
[[nodes]]
name = "a"
devices = ["{spec['X1']}", "host:litert"]
[[nodes]]
name = "b"
devices = ["{spec['X2']}", "{spec['Y1']}"]
''')
        store_path = tmp_path / "farm.db"

        def planned(channel_multiple: int) -> set:
            """The grid a single-device run plans (the phones use every width, LiteRT its channel block)."""
            plan = design_grid([get_model("resnet20")], {"resnet20": (32,)}, adaptive=False, channel_points=1,
                               sparsities=(0.0,), channel_multiple=channel_multiple)
            return {(s.signature.key, p) for s in plan for p in s.points()}

        from latbench.devices import open_device
        from latbench.devices.android.device import AndroidDevice

        litert_multiple = open_device("host:litert").channel_multiple

        def faults():
            """Once group X has stored some points: stop X2's adbd and kill X1's agent."""
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if not store_path.exists():
                    continue
                with MeasurementStore(store_path) as st:
                    started = [n for env_id, _, n in st.environments()
                               if st.environment(env_id)["environment"].get("phone") == "Pixel X"]
                if started and started[0] >= 3:
                    break
            phones["X2"].stop()
            for name in ray.util.list_named_actors(all_namespaces=True):
                actor_name = name["name"] if isinstance(name, dict) else name
                if actor_name.startswith(f"latbench-agent/a/{spec['X1']}/"):
                    namespace = name.get("namespace") if isinstance(name, dict) else None
                    ray.kill(ray.get_actor(actor_name, namespace=namespace), no_restart=False)

        injector = threading.Thread(target=faults, daemon=True)
        with ray_session(cluster.address):          # joined as the farm file says; the command reuses it
            injector.start()
            result = CliRunner().invoke(app, [
                "profile", "resnet20", "--farm", str(farm), "--store", str(store_path), "--resolution", "32",
                "--dense", "--channel-points", "1", "--sparsity", "0", "--rounds", "1", "--runs", "2", "--warmup", "1",
                "--table", str(tmp_path / "t-{group}.parquet"), "--calibrate", "2", "--mix-units", "--no-progress"])
            injector.join(timeout=60)
        assert result.exit_code == 0, result.output
        with MeasurementStore(store_path) as st:
            envs = {fp: env_id for env_id, fp, _ in st.environments()}
            assert len(envs) == 3                                   # two phone models and the host
            for fp, env_id in envs.items():
                rows = [r for r in st.rows(env_id) if not r.signature.startswith("net:")]
                keys = [(r.signature, r.point) for r in rows]
                want = planned(litert_multiple if fp.startswith("host-") else AndroidDevice.channel_multiple)
                assert len(keys) == len(set(keys)) and set(keys) == want, fp
        tables = sorted(tmp_path.glob("t-*.parquet"))
        assert len(tables) == 3
        x = next(LatencyTable.load(t) for t in tables if LatencyTable.load(t).meta["environment"].get("units")
                 and len(LatencyTable.load(t).meta["environment"]["units"]) == 2)
        assert {u.split("/")[0] for u in x.meta["environment"]["units"]} == {"a", "b"}   # provenance: both units
        reports = _json_documents(result.stdout)
        faults = [f for r in reports for f in r["farm"]["faults"]]
        kinds = {(f["agent"], f["kind"]) for f in faults}
        assert (f"a/{spec['X1']}", "agent died") in kinds, faults         # re-queued, then Ray restarted it
        assert (f"b/{spec['X2']}", "device error") in kinds, faults       # its adbd gone: the sibling took over
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        for p in phones.values():
            p.stop()


@pytest.mark.slow     # a Ray instance starts: seconds, not the fast tier
def test_bad_farm_input_is_one_clear_line(tmp_path):
    """A Ray address that does not answer; two device groups that would write one table; --farm with --device
    on a pruning job."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    dead = _write(tmp_path, 'ray_address = "127.0.0.1:1"\n[[nodes]]\nname = "a"\ndevices = ["host:litert"]\n',
                  "dead.toml")
    for args in (["farm", "status", str(dead)], ["profile", "resnet20", "--farm", str(dead)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Ray cluster at 127.0.0.1:1 is unreachable" in one_line(result), args
        assert "Traceback" not in result.output
    two = _write(tmp_path, '[[nodes]]\nname = "a"\ndevices = ["sim:p1?model=X", "sim:p2?model=Y"]\n', "two.toml")
    result = CliRunner().invoke(app, ["profile", "resnet20", "--farm", str(two), "--table", str(tmp_path / "t.parquet"),
                                      "--no-progress"])
    assert result.exit_code == 2 and "2 device groups" in one_line(result) and "{group}" in one_line(result)
    assert not (tmp_path / "t.parquet").exists() and not ray.is_initialized()
    result = CliRunner().invoke(app, ["prune", "lcp", "--checkpoint", "x.safetensors", "--out", str(tmp_path / "o"),
                                      "--budget-ms", "1", "--farm", str(two), "--device", "host:litert"])
    assert result.exit_code == 2 and "give --farm or --device, not both" in one_line(result)


@pytest.mark.slow
def test_a_lost_node_marks_its_units_gone_and_the_work_goes_on():
    """Two nodes on 127.0.0.1; the worker node is removed while its unit holds a batch: after the timeout the
    unit is reported gone ("node lost"), its batch is re-queued and every batch is done once."""
    import ray
    from ray.cluster_utils import Cluster

    from latbench.distributed import ray_session
    from latbench.farm.work import Batch, FaultKind, run_batches

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1,
                                                            "resources": {"latbench-node:a": 1000.0}})
    try:
        node_b = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={"latbench-node:b": 1000.0})
        with ray_session(cluster.address) as ray_:
            worker = _worker_class()
            agents = {node: ray_.remote(num_cpus=0, max_restarts=-1, max_task_retries=0,
                                        resources={f"latbench-node:{node}": 0.001})(worker).remote(delay)
                      for node, delay in (("a", 0.05), ("b", 2.0))}
            names = {"a/phone": agents["a"], "b/phone": agents["b"]}
            ray_.get([a.work.remote([0]) for a in agents.values()])          # both started on their nodes
            results = {}

            def keep(index, batch, result):
                results[index] = result
                if len(results) == 3:
                    cluster.remove_node(node_b)                              # b is mid-batch (2 s per batch)

            def alive(agent: str) -> bool:
                resource = f"latbench-node:{agent.split('/')[0]}"
                return any(n["Alive"] and resource in n["Resources"] for n in ray_.nodes())

            batches = [Batch("X", (i,)) for i in range(12)]
            report = run_batches(ray_, names, {"a/phone": "X", "b/phone": "X"}, batches, "work", keep,
                                 timeout_s=8.0, node_alive=alive, poll_s=0.2)
        assert results == {i: [2 * i] for i in range(12)}
        lost = [f for f in report.faults if f.agent == "b/phone"]
        assert lost and {f.kind for f in lost} <= {FaultKind.NODE_LOST, FaultKind.AGENT_DIED, FaultKind.QUARANTINED}
        assert report.requeued >= 1 and sum(report.done_by.values()) == 12       # its batch went to node a
        if report.done_by["b/phone"] == 0 and len(lost) > 1:                     # tried again: out of the work
            assert "b/phone" in report.gone or "b/phone" in report.quarantined, report.faults
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


class _FakeRay:
    """Just enough of Ray for run_batches: each call's outcome is scripted per agent (a value, or an exception
    raised by ``get``), every call is ready at once."""

    class exceptions:
        class RayActorError(Exception):
            pass

        class ActorUnavailableError(Exception):
            pass

        class RayTaskError(Exception):
            pass

    def __init__(self, script):
        self.script, self.calls = script, []

    def agent(self, name):
        ray = self

        class Method:
            def remote(self, items):
                ray.calls.append(name)
                outcome = ray.script[name].pop(0) if ray.script[name] else "ok"
                return (name, tuple(items), outcome)

        return type("Agent", (), {"work": Method()})()

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        name, items, outcome = ref
        if isinstance(outcome, Exception):
            raise outcome
        return [2 * x for x in items]


def test_an_agent_ray_is_restarting_waits_and_is_not_quarantined_while_its_sibling_is_down():
    """Seen under load: the killed agent answered 'restarting' three times in a row while its sibling's phone was
    off, and both were quarantined. Restarting is not a failure: the agent waits (back-off) and comes back."""
    from latbench.farm.work import Batch, FaultKind, run_batches

    exc = _FakeRay.exceptions
    restarting = [exc.ActorUnavailableError("The actor is restarting") for _ in range(5)]
    down = [exc.RayTaskError("nothing accepts ADB connections") for _ in range(10)]
    ray = _FakeRay({"X1": list(restarting), "X2": list(down)})
    agents = {"X1": ray.agent("X1"), "X2": ray.agent("X2")}
    batches = [Batch("X", (i,)) for i in range(4)]
    results = {}
    report = run_batches(ray, agents, {"X1": "X", "X2": "X"}, batches, "work",
                         lambda i, b, r: results.__setitem__(i, r), max_failures=3, poll_s=0.01, backoff_s=0.001)
    assert results == {i: [2 * i] for i in range(4)}
    assert list(report.quarantined) == ["X2"] and report.done_by["X1"] == 4
    kinds = [(f.agent, f.kind) for f in report.faults]
    assert kinds.count(("X1", FaultKind.AGENT_DIED)) == 5 and ("X1", FaultKind.QUARANTINED) not in kinds
    assert report.requeued == sum(k in (FaultKind.DEVICE_ERROR, FaultKind.AGENT_DIED) for _, k in kinds)


def test_an_agent_unavailable_for_longer_than_the_timeout_is_given_up():
    from latbench.farm.work import Batch, run_batches

    exc = _FakeRay.exceptions
    ray = _FakeRay({"X1": [exc.ActorUnavailableError("restarting") for _ in range(10_000)]})
    with pytest.raises(FarmError, match="no working device is left for group X"):
        run_batches(ray, {"X1": ray.agent("X1")}, {"X1": "X"}, [Batch("X", (1,))], "work", lambda *a: None,
                    poll_s=0.01, backoff_s=0.001, timeout_s=0.05)
