"""The multi-head router (paper eq. 5).

A shared BERT-style encoder maps the conversation to h_q; K x N linear heads give
p[k, n] = sigmoid(w_kn . h_q + b_kn) for every non-reference member k and n = 1..N.
The K x N heads are stored as one ``nn.Linear(hidden, K * N)``: row (k, n) of its weight
and bias is exactly (w_kn, b_kn), so this is the paper's K x N independent heads computed
in one matrix product.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bestroute_lc.artifacts import HeadCalibration, RouterConfig, tokenizer_info
from bestroute_lc.conversation import RenderedConversation
from bestroute_lc.encoders import (
    EncoderPredictor,
    backbone_label,
    encoder_forward,
    load_backbone,
)
from bestroute_lc.encoding import encode_conversations


class MultiHeadRouter(nn.Module):
    def __init__(self, encoder: nn.Module, num_members: int, max_n: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.num_members = num_members
        self.max_n = max_n
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.Linear(encoder.config.hidden_size, num_members * max_n)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, K, N]; ``torch.sigmoid`` gives the match probabilities."""
        return self.head_forward(self.dropout(encoder_forward(self.encoder, batch, self.pooling)))

    def head_forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output [batch, hidden] -> logits [batch, K, N]."""
        return self.heads(pooled).view(-1, self.num_members, self.max_n)


def calibrated_probabilities(logits: np.ndarray, calibration: HeadCalibration | None) -> np.ndarray:
    """[batch, K, N] logits -> match probabilities, through the heads' calibration if any."""
    logits = np.asarray(logits, dtype=np.float64)
    if calibration is None:
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    scale, shift, prior = (np.asarray(x, dtype=np.float64) for x in (calibration.scale, calibration.shift, calibration.prior))
    platt = 1.0 / (1.0 + np.exp(-(scale * logits + shift)))
    return (calibration.weight * platt + (1.0 - calibration.weight) * prior).astype(np.float32)


class RouterPredictor(EncoderPredictor[RouterConfig]):
    """Batched inference for a ``MultiHeadRouter`` (GPU when present).

    ``predict`` / ``apredict`` go through the micro-batcher, so concurrent calls share
    forward passes; ``predict_batch`` runs one batch directly.
    """

    kind = "router"
    config_class = RouterConfig

    def __init__(self, *args: Any, cache_size: int = 1024, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Recent conversations' probabilities: an agent loop or a retried request routes the
        #: same conversation again, and a hit costs no forward pass. ``cache_size=0`` turns it off.
        self.cache = ProbabilityCache(cache_size)

    def fingerprint(self) -> str | None:
        """What the probabilities depend on besides the conversation: the weights and the
        heads' calibration (which ``bestroute-train calibrate`` may set after loading). None
        for weights built in memory, which training may still change: those are not cached."""
        weights = self.weights_key()
        if weights is None:
            return None
        calibration = self.config.head_calibration
        return f"{weights}|{calibration.model_dump_json() if calibration is not None else ''}"

    @classmethod
    def build_module(cls, encoder: nn.Module, config: RouterConfig) -> nn.Module:
        return MultiHeadRouter(encoder, len(config.members), config.max_n, config.pooling)

    @classmethod
    def from_backbone(
        cls,
        backbone: str | Path | tuple[nn.Module, Any],
        *,
        members: Sequence[str],
        reference: str,
        max_n: int,
        pooling: str = "mean",
        max_length: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> RouterPredictor:
        """A new (untrained) router on a local pretrained encoder, or an (encoder, tokenizer) pair.

        ``seed`` fixes the initial weights of the new heads (training sets its seed only later).
        """
        encoder, tokenizer = load_backbone(backbone) if not isinstance(backbone, tuple) else backbone
        if reference in members:
            raise ValueError(f"the reference {reference!r} must not be one of the routed members")
        config = RouterConfig(
            backbone=backbone_label(backbone, encoder),
            encoder_config=encoder.config.to_dict(),
            pooling=pooling,  # type: ignore[arg-type]
            max_length=max_length or min(int(getattr(tokenizer, "model_max_length", 512)), 512),
            tokenizer=tokenizer_info(tokenizer),
            members=list(members),
            reference=reference,
            max_n=max_n,
        )
        if seed is not None:  # the new heads' initial weights: one seed, one model
            torch.manual_seed(seed)
        return cls(cls.build_module(encoder, config), tokenizer, config, **kwargs)

    @classmethod
    def expected_weights_metadata(cls, config: Any) -> dict[str, str]:
        # Row (k, n) of the heads belongs to members[k]: a member list reordered in config.json
        # would silently re-map them.
        return {"kind": cls.kind, "members": json.dumps(list(config.members)), "reference": config.reference,
                "max_n": str(config.max_n)}

    def encode(self, conversations: Sequence[RenderedConversation]) -> Any:
        return encode_conversations(self.tokenizer, conversations, self.config.max_length)

    def item_text(self, item: RenderedConversation) -> str:
        return item.text

    def forward_items(self, items: list[RenderedConversation]) -> list[np.ndarray]:
        logits = self.run_module(self.encode(items)).float().cpu().numpy()
        return list(calibrated_probabilities(logits, self.config.head_calibration))

    def predict_batch(self, conversations: Sequence[RenderedConversation]) -> np.ndarray:
        """Match probabilities [batch, K, N] for a batch, in one call (no batcher)."""
        return np.stack(self._forward_in_chunks(list(conversations)))

    def as_table(self, probabilities: np.ndarray) -> dict[str, list[float]]:
        """[K, N] array -> {member: [p(n=1), ..., p(n=N)]} in head order."""
        return {m: [float(p) for p in row] for m, row in zip(self.config.members, probabilities)}

    def predict(self, conversation: RenderedConversation) -> dict[str, list[float]]:
        key = self._cache_key(conversation)
        probabilities = self.cache.get(key)
        if probabilities is None:
            probabilities = self.cache.put(key, self.batcher([conversation])[0])
        return self.as_table(probabilities)

    async def apredict(self, conversation: RenderedConversation) -> dict[str, list[float]]:
        key = self._cache_key(conversation)
        probabilities = self.cache.get(key)
        if probabilities is None:
            probabilities = self.cache.put(key, (await self.batcher.acall([conversation]))[0])
        return self.as_table(probabilities)

    def _cache_key(self, conversation: RenderedConversation) -> Any:
        fingerprint = self.fingerprint()
        return None if fingerprint is None else (conversation, fingerprint)


class ProbabilityCache:
    """A thread-safe LRU map (conversation, fingerprint) -> [K, N] probabilities."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache_size must be >= 0, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        """The cached value, or None (always None for the key None: not cacheable)."""
        if key is None or not self.size:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: np.ndarray) -> np.ndarray:
        if key is not None and self.size:
            value.setflags(write=False)  # shared by every hit
            with self._lock:
                self._entries[key] = value
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
