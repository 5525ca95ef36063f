"""Algorithm 1 (bestroute_lc.policy): filter, cost estimate, tie-breaking, fallbacks."""

from __future__ import annotations

import math

import pytest

from bestroute_lc.policy import (
    Decision,
    MemberCosts,
    Option,
    choose,
    forced,
    validate_threshold,
)

# Prices chosen so every estimate is easy to compute by hand.
REF = MemberCosts(input_per_mtok=5.0, output_per_mtok=15.0, avg_output_tokens=100, prompt_billed_per_sample=True)
SMALL = MemberCosts(input_per_mtok=0.1, output_per_mtok=0.2, avg_output_tokens=100, prompt_billed_per_sample=True)
MID = MemberCosts(input_per_mtok=1.0, output_per_mtok=2.0, avg_output_tokens=100, prompt_billed_per_sample=False)
COSTS = {"big": REF, "small": SMALL, "mid": MID}


def _choose(probs, threshold, input_tokens=1000, costs=COSTS, reference="big"):
    return choose(probs, costs, reference, input_tokens, threshold)


# -- cost estimate ------------------------------------------------------------------


def test_estimate_parallel_bills_prompt_per_sample():
    costs = MemberCosts(input_per_mtok=2.0, output_per_mtok=10.0, avg_output_tokens=50, prompt_billed_per_sample=True)
    # n=3, 1000 prompt tokens: 3 * 1000 * 2 + 3 * 50 * 10 = 6000 + 1500 = 7500 -> /1e6
    assert costs.estimate(3, 1000) == pytest.approx(7500 / 1e6)
    assert costs.estimate(1, 1000) == pytest.approx((2000 + 500) / 1e6)


def test_estimate_native_bills_prompt_once():
    costs = MemberCosts(input_per_mtok=2.0, output_per_mtok=10.0, avg_output_tokens=50, prompt_billed_per_sample=False)
    # n=3: 1 * 1000 * 2 + 3 * 50 * 10 = 2000 + 1500 = 3500
    assert costs.estimate(3, 1000) == pytest.approx(3500 / 1e6)
    # n=1 is the same under both billing modes
    parallel = MemberCosts(2.0, 10.0, 50, True)
    assert costs.estimate(1, 1000) == pytest.approx(parallel.estimate(1, 1000))


def test_estimate_zero_prompt_tokens_is_output_only():
    assert SMALL.estimate(4, 0) == pytest.approx(4 * 100 * 0.2 / 1e6)


# -- filter and selection -----------------------------------------------------------


def test_picks_cheapest_passing_option_and_reports_its_cost():
    # small n=1 fails (0.5 < 0.6), small n=2 passes; mid n=1 passes but costs more.
    probs = {"small": [0.5, 0.7, 0.9], "mid": [0.8, 0.9, 0.95]}
    d = _choose(probs, 0.6)
    assert isinstance(d, Decision)
    assert (d.member, d.n, d.reason) == ("small", 2, "router")
    # small n=2 parallel: 2*1000*0.1 + 2*100*0.2 = 200 + 40 = 240 -> 2.4e-4
    assert d.estimated_cost_usd == pytest.approx(240 / 1e6)
    assert d.threshold == 0.6


def test_threshold_filter_is_inclusive():
    probs = {"small": [0.6], "mid": [0.9]}
    assert _choose(probs, 0.6).member == "small"
    assert _choose(probs, 0.6000001).member == "mid"


def test_nothing_passes_gives_reference_with_n1():
    probs = {"small": [0.1, 0.2], "mid": [0.3, 0.4]}
    d = _choose(probs, 0.9)
    assert (d.member, d.n, d.reason) == ("big", 1, "reference")
    assert d.estimated_cost_usd == pytest.approx((1000 * 5 + 100 * 15) / 1e6)
    assert d.fallbacks == (Option("big", 1, None, pytest.approx((1000 * 5 + 100 * 15) / 1e6)),)
    assert d.fallbacks[0].match_probability is None


def test_threshold_zero_picks_globally_cheapest():
    probs = {"mid": [0.0, 0.0, 0.0], "small": [0.0, 0.0, 0.0]}
    d = _choose(probs, 0.0)
    all_options = [(m, n, COSTS[m].estimate(n, 1000)) for m in probs for n in (1, 2, 3)]
    cheapest = min(all_options, key=lambda x: x[2])
    assert (d.member, d.n) == cheapest[:2] == ("small", 1)
    assert len(d.fallbacks) == 6 + 1


def test_threshold_one_only_accepts_probability_one():
    probs = {"small": [0.999999, 1.0], "mid": [1.0]}
    d = _choose(probs, 1.0)
    # small n=2: 2*100 + 2*20 = 240; mid n=1: 1000 + 200 = 1200 -> small n=2
    assert (d.member, d.n) == ("small", 2)
    assert {(o.member, o.n) for o in d.fallbacks[:-1]} == {("small", 2), ("mid", 1)}
    assert _choose({"small": [0.999999]}, 1.0).reason == "reference"


