"""JCW search: genome encoding, the search loop on real tables with a known synthetic loss, resume, outputs."""
import json
from pathlib import Path

import numpy as np
import pytest
from pymoo.indicators.hv import HV

from latbench.layers import signature_of
from latbench.models import Architecture, get_model, random_architectures
from latbench.predictor import Population, Predictor
from latbench.methods.jcw.search import (ArchitectureEncoding, JCWSearch, SearchConfig, SearchError, SyntheticEvaluator,
                                 coupled_groups, density_experiment)
from latbench.tables import LatencyTable
from latbench.tables.jcw import import_jcw_table

ROOT = Path(__file__).resolve().parents[1]
HOST_TABLE = ROOT / "tables" / "host-ort-resnet18-224-adaptive.parquet"


@pytest.fixture(scope="module")
def spec():
    return get_model("resnet18")


@pytest.fixture(scope="module")
def host(spec):
    return Predictor(spec, LatencyTable.load(HOST_TABLE))


class RecordingEvaluator(SyntheticEvaluator):
    """The synthetic loss, recording what the search hands to ``update`` and ``evaluate``."""

    def __init__(self, spec):
        super().__init__(spec)
        self.updates, self.evaluations = [], []

    def update(self, archs):
        self.updates.append(len(archs))

    def evaluate(self, archs):
        self.evaluations.append(len(archs))
        return super().evaluate(archs)


class CountingPredictor(Predictor):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def predict_population(self, pop, *args, **kw):
        self.calls.append(len(pop))
        return super().predict_population(pop, *args, **kw)


def _relative_hypervolume(record, full_ms):
    front = record.front()
    points = np.column_stack([record.loss[front], record.latency_ms[front] / full_ms])
    return HV(ref_point=np.array([1.0, 1.05]))(points)


# ---- encoding -----------------------------------------------------------------------------------------

def test_encoding_bounds_follow_config_table_and_coupling(spec, host):
    enc = ArchitectureEncoding.for_search(spec, host, SearchConfig(sparsity_where="measured"))
    assert enc.channel_multiple == host.table.meta["channel_multiple"] == 8
    assert enc.dim == len(spec.groups) + len(spec.sparsifiable_layers)     # the host table spans sparsity everywhere
    coupled = coupled_groups(spec)
    assert {"stage1", "stage2", "stage3", "stage4", "layer2.0.mid"} <= coupled and "layer1.0.mid" not in coupled
    mins = dict(zip(enc.groups, enc.min_widths.tolist()))
    assert mins["stage4"] == 256 and mins["layer4.0.mid"] == 256 and mins["layer4.1.mid"] == 128
    np.testing.assert_allclose(enc.max_sparsity, 0.9)                      # config cap = the table's range here
    # A tiny ratio is raised to the table's smallest measured width (8 channels) and the channel multiple.
    loose = ArchitectureEncoding.for_search(spec, host, SearchConfig(min_width_ratio=0.01, coupled_min_width_ratio=0.01,
                                                                     channel_multiple=16))
    assert (loose.min_widths == 16).all()
    override = ArchitectureEncoding.for_search(spec, host, SearchConfig(group_min_width_ratio={"stage1": 1.0}))
    assert dict(zip(override.groups, override.min_widths.tolist()))["stage1"] == 64


def test_decoding_rounds_clips_and_snaps(spec, host):
    enc = ArchitectureEncoding.for_search(spec, host, SearchConfig(channel_multiple=16, sparsity_step=0.25,
                                                                   max_sparsity=0.8, sparsity_where="measured"))
    genomes = np.random.default_rng(0).random((500, enc.dim))
    genomes[:5] = 0.0
    genomes[5:10] = 1.0
    pop = enc.decode(genomes)
    full = enc.full_widths
    assert ((pop.widths % 16 == 0) | (pop.widths == full)).all()
    assert (pop.widths >= enc.min_widths).all() and (pop.widths <= full).all()
    assert np.isin(np.round(pop.sparsity, 9), [0.0, 0.25, 0.5, 0.75]).all()   # cap 0.8 snapped down to 0.75
    assert (pop.widths[:5] == enc.min_widths).all() and (pop.sparsity[:5] == 0).all()
    assert (pop.widths[5:10] == full).all() and np.allclose(pop.sparsity[5:10], 0.75)
    # Rounding to the nearest multiple: 0.3·256 = 76.8 → 80.
    g = enc.groups.index("layer3.1.mid")
    one = np.full((1, enc.dim), 0.5)
    one[0, g] = 0.3
    assert enc.decode(one).widths[0, g] == 80
    # Architectures on the lattice survive encode → decode unchanged.
    archs = random_architectures(spec, 30, seed=1, resolutions=(224,), sparsities=(0.0, 0.25, 0.5), divisor=16,
                                 min_ratio=0.5)
    back = enc.architectures(enc.decode(enc.encode_architectures(archs)))
    assert back == archs


