"""Verified chains and the code-execution picker, checked against brute-force enumeration of
every ordered draw of samples (the runtime's rule: highest score wins, the first on ties)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bestroute_lc.pricing import Prices
from bestroute_lc.rerankers.code_execution import CodeExecutionReranker
from bestroute_lc.sandbox import SandboxResult
from training.evaluation.chains import (
    Chain,
    StageArrays,
    default_chains,
    verified_chain_labels,
    verified_option_labels,
)
from training.evaluation.outcomes import (
    Choices,
    EvalPrompt,
    EvalSet,
    MemberOutcomes,
    squash,
)

PRICES = {
    "ref": Prices(input_per_mtok=10, output_per_mtok=30),
    "mid": Prices(input_per_mtok=1, output_per_mtok=2),
    "cheap": Prices(input_per_mtok=0.1, output_per_mtok=0.2),
}


def random_set(seed: int = 0, prompts: int = 6, m: int = 5, with_empty: bool = True) -> EvalSet:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(prompts):
        checks = 0 if (with_empty and i == 0) else int(rng.integers(1, 4))
        members = {}
        for member in ("ref", "mid", "cheap"):
            gt = rng.integers(0, 2, m).astype(float)
            passes = np.where(gt > 0, checks, rng.integers(0, checks + 1, m)).astype(float)  # right code passes its examples
            members[member] = MemberOutcomes(
                gt=gt, output_tokens=rng.integers(50, 200, m).astype(float), input_tokens=float(rng.integers(20, 90)),
                proxy=rng.integers(0, 3, m).astype(float),  # coarse: plenty of ties
                passes=passes, checks=np.full(m, float(checks)),
            )
        rows.append(EvalPrompt(f"q{i}", f"prompt {i}", "s", members))
    return EvalSet(rows, ["ref", "mid", "cheap"], "ref", PRICES, {"ref": False, "mid": False, "cheap": True}, max_n=m)


def brute_pick_distribution(ranking: np.ndarray, n: int) -> np.ndarray:
    """P(pick = i) over every ordered n-tuple of distinct samples; highest wins, first on ties."""
    counts = np.zeros(len(ranking))
    total = 0
    for ordered in itertools.permutations(range(len(ranking)), n):
        best = ordered[0]
        for j in ordered[1:]:
            if ranking[j] > ranking[best]:
                best = j
        counts[best] += 1
        total += 1
    return counts / total


def brute_chain(prompt: EvalPrompt, chain: Chain, picker: str, value: str = "gt", reference_gt=None) -> float:
    """Expected value of the chain's answer by enumeration, stage by stage (fresh draws)."""
    def stage_value(stage, rest: float | None) -> float:
        member, n = stage
        outcome = prompt.members[member]
        dist = brute_pick_distribution(outcome.ranking(picker), n)
        if value == "gt":
            own = outcome.gt
        else:
            own = np.array([np.mean([g >= r for r in reference_gt]) for g in outcome.gt])
        if rest is None:
            return float(dist @ own)
        v = outcome.verified()
        return float(sum(p * (v[i] * own[i] + (1 - v[i]) * rest) for i, p in enumerate(dist)))

    value_after = stage_value(chain.final, None)
    for stage in reversed(chain.stages):
        value_after = stage_value(stage, value_after)
    return value_after


def test_execution_picker_mirrors_the_reranker_and_verifier_follows_visible_examples() -> None:
    outcome = MemberOutcomes(
        gt=np.array([1.0, 0, 1, 0]), output_tokens=np.ones(4), input_tokens=1.0,
        proxy=np.array([0.3, 2.0, -1.0, 2.0]), passes=np.array([2.0, 1, 2, 0]), checks=np.full(4, 2.0),
    )
    results = [SandboxResult(passed=int(p), total=2) for p in outcome.passes]
    expected = CodeExecutionReranker._combine(results, list(outcome.proxy), True, 4)
    np.testing.assert_allclose(outcome.ranking("execution"), expected)
    assert outcome.verified().tolist() == [1.0, 0.0, 1.0, 0.0]
    # no visible examples: the reranker returns the tiebreaker's scores; the verifier cannot judge
    empty = MemberOutcomes(gt=np.zeros(2), output_tokens=np.ones(2), input_tokens=1.0, proxy=np.array([0.5, 1.0]),
                           passes=np.zeros(2), checks=np.zeros(2))
    assert empty.ranking("execution").tolist() == [0.5, 1.0]
    assert empty.verified("accept").tolist() == [1.0, 1.0] and empty.verified("reject").tolist() == [0.0, 0.0]
    assert squash(np.array([1e6, np.nan]))[0] < 1.0 and squash(np.array([np.nan]))[0] == 0.0


