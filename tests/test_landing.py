"""The closed loop (latbench.methods.landing): the prediction proposes, the measurement decides. Synthetic
devices that run networks faster or slower than predicted, on a ladder of widths like a method's units."""
import pytest

from latbench.methods.landing import LandingConfig, LandingStatus, Proposal, land
from latbench.models import Architecture

WIDTHS = tuple(range(8, 129, 8))          # one group, 8 … 128 channels in units of 8


def ladder(ms_per_channel: float = 0.01, widths=WIDTHS):
    """The method: the widest width whose *predicted* latency meets the target (at least the narrowest)."""
    def propose(target: float) -> Proposal:
        fitting = [w for w in widths if w * ms_per_channel <= target] or [widths[0]]
        w = fitting[-1]
        return Proposal(Architecture("toy", 32, {"g": w}), w * ms_per_channel, target)
    return propose


class Device:
    """Measures ``factor × predicted`` (+ ``drift`` on repeats ≥ 1); counts what it measures."""

    def __init__(self, factor: float, drift: float = 0.0):
        self.factor, self.drift, self.calls = factor, drift, []

    def __call__(self, archs, repeat):
        self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
        return [a.widths["g"] * 0.01 * self.factor + (self.drift if repeat else 0.0) for a in archs]


def test_a_device_faster_than_predicted_grows_the_network_into_the_band():
    device = Device(0.8)                  # the table over-predicts by 25 %: the search's network is too small
    result = land(0.8, ladder(), device, LandingConfig(repeats=3))
    first = result.steps[0]
    assert first.widths == {"g": 80} and first.measured_ms == pytest.approx(0.64)   # 80 % of the budget
    assert result.status == LandingStatus.in_band
    assert 0.95 * 0.8 <= result.measured_ms <= 0.8 and result.upper_ms <= 0.8
    assert result.steps[result.chosen].widths["g"] > 80
    assert len(result.repeats) == 3 and len(result.steps) <= 8
    # every network measured three times (repeats 0, 1, 2), none of them again
    assert sorted(device.calls) == sorted({(c[0], r) for c in device.calls for r in range(3)})
    assert len({c[0] for c in device.calls}) == len([s for s in result.steps if not s.reused])
    assert all(len(s.repeats) == 3 and s.measured_ms == pytest.approx(sorted(s.repeats)[1]) for s in result.steps)


def test_a_device_slower_than_predicted_shrinks_the_network_under_the_budget():
    device = Device(1.3)
    result = land(0.8, ladder(), device, LandingConfig())
    assert result.steps[0].measured_ms > 0.8                    # the search's network is over budget
    assert result.status in (LandingStatus.in_band, LandingStatus.no_unit_fits)
    assert result.upper_ms <= 0.8


def test_when_no_unit_fits_in_between_the_largest_network_within_budget_is_kept():
    device = Device(0.8)
    # budget 0.5: 56 ch measures 0.448 (below 0.475), 64 ch measures 0.512 (over): nothing lands in the band
    result = land(0.5, ladder(), device, LandingConfig())
    assert result.status == LandingStatus.no_unit_fits
    assert result.steps[result.chosen].widths == {"g": 56}
    assert any(s.measured_ms > 0.5 for s in result.steps)        # the next unit up was tried and measured over
    assert result.steps[-1].reused                               # and the loop stopped when nothing new came


def test_a_network_counts_with_the_spread_of_its_measurements():
    """A network just under the budget whose second measurement is over it counts as over (96); one whose
    median is below the band is grown (80 → 88); with nothing in between, the largest network within budget
    under its spread is kept."""
    device = Device(0.8, drift=0.04)      # 96 ch measures 0.768, then 0.808 when measured again
    result = land(0.8, ladder(), device, LandingConfig(repeats=2, aim=0.965, headroom=0.985))
    assert [s.widths["g"] for s in result.steps] == [80, 88, 96, 96]      # 96 again: nothing else in between
    assert result.steps[2].measured_ms == pytest.approx(0.808)            # counted at its largest measurement
    assert result.steps[result.chosen].widths == {"g": 88} and result.repeats == pytest.approx([0.704, 0.744])
    assert result.status == LandingStatus.no_unit_fits and result.upper_ms <= 0.8