def test_channel_only_search_space(spec, host):
    enc = ArchitectureEncoding.for_search(spec, host, SearchConfig(channel_only=True))
    assert enc.dim == len(spec.groups) and enc.sparse_layers == ()
    pop = enc.decode(np.random.default_rng(1).random((50, enc.dim)))
    assert pop.sparsity.shape == (50, len(spec.sparsifiable_layers)) and not pop.sparsity.any()


def test_bad_configurations_are_refused(spec, host):
    with pytest.raises(SearchError, match="population=1"):
        SearchConfig(population=1)
    with pytest.raises(SearchError, match="max_sparsity"):
        SearchConfig(max_sparsity=1.0)
    with pytest.raises(SearchError, match="unknown groups"):
        ArchitectureEncoding.for_search(spec, host, SearchConfig(group_min_width_ratio={"stage9": 0.5}))
    with pytest.raises(SearchError, match="no evaluate"):
        JCWSearch(spec, host, object(), SearchConfig())

    class Broken:
        def evaluate(self, archs):
            return np.full(len(archs) - 1, 0.5)

    with pytest.raises(SearchError, match="expected 8 finite losses"):
        JCWSearch(spec, host, Broken(), SearchConfig(population=8, generations=1)).run()


# ---- the search ---------------------------------------------------------------------------------------

def test_search_improves_the_front_and_covers_the_latency_range(spec):
    predictor = CountingPredictor(spec, LatencyTable.load(HOST_TABLE))
    evaluator = RecordingEvaluator(spec)
    n, generations = 32, 25
    search = JCWSearch(spec, predictor, evaluator, SearchConfig(population=n, generations=generations, seed=0))
    result = search.run()
    # One latency call per generation for all of P ∪ Q (after the full network's and the first population's).
    assert predictor.calls == [1, n] + [2 * n] * generations
    assert evaluator.updates == [2 * n] * generations
    assert evaluator.evaluations == [n] + [2 * n] * generations
    assert result.timing.latency_calls == generations + 1
    assert [r.generation for r in result.history] == list(range(generations + 1))

    full = result.full_latency_ms
    hv = [_relative_hypervolume(r, full) for r in result.history]
    assert hv[-1] > hv[0] + 0.1 and hv[-1] >= max(hv[:6])
    # The fastest network this search space allows: every group at its lower bound.
    floor = predictor.predict_population(Population(search.encoding.min_widths[None], np.zeros((1, 20)),
                                                    np.array([224])))[0]
    final = result.final
    assert final.latency_ms.min() <= floor * 1.1
    assert (final.latency_ms.max() - final.latency_ms.min()) >= 0.5 * (full - floor)
    front_latency = final.latency_ms[final.front()]
    assert np.diff(front_latency).max() <= 0.2 * full      # no big hole in the front
    # Selection keeps distinct architectures.
    assert len(np.unique(np.hstack([final.widths, final.sparsity]), axis=0)) == n


