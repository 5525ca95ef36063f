"""LlamaIndex LLMs as pool members.

The engine's members are LangChain chat models; :class:`LlamaIndexChatModel` presents any
LlamaIndex ``LLM`` (``llama_index.llms.*``, a local model, ``CustomLLM``) as one, so a pool can
mix the two worlds::

    from bestroute_llamaindex.members import LlamaIndexChatModel
    PoolMember.from_model(LlamaIndexChatModel(llm=my_llamaindex_llm), name="my-llm",
                          prices=Prices(input_per_mtok=0.2, output_per_mtok=0.6))

Text in, text out: usage comes from the LlamaIndex response (``raw["usage"]`` or
``additional_kwargs``: ``prompt_tokens``/``input_tokens``, ``completion_tokens``/
``output_tokens``), else it is counted with the ``tiktoken``-free word estimate LlamaIndex's own
token counter falls back to (and marked ``estimated`` in ``response_metadata``). n samples are
n calls (``NBilling.PARALLEL``, the default for non-OpenAI members).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from pydantic import ConfigDict

_ROLES = {"system": MessageRole.SYSTEM, "human": MessageRole.USER, "ai": MessageRole.ASSISTANT, "tool": MessageRole.TOOL}
_INPUT_KEYS = ("prompt_tokens", "input_tokens", "prompt_token_count")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens", "candidates_token_count")


def to_llamaindex(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message.content, str):
            raise ValueError(f"message {index}: a LlamaIndex member takes text content only")
        role = _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"message {index}: unsupported message type {message.type!r}")
        kwargs = {"tool_call_id": message.tool_call_id} if message.type == "tool" else {}  # type: ignore[attr-defined]
        out.append(ChatMessage(role=role, content=message.content, additional_kwargs=kwargs))
    return out


def _first(usage: dict[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        if isinstance(usage.get(key), int):
            return int(usage[key])
    return None


def to_ai_message(response: ChatResponse, messages: Sequence[ChatMessage], model_name: str) -> AIMessage:
    raw = response.raw if isinstance(response.raw, dict) else {}
    usage = raw.get("usage") if isinstance(raw.get("usage"), dict) else None
    usage = usage or dict(response.additional_kwargs or {})
    text = response.message.content or ""
    inputs, outputs = _first(usage, _INPUT_KEYS), _first(usage, _OUTPUT_KEYS)
    estimated = inputs is None or outputs is None
    if inputs is None:  # the word estimate LlamaIndex's TokenCountingHandler uses without a tokenizer
        inputs = sum(len((m.content or "").split()) for m in messages)
    if outputs is None:
        outputs = len(text.split())
    return AIMessage(
        content=text,
        usage_metadata={"input_tokens": inputs, "output_tokens": outputs, "total_tokens": inputs + outputs},
        response_metadata={"model_name": model_name, "usage_estimated": estimated},
    )


class LlamaIndexChatModel(BaseChatModel):
    """A LlamaIndex ``LLM`` as a LangChain chat model (a BEST-Route pool member)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any
    #: The member's model name in metadata (default: the LLM's ``metadata.model_name``).
    model_name: str | None = None

    @property
    def _llm_type(self) -> str:
        return "llamaindex"

    @property
    def _name(self) -> str:
        return self.model_name or getattr(self.llm.metadata, "model_name", None) or type(self.llm).__name__

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        converted = to_llamaindex(messages)
        response = self.llm.chat(converted, **self._kwargs(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=to_ai_message(response, converted, self._name))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        converted = to_llamaindex(messages)
        response = await self.llm.achat(converted, **self._kwargs(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=to_ai_message(response, converted, self._name))])

    @staticmethod
    def _kwargs(stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        # LangChain-side sampling arguments the LlamaIndex LLM may not know are dropped, except stop.
        return {"stop": stop} if stop else {}
