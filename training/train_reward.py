"""Proxy reward model training (paper section 4.1).

Pairs: for every (prompt, member) with at least two distinct ground-truth scores, sort
its samples by ground truth and take the worst, the median and the best; train on
(median > worst) and (best > median), skipping pairs whose scores are equal. Pairs are
built within one member because best-of-n picks among one member's samples, so that
is the ranking the reward model must get right. Loss: -log sigmoid(r(s) - r(s')).
Checkpoint: the epoch with the best validation pairwise accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bestroute_lc.conversation import render_conversation
from bestroute_lc.encoding import encode_pairs
from bestroute_lc.reward import RewardPredictor, pairwise_ranking_loss
from training.dataset import PromptData
from training.loop import FitConfig, FitResult, fit


@dataclass(frozen=True)
class RankingPair:
    prompt: str
    better: str
    worse: str


def ranking_pair_indices(gt_scores: Sequence[float]) -> list[tuple[int, int]]:
    """(better, worse) sample indices of one prompt and member: the (median, worst) and
    (best, median) pairs by ground truth, each only when strictly better (paper 4.1)."""
    if len(gt_scores) < 2:
        return []
    order = np.argsort(np.asarray(gt_scores), kind="stable")
    worst, median, best = order[0], order[len(order) // 2], order[-1]
    return [(int(high), int(low)) for high, low in ((median, worst), (best, median)) if gt_scores[high] > gt_scores[low]]


def ranking_pairs(data: dict[str, PromptData], prompt_ids: Iterable[str]) -> list[RankingPair]:
    pairs: list[RankingPair] = []
    for prompt_id in prompt_ids:
        entry = data[prompt_id]
        prompt = render_conversation(entry.prompt.chat_messages()).text
        for samples in entry.members.values():
            for high, low in ranking_pair_indices(samples.gt_scores):
                pairs.append(RankingPair(prompt, samples.texts[high], samples.texts[low]))
    return pairs


def train_reward_model(
    predictor: RewardPredictor,
    data: dict[str, PromptData],
    train_ids: list[str],
    validation_ids: list[str],
    config: FitConfig,
    *,
    progress: bool = True,
) -> FitResult:
    """Train ``predictor.module`` in place on ranking pairs; returns the fit history."""
    train_pairs = ranking_pairs(data, train_ids)
    validation_pairs = ranking_pairs(data, validation_ids) or train_pairs
    if not train_pairs:
        raise ValueError("no training pairs: every (prompt, member) has equal ground-truth scores or one sample")
    tokenizer, max_length = predictor.tokenizer, predictor.config.max_length

    def collate(pairs: list[RankingPair]) -> dict[str, Any]:
        prompts = [p.prompt for p in pairs]
        return {
            "better": encode_pairs(tokenizer, prompts, [p.better for p in pairs], max_length),
            "worse": encode_pairs(tokenizer, prompts, [p.worse for p in pairs], max_length),
        }

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        device = next(model.parameters()).device
        better = model(**{k: v.to(device) for k, v in batch["better"].items()})
        worse = model(**{k: v.to(device) for k, v in batch["worse"].items()})
        return pairwise_ranking_loss(better, worse)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        correct, losses = 0, []
        for start in range(0, len(validation_pairs), config.batch_size):
            chunk = validation_pairs[start : start + config.batch_size]
            batch = collate(chunk)
            device = next(model.parameters()).device
            better = model(**{k: v.to(device) for k, v in batch["better"].items()})
            worse = model(**{k: v.to(device) for k, v in batch["worse"].items()})
            correct += int((better > worse).sum())
            losses.append(float(pairwise_ranking_loss(better, worse)) * len(chunk))
        return {"val_pair_accuracy": correct / len(validation_pairs), "val_loss": sum(losses) / len(validation_pairs)}

    result = fit(
        predictor.module, train_pairs, collate, loss_fn, evaluate, "val_pair_accuracy", config,
        description="reward model", progress=progress,
    )
    predictor.module.to(predictor.device).eval()
    gains = pick_gain_by_member(predictor, data, validation_ids)
    predictor.config.untrusted_members = untrusted_members(gains)
    predictor.config.training.update(
        {
            "objective": "pairwise ranking (worst<median<best per prompt and member)",
            "train_pairs": len(train_pairs),
            "validation_pairs": len(validation_pairs),
            "best_epoch": result.best_epoch,
            "val_pair_accuracy": result.best_metric,
            "history": result.history,
            "fit": config.model_dump(),
            "validation_pick_gain": gains,
        }
    )
    return result


def pick_gain_by_member(predictor: RewardPredictor, data: dict[str, PromptData], prompt_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per member: the expected ground truth of the reward model's best-of-n pick and of
    a random pick (see ``pick_gains``) on the given prompts. A member whose gain is not
    positive gets its first sample at run time instead."""

    def items() -> Iterator[tuple[str, Sequence[float], Sequence[float]]]:
        for prompt_id in prompt_ids:
            entry = data[prompt_id]
            prompt = render_conversation(entry.prompt.chat_messages()).text
            for member, samples in entry.members.items():
                if len(samples.texts) >= 2:
                    yield member, predictor.score(prompt, list(samples.texts)), samples.gt_scores

    return pick_gains(items())