def test_native_billing_can_beat_parallel_for_large_n():
    # Same prices; only billing differs. With a long prompt, native n=3 is cheaper.
    par = MemberCosts(1.0, 1.0, 10, prompt_billed_per_sample=True)
    nat = MemberCosts(1.0, 1.0, 10, prompt_billed_per_sample=False)
    costs = {"ref": REF, "par": par, "nat": nat}
    probs = {"par": [0.0, 0.0, 0.9], "nat": [0.0, 0.0, 0.9]}
    d = choose(probs, costs, "ref", 10_000, 0.5)
    assert (d.member, d.n) == ("nat", 3)
    assert d.estimated_cost_usd == pytest.approx((10_000 + 30) / 1e6)
    assert d.fallbacks[1].member == "par"
    assert d.fallbacks[1].estimated_cost_usd == pytest.approx((30_000 + 30) / 1e6)


# -- deterministic tie-breaking -----------------------------------------------------


SAME = MemberCosts(1.0, 1.0, 100, prompt_billed_per_sample=True)


def test_tie_on_cost_goes_to_higher_probability():
    costs = {"ref": REF, "a": SAME, "b": SAME}
    d = choose({"a": [0.7], "b": [0.8]}, costs, "ref", 100, 0.5)
    assert d.member == "b"
    assert [o.member for o in d.fallbacks] == ["b", "a", "ref"]


def test_tie_on_cost_and_probability_goes_to_smaller_n():
    # Zero-cost member: every n costs 0, so n decides.
    free = MemberCosts(0.0, 0.0, 100, prompt_billed_per_sample=True)
    costs = {"ref": REF, "a": free}
    d = choose({"a": [0.8, 0.8, 0.8]}, costs, "ref", 100, 0.5)
    assert d.n == 1
    assert [o.n for o in d.fallbacks[:-1]] == [1, 2, 3]


def test_full_tie_goes_to_head_order():
    costs = {"ref": REF, "a": SAME, "b": SAME}
    assert choose({"a": [0.8], "b": [0.8]}, costs, "ref", 100, 0.5).member == "a"
    assert choose({"b": [0.8], "a": [0.8]}, costs, "ref", 100, 0.5).member == "b"


def test_fallback_chain_sorted_by_cost_and_ends_with_reference():
    probs = {"mid": [0.9, 0.9, 0.9], "small": [0.4, 0.9, 0.9]}
    d = _choose(probs, 0.5)
    chain = d.fallbacks
    assert chain[0].member == d.member and chain[0].n == d.n
    assert chain[-1] == Option("big", 1, None, pytest.approx(REF.estimate(1, 1000)))
    costs = [o.estimated_cost_usd for o in chain[:-1]]
    assert costs == sorted(costs)
    assert {(o.member, o.n) for o in chain[:-1]} == {("mid", 1), ("mid", 2), ("mid", 3), ("small", 2), ("small", 3)}
    # small (0.4) n=1 was filtered out
    assert ("small", 1) not in {(o.member, o.n) for o in chain}
    for o in chain[:-1]:
        assert o.match_probability == probs[o.member][o.n - 1]
        assert o.estimated_cost_usd == pytest.approx(COSTS[o.member].estimate(o.n, 1000))


def test_reference_appears_once_in_chain():
    d = _choose({"small": [0.9]}, 0.5)
    assert [o.member for o in d.fallbacks] == ["small", "big"]


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), -float("inf"), "abc", None, [0.5], object()])
def test_invalid_threshold_rejected(bad):
    with pytest.raises(ValueError, match="threshold"):
        validate_threshold(bad)
    with pytest.raises(ValueError, match="threshold"):
        _choose({"small": [0.9]}, bad)


@pytest.mark.parametrize("good, expected", [(0, 0.0), (1, 1.0), ("0.25", 0.25), (0.5, 0.5)])
def test_valid_threshold_is_returned_as_float(good, expected):
    value = validate_threshold(good)
    assert isinstance(value, float) and value == expected


def test_nan_probability_rejected():
    with pytest.raises(ValueError, match="NaN"):
        _choose({"small": [0.9, float("nan")]}, 0.5)


def test_nan_probability_rejected_even_below_threshold_position():
    # The NaN must be caught regardless of the threshold (it would silently fail p >= t).
    with pytest.raises(ValueError, match=r"'mid'.*n=1"):
        _choose({"small": [0.1], "mid": [float("nan")]}, 0.0)


def test_negative_input_tokens_rejected():
    with pytest.raises(ValueError, match="input_tokens"):
        _choose({"small": [0.9]}, 0.5, input_tokens=-1)


def test_missing_costs_rejected_naming_member():
    with pytest.raises(ValueError, match="ghost"):
        _choose({"ghost": [0.9]}, 0.5)
    with pytest.raises(ValueError, match="nobody"):
        _choose({"small": [0.9]}, 0.5, reference="nobody")


def test_reference_with_heads_rejected():
    with pytest.raises(ValueError, match="reference"):
        _choose({"small": [0.9], "big": [0.9]}, 0.5)


def test_empty_probabilities_gives_reference():
    d = _choose({}, 0.0)
    assert (d.member, d.n, d.reason) == ("big", 1, "reference")


# -- forced -------------------------------------------------------------------------


