"""BEST-Route on recorded outcomes: Algorithm 1 at every threshold that changes a decision,
and the summary metrics of a policy family's cost-quality curve.

**Thresholds: the exact envelope.** Algorithm 1's decision for a prompt changes only when
the threshold t crosses one of that prompt's own predicted p[k, n]: for t in (u_{j-1}, u_j]
(u sorted distinct values) the valid set {p >= t} is the same. So sweeping t over every
distinct predicted p of the prompt set, plus one value above the largest (everything to the
reference), gives every operating point the router can reach, with no grid.
``route_table`` decides each prompt once per own distinct p and ``route_at`` looks the
decisions up for any threshold.

**Curves: the upper convex hull.** Mixing two policies at random (per call, with
probability w the first) is attainable at every cost in between, with the mixed quality on
the segment joining them. So the attainable set of a policy family is the convex hull of its
operating points, together with always-reference (every policy can fall back to it).
``drop_at_cost_reduction`` (Table 1), ``aiq`` and ``apgr`` read the upper concave
frontier of that set, not a Pareto staircase or neighbour interpolation. Points may carry a
``group``: mixing is then only allowed inside a group and the curve is the best group at
each cost (the "random" baseline: one strong/weak mix per cheaper member, best shown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bestroute_lc.pricing import approximate_tokens
from bestroute_lc.policy import choose
from training.evaluation.outcomes import Choices, EvalSet, OperatingPoint, evaluate

#: The old fixed grid 0, 0.01, ..., 1 (still accepted as ``thresholds=``).
THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0, 1, 101))


def estimate_input_tokens(eval_set: EvalSet) -> np.ndarray:
    """[Q] the input-token estimate the runtime's Algorithm 1 uses: characters / 4 of the
    rendered conversation (``bestroute_lc.pricing.approximate_tokens``)."""
    return np.asarray([approximate_tokens(p.conversation.text if p.conversation else p.text) for p in eval_set.prompts])


def distinct_thresholds(probabilities: np.ndarray, eval_set: EvalSet | None = None) -> list[float]:
    """Every distinct predicted p (heads up to ``eval_set.ns(member)``), ascending, then the
    smallest float above the largest one when that is still <= 1 (all to the reference)."""
    values = probabilities
    if eval_set is not None:
        values = np.concatenate(
            [probabilities[:, ki, : eval_set.ns(m)].ravel() for ki, m in enumerate(eval_set.routed)]
        ) if eval_set.routed else np.zeros(0)
    flat = np.unique(np.asarray(values, dtype=float).ravel())
    out = [float(v) for v in flat if 0.0 <= v <= 1.0]
    top = float(np.nextafter(out[-1], np.inf)) if out else 0.0
    if top <= 1.0 and top not in out:
        out.append(top)
    return out or [0.0]


@dataclass
class RouteTable:
    """Per prompt: its distinct p values (ascending) and Algorithm 1's decision for a
    threshold equal to each, plus the all-reference decision above the largest."""

    levels: list[np.ndarray]  # per prompt [L] distinct p
    members: list[np.ndarray]  # per prompt [L + 1] member index
    ns: list[np.ndarray]  # per prompt [L + 1] n

    def at(self, threshold: float) -> Choices:
        members, ns = [], []
        for levels, mem, n in zip(self.levels, self.members, self.ns):
            j = int(np.searchsorted(levels, threshold, side="left"))
            members.append(mem[j])
            ns.append(n[j])
        return Choices(np.asarray(members, dtype=int), np.asarray(ns, dtype=int))

    def at_many(self, thresholds: Sequence[float] | np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """``at`` for many thresholds at once: (member [T, Q], n [T, Q]). Vectorised (a padded
        [Q, L] table; searchsorted 'left' = the count of levels below the threshold)."""
        count, width = len(self.levels), max((len(levels) for levels in self.levels), default=0)
        levels = np.full((count, width), np.inf)
        members = np.zeros((count, width + 1), dtype=int)
        ns = np.ones((count, width + 1), dtype=int)
        for qi, (lv, mem, n) in enumerate(zip(self.levels, self.members, self.ns)):
            levels[qi, : len(lv)] = lv
            members[qi, : len(mem)], ns[qi, : len(n)] = mem, n
        thresholds = np.asarray(thresholds, dtype=float)
        rows = np.arange(count)[None, :]
        out_members, out_ns = np.zeros((len(thresholds), count), dtype=int), np.zeros((len(thresholds), count), dtype=int)
        for start in range(0, len(thresholds), chunk):
            t = thresholds[start : start + chunk]
            j = (levels[None, :, :] < t[:, None, None]).sum(axis=2)  # [t, Q]
            out_members[start : start + chunk], out_ns[start : start + chunk] = members[rows, j], ns[rows, j]
        return out_members, out_ns


def curve(
    eval_set: EvalSet, probabilities: np.ndarray, avg_output_tokens: dict[str, float], quality: np.ndarray, cost: np.ndarray,
    thresholds: Sequence[float] | None = None, rejection: np.ndarray | None = None,
) -> list[OperatingPoint]:
    """Algorithm 1's operating points at ``thresholds`` (default: every distinct p, the exact
    envelope), scored with [Q, M, N] ``quality`` and ``cost``: ``sweep``'s points without their
    distributions, vectorised (model selection scores thousands of thresholds per candidate).
    ``rejection`` as in ``route_table``."""
    table = route_table(eval_set, probabilities, avg_output_tokens, rejection=rejection)
    grid = distinct_thresholds(probabilities, eval_set) if thresholds is None else list(thresholds)
    members, ns = table.at_many(grid)
    rows = np.arange(len(eval_set.prompts))[None, :]
    q, c = quality[rows, members, ns - 1].mean(axis=1), cost[rows, members, ns - 1].mean(axis=1)
    return [OperatingPoint(float(ci), float(qi), {}, knob=float(t)) for ci, qi, t in zip(c, q, grid)]


def route_table(
    eval_set: EvalSet, probabilities: np.ndarray, avg_output_tokens: dict[str, float], input_tokens: np.ndarray | None = None,
    rejection: np.ndarray | None = None,
) -> RouteTable:
    """Algorithm 1 (``bestroute_lc.policy.choose``) for every prompt at each of its own distinct p.
    ``rejection`` ([Q, K, N] or [K, N] for ``eval_set.routed``): P(the verifier rejects each
    option's pick), priced into the estimate as ``choose`` does (verified-option heads)."""
    costs = eval_set.member_costs(avg_output_tokens)
    index = {m: i for i, m in enumerate(eval_set.members)}
    tokens = estimate_input_tokens(eval_set) if input_tokens is None else np.asarray(input_tokens)
    table = RouteTable([], [], [])
    for qi in range(len(eval_set.prompts)):
        heads = {m: [float(p) for p in probabilities[qi, ki, : eval_set.ns(m)]] for ki, m in enumerate(eval_set.routed)}
        rejects = None
        if rejection is not None:
            r = rejection[qi] if rejection.ndim == 3 else rejection
            rejects = {m: [float(v) for v in r[ki, : eval_set.ns(m)]] for ki, m in enumerate(eval_set.routed)}
        levels = np.unique(np.asarray([p for ps in heads.values() for p in ps], dtype=float))
        levels = levels[(levels >= 0.0) & (levels <= 1.0)]
        members, ns = [], []
        for t in levels:
            decision = choose(heads, costs, eval_set.reference, int(tokens[qi]), float(t), rejection=rejects)
            members.append(index[decision.member])
            ns.append(decision.n)
        members.append(index[eval_set.reference])
        ns.append(1)
        table.levels.append(levels)
        table.members.append(np.asarray(members, dtype=int))
        table.ns.append(np.asarray(ns, dtype=int))
    return table


def route(
    eval_set: EvalSet, probabilities: np.ndarray, threshold: float, avg_output_tokens: dict[str, float], input_tokens: np.ndarray | None = None
) -> Choices:
    """Algorithm 1 per prompt at one threshold. ``probabilities``: [Q, K, N] for ``eval_set.routed``
    in order; ``input_tokens``: the estimate per prompt (default: the runtime's, chars / 4)."""
    return route_table(eval_set, probabilities, avg_output_tokens, input_tokens).at(threshold)


def sweep(
    eval_set: EvalSet,
    probabilities: np.ndarray,
    avg_output_tokens: dict[str, float],
    *,
    picker: str = "proxy",
    thresholds: Sequence[float] | None = None,
    quality: np.ndarray | None = None,
    cost: np.ndarray | None = None,
) -> list[OperatingPoint]:
    """One operating point per threshold (same order); ``thresholds`` None: every distinct
    predicted p and one above (the exact envelope). ``quality`` / ``cost``: [Q, M, N] arrays
    to score the choices with instead of ``eval_set.quality(picker)`` / ``eval_set.cost()``
    (e.g. verified-escalation arrays from ``training.evaluation.chains``)."""
    quality = eval_set.quality(picker) if quality is None else quality  # type: ignore[arg-type]
    cost = eval_set.cost() if cost is None else cost
    table = route_table(eval_set, probabilities, avg_output_tokens)
    grid = distinct_thresholds(probabilities, eval_set) if thresholds is None else list(thresholds)
    return [evaluate(eval_set, table.at(t), quality, cost, knob=float(t)) for t in grid]


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


def upper_hull(points: Sequence[OperatingPoint], tol: float = 1e-9) -> list[OperatingPoint]:
    """The upper concave frontier of ``points``, by cost: from the cheapest point (best
    quality among the cheapest) up to the cheapest point of the best quality. Points on a
    segment of it (within ``tol`` of quality) are kept: they are policies that run there.
    Every cost between two of them is reached by mixing the two at random."""
    chain: list[OperatingPoint] = []
    for point in pareto(points):
        while len(chain) >= 2:
            a, b = chain[-2], chain[-1]
            w = (b.cost - a.cost) / (point.cost - a.cost)
            on_segment = a.quality + w * (point.quality - a.quality)
            if b.quality < on_segment - tol * max(1.0, abs(on_segment)):  # b under the segment a -> point
                chain.pop()
            else:
                break
        chain.append(point)
    return chain


def _groups(points: Sequence[OperatingPoint], baseline: Baseline | None) -> list[list[OperatingPoint]]:
    """The points split by ``group`` (one group when none is set), each with always-reference."""
    by_group: dict[object, list[OperatingPoint]] = {}
    for point in points:
        by_group.setdefault(getattr(point, "group", None), []).append(point)
    reference = [] if baseline is None else [OperatingPoint(baseline.cost, baseline.quality, {}, knob=None)]
    return [list(group) + reference for group in by_group.values()] or [reference]


def hulls(points: Sequence[OperatingPoint], baseline: Baseline | None = None) -> list[list[OperatingPoint]]:
    """Upper hull per group (always-reference included when ``baseline`` is given)."""
    return [upper_hull(group) for group in _groups(points, baseline) if group]


def _hull_value(hull: list[OperatingPoint], costs: np.ndarray) -> np.ndarray:
    """Quality of the hull at each cost: linear between vertices, flat beyond the last
    (spending less than allowed), NaN below the first (not attainable)."""
    xs = np.asarray([p.cost for p in hull])
    ys = np.asarray([p.quality for p in hull])
    near = (costs < xs[0]) & (costs >= xs[0] * (1 - 1e-9))  # float noise of a target cost
    return np.interp(np.where(near, xs[0], costs), xs, ys, left=np.nan, right=ys[-1])


def frontier_quality(points: Sequence[OperatingPoint], costs: Sequence[float] | np.ndarray, baseline: Baseline | None = None) -> np.ndarray:
    """The attainable quality at each cost: the best group's hull (NaN where none reaches)."""
    costs = np.atleast_1d(np.asarray(costs, dtype=float))
    values = np.vstack([_hull_value(h, costs) for h in hulls(points, baseline)])
    with np.errstate(all="ignore"):
        best = np.where(np.all(np.isnan(values), axis=0), np.nan, np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=0))
    return best