def pick_gains(items: Iterable[tuple[str, Sequence[float], Sequence[float]]]) -> dict[str, dict[str, float]]:
    """Per member, from (member, proxy scores, ground truth) of each prompt: the expected
    ground truth of the best-of-n pick by the proxy and of a random pick, averaged over
    n = 2..m and the prompts (exact, over every n-subset; ``training.labels.best_of_n_expectation``),
    and their difference ``gain``. Prompts with fewer than 2 samples are skipped."""
    from training.labels import best_of_n_expectation

    totals: dict[str, list[float]] = {}
    for member, proxy_scores, gt_scores in items:
        gt = np.asarray(gt_scores, dtype=float)
        m = len(gt)
        if m < 2:
            continue
        picked = float(np.mean(best_of_n_expectation(np.asarray(proxy_scores, dtype=float), gt, list(range(2, m + 1)))))
        total = totals.setdefault(member, [0.0, 0.0, 0.0])
        total[0] += picked
        total[1] += float(gt.mean())
        total[2] += 1
    return {
        member: {"proxy": p / c, "random": r / c, "gain": (p - r) / c, "prompts": c}
        for member, (p, r, c) in totals.items()
    }


def untrusted_members(gains: dict[str, dict[str, float]]) -> list[str]:
    """Members whose proxy pick is not better than a random one (the engine keeps their first sample)."""
    return sorted(m for m, g in gains.items() if not g["gain"] > 0)


def fit_frozen_reward_head(
    predictor: RewardPredictor,
    data: dict[str, PromptData],
    train_ids: Sequence[str],
    validation_ids: Sequence[str],
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The reward model with its encoder frozen: a linear head on the pooled (prompt, answer)
    features, trained on the same pairs and loss as ``train_reward_model`` (L2 chosen by
    validation pair accuracy; ``training.evaluation.frozen.fit_reward_head``). The encoder
    stays the pretrained one, so the artifact can share it (``share_encoder``) and weigh KBs."""
    from training.evaluation.frozen import fit_reward_head, install_reward_head, reward_features

    items: list[tuple[str, str]] = []
    row_of: dict[tuple[str, str, int], int] = {}
    for prompt_id in [*train_ids, *validation_ids]:
        entry = data[prompt_id]
        prompt = render_conversation(entry.prompt.chat_messages()).text
        for member, samples in entry.members.items():
            for j, text in enumerate(samples.texts):
                row_of[(prompt_id, member, j)] = len(items)
                items.append((prompt, text))

    def pairs(prompt_ids: Sequence[str]) -> list[tuple[int, int]]:
        return [
            (row_of[(pid, member, high)], row_of[(pid, member, low)])
            for pid in prompt_ids
            for member, samples in data[pid].members.items()
            for high, low in ranking_pair_indices(samples.gt_scores)
        ]

    train_pairs, validation_pairs = pairs(train_ids), pairs(validation_ids)
    if not train_pairs:
        raise ValueError("no training pairs: every (prompt, member) has equal ground-truth scores or one sample")
    features = reward_features(predictor, items, cache_dir=None, progress=progress)
    weight, info = fit_reward_head(features, train_pairs, validation_pairs, seed=seed)
    install_reward_head(predictor, weight, {k: v for k, v in info.items() if k != "history"})
    gains = pick_gain_by_member(predictor, data, validation_ids)
    predictor.config.untrusted_members = untrusted_members(gains)
    predictor.config.training.update(
        {"train_pairs": len(train_pairs), "validation_pairs": len(validation_pairs), "validation_pick_gain": gains,
         "l2_history": info.get("history", [])}
    )
    return info
