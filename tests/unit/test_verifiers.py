"""Verifiers on their own (bestroute_lc.verifiers): execution, agreement, reward levels."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bestroute_lc import verifiers
from bestroute_lc.answers import extract_numeric_answer
from bestroute_lc.isolation import IsolationUnavailableError
from bestroute_lc.rerankers.code_execution import CodeExecutionReranker
from bestroute_lc.verifiers import (
    AgreementVerifier,
    ExecutionVerifier,
    RewardLevelVerifier,
    Verdict,
    verifier_from_name,
)
from tests.helpers import LengthReranker

PROMPT = '''def add(a, b):
    """Add two integers.
    >>> add(2, 3)
    5
    >>> add(-1, 1)
    0
    >>> add(10, 5)
    15
    """
'''
CORRECT = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
BODY_ONLY = "    return a + b\n"
# Hard-codes the visible examples' answers: passes them, as it would honestly.
HARD_CODED = "def add(a, b):\n    return {(2, 3): 5, (-1, 1): 0, (10, 5): 15}[(a, b)]\n"
# Hard-codes only some of them.
PARTLY_HARD_CODED = "def add(a, b):\n    return {(2, 3): 5, (-1, 1): 0}.get((a, b), 0)\n"


# -- Verdict --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_verdict_confidence_must_be_in_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        Verdict(True, bad, "x")


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        AgreementVerifier().verify("q", ["1", "2"], 2)
    with pytest.raises(ValueError, match="score"):
        AgreementVerifier().verify("q", ["1", "2"], 0, [1.0])
    with pytest.raises(ValueError, match="on_unverifiable"):
        AgreementVerifier(on_unverifiable="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_agreement"):
        AgreementVerifier(min_agreement=0)


# -- execution --------------------------------------------------------------------------


def test_execution_accepts_a_correct_program_and_a_correct_body() -> None:
    verifier = ExecutionVerifier()
    for candidate in (CORRECT, BODY_ONLY):
        verdict = verifier.verify(PROMPT, [candidate], 0)
        assert verdict.accepted and verdict.confidence == 1.0 and verdict.verifiable
        assert "passed 3 of 3" in verdict.reason


def test_execution_rejects_a_wrong_program() -> None:
    verdict = ExecutionVerifier().verify(PROMPT, [CORRECT, WRONG], 1)
    assert not verdict.accepted
    # a - b: add(-1, 1) would need 0 and gives -2; add(2, 3) gives -1; add(10, 5) gives 5.
    assert verdict.confidence == 0.0 and "passed 0 of 3" in verdict.reason


def test_execution_hard_coded_answers_pass_the_visible_examples_and_partial_ones_do_not() -> None:
    verifier = ExecutionVerifier()
    full = verifier.verify(PROMPT, [HARD_CODED], 0)
    assert full.accepted and full.confidence == 1.0  # documented limit: visible examples are evidence
    partial = verifier.verify(PROMPT, [PARTLY_HARD_CODED], 0)
    assert not partial.accepted and partial.confidence == pytest.approx(2 / 3)


def test_execution_prompt_without_examples_is_not_verifiable(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing to execute without examples")

    monkeypatch.setattr(verifiers, "run_in_sandbox", must_not_run)
    accepting = ExecutionVerifier().verify("Write a poem about the sea.", ["roses"], 0)
    assert accepting.accepted and not accepting.verifiable and "no examples" in accepting.reason
    assert accepting.confidence == 0.0
    rejecting = ExecutionVerifier(on_unverifiable="reject").verify("Write a poem.", ["roses"], 0)
    assert not rejecting.accepted and not rejecting.verifiable


def test_execution_reads_the_code_reranker_scores_instead_of_running_again(monkeypatch: pytest.MonkeyPatch) -> None:
    reranker = CodeExecutionReranker(tiebreaker=LengthReranker())
    candidates = [WRONG, PARTLY_HARD_CODED, CORRECT]
    scores = reranker.score(PROMPT, candidates)
    executed = [ExecutionVerifier().verify(PROMPT, candidates, i) for i in range(3)]

    calls: list[object] = []
    real = verifiers.run_in_sandbox

    def counting(*args: object, **kwargs: object):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(verifiers, "run_in_sandbox", counting)
    reused = [ExecutionVerifier().verify(PROMPT, candidates, i, scores, reranker=reranker) for i in range(3)]
    assert calls == []
    assert [(v.accepted, v.confidence) for v in reused] == [(v.accepted, v.confidence) for v in executed]
    assert [v.accepted for v in reused] == [False, False, True]
    assert "reranker's run" in reused[2].reason
    # Scores from another reranker, another example budget, or reuse off: executed.
    ExecutionVerifier().verify(PROMPT, candidates, 2, [1.0, 2.0, 3.0], reranker=LengthReranker())
    ExecutionVerifier(max_examples=2).verify(PROMPT, candidates, 2, scores, reranker=reranker)
    ExecutionVerifier(reuse_reranker_scores=False).verify(PROMPT, candidates, 2, scores, reranker=reranker)
    assert len(calls) == 3


def test_execution_fails_closed_without_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESTROUTE_BWRAP", "/nonexistent")
    with pytest.raises(IsolationUnavailableError, match="bubblewrap"):
        ExecutionVerifier().check_ready()
    with pytest.raises(IsolationUnavailableError):
        ExecutionVerifier().verify(PROMPT, [CORRECT], 0)


async def test_execution_averify_matches_verify() -> None:
    verdict = await ExecutionVerifier().averify(PROMPT, [WRONG, CORRECT], 1)
    assert verdict.accepted and verdict.confidence == 1.0


# -- agreement ------------------------------------------------------------------------------

THREE = ["First 20 + 22. #### 42", "So the answer is 42.", "I get \\boxed{41}"]


def test_agreement_two_of_three() -> None:
    verifier = AgreementVerifier()
    majority = verifier.verify("q", THREE, 0)
    assert majority.accepted and majority.confidence == pytest.approx(2 / 3)
    assert "2 of 3" in majority.reason and "42" in majority.reason
    odd_one = verifier.verify("q", THREE, 2)
    assert not odd_one.accepted and odd_one.confidence == pytest.approx(1 / 3)
    strict = AgreementVerifier(min_agreement=0.8).verify("q", THREE, 0)
    assert not strict.accepted


def test_agreement_uses_the_training_scorer_extraction() -> None:
    from training.scorers import extract_numeric_answer as training_extract

    assert training_extract is extract_numeric_answer
    assert AgreementVerifier().verify("q", ["1,234 apples", "it is 1234", "$1234.0"], 1).confidence == 1.0


def test_agreement_unverifiable_cases_and_a_pick_without_answer() -> None:
    single = AgreementVerifier().verify("q", ["42"], 0)
    assert single.accepted and not single.verifiable and "needs 2" in single.reason
    assert not AgreementVerifier(on_unverifiable="reject").verify("q", ["42"], 0).accepted
    words = AgreementVerifier().verify("q", ["yes", "no", "maybe"], 0)
    assert not words.verifiable and "no final answer" in words.reason
    no_answer = AgreementVerifier().verify("q", ["no idea", "42", "42"], 0)
    assert not no_answer.accepted and no_answer.verifiable and no_answer.confidence == 0.0


def test_agreement_with_custom_answers() -> None:
    verifier = AgreementVerifier(answer=lambda text: text.strip().lower() or None, same=lambda a, b: a == b)
    assert verifier.verify("capital?", ["Paris", "paris ", "Lyon"], 1).accepted


# -- reward levels ------------------------------------------------------------------------------


class ConstantScorer(LengthReranker):
    """Scores every candidate by its length (LengthReranker), records calls."""

    name = "reward_model"


def test_reward_level_uses_the_members_level_and_the_given_scores() -> None:
    verifier = RewardLevelVerifier({"small": 2.0, "mid": 5.0})
    accepted = verifier.verify("q", ["a", "b"], 1, [1.0, 3.0], member="small")
    assert accepted.accepted and accepted.confidence > 0.5 and "'small'" in accepted.reason
    rejected = verifier.verify("q", ["a", "b"], 1, [1.0, 3.0], member="mid")
    assert not rejected.accepted and rejected.confidence < 0.5
    at_level = verifier.verify("q", ["a"], 0, [2.0], member="small")
    assert at_level.accepted and at_level.confidence == pytest.approx(0.5)


def test_reward_level_unknown_member_uses_the_default_or_is_unverifiable() -> None:
    assert not RewardLevelVerifier({"small": 2.0}).verify("q", ["a"], 0, [9.0], member="other").verifiable
    with_default = RewardLevelVerifier({"small": 2.0}, default_level=10.0)
    assert not with_default.verify("q", ["a"], 0, [9.0], member="other").accepted
    assert not RewardLevelVerifier({}, on_unverifiable="reject").verify("q", ["a"], 0, [9.0], member="x").accepted


def test_reward_level_scores_a_single_pick_with_its_reward_model() -> None:
    model = ConstantScorer()
    verifier = RewardLevelVerifier({"small": 4.0}, reward_model=model)
    verdict = verifier.verify("q", ["longer answer"], 0, None, member="small")  # n = 1: nothing reranked
    assert verdict.accepted and model.calls == [("q", ["longer answer"])]
    # Scores from another reranker are not reward scores: the pick is scored again.
    other = LengthReranker()
    verifier.verify("q", ["ab", "abcdef"], 1, [0.0, 0.0], member="small", reranker=other)
    assert model.calls[-1] == ("q", ["abcdef"])
    # Scores from the reward model itself are used as they are.
    before = len(model.calls)
    assert not verifier.verify("q", ["ab", "abcdef"], 1, [0.0, 1.0], member="small", reranker=model).accepted
    assert len(model.calls) == before


async def test_reward_level_averify_uses_ascore_and_the_engines_reranker() -> None:
    engine_reranker = ConstantScorer()
    verifier = RewardLevelVerifier(default_level=3.0)
    verdict = await verifier.averify("q", ["abcd"], 0, None, member="m", reranker=engine_reranker)
    assert verdict.accepted and engine_reranker.calls == [("q", ["abcd"])]
    nothing = await verifier.averify("q", ["abcd"], 0, None, member="m")
    assert not nothing.verifiable and "no reward model" in nothing.reason


# -- names ----------------------------------------------------------------------------------------


def test_verifier_names() -> None:
    assert isinstance(verifier_from_name("execution"), ExecutionVerifier)
    assert isinstance(verifier_from_name("agreement"), AgreementVerifier)
    with pytest.raises(ValueError, match="levels"):
        verifier_from_name("reward_level")
    with pytest.raises(ValueError, match="known"):
        verifier_from_name("oracle")


def test_default_averify_runs_verify() -> None:
    seen: list[Sequence[str]] = []

    class Recording(AgreementVerifier):
        def verify(self, prompt, candidates, chosen, scores=None, *, member=None, reranker=None):  # type: ignore[override]
            seen.append(candidates)
            return super().verify(prompt, candidates, chosen, scores, member=member, reranker=reranker)

    import asyncio

    assert asyncio.run(Recording().averify("q", ["4", "4"], 0)).accepted
    assert seen == [["4", "4"]]