def test_a_budget_below_every_network_is_reported_over_budget_not_hidden():
    result = land(0.05, ladder(), Device(1.0), LandingConfig())
    assert result.status == LandingStatus.over_budget
    assert result.steps[result.chosen].widths == {"g": 8}


def test_the_number_of_measurements_is_bounded_and_the_trajectory_reported():
    # a device so noisy in its relation to the prediction that the loop cannot settle: bounded anyway
    class Erratic(Device):
        def __call__(self, archs, repeat):
            self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
            return [(0.5 if a.widths["g"] % 16 else 1.6) * a.widths["g"] * 0.01 for a in archs]

    result = land(0.8, ladder(), Erratic(1.0), LandingConfig(max_measurements=4, repeats=1))
    assert len(result.steps) <= 4
    report = result.to_dict()
    assert report["iterations"] == len(report["steps"]) and report["status"] in {s.value for s in LandingStatus}
    assert all({"target_ms", "predicted_ms", "measured_ms", "widths"} <= set(s) for s in report["steps"])


def test_a_network_whose_second_measurement_is_over_the_budget_is_not_shipped():
    """The first network measures in band once and over the budget the second time: it counts as over, and the
    loop asks the method for a smaller one instead of shipping it or giving up."""
    class Jittery(Device):
        def __call__(self, archs, repeat):
            self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
            return [a.widths["g"] * 0.01 * self.factor + (0.05 if repeat and a.widths["g"] == 80 else 0.0)
                    for a in archs]

    device = Jittery(0.97)                # 80 ch: 0.776, in band at once, but 0.826 when measured again
    result = land(0.8, ladder(), device, LandingConfig(repeats=2))
    assert result.steps[0].widths["g"] == 80 and len(result.steps) >= 2     # the search went on after the check
    assert result.upper_ms <= 0.8 and result.status != LandingStatus.over_budget
    assert result.steps[result.chosen].widths["g"] < 80
    assert ((80,), 1) in device.calls                             # 80 was checked again and refused