def drop_at_cost_reduction(points: Sequence[OperatingPoint], baseline: Baseline, reduction: float) -> float:
    """Quality drop (%) at ``reduction`` on the upper convex hull of the points and
    always-reference (per group, best group); NaN if no point is that cheap. Mixing the
    two hull vertices around the target cost at random attains it."""
    target_cost = baseline.cost * (1.0 - reduction)
    quality = float(frontier_quality(points, [target_cost], baseline)[0])
    if np.isnan(quality):
        return float("nan")
    return baseline.quality_drop_pct(OperatingPoint(target_cost, quality, {}))


def _area(points: Sequence[OperatingPoint], lo: float, hi: float, baseline: Baseline | None) -> float:
    """Mean attainable quality over costs [lo, hi] (flat beyond the hull's end; 0 below its
    cheapest point, where nothing is attainable)."""
    if hi <= lo or not points:
        return float("nan")
    grid = np.linspace(lo, hi, 2001)
    values = np.nan_to_num(frontier_quality(points, grid, baseline), nan=0.0)
    return float(np.trapezoid(values, grid) / (hi - lo))


def aiq(points: Sequence[OperatingPoint], lo: float, hi: float, baseline: Baseline | None = None) -> float:
    """RouterBench's AIQ: average quality over the cost range [lo, hi] of the upper convex
    hull (with always-reference when ``baseline`` is given)."""
    return _area(points, lo, hi, baseline)


