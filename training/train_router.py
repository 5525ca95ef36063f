"""Multi-head router training (paper eq. 4-5).

Soft-label cross entropy over all K x N heads at once: each head's logit is trained
with binary cross entropy against y[k, n](q) in [0, 1]. Checkpoint selection on the
validation split by the mean Spearman correlation between predicted and true match
probabilities over heads (``metric="spearman"``; heads whose labels are constant on the
validation split are left out of the mean) or by validation loss (``metric="loss"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from bestroute_lc.artifacts import HeadCalibration
from bestroute_lc.conversation import RenderedConversation, render_conversation
from bestroute_lc.encoding import encode_conversations
from bestroute_lc.router import RouterPredictor
from training.dataset import PromptData
from training.loop import FitConfig, FitResult, fit


@dataclass(frozen=True)
class RouterExample:
    conversation: RenderedConversation
    labels: np.ndarray  # [K, N]


def prompt_labels(
    data: dict[str, PromptData],
    prompt_ids: list[str],
    reference: str,
    routed: list[str],
    max_n: int,
    proxy_scores: Any,
    tolerance: float = 0.0,
) -> dict[str, np.ndarray]:
    """y[k, n] ([K, N]) for every prompt with >= ``max_n`` samples of each routed member and a
    reference sample. ``proxy_scores(prompt_id, member, texts) -> scores`` ranks the samples."""
    from training.labels import match_labels

    ns = list(range(1, max_n + 1))
    labels = {}
    for prompt_id in prompt_ids:
        entry = data[prompt_id]
        reference_samples = entry.members.get(reference)
        if reference_samples is None or any(m not in entry.members or len(entry.members[m].texts) < max_n for m in routed):
            continue
        labels[prompt_id] = np.stack(
            [
                match_labels(
                    proxy_scores(prompt_id, m, entry.members[m].texts), entry.members[m].gt_scores,
                    reference_samples.gt_scores, ns, tolerance,
                )
                for m in routed
            ]
        )
    return labels


def router_examples(data: dict[str, PromptData], labels: dict[str, np.ndarray], prompt_ids: list[str]) -> list[RouterExample]:
    return [
        RouterExample(render_conversation(data[pid].prompt.chat_messages()), labels[pid])
        for pid in prompt_ids
        if pid in labels
    ]


def mean_spearman(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean over heads of Spearman's rho across prompts; NaN if no head varies."""
    flat_p = predicted.reshape(len(predicted), -1)
    flat_t = target.reshape(len(target), -1)
    values = []
    for head in range(flat_t.shape[1]):
        if np.ptp(flat_t[:, head]) > 0 and np.ptp(flat_p[:, head]) > 0:
            values.append(spearmanr(flat_p[:, head], flat_t[:, head]).statistic)
    return float(np.mean(values)) if values else float("nan")


# -- head calibration and shrinkage ---------------------------------------------------------------

