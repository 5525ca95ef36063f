"""Every routing policy the runtime can run, and its operating point on one prompt set.

The runtime runs one ``PolicyChoice`` per calibration target (``RouterConfig.policies``):

* ``router``: Algorithm 1 at a threshold (``verifier`` set: the pick of the chosen
  option, unless it is the reference, is verified and a rejection escalates to the
  reference with n = 1: ``escalation=[(reference, 1)]``);
* ``constant``: always (member, n);
* ``verified``: (member, n), verified, then the ``escalation`` stages (the last one final).

:class:`PolicySet` enumerates them on an :class:`EvalSet` with exact expected cost and
quality: the router at every threshold that changes a decision (``sweep``'s exact
envelope), every constant (member, n), and every verified chain
(``chains.default_chains``). :meth:`PolicySet.evaluate` scores a policy chosen elsewhere
(on validation prompts) on this set, with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from training.evaluation.chains import Chain, StageArrays, default_chains
from training.evaluation.outcomes import (
    Choices,
    EvalSet,
    OnUnverifiable,
    OperatingPoint,
    evaluate,
)
from training.evaluation.report import cheapest_single_option
from training.evaluation.sweep import (
    Baseline,
    aiq,
    curve,
    distinct_thresholds,
    route_table,
)

Kind = Literal["router", "constant", "verified"]
#: Simpler kinds first: the order that breaks exact ties in calibration.
KIND_ORDER: dict[str, int] = {"constant": 0, "verified": 1, "router": 2}


@dataclass
class Policy:
    """One runnable policy and its operating point on some prompt set."""

    kind: Kind
    point: OperatingPoint
    threshold: float | None = None
    member: str | None = None
    n: int | None = None
    verifier: str | None = None
    escalation: list[tuple[str, int]] = field(default_factory=list)
    #: [Q] expected quality on each prompt of the set (for paired confidence bounds); None: unknown.
    per_prompt: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        if self.kind == "router":
            text = f"router t={self.threshold:.6g}"
            return text + (f" + {self.verifier} > " + " > ".join(f"{m}:{n}" for m, n in self.escalation) if self.verifier else "")
        if self.kind == "constant":
            return f"constant {self.member}:{self.n}"
        stages = [(self.member, self.n), *self.escalation]
        return "verified " + " > ".join(f"{m}:{n}" for m, n in stages) + f" [{self.verifier}]"

    def spec(self) -> dict[str, Any]:
        """The fields of a ``PolicyChoice`` (no reason / validation)."""
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "member": self.member,
            "n": self.n,
            "verifier": self.verifier,
            "escalation": [list(s) for s in self.escalation],
        }

    def to_choice(self, reason: str = "", validation: dict[str, float] | None = None) -> Any:
        """The ``bestroute_lc.artifacts.PolicyChoice`` the runtime reads."""
        from bestroute_lc.artifacts import PolicyChoice

        fields = {**self.spec(), "escalation": [(m, int(n)) for m, n in self.escalation]}
        return PolicyChoice(**fields, reason=reason, validation=dict(validation or {}))


class PolicySet:
    """Policies on one EvalSet with one picker.

    ``probabilities`` ([Q, K, N] for ``eval_set.routed``) and ``avg_output_tokens`` (the
    training split's, what the runtime's cost estimate uses) are needed for router
    policies; ``verifier="execution"`` (needs ``eval_set.has_execution``) adds router
    policies with verified escalation and verified chains. ``rejection`` ([Q, K, N] or
    [K, N]): the router's heads are "verified option" heads and Algorithm 1 prices each
    option's expected escalation (``bestroute_lc.policy.choose``); only the escalated router
    policies are meaningful then.
    """

    def __init__(
        self,
        eval_set: EvalSet,
        picker: str,
        *,
        probabilities: np.ndarray | None = None,
        avg_output_tokens: dict[str, float] | None = None,
        verifier: str | None = None,
        on_unverifiable: OnUnverifiable = "accept",
        chains: Sequence[Chain] | None = None,
        chain_depth: int = 2,
        rejection: np.ndarray | None = None,
    ) -> None:
        if verifier not in (None, "none", "execution"):
            raise ValueError(f"unknown verifier {verifier!r}; known: none, execution")
        self.eval_set = eval_set
        self.picker = picker
        self.probabilities = probabilities
        self.avg_output_tokens = avg_output_tokens or eval_set.average_output_tokens()
        self.verifier = None if verifier in (None, "none") else verifier
        self.quality = eval_set.quality(picker)  # type: ignore[arg-type]
        self.cost = eval_set.cost()
        self.stages = StageArrays.of(eval_set, picker, on_unverifiable) if self.verifier else None
        self._chains = list(chains) if chains is not None else None
        self.chain_depth = chain_depth
        self.rejection = rejection
        self._table = None

    # -- families ---------------------------------------------------------------------
    def _route_table(self):
        if self.probabilities is None:
            raise ValueError("router policies need the router's probabilities")
        if self._table is None:
            self._table = route_table(self.eval_set, self.probabilities, self.avg_output_tokens, rejection=self.rejection)
        return self._table

    def thresholds(self) -> list[float]:
        """Every distinct predicted p on this set, and one above (the exact envelope)."""
        if self.probabilities is None:
            return []
        return distinct_thresholds(self.probabilities, self.eval_set)

    def router(self, thresholds: Sequence[float] | None = None, *, escalate: bool = False) -> list[Policy]:
        if self.probabilities is None:
            return []
        if escalate and self.stages is None:
            raise ValueError("escalation needs a verifier")
        table = self._route_table()
        rows = np.arange(len(self.eval_set.prompts))
        escalated = self.stages.escalated()[0] if escalate and self.stages is not None else None
        out = []
        for t in self.thresholds() if thresholds is None else thresholds:
            choices = table.at(t)
            if escalated is not None:
                assert self.stages is not None
                point = self.stages.evaluate_escalated(choices, knob=float(t))
                out.append(Policy("router", point, threshold=float(t), verifier=self.verifier,
                                  escalation=[(self.eval_set.reference, 1)],
                                  per_prompt=escalated[rows, choices.member, choices.n - 1]))
            else:
                point = evaluate(self.eval_set, choices, self.quality, self.cost, knob=float(t))
                out.append(Policy("router", point, threshold=float(t), per_prompt=self.quality[rows, choices.member, choices.n - 1]))
        return out

    @property
    def reference_quality(self) -> np.ndarray:
        """[Q] always-reference quality per prompt (n = 1)."""
        return self.quality[:, self.eval_set.members.index(self.eval_set.reference), 0]

    def constants(self) -> list[Policy]:
        count = len(self.eval_set.prompts)
        out = []
        for index, member in enumerate(self.eval_set.members):
            for n in range(1, self.eval_set.ns(member) + 1):
                point = evaluate(self.eval_set, Choices.constant(count, index, n), self.quality, self.cost, knob=float(n))
                out.append(Policy("constant", point, member=member, n=n, per_prompt=self.quality[:, index, n - 1]))
        return out

    def chains(self) -> list[Chain]:
        if self.verifier is None:
            return []
        if self._chains is None:
            self._chains = default_chains(self.eval_set, depth=self.chain_depth, verifier=self.verifier)
        return self._chains

    def verified(self) -> list[Policy]:
        if self.stages is None:
            return []
        return [
            Policy("verified", self.stages.point(c), member=c.member, n=c.n, verifier=c.verifier, escalation=c.escalation,
                   per_prompt=self.stages.chain(c)[0])
            for c in self.chains()
        ]

    def all(self) -> list[Policy]:
        """Router thresholds (and, with a verifier, router with escalation), constants, verified chains."""
        # Verified-option heads only make sense verified: their plain router policies are left out.
        policies = (self.router() if self.rejection is None else []) + self.constants() + self.verified()
        if self.stages is not None:
            policies += self.router(escalate=True)
        return policies

    # -- one policy chosen elsewhere ---------------------------------------------------
    def evaluate(self, policy: Policy) -> Policy:
        """The same policy with its operating point on this set."""
        if policy.kind == "router":
            (scored,) = self.router([float(policy.threshold)], escalate=bool(policy.verifier))  # type: ignore[arg-type]
            return replace(policy, point=scored.point, per_prompt=scored.per_prompt)
        if policy.kind == "constant":
            index = self.eval_set.members.index(policy.member)  # type: ignore[arg-type]
            point = evaluate(
                self.eval_set, Choices.constant(len(self.eval_set.prompts), index, int(policy.n)), self.quality, self.cost,  # type: ignore[arg-type]
                knob=float(policy.n),  # type: ignore[arg-type]
            )
            return replace(policy, point=point, per_prompt=self.quality[:, index, int(policy.n) - 1])  # type: ignore[arg-type]
        if self.stages is None:
            raise ValueError("a verified policy needs the verifier's outcomes on this set")
        escalation = [tuple(s) for s in policy.escalation]
        chain = Chain(((policy.member, int(policy.n)), *escalation[:-1]), escalation[-1], policy.verifier or "execution")  # type: ignore[arg-type]
        return replace(policy, point=self.stages.point(chain), per_prompt=self.stages.chain(chain)[0])


def reference_share(point: OperatingPoint, reference: str) -> float:
    """Expected share of calls the reference answers."""
    return sum(share for label, share in point.distribution.items() if label.rpartition(":")[0] == reference)


class RoutingArea:
    """The routing metric models are chosen by: mean quality of Algorithm 1's upper convex hull
    (with always-reference) over the costs users operate at, from ``max_reduction`` below
    always-reference (default 60 %, Table 1's range; None: from the cheapest single option,
    RouterBench's AIQ / APGR range) up to always-reference, on ``eval_set``. The whole range
    would be dominated by near-free operating points nobody runs. With a
    verifier, the curve is the router with verified escalation, the policy that runs. Called
    with [Q, K, N] probabilities for ``eval_set``'s prompts, in its order."""

    def __init__(self, eval_set: EvalSet, picker: str, avg_output_tokens: dict[str, float], *,
                 verifier: str | None = None, on_unverifiable: str = "accept", max_reduction: float | None = 0.6,
                 rejection: np.ndarray | None = None) -> None:
        if verifier is None:
            quality, cost = eval_set.quality(picker), eval_set.cost()  # type: ignore[arg-type]
        else:
            quality, cost, _ = StageArrays.of(eval_set, picker, on_unverifiable).escalated()  # type: ignore[arg-type]
        self._bind(eval_set, avg_output_tokens, quality, cost, max_reduction, rejection)

    def _bind(self, eval_set: EvalSet, avg_output_tokens: dict[str, float], quality: np.ndarray, cost: np.ndarray,
              max_reduction: float | None, rejection: np.ndarray | None) -> None:
        self.eval_set, self.avg_output_tokens, self.max_reduction = eval_set, avg_output_tokens, max_reduction
        self.quality, self.cost, self.rejection = quality, cost, rejection
        self.baseline = Baseline.of(eval_set)
        cheapest = cheapest_single_option(eval_set).cost
        self.low = cheapest if max_reduction is None else max(cheapest, (1.0 - max_reduction) * self.baseline.cost)
        self._parts: dict[tuple[int, ...], RoutingArea] = {}

    def __call__(self, probabilities: np.ndarray, rows: Sequence[int] | np.ndarray | None = None) -> float:
        """The metric on all prompts, or on ``rows`` (ascending indices into the prompts) only."""
        if rows is not None:
            key = tuple(int(r) for r in rows)
            if key not in self._parts:  # the prompts' rows of the arrays already computed
                part = RoutingArea.__new__(RoutingArea)
                index = np.asarray(key)
                part._bind(self.eval_set.subset([self.eval_set.prompts[r].id for r in key]), self.avg_output_tokens,
                           self.quality[index], self.cost[index], self.max_reduction,
                           self.rejection[index] if self.rejection is not None and self.rejection.ndim == 3 else self.rejection)
                self._parts[key] = part
            return self._parts[key](probabilities)
        points = curve(self.eval_set, probabilities, self.avg_output_tokens, self.quality, self.cost, rejection=self.rejection)
        return aiq(points, self.low, self.baseline.cost, self.baseline)
