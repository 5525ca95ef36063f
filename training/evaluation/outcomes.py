"""Recorded outcomes of a pool on a prompt set, and the exact cost and quality of every
(member, n) choice, so routing policies can be evaluated without new generation.

Quality of choosing (k, n) for prompt q: the expected ground-truth score of the best-of-n
pick over uniformly random n-subsets of k's m recorded samples (without replacement,
as for the labels), with a *picker*:

* ``"proxy"``: the sample with the highest proxy reward-model score (``RewardPredictor``);
* ``"execution"``: the code-execution reranker (``CodeExecutionReranker`` with the reward
  model as tiebreaker): score = visible examples passed + sigmoid(proxy score), or the proxy
  score alone on a prompt without examples, exactly as the reranker combines them (no proxy
  scores: the pass counts alone);
* ``"execution_oracle"``: the same with the ground truth as tiebreaker;
* ``"oracle"``: the sample with the highest ground truth (a perfect picker: the upper bound);
* ``"random"``: any sample (what best-of-n would give with no reranker).

Ties in the picker's score are broken uniformly at random, as at run time (samples arrive
in random order and the first of tied candidates wins).

**Verified options.** With per-sample visible-example results (``MemberOutcomes.passes``,
``checks``), the execution verifier accepts a pick that passes every visible example
(``verified_outcomes``); a prompt without examples is *not verifiable* and gets the
runtime's default ``on_unverifiable="accept"``. For an option (k, n) and any value vector
x over k's samples, ``best_of_n_expectation(ranking, x, [n])`` is sum_i P(pick = i) x_i;
with x = v * gt and x = 1 - v it gives the accepted quality and the rejection probability
that ``training.evaluation.chains`` combines into verified chains.

Cost of choosing (k, n): the prompt's input cost once (NATIVE n) or n times (PARALLEL)
plus n x the mean output cost of k's recorded samples: the expected bill. The *estimated*
cost the policy uses instead takes the member's average output tokens (training split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bestroute_lc.conversation import RenderedConversation
from bestroute_lc.policy import MemberCosts
from bestroute_lc.pricing import Prices
from training.labels import best_of_n_expectation

Picker = Literal["proxy", "oracle", "random", "execution", "execution_oracle"]
PICKERS: tuple[str, ...] = ("proxy", "oracle", "random", "execution", "execution_oracle")
#: ``--reranker`` names (the runtime's rerankers) -> pickers.
RERANKER_PICKERS: dict[str, str] = {
    "reward_model": "proxy",
    "code_execution": "execution",
    "oracle": "oracle",
    "random": "random",
}
OnUnverifiable = Literal["accept", "reject"]

#: As ``bestroute_lc.rerankers.code_execution``: the tiebreak stays strictly below 1.
_MAX_TIEBREAK = 1.0 - 1e-9


def squash(values: np.ndarray) -> np.ndarray:
    """The code-execution reranker's tiebreak: a stable sigmoid in [0, 1 - 1e-9]; NaN -> 0."""
    x = np.asarray(values, dtype=float)
    out = np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
    return np.minimum(np.nan_to_num(out, nan=0.0), _MAX_TIEBREAK)


