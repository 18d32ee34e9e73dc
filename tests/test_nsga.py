"""NSGA-II operators against pymoo 0.6, and JCW's uniform selection on hand-made populations.

Distributions are compared with two-sample KS tests on 20 000 children per gene (KS resolves CDF
differences of ~0.02 at that size); a p-value threshold of 1e-3 over a handful of genes keeps false
alarms rare while a wrong spread (e.g. an eta off by a factor of two) fails by orders of magnitude.
"""
import numpy as np
import pytest
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting, rank_from_fronts
from scipy.stats import ks_2samp

from latbench.search import nsga

N_CHILDREN = 20_000
P_MIN = 1e-3
# Parents chosen so that every gene pair has parent 0 below parent 1 (see the SBX test for why).
PARENT_0 = np.array([0.30, 0.45, 0.05, 0.60, 0.10])
PARENT_1 = np.array([0.70, 0.55, 0.25, 0.95, 0.90])


def _pymoo_sbx(eta: float, prob_var: float, prob_bin: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """pymoo's SBX on N_CHILDREN matings of the two fixed parents, on [−B, B] bounds, clipped to [0, 1].

    pymoo implements the bounded SBX variant; with bounds far away (B = 1e6) its spread distribution
    is the classic one to ~1e-9, and clipping to [0, 1] afterwards is exactly JCW's Algorithm 3."""
    d = len(PARENT_0)
    problem = Problem(n_var=d, xl=np.full(d, -1e6), xu=np.full(d, 1e6))
    pop = Population.new("X", np.vstack([PARENT_0, PARENT_1]))
    matings = np.tile([0, 1], (N_CHILDREN, 1))
    sbx = SBX(prob=1.0, prob_var=prob_var, eta=eta, prob_exch=1.0, prob_bin=prob_bin)
    X = sbx.do(problem, pop, matings, random_state=np.random.default_rng(seed)).get("X")
    X = np.clip(X, 0.0, 1.0)
    return X[:N_CHILDREN], X[N_CHILDREN:]


def _our_sbx(eta: float, prob_var: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.tile(PARENT_0, (N_CHILDREN, 1))
    b = np.tile(PARENT_1, (N_CHILDREN, 1))
    return nsga.sbx_crossover(a, b, eta, np.random.default_rng(seed), prob_var=prob_var)


@pytest.mark.parametrize("eta", [0.5, 15.0])
def test_sbx_children_follow_pymoos_distribution_child_by_child(eta):
    # pymoo puts the child on the lower parent's side first when prob_bin = 0 (no exchange); ours keeps
    # each child on its own parent's side. With parent 0 below parent 1 in every gene the two agree.
    ours_0, ours_1 = _our_sbx(eta, 1.0, seed=1)
    ref_0, ref_1 = _pymoo_sbx(eta, prob_var=1.0, prob_bin=0.0, seed=2)
    for gene in range(len(PARENT_0)):
        assert ks_2samp(ours_0[:, gene], ref_0[:, gene]).pvalue > P_MIN, f"child 0, gene {gene}"
        assert ks_2samp(ours_1[:, gene], ref_1[:, gene]).pvalue > P_MIN, f"child 1, gene {gene}"


def test_sbx_with_pymoos_defaults_matches_per_gene_probability_and_pooled_children():
    # pymoo's defaults cross each gene with probability 0.5 and exchange the children with probability
    # 0.5. The exchange only relabels the two children, so compare both children pooled; the per-gene
    # probability is ours too (prob_var=0.5).
    ours = np.vstack(_our_sbx(0.5, 0.5, seed=3))
    ref = np.vstack(_pymoo_sbx(0.5, prob_var=0.5, prob_bin=0.5, seed=4))
    parents = np.vstack([np.tile(PARENT_0, (N_CHILDREN, 1)), np.tile(PARENT_1, (N_CHILDREN, 1))])
    untouched_ours = np.mean(ours == parents, axis=0)
    untouched_ref = np.mean(np.isin(ref, [PARENT_0, PARENT_1]) & ((ref == parents) | (ref == parents[::-1])), axis=0)
    np.testing.assert_allclose(untouched_ours, 0.5, atol=0.02)
    np.testing.assert_allclose(untouched_ref, 0.5, atol=0.02)
    for gene in range(len(PARENT_0)):
        assert ks_2samp(ours[:, gene], ref[:, gene]).pvalue > P_MIN, f"gene {gene}"


def test_sbx_with_a_different_eta_is_told_apart():
    """The KS comparison has power: a spread index of 2 instead of 0.5 is detected."""
    ours_0, _ = _our_sbx(2.0, 1.0, seed=5)
    ref_0, _ = _pymoo_sbx(0.5, prob_var=1.0, prob_bin=0.0, seed=6)
    assert ks_2samp(ours_0[:, 0], ref_0[:, 0]).pvalue < 1e-6


def test_sbx_keeps_the_parents_mean_and_clips_to_the_unit_cube():
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0.4, 0.6, (1000, 6)), rng.uniform(0.4, 0.6, (1000, 6))
    ca, cb = nsga.sbx_crossover(a, b, 30.0, rng)          # narrow spread: no clipping happens
    np.testing.assert_allclose(ca + cb, a + b, atol=1e-12)
    wide_a, wide_b = nsga.sbx_crossover(a, b, 0.5, rng)   # JCW's wide spread: children are clipped
    assert wide_a.min() == 0.0 and wide_b.max() == 1.0
    assert 0.0 <= min(wide_a.min(), wide_b.min()) and max(wide_a.max(), wide_b.max()) <= 1.0


def test_polynomial_mutation_follows_pymoos_distribution():
    # pymoo implements bounded polynomial mutation; for genes away from the bounds it equals the classic
    # one up to (distance to the far bound)^(eta+1) ≤ 0.65^16 ≈ 1e-3 of the step, far below KS resolution.
    x = np.array([0.35, 0.5, 0.65, 0.42])
    d = len(x)
    ours = nsga.polynomial_mutation(np.tile(x, (N_CHILDREN, 1)), 15.0, 0.1, np.random.default_rng(8))
    problem = Problem(n_var=d, xl=np.zeros(d), xu=np.ones(d))
    pm = PM(prob=1.0, prob_var=0.1, eta=15.0)   # prob: per individual (always), prob_var: per gene
    ref = pm.do(problem, Population.new("X", np.tile(x, (N_CHILDREN, 1))),
                random_state=np.random.default_rng(9)).get("X")
    for gene in range(d):
        moved_ours, moved_ref = ours[:, gene] != x[gene], ref[:, gene] != x[gene]
        assert moved_ours.mean() == pytest.approx(0.1, abs=0.01)
        assert moved_ref.mean() == pytest.approx(0.1, abs=0.01)
        assert ks_2samp(ours[moved_ours, gene], ref[moved_ref, gene]).pvalue > P_MIN, f"gene {gene}"


def test_polynomial_mutation_returns_the_clipped_genome():
    """The authors' code clipped a copy and returned the unclipped genes; ours never leaves [0, 1]."""
    x = np.full((N_CHILDREN, 3), 0.995)
    y = nsga.polynomial_mutation(x, 15.0, 1.0, np.random.default_rng(10))
    assert y.max() == 1.0 and y.min() >= 0.0
    assert 0.2 < np.mean(y == 1.0) < 0.6     # classic mutation + clipping: the upward steps land on the bound


def _pymoo_ranks(F):
    return rank_from_fronts(NonDominatedSorting().do(F), len(F))


HAND_MADE = {
    "three fronts": np.array([[0, 4], [1, 3], [2, 2], [3, 1], [4, 0], [1, 4], [2, 3], [4, 4], [5, 5]], float),
    "duplicates": np.array([[1, 1], [1, 1], [0, 2], [2, 0], [2, 2], [2, 2], [3, 3]], float),
    "one objective tied": np.array([[0, 1], [0, 2], [0, 3], [1, 0], [1, 1]], float),
    "three objectives": np.array([[1, 2, 3], [3, 2, 1], [2, 2, 2], [2, 3, 3], [1, 2, 4], [0, 5, 5]], float),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_non_dominated_sorting_and_crowding_on_hand_made_fronts(name):
    F = HAND_MADE[name]
    ranks = nsga.non_dominated_ranks(F)
    np.testing.assert_array_equal(ranks, _pymoo_ranks(F))
    if F.shape[1] == 2:
        np.testing.assert_array_equal(nsga.two_objective_ranks(F[:, 0], F[:, 1])[0], ranks)
    crowding = nsga.crowding_distance(F, ranks)
    for front in nsga.fronts(ranks):
        expected = calc_crowding_distance(F[front]) if len(front) > 2 else np.full(len(front), np.inf)
        np.testing.assert_allclose(crowding[front], expected)


def test_hand_made_front_values():
    F = HAND_MADE["three fronts"]
    np.testing.assert_array_equal(nsga.non_dominated_ranks(F), [0, 0, 0, 0, 0, 1, 1, 2, 3])
    # Five evenly spaced points: every interior point is 2/4 away on both objectives (mean 0.5); the
    # authors' loop skipped one interior index and left it at 0.
    np.testing.assert_allclose(nsga.crowding_distance(F[:5]), [np.inf, 0.5, 0.5, 0.5, np.inf])


def test_non_dominated_sorting_and_crowding_match_pymoo_on_random_populations():
    rng = np.random.default_rng(11)
    for trial in range(60):
        n, m = int(rng.integers(3, 120)), int(rng.integers(2, 4))
        F = rng.integers(0, 8, (n, m)).astype(float) if trial % 2 else rng.random((n, m))  # ties / no ties
        ranks = nsga.non_dominated_ranks(F)
        np.testing.assert_array_equal(ranks, _pymoo_ranks(F))
        if m == 2:
            np.testing.assert_array_equal(nsga.two_objective_ranks(F[:, 0], F[:, 1])[0], ranks)
        crowding = nsga.crowding_distance(F, ranks)
        for front in nsga.fronts(ranks):
            if len(front) > 2:
                np.testing.assert_allclose(crowding[front], calc_crowding_distance(F[front]))


def test_two_objective_ranks_handle_many_problems_at_once():
    rng = np.random.default_rng(12)
    f1, f2 = rng.integers(0, 6, (7, 50)).astype(float), rng.random((7, 50))
    batched = nsga.two_objective_ranks(f1, f2)
    for k in range(7):
        np.testing.assert_array_equal(batched[k], _pymoo_ranks(np.column_stack([f1[k], f2[k]])))


def test_bad_objectives_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        nsga.non_dominated_ranks(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        nsga.crowding_distance(np.zeros(3))


def test_latency_targets_include_both_ends():
    rng = np.random.default_rng(13)
    t = nsga.latency_targets(2.0, 9.0, 10, rng)
    assert t[0] == 2.0 and t[-1] == 9.0 and len(t) == 10 and np.all(np.diff(t) >= 0)
    np.testing.assert_allclose(nsga.latency_targets(0.0, 1.0, 5, rng, even=True), [0, 0.25, 0.5, 0.75, 1])


def _clustered_population(rng):
    """40 good, mutually non-dominated candidates crowded at low latency (1–2 ms) and 40 worse ones
    spread over 2–20 ms, each dominated by a cluster member (higher latency and higher loss)."""
    lat_cluster = np.sort(rng.uniform(1.0, 2.0, 40))
    loss_cluster = 0.5 - 0.2 * (lat_cluster - 1.0)                 # a front: faster = worse
    lat_spread = rng.uniform(2.0, 20.0, 40)
    loss_spread = rng.uniform(0.55, 0.9, 40)
    return np.r_[loss_cluster, loss_spread], np.r_[lat_cluster, lat_spread]


def test_uniform_selection_spreads_where_nsga2_crowds_at_one_end():
    rng = np.random.default_rng(14)
    loss, latency = _clustered_population(rng)
    bins = np.linspace(1.0, 20.0, 11)
    uniform = nsga.uniform_nondominated_selection(loss, latency, 20, rng)
    plain = nsga.rank_and_crowding_selection(np.column_stack([loss, latency]), 20)
    assert len(set(uniform.tolist())) == 20
    occupied = lambda idx: len(np.unique(np.digitize(latency[idx], bins)))
    assert occupied(plain) == 1                       # NSGA-II keeps the cluster only
    assert occupied(uniform) >= 8                     # uniform selection covers the range
    assert np.argmin(latency) in uniform and np.argmax(latency) in uniform


def test_uniform_selection_always_keeps_the_fastest_and_the_slowest():
    rng = np.random.default_rng(15)
    for _ in range(50):
        m = int(rng.integers(10, 80))
        loss, latency = rng.random(m), rng.uniform(1, 30, m)
        n = int(rng.integers(2, m))
        picks = nsga.uniform_nondominated_selection(loss, latency, n, rng, n_targets=int(rng.integers(2, n + 1)))
        assert len(np.unique(picks)) == n
        assert np.argmin(latency) in picks and np.argmax(latency) in picks


def test_uniform_selection_prefers_lower_loss_at_equal_latency():
    # 30 pairs of twins at equal latency: the worse twin is dominated by the better one for every target.
    latency = np.repeat(np.arange(1.0, 31.0), 2)
    better = 1.0 - latency[::2] / 60
    loss = np.c_[better, better + 0.5].ravel()
    for picks_per_target in (1, 2, 4):
        rng = np.random.default_rng(16)
        picks = nsga.uniform_nondominated_selection(loss, latency, 30, rng, n_targets=30 // picks_per_target)
        assert np.all(picks % 2 == 0), f"{picks_per_target} picks per target kept a worse twin"


def test_a_targets_preference_nearest_then_best_loss_then_by_crowding():
    latency = np.array([1.0, 2.0, 3.0, 10.0, 4.0, 2.5])
    loss = np.array([0.9, 0.8, 0.1, 0.0, 0.05, 0.95])
    ranks, order = nsga.target_preferences(loss, latency, np.array([2.1, 10.0]))
    # Target 2.1: front {2.0, 3.0, 4.0, 10.0} on (loss, distance); 1.0 and 2.5 are dominated by 2.0.
    np.testing.assert_array_equal(ranks[0], [1, 0, 0, 0, 0, 1])
    assert order[0][:2].tolist() == [1, 3]           # nearest first, then the other extreme (best loss)
    assert set(order[0][2:4].tolist()) == {2, 4}
    assert order[1][0] == 3                          # the slowest target: the candidate on it