#: Shrinkage weights tried (0: every head predicts its training prior, a fixed policy).
CALIBRATION_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))
#: Fewer held-out prompts than this: no calibration is fitted (too little to fit anything).
MIN_CALIBRATION_PROMPTS = 8


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_platt(
    logits: np.ndarray,
    labels: np.ndarray,
    regularization: float = 1.0,
    prior: np.ndarray | None = None,
    iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-head Platt scaling on soft labels: (scale, shift) [K, N] with
    ``p = sigmoid(scale * z + shift)``, fitted by Newton's method on every head at once.

    The logits are standardised per head first (a barely trained head has logits in a
    narrow band that still rank the prompts), and the fit minimises
    ``sum BCE + regularization * (a^2 + (b - logit(prior))^2)`` in standardised units: a
    head with few or uninformative prompts stays near its prior (slope 0).
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    mean, std = z.mean(0), np.maximum(z.std(0), 1e-6)
    x = (z - mean) / std
    anchor = _logit(np.asarray(prior, dtype=np.float64)) if prior is not None else np.zeros(z.shape[1:])
    a, b = np.zeros(z.shape[1:]), anchor.copy()
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        residual, weight = p - y, p * (1 - p)
        g_a = (residual * x).sum(0) + 2 * regularization * a
        g_b = residual.sum(0) + 2 * regularization * (b - anchor)
        h_aa = (weight * x * x).sum(0) + 2 * regularization
        h_ab = (weight * x).sum(0)
        h_bb = weight.sum(0) + 2 * regularization
        det = h_aa * h_bb - h_ab * h_ab
        a = a - (h_bb * g_a - h_ab * g_b) / det
        b = b - (h_aa * g_b - h_ab * g_a) / det
    return a / std, b - a * mean / std


def fit_head_calibration(
    train_labels: np.ndarray,
    held_out_logits: np.ndarray,
    held_out_labels: np.ndarray,
    *,
    folds: int = 5,
    weights: tuple[float, ...] = CALIBRATION_WEIGHTS,
    regularization: float = 1.0,
    seed: int = 0,
    routing_score: Any = None,
) -> HeadCalibration:
    """Platt scaling per head plus shrinkage toward each head's prior (label mean).

    ``routing_score(probabilities [V', K, N], rows)`` (higher is better; rows: ascending indices
    into the held-out prompts, e.g. ``policies.RoutingArea``) makes the routing metric choose
    instead of BCE, among the shrinkage weights and the raw, uncalibrated heads (scale 1, shift
    0, weight 1), cross-fitted the same way; the best mean out-of-fold score wins.
    Measured on GSM8K and AlpacaEval (README): BCE with the 1-SE rule shrank every fold's router
    to its prior, a constant policy, although the raw heads route better than any constant.

    The shrinkage weight is chosen by cross-fitting on the held-out prompts: for each
    weight, Platt is fitted on all folds but one and the blended probabilities are scored
    (soft-label BCE, a proper scoring rule) on the remaining fold. The most shrinkage
    whose out-of-fold loss is within one standard error of the best wins (the
    one-standard-error rule: with few prompts, noise must not buy a learned router). The
    final Platt parameters are then fitted on every held-out prompt.
    """
    z, y = np.asarray(held_out_logits, dtype=np.float64), np.asarray(held_out_labels, dtype=np.float64)
    # The prior is each head's base rate over every labelled prompt: a better base rate
    # must not be mistaken for signal in the heads.
    prior = np.concatenate([np.asarray(train_labels, dtype=np.float64), y]).mean(axis=0)
    count = len(z)
    folds = max(2, min(folds, count))
    order = np.random.default_rng(seed).permutation(count)
    per_prompt = {w: np.zeros(count) for w in weights}  # out-of-fold BCE of each prompt
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        scale, shift = fit_platt(z[train], y[train], regularization, prior)
        platt = 1.0 / (1.0 + np.exp(-(scale * z[test] + shift)))
        for w in weights:
            blended = np.clip(w * platt + (1 - w) * prior, 1e-6, 1 - 1e-6)
            losses = -(y[test] * np.log(blended) + (1 - y[test]) * np.log(1 - blended))
            per_prompt[w][test] = losses.reshape(len(test), -1).mean(axis=1)
    if routing_score is not None:
        return _calibration_by_routing(z, y, prior, order, folds, weights, regularization, routing_score)
    mean_loss = {w: float(per_prompt[w].mean()) for w in weights}
    # One-standard-error rule: the most shrinkage whose loss is within one standard error
    # (of the paired per-prompt difference) of the best; noise rarely beats the prior by that.
    best_weight = min(weights, key=lambda w: mean_loss[w])
    def within_one_se(w: float) -> bool:
        diff = per_prompt[w] - per_prompt[best_weight]
        return diff.mean() <= diff.std(ddof=1) / np.sqrt(count) if count > 1 else w == best_weight
    best = min(w for w in weights if within_one_se(w))
    losses = mean_loss
    scale, shift = fit_platt(z, y, regularization, prior)
    raw = 1.0 / (1.0 + np.exp(-z))
    return HeadCalibration(
        scale=scale.tolist(),
        shift=shift.tolist(),
        prior=prior.tolist(),
        weight=float(best),
        fit={
            "method": f"Platt per head on standardised logits (L2 {regularization} toward the prior) + shrinkage to the "
            "training prior, "
            f"weight by {folds}-fold cross-fitted BCE on {count} held-out prompts",
            "held_out_prompts": count,
            "raw_bce": _bce(raw, y),
            "prior_bce": _bce(np.broadcast_to(prior, y.shape), y),
            "oof_bce_by_weight": {str(w): losses[w] for w in weights},
        },
    )


def _calibration_by_routing(
    z: np.ndarray, y: np.ndarray, prior: np.ndarray, order: np.ndarray, folds: int, weights: tuple[float, ...],
    regularization: float, routing_score: Any,
) -> HeadCalibration:
    """``fit_head_calibration`` with the routing metric choosing (see there)."""
    candidates: list[Any] = ["raw", *weights]
    per_fold = {c: [] for c in candidates}
    for fold in range(folds):
        test = np.sort(order[fold::folds])
        train = np.setdiff1d(order, test)
        scale, shift = fit_platt(z[train], y[train], regularization, prior)
        platt = 1.0 / (1.0 + np.exp(-(scale * z[test] + shift)))
        per_fold["raw"].append(float(routing_score(1.0 / (1.0 + np.exp(-z[test])), test)))
        for w in weights:
            per_fold[w].append(float(routing_score(w * platt + (1 - w) * prior, test)))
    scores = {c: np.asarray(v) for c, v in per_fold.items()}
    # The best mean routing score; ties go to more shrinkage (weights ascending, raw last). No
    # one-standard-error rule here: the policy calibration downstream already falls back to
    # constant policies, and on GSM8K the rule cost 0.4-2 points at every Table-1 saving.
    chosen: Any = max(sorted(weights) + ["raw"], key=lambda c: round(float(scores[c].mean()), 12))
    fit = {
        "method": f"shrinkage weight (or the raw heads) by {folds}-fold cross-fitted routing metric on {len(z)} held-out prompts",
        "held_out_prompts": len(z),
        "routing_score_by_weight": {str(c): float(v.mean()) for c, v in scores.items()},
        "chosen": str(chosen),
    }
    if chosen == "raw":
        ones = np.ones(z.shape[1:])
        return HeadCalibration(scale=ones.tolist(), shift=np.zeros(z.shape[1:]).tolist(), prior=prior.tolist(), weight=1.0, fit=fit)
    scale, shift = fit_platt(z, y, regularization, prior)
    return HeadCalibration(scale=scale.tolist(), shift=shift.tolist(), prior=prior.tolist(), weight=float(chosen), fit=fit)


def head_logits(predictor: RouterPredictor, examples: list[RouterExample], batch_size: int = 32) -> np.ndarray:
    """Raw head logits [Q, K, N] (before any calibration)."""
    out = []
    predictor.module.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = predictor.encode([e.conversation for e in examples[start : start + batch_size]])
            out.append(predictor.module(**predictor.to_device(batch)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(predictor.config.members), predictor.config.max_n))


def calibrate_router(
    predictor: RouterPredictor, train: list[RouterExample], held_out: list[RouterExample], *, seed: int = 0, routing_score: Any = None,
) -> HeadCalibration | None:
    """Fit and store :class:`HeadCalibration` on ``held_out`` prompts (never seen in
    training); ``None`` (and nothing stored) when there are too few of them. With
    ``routing_score`` (over the held-out prompts, in their order) the routing metric chooses
    the shrinkage (see ``fit_head_calibration``)."""
    if len(held_out) < MIN_CALIBRATION_PROMPTS or not train:
        predictor.config.head_calibration = None
        return None
    calibration = fit_head_calibration(
        np.stack([e.labels for e in train]), head_logits(predictor, held_out), np.stack([e.labels for e in held_out]), seed=seed,
        routing_score=routing_score,
    )
    predictor.config.head_calibration = calibration
    return calibration


def train_router(
    predictor: RouterPredictor,
    train: list[RouterExample],
    validation: list[RouterExample],
    config: FitConfig,
    *,
    metric: str = "spearman",
    progress: bool = True,
    calibrate: bool = True,
) -> FitResult:
    """Train the heads (and encoder), select the best epoch on ``validation``, then (with
    ``calibrate``) fit :func:`calibrate_router` on the same validation prompts: Platt
    scaling per head and shrinkage toward the training prior, so that p[k, n] is
    comparable across heads and a router with nothing to learn behaves as a fixed policy.
    """
    if metric not in {"spearman", "loss"}:
        raise ValueError("metric must be 'spearman' or 'loss'")
    validation = validation or train
    tokenizer, max_length = predictor.tokenizer, predictor.config.max_length

    def collate(examples: list[RouterExample]) -> dict[str, Any]:
        return {
            "inputs": encode_conversations(tokenizer, [e.conversation for e in examples], max_length),
            "labels": torch.tensor(np.stack([e.labels for e in examples]), dtype=torch.float32),
        }

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = next(model.parameters()).device
        logits = model(**{k: v.to(device) for k, v in batch["inputs"].items()})
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].to(device))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        predictions, losses = [], []
        for start in range(0, len(validation), config.batch_size):
            batch = collate(validation[start : start + config.batch_size])
            device = next(model.parameters()).device
            logits = model(**{k: v.to(device) for k, v in batch["inputs"].items()})
            losses.append(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].to(device), reduction="sum")))
            predictions.append(torch.sigmoid(logits).cpu().numpy())
        target = np.stack([e.labels for e in validation])
        rho = mean_spearman(np.concatenate(predictions), target)
        loss = sum(losses) / target.size
        # Higher is better for the loop; an undefined rho falls back to the loss.
        return {"val_loss": loss, "neg_val_loss": -loss, "val_spearman": rho, "selection": -loss if metric == "loss" or np.isnan(rho) else rho}

    predictor.config.head_calibration = None  # training and selection see the raw heads
    result = fit(predictor.module, train, collate, loss_fn, evaluate, "selection", config, description="router", progress=progress)
    predictor.module.to(predictor.device).eval()
    best = result.history[result.best_epoch - 1]
    calibration = calibrate_router(predictor, train, validation if validation is not train else [], seed=config.seed) if calibrate else None
    predictor.config.training.update(
        {
            "objective": "soft-label binary cross entropy over K x N heads",
            "selection_metric": metric,
            "train_prompts": len(train),
            "validation_prompts": len(validation),
            "best_epoch": result.best_epoch,
            "val_spearman": best["val_spearman"],
            "val_loss": best["val_loss"],
            "history": result.history,
            "fit": config.model_dump(),
            "head_calibration_weight": None if calibration is None else calibration.weight,
        }
    )
    return result