@pytest.mark.parametrize("picker", ["proxy", "execution", "random", "oracle"])
def test_single_and_two_stage_chains_equal_brute_force(picker: str) -> None:
    data = random_set(seed=1, m=4)
    arrays = StageArrays.of(data, picker)
    chains = [
        Chain((("cheap", 2),), ("ref", 1)),
        Chain((("mid", 1),), ("ref", 1)),
        Chain((("cheap", 1), ("cheap", 3)), ("ref", 1)),
        Chain((("cheap", 2), ("mid", 2)), ("ref", 2)),
    ]
    for chain in chains:
        quality, cost, answered = arrays.chain(chain)
        for qi, prompt in enumerate(data.prompts):
            assert quality[qi] == pytest.approx(brute_chain(prompt, chain, picker)), (chain.label, qi)
        # answered shares add up to 1; cost = first stage + P(reject) x the rest
        total = sum(answered.values())
        np.testing.assert_allclose(total, 1.0)
        if len(chain.stages) == 1:
            (stage,) = chain.stages
            k, n = data.members.index(stage[0]), stage[1]
            fk = data.members.index(chain.final[0])
            np.testing.assert_allclose(cost, arrays.cost[:, k, n - 1] + arrays.rejected[:, k, n - 1] * arrays.cost[:, fk, chain.final[1] - 1])


def test_verified_labels_equal_brute_force_and_escalated_router_arrays() -> None:
    data = random_set(seed=2, m=4)
    chain = Chain((("mid", 2), ("mid", 3)), ("ref", 1))
    labels = verified_chain_labels(data, chain, "proxy")
    for qi, prompt in enumerate(data.prompts):
        ref_gt = prompt.members["ref"].gt
        assert labels[qi] == pytest.approx(brute_chain(prompt, chain, "proxy", value="match", reference_gt=ref_gt))
    option = verified_option_labels(data, "proxy")
    assert option.shape == (6, 2, 4)
    single = verified_chain_labels(data, Chain((("cheap", 3),), ("ref", 1)), "proxy")
    np.testing.assert_allclose(option[:, data.routed.index("cheap"), 2], single)
    # Algorithm 1's per-prompt choices, each verified and escalated, equal the per-prompt chains
    arrays = StageArrays.of(data, "proxy")
    choices = Choices(np.array([2, 1, 0, 2, 1, 2]), np.array([1, 3, 1, 4, 2, 2]))
    point = arrays.evaluate_escalated(choices)
    expected = []
    for qi, (k, n) in enumerate(zip(choices.member, choices.n)):
        member = data.members[k]
        expected.append(arrays.quality[qi, k, n - 1] if member == "ref" else arrays.chain(Chain(((member, int(n)),), ("ref", 1)))[0][qi])
    assert point.quality == pytest.approx(np.mean(expected))
    assert sum(point.distribution.values()) == pytest.approx(1.0)


def test_default_chains_and_errors() -> None:
    data = random_set(seed=3, m=3)
    chains = default_chains(data)
    assert len(chains) == 2 * 3 + 2 * 3  # (k, n) and (k, n1 < n2) for the two cheaper members
    assert chains[0].escalation == [("ref", 1)] and chains[0].label == "mid:1 > ref:1 [execution]"
    with pytest.raises(ValueError, match="once"):
        Chain((("mid", 1), ("mid", 1)), ("ref", 1))
    for prompt in data.prompts:
        for outcome in prompt.members.values():
            outcome.passes = None
    with pytest.raises(ValueError, match="unavailable"):
        StageArrays.of(data, "proxy")
