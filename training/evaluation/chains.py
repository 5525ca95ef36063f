"""Verified chains, evaluated exactly from the recorded samples.

A *verified chain* answers a call in stages: draw n samples from member k, pick one (the
picker: reward model, code execution...), and return it if the verifier accepts it; else
go to the next stage, and so on; the last stage (normally the reference with n = 1) is
final. At run time this is ``PolicyChoice(kind="verified", member=k, n=n,
verifier=..., escalation=[(k2, n2), ..., (reference, 1)])``; ``PolicyChoice(kind="router",
verifier=..., escalation=[(reference, 1)])`` is Algorithm 1's choice verified the same way.

Exactness. For a stage (k, n) let v_i in {0, 1} be the verifier's verdict on sample i as
the pick (execution verifier: the sample passes every example visible in the prompt;
``MemberOutcomes.verified``) and gt_i its ground truth. The stage's n samples are a uniformly
random n-subset of the m recorded ones (without replacement), so with P(pick = i) as in
``training.labels.best_of_n_expectation`` (ties uniform):

    quality = sum_i P(pick = i) (v_i gt_i + (1 - v_i) q_next)
            = E[v gt] + P(reject) q_next
    cost    = cost(k, n) + P(reject) cost_next

where q_next and cost_next are the rest of the chain's (computed backwards from the final
stage). A later stage draws fresh samples, independent of the earlier ones given the prompt
(as the runtime does), so its expectation is its unconditional one; this holds for several
stages of the same member too (k, n = 2 -> k, n = 5 -> reference).

``verified_chain_labels`` gives the matching router labels: P(the chain's answer >= one
reference answer - tolerance), the same recursion with each sample's match rate against the
reference samples in place of its ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.evaluation.outcomes import (
    Choices,
    EvalSet,
    OnUnverifiable,
    OperatingPoint,
)
from training.labels import best_of_n_expectation, match_rates

VERIFIERS = ("execution",)


@dataclass(frozen=True)
class Chain:
    """Verified ``stages`` in order, then the ``final`` stage (its answer is returned as is)."""

    stages: tuple[tuple[str, int], ...]
    final: tuple[str, int]
    verifier: str = "execution"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a chain needs at least one verified stage")
        seen = list(self.stages) + [self.final]
        if len(set(seen)) != len(seen):
            raise ValueError(f"a chain visits a (member, n) once: {seen}")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.verifier!r}; known: {VERIFIERS}")

    @property
    def member(self) -> str:
        return self.stages[0][0]

    @property
    def n(self) -> int:
        return self.stages[0][1]

    @property
    def escalation(self) -> list[tuple[str, int]]:
        """``PolicyChoice.escalation``: the stages after the first, then the final one."""
        return [*self.stages[1:], self.final]

    @property
    def label(self) -> str:
        return " > ".join(f"{m}:{n}" for m, n in [*self.stages, self.final]) + f" [{self.verifier}]"


@dataclass
class StageArrays:
    """Per prompt, member and n ([Q, M, N]): quality and cost of the plain option, and the
    accepted quality E[v gt] and rejection probability of its pick under the verifier."""

    eval_set: EvalSet
    picker: str
    quality: np.ndarray
    cost: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray
    index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, eval_set: EvalSet, picker: str, on_unverifiable: OnUnverifiable = "accept") -> StageArrays:
        if not eval_set.has_execution:
            raise ValueError(f"{eval_set.name}: no per-sample verification recorded; the execution verifier is unavailable")
        accepted, rejected = eval_set.verified_outcomes(picker, on_unverifiable)  # type: ignore[arg-type]
        return cls(
            eval_set, picker, eval_set.quality(picker), eval_set.cost(), accepted, rejected,  # type: ignore[arg-type]
            {m: i for i, m in enumerate(eval_set.members)},
        )

    def _at(self, array: np.ndarray, stage: tuple[str, int]) -> np.ndarray:
        member, n = stage
        if member not in self.index:
            raise ValueError(f"unknown member {member!r}")
        if not 1 <= n <= self.eval_set.ns(member):
            raise ValueError(f"({member!r}, n={n}) needs n <= {self.eval_set.ns(member)} recorded samples")
        return array[:, self.index[member], n - 1]

    def chain(self, chain: Chain) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Per prompt: expected quality [Q], expected cost [Q], and the probability that each
        stage gives the answer ({"member:n": [Q]})."""
        quality = self._at(self.quality, chain.final).copy()
        cost = self._at(self.cost, chain.final).copy()
        answered = {f"{chain.final[0]}:{chain.final[1]}": np.ones(len(quality))}
        for stage in reversed(chain.stages):
            reject = self._at(self.rejected, stage)
            quality = self._at(self.accepted, stage) + reject * quality
            cost = self._at(self.cost, stage) + reject * cost
            answered = {label: reject * share for label, share in answered.items()}
            answered[f"{stage[0]}:{stage[1]}"] = 1.0 - reject
        return quality, cost, answered

    def point(self, chain: Chain) -> OperatingPoint:
        quality, cost, answered = self.chain(chain)
        return OperatingPoint(
            cost=float(cost.mean()),
            quality=float(quality.mean()),
            distribution={k: float(v.mean()) for k, v in sorted(answered.items()) if v.mean() > 0},
        )

    def escalated(self, final: tuple[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[Q, M, N] quality, cost and P(escalation) of every option (k, n) verified with a
        fall back to ``final`` (default: the reference, n = 1); the final member's own
        options are not verified (unchanged, P = 0)."""
        final = final or (self.eval_set.reference, 1)
        fq, fc = self._at(self.quality, final)[:, None, None], self._at(self.cost, final)[:, None, None]
        quality = self.accepted + self.rejected * fq
        cost = self.cost + self.rejected * fc
        escalate = self.rejected.copy()
        own = self.index[final[0]]
        quality[:, own], cost[:, own], escalate[:, own] = self.quality[:, own], self.cost[:, own], 0.0
        return quality, cost, escalate

    def evaluate_escalated(self, choices: Choices, knob: float | None = None, final: tuple[str, int] | None = None) -> OperatingPoint:
        """The operating point of per-prompt ``choices`` (e.g. Algorithm 1's), each verified
        and escalated to ``final`` on rejection."""
        final = final or (self.eval_set.reference, 1)
        quality, cost, escalate = self.escalated(final)
        rows = np.arange(len(self.eval_set.prompts))
        q = quality[rows, choices.member, choices.n - 1]
        if np.isnan(q).any():
            raise ValueError("a choice asks for more samples than were recorded")
        p = escalate[rows, choices.member, choices.n - 1]
        shares: dict[str, float] = {}
        for k, n, e in zip(choices.member, choices.n, p):
            label = f"{self.eval_set.members[k]}:{n}"
            shares[label] = shares.get(label, 0.0) + (1.0 - e)
            final_label = f"{final[0]}:{final[1]}"
            shares[final_label] = shares.get(final_label, 0.0) + e
        count = len(rows)
        return OperatingPoint(
            cost=float(cost[rows, choices.member, choices.n - 1].mean()),
            quality=float(q.mean()),
            distribution={k: v / count for k, v in sorted(shares.items()) if v > 0},
            knob=knob,
        )


def default_chains(eval_set: EvalSet, *, depth: int = 2, verifier: str = "execution") -> list[Chain]:
    """Every (k, n) of a routed member verified with a fall back to the reference (n = 1),
    and with ``depth`` 2 also k, n1 -> k, n2 -> reference for n1 < n2 (more samples of the
    same member before the reference)."""
    final = (eval_set.reference, 1)
    chains = []
    for member in eval_set.routed:
        ns = range(1, eval_set.ns(member) + 1)
        chains += [Chain(((member, n),), final, verifier) for n in ns]
        if depth >= 2:
            chains += [Chain(((member, a), (member, b)), final, verifier) for a in ns for b in ns if a < b]
    return chains


def chain_points(arrays: StageArrays, chains: Sequence[Chain]) -> list[tuple[Chain, OperatingPoint]]:
    return [(chain, arrays.point(chain)) for chain in chains]


# -- labels ------------------------------------------------------------------------------------
def verified_chain_labels(
    eval_set: EvalSet,
    chain: Chain,
    picker: str,
    *,
    tolerance: float = 0.0,
    on_unverifiable: OnUnverifiable = "accept",
) -> np.ndarray:
    """[Q] P(the chain's answer >= one reference answer - ``tolerance``) under the ground truth,
    exactly from the recorded samples: each stage's pick is accepted with its verdict, else
    the next stage answers (fresh draws); the reference answer is one of its recorded
    samples, uniformly (for the reference itself as a stage: every pair of its samples)."""
    out = np.zeros(len(eval_set.prompts))
    for qi, prompt in enumerate(eval_set.prompts):
        reference_gt = prompt.members[eval_set.reference].gt

        def expectation(stage: tuple[str, int], accepted: bool | None) -> float:
            """E over the pick of: its match rate (accepted None), v x match (True), 1 - v (False)."""
            outcome = prompt.members[stage[0]]  # noqa: B023 - used at once, inside the iteration
            match = match_rates(outcome.gt, reference_gt, tolerance)  # noqa: B023
            if accepted is None:
                values = match
            else:
                verdict = outcome.verified(on_unverifiable)
                values = verdict * match if accepted else 1.0 - verdict
            return float(best_of_n_expectation(outcome.ranking(picker), values, [stage[1]])[0])

        label = expectation(chain.final, None)
        for stage in reversed(chain.stages):
            label = expectation(stage, True) + expectation(stage, False) * label
        out[qi] = label
    return out


def verified_option_labels(
    eval_set: EvalSet, picker: str, *, tolerance: float = 0.0, on_unverifiable: OnUnverifiable = "accept"
) -> np.ndarray:
    """[Q, K, N] labels for "verified option" router heads: for every routed (k, n), P(k with
    n samples, verified, else the reference (n = 1), is >= one reference answer). NaN where
    n exceeds what every prompt recorded."""
    out = np.full((len(eval_set.prompts), len(eval_set.routed), eval_set.max_n), np.nan)
    final = (eval_set.reference, 1)
    for ki, member in enumerate(eval_set.routed):
        for n in range(1, eval_set.ns(member) + 1):
            out[:, ki, n - 1] = verified_chain_labels(
                eval_set, Chain(((member, n),), final), picker, tolerance=tolerance, on_unverifiable=on_unverifiable
            )
    return out