def test_resumed_search_equals_an_uninterrupted_one(spec, host, tmp_path):
    evaluator = SyntheticEvaluator(spec)
    straight = JCWSearch(spec, host, evaluator, SearchConfig(population=16, generations=6, seed=4)).run()
    JCWSearch(spec, host, evaluator, SearchConfig(population=16, generations=3, seed=4)).run(tmp_path)
    # A generation whose history line was written but whose state was not (a crash in between) is redone.
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    (tmp_path / "history.jsonl").write_text("\n".join(lines + [lines[-1].replace('"generation": 3', '"generation": 4')])
                                            + "\n")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["generation"] == 3 and len(state["genomes"]) == 16 and "rng" in state
    resumed = JCWSearch(spec, host, evaluator, SearchConfig(population=16, generations=6, seed=4)).run(tmp_path)
    assert len(resumed.history) == 7
    for a, b in zip(straight.history, resumed.history):
        np.testing.assert_array_equal(a.widths, b.widths)
        np.testing.assert_array_equal(a.sparsity, b.sparsity)
        np.testing.assert_array_equal(a.loss, b.loss)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 7
    with pytest.raises(SearchError, match="config.seed"):
        JCWSearch(spec, host, evaluator, SearchConfig(population=16, generations=6, seed=5)).run(tmp_path)
    restart = JCWSearch(spec, host, evaluator, SearchConfig(population=16, generations=2, seed=5))
    fresh = restart.run(tmp_path, resume=False)
    assert len(fresh.history) == 3 and json.loads((tmp_path / "state.json").read_text())["generation"] == 2


def test_outputs_front_jsonl_and_frontier_plot(spec, host, tmp_path):
    search = JCWSearch(spec, host, SyntheticEvaluator(spec), SearchConfig(population=16, generations=4, seed=1))
    result = search.run(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "front.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.final.front()) > 1
    archs = [Architecture.from_dict(r) for r in rows]
    np.testing.assert_allclose(host.predict(archs), [r["latency_ms"] for r in rows])
    np.testing.assert_allclose(SyntheticEvaluator(spec).evaluate(archs), [r["loss"] for r in rows])
    latency, loss = np.array([r["latency_ms"] for r in rows]), np.array([r["loss"] for r in rows])
    assert np.all(np.diff(latency) > 0) and np.all(np.diff(loss) < 0)     # a front, sorted by latency
    for r, a in zip(rows, archs):
        assert r["density"] == pytest.approx(1 - np.mean([a.sparsity.get(n, 0.0) for n in spec.sparsifiable_layers]))
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SearchError, match="not in this search's history"):
        result.plot_frontier(tmp_path / "x.png", generations=[9])


def test_latency_limits_and_initial_architectures(spec, host):
    full = Architecture.full(spec, 224)
    cfg = SearchConfig(population=16, generations=5, seed=2, latency_limits=(10.0, 20.0), initial=(full,))
    result = JCWSearch(spec, host, SyntheticEvaluator(spec), cfg).run()
    first = result.history[0]
    assert (first.widths[0] == list(spec.groups.values())).all() and first.loss[0] == 0.0
    assert first.latency_ms.max() > 20.0                                   # the start is not filtered
    final = result.final.latency_ms
    assert final.min() >= 10.0 and final.max() <= 20.0


def test_channel_only_search_keeps_every_layer_dense(spec, host):
    result = JCWSearch(spec, host, SyntheticEvaluator(spec),
                       SearchConfig(population=12, generations=3, seed=3, channel_only=True)).run()
    assert all(not r.sparsity.any() for r in result.history)
    assert (result.density_by_latency(3).dropna().mean_density == 1.0).all()


def test_sparsity_pays_on_the_phone_table_only(spec, jcw_dir):
    """The acceptance experiment in miniature: with a loss that charges less for sparsity than for
    channel pruning, the front on JCW's phone table (sparse kernels faster) is sparser than on this
    host's table (sparsity axis flat), most of all at low latency."""
    phone, _ = import_jcw_table(jcw_dir)
    cfg = SearchConfig(population=32, generations=25, seed=0, channel_multiple=8)
    evaluator = SyntheticEvaluator(spec)
    edges = [0.0, 0.3, 0.5, 1.0]
    phone_result, phone_bins = density_experiment(spec, phone, evaluator, cfg, bins=edges)
    host_result, host_bins = density_experiment(spec, HOST_TABLE, evaluator, cfg, bins=edges)
    assert list(phone_bins.columns[:4]) == ["latency_lo", "latency_hi", "n", "mean_density"]
    assert phone_bins.n.sum() == len(phone_result.final.front())
    assert phone_result.front_frame().weight_density.mean() < host_result.front_frame().weight_density.mean() - 0.05
    assert phone_bins.mean_weight_density[0] < host_bins.mean_weight_density[0] - 0.1


