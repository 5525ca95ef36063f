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


def train_router(
    predictor: RouterPredictor,
    train: list[RouterExample],
    validation: list[RouterExample],
    config: FitConfig,
    *,
    metric: str = "spearman",
    progress: bool = True,
) -> FitResult:
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

    result = fit(predictor.module, train, collate, loss_fn, evaluate, "selection", config, description="router", progress=progress)
    predictor.module.to(predictor.device).eval()
    best = result.history[result.best_epoch - 1]
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
        }
    )
    return result
