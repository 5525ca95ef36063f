"""Verifiers: is the reranked pick good enough to return, or should the call escalate?

After best-of-n, the engine can ask a :class:`Verifier` whether the chosen candidate is
acceptable. A rejection sends the call to the next escalation stage (a stronger member,
finally the reference, whose answer is final); see ``BestRouteEngine`` and the README
("Verified escalation").

Three verifiers, one per kind of task:

* :class:`ExecutionVerifier` (code): the pick must pass **every** input/output example
  visible in the prompt, executed in the isolated sandbox. Confidence = passed / total.
* :class:`AgreementVerifier` (tasks with a final answer, e.g. math): at least
  ``min_agreement`` of the n samples must give the pick's final answer.
* :class:`RewardLevelVerifier` (open-ended text): the pick's reward-model score must reach
  a per-member level.

A verifier that cannot judge a call (a prompt without examples, one sample where
agreement needs two, no level for the member) returns a verdict with
``verifiable=False``, accepted or rejected as its ``on_unverifiable`` says (default
``"accept"``: rejecting would send every such call to the reference and spend what the
policy was calibrated to save; choose ``"reject"`` where a wrong answer costs more).
"""

from __future__ import annotations

import ast
import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bestroute_lc.answers import extract_numeric_answer, numbers_agree
from bestroute_lc.isolation import require_isolation
from bestroute_lc.rerankers.base import Reranker
from bestroute_lc.rerankers.code_execution import (
    CodeExecutionReranker,
    build_candidate_program,
    extract_examples,
    extract_prompt_code,
)
from bestroute_lc.sandbox import ExpressionCheck, SandboxLimits, run_in_sandbox

__all__ = [
    "VERIFIERS",
    "AgreementVerifier",
    "ExecutionVerifier",
    "RewardLevelVerifier",
    "Verdict",
    "Verifier",
    "verifier_from_name",
]