def apgr(points: Sequence[OperatingPoint], weakest: OperatingPoint, baseline: Baseline) -> float:
    """RouteLLM's APGR: the average performance gap recovered, PGR = (q - q_weak) / (q_ref - q_weak),
    over costs from the weakest single option to always-reference, on the upper convex hull."""
    gap = baseline.quality - weakest.quality
    if gap <= 0:
        return float("nan")
    mean_quality = _area(points, weakest.cost, baseline.cost, baseline)
    return (mean_quality - weakest.quality) / gap


def max_reduction_at_drop(points: Sequence[OperatingPoint], baseline: Baseline, max_drop_pct: float = 1.0) -> float:
    """Largest cost reduction (fraction) at which the hull's quality drop is at most
    ``max_drop_pct`` %; NaN if no point is that good. Negative when only points costlier
    than the reference get there."""
    target = baseline.quality - max_drop_pct / 100.0 * abs(baseline.quality)
    tol = 1e-12 * max(1.0, abs(target))
    best = float("nan")
    for hull in hulls(points, baseline):
        for j, point in enumerate(hull):
            if point.quality >= target - tol:
                if j == 0 or point.quality <= target:
                    cost = point.cost
                else:
                    left = hull[j - 1]
                    w = (target - left.quality) / (point.quality - left.quality)
                    cost = left.cost + w * (point.cost - left.cost)
                reduction = 1.0 - cost / baseline.cost
                best = reduction if np.isnan(best) else max(best, reduction)
                break
    return best
