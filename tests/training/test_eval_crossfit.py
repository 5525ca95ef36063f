"""Cross-fitted router heads chosen by the routing metric (``--router-fit crossfit``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.test_eval_policies import difficulty_set, labels_of
from training.evaluation.experiment import Settings
from training.evaluation.frozen import (
    cross_fit_router_heads,
    inner_folds,
    router_probabilities_from_features,
)
from training.evaluation.policies import PolicySet, RoutingArea
from training.evaluation.sweep import Baseline, aiq, curve, route_table, sweep


def test_vectorised_threshold_lookup_and_curve_match_the_exact_sweep() -> None:
    data = difficulty_set(0, prompts=15)
    rng = np.random.default_rng(1)
    probabilities = (0.9 * rng.uniform(size=(15, 1, 5))).round(2)
    tokens = data.average_output_tokens()
    table = route_table(data, probabilities, tokens)
    thresholds = np.concatenate([rng.uniform(size=40), [0.0, 1.0, 0.45]])
    members, ns = table.at_many(thresholds, chunk=7)
    for row, t in enumerate(thresholds):
        choices = table.at(float(t))
        assert members[row].tolist() == choices.member.tolist() and ns[row].tolist() == choices.n.tolist()
    exact = sweep(data, probabilities, tokens, picker="proxy")
    fast = curve(data, probabilities, tokens, data.quality("proxy"), data.cost())
    assert len(fast) == len(exact)
    np.testing.assert_allclose([(p.cost, p.quality, p.knob) for p in fast], [(p.cost, p.quality, p.knob) for p in exact])


def test_routing_area_is_aiq_of_the_router_curve_and_scores_subsets() -> None:
    data = difficulty_set(2, prompts=30)
    probabilities = labels_of(data)
    tokens = data.average_output_tokens()
    metric = RoutingArea(data, "proxy", tokens, max_reduction=None)
    points = [p.point for p in PolicySet(data, "proxy", probabilities=probabilities, avg_output_tokens=tokens).router()]
    base = Baseline.of(data)
    assert metric(probabilities) == pytest.approx(aiq(points, metric.low, base.cost, base))
    rows = np.arange(0, 30, 3)
    sub = data.subset([data.prompts[r].id for r in rows])
    assert metric(probabilities[rows], rows) == pytest.approx(RoutingArea(sub, "proxy", tokens, max_reduction=None)(probabilities[rows]))
    # informative probabilities route better than constant ones
    assert metric(probabilities) > metric(np.full_like(probabilities, 0.5)) + 0.01


def test_cross_fitting_uses_every_prompt_and_learns_the_signal() -> None:
    data = difficulty_set(3, prompts=80)
    labels = labels_of(data)
    rng = np.random.default_rng(0)
    hard = np.asarray([p.text.startswith("hard") for p in data.prompts], dtype=float)
    features = np.column_stack([hard + 0.3 * rng.normal(size=80), rng.normal(size=(80, 5))])
    # the whole cost range: in Table 1's range best-of-4 of the cheap member is already perfect here
    metric = RoutingArea(data, "proxy", data.average_output_tokens(), max_reduction=None)
    weight, bias, info = cross_fit_router_heads(features, labels, metric, folds=4, seed=0, components_grid=(2, None),
                                                l2_grid=(1e-2, 1.0))
    assert info["oof"].shape == labels.shape
    assert len(info["candidates"]) == 2 * 2 * 2  # directions x L2 x calibration
    assert sum(c["tied_with_best"] for c in info["candidates"]) >= 1
    # deterministic
    again = cross_fit_router_heads(features, labels, metric, folds=4, seed=0, components_grid=(2, None), l2_grid=(1e-2, 1.0))
    np.testing.assert_array_equal(again[0], weight)
    # out of fold, the heads still separate easy from hard prompts, and route better than a constant
    oof = info["oof"][:, 0, 0]
    assert oof[hard == 0].mean() > oof[hard == 1].mean() + 0.2
    assert metric(info["oof"]) > metric(np.broadcast_to(labels.mean(axis=0), labels.shape).copy())
    probabilities = router_probabilities_from_features(features, weight, bias, 1, 5)
    assert probabilities.shape == labels.shape


def test_inner_folds_partition_the_prompts() -> None:
    parts = inner_folds(23, 5, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_crossfit_needs_the_frozen_encoder() -> None:
    with pytest.raises(ValueError, match="crossfit needs --encoder frozen"):
        Settings(encoder="finetune", router_fit="crossfit")
    with pytest.raises(ValueError, match="unknown router fit"):
        Settings(router_fit="bagging")


def test_head_calibration_chosen_by_the_routing_metric_keeps_a_router_with_signal() -> None:
    """BCE with the one-standard-error rule can shrink a useful router to a constant; with the
    routing metric the shrinkage (or the raw heads) is what routes best out of fold."""
    from training.train_router import fit_head_calibration

    data = difficulty_set(4, prompts=60)
    labels = labels_of(data)
    logits = np.log(np.clip(labels, 0.02, 0.98) / (1 - np.clip(labels, 0.02, 0.98)))  # informative heads
    metric = RoutingArea(data, "proxy", data.average_output_tokens(), max_reduction=None)
    calibration = fit_head_calibration(labels, logits, labels, seed=0, routing_score=metric)
    scores = calibration.fit["routing_score_by_weight"]
    assert set(scores) == {"raw", *(str(w) for w in np.round(np.linspace(0, 1, 11), 2))}
    assert calibration.fit["chosen"] != "0.0" and calibration.weight > 0
    assert scores[calibration.fit["chosen"]] == max(scores.values())
    assert scores[calibration.fit["chosen"]] > scores["0.0"]  # better than the prior (a constant policy)
