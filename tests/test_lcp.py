"""LcP: cost grids, incremental updates, global ranking, naïve pruning, the floor error, β evolution."""
from pathlib import Path

import numpy as np
import pytest

from latbench.layers import layer_points
from latbench.models import Architecture, get_model
from latbench.predictor import Predictor
from latbench.search.budget import Budget, BudgetError, CostGrid, IncrementalCost
from latbench.methods.lcp.search import (EvolutionConfig, FilterRanking, fill_back, learn_compensation, naive_prune,
                                 reachable_minimum,
                                 uniform_prune)
from latbench.tables.table import LatencyTable, OutOfGridError

TABLES = Path(__file__).resolve().parents[1] / "tables"


def random_metrics(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {ly.name: rng.random(spec.groups[ly.out_group]) * (1 + i % 3)
            for i, ly in enumerate(spec.layers) if ly.out_group and ly.has_weights}


@pytest.fixture(scope="module")
def r18():
    spec = get_model("resnet18")
    return spec, Predictor(spec, LatencyTable.load(TABLES / "host-ort-resnet18-224-adaptive.parquet"))


def test_analytic_flops_match_layer_shapes():
    spec = get_model("mobilenet_v2")
    arch = Architecture(spec.name, 224, {g: max(8, w // 2) for g, w in spec.groups.items()})
    expected = 0
    for layer, _sig, p in layer_points(spec, arch.widths, {}, 224):
        out_hw = layer.output_hw(p.input_hw)
        if layer.kind in ("conv", "pointwise"):
            expected += layer.kernel ** 2 * p.in_channels * p.out_channels * out_hw ** 2
        elif layer.kind == "depthwise":
            expected += layer.kernel ** 2 * p.out_channels * out_hw ** 2
        elif layer.kind == "linear":
            expected += p.in_channels * p.out_channels
    assert CostGrid.analytic(spec, "flops", 224).total(arch.widths) == pytest.approx(expected)


def test_latency_grid_equals_predictor(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    rng = np.random.default_rng(1)
    for _ in range(5):
        widths = {g: int(rng.integers(1, w // 16 + 1)) * 16 for g, w in spec.groups.items()}
        assert grid.total(widths) == pytest.approx(float(pred.predict(Architecture(spec.name, 224, widths))[0]))


@pytest.mark.parametrize("kind", ["latency", "flops", "params"])
def test_incremental_updates_equal_full_recompute(r18, kind):
    spec, pred = r18
    grid = (CostGrid.from_predictor(pred, 224, step=16) if kind == "latency"
            else CostGrid.analytic(spec, kind, 224, step=16))
    widths = np.array(list(spec.groups.values()))
    running = IncrementalCost(grid, widths)
    rng = np.random.default_rng(2)
    for _ in range(60):
        g = int(rng.choice(np.flatnonzero(widths > 16)))
        widths[g] -= 16
        running.shrink(g, 16)
    assert running.value == pytest.approx(grid.total(widths), rel=1e-9)


def test_fill_back_adds_the_best_ranked_removed_units_that_still_fit(r18):
    """The closed loop's growth for LcP/naïve: after naïve pruning, removed units are restored best-ranked first
    whenever the network stays within the budget; each group keeps a prefix of its ranked channels."""
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    full = grid.total(ranking.full)
    beta = np.random.default_rng(3).normal(0.0, ranking.sigma)
    grew = 0
    for ratio in (0.35, 0.5, 0.7):
        budget = Budget("latency", ratio * full)
        plan = naive_prune(ranking, grid, budget, beta)
        filled = fill_back(ranking, grid, budget, plan, beta)
        assert plan.cost <= filled.cost <= budget.value
        assert filled.cost == pytest.approx(grid.total(filled.widths))
        assert all(plan.widths[g] <= filled.widths[g] <= w for g, w in zip(ranking.groups, ranking.full))
        # Nothing removed fits any more: widening any group by one unit would break the budget.
        for i, g in enumerate(ranking.groups):
            if filled.widths[g] < ranking.full[i]:
                wider = dict(filled.widths, **{g: filled.widths[g] + 16})
                assert grid.total(wider) > budget.value, g
        grew += filled.cost > plan.cost
    assert grew                                   # the greedy stop left room somewhere


def test_naive_pruning_removes_lowest_ranked_channels_until_within_budget(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    full = grid.total(ranking.full)
    plan = naive_prune(ranking, grid, Budget("latency", 0.6 * full))
    assert plan.cost <= 0.6 * full
    # One unit fewer removed would be over the budget: the loop stops at the first feasible point.
    seq, sizes = ranking.removal_sequence()
    widths = ranking.full.copy()
    for g in seq[:plan.removed_units - 1]:
        widths[g] -= 16
    assert grid.total(widths) > 0.6 * full and set(sizes) == {16}
    assert all(plan.widths[g] >= f for g, f in zip(ranking.groups, ranking.floors))
    # The channels a group keeps are its highest-scored ones.
    widths[seq[plan.removed_units - 1]] -= 16
    assert plan.architecture(224).widths == dict(zip(ranking.groups, widths.tolist()))
    order = ranking.order["stage4"]
    summed = sum(m for name, m in random_metrics(spec).items() if spec.layer(name).out_group == "stage4")
    assert np.all(np.diff(summed[order]) <= 0)


def test_compensation_protects_a_layer(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    budget = Budget("latency", 0.5 * grid.total(ranking.full))
    target = "layer3.0.mid"
    beta = np.zeros(len(ranking.layers))
    beta[ranking.layers.index("layer3.0.conv1")] = 1e6
    protected = naive_prune(ranking, grid, budget, beta)
    assert protected.widths[target] == spec.groups[target]
    beta[ranking.layers.index("layer3.0.conv1")] = -1e6
    sacrificed = naive_prune(ranking, grid, budget, beta)
    assert sacrificed.widths[target] == ranking.floors[ranking.groups.index(target)]


def test_budget_below_floor_fails_at_once_with_the_reachable_minimum(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16, floor=0.25)
    lowest = reachable_minimum(ranking, grid)
    with pytest.raises(BudgetError, match=f"{lowest:.4g} ms"):
        naive_prune(ranking, grid, Budget("latency", 0.9 * lowest))
    with pytest.raises(BudgetError, match="floor"):
        uniform_prune(ranking, grid, Budget("latency", 0.9 * lowest))
    assert naive_prune(ranking, grid, Budget("latency", lowest * 1.0001)).cost <= lowest * 1.0001


def test_units_below_the_table_grid_are_refused(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=1)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=1)
    with pytest.raises(OutOfGridError):
        naive_prune(ranking, grid, Budget("latency", 1.0))
    with pytest.raises(BudgetError, match="positive"):
        FilterRanking.from_metrics(spec, random_metrics(spec), unit=0)


def test_widths_that_are_not_unit_multiples_first_drop_the_remainder():
    spec = get_model("mobilenet_v2")
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    assert ranking.grid_step == 8
    g = ranking.groups.index(next(name for name, w in spec.groups.items() if w == 24))
    assert ranking.unit_sizes[g].tolist() == [8]          # 24 → 16 (the floor: one unit)
    grid = CostGrid.analytic(spec, "flops", 224, step=ranking.grid_step)
    plan = naive_prune(ranking, grid, Budget("flops", 0.3 * grid.total(ranking.full)))
    assert all(w % 16 == 0 or w == spec.groups[name] for name, w in plan.widths.items())


def test_uniform_baseline_keeps_one_ratio(r18):
    spec, pred = r18
    grid = CostGrid.analytic(spec, "flops", 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    budget = Budget("flops", 0.5 * grid.total(ranking.full))
    plan = uniform_prune(ranking, grid, budget, fill=False)
    # One ratio r explains every width: w = 16·floor(r·full / 16) (or the floor), i.e. r lies in every interval.
    lo = max(plan.widths[g] / w for g, w in spec.groups.items() if plan.widths[g] > 16)
    hi = min((plan.widths[g] + 16) / w for g, w in spec.groups.items())
    assert lo < hi and plan.cost <= budget.value
    # Filled: the leftover budget bought units, at most one per group, and the plan still fits.
    filled = uniform_prune(ranking, grid, budget)
    gained = {g: filled.widths[g] - plan.widths[g] for g in spec.groups}
    assert set(gained.values()) <= {0, 16} and any(gained.values())
    assert plan.cost < filled.cost <= budget.value


def test_filled_uniform_lands_closer_to_a_latency_budget_than_the_ratio_alone(r18):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    full = grid.total(ranking.full)
    for ratio in (0.45, 0.6, 0.75):
        budget = Budget("latency", ratio * full)
        coarse, filled = uniform_prune(ranking, grid, budget, fill=False), uniform_prune(ranking, grid, budget)
        assert coarse.cost <= filled.cost <= budget.value
        # what is left is less than the cheapest unit any group could still gain
        widths = np.array([filled.widths[g] for g in ranking.groups])
        for g in range(len(widths)):
            if widths[g] < ranking.full[g]:
                grown = widths.copy()
                grown[g] += 16
                assert grid.total(grown) > budget.value or filled.widths[ranking.groups[g]] > coarse.widths[
                    ranking.groups[g]]


def _synthetic_fitness(spec):
    # A known optimum: the fitness prefers keeping the late stages wide.
    weights = np.array([3.0 if g.startswith(("stage4", "layer4")) else 0.2 for g in spec.groups])

    def fitness(plan):
        kept = np.array([plan.widths[g] / w for g, w in spec.groups.items()])
        return float(((1 - kept) * weights).sum())
    return fitness


def test_evolution_improves_and_resumes_identically(r18, tmp_path):
    spec, pred = r18
    grid = CostGrid.from_predictor(pred, 224, step=16)
    ranking = FilterRanking.from_metrics(spec, random_metrics(spec), unit=16)
    budget = Budget("latency", 0.5 * grid.total(ranking.full))
    fitness = _synthetic_fitness(spec)
    config = EvolutionConfig(pool=12, candidates=60, sample=4, seed=3)
    result = learn_compensation(ranking, grid, budget, fitness, config, progress=False)
    initial_best = min(c.fitness for c in result.history[:config.pool])
    assert result.best.fitness < initial_best
    assert naive_prune(ranking, grid, budget, result.best.beta).cost <= budget.value

    class Interrupt(Exception):
        pass

    calls = {"n": 0}

    def flaky(plan):
        calls["n"] += 1
        if calls["n"] == 25:
            raise Interrupt
        return fitness(plan)

    state = tmp_path / "state.json"
    with pytest.raises(Interrupt):
        learn_compensation(ranking, grid, budget, flaky, config, state=state, progress=False)
    resumed = learn_compensation(ranking, grid, budget, fitness, config, state=state, progress=False)
    assert [c.fitness for c in resumed.history] == [c.fitness for c in result.history]
    with pytest.raises(ValueError, match="other settings"):
        learn_compensation(ranking, grid, Budget("latency", budget.value * 0.9), fitness, config, state=state,
                           progress=False)
