"""``BestRouteLLM``: BEST-Route as a LlamaIndex ``FunctionCallingLLM``.

A thin translation layer: LlamaIndex messages in, the same routing engine as the LangChain
face (``bestroute_lc.engine.BestRouteEngine``: router, Algorithm 1, best-of-n, reranker,
verifier, fallbacks, cost; built by ``bestroute_lc.loading``, as the LangChain face builds
it), LlamaIndex responses out. It does not go through the LangChain chat model. Per response:

* ``raw``: ``{"usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "cost_usd",
  "bestroute": <the decision>}``: ``TokenCountingHandler`` reads the usage from it, and the
  decision (member, n, p[k, n], candidate scores, attempts, cost) travels in LlamaIndex's
  instrumentation events (``LLMChatEndEvent.response``) with it;
* ``additional_kwargs``: the same token counts and ``cost_usd``;
* tool calls as ``ToolCallBlock`` blocks of the message (``get_tool_calls_from_response``),
  so ``predict_and_call``, ``FunctionAgent`` and ``structured_predict`` work.

Streaming: ``stream_chat`` yields the answer's chunks (token by token when the routed option
is n = 1 and unverified, else the reranked answer at once) and a last response carrying the
usage, cost and decision.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import Field, PrivateAttr

#: Used when no pool member's profile states its context window.
DEFAULT_CONTEXT_WINDOW = 4096


def to_langchain(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    """LlamaIndex chat messages as LangChain messages (text, tool calls and tool results).
    Non-text content blocks are refused with a clear error (the engine routes text)."""
    out: list[BaseMessage] = []
    for index, message in enumerate(messages):
        texts, calls = [], []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):
                kwargs = block.tool_kwargs if isinstance(block.tool_kwargs, dict) else _parse_kwargs(block.tool_kwargs)
                calls.append({"name": block.tool_name, "args": kwargs, "id": block.tool_call_id or f"call_{index}_{len(calls)}",
                              "type": "tool_call"})
            else:
                raise ValueError(  # noqa: TRY004 - bad input is a ValueError throughout, as in the engine
                    f"message {index} ({message.role.value}) has a {type(block).__name__}; BestRouteLLM routes text "
                    "(and tool calls) only"
                )
        text = "".join(texts)
        role = message.role
        if role in (MessageRole.SYSTEM, MessageRole.DEVELOPER):
            out.append(SystemMessage(text))
        elif role == MessageRole.USER:
            out.append(HumanMessage(text))
        elif role in (MessageRole.ASSISTANT, MessageRole.MODEL, MessageRole.CHATBOT):
            out.append(AIMessage(text, tool_calls=calls))
        elif role in (MessageRole.TOOL, MessageRole.FUNCTION):
            call_id = message.additional_kwargs.get("tool_call_id") or message.additional_kwargs.get("name") or ""
            out.append(ToolMessage(text, tool_call_id=str(call_id)))
        else:
            raise ValueError(f"message {index}: unsupported role {role.value!r}")
    return out


def _parse_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(message: AIMessage) -> dict[str, int]:
    usage = message.usage_metadata or {}
    prompt, completion = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _blocks(content: Any, tool_calls: Sequence[dict[str, Any]]) -> list[Any]:
    text = content if isinstance(content, str) else "".join(
        part.get("text", "") if isinstance(part, dict) else str(part) for part in (content or [])
    )
    blocks: list[Any] = [TextBlock(text=text)] if text or not tool_calls else []
    blocks += [ToolCallBlock(tool_call_id=c.get("id"), tool_name=c["name"], tool_kwargs=dict(c.get("args") or {})) for c in tool_calls]
    return blocks


def to_response(message: AIMessage, delta: str | None = None) -> ChatResponse:
    """A LangChain answer (with the ``bestroute`` decision in its metadata) as a ChatResponse."""
    decision = message.response_metadata.get("bestroute") or {}
    usage = _usage(message)
    cost = decision.get("actual_cost_usd")
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, blocks=_blocks(message.content, message.tool_calls)),
        delta=delta,
        raw={"usage": usage, "cost_usd": cost, "bestroute": decision},
        additional_kwargs={**usage, "cost_usd": cost},
    )


class BestRouteLLM(FunctionCallingLLM):
    """BEST-Route for LlamaIndex (``Settings.llm``, query and chat engines, agents).

    Build it from trained artifacts like the LangChain model::

        llm = BestRouteLLM.from_pretrained("artifacts/router", "artifacts/reward", pool=pool, threshold=0.6)

    or from parts: ``BestRouteLLM(pool=pool, router=router, reranker=reward_model, threshold=0.6)``
    (also ``policy``, ``verifier``, ``escalation``, ``spend_cap_usd``, ``model`` to pin a member).
    Per call: ``llm.chat(messages, threshold=0.8)``, ``model="member"``, ``stop=[...]``.
    """

    pool: Any = Field(description="bestroute_lc.Pool: the members (LangChain chat models or LlamaIndexChatModel)")
    router: Any = Field(description="bestroute_lc.RouterPredictor", exclude=True)
    reranker: Any = Field(default=None, description="picks the best of n samples", exclude=True)
    threshold: float = Field(default=0.5, description="Algorithm 1's threshold t")
    model: str | None = Field(default=None, description="pin every call to this member (skips the router)")
    policy: Any = Field(default=None, description="a calibrated bestroute_lc.artifacts.PolicyChoice", exclude=True)
    verifier: Any = Field(default=None, description="bestroute_lc.verifiers.Verifier", exclude=True)
    escalation: list[tuple[str, int]] | None = None
    spend_cap_usd: float | None = None
    context_window: int | None = Field(default=None, description="None: the smallest of the pool members' profiles")
    num_output: int = Field(default=1024, description="tokens an answer may take (LlamaIndex's prompt budgeting)")
    _engine: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        from bestroute_lc.loading import build_engine

        if self.model is not None:
            self.pool[self.model]  # unknown member -> ValueError naming the members
        self._engine, self.threshold, self.verifier = build_engine(
            self.pool, self.router, self.reranker, threshold=self.threshold, threshold_given="threshold" in self.model_fields_set,
            policy=self.policy, verifier=self.verifier, escalation=self.escalation, spend_cap_usd=self.spend_cap_usd,
        )

    @classmethod
    def class_name(cls) -> str:
        return "BestRouteLLM"

    @classmethod
    def from_pretrained(
        cls, router_path: str | Path, reward_path: str | Path | None = None, *, pool: Any, device: str | None = None,
        **kwargs: Any,
    ) -> BestRouteLLM:
        """Trained artifacts, as ``bestroute_lc.BestRouteChatModel.from_pretrained`` takes them
        (``threshold=`` or ``target=`` / ``target_*=``, ``reranker=``, ``verifier=``...)."""
        from bestroute_lc.loading import load_pretrained

        names = ("target", "target_cost_reduction", "target_max_quality_drop", "target_reference_share",
                 "target_budget_per_1000", "reranker")
        loading = {k: kwargs.pop(k) for k in names if k in kwargs}
        settings = {k: kwargs.pop(k) for k in ("threshold", "policy") if k in kwargs}
        setup = load_pretrained(router_path, reward_path, pool=pool, device=device, **loading, **settings)
        return cls(pool=setup.pool, router=setup.router, reranker=setup.reranker, **setup.settings, **kwargs)

    # -- metadata -------------------------------------------------------------------------
    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window or self._smallest_context_window(),
            num_output=self.num_output,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=f"bestroute({','.join(self.pool.names)})",
        )

    def _smallest_context_window(self) -> int:
        from bestroute_lc.pool import common_profile

        profile = common_profile(self.pool) or {}
        return int(profile.get("max_input_tokens") or DEFAULT_CONTEXT_WINDOW)

    # -- chat -----------------------------------------------------------------------------
    def _engine_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One call's engine arguments; provider arguments (and ``tools`` / ``tool_choice``,
        bound on whichever member answers) pass through to the members."""
        from bestroute_lc.policy import validate_threshold

        call = dict(kwargs)
        call.pop("allow_parallel_tool_calls", None)
        if not call.get("tools"):
            call.pop("tools", None)
            call.pop("tool_choice", None)
        return {
            "threshold": validate_threshold(call.pop("threshold", self.threshold)),
            "member": call.pop("model", None) or self.model,
            "stop": call.pop("stop", None),
            "call_kwargs": call,
        }

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        from bestroute_lc.sync_bridge import run_sync

        result = run_sync(self._engine.arun(to_langchain(messages), **self._engine_args(kwargs)))
        return to_response(result.message)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = await self._engine.arun(to_langchain(messages), **self._engine_args(kwargs))
        return to_response(result.message)

    @staticmethod
    def _step(total: AIMessageChunk | None, item: Any) -> tuple[AIMessageChunk, ChatResponse]:
        """The answer so far with ``item`` (a chunk, or the call's result last) and its response."""
        from bestroute_lc.engine import RouteResult

        if isinstance(item, RouteResult):  # usage and the decision arrive with the result
            chunk = AIMessageChunk(content="", usage_metadata=item.message.usage_metadata,
                                   response_metadata=dict(item.message.response_metadata))
        else:
            chunk = item
        total = chunk if total is None else total + chunk
        so_far = AIMessage(content=total.content, tool_calls=total.tool_calls, usage_metadata=total.usage_metadata,
                           response_metadata=total.response_metadata)
        return total, to_response(so_far, delta=chunk.content if isinstance(chunk.content, str) else "")

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        from bestroute_lc.sync_bridge import iterate_sync

        stream = self._engine.astream(to_langchain(messages), **self._engine_args(kwargs))

        def gen() -> Iterator[ChatResponse]:
            total: AIMessageChunk | None = None
            for item in iterate_sync(stream):
                total, response = self._step(total, item)
                yield response

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        stream = self._engine.astream(to_langchain(messages), **self._engine_args(kwargs))

        async def gen() -> AsyncIterator[ChatResponse]:
            total: AIMessageChunk | None = None
            async for item in stream:
                total, response = self._step(total, item)
                yield response

        return gen()

    # -- completion: a one-turn chat ------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # -- tools ----------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg)
        return {
            "messages": messages,
            "tools": [tool.metadata.to_openai_tool() for tool in tools] or None,
            "tool_choice": ("any" if tool_required else "auto") if tools else None,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = [
            ToolSelection(tool_id=block.tool_call_id or "", tool_name=block.tool_name,
                          tool_kwargs=block.tool_kwargs if isinstance(block.tool_kwargs, dict) else _parse_kwargs(block.tool_kwargs))
            for block in response.message.blocks
            if isinstance(block, ToolCallBlock)
        ]
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none: {response.message.content!r}")
        return calls
