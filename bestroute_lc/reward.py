"""The proxy reward model (paper section 4.1): an encoder with a scalar head scoring
(prompt, response) pairs, used as the default best-of-n picker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bestroute_lc.artifacts import RewardConfig, tokenizer_info
from bestroute_lc.encoders import (
    EncoderPredictor,
    backbone_label,
    encoder_forward,
    load_backbone,
)
from bestroute_lc.encoding import encode_pairs
from bestroute_lc.rerankers.base import Reranker


class RewardModel(nn.Module):
    def __init__(self, encoder: nn.Module, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        """One scalar reward per (prompt, response) pair: shape [batch]."""
        return self.head_forward(self.dropout(encoder_forward(self.encoder, batch, self.pooling)))

    def head_forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output [batch, hidden] -> rewards [batch]."""
        return self.head(pooled).squeeze(-1)


def pairwise_ranking_loss(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Paper eq. 1: mean of -log sigmoid(r(s) - r(s')) over pairs where s beats s'."""
    return -torch.nn.functional.logsigmoid(better - worse).mean()


class RewardPredictor(EncoderPredictor[RewardConfig], Reranker):
    """The learned reward model as a ``Reranker``: all candidates of a call (and of other
    concurrent calls) are scored in one batched forward pass."""

    kind = "reward"
    config_class = RewardConfig
    name = "reward_model"

    @classmethod
    def build_module(cls, encoder: nn.Module, config: RewardConfig) -> nn.Module:
        return RewardModel(encoder, config.pooling)

    def trusted_for(self, member: str | None) -> bool:
        return member not in self.config.untrusted_members

    @classmethod
    def from_backbone(
        cls,
        backbone: str | Path | tuple[nn.Module, Any],
        *,
        pooling: str = "mean",
        max_length: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> RewardPredictor:
        """A new (untrained) reward model on a local pretrained encoder, or an (encoder, tokenizer) pair.

        ``seed`` fixes the initial weights of the new heads (training sets its seed only later).
        """
        encoder, tokenizer = load_backbone(backbone) if not isinstance(backbone, tuple) else backbone
        config = RewardConfig(
            backbone=backbone_label(backbone, encoder),
            encoder_config=encoder.config.to_dict(),
            pooling=pooling,  # type: ignore[arg-type]
            max_length=max_length or min(int(getattr(tokenizer, "model_max_length", 512)), 512),
            tokenizer=tokenizer_info(tokenizer),
        )
        if seed is not None:  # the new heads' initial weights: one seed, one model
            torch.manual_seed(seed)
        return cls(cls.build_module(encoder, config), tokenizer, config, **kwargs)

    def item_text(self, item: tuple[str, str]) -> str:
        return item[0] + item[1]

    def forward_items(self, items: list[tuple[str, str]]) -> list[float]:
        prompts = [p for p, _ in items]
        responses = [r for _, r in items]
        encoded = encode_pairs(self.tokenizer, prompts, responses, self.config.max_length)
        return [float(x) for x in self.run_module(encoded).float().cpu()]

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        return self.batcher([(prompt, c) for c in candidates])

    async def ascore(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        return await self.batcher.acall([(prompt, c) for c in candidates])