def test_networks_measured_beside_the_full_network_are_scaled_by_their_ratio_to_it(tmp_path,
                                                                                    resnet56_litert_table):
    """The closed loop's measurements: each network in one interleaved batch with the full network, reported as
    the ratio times the full latency the budget came from; both stored together; a rerun measures nothing."""
    from latbench.methods.common import Anchor, measure_architectures
    from latbench.models import get_model
    from latbench.store import MeasurementStore
    from latbench.tables.table import LatencyTable

    spec = get_model("resnet56")
    table = LatencyTable.load(resnet56_litert_table)
    full = Architecture.full(spec, 32)
    half = Architecture(spec.name, 32, {g: max(8, w // 2) for g, w in spec.groups.items()})
    store = tmp_path / "s.db"
    anchor = Anchor(full, 10.0)                       # any latency the budget was taken from
    first = measure_architectures(spec, [half, full], table, "host:litert", str(store), progress=False,
                                  anchor=anchor)
    with MeasurementStore(store) as st:
        (env_id, _, count), = st.environments()
        keys = [r.signature for r in st.rows(env_id)]
    assert count == 4 and sum("|beside:" in k for k in keys) == sum("|anchor-of:" in k for k in keys) == 2
    # The full network beside itself is the anchor's latency (10), not its raw ≈2 ms: the scaling is applied.
    # (Loose bounds: a loaded machine times even one network twice in one batch a few % apart.)
    assert 5.0 < first[1] < 20.0
    assert 0.1 < first[0] / first[1] < 0.9            # half the widths: a fraction of the full network
    again = measure_architectures(spec, [half, full], table, "host:litert", str(store), progress=False,
                                  anchor=anchor)
    assert list(first) == list(again)
    with MeasurementStore(store) as st:
        assert len(st.rows(env_id)) == 4                                         # nothing measured twice


FINE = tuple(range(8, 129, 2))            # a method with a finer unit (2 channels)


def test_the_loop_keeps_headroom_below_the_budget_for_the_shipped_files_check():
    """A network measured just under the budget (above the headroom) is not chosen when a smaller one lands in
    [band, headroom]: the shipped file is measured again later and spreads by a few %."""
    result = land(0.8, ladder(widths=FINE), Device(1.0), LandingConfig(repeats=2))
    assert result.steps[0].widths == {"g": 80} and result.steps[0].measured_ms == pytest.approx(0.8)
    assert result.status == LandingStatus.in_band
    assert result.upper_ms <= LandingConfig().headroom * 0.8 and result.measured_ms >= 0.95 * 0.8
    assert result.steps[result.chosen].widths["g"] < 80


def test_a_network_whose_repeats_fall_below_the_band_is_grown_not_shipped():
    """The first measurement of 80 was high by chance (in band); its second puts its median below the band: the
    loop grows the network from that median instead of stopping with a network below the band."""
    class Lucky(Device):
        def __call__(self, archs, repeat):
            self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
            return [0.80 if a.widths["g"] == 80 and not repeat else a.widths["g"] * 0.0092 for a in archs]

    device = Lucky(1.0)
    result = land(0.82, ladder(widths=FINE), device, LandingConfig(repeats=2, aim=0.965, headroom=0.985),
                  start=ladder(widths=FINE)(0.8))
    assert result.steps[0].widths == {"g": 80} and ((80,), 1) in device.calls
    assert result.status == LandingStatus.in_band and result.steps[result.chosen].widths["g"] > 80
    assert 0.95 * 0.82 <= result.measured_ms and result.upper_ms <= 0.82


def test_an_empty_band_is_refused_when_the_recipe_is_read():
    from latbench.methods.lcp.job import LcPJob
    from latbench.recipe import RecipeError, build_job

    with pytest.raises(ValueError, match="headroom"):
        LandingConfig(band=0.95, headroom=0.9)
    with pytest.raises(RecipeError, match="headroom above the band"):
        build_job(LcPJob, {"checkpoint": "x.safetensors", "budget_flops": 1e6,
                           "landing": {"band": 0.99, "headroom": 0.98}})


def test_a_network_above_the_headroom_but_within_budget_beats_one_below_the_band():
    """Nothing lands in [band, headroom]: 80 ch measures 0.99 × budget, 76 ch 0.94 ×. The one above the headroom
    is chosen — its measurements stay within budget, so it is in band — rather than a network below the band."""
    class Steps(Device):
        def __call__(self, archs, repeat):
            self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
            return [{80: 0.792, 76: 0.752, 84: 0.84}.get(a.widths["g"], a.widths["g"] * 0.0098) for a in archs]

    device = Steps(1.0)
    result = land(0.8, ladder(widths=(8, 76, 80, 84)), device, LandingConfig(repeats=2))
    assert result.status == LandingStatus.in_band and result.steps[result.chosen].widths == {"g": 80}
    assert result.upper_ms <= 0.8 and ((80,), 1) in device.calls


def test_over_budget_reports_the_repeats_that_refused_the_network():
    """Every network within budget at first measures over it when repeated (spread): the report says over budget
    with the repeats it counted, not the first measurement alone (which read as within budget)."""
    device = Device(0.9, drift=0.2)       # 8 ch: 0.072 at first, 0.272 again; the budget 0.1 fits only 8 ch
    result = land(0.1, ladder(), device, LandingConfig(repeats=3))
    assert result.status == LandingStatus.over_budget
    assert result.steps[result.chosen].widths == {"g": 8}
    assert result.repeats == pytest.approx([0.072, 0.272, 0.272])
    assert result.upper_ms > 0.1 and result.to_dict()["measured_over_budget"] > 1


def test_the_confidence_bound_of_the_median_is_an_order_statistic():
    from latbench.methods.landing import upper_bound_ms

    assert upper_bound_ms([3.0, 1.0, 2.0]) == 3.0                   # three: the largest (P = 7/8)
    nine = [1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]
    assert upper_bound_ms(nine) == 7.0                              # nine: the 7th smallest (P = 466/512)
    assert upper_bound_ms([4.2]) == 4.2 and upper_bound_ms(nine, confidence=0.99) == 9.0
    with pytest.raises(ValueError):
        upper_bound_ms([])


def test_one_outlier_among_nine_measurements_does_not_put_a_network_over_its_budget():
    """A network measured at 0.975 × budget eight times and once 40 % slower (a spike) is in band with nine
    measurements; with three, one of which is the spike, every network of the ladder but the smallest counts as
    over, and the smallest is far below the band."""
    class Spiky(Device):
        def __call__(self, archs, repeat):
            self.calls.append((tuple(a.widths["g"] for a in archs), repeat))
            return [a.widths["g"] * 0.01 * (1.4 if repeat == 1 else 1.0) for a in archs]

    widths = (8, 76, 78)
    nine = land(0.8, ladder(widths=widths), Spiky(1.0), LandingConfig(repeats=9, headroom=0.98))
    assert nine.status == LandingStatus.in_band and nine.steps[nine.chosen].widths == {"g": 78}
    assert nine.upper_ms == pytest.approx(0.78) and max(nine.repeats) > 0.8
    three = land(0.8, ladder(widths=widths), Spiky(1.0), LandingConfig(repeats=3, headroom=0.98))
    assert three.status == LandingStatus.no_unit_fits and three.steps[three.chosen].widths == {"g": 8}
    assert all(s.measured_ms > 0.8 for s in three.steps if s.widths != {"g": 8})


def test_the_bisection_brackets_the_target_when_noise_orders_two_neighbours_the_wrong_way_round():
    """Issue 15's uniform 40 %: a wider network measured below a narrower one, and a bisection bracketed on the
    measurements proposed the wider one again ("no unit fits"); bracketed on the target it goes on into the band."""
    measured = {100: 1.03, 93: 1.01, 88: 0.93, 90: 0.92, 92: 0.96}      # 90 below 88: the noise's inversion

    def device(archs, repeat):
        return [measured[a.widths["g"]] for a in archs]

    result = land(1.0, ladder(widths=tuple(range(8, 129))), device, LandingConfig(repeats=1))
    assert [s.widths["g"] for s in result.steps] == [100, 93, 88, 90, 92]
    assert result.status == LandingStatus.in_band and result.steps[result.chosen].widths == {"g": 92}


def test_a_correction_smaller_than_the_methods_unit_is_compounded_not_taken_for_no_unit_fits():
    """Coarse units (OFAR's (structure, resolution) pairs): the search's network predicted well under its target
    measures over the budget, and the corrected target still proposes it. The correction is applied again until
    the method proposes a smaller network, instead of ending over budget with smaller networks untried."""
    device = Device(1.5)                  # 64 ch: predicted 0.64, measured 0.96 for a 0.8 budget
    result = land(0.8, ladder(widths=(40, 64, 96)), device, LandingConfig(repeats=1))
    assert [s.widths["g"] for s in result.steps[:2]] == [64, 40]     # not 64 again
    assert result.status == LandingStatus.no_unit_fits               # 40 ch: 0.60, below the band; 64 over
    assert result.steps[result.chosen].widths == {"g": 40} and result.upper_ms <= 0.8
    assert result.steps[-1].reused and len({c[0] for c in device.calls}) == 2


def test_compounding_stops_at_the_methods_narrowest_network():
    result = land(0.3, ladder(widths=(40, 64)), Device(1.5), LandingConfig(repeats=1))
    assert result.status == LandingStatus.over_budget and result.steps[result.chosen].widths == {"g": 40}
    assert len(result.steps) == 2 and result.steps[-1].reused
