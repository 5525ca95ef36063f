"""BEST-Route on recorded outcomes: Algorithm 1 at every threshold, and the summary
metrics of the resulting cost-quality curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bestroute_lc.policy import choose
from training.evaluation.outcomes import Choices, EvalSet, OperatingPoint, evaluate

#: Default thresholds: 0, 0.01, ..., 1.
THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0, 1, 101))


def route(
    eval_set: EvalSet, probabilities: np.ndarray, threshold: float, avg_output_tokens: dict[str, float], input_tokens: np.ndarray
) -> Choices:
    """Algorithm 1 per prompt. ``probabilities``: [Q, K, N] for ``eval_set.routed`` in order."""
    costs = eval_set.member_costs(avg_output_tokens)
    index = {m: i for i, m in enumerate(eval_set.members)}
    members, ns = [], []
    for qi in range(len(eval_set.prompts)):
        table = {m: [float(p) for p in probabilities[qi, ki, : eval_set.ns(m)]] for ki, m in enumerate(eval_set.routed)}
        decision = choose(table, costs, eval_set.reference, int(input_tokens[qi]), threshold)
        members.append(index[decision.member])
        ns.append(decision.n)
    return Choices(np.asarray(members), np.asarray(ns))


def sweep(
    eval_set: EvalSet,
    probabilities: np.ndarray,
    avg_output_tokens: dict[str, float],
    *,
    picker: str = "proxy",
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[OperatingPoint]:
    """One operating point per threshold (same order)."""
    quality, cost = eval_set.quality(picker), eval_set.cost()  # type: ignore[arg-type]
    input_tokens = np.asarray([p.members[eval_set.reference].input_tokens for p in eval_set.prompts])
    return [
        evaluate(eval_set, route(eval_set, probabilities, t, avg_output_tokens, input_tokens), quality, cost, knob=t)
        for t in thresholds
    ]


@dataclass(frozen=True)
class Baseline:
    """The always-reference operating point every metric is relative to."""

    cost: float
    quality: float

    @classmethod
    def of(cls, eval_set: EvalSet) -> Baseline:
        quality, cost = eval_set.quality("random"), eval_set.cost()
        point = evaluate(eval_set, Choices.constant(len(eval_set.prompts), eval_set.members.index(eval_set.reference)), quality, cost)
        return cls(point.cost, point.quality)

    def cost_reduction(self, point: OperatingPoint) -> float:
        """Fraction of the always-reference cost saved (0.4 = 40 % cheaper)."""
        return 1.0 - point.cost / self.cost

    def quality_drop_pct(self, point: OperatingPoint) -> float:
        """Quality lost w.r.t. always-reference, in % of the reference's quality (negative: a gain)."""
        return 100.0 * (self.quality - point.quality) / abs(self.quality) if self.quality else float("nan")


def pareto(points: Sequence[OperatingPoint]) -> list[OperatingPoint]:
    """Points no other point beats on both cost (lower) and quality (higher), by cost."""
    frontier: list[OperatingPoint] = []
    for point in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if not frontier or point.quality > frontier[-1].quality:
            frontier.append(point)
    return frontier


def drop_at_cost_reduction(points: Sequence[OperatingPoint], baseline: Baseline, reduction: float) -> float:
    """Quality drop (%) at ``reduction`` on the Pareto curve, linearly interpolated; NaN if
    the curve never saves that much. Between two frontier points, mixing the two policies
    at random achieves every cost in between, so linear interpolation is attainable."""
    frontier = pareto(points)
    target_cost = baseline.cost * (1.0 - reduction)
    costs = [p.cost for p in frontier]
    if not frontier or target_cost < costs[0] - 1e-15:
        return float("nan")
    if target_cost >= costs[-1]:
        best = frontier[-1]
    else:
        j = int(np.searchsorted(costs, target_cost, side="right"))
        left, right = frontier[j - 1], frontier[j]
        w = (target_cost - left.cost) / (right.cost - left.cost)
        best = OperatingPoint(target_cost, left.quality + w * (right.quality - left.quality), {})
    return baseline.quality_drop_pct(best)


def _area(frontier: list[OperatingPoint], lo: float, hi: float) -> float:
    """Mean quality over costs [lo, hi] of the frontier's interpolation (flat beyond its ends;
    below its cheapest point the quality of that point is not attainable, so 0 there)."""
    if hi <= lo or not frontier:
        return float("nan")
    grid = np.linspace(lo, hi, 2001)
    costs = np.asarray([p.cost for p in frontier])
    qualities = np.asarray([p.quality for p in frontier])
    values = np.interp(grid, costs, qualities, left=np.nan, right=qualities[-1])
    values = np.where(np.isnan(values), 0.0, values)
    return float(np.trapezoid(values, grid) / (hi - lo))


def aiq(points: Sequence[OperatingPoint], lo: float, hi: float) -> float:
    """RouterBench's AIQ: average quality over the cost range [lo, hi] of the router's
    non-decreasing (Pareto) interpolation."""
    return _area(pareto(points), lo, hi)


def apgr(points: Sequence[OperatingPoint], weakest: OperatingPoint, baseline: Baseline) -> float:
    """RouteLLM's APGR: the average performance gap recovered, PGR = (q - q_weak) / (q_ref - q_weak),
    over costs from the weakest single option to always-reference."""
    gap = baseline.quality - weakest.quality
    if gap <= 0:
        return float("nan")
    mean_quality = _area(pareto(points), weakest.cost, baseline.cost)
    return (mean_quality - weakest.quality) / gap
