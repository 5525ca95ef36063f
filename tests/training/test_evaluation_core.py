"""The evaluation core on synthetic outcomes whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from bestroute_lc.pricing import Prices
from training.evaluation.calibration import calibrate
from training.evaluation.outcomes import (
    Choices,
    EvalPrompt,
    EvalSet,
    MemberOutcomes,
    evaluate,
)
from training.evaluation.sweep import (
    Baseline,
    aiq,
    apgr,
    drop_at_cost_reduction,
    pareto,
    sweep,
)

PRICES = {"ref": Prices(input_per_mtok=5, output_per_mtok=15), "cheap": Prices(input_per_mtok=0.1, output_per_mtok=0.2)}


def make_set(cheap_always_matches: bool, prompts: int = 20, m: int = 5) -> EvalSet:
    rows = []
    for i in range(prompts):
        # the reference always scores 1; cheap scores 1 on 1 of its m samples, which the
        # proxy ranks first (so best-of-n with n >= ... picks it only if drawn)
        cheap_gt = np.array([1.0] + [0.0] * (m - 1)) if cheap_always_matches else np.zeros(m)
        rows.append(
            EvalPrompt(
                id=f"q{i}", text=f"question {i}", source="s",
                members={
                    "ref": MemberOutcomes(gt=np.ones(m), output_tokens=np.full(m, 100.0), input_tokens=50, proxy=np.zeros(m)),
                    "cheap": MemberOutcomes(gt=cheap_gt, output_tokens=np.full(m, 100.0), input_tokens=50, proxy=cheap_gt.copy()),
                },
            )
        )
    return EvalSet(rows, ["ref", "cheap"], "ref", PRICES, {"ref": False, "cheap": False}, max_n=5)


def test_best_of_n_quality_and_cost_are_exact() -> None:
    data = make_set(True)
    quality, cost = data.quality("proxy"), data.cost()
    # P(the one good sample is among n of 5) = n / 5
    assert quality[0, 1].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert quality[0, 0].tolist() == pytest.approx([1.0] * 5)
    # native billing: prompt once + n outputs
    assert cost[0, 1, 2] == pytest.approx((50 * 0.1 + 3 * 100 * 0.2) / 1e6)
    assert data.quality("random")[0, 1, 4] == pytest.approx(0.2)


def test_cheap_best_of_5_that_always_matches_gives_large_savings_at_zero_drop() -> None:
    data = make_set(True)
    probabilities = np.tile(np.array([[[0.2, 0.4, 0.6, 0.8, 1.0]]]), (20, 1, 1))
    points = sweep(data, probabilities, data.average_output_tokens())
    baseline = Baseline.of(data)
    assert baseline.quality == pytest.approx(1.0)
    assert drop_at_cost_reduction(points, baseline, 0.9) == pytest.approx(0.0, abs=1e-9)
    best = max(points, key=lambda p: baseline.cost_reduction(p) if p.quality >= 1 - 1e-9 else -1)
    assert best.distribution == {"cheap:5": 1.0} and baseline.cost_reduction(best) > 0.9


def test_cheap_that_never_matches_gives_no_savings_without_drop() -> None:
    data = make_set(False)
    probabilities = np.zeros((20, 1, 5))  # a calibrated router: p = 0 everywhere
    points = sweep(data, probabilities, data.average_output_tokens())
    baseline = Baseline.of(data)
    for reduction in (0.1, 0.4):
        drop = drop_at_cost_reduction(points, baseline, reduction)
        assert np.isnan(drop) or drop > 0  # saving anything costs quality
    calibration = calibrate(points, baseline, "ref", "max_quality_drop", 0.0)
    assert calibration.cost_reduction == pytest.approx(0.0) and calibration.reference_share == 1.0


def test_pareto_interpolation_and_areas() -> None:
    data = make_set(True)
    quality, cost = data.quality("proxy"), data.cost()
    points = [evaluate(data, Choices.constant(20, 1, n), quality, cost, knob=n) for n in range(1, 6)]
    points.append(evaluate(data, Choices.constant(20, 0), quality, cost, knob=0))
    baseline = Baseline.of(data)
    frontier = pareto(points)
    assert [p.knob for p in frontier] == [1, 2, 3, 4, 5]  # the reference is dominated by cheap:5
    assert drop_at_cost_reduction(points, baseline, 0.0) == pytest.approx(0.0)
    weakest = points[0]
    assert 0.0 < apgr(points, weakest, baseline) <= 1.0
    assert aiq(points, weakest.cost, baseline.cost) == pytest.approx(1.0, abs=0.05)


def test_calibration_targets() -> None:
    data = make_set(True)
    # p < 1 everywhere, so t = 1 sends everything to the reference
    probabilities = np.tile(np.array([[[0.2, 0.4, 0.6, 0.8, 0.99]]]), (20, 1, 1))
    points = sweep(data, probabilities, data.average_output_tokens())
    baseline = Baseline.of(data)
    result = calibrate(points, baseline, "ref", "cost_reduction", 0.5)
    assert result.cost_reduction >= 0.5 and result.key == "cost_reduction=0.5"
    assert calibrate(points, baseline, "ref", "reference_share", 1.0).reference_share == 1.0
    budget = calibrate(points, baseline, "ref", "budget_per_1000", baseline.cost * 1000 * 0.5)
    assert budget.cost_per_1000 <= baseline.cost * 1000 * 0.5
    with pytest.raises(ValueError, match="no threshold meets"):
        calibrate(points, baseline, "ref", "budget_per_1000", 0.0)
    with pytest.raises(ValueError, match="unknown calibration target"):
        calibrate(points, baseline, "ref", "latency", 1.0)


def random_set(seed: int, prompts: int = 400) -> tuple[EvalSet, np.ndarray]:
    """Prompts of random difficulty d: the cheap member's samples match with probability 1 - d,
    and an (honest) router predicts p[n] = 1 - d**n."""
    rng = np.random.default_rng(seed)
    rows, probabilities = [], []
    for i in range(prompts):
        d = rng.uniform()
        cheap_gt = (rng.uniform(size=5) > d).astype(float)
        rows.append(
            EvalPrompt(
                id=f"q{i}", text="", source="s",
                members={
                    "ref": MemberOutcomes(gt=np.ones(5), output_tokens=np.full(5, 100.0), input_tokens=50, proxy=np.zeros(5)),
                    "cheap": MemberOutcomes(gt=cheap_gt, output_tokens=np.full(5, 100.0), input_tokens=50, proxy=cheap_gt.copy()),
                },
            )
        )
        probabilities.append([[1 - d**n for n in range(1, 6)]])
    return EvalSet(rows, ["ref", "cheap"], "ref", PRICES, {"ref": False, "cheap": False}, max_n=5), np.asarray(probabilities)


@pytest.mark.parametrize(("kind", "value"), [("cost_reduction", 0.4), ("cost_reduction", 0.7), ("max_quality_drop", 2.0)])
def test_calibration_hits_its_target_on_held_out_data(kind: str, value: float) -> None:
    calibration_set, calibration_p = random_set(seed=1)
    held_out, held_out_p = random_set(seed=2)
    tokens = calibration_set.average_output_tokens()
    result = calibrate(sweep(calibration_set, calibration_p, tokens), Baseline.of(calibration_set), "ref", kind, value)
    (point,) = sweep(held_out, held_out_p, tokens, thresholds=[result.threshold])
    baseline = Baseline.of(held_out)
    if kind == "cost_reduction":
        assert baseline.cost_reduction(point) == pytest.approx(value, abs=0.05)
    else:
        assert baseline.quality_drop_pct(point) <= value + 1.0
