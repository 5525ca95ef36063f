"""``bestroute-train evaluate`` and ``calibrate`` on a training work directory (the trained
reward model and router, recorded samples and scores, the split).

* :func:`evaluate_store`: the report on a split (default test): every policy family
  (router at every distinct p, router with verified escalation, constants, verified chains)
  and the baselines fitted on the training split; with ``targets``, the calibrated policy
  chosen on the validation split is measured on the evaluated split too.
* :func:`calibrate_store`: per target, the best policy on a split (default validation)
  among router thresholds, router with verified escalation, constants and verified chains,
  written to the router artifact: ``RouterConfig.policies[target]`` (a ``PolicyChoice``
  with its reason and validation metrics), ``thresholds[target]`` (the best router-only
  threshold for the target, as before, for runtimes that read thresholds only) and
  ``training["calibration"][target]`` (the numbers).

``reranker``: which picker the runtime will use (``reward_model``, ``code_execution`` with the
reward model as tiebreaker, ``oracle``, ``random``); ``verifier``: ``none`` or ``execution``
(per-sample visible-example runs in the isolated sandbox, cached under ``cache_dir`` keyed by
the samples and prompts files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.evaluation.outcomes import RERANKER_PICKERS, EvalSet


def _store_fingerprint(config: TrainConfig) -> str:
    from bestroute_lc.files import sha256_of

    return sha256_of(config.prompts, config.samples_path)


def _attach_execution(config: TrainConfig, eval_set: EvalSet, data: dict[str, Any], cache_dir: Path | None) -> None:
    from training.evaluation.execution import execute_samples

    texts = {(p.id, m): data[p.id].members[m].texts for p in eval_set.prompts for m in eval_set.members}
    results = execute_samples(
        {p.id: p.text for p in eval_set.prompts}, texts, cache_dir=cache_dir, table_fingerprint=_store_fingerprint(config)
    )
    for prompt in eval_set.prompts:
        for member, outcome in prompt.members.items():
            outcome.passes, outcome.checks = results[(prompt.id, member)]


def _eval_set(
    config: TrainConfig, ids: list[str], reward: Any, name: str, reranker: str, verifier: str, cache_dir: Path | None,
    execute: bool = True,
) -> EvalSet:
    """The split's prompts with proxy scores (reward-model and code-execution pickers) and,
    when the picker or the verifier needs them and ``execute``, visible-example results."""
    from training.evaluation.from_store import eval_set_from_store
    from training.pipeline import load_data

    picker = RERANKER_PICKERS[reranker]
    eval_set = eval_set_from_store(config, ids, reward if picker in ("proxy", "execution") else None, name=name)
    if picker in ("oracle", "random"):
        for prompt in eval_set.prompts:
            for outcome in prompt.members.values():
                outcome.proxy = None
    if execute and (picker.startswith("execution") or verifier == "execution"):
        _, data, _ = load_data(config)
        _attach_execution(config, eval_set, data, cache_dir)
    return eval_set


def _check(reranker: str, verifier: str) -> None:
    if reranker not in RERANKER_PICKERS:
        raise ValueError(f"unknown reranker {reranker!r}; known: {sorted(RERANKER_PICKERS)}")
    if verifier not in ("none", "execution"):
        raise ValueError(f"unknown verifier {verifier!r}; known: none, execution")


def calibrate_store(
    config: TrainConfig,
    targets: list[tuple[str, float]],
    split_name: str = "validation",
    *,
    reranker: str = "reward_model",
    verifier: str = "none",
    cache_dir: Path | None = Path("reports/cache"),
    write: bool = True,
    z: float = 1.0,
) -> dict[str, Any]:
    """Choose and store a policy per target (see the module docstring). Raises ``ValueError``
    when no policy meets a target."""
    from bestroute_lc.artifacts import write_config
    from bestroute_lc.reward import RewardPredictor
    from bestroute_lc.router import RouterPredictor
    from training.evaluation.calibration import choose_policy
    from training.evaluation.from_store import router_probabilities
    from training.evaluation.policies import PolicySet
    from training.evaluation.sweep import Baseline
    from training.loop import is_main_process
    from training.pipeline import load_data

    _check(reranker, verifier)
    if not targets:
        raise ValueError("give at least one --target, e.g. --target cost_reduction=0.4")
    _, _, split = load_data(config)
    ids = getattr(split, split_name) or split.train
    reward = RewardPredictor.from_pretrained(config.reward_dir)
    router = RouterPredictor.from_pretrained(config.router_dir)
    eval_set = _eval_set(config, ids, reward, f"{split_name} split", reranker, verifier, cache_dir)
    if not eval_set.prompts:
        raise ValueError(f"no {split_name} prompt has samples of every member")
    policies = PolicySet(
        eval_set, RERANKER_PICKERS[reranker], probabilities=router_probabilities(router, eval_set),
        avg_output_tokens=router.config.avg_output_tokens or eval_set.average_output_tokens(),
        verifier=None if verifier == "none" else verifier,
    )
    candidates = policies.all()
    baseline = Baseline.of(eval_set)
    results: dict[str, Any] = {}
    for kind, value in targets:
        chosen = choose_policy(
            candidates, baseline, config.pool.reference, kind, value, prompts=len(eval_set.prompts),
            reference_per_prompt=policies.reference_quality, z=z,
        )
        router.config.policies[chosen.key] = chosen.choice()
        threshold = chosen.router.threshold if chosen.router is not None else None
        if threshold is not None:
            router.config.thresholds[chosen.key] = threshold
        else:
            router.config.thresholds.pop(chosen.key, None)  # no router threshold meets it: no stale one
        results[chosen.key] = {
            "key": chosen.key,
            "kind": chosen.policy.kind,
            "policy": chosen.policy.label,
            "threshold": threshold,
            **{k: v for k, v in chosen.validation.items() if k != "prompts"},
            "reason": chosen.reason,
            "reranker": reranker,
            "verifier": verifier,
            "split": split_name,
            "prompts": len(eval_set.prompts),
        }
    router.config.training.setdefault("calibration", {}).update(results)
    if write and is_main_process():
        write_config(config.router_dir, router.config)
    return results


def evaluate_store(
    config: TrainConfig,
    out_dir: Path | None = None,
    split_name: str = "test",
    *,
    sources: list[str] | None = None,
    reranker: str = "reward_model",
    verifier: str = "none",
    targets: list[tuple[str, float]] | None = None,
    seed: int | None = None,
    cache_dir: Path | None = Path("reports/cache"),
    baselines: bool = True,
    z: float = 1.0,
) -> Path:
    """Write the report on a split (see the module docstring); returns its folder."""
    from bestroute_lc.reward import RewardPredictor
    from bestroute_lc.router import RouterPredictor
    from training.evaluation.baselines import default_baselines, run_baselines
    from training.evaluation.experiment import calibration_rows, seed_everything
    from training.evaluation.from_store import router_probabilities
    from training.evaluation.policies import PolicySet
    from training.evaluation.report import Report
    from training.loop import is_main_process
    from training.pipeline import load_data

    _check(reranker, verifier)
    seed = config.split.seed if seed is None else seed
    seed_everything(seed)
    _, data, split = load_data(config)
    reward = RewardPredictor.from_pretrained(config.reward_dir)
    router = RouterPredictor.from_pretrained(config.router_dir)
    ids = getattr(split, split_name)
    if sources:
        source_of = {pid: entry.prompt.source for pid, entry in data.items()}
        ids = [pid for pid in ids if source_of[pid] in sources]
    label = f"{config.prompts.stem} ({split_name} split" + (f", sources {', '.join(sources)})" if sources else ")")
    test = _eval_set(config, ids, reward, label, reranker, verifier, cache_dir)
    # the baselines learn from the training split's n = 1 outcomes: no picker, nothing to execute there
    train = _eval_set(config, split.train, reward, "train", reranker, "none", cache_dir, execute=False) if baselines else None
    if not test.prompts:
        raise ValueError(f"no {split_name} prompt has samples of every member")
    picker = RERANKER_PICKERS[reranker]
    avg_tokens = router.config.avg_output_tokens or (train or test).average_output_tokens()
    options = {"avg_output_tokens": avg_tokens, "verifier": None if verifier == "none" else verifier}
    policies = PolicySet(test, picker, probabilities=router_probabilities(router, test), **options)  # type: ignore[arg-type]
    curves = {"BEST-Route": [p.point for p in policies.router()]}
    if policies.verifier:
        curves["BEST-Route + verified escalation"] = [p.point for p in policies.router(escalate=True)]
        curves["verified chains"] = [p.point for p in policies.verified()]
    curves["best constant"] = [p.point for p in policies.constants()]
    if picker != "oracle" and test.max_n > 1:
        oracle = PolicySet(test, "oracle", probabilities=policies.probabilities, avg_output_tokens=avg_tokens)
        curves["BEST-Route (oracle picker)"] = [p.point for p in oracle.router()]
    if train is not None and train.prompts:
        texts = {(pid, m): samples.texts for pid, entry in data.items() for m, samples in entry.members.items()}
        fitted = [b for b in default_baselines(texts, seed=seed) if b.name != "fixed best-of-n"]
        curves.update(run_baselines(train, test, fitted, picker=picker))  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    if targets and split.validation:
        validation = _eval_set(config, split.validation, reward, "validation split", reranker, verifier, cache_dir)
        if validation.prompts:
            val_policies = PolicySet(validation, picker, probabilities=router_probabilities(router, validation), **options)  # type: ignore[arg-type]
            rows = calibration_rows(val_policies, policies, targets, z=z)
    report = Report.from_eval_set(
        test, curves, avg_output_tokens=avg_tokens, routing_method="BEST-Route", split=split.summary(), calibrated=rows,
        notes=[f"Picker: {reranker} ({picker}); verifier: {verifier}; seed {seed}."],
    )
    out_dir = out_dir or config.work_dir / "report"
    if is_main_process():
        report.save(out_dir)
    return out_dir