def test_sparsity_is_searched_only_where_the_table_credits_it(spec, jcw_dir):
    """On a table whose sparsity axis is flat the default search has no sparsity genes; the whole measured
    range is searched on request; published tables without a sparsity record are credited everywhere."""
    litert = Predictor(spec, LatencyTable.load(ROOT / "tables" / "host-litert-resnet18-224-adaptive.parquet"))
    credited = ArchitectureEncoding.for_search(spec, litert, SearchConfig())
    measured = ArchitectureEncoding.for_search(spec, litert, SearchConfig(sparsity_where="measured"))
    assert credited.sparse_layers == () and credited.dim == len(spec.groups)
    assert measured.sparse_layers == spec.sparsifiable_layers
    # A table that credits one signature up to 0.5: only that signature's convs get genes, capped at 0.5.
    table = LatencyTable.load(ROOT / "tables" / "host-litert-resnet18-224-adaptive.parquet")
    levels = table.meta["sparsity_axis"]["levels"]
    levels["conv_k3_s1_p1_relu"]["0.45"]["credited"] = True
    partial = ArchitectureEncoding.for_search(spec, Predictor(spec, table), SearchConfig())
    chosen = {layer.name for layer in spec.layers if layer.sparsifiable
              and signature_of(layer).key == "conv_k3_s1_p1_relu"}
    assert set(partial.sparse_layers) == chosen and np.allclose(partial.max_sparsity, 0.45)
    phone, _ = import_jcw_table(jcw_dir)
    phone_enc = ArchitectureEncoding.for_search(spec, Predictor(spec, phone), SearchConfig())
    assert len(phone_enc.sparse_layers) == len(spec.sparsifiable_layers)
    with pytest.raises(SearchError, match="sparsity_where"):
        SearchConfig(sparsity_where="everywhere")


@pytest.mark.parametrize("model, table", [("resnet18", HOST_TABLE),
                                          ("resnet56", ROOT / "tables" / "host-litert-resnet56-32-dense.parquet")])
def test_between_two_front_members_fills_the_gap_within_the_target(model, table):
    """JCW's closed loop lands between front members: the faster member grown unit by unit towards the slower one
    (wider, never sparser) while the prediction fits the target, so every target in the gap gets its own network,
    close to it (ResNet-56's stage groups are coarse units: taken last, they would leave the network short of the
    target)."""
    spec = get_model(model)
    host = Predictor(spec, LatencyTable.load(table))
    search = JCWSearch(spec, host, SyntheticEvaluator(spec), SearchConfig(population=4, generations=1,
                                                                          coupled_min_width_ratio=0.25))
    encoding = search.encoding
    low, high = encoding.architectures(encoding.decode(np.array([[0.3] * encoding.dim, [0.9] * encoding.dim])))
    low_ms, high_ms = host.predict([low, high])
    grown = []
    for target in np.linspace(low_ms, high_ms, 7)[1:-1]:
        pop, predicted = search.between(low, high, target)
        arch = encoding.architectures(pop)[0]
        assert 0.97 * target <= predicted <= target and predicted == pytest.approx(host.predict([arch])[0])
        assert all(low.widths[g] <= arch.widths[g] <= high.widths[g] for g in spec.groups)
        assert all(min(low.sparsity[k], high.sparsity[k]) <= s <= low.sparsity[k]     # growing never sparsifies
                   for k, s in arch.sparsity.items())
        grown.append(predicted)
    assert len(set(grown)) >= 4 and grown == sorted(grown)         # finer than the two members
    pop, predicted = search.between(low, high, 0.5 * low_ms)       # nothing fits: the faster member itself
    assert encoding.architectures(pop)[0] == low and predicted == pytest.approx(low_ms)