def test_forced_non_reference_has_reference_fallback():
    d = forced("mid", 2, COSTS, "big", 1000, 0.3)
    assert (d.member, d.n, d.reason, d.threshold) == ("mid", 2, "forced", 0.3)
    # mid native: 1000*1 + 2*100*2 = 1400
    assert d.estimated_cost_usd == pytest.approx(1400 / 1e6)
    assert [(o.member, o.n) for o in d.fallbacks] == [("mid", 2), ("big", 1)]
    assert all(o.match_probability is None for o in d.fallbacks)


def test_forced_reference_has_single_option():
    d = forced("big", 3, COSTS, "big", 10, 0.5)
    assert [(o.member, o.n) for o in d.fallbacks] == [("big", 3)]
    assert d.estimated_cost_usd == pytest.approx(REF.estimate(3, 10))


def test_forced_validation():
    with pytest.raises(ValueError, match="unknown pool member 'ghost'"):
        forced("ghost", 1, COSTS, "big", 10, 0.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        forced("small", 0, COSTS, "big", 10, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        forced("small", 1, COSTS, "big", 10, 2.0)


# -- property -----------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

if not HAVE_HYPOTHESIS:

    @pytest.mark.skip(reason="hypothesis is not installed (pip install hypothesis)")
    def test_property_choice_is_cheapest_valid_and_meets_threshold():
        pass

else:
    _member_costs = st.builds(
        MemberCosts,
        input_per_mtok=st.floats(0, 50, allow_nan=False),
        output_per_mtok=st.floats(0, 50, allow_nan=False),
        avg_output_tokens=st.floats(1, 2000, allow_nan=False),
        prompt_billed_per_sample=st.booleans(),
    )

    @st.composite
    def _problems(draw):
        k = draw(st.integers(1, 4))
        max_n = draw(st.integers(1, 5))
        names = [f"m{i}" for i in range(k)]
        probs = {m: draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=max_n, max_size=max_n)) for m in names}
        costs = {m: draw(_member_costs) for m in [*names, "ref"]}
        threshold = draw(st.floats(0, 1, allow_nan=False))
        input_tokens = draw(st.integers(0, 20_000))
        return probs, costs, threshold, input_tokens

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_problems())
    def test_property_choice_is_cheapest_valid_and_meets_threshold(problem):
        probs, costs, threshold, input_tokens = problem
        d = choose(probs, costs, "ref", input_tokens, threshold)
        valid = [
            (m, n, costs[m].estimate(n, input_tokens))
            for m, ps in probs.items()
            for n, p in enumerate(ps, start=1)
            if p >= threshold
        ]
        if not valid:
            assert (d.member, d.n, d.reason) == ("ref", 1, "reference")
            assert len(d.fallbacks) == 1
            return
        assert d.reason == "router"
        assert probs[d.member][d.n - 1] >= threshold
        assert all(d.estimated_cost_usd <= c for _, _, c in valid)
        assert math.isclose(d.estimated_cost_usd, costs[d.member].estimate(d.n, input_tokens))
        # the chain holds exactly the valid options plus the reference, sorted by cost
        assert len(d.fallbacks) == len(valid) + 1
        assert {(o.member, o.n) for o in d.fallbacks[:-1]} == {(m, n) for m, n, _ in valid}
        chain_costs = [o.estimated_cost_usd for o in d.fallbacks[:-1]]
        assert chain_costs == sorted(chain_costs)
        assert (d.fallbacks[-1].member, d.fallbacks[-1].n) == ("ref", 1)


# -- verified-option heads: the escalation priced in ---------------------------------


def test_rejection_prices_the_escalation_into_the_estimate():
    probs = {"small": [0.9], "mid": [0.9]}
    # no rejection: small n=1 (1.2e-4) beats mid n=1 (1.2e-3)
    assert _choose(probs, 0.5).member == "small"
    # small rejected 90 % of the time: 120 + 0.9 * 6500 = 5970 (e-6) > mid's 1200 + 0.1 * 6500 = 1850
    d = choose(probs, COSTS, "big", 1000, 0.5, rejection={"small": [0.9], "mid": [0.1]})
    assert (d.member, d.n) == ("mid", 1)
    assert d.estimated_cost_usd == pytest.approx(1850 / 1e6)
    assert [o.member for o in d.fallbacks] == ["mid", "small", "big"]


def test_an_attempt_expected_to_cost_more_than_the_reference_is_dropped():
    # small: 120 + 0.99 * 6500 = 6555 >= 6500: calling the reference at once is cheaper
    d = choose({"small": [0.95]}, COSTS, "big", 1000, 0.5, rejection={"small": [0.99]})
    assert (d.member, d.reason) == ("big", "reference") and [o.member for o in d.fallbacks] == ["big"]


@pytest.mark.parametrize("rejection", [{"small": [1.5]}, {"small": [math.nan]}, {"small": []}, {"mid": [0.1]}])
def test_invalid_or_missing_rejection_is_a_clear_error(rejection):
    with pytest.raises(ValueError, match="rejection probability"):
        choose({"small": [0.9]}, COSTS, "big", 1000, 0.5, rejection=rejection)
