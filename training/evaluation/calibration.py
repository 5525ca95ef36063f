"""Pick the policy (``choose_policy``) or the router threshold (``calibrate``) that meets a
target on a calibration set.

``choose_policy`` chooses among every runnable policy (router thresholds, router with
verified escalation, constant (member, n), verified chains; ``training.evaluation.policies``)
and gives the ``PolicyChoice`` stored in ``RouterConfig.policies[target]``, with a reason and
its validation metrics. ``calibrate`` is the router-only calibration below.

Targets (one per call), each resolved on the operating points of a threshold sweep:

* ``cost_reduction=r``: the highest threshold (best quality) that still saves at least r;
* ``max_quality_drop=d``: the lowest threshold (cheapest) whose quality drop is at most d %;
* ``reference_share=s``: the lowest threshold that sends at least a share s of calls to
  the reference;
* ``budget_per_1000=b``: the highest threshold whose cost per 1,000 calls is at most b USD.

The result is stored in the router artifact's ``thresholds`` under the target's name
(e.g. ``"cost_reduction=0.4"``), which ``BestRouteChatModel.from_pretrained(...,
target_cost_reduction=0.4)`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.evaluation.outcomes import OperatingPoint
from training.evaluation.sweep import Baseline

TARGETS = ("cost_reduction", "max_quality_drop", "reference_share", "budget_per_1000")


def target_key(kind: str, value: float) -> str:
    if kind not in TARGETS:
        raise ValueError(f"unknown calibration target {kind!r}; known: {TARGETS}")
    return f"{kind}={value:g}"


@dataclass(frozen=True)
class Calibration:
    key: str
    threshold: float
    cost_reduction: float
    quality_drop_pct: float
    reference_share: float
    cost_per_1000: float


def calibrate(
    points: Sequence[OperatingPoint], baseline: Baseline, reference: str, kind: str, value: float
) -> Calibration:
    """``points`` from ``sweep`` (``knob`` = threshold). Raises ``ValueError`` if no threshold meets the target."""
    key = target_key(kind, value)

    def reference_share(point: OperatingPoint) -> float:
        return sum(share for label, share in point.distribution.items() if label.split(":")[0] == reference)

    by_threshold = sorted(points, key=lambda p: p.knob if p.knob is not None else 0.0)
    if kind == "cost_reduction":
        ok = [p for p in by_threshold if baseline.cost_reduction(p) >= value]
        chosen = ok[-1] if ok else None
    elif kind == "max_quality_drop":
        ok = [p for p in by_threshold if baseline.quality_drop_pct(p) <= value]
        chosen = ok[0] if ok else None
    elif kind == "reference_share":
        ok = [p for p in by_threshold if reference_share(p) >= value]
        chosen = ok[0] if ok else None
    else:
        ok = [p for p in by_threshold if p.cost * 1000 <= value]
        chosen = ok[-1] if ok else None
    if chosen is None or chosen.knob is None:
        raise ValueError(f"no threshold meets {key} on the calibration set")
    return Calibration(
        key=key,
        threshold=float(chosen.knob),
        cost_reduction=baseline.cost_reduction(chosen),
        quality_drop_pct=baseline.quality_drop_pct(chosen),
        reference_share=reference_share(chosen),
        cost_per_1000=chosen.cost * 1000,
    )


# -- choosing among policies -------------------------------------------------------------------
@dataclass
class PolicyCalibration:
    """The policy chosen for one target on the calibration (validation) set, and why."""

    key: str
    policy: Any  # training.evaluation.policies.Policy, with its validation point
    reason: str
    validation: dict[str, float]
    #: The best router-only policy for the target (None: no router threshold meets it):
    #: what ``RouterConfig.thresholds[key]`` keeps for runtimes that read thresholds only.
    router: Any = None
    #: Per kind ("router", "router+verifier", "constant", "verified"): how many candidates
    #: there were and the best one's validation metrics (None: none met the target).
    by_kind: dict[str, Any] = field(default_factory=dict)

    def choice(self) -> Any:
        return self.policy.to_choice(self.reason, self.validation)


def _metrics(point: OperatingPoint, baseline: Baseline, reference: str, prompts: int) -> dict[str, float]:
    from training.evaluation.policies import reference_share

    return {
        "cost_reduction": baseline.cost_reduction(point),
        "quality_drop_pct": baseline.quality_drop_pct(point),
        "quality": point.quality,
        "reference_quality": baseline.quality,
        "reference_share": reference_share(point, reference),
        "cost_per_1000": point.cost * 1000,
        "prompts": float(prompts),
    }


def _family(policy: Any) -> str:
    return "router+verifier" if policy.kind == "router" and policy.verifier else policy.kind


def quality_bound(policy: Any, reference_per_prompt: np.ndarray | None, z: float) -> float:
    """Lower confidence bound of the policy's mean quality: mean - z x the standard error of
    its paired per-prompt difference with always-reference (0 without per-prompt values)."""
    per_prompt = getattr(policy, "per_prompt", None)
    if z <= 0 or per_prompt is None or reference_per_prompt is None or len(per_prompt) < 2:
        return policy.point.quality
    diff = np.asarray(per_prompt, dtype=float) - np.asarray(reference_per_prompt, dtype=float)
    return policy.point.quality - z * float(np.std(diff, ddof=1)) / np.sqrt(len(diff))


def _pick(
    candidates: Sequence[Any], baseline: Baseline, reference: str, kind: str, value: float,
    reference_per_prompt: np.ndarray | None = None, z: float = 0.0,
) -> Any | None:
    """The best candidate meeting the target, quality read as its lower confidence bound;
    exact ties go to the simpler kind (constant, verified, router), then to the lower
    threshold / fewer samples."""
    from training.evaluation.policies import KIND_ORDER, reference_share

    tol = 1e-12
    bound = {id(p): quality_bound(p, reference_per_prompt, z) for p in candidates}

    def simple(p: Any) -> tuple:
        return (KIND_ORDER[p.kind], bool(p.verifier), p.threshold or 0.0, p.n or 0, p.label)

    def drop_bound(p: Any) -> float:
        return baseline.quality_drop_pct(OperatingPoint(p.point.cost, bound[id(p)], {}))

    if kind == "cost_reduction":
        ok = [p for p in candidates if baseline.cost_reduction(p.point) >= value - tol]
        key = lambda p: (-bound[id(p)], p.point.cost, *simple(p))
    elif kind == "max_quality_drop":
        ok = [p for p in candidates if drop_bound(p) <= value + 1e-9]
        key = lambda p: (p.point.cost, -bound[id(p)], *simple(p))
    elif kind == "reference_share":
        ok = [p for p in candidates if reference_share(p.point, reference) >= value - tol]
        key = lambda p: (p.point.cost, -bound[id(p)], *simple(p))
    else:
        ok = [p for p in candidates if p.point.cost * 1000 <= value * (1 + tol)]
        key = lambda p: (-bound[id(p)], p.point.cost, *simple(p))
    return min(ok, key=key) if ok else None


_RULES = {
    "cost_reduction": "best validation quality{z} among policies saving at least {v:.1%} of the reference's cost",
    "max_quality_drop": "cheapest policy whose validation quality drop{z} is at most {v:g} %",
    "reference_share": "cheapest policy sending at least {v:.1%} of calls to the reference",
    "budget_per_1000": "best validation quality{z} at most ${v:g} per 1,000 calls",
}


def choose_policy(
    candidates: Sequence[Any],
    baseline: Baseline,
    reference: str,
    kind: str,
    value: float,
    *,
    prompts: int = 0,
    reference_per_prompt: np.ndarray | None = None,
    z: float = 0.0,
) -> PolicyCalibration:
    """Pick, for one target, the best of ``candidates`` (``policies.Policy`` with validation
    points: router thresholds, router with verified escalation, constants, verified chains):

    * ``cost_reduction=r``: the best quality among those saving at least r;
    * ``max_quality_drop=d``: the cheapest whose quality drop is at most d %;
    * ``reference_share=s``: the cheapest sending at least s of calls to the reference;
    * ``budget_per_1000=b``: the best quality at most b USD per 1,000 calls.

    With ``z`` > 0 and per-prompt values (``Policy.per_prompt`` and ``reference_per_prompt``),
    "quality" is the lower confidence bound ``quality_bound``: mean minus z standard errors
    of the paired difference with always-reference on the calibration prompts. That guards
    against picking, among hundreds of candidates on a few dozen prompts, the one that was
    lucky on them (z = 0: the plain means). Exact ties go to the simpler policy (constant,
    verified, router). Every constant policy (always-reference included, whose bound is its
    mean) is a candidate, so the choice is never worse on the calibration set than the best
    constant policy meeting the target under the same rule. Raises ``ValueError`` if nothing
    meets it.
    """
    key = target_key(kind, value)
    chosen = _pick(candidates, baseline, reference, kind, value, reference_per_prompt, z)
    if chosen is None:
        raise ValueError(f"no policy meets {key} on the calibration set")

    def metrics(policy: Any) -> dict[str, float]:
        out = _metrics(policy.point, baseline, reference, prompts)
        out["quality_bound"] = quality_bound(policy, reference_per_prompt, z)
        out["z"] = float(z)
        return out

    by_kind: dict[str, Any] = {}
    for family in ("router", "router+verifier", "constant", "verified"):
        members = [p for p in candidates if _family(p) == family]
        if not members:
            continue
        best = _pick(members, baseline, reference, kind, value, reference_per_prompt, z)
        by_kind[family] = {
            "candidates": len(members),
            "best": None if best is None else {"label": best.label, **metrics(best)},
        }
    validation = metrics(chosen)
    counts = ", ".join(f"{v['candidates']} {k}" for k, v in by_kind.items())
    runners = "; ".join(
        f"best {k}: {v['best']['label']} ({100 * v['best']['cost_reduction']:.1f} % cheaper, "
        f"drop {v['best']['quality_drop_pct']:.2f} %)"
        for k, v in by_kind.items()
        if v["best"] is not None and k != _family(chosen)
    )
    rule = _RULES[kind].format(v=value, z=f" (lower bound, z = {z:g})" if z > 0 and reference_per_prompt is not None else "")
    reason = (
        f"{rule} on {prompts} validation prompts, among {counts} policies: "
        f"{chosen.label} ({100 * validation['cost_reduction']:.1f} % cheaper, drop {validation['quality_drop_pct']:.2f} %)"
        + (f"; {runners}" if runners else "")
    )
    router_only = _pick(
        [p for p in candidates if p.kind == "router" and not p.verifier], baseline, reference, kind, value, reference_per_prompt, z
    )
    return PolicyCalibration(key, chosen, reason, validation, router_only, by_kind)
