"""Evaluation report in the paper's format (section 5, App. B.1).

A :class:`Report` holds the cost-quality curves of several routing methods on one eval set
(BEST-Route with the proxy picker, with the oracle picker, baselines) and renders:

1. Table 1: quality drop (%) w.r.t. always-reference at 10/20/40/60 % cost reduction, on
   the upper convex hull of each method's operating points and always-reference
   (``drop_at_cost_reduction``: mixing two policies at random attains every point of the
   segment between them); "n/a" where a method never saves that much (a footnote then
   says how much it saves at most, as the paper does for N-class routing);
2. a summary table: APGR, AIQ (costs from the cheapest single option to always-reference,
   on the same hull), the largest cost reduction at <= 1 % quality drop and the number of
   operating points;
3. the routing distribution of one method (Figure 4): share of queries per member and n
   at the hull vertex nearest each target cost reduction;
4. the calibrated policies, when given: per target, the policy chosen on validation prompts
   (kind, why) and its cost reduction and quality drop there and on the evaluated prompts;
5. the cost estimation error per member (Table 7, App. B.1), when given;
6. PNG figures (matplotlib, Agg): all cost-quality curves (hulls), and the routing
   distribution as stacked bars;
7. JSON with every number, byte-identical for identical inputs.

``aggregate_tables`` gives mean +- std per cell over several reports (seeds, splits, folds),
``aggregate_calibrated`` the calibrated policies' test metrics over them.

matplotlib is imported only to draw figures (``Report.save(..., plots=True)``); markdown
and JSON need numpy only.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.outcomes import Choices, EvalSet, OperatingPoint, evaluate
from training.evaluation.sweep import (
    Baseline,
    aiq,
    apgr,
    drop_at_cost_reduction,
    hulls,
    max_reduction_at_drop,
    pareto,
)

#: The paper's Table 1 rows (fractions of the always-reference cost saved).
REDUCTIONS = (0.1, 0.2, 0.4, 0.6)
#: Significant digits of floats in the JSON.
JSON_DIGITS = 10


# -- helpers on an EvalSet ------------------------------------------------------------------
def single_options(eval_set: EvalSet, picker: str = "random", ns: Sequence[int] = (1,)) -> dict[str, OperatingPoint]:
    """The operating point of always choosing one (member, n), keyed "member:n" (n <= what
    every prompt recorded). With ``ns=range(1, 6)`` and picker "proxy" these are the
    paper's Figure 5 "best-of-n for each single LLM" baselines."""
    quality, cost = eval_set.quality(picker), eval_set.cost()  # type: ignore[arg-type]
    count = len(eval_set.prompts)
    out = {}
    for index, member in enumerate(eval_set.members):
        for n in ns:
            if n <= eval_set.ns(member):
                out[f"{member}:{n}"] = evaluate(eval_set, Choices.constant(count, index, n), quality, cost, knob=float(n))
    return out


def cheapest_single_option(eval_set: EvalSet) -> OperatingPoint:
    """The cheapest member at n = 1: the low end of the APGR / AIQ cost range."""
    return min(single_options(eval_set, "random", (1,)).values(), key=lambda p: (p.cost, -p.quality))


def cost_estimation_error(eval_set: EvalSet, avg_output_tokens: Mapping[str, float]) -> dict[str, float]:
    """App. B.1 / Table 7: per member, at n = 1, the mean over prompts of
    |estimated - actual| cost of one call in USD, where the estimate prices
    ``avg_output_tokens[member]`` output tokens (the training split's average) and the
    actual prices the prompt's mean recorded output tokens; both include the input cost."""
    errors = {}
    for member in eval_set.members:
        prices = eval_set.prices[member]
        gaps = []
        for prompt in eval_set.prompts:
            outcome = prompt.members[member]
            input_cost = prices.input_cost(outcome.input_tokens)
            estimated = input_cost + prices.output_cost(float(avg_output_tokens[member]))
            actual = input_cost + prices.output_cost(float(np.mean(outcome.output_tokens)))
            gaps.append(abs(estimated - actual))
        errors[member] = float(np.mean(gaps)) if gaps else float("nan")
    return errors