OnUnverifiable = Literal["accept", "reject"]


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer about one pick.

    Attributes:
        accepted: return the pick (True) or escalate (False).
        confidence: in [0, 1], how strongly the evidence supports the pick (the share of
            examples passed, of samples agreeing...); 0 when there was no evidence.
        reason: one line for people, recorded in the call's ``stages``.
        verifiable: False when the verifier could not judge this call and ``accepted``
            is its ``on_unverifiable`` setting.
    """

    accepted: bool
    confidence: float
    reason: str
    verifiable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.confidence, (int, float)) or math.isnan(self.confidence) or not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence!r}")


class Verifier(ABC):
    """Says whether the reranked pick is acceptable, with a confidence."""

    #: Short name recorded in the call's decision (``response_metadata["bestroute"]["verifier"]``).
    name: str = "verifier"
    #: What a call the verifier cannot judge gets: "accept" (return the pick) or "reject" (escalate).
    on_unverifiable: OnUnverifiable = "accept"

    @abstractmethod
    def verify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        """Judge ``candidates[chosen]``.

        Args:
            prompt: the conversation rendered as text (as rerankers get it).
            candidates: every sample the member returned, rendered as text.
            chosen: index of the reranker's pick.
            scores: the reranker's scores, one per candidate (None with one candidate,
                or when the reranker failed).
            member: the pool member that wrote the candidates.
            reranker: the engine's reranker, which produced ``scores`` when they are
                given (lets a verifier reuse work, e.g. the code-execution reranker's
                pass counts, or score a single pick).
        """

    async def averify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        """Async variant; the default runs :meth:`verify` in a worker thread."""
        return await asyncio.to_thread(
            self.verify, prompt, candidates, chosen, scores, member=member, reranker=reranker
        )

    def check_ready(self) -> None:
        """Raise if this verifier cannot work on this machine at all (checked once, when
        the engine is built; e.g. code execution without its isolation layer)."""

    # -- helpers for implementations -----------------------------------------------------
    def _unverifiable(self, why: str) -> Verdict:
        accepted = self.on_unverifiable == "accept"
        return Verdict(accepted, 0.0, f"not verifiable ({why}): {'accepted' if accepted else 'rejected'}", verifiable=False)

    @staticmethod
    def _check_call(candidates: Sequence[str], chosen: int, scores: Sequence[float] | None) -> None:
        if not 0 <= chosen < len(candidates):
            raise ValueError(f"chosen index {chosen} out of range for {len(candidates)} candidate(s)")
        if scores is not None and len(scores) != len(candidates):
            raise ValueError(f"{len(scores)} score(s) for {len(candidates)} candidate(s)")


def _check_on_unverifiable(value: str) -> OnUnverifiable:
    if value not in ("accept", "reject"):
        raise ValueError(f"on_unverifiable must be 'accept' or 'reject', got {value!r}")
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Code: the prompt's visible examples, executed
# --------------------------------------------------------------------------------------


def _called_names(expression: str) -> set[str]:
    for mode in ("eval", "exec"):
        try:
            tree = ast.parse(expression, mode=mode)
        except SyntaxError:
            continue
        return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return set()


def _defined_functions(code: str | None) -> set[str]:
    try:
        tree = ast.parse(code) if code else None
    except (SyntaxError, ValueError):
        return set()
    if tree is None:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _entry_names(prompt_code: str | None, examples: Sequence[ExpressionCheck]) -> set[str]:
    """The functions a candidate must define to count as a whole program: those the
    examples call that the prompt defines, else every function the examples call (the
    code-execution reranker's rule)."""
    called = set().union(*(_called_names(e.expression) for e in examples))
    return (called & _defined_functions(prompt_code)) or called


class ExecutionVerifier(Verifier):
    """Accepts a code answer that passes **all** the examples visible in the prompt.

    The examples are the code-execution reranker's (``extract_examples``: doctests,
    asserts, ``f(x) == y`` lines...); the pick runs in the isolated sandbox
    (:func:`~bestroute_lc.sandbox.run_in_sandbox`) and is judged in this process on the
    values it reports. Confidence = passed / total. A prompt without recognisable
    examples is not verifiable (``on_unverifiable``, default "accept").

    When the engine's reranker is a :class:`CodeExecutionReranker` with the same
    ``max_examples``, its scores (``passes + tiebreak``, the tiebreak in [0, 1)) already
    say how many examples the pick passed: the verdict is read from them and nothing runs
    twice (``reuse_reranker_scores=False`` always executes).

    A candidate that hard-codes the visible examples' answers passes them, as it would
    honestly: visible examples are evidence, not hidden tests.

    Fails closed like the reranker: :meth:`check_ready` raises
    :class:`~bestroute_lc.isolation.IsolationUnavailableError` without a working isolation
    layer unless ``allow_unisolated=True`` (never on untrusted traffic).
    """

    name = "execution"

    def __init__(
        self,
        *,
        on_unverifiable: OnUnverifiable = "accept",
        timeout_s: float = 5.0,
        limits: SandboxLimits | None = None,
        max_examples: int = 32,
        allow_unisolated: bool = False,
        reuse_reranker_scores: bool = True,
    ) -> None:
        self.on_unverifiable = _check_on_unverifiable(on_unverifiable)
        self.limits = limits or SandboxLimits(timeout_s=timeout_s, check_timeout_s=min(2.0, timeout_s))
        self.max_examples = max_examples
        self.allow_unisolated = allow_unisolated
        self.reuse_reranker_scores = reuse_reranker_scores

    def check_ready(self) -> None:
        require_isolation(self.allow_unisolated, what="model-written code (execution verifier)")

    def _passes_from_scores(
        self, scores: Sequence[float] | None, chosen: int, reranker: Reranker | None, total: int
    ) -> int | None:
        if not self.reuse_reranker_scores or scores is None or not isinstance(reranker, CodeExecutionReranker):
            return None
        if reranker.max_examples != self.max_examples:
            return None  # it may have seen other examples
        score = float(scores[chosen])
        if not math.isfinite(score):
            return None
        passed = math.floor(score)
        return passed if 0 <= passed <= total else None

    def verify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        self._check_call(candidates, chosen, scores)
        examples = extract_examples(prompt, max_examples=self.max_examples)
        if not examples:
            return self._unverifiable("no examples")
        total = len(examples)
        passed = self._passes_from_scores(scores, chosen, reranker, total)
        note = " (the reranker's run)"
        if passed is None:
            prompt_code = extract_prompt_code(prompt)
            program = build_candidate_program(prompt_code, candidates[chosen], _entry_names(prompt_code, examples))
            result = run_in_sandbox(program, examples, limits=self.limits, allow_unisolated=self.allow_unisolated)
            passed = result.passed
            note = "; timed out" if result.timed_out else (f"; {result.program_error}" if result.program_error else "")
        return Verdict(passed == total, passed / total, f"passed {passed} of {total} visible example(s){note}")


# --------------------------------------------------------------------------------------
# Final answers: do the samples agree?
# --------------------------------------------------------------------------------------


def _show(answer: Any) -> str:
    return f"{answer:g}" if isinstance(answer, float) else repr(answer)


class AgreementVerifier(Verifier):
    """Accepts the pick when at least ``min_agreement`` of the n samples give its final answer.

    Answers come from ``answer`` (default :func:`bestroute_lc.answers.extract_numeric_answer`,
    the same extraction as the ``numeric`` training scorer) and are compared with ``same``
    (default: ``math.isclose``, rel 1e-6). The pick counts itself: with 3 samples of which
    2 agree, a pick among the two has 2/3 and is accepted at the default 0.5, the odd one
    out has 1/3 and is rejected. Note that with n = 2 and the default 0.5, a pick the
    other sample contradicts still has 1/2: ask for ``min_agreement`` above 0.5 to need
    both. Confidence = the agreeing share.

    Fewer than ``min_samples`` samples (e.g. n = 1), or no final answer in any sample:
    not verifiable (``on_unverifiable``). A pick without a final answer when others have
    one is rejected.
    """

    name = "agreement"

    def __init__(
        self,
        *,
        min_agreement: float = 0.5,
        min_samples: int = 2,
        answer: Callable[[str], Any] = extract_numeric_answer,
        same: Callable[[Any, Any], bool] = numbers_agree,
        on_unverifiable: OnUnverifiable = "accept",
    ) -> None:
        if math.isnan(min_agreement) or not 0.0 < min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in (0, 1], got {min_agreement!r}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.min_agreement = float(min_agreement)
        self.min_samples = int(min_samples)
        self.answer = answer
        self.same = same
        self.on_unverifiable = _check_on_unverifiable(on_unverifiable)

    def verify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        self._check_call(candidates, chosen, scores)
        n = len(candidates)
        if n < self.min_samples:
            return self._unverifiable(f"{n} sample(s); agreement needs {self.min_samples}")
        answers = [self.answer(c) for c in candidates]
        pick = answers[chosen]
        if pick is None:
            if all(a is None for a in answers):
                return self._unverifiable("no final answer in any sample")
            return Verdict(False, 0.0, "the pick has no final answer")
        agreeing = sum(1 for a in answers if a is not None and self.same(a, pick))
        share = agreeing / n
        accepted = share >= self.min_agreement - 1e-12
        return Verdict(accepted, min(1.0, share), f"{agreeing} of {n} samples give the pick's answer {_show(pick)}")


# --------------------------------------------------------------------------------------
# Open-ended text: the reward model's score against a per-member level
# --------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class RewardLevelVerifier(Verifier):
    """Accepts the pick when its reward score reaches the answering member's level.

    ``levels[member]`` (``default_level`` for members not listed; neither: not
    verifiable) is in the reward model's units (raw scores, higher is better), e.g. the
    score at which that member's answers matched the reference on validation data.

    The score is the reranker's for the pick when the engine passes it and it comes from
    ``reward_model`` (or no ``reward_model`` is set: then the engine's reranker is taken to
    be the reward model); otherwise (n = 1, nothing was reranked) the pick is scored by
    ``reward_model``, else by the engine's reranker. Confidence = sigmoid(score - level):
    0.5 exactly at the level.
    """

    name = "reward_level"

    def __init__(
        self,
        levels: Mapping[str, float] | None = None,
        *,
        default_level: float | None = None,
        reward_model: Reranker | None = None,
        on_unverifiable: OnUnverifiable = "accept",
    ) -> None:
        self.levels = {str(k): float(v) for k, v in (levels or {}).items()}
        bad = {k: v for k, v in self.levels.items() if not math.isfinite(v)}
        if bad or (default_level is not None and not math.isfinite(default_level)):
            raise ValueError(f"levels must be finite numbers, got {bad or default_level!r}")
        self.default_level = None if default_level is None else float(default_level)
        self.reward_model = reward_model
        self.on_unverifiable = _check_on_unverifiable(on_unverifiable)

    def check_ready(self) -> None:
        if self.reward_model is not None:
            self.reward_model.check_ready()

    def _level(self, member: str | None) -> float | None:
        if member is not None and member in self.levels:
            return self.levels[member]
        return self.default_level

    def _given_score(self, scores: Sequence[float] | None, chosen: int, reranker: Reranker | None) -> float | None:
        if scores is None or (self.reward_model is not None and reranker is not self.reward_model):
            return None
        return float(scores[chosen])

    def _judge(self, score: float, level: float, member: str | None) -> Verdict:
        if not math.isfinite(score):
            return self._unverifiable(f"reward score {score!r}")
        accepted = score >= level
        relation = ">=" if accepted else "<"
        return Verdict(accepted, _sigmoid(score - level), f"reward {score:.4g} {relation} level {level:.4g} of {member!r}")

    def _plan(
        self, candidates: Sequence[str], chosen: int, scores: Sequence[float] | None, member: str | None, reranker: Reranker | None
    ) -> tuple[float | None, float | None, Reranker | None, Verdict | None]:
        """(level, known score, scorer to ask, or a final verdict)."""
        self._check_call(candidates, chosen, scores)
        level = self._level(member)
        if level is None:
            return None, None, None, self._unverifiable(f"no level for member {member!r}")
        score = self._given_score(scores, chosen, reranker)
        if score is not None:
            return level, score, None, None
        scorer = self.reward_model or reranker
        if scorer is None:
            return level, None, None, self._unverifiable("no reward model to score the pick")
        return level, None, scorer, None

    def verify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        level, score, scorer, verdict = self._plan(candidates, chosen, scores, member, reranker)
        if verdict is not None:
            return verdict
        if score is None:
            assert scorer is not None
            score = float(scorer.score(prompt, [candidates[chosen]])[0])
        assert level is not None
        return self._judge(score, level, member)

    async def averify(
        self,
        prompt: str,
        candidates: Sequence[str],
        chosen: int,
        scores: Sequence[float] | None = None,
        *,
        member: str | None = None,
        reranker: Reranker | None = None,
    ) -> Verdict:
        """Scores through the reward model's ``ascore`` (micro-batched with other calls)."""
        level, score, scorer, verdict = self._plan(candidates, chosen, scores, member, reranker)
        if verdict is not None:
            return verdict
        if score is None:
            assert scorer is not None
            score = float((await scorer.ascore(prompt, [candidates[chosen]]))[0])
        assert level is not None
        return self._judge(score, level, member)


# --------------------------------------------------------------------------------------
# Names (router artifacts' calibrated policies name their verifier)
# --------------------------------------------------------------------------------------

VERIFIERS: dict[str, type[Verifier]] = {
    "execution": ExecutionVerifier,
    "agreement": AgreementVerifier,
    "reward_level": RewardLevelVerifier,
}


def verifier_from_name(name: str) -> Verifier:
    """The verifier a calibrated policy names, with default settings.

    ``"execution"`` and ``"agreement"`` need nothing else. ``"reward_level"`` needs
    per-member levels that a policy name does not carry: pass
    ``verifier=RewardLevelVerifier(levels=..., reward_model=...)`` yourself.
    """
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)}")
    if name == "reward_level":
        raise ValueError(
            "the policy uses the 'reward_level' verifier, whose per-member levels are not in the artifact: "
            "pass verifier=RewardLevelVerifier(levels={member: level, ...}, reward_model=...)"
        )
    return VERIFIERS[name]()