@dataclass
class MemberOutcomes:
    """One member's m recorded samples for one prompt."""

    gt: np.ndarray  # [m] ground-truth scores
    output_tokens: np.ndarray  # [m]
    input_tokens: float  # prompt tokens of one request
    proxy: np.ndarray | None = None  # [m] proxy reward-model scores; None: unknown
    #: [m] visible examples each sample passes, and [m] examples asked (0: the prompt has
    #: none); None: not executed (no code-execution picker or verifier on this table).
    passes: np.ndarray | None = None
    checks: np.ndarray | None = None

    def ranking(self, picker: str) -> np.ndarray:
        """The picker's score of every sample (higher wins; ties uniform)."""
        m = len(self.gt)
        if picker == "oracle":
            return np.asarray(self.gt, dtype=float)
        if picker == "random":
            return np.zeros(m)
        if picker == "proxy":
            if self.proxy is None:
                raise ValueError("no proxy scores (use picker='oracle' or 'random')")
            return np.asarray(self.proxy, dtype=float)
        if picker in ("execution", "execution_oracle"):
            if self.passes is None or self.checks is None:
                raise ValueError("no visible-example results (run training.evaluation.execution first)")
            tiebreak = self.gt if picker == "execution_oracle" else self.proxy
            if not np.any(self.checks > 0):  # no examples: the tiebreaker's own scores
                return np.zeros(m) if tiebreak is None else np.asarray(tiebreak, dtype=float)
            extra = np.zeros(m) if tiebreak is None else squash(np.asarray(tiebreak, dtype=float))
            return np.asarray(self.passes, dtype=float) + extra
        raise ValueError(f"unknown picker {picker!r}; known: {PICKERS}")

    def verified(self, on_unverifiable: OnUnverifiable = "accept") -> np.ndarray:
        """[m] 1.0 where the execution verifier accepts the sample as the pick: it passes
        every visible example; a prompt without examples: ``on_unverifiable``."""
        if self.passes is None or self.checks is None:
            raise ValueError("no visible-example results: the execution verifier is unavailable here")
        checks = np.asarray(self.checks, dtype=float)
        passed_all = (checks > 0) & (np.asarray(self.passes, dtype=float) >= checks)
        unverifiable = checks <= 0
        return np.where(unverifiable, 1.0 if on_unverifiable == "accept" else 0.0, passed_all.astype(float))


@dataclass
class EvalPrompt:
    id: str
    text: str
    source: str
    members: dict[str, MemberOutcomes]
    #: The conversation as the router sees it at run time (None: ``text`` as one user turn).
    conversation: RenderedConversation | None = None


