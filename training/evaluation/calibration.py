"""Pick the threshold that meets a target on a calibration set.

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
from dataclasses import dataclass

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
