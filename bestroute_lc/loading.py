"""Trained artifacts -> the routing setup both faces (LangChain, LlamaIndex) build their engine
from: the router, the reranker, the pool with the router's output lengths, and the threshold or
calibrated policy of a target. No framework beyond the engine's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestroute_lc.pool import Pool


@dataclass
class PretrainedSetup:
    router: Any
    reranker: Any
    pool: Pool
    #: ``threshold`` and/or ``policy`` resolved from the target, plus the caller's other settings.
    settings: dict[str, Any] = field(default_factory=dict)


def load_pretrained(
    router_path: str | Path,
    reward_path: str | Path | None = None,
    *,
    pool: Pool,
    reranker: Any = None,
    device: str | None = None,
    target: str | None = None,
    target_cost_reduction: float | None = None,
    target_max_quality_drop: float | None = None,
    target_reference_share: float | None = None,
    target_budget_per_1000: float | None = None,
    **settings: Any,
) -> PretrainedSetup:
    """Load the router (and the reward model as reranker unless one is given) and resolve a
    calibration target (``target="cost_reduction=0.4"`` or one ``target_*=``) to what
    ``bestroute-train calibrate`` stored: the policy when there is one, else the threshold.
    Members keep an explicitly set ``avg_output_tokens``; the others take the router's."""
    from bestroute_lc.reward import RewardPredictor
    from bestroute_lc.router import RouterPredictor

    router = RouterPredictor.from_pretrained(router_path, device=device)
    targets = {
        "cost_reduction": target_cost_reduction,
        "max_quality_drop": target_max_quality_drop,
        "reference_share": target_reference_share,
        "budget_per_1000": target_budget_per_1000,
    }
    keys = [f"{kind}={value:g}" for kind, value in targets.items() if value is not None]
    if target is not None:
        keys.append(target)
    if len(keys) > 1 or (keys and ("threshold" in settings or "policy" in settings)):
        raise ValueError("give one of threshold=, policy= or a single target (target= or target_*=)")
    if keys:
        (key,) = keys
        policies, thresholds = router.config.policies, router.config.thresholds
        if key in policies:
            policy = policies[key]
            settings["policy"] = policy
            threshold = policy.threshold if policy.threshold is not None else thresholds.get(key)
            if policy.kind == "router" and threshold is not None:
                settings["threshold"] = threshold
        elif key in thresholds:
            settings["threshold"] = thresholds[key]
        else:
            known = sorted(set(thresholds) | set(policies)) or ["none: run bestroute-train calibrate"]
            raise ValueError(f"{router_path} has no threshold calibrated for {key}; calibrated: {known}")
    lengths = {
        m.name: router.config.avg_output_tokens[m.name]
        for m in pool
        if "avg_output_tokens" not in m.model_fields_set and m.name in router.config.avg_output_tokens
    }
    if reranker is None and reward_path is not None:
        reranker = RewardPredictor.from_pretrained(reward_path, device=device)
    return PretrainedSetup(router=router, reranker=reranker, pool=pool.with_avg_output_tokens(lengths), settings=settings)


def build_engine(
    pool: Pool, router: Any, reranker: Any = None, *, threshold: float, threshold_given: bool, policy: Any = None,
    verifier: Any = None, escalation: Any = None, spend_cap_usd: float | None = None,
) -> tuple[Any, float, Any]:
    """The engine, the threshold and the verifier a face runs with: a router policy's calibrated
    threshold unless one was given, a verifier built from the policy's name unless one was given."""
    from bestroute_lc.engine import BestRouteEngine
    from bestroute_lc.policy import validate_threshold
    from bestroute_lc.verifiers import verifier_from_name

    threshold = validate_threshold(threshold)
    if policy is not None:
        if policy.kind == "router" and policy.threshold is not None and not threshold_given:
            threshold = validate_threshold(policy.threshold)
        if verifier is None and policy.verifier:
            verifier = verifier_from_name(policy.verifier)
    engine = BestRouteEngine(pool, router, reranker, spend_cap_usd, verifier=verifier, policy=policy, escalation=escalation)
    return engine, threshold, verifier