@dataclass
class EvalSet:
    """A prompt set with every member's recorded samples; member order is ``members``."""

    prompts: list[EvalPrompt]
    members: list[str]
    reference: str
    prices: dict[str, Prices]
    prompt_billed_per_sample: dict[str, bool]
    max_n: int
    name: str = "dataset"
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reference not in self.members:
            raise ValueError(f"reference {self.reference!r} not in members {self.members}")
        for prompt in self.prompts:
            missing = [m for m in self.members if m not in prompt.members]
            if missing:
                raise ValueError(f"prompt {prompt.id!r} has no samples of {missing}")

    @property
    def has_execution(self) -> bool:
        """Whether every sample has visible-example results (execution picker / verifier)."""
        return bool(self.prompts) and all(
            o.passes is not None and o.checks is not None for p in self.prompts for o in p.members.values()
        )

    @property
    def routed(self) -> list[str]:
        return [m for m in self.members if m != self.reference]

    def subset(self, prompt_ids: Sequence[str]) -> EvalSet:
        keep = set(prompt_ids)
        return EvalSet(
            [p for p in self.prompts if p.id in keep], self.members, self.reference, self.prices,
            self.prompt_billed_per_sample, self.max_n, self.name, dict(self.notes),
        )

    def ns(self, member: str) -> int:
        """Largest n available for ``member`` on every prompt (n <= m)."""
        return min(self.max_n, min(len(p.members[member].gt) for p in self.prompts))

    # -- exact quality and cost of every choice ---------------------------------------------
    def quality(self, picker: Picker = "proxy") -> np.ndarray:
        """[Q, M, N] expected ground truth of best-of-n; NaN where n > m."""
        return self.pick_expectation(picker, lambda outcome: outcome.gt)

    def pick_expectation(self, picker: str, values: Any) -> np.ndarray:
        """[Q, M, N] sum_i P(the picker's best-of-n pick is sample i) x values(outcome)_i,
        exactly (n of m without replacement, ties uniform); NaN where n > m."""
        out = np.full((len(self.prompts), len(self.members), self.max_n), np.nan)
        for qi, prompt in enumerate(self.prompts):
            for mi, member in enumerate(self.members):
                outcome = prompt.members[member]
                m = len(outcome.gt)
                ns = list(range(1, min(m, self.max_n) + 1))
                try:
                    ranking = outcome.ranking(picker)
                except ValueError as exc:
                    raise ValueError(f"prompt {prompt.id!r}, {member}: {exc}") from None
                out[qi, mi, : len(ns)] = best_of_n_expectation(ranking, values(outcome), ns)
        return out

    def verified_outcomes(self, picker: Picker, on_unverifiable: OnUnverifiable = "accept") -> tuple[np.ndarray, np.ndarray]:
        """([Q, M, N] E[v x gt], [Q, M, N] P(reject)) of the pick of (k, n) under the execution
        verifier (v: the pick passes every visible example). The accepted quality plus
        P(reject) x the next stage's quality is a verified option's quality."""
        accepted = self.pick_expectation(picker, lambda o: o.verified(on_unverifiable) * o.gt)
        rejected = self.pick_expectation(picker, lambda o: 1.0 - o.verified(on_unverifiable))
        return accepted, rejected

    def cost(self) -> np.ndarray:
        """[Q, M, N] expected billed USD of drawing n samples."""
        out = np.zeros((len(self.prompts), len(self.members), self.max_n))
        n = np.arange(1, self.max_n + 1)
        for qi, prompt in enumerate(self.prompts):
            for mi, member in enumerate(self.members):
                outcome, prices = prompt.members[member], self.prices[member]
                billed_inputs = n if self.prompt_billed_per_sample[member] else np.ones_like(n)
                out[qi, mi] = prices.input_cost(outcome.input_tokens) * billed_inputs + n * prices.output_cost(
                    float(np.mean(outcome.output_tokens))
                )
        return out

    def member_costs(self, avg_output_tokens: dict[str, float]) -> dict[str, MemberCosts]:
        """What the policy knows: prices, billing and average output lengths (training split)."""
        return {
            m: MemberCosts(
                input_per_mtok=self.prices[m].input_per_mtok,
                output_per_mtok=self.prices[m].output_per_mtok,
                avg_output_tokens=avg_output_tokens[m],
                prompt_billed_per_sample=self.prompt_billed_per_sample[m],
            )
            for m in self.members
        }

    def average_output_tokens(self) -> dict[str, float]:
        return {
            m: float(np.mean(np.concatenate([p.members[m].output_tokens for p in self.prompts]))) for m in self.members
        }


@dataclass
class Choices:
    """One routing decision per prompt: member index (into ``EvalSet.members``) and n."""

    member: np.ndarray  # [Q] int
    n: np.ndarray  # [Q] int, >= 1

    @classmethod
    def constant(cls, count: int, member_index: int, n: int = 1) -> Choices:
        return cls(np.full(count, member_index), np.full(count, n))


@dataclass
class OperatingPoint:
    """Mean cost and quality of one set of choices, and how they are spread."""

    cost: float
    quality: float
    #: Share of prompts per "member:n".
    distribution: dict[str, float]
    knob: float | None = None  # the threshold (or a baseline's own knob) that produced it
    #: Points of one curve with different groups may not be mixed at random with each
    #: other (``sweep.hulls``); None: one group.
    group: str | None = None


def evaluate(eval_set: EvalSet, choices: Choices, quality: np.ndarray, cost: np.ndarray, knob: float | None = None) -> OperatingPoint:
    rows = np.arange(len(eval_set.prompts))
    q = quality[rows, choices.member, choices.n - 1]
    if np.isnan(q).any():
        raise ValueError("a choice asks for more samples than were recorded")
    labels = [f"{eval_set.members[k]}:{n}" for k, n in zip(choices.member, choices.n)]
    values, counts = np.unique(labels, return_counts=True)
    return OperatingPoint(
        cost=float(cost[rows, choices.member, choices.n - 1].mean()),
        quality=float(q.mean()),
        distribution={v: c / len(labels) for v, c in zip(values.tolist(), counts.tolist())},
        knob=knob,
    )