# -- metrics on one curve ------------------------------------------------------------------
def nearest_point(points: Sequence[OperatingPoint], baseline: Baseline, reduction: float) -> OperatingPoint:
    """The hull vertex (a policy actually run, not a mix) whose cost reduction is nearest
    ``reduction`` (ties: better quality)."""
    frontier = [p for hull in hulls(points) for p in hull]
    if not frontier:
        raise ValueError("no operating points")
    return min(frontier, key=lambda p: (abs(baseline.cost_reduction(p) - reduction), -p.quality))


# -- formatting ------------------------------------------------------------------------------
def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float | None, digits: int = 2, na: str = "n/a") -> str:
    if not _finite(x):
        return na
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _usd(x: float) -> str:
    if not _finite(x):
        return "n/a"
    return f"${x:,.4f}" if abs(x) >= 0.01 else f"${x:.3g}"


def _pct_label(reduction: float) -> str:
    return f"{100 * reduction:g}"


def _round(x: Any) -> Any:
    """JSON-safe, reproducible: floats to JSON_DIGITS significant digits, NaN/inf -> None."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return None
        value = float(f"{x:.{JSON_DIGITS}g}")
        return 0.0 if value == 0 else value
    if isinstance(x, Mapping):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v) for v in x]
    raise TypeError(f"cannot put {type(x).__name__} in the report JSON")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _split_label(label: str) -> tuple[str, int]:
    member, _, n = label.rpartition(":")
    return (member, int(n)) if member and n.isdigit() else (label, 0)


# -- the report ------------------------------------------------------------------------------
@dataclass
class Report:
    """Curves of several methods on one eval set, and everything rendered from them.

    ``curves``: method name -> operating points (a threshold sweep, or one point for a
    fixed router). ``weakest``: the cheapest single option (APGR's weak model, AIQ's low
    cost end); without it APGR and AIQ are n/a. ``routing_method``: whose routing
    distribution is shown (default: the first curve). ``members``: member order for the
    distribution (default: by name, the reference last). ``cost_errors``: member -> mean
    absolute cost estimation error in USD per query (``cost_estimation_error``).
    ``split``: seed / split / fold information, rendered as given.
    """

    dataset: str
    baseline: Baseline
    curves: dict[str, list[OperatingPoint]]
    weakest: OperatingPoint | None = None
    reference: str | None = None
    members: list[str] | None = None
    routing_method: str | None = None
    reductions: Sequence[float] = REDUCTIONS
    max_drop_pct: float = 1.0
    cost_errors: dict[str, float] | None = None
    split: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    quality_metric: str = "quality"
    #: Calibrated policies (``experiment.calibration_rows``): per target, the choice made on
    #: validation prompts and its metrics there and here.
    calibrated: list[dict[str, Any]] = field(default_factory=list)
    #: Which points the JSON lists per curve: "all", or "pareto" (the Pareto points, which
    #: contain the hull: Table 1, APGR and AIQ are the same from them; keeps files small when a
    #: curve has hundreds of thresholds). The summary's counts are of all points either way.
    json_points: str = "all"

    def __post_init__(self) -> None:
        if not self.curves:
            raise ValueError("a report needs at least one curve")
        empty = [name for name, points in self.curves.items() if not points]
        if empty:
            raise ValueError(f"curves without operating points: {empty}")
        if self.routing_method is None:
            self.routing_method = next(iter(self.curves))
        if self.routing_method not in self.curves:
            raise ValueError(f"routing_method {self.routing_method!r} not in curves {list(self.curves)}")
        if not self.baseline.cost > 0:
            raise ValueError("the always-reference cost must be positive")
        self.reductions = tuple(float(r) for r in self.reductions)

    @classmethod
    def from_eval_set(
        cls,
        eval_set: EvalSet,
        curves: dict[str, list[OperatingPoint]],
        *,
        avg_output_tokens: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> Report:
        """Baseline, cheapest single option, members and (given the training split's average
        output tokens) cost estimation errors taken from ``eval_set``."""
        kwargs.setdefault("dataset", eval_set.name)
        kwargs.setdefault("reference", eval_set.reference)
        kwargs.setdefault("members", list(eval_set.members))
        if avg_output_tokens is not None:
            kwargs.setdefault("cost_errors", cost_estimation_error(eval_set, avg_output_tokens))
        return cls(baseline=Baseline.of(eval_set), curves=curves, weakest=cheapest_single_option(eval_set), **kwargs)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from ``to_json()`` output (to re-render or aggregate saved runs)."""

        def point(raw: dict[str, Any]) -> OperatingPoint:
            return OperatingPoint(
                cost=raw["cost"], quality=raw["quality"], distribution=raw.get("distribution", {}), knob=raw.get("knob"),
                group=raw.get("group"),
            )

        return cls(
            dataset=data["dataset"],
            baseline=Baseline(cost=data["baseline"]["cost"], quality=data["baseline"]["quality"]),
            # JSON keys are sorted; "methods" keeps the curves' order
            curves={name: [point(p) for p in data["curves"][name]] for name in data.get("methods") or data["curves"]},
            weakest=point(data["weakest"]) if data.get("weakest") else None,
            reference=data.get("reference"),
            members=data.get("members"),
            routing_method=(data.get("routing") or {}).get("method"),
            reductions=tuple(r / 100 for r in data["reductions_pct"]),
            max_drop_pct=data.get("max_drop_pct", 1.0),
            cost_errors=data.get("cost_estimation_error"),
            split=data.get("split"),
            notes=list(data.get("notes", [])),
            quality_metric=data.get("quality_metric", "quality"),
            calibrated=list(data.get("calibrated", [])),
        )

    # -- numbers ---------------------------------------------------------------------------
    @property
    def cost_range(self) -> tuple[float, float] | None:
        return (self.weakest.cost, self.baseline.cost) if self.weakest is not None else None

    def table1(self) -> dict[str, dict[str, float]]:
        """method -> {"10": drop %, ...}; NaN where the method never saves that much."""
        return {
            name: {_pct_label(r): drop_at_cost_reduction(points, self.baseline, r) for r in self.reductions}
            for name, points in self.curves.items()
        }

    def reach(self, name: str) -> tuple[float, float]:
        """(largest cost reduction, its quality drop %) of a method: its cheapest hull vertex."""
        cheapest = min((hull[0] for hull in hulls(self.curves[name])), key=lambda p: (p.cost, -p.quality))
        return self.baseline.cost_reduction(cheapest), self.baseline.quality_drop_pct(cheapest)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, points in self.curves.items():
            lo_hi = self.cost_range
            out[name] = {
                "apgr": apgr(points, self.weakest, self.baseline) if self.weakest is not None else float("nan"),
                "aiq": aiq(points, *lo_hi, self.baseline) if lo_hi is not None else float("nan"),
                "max_cost_reduction_pct": 100 * max_reduction_at_drop(points, self.baseline, self.max_drop_pct),
                "points": len(points),
                "pareto_points": len(pareto(points)),
                "hull_points": sum(len(h) for h in hulls(points)),
                # False: the curve starts above the low end of the APGR / AIQ range, where
                # sweep's areas count quality 0 (a fixed router offers no trade-off there)
                "covers_cost_range": None if lo_hi is None else min(p.cost for p in points) <= lo_hi[0] * (1 + 1e-9),
            }
        return out

    def routing(self) -> list[dict[str, Any]]:
        """For ``routing_method``: the hull vertex nearest each target reduction."""
        points = self.curves[self.routing_method]  # type: ignore[index]
        rows = []
        for r in self.reductions:
            point = nearest_point(points, self.baseline, r)
            rows.append(
                {
                    "target_pct": 100 * r,
                    "cost_reduction_pct": 100 * self.baseline.cost_reduction(point),
                    "quality_drop_pct": self.baseline.quality_drop_pct(point),
                    "knob": point.knob,
                    "distribution": dict(point.distribution),
                }
            )
        return rows

    def routing_labels(self) -> list[str]:
        """Every "member:n" seen in the routing rows, in member order then by n."""
        labels = {label for row in self.routing() for label, share in row["distribution"].items() if share > 0}
        if self.members is not None:
            order = {m: i for i, m in enumerate(self.members)}
        else:
            names = sorted({_split_label(label)[0] for label in labels})
            if self.reference in names:
                names = [n for n in names if n != self.reference] + [self.reference]  # type: ignore[list-item]
            order = {m: i for i, m in enumerate(names)}

        def key(label: str) -> tuple[int, str, int]:
            member, n = _split_label(label)
            return (order.get(member, len(order)), member, n)

        return sorted(labels, key=key)

    # -- JSON ------------------------------------------------------------------------------
    def _json_points(self, points: list[OperatingPoint]) -> list[OperatingPoint]:
        if self.json_points == "all":
            return points
        if len({p.group for p in points}) == 1:
            return pareto(points)
        return [p for hull in hulls(points) for p in hull]

    def to_json(self) -> dict[str, Any]:
        """Every number of the report; NaN -> null, floats to 10 significant digits."""
        curves = {}
        for name, all_points in self.curves.items():
            points = self._json_points(all_points)
            on_frontier = {id(p) for p in pareto(points)}
            on_hull = {id(p) for hull in hulls(points) for p in hull}
            curves[name] = [
                {
                    "cost": p.cost,
                    "cost_per_1000": 1000 * p.cost,
                    "quality": p.quality,
                    "cost_reduction_pct": 100 * self.baseline.cost_reduction(p),
                    "quality_drop_pct": self.baseline.quality_drop_pct(p),
                    "knob": p.knob,
                    "distribution": dict(p.distribution),
                    "pareto": id(p) in on_frontier,
                    "hull": id(p) in on_hull,
                    **({"group": p.group} if p.group is not None else {}),
                }
                for p in points
            ]
        reach = {}
        for name in self.curves:
            reduction, drop = self.reach(name)
            reach[name] = {"cost_reduction_pct": 100 * reduction, "quality_drop_pct": drop}
        out = {
            "dataset": self.dataset,
            "reference": self.reference,
            "members": self.members,
            "quality_metric": self.quality_metric,
            "baseline": {"cost": self.baseline.cost, "cost_per_1000": 1000 * self.baseline.cost, "quality": self.baseline.quality},
            "weakest": None
            if self.weakest is None
            else {"cost": self.weakest.cost, "quality": self.weakest.quality, "distribution": dict(self.weakest.distribution)},
            "cost_range": list(self.cost_range) if self.cost_range else None,
            "reductions_pct": [100 * r for r in self.reductions],
            "max_drop_pct": self.max_drop_pct,
            "methods": list(self.curves),
            "curves": curves,
            "json_points": self.json_points,
            "table1": self.table1(),
            "reach": reach,
            "summary": self.summary(),
            "routing": {"method": self.routing_method, "rows": self.routing()},
            "cost_estimation_error": self.cost_errors,
            "split": self.split,
            "notes": list(self.notes),
            "calibrated": [dict(row) for row in self.calibrated],
        }
        return _round(out)

    def json_text(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=2, allow_nan=False) + "\n"

    # -- markdown --------------------------------------------------------------------------
    def to_markdown(self, figures: bool = False) -> str:
        """The report as markdown; ``figures``: link curves.png and routing.png (as ``save`` does)."""
        ref = f"always-`{self.reference}`" if self.reference else "always-reference"
        parts = [f"# BEST-Route evaluation: {self.dataset}", ""]
        parts.append(
            f"Reference ({ref}): {self.quality_metric} {self.baseline.quality:.4f}, "
            f"cost {_usd(1000 * self.baseline.cost)} per 1,000 calls."
        )
        if self.weakest is not None:
            label = ", ".join(sorted(self.weakest.distribution)) or "?"
            parts.append(
                f"Cheapest single option ({label}): {self.quality_metric} {self.weakest.quality:.4f}, "
                f"cost {_usd(1000 * self.weakest.cost)} per 1,000 calls."
            )
        if self.split:
            parts.append("Split: " + ", ".join(f"{k}={v}" for k, v in self.split.items()) + ".")
        parts.append("")

        # Table 1
        metric = "" if self.quality_metric == "quality" else f" ({self.quality_metric})"
        table = self.table1()
        names = list(self.curves)
        parts += ["## Quality drop at cost reduction (Table 1)", ""]
        rows = [[_pct_label(r)] + [_num(table[n][_pct_label(r)]) for n in names] for r in self.reductions]
        parts.append(_table(["Cost reduction (%)"] + names, rows))
        parts += [
            "",
            (
                f"Quality drop{metric} in % of {ref}'s quality, on the upper convex hull of each method's "
                f"operating points and {ref} (mixing two policies at random attains every point between them); "
                "negative = a gain; n/a = the method never saves that much."
            ),
        ]
        for name in names:
            if any(not _finite(table[name][_pct_label(r)]) for r in self.reductions):
                reduction, drop = self.reach(name)
                parts.append(f"- {name}: at most {_num(100 * reduction)} % cost reduction, with {_num(drop)} % quality drop.")
        parts.append("")

        # summary
        summary = self.summary()
        lo_hi = self.cost_range
        parts += ["## Summary", ""]
        mark = {n: "" if summary[n]["covers_cost_range"] is not False else " †" for n in names}
        rows = [
            [
                n,
                _num(summary[n]["apgr"], 4) + mark[n],
                _num(summary[n]["aiq"], 4) + mark[n],
                _num(summary[n]["max_cost_reduction_pct"]),
                f"{summary[n]['points']} ({summary[n]['pareto_points']})",
            ]
            for n in names
        ]
        parts.append(
            _table(["Method", "APGR", "AIQ", f"Max cost reduction (%) at <= {self.max_drop_pct:g} % drop", "Points (Pareto)"], rows)
        )
        parts.append("")
        parts.append("APGR, AIQ and the max cost reduction are read on the same hulls as Table 1.")
        parts.append("")
        if lo_hi is not None:
            parts.append(
                f"APGR and AIQ over costs {_usd(1000 * lo_hi[0])} to {_usd(1000 * lo_hi[1])} per 1,000 calls "
                "(cheapest single option to always-reference)."
            )
            if any(mark.values()):
                parts.append(
                    "† The curve starts above that range's low cost; below its cheapest point its quality counts as 0 "
                    "(as in `sweep.aiq` / `sweep.apgr`), so these values are not comparable with full curves."
                )
        else:
            parts.append("APGR and AIQ need the cheapest single option (`weakest`), which was not given.")
        parts.append("")

        # routing distribution
        rows_r = self.routing()
        labels = self.routing_labels()
        parts += [f"## Routing distribution: {self.routing_method} (Figure 4)", ""]
        header = ["Target reduction (%)", "Actual reduction (%)", "Quality drop (%)", "Knob"] + [
            f"{m} n={n}" if n else m for m, n in map(_split_label, labels)
        ]
        rows = [
            [
                _num(row["target_pct"], 0),
                _num(row["cost_reduction_pct"]),
                _num(row["quality_drop_pct"]),
                _num(row["knob"], 2, na="-"),
            ]
            + [_num(100 * row["distribution"].get(label, 0.0), 1) for label in labels]
            for row in rows_r
        ]
        parts.append(_table(header, rows))
        parts += ["", "Shares of queries in %, at the hull vertex (a policy, not a mix) nearest each target cost reduction.", ""]

        if self.calibrated:
            parts += ["## Calibrated policies (chosen on validation prompts)", ""]
            rows = [
                [
                    str(row["target"]),
                    str(row["kind"]),
                    str(row["label"]),
                    _num(row.get("validation_cost_reduction_pct")),
                    _num(row.get("validation_quality_drop_pct")),
                    _num(row.get("test_cost_reduction_pct")),
                    _num(row.get("test_quality_drop_pct")),
                ]
                for row in self.calibrated
            ]
            parts.append(_table(
                ["Target", "Kind", "Policy", "Validation reduction (%)", "Validation drop (%)", "Reduction here (%)", "Drop here (%)"],
                rows, ["l", "l", "l", "r", "r", "r", "r"],
            ))
            parts += [""] + [f"- `{row['target']}`: {row['reason']}" for row in self.calibrated if row.get("reason")] + [""]

        if self.cost_errors is not None:
            parts += ["## Cost estimation error (App. B.1, Table 7)", ""]
            rows = [[m, f"{e:.6f}" if _finite(e) else "n/a", _usd(1000 * e)] for m, e in self.cost_errors.items()]
            parts.append(_table(["Member", "Error ($ / query)", "Error per 1,000 calls"], rows))
            parts += [
                "",
                (
                    "Mean |estimated - actual| cost of one call (n = 1); the estimate uses the training split's "
                    "average output length."
                ),
                "",
            ]

        if figures:
            parts += ["## Figures", "", "![cost-quality curves](curves.png)", "", "![routing distribution](routing.png)", ""]
        if self.notes:
            parts += ["## Notes", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(parts)

    # -- figures ---------------------------------------------------------------------------
    def plot_curves(self, path: str | Path) -> Path:
        """Cost (per 1,000 calls, bottom; reduction %, top) vs quality (left; drop %, right)."""
        plt = _pyplot()
        base_x, base_q = 1000 * self.baseline.cost, self.baseline.quality
        fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=120)
        markers = "oDs^v<>pPhX*"
        colors = plt.get_cmap("tab10" if len(self.curves) <= 10 else "tab20").colors
        for i, (name, points) in enumerate(self.curves.items()):
            color, marker = colors[i % len(colors)], markers[i % len(markers)]
            groups = hulls(points)
            vertices = sum(len(h) for h in groups)
            if len(points) > vertices:
                ax.scatter([1000 * p.cost for p in points], [p.quality for p in points], s=8, color=color, alpha=0.25, linewidths=0)
            for gi, frontier in enumerate(groups):
                xs, ys = [1000 * p.cost for p in frontier], [p.quality for p in frontier]
                label = (name if len(frontier) == 1 else f"{name} (hull)") if gi == 0 else None
                if len(frontier) == 1:
                    ax.scatter(xs, ys, s=90, color=color, marker=marker, edgecolors="black", linewidths=0.6, label=label, zorder=4)
                else:
                    ax.plot(xs, ys, color=color, marker=marker, markersize=4, linewidth=1.8, label=label, zorder=3)
        # hollow, so a fixed router sitting at the reference's cost stays visible inside it
        ax.scatter([base_x], [base_q], s=320, marker="*", facecolors="none", edgecolors="black", linewidths=1.2, zorder=5,
                   label=f"always-{self.reference}" if self.reference else "always-reference")
        ax.axhline(base_q, color="grey", linestyle="--", linewidth=0.8, zorder=1)
        for r in self.reductions:
            ax.axvline(base_x * (1 - r), color="grey", linestyle=":", linewidth=0.7, zorder=1)
        # Routing is about spending less than the reference: options far costlier than it
        # (e.g. the reference's own best-of-10) would squeeze every curve against the axis.
        x_max = 1.15 * base_x
        beyond = sum(1000 * p.cost > x_max for points in self.curves.values() for h in hulls(points) for p in h)
        ax.set_xlim(0, x_max)
        ax.set_xlabel("Cost per 1,000 calls (USD)" + (f"  ({beyond} costlier hull point(s) off the right edge)" if beyond else ""))
        ax.set_ylabel(self.quality_metric[:1].upper() + self.quality_metric[1:])
        ax.set_title(f"{self.dataset}: cost vs quality")
        ax.grid(True, alpha=0.25)
        top = ax.secondary_xaxis(
            "top", functions=(lambda x: 100 * (1 - x / base_x), lambda r: base_x * (1 - r / 100))
        )
        top.set_xlabel("Cost reduction vs always-reference (%)  (dotted: " + ", ".join(_pct_label(r) for r in self.reductions) + " %)")
        if base_q:
            right = ax.secondary_yaxis(
                "right", functions=(lambda q: 100 * (base_q - q) / abs(base_q), lambda d: base_q - d / 100 * abs(base_q))
            )
            right.set_ylabel("Quality drop (%)")
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
        fig.tight_layout()
        return _save_figure(fig, path)

    def plot_routing(self, path: str | Path) -> Path:
        """Figure 4 style stacked bars: share of queries per member and n at each target."""
        plt = _pyplot()
        rows, labels = self.routing(), self.routing_labels()
        members = list(dict.fromkeys(_split_label(label)[0] for label in labels))
        maps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "YlOrBr", "PuRd", "GnBu", "BuPu", "YlGn"]
        colors = {}
        for i, member in enumerate(members):
            cmap = plt.get_cmap("Greys" if member == self.reference else maps[i % len(maps)])
            own = [label for label in labels if _split_label(label)[0] == member]
            for j, label in enumerate(own):
                colors[label] = cmap(0.55 if len(own) == 1 else 0.35 + 0.55 * j / (len(own) - 1))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 4.0), 5.0), dpi=120)
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for label in labels:
            shares = np.array([100 * row["distribution"].get(label, 0.0) for row in rows])
            member, n = _split_label(label)
            ax.bar(x, shares, 0.6, bottom=bottom, color=colors[label], edgecolor="white", linewidth=0.6,
                   label=f"{member}, n={n}" if n else member)
            for xi, (b, s) in enumerate(zip(bottom, shares)):
                if s >= 6:
                    ax.text(xi, b + s / 2, f"{s:.0f}%", ha="center", va="center", fontsize=7.5)
            bottom += shares
        for xi, row in enumerate(rows):
            ax.text(xi, 101.5, f"drop {_num(row['quality_drop_pct'])} %", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{_num(row['target_pct'], 0)} %\n(at {_num(row['cost_reduction_pct'], 1)} %)" for row in rows])
        ax.set_xlabel("Target cost reduction (actual, at the nearest operating point)")
        ax.set_ylabel("Share of queries (%)")
        ax.set_ylim(0, 110)
        ax.set_title(f"{self.dataset}: routing distribution of {self.routing_method}")
        if labels:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="member, best-of-n", title_fontsize=8)
        fig.tight_layout()
        return _save_figure(fig, path)

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: str | Path, plots: bool = True) -> dict[str, Path]:
        """Write report.md, report.json and (``plots``) curves.png, routing.png into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": directory / "report.md", "json": directory / "report.json"}
        if plots:
            paths["curves"] = self.plot_curves(directory / "curves.png")
            paths["routing"] = self.plot_routing(directory / "routing.png")
        paths["markdown"].write_text(self.to_markdown(figures=plots), encoding="utf-8")
        paths["json"].write_text(self.json_text(), encoding="utf-8")
        return paths


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("report figures need matplotlib (pip install matplotlib), or save(..., plots=False)") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


# -- several seeds / splits ----------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    finite = [v for v in values if _finite(v)]
    if not finite:
        return float("nan"), float("nan"), 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def aggregate(reports: Sequence[Report]) -> dict[str, Any]:
    """Mean, std (sample, ddof = 1; 0 for one value) and count of finite values of every
    Table 1 and summary cell over ``reports`` (the same methods and reductions in each)."""
    if not reports:
        raise ValueError("nothing to aggregate")
    methods = list(reports[0].curves)
    reductions = tuple(reports[0].reductions)
    for report in reports[1:]:
        if list(report.curves) != methods or tuple(report.reductions) != reductions:
            raise ValueError("reports to aggregate must have the same methods and cost reductions")
    tables = [r.table1() for r in reports]
    summaries = [r.summary() for r in reports]

    def cell(values: Sequence[float]) -> dict[str, float]:
        mean, std, count = _mean_std(values)
        return {"mean": mean, "std": std, "count": count}

    return {
        "runs": len(reports),
        "datasets": sorted({r.dataset for r in reports}),
        "methods": methods,
        "reductions_pct": [100 * r for r in reductions],
        "reduction_labels": [_pct_label(r) for r in reductions],
        "baseline_quality": cell([r.baseline.quality for r in reports]),
        "baseline_cost_per_1000": cell([1000 * r.baseline.cost for r in reports]),
        "table1": {
            m: {_pct_label(r): cell([t[m][_pct_label(r)] for t in tables]) for r in reductions} for m in methods
        },
        "summary": {
            m: {k: cell([s[m][k] for s in summaries]) for k in ("apgr", "aiq", "max_cost_reduction_pct", "points")}
            for m in methods
        },
        "max_drop_pct": reports[0].max_drop_pct,
    }


def _pm(c: Mapping[str, float], runs: int, digits: int = 2) -> str:
    if not c["count"]:
        return "n/a"
    text = f"{_num(c['mean'], digits)} ± {_num(c['std'], digits)}"
    return text if c["count"] == runs else f"{text} ({c['count']}/{runs})"


def aggregate_tables(reports: Sequence[Report]) -> str:
    """Table 1 and the summary as mean ± std over several reports (seeds, splits, folds);
    "(k/N)" marks a cell finite in only k of the N runs, "n/a" one finite in none."""
    agg = aggregate(reports)
    runs, methods = agg["runs"], agg["methods"]
    parts = [
        f"# BEST-Route evaluation: {', '.join(agg['datasets'])}, mean ± std over {runs} runs",
        "",
        (
            f"Always-reference: quality {_pm(agg['baseline_quality'], runs, 4)}, "
            f"cost per 1,000 calls ${_pm(agg['baseline_cost_per_1000'], runs, 4)}."
        ),
        "",
        "## Quality drop at cost reduction (Table 1)",
        "",
    ]
    rows = [[label] + [_pm(agg["table1"][m][label], runs) for m in methods] for label in agg["reduction_labels"]]
    parts.append(_table(["Cost reduction (%)"] + methods, rows))
    parts += ["", "Std is the sample standard deviation (ddof = 1); (k/N): finite in k of N runs.", "", "## Summary", ""]
    rows = [
        [
            m,
            _pm(agg["summary"][m]["apgr"], runs, 4),
            _pm(agg["summary"][m]["aiq"], runs, 4),
            _pm(agg["summary"][m]["max_cost_reduction_pct"], runs),
            _pm(agg["summary"][m]["points"], runs, 1),
        ]
        for m in methods
    ]
    parts.append(_table(["Method", "APGR", "AIQ", f"Max cost reduction (%) at <= {agg['max_drop_pct']:g} % drop", "Points"], rows))
    parts.append("")
    return "\n".join(parts)


def aggregate_calibrated(reports: Sequence[Report]) -> str:
    """Per calibration target over several reports (folds): which kinds of policy were
    chosen on validation, and mean ± std of the cost reduction and quality drop measured on
    the evaluated (test) prompts. Empty when no report has calibrated policies."""
    rows_by_target: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for row in report.calibrated:
            rows_by_target.setdefault(str(row["target"]), []).append(row)
    if not rows_by_target:
        return ""
    runs = len(reports)

    def cell(values: Sequence[float]) -> str:
        mean, std, count = _mean_std(values)
        return _pm({"mean": mean, "std": std, "count": count}, runs)

    lines = []
    for target, rows in rows_by_target.items():
        kinds = Counter(str(r["kind"]) for r in rows)
        lines.append([
            target,
            ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
            cell([r.get("validation_cost_reduction_pct", float("nan")) for r in rows]),
            cell([r.get("validation_quality_drop_pct", float("nan")) for r in rows]),
            cell([r.get("test_cost_reduction_pct", float("nan")) for r in rows]),
            cell([r.get("test_quality_drop_pct", float("nan")) for r in rows]),
        ])
    parts = [
        "## Calibrated policy (chosen on validation, measured on test)",
        "",
        _table(
            ["Target", "Chosen (folds)", "Validation reduction (%)", "Validation drop (%)", "Test reduction (%)", "Test drop (%)"],
            lines, ["l", "l", "r", "r", "r", "r"],
        ),
        "",
        (
            "Per fold, calibration picks the best policy for the target on the validation prompts among router thresholds, "
            "router with verified escalation, constant (member, n) and verified chains; the test columns are what that "
            "choice does on the fold's test prompts."
        ),
        "",
    ]
    return "\n".join(parts)
