"""Policy families on one table: the router's exact threshold envelope, Table 1 on the upper
convex hull, and calibration choosing among router, constant and verified policies."""

from __future__ import annotations

import numpy as np
import pytest

from bestroute_lc.artifacts import PolicyChoice, RouterConfig
from bestroute_lc.pricing import Prices
from training.evaluation.calibration import choose_policy
from training.evaluation.frozen import (
    fit_router_heads,
    router_probabilities_from_features,
)
from training.evaluation.outcomes import (
    EvalPrompt,
    EvalSet,
    MemberOutcomes,
    OperatingPoint,
)
from training.evaluation.policies import PolicySet, reference_share
from training.evaluation.sweep import (
    Baseline,
    distinct_thresholds,
    drop_at_cost_reduction,
    route,
    route_table,
    sweep,
    upper_hull,
)
from training.labels import match_labels

PRICES = {"ref": Prices(input_per_mtok=5, output_per_mtok=15), "cheap": Prices(input_per_mtok=0.1, output_per_mtok=0.2)}


def difficulty_set(seed: int, prompts: int = 40, m: int = 5) -> EvalSet:
    """Easy prompts: every cheap sample is right; hard ones: 2 of 5. The reference is always
    right; the proxy ranks right samples first; every sample passes its visible examples iff right."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(prompts):
        hard = rng.uniform() < 0.5
        gt = np.array([1.0, 1.0, 0.0, 0.0, 0.0]) if hard else np.ones(m)
        rng.shuffle(gt)
        rows.append(EvalPrompt(
            f"{seed}-{i}", f"{'hard' if hard else 'easy'} question {i}", "s",
            {
                "ref": MemberOutcomes(np.ones(m), np.full(m, 100.0), 40.0, np.zeros(m), np.ones(m), np.ones(m)),
                "cheap": MemberOutcomes(gt, np.full(m, 100.0), 40.0, gt.copy(), gt.copy(), np.ones(m)),
            },
        ))
    return EvalSet(rows, ["ref", "cheap"], "ref", PRICES, {"ref": False, "cheap": False}, max_n=m)


def labels_of(data: EvalSet) -> np.ndarray:
    return np.stack([
        [match_labels(p.members["cheap"].proxy, p.members["cheap"].gt, p.members["ref"].gt.tolist(), range(1, 6))]
        for p in data.prompts
    ])


def test_the_threshold_envelope_is_exact() -> None:
    data = difficulty_set(0, prompts=12)
    rng = np.random.default_rng(0)
    probabilities = (0.9 * rng.uniform(size=(12, 1, 5))).round(2)  # coarse: shared values across prompts
    tokens = data.average_output_tokens()
    table = route_table(data, probabilities, tokens)
    for t in np.concatenate([rng.uniform(size=30), [0.0, 1.0, 0.5]]):
        direct = route(data, probabilities, float(t), tokens)
        looked_up = table.at(float(t))
        assert direct.member.tolist() == looked_up.member.tolist() and direct.n.tolist() == looked_up.n.tolist()
    grid = {(p.cost, p.quality) for p in sweep(data, probabilities, tokens, thresholds=np.linspace(0, 1, 1001))}
    exact = {(p.cost, p.quality) for p in sweep(data, probabilities, tokens)}
    assert grid <= exact  # every point a fine grid finds is in the envelope
    thresholds = distinct_thresholds(probabilities, data)
    assert thresholds[:-1] == sorted(set(probabilities.ravel().tolist())) and thresholds[-1] > probabilities.max()


def test_table1_reads_the_upper_convex_hull_with_the_reference() -> None:
    base = Baseline(cost=1.0, quality=1.0)
    cheap, dip, ref = OperatingPoint(0.2, 0.6, {}), OperatingPoint(0.6, 0.7, {}), OperatingPoint(1.0, 1.0, {})
    assert upper_hull([cheap, dip, ref]) == [cheap, ref]  # dip is under the chord
    # at 40 % saving (cost 0.6): the chord cheap -> ref gives 0.8, not dip's 0.7
    assert drop_at_cost_reduction([cheap, dip], base, 0.4) == pytest.approx(20.0)
    assert np.isnan(drop_at_cost_reduction([cheap, dip], base, 0.9))  # cheaper than anything
    # groups are not mixed with each other: the best group's hull at each cost
    a = [OperatingPoint(0.2, 0.2, {}, group="a")]
    b = [OperatingPoint(0.5, 0.9, {}, group="b")]
    assert drop_at_cost_reduction(a + b, base, 0.6) == pytest.approx(100 * (1 - (0.2 + 0.2 / 0.8 * 0.8)))


def test_choose_policy_rules_and_the_written_policy_choice() -> None:
    data = difficulty_set(1)
    probabilities = labels_of(data)  # a perfect router
    policies = PolicySet(data, "proxy", probabilities=probabilities, verifier="execution")
    candidates = policies.all()
    kinds = {(p.kind, bool(p.verifier)) for p in candidates}
    assert kinds == {("router", False), ("router", True), ("constant", False), ("verified", True)}
    base = Baseline.of(data)
    for kind, value in (("cost_reduction", 0.4), ("max_quality_drop", 0.0), ("budget_per_1000", 1.0), ("reference_share", 0.5)):
        result = choose_policy(candidates, base, "ref", kind, value, prompts=len(data.prompts))
        point = result.policy.point
        if kind == "cost_reduction":
            assert base.cost_reduction(point) >= value and all(
                p.point.quality <= point.quality + 1e-12 for p in candidates if base.cost_reduction(p.point) >= value
            )
        elif kind == "max_quality_drop":
            assert base.quality_drop_pct(point) <= 1e-9 and all(
                p.point.cost >= point.cost - 1e-15 for p in candidates if base.quality_drop_pct(p.point) <= 1e-9
            )
        elif kind == "reference_share":
            assert reference_share(point, "ref") >= 0.5
        choice = result.choice()
        assert isinstance(choice, PolicyChoice) and choice.reason.startswith(("best", "cheapest"))
        assert choice.validation["prompts"] == len(data.prompts)
        RouterConfig.model_validate({**_router_config(), "policies": {result.key: choice.model_dump()}})
    # a perfect router with verified escalation: drop 0 at a large saving
    zero = choose_policy(candidates, base, "ref", "max_quality_drop", 0.0)
    assert base.cost_reduction(zero.policy.point) > 0.8
    with pytest.raises(ValueError, match="no policy meets"):
        choose_policy(candidates, base, "ref", "budget_per_1000", 0.0)


def test_a_chosen_policy_is_scored_on_other_prompts_with_the_same_code() -> None:
    validation, test = difficulty_set(2), difficulty_set(3)
    val_policies = PolicySet(validation, "execution", probabilities=labels_of(validation), verifier="execution")
    test_policies = PolicySet(test, "execution", probabilities=labels_of(test), verifier="execution")
    by_label = {p.label: p for p in test_policies.all()}
    for policy in val_policies.all()[::7]:
        if policy.kind == "router":
            continue  # thresholds are per set; router policies are checked below
        assert test_policies.evaluate(policy).point == by_label[policy.label].point
    router = next(p for p in val_policies.router(escalate=True))
    (direct,) = test_policies.router([router.threshold], escalate=True)
    assert test_policies.evaluate(router).point == direct.point


def test_with_shuffled_labels_calibration_falls_back_to_the_best_constant() -> None:
    """No signal: a router trained on labels shuffled across prompts. Calibration on validation
    is never below the best constant policy meeting the target, and picks it for no-drop."""
    train, validation = difficulty_set(10, prompts=60), difficulty_set(11, prompts=30)
    rng = np.random.default_rng(0)
    features = {name: rng.normal(size=(len(s.prompts), 8)) for name, s in (("train", train), ("validation", validation))}
    shuffled = labels_of(train)[rng.permutation(len(train.prompts))]
    weight, bias, _ = fit_router_heads(features["train"], shuffled, features["validation"], labels_of(validation))
    probabilities = router_probabilities_from_features(features["validation"], weight, bias, 1, 5)
    policies = PolicySet(validation, "proxy", probabilities=probabilities)
    candidates = policies.all()
    constants = policies.constants()
    base = Baseline.of(validation)
    for kind, value in (("cost_reduction", 0.1), ("cost_reduction", 0.4), ("cost_reduction", 0.6), ("max_quality_drop", 0.0)):
        chosen = choose_policy(candidates, base, "ref", kind, value)
        best_constant = choose_policy(constants, base, "ref", kind, value)
        if kind == "cost_reduction":
            assert chosen.policy.point.quality >= best_constant.policy.point.quality - 1e-12
        else:
            assert chosen.policy.point.cost <= best_constant.policy.point.cost + 1e-15
            assert (chosen.policy.kind, chosen.policy.member, chosen.policy.n) == ("constant", "cheap", 4)
            assert "best router" in chosen.reason


def _router_config() -> dict:
    return {
        "backbone": "x", "encoder_config": {}, "tokenizer": {"class_name": "t", "vocab_size": 1, "fingerprint": "f"},
        "members": ["cheap"], "reference": "ref", "max_n": 5,
    }
