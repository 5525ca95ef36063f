"""Algorithm 1 of the paper: pick (member, n) from the router's match probabilities.

Pure Python on purpose (no torch, no LangChain): it is the part users reason about
when they set a threshold, so it must be easy to read and exhaustively testable.

Given p[k][n-1] = P(best-of-n from member k is at least as good as one reference
answer), a threshold t and per-member cost parameters:

1. keep every (k, n) with p >= t;
2. estimate each one's cost as
       input_tokens x input_price x (1 if the provider bills the prompt once for n
       samples, else n)  +  n x avg_output_tokens x output_price;
3. pick the cheapest; ties go to the higher p, then the smaller n, then the member
   that comes first in head order (so the choice is deterministic);
4. if nothing passes, the reference with n = 1.

With verified escalation priced in (``rejection``: P(the verifier rejects option (k, n)'s
pick), which sends the call on to the reference with n = 1), step 2's estimate is the
expected cost of the attempt, cost(k, n) + P(reject) x cost(reference, 1), and an option
whose expected cost is not below the reference's own is dropped: calling the reference at
once answers the same way for less. This is how "verified option" heads (p = P(the verified
attempt, else the reference, is at least as good as one reference answer)) are used.

The other valid options, in the same order, are kept as the fallback chain the engine
walks when a provider fails; the reference with n = 1 always closes the chain.

Calibrated policies other than Algorithm 1 (``constant``: always one (member, n);
``verified``: one (member, n), then escalation stages) are built by :func:`fixed`.
:class:`ChainWalk` walks a decision's chain: past a failed member on a provider failure,
and to the next escalation stage when a verifier rejects the pick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class MemberCosts:
    """What the policy needs to know about one member's prices."""

    input_per_mtok: float
    output_per_mtok: float
    avg_output_tokens: float
    #: True when n samples need n requests (prompt billed n times); False when one
    #: request with ``n`` returns them all (prompt billed once; paper footnote 1).
    prompt_billed_per_sample: bool

    def estimate(self, n: int, input_tokens: int) -> float:
        """Estimated USD cost of drawing ``n`` samples for a prompt of ``input_tokens``."""
        billed_inputs = n if self.prompt_billed_per_sample else 1
        return (
            input_tokens * self.input_per_mtok * billed_inputs + n * self.avg_output_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class Option:
    """One (member, n) choice with its match probability and estimated cost."""

    member: str
    n: int
    match_probability: float | None  # None for the reference (nothing to match)
    estimated_cost_usd: float


@dataclass(frozen=True)
class Decision:
    """The outcome of Algorithm 1 for one query."""

    member: str
    n: int
    threshold: float
    estimated_cost_usd: float
    #: "router" (an option passed the threshold), "reference" (none did),
    #: "forced" (the caller named the member), "budget" (spend cap reached),
    #: "constant" or "verified" (a calibrated policy of that kind).
    reason: str
    #: Options to try in order: the chosen one first, then the other valid options by
    #: cost (or the escalation stages), then the reference with n = 1.
    fallbacks: tuple[Option, ...] = field(default=())
    #: Where a verifier's rejection leads (see :class:`ChainWalk`): "stronger" (the next
    #: option of a more expensive member, then the reference) or "stages" (the next entry
    #: of ``fallbacks``, in the order given).
    escalation: Literal["stronger", "stages"] = "stronger"


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, or raise ``ValueError`` if it is not in [0, 1]."""
    try:
        value = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from exc
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def choose(
    match_probabilities: Mapping[str, Sequence[float]],
    costs: Mapping[str, MemberCosts],
    reference: str,
    input_tokens: int,
    threshold: float,
    rejection: Mapping[str, Sequence[float]] | None = None,
) -> Decision:
    """Algorithm 1. ``match_probabilities[member][n - 1]`` is p for that member and n.

    ``match_probabilities`` is iterated in head order, which breaks the last ties.
    ``costs`` must cover every member in it and the reference. ``rejection[member][n - 1]``
    (optional): the probability that a verifier rejects that option's pick and the call
    escalates to the reference; the estimate then is the attempt's expected cost.
    """
    threshold = validate_threshold(threshold)
    if input_tokens < 0:
        raise ValueError(f"input_tokens must be >= 0, got {input_tokens}")
    missing = [m for m in [*match_probabilities, reference] if m not in costs]
    if missing:
        raise ValueError(f"no cost parameters for member(s) {missing}")
    if reference in match_probabilities:
        raise ValueError(f"the reference {reference!r} must not have router heads")

    reference_cost = costs[reference].estimate(1, input_tokens)
    ranked: list[tuple[float, float, int, int, Option]] = []
    for order, (member, probabilities) in enumerate(match_probabilities.items()):
        for n, p in enumerate(probabilities, start=1):
            p = float(p)
            if math.isnan(p):
                raise ValueError(f"match probability for ({member!r}, n={n}) is NaN")
            if p >= threshold:
                cost = costs[member].estimate(n, input_tokens)
                if rejection is not None:
                    reject = _probability(rejection, member, n)
                    cost += reject * reference_cost
                    if cost >= reference_cost:
                        continue
                option = Option(member=member, n=n, match_probability=p, estimated_cost_usd=cost)
                ranked.append((cost, -p, n, order, option))
    ranked.sort(key=lambda entry: entry[:4])
    reference_option = Option(member=reference, n=1, match_probability=None, estimated_cost_usd=reference_cost)
    chain = tuple(entry[4] for entry in ranked) + (reference_option,)
    chosen = chain[0]
    return Decision(
        member=chosen.member,
        n=chosen.n,
        threshold=threshold,
        estimated_cost_usd=chosen.estimated_cost_usd,
        reason="router" if ranked else "reference",
        fallbacks=chain,
    )


def _probability(table: Mapping[str, Sequence[float]], member: str, n: int) -> float:
    try:
        value = float(table[member][n - 1])
    except (KeyError, IndexError) as exc:
        raise ValueError(f"no rejection probability for ({member!r}, n={n})") from exc
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"rejection probability for ({member!r}, n={n}) must be in [0, 1], got {value!r}")
    return value


def forced(
    member: str, n: int, costs: Mapping[str, MemberCosts], reference: str, input_tokens: int, threshold: float
) -> Decision:
    """A decision that skips the router: the caller named ``member`` (``model=`` override)."""
    if member not in costs:
        raise ValueError(f"unknown pool member {member!r}; members: {sorted(costs)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    option = Option(member, n, None, costs[member].estimate(n, input_tokens))
    chain: tuple[Option, ...] = (option,)
    if member != reference:
        chain += (Option(reference, 1, None, costs[reference].estimate(1, input_tokens)),)
    return Decision(member, n, validate_threshold(threshold), option.estimated_cost_usd, "forced", chain)


def cheapest(costs: Mapping[str, MemberCosts], input_tokens: int, threshold: float) -> Decision:
    """Every member with n = 1, cheapest first: what a call gets once a spend cap is reached.
    The router is not consulted; ties go to the member listed first."""
    options = sorted(
        (Option(member, 1, None, c.estimate(1, input_tokens)) for member, c in costs.items()),
        key=lambda o: o.estimated_cost_usd,
    )
    if not options:
        raise ValueError("no members to choose from")
    first = options[0]
    return Decision(first.member, 1, validate_threshold(threshold), first.estimated_cost_usd, "budget", tuple(options))


def _reference_option(costs: Mapping[str, MemberCosts], reference: str, input_tokens: int) -> Option:
    return Option(reference, 1, None, costs[reference].estimate(1, input_tokens))


def _stage_chain(
    first: Option,
    stages: Sequence[tuple[str, int]],
    costs: Mapping[str, MemberCosts],
    reference: str,
    input_tokens: int,
) -> tuple[Option, ...]:
    """``first``, then ``stages`` in order (repeats of an earlier (member, n) dropped),
    closed by the reference with n = 1 unless the last stage already is the reference."""
    chain = [first]
    for member, n in stages:
        if member not in costs:
            raise ValueError(f"unknown pool member {member!r} in escalation stages; members: {sorted(costs)}")
        if n < 1:
            raise ValueError(f"escalation stage ({member!r}, {n}): n must be >= 1")
        if any((o.member, o.n) == (member, n) for o in chain):
            continue
        chain.append(Option(member, n, None, costs[member].estimate(n, input_tokens)))
    if chain[-1].member != reference:
        chain.append(_reference_option(costs, reference, input_tokens))
    return tuple(chain)


def fixed(
    member: str,
    n: int,
    costs: Mapping[str, MemberCosts],
    reference: str,
    input_tokens: int,
    threshold: float,
    *,
    reason: Literal["constant", "verified"],
    stages: Sequence[tuple[str, int]] = (),
) -> Decision:
    """A calibrated policy that does not consult the router: ``member`` with ``n`` samples,
    then the escalation ``stages`` (verified policies), then the reference with n = 1."""
    if member not in costs:
        raise ValueError(f"unknown pool member {member!r}; members: {sorted(costs)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first = Option(member, n, None, costs[member].estimate(n, input_tokens))
    chain = _stage_chain(first, stages, costs, reference, input_tokens)
    return Decision(
        member, n, validate_threshold(threshold), first.estimated_cost_usd, reason, chain, escalation="stages"
    )


def with_stages(
    decision: Decision,
    stages: Sequence[tuple[str, int]],
    costs: Mapping[str, MemberCosts],
    reference: str,
    input_tokens: int,
) -> Decision:
    """``decision`` with explicit escalation stages after its chosen option (replacing the
    other valid options as its fallbacks)."""
    if not decision.fallbacks:
        raise ValueError("the decision has no chosen option")
    chain = _stage_chain(decision.fallbacks[0], stages, costs, reference, input_tokens)
    return Decision(
        decision.member,
        decision.n,
        decision.threshold,
        decision.estimated_cost_usd,
        decision.reason,
        chain,
        escalation="stages",
    )


class ChainWalk:
    """Walks one call's ``decision.fallbacks``.

    * :meth:`fail` (a provider returned nothing usable): every later option of that member
      is skipped, as without verification.
    * :meth:`reject` (the verifier turned the pick down): with ``escalation="stages"`` the
      next entry is tried; with ``"stronger"``, the next *valid option of a member more
      expensive* (estimated cost of one sample, ``unit_costs``) than every rejected one, and
      after that one is rejected too, only the reference. The reference closes every chain
      and its answer is final.
    """

    def __init__(self, decision: Decision, unit_costs: Mapping[str, float], reference: str) -> None:
        self.decision = decision
        self.unit_costs = unit_costs
        self.reference = reference
        self.failed: set[str] = set()
        self.rejected: list[str] = []
        self._index = -1

    def fail(self, member: str) -> None:
        self.failed.add(member)

    def reject(self, member: str) -> None:
        self.rejected.append(member)

    def _allowed(self, option: Option) -> bool:
        if option.member in self.failed:
            return False
        if not self.rejected or self.decision.escalation == "stages" or option.member == self.reference:
            return True
        if len(self.rejected) >= 2:
            return False  # at most one stage between the first pick and the reference
        floor = max(self.unit_costs.get(m, math.inf) for m in self.rejected)
        return option.member not in self.rejected and self.unit_costs.get(option.member, -math.inf) > floor

    def next(self) -> Option | None:
        """The next option to try, or None when the chain is exhausted."""
        chain = self.decision.fallbacks
        for index in range(self._index + 1, len(chain)):
            if self._allowed(chain[index]):
                self._index = index
                return chain[index]
        self._index = len(chain)
        return None
