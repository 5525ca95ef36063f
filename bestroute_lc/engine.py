"""The engine: one BEST-Route call from messages to the chosen answer.

    messages -> validate -> router (micro-batched) -> policy.choose -> draw n samples
             -> reranker (batched) -> chosen AIMessage + usage + cost + decision

Framework adapters (LangChain, LlamaIndex) only translate to and from this module.

Inner calls to pool members run *detached*: in a fresh ``contextvars.Context`` with
LangSmith tracing off, so the caller's callbacks and tracer never see them. Otherwise
LangChain's context propagation would fire ``on_chat_model_start`` for each sample
and count tokens twice; their usage is reported once, on the outer run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.messages.tool import tool_call_chunk

from bestroute_lc.conversation import render_candidate, render_conversation, validate_messages
from bestroute_lc.policy import Decision, Option, choose, forced, validate_threshold
from bestroute_lc.pool import NBilling, Pool, PoolMember, check_pool_matches
from bestroute_lc.pricing import Prices, usage_cost_split
from bestroute_lc.rerankers.base import Reranker, argmax_first
from bestroute_lc.router import RouterPredictor

logger = logging.getLogger(__name__)

#: Kwargs of a call that are tool bindings, translated per member by its own bind_tools.
TOOL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "strict")
#: Kwargs that only BestRoute reads; never forwarded to members.
ENGINE_KWARGS = ("threshold", "model", "ls_structured_output_format")


class BestRouteError(RuntimeError):
    """Every option of the fallback chain failed; the message names each failure."""


def approximate_tokens(text: str) -> int:
    """Input-token estimate for the cost model: about four characters per token.

    Only the *relative* cost of options matters to the policy, and every member sees
    the same prompt, so a provider-independent estimate is enough; billed cost uses
    the provider's reported usage.
    """
    return max(1, (len(text) + 3) // 4)


@dataclass
class Attempt:
    """One option tried during a call."""

    member: str
    n: int
    received: int = 0
    error: str | None = None
    usage: UsageMetadata | None = None
    input_cost_usd: float = 0.0
    output_cost_usd: float = 0.0
    latency_s: float = 0.0

    @property
    def cost_usd(self) -> float:
        return self.input_cost_usd + self.output_cost_usd

    def bill(self, usage: UsageMetadata | None, prices: Prices) -> None:
        """Record what the provider reported for this attempt and what it costs."""
        self.usage = usage
        self.input_cost_usd, self.output_cost_usd = usage_cost_split(usage, prices)


@dataclass
class RouteResult:
    """Everything about one call; ``metadata()`` is what lands in ``response_metadata``."""

    message: AIMessage
    decision: Decision
    match_probabilities: dict[str, list[float]]
    member: str
    n: int
    candidates: list[AIMessage]
    scores: list[float] | None
    attempts: list[Attempt]
    usage: UsageMetadata | None
    input_cost_usd: float
    output_cost_usd: float
    latency_s: dict[str, float]
    reranker: str | None
    rerank_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float:
        """Billed USD of everything this call sent, failed attempts included."""
        return self.input_cost_usd + self.output_cost_usd

    def metadata(self) -> dict[str, Any]:
        d = self.decision
        return {
            "member": self.member,
            "n": self.n,
            "samples_received": len(self.candidates),
            "threshold": d.threshold,
            "reason": d.reason if self.member == d.member and self.n == d.n else "fallback",
            "routed_member": d.member,
            "routed_n": d.n,
            "match_probabilities": self.match_probabilities,
            "estimated_cost_usd": d.estimated_cost_usd,
            "actual_cost_usd": self.cost_usd,
            "candidate_scores": self.scores,
            "chosen_index": self.extra.get("chosen_index", 0),
            "reranker": self.reranker,
            "rerank_error": self.rerank_error,
            "attempts": [
                {"member": a.member, "n": a.n, "received": a.received, "error": a.error, "cost_usd": a.cost_usd}
                for a in self.attempts
            ],
            "latency_s": self.latency_s,
        }


@dataclass
class _CallState:
    """What one call has done so far: the decision, and every option tried."""

    decision: Decision
    table: dict[str, list[float]]
    routing_s: float
    generation_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self.generation_s += attempt.latency_s


def _usage_from_result(generation_message: BaseMessage, llm_output: dict[str, Any] | None) -> UsageMetadata | None:
    usage = getattr(generation_message, "usage_metadata", None)
    if usage:
        return usage
    token_usage = (llm_output or {}).get("token_usage") or (llm_output or {}).get("usage") or {}
    prompt = token_usage.get("prompt_tokens", token_usage.get("input_tokens"))
    completion = token_usage.get("completion_tokens", token_usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return UsageMetadata(
        input_tokens=int(prompt or 0), output_tokens=int(completion or 0), total_tokens=int(prompt or 0) + int(completion or 0)
    )


def _sum_usage(usages: Sequence[UsageMetadata | None]) -> UsageMetadata | None:
    total: UsageMetadata | None = None
    for usage in usages:
        if usage:
            total = add_usage(total, usage)
    return total


def _is_empty(message: AIMessage) -> bool:
    return not render_candidate(message).strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def run_detached(coroutine_factory: Any) -> Any:
    """Await ``coroutine_factory()`` in an empty context with tracing off (see module doc)."""
    task = asyncio.get_running_loop().create_task(_tracing_off(coroutine_factory), context=contextvars.Context())
    return await task


async def _tracing_off(factory: Any) -> Any:
    from langsmith.run_helpers import tracing_context

    with tracing_context(enabled=False):
        return await factory()


def to_chunk(message: AIMessage) -> AIMessageChunk:
    """A whole message as one stream chunk (tool calls become tool-call chunks)."""
    return AIMessageChunk(
        content=message.content,
        additional_kwargs={k: v for k, v in message.additional_kwargs.items() if k != "tool_calls"},
        response_metadata=dict(message.response_metadata),
        tool_call_chunks=[
            tool_call_chunk(name=c["name"], args=_json(c["args"]), id=c.get("id"), index=i)
            for i, c in enumerate(message.tool_calls)
        ],
        id=message.id,
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


class BestRouteEngine:
    """Routes, samples, reranks. Thread-safe; one instance serves many concurrent calls."""

    def __init__(self, pool: Pool, router: RouterPredictor, reranker: Reranker | None) -> None:
        check_pool_matches(router.config.members, router.config.reference, pool, "the router")
        if reranker is None and router.config.max_n > 1:
            raise ValueError("a reranker is required when the router can choose n > 1 (max_n > 1)")
        self.pool = pool
        self.router = router
        self.reranker = reranker

    # -- decision ---------------------------------------------------------------------
    async def adecide(
        self, messages: Sequence[BaseMessage], threshold: float, member: str | None = None
    ) -> tuple[Decision, dict[str, list[float]], float]:
        """Validate input, run the router and Algorithm 1. Returns (decision, p table, seconds)."""
        validate_messages(messages, {m.name: m.accepts_content_types for m in self.pool})
        threshold = validate_threshold(threshold)
        conversation = render_conversation(messages)
        input_tokens = approximate_tokens(conversation.text)
        costs = self.pool.costs()
        if member is not None:
            self.pool[member]  # raises ValueError naming the members
            return forced(member, 1, costs, self.pool.reference, input_tokens, threshold), {}, 0.0
        start = time.perf_counter()
        table = await self.router.apredict(conversation)
        table = {name: table[name] for name in self.pool.routed_names}
        decision = choose(table, costs, self.pool.reference, input_tokens, threshold)
        return decision, table, time.perf_counter() - start

    # -- sampling -----------------------------------------------------------------------
    def member_kwargs(self, member: PoolMember, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Call kwargs for one member: tools bound through the member's own ``bind_tools``."""
        kwargs = {k: v for k, v in call_kwargs.items() if k not in ENGINE_KWARGS and k not in TOOL_KWARGS}
        tools = call_kwargs.get("tools")
        if tools:
            extra = {k: call_kwargs[k] for k in ("tool_choice", "parallel_tool_calls", "strict") if call_kwargs.get(k) is not None}
            bound = member.chat_model.bind_tools(tools, **extra)
            kwargs.update(getattr(bound, "kwargs", {}))
        return kwargs

    async def _one_request(
        self, member: PoolMember, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[AIMessage], UsageMetadata | None]:
        """One request with retries and a timeout per attempt; returns (samples, billed usage)."""
        last_error: BaseException | None = None
        for attempt in range(member.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                result = await asyncio.wait_for(
                    run_detached(lambda: member.chat_model.agenerate([list(messages)], stop=stop, **kwargs)),
                    timeout=member.timeout_s,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any provider failure is retried, then reported
                last_error = exc
                logger.info("bestroute: %s attempt %d failed: %s", member.name, attempt + 1, _describe(exc))
                continue
            generations = result.generations[0]
            messages_out = [g.message for g in generations if isinstance(g.message, AIMessage)]
            # With native n the provider reports the usage of the whole request on every
            # choice: count it once.
            usage = _usage_from_result(generations[0].message, result.llm_output) if generations else None
            return messages_out, usage
        assert last_error is not None
        raise last_error

    async def asample(
        self, member: PoolMember, n: int, messages: Sequence[BaseMessage], stop: list[str] | None, call_kwargs: dict[str, Any]
    ) -> tuple[list[AIMessage], Attempt]:
        """Draw ``n`` samples from ``member``; failed or empty samples are dropped and recorded."""
        attempt = Attempt(member=member.name, n=n)
        kwargs = self.member_kwargs(member, call_kwargs)
        start = time.perf_counter()
        if member.n_billing is NBilling.NATIVE and n > 1:
            requests = [self._one_request(member, messages, stop, {**kwargs, "n": n})]
        else:
            requests = [self._one_request(member, messages, stop, kwargs) for _ in range(n)]
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        samples: list[AIMessage] = []
        usages: list[UsageMetadata | None] = []
        errors: list[str] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                errors.append(_describe(outcome))
                continue
            got, usage = outcome
            usages.append(usage)
            for message in got:
                if _is_empty(message):
                    errors.append("empty response")
                else:
                    samples.append(message)
        attempt.latency_s = time.perf_counter() - start
        attempt.received = len(samples)
        attempt.bill(_sum_usage(usages), member.prices)
        if errors:
            attempt.error = f"{len(errors)} of {n} sample(s) failed: " + "; ".join(sorted(set(errors)))
        return samples, attempt

    # -- reranking ----------------------------------------------------------------------
    async def arerank(self, messages: Sequence[BaseMessage], candidates: list[AIMessage]) -> tuple[int, list[float] | None, str | None]:
        """(index of the best candidate, scores, error). One candidate needs no reranker."""
        if len(candidates) == 1 or self.reranker is None:
            return 0, None, None
        prompt = render_conversation(messages).text
        try:
            scores = await self.reranker.ascore(prompt, [render_candidate(c) for c in candidates])
        except Exception as exc:  # noqa: BLE001 - a broken reranker must not lose paid-for samples
            logger.warning("bestroute: reranker failed (%s); returning the first sample", _describe(exc))
            return 0, None, _describe(exc)
        return argmax_first(scores), [float(s) for s in scores], None

    # -- whole call -----------------------------------------------------------------------
    async def _start(
        self, messages: Sequence[BaseMessage], threshold: float, member: str | None
    ) -> _CallState:
        decision, table, routing_s = await self.adecide(messages, threshold, member)
        return _CallState(decision=decision, table=table, routing_s=routing_s)

    def _options(self, state: _CallState) -> Iterator[Option]:
        """The fallback chain, skipping members that already failed in this call."""
        for option in state.decision.fallbacks:
            if option.member not in state.failed:
                yield option

    def _raise_all_failed(self, state: _CallState) -> NoReturn:
        detail = "; ".join(f"{a.member} (n={a.n}): {a.error or 'no usable sample'}" for a in state.attempts)
        raise BestRouteError(f"every pool option failed: {detail}")

    def _finish(
        self,
        state: _CallState,
        option: Option,
        candidates: list[AIMessage],
        chosen_index: int = 0,
        scores: list[float] | None = None,
        rerank_s: float = 0.0,
        rerank_error: str | None = None,
    ) -> RouteResult:
        chosen = candidates[chosen_index]
        usage = _sum_usage([a.usage for a in state.attempts])
        message = chosen.model_copy(deep=True)
        message.usage_metadata = usage
        result = RouteResult(
            message=message,
            decision=state.decision,
            match_probabilities=state.table,
            member=option.member,
            n=option.n,
            candidates=candidates,
            scores=scores,
            attempts=state.attempts,
            usage=usage,
            input_cost_usd=sum(a.input_cost_usd for a in state.attempts),
            output_cost_usd=sum(a.output_cost_usd for a in state.attempts),
            latency_s={"routing": state.routing_s, "generation": state.generation_s, "rerank": rerank_s},
            reranker=self.reranker.name if (self.reranker is not None and len(candidates) > 1) else None,
            rerank_error=rerank_error,
            extra={"chosen_index": chosen_index},
        )
        message.response_metadata = {
            **chosen.response_metadata,
            "model_name": option.member,
            "provider_model_name": chosen.response_metadata.get("model_name"),
            "bestroute": result.metadata(),
        }
        return result

    async def _best_of_n(
        self,
        state: _CallState,
        option: Option,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        call_kwargs: dict[str, Any],
    ) -> RouteResult | None:
        """Draw ``option.n`` samples and rerank them; None (member marked failed) if none came."""
        samples, attempt = await self.asample(self.pool[option.member], option.n, messages, stop, call_kwargs)
        state.record(attempt)
        if not samples:
            state.failed.add(option.member)
            return None
        start = time.perf_counter()
        index, scores, rerank_error = await self.arerank(messages, samples)
        return self._finish(state, option, samples, index, scores, time.perf_counter() - start, rerank_error)

    async def arun(
        self,
        messages: Sequence[BaseMessage],
        *,
        threshold: float,
        stop: list[str] | None = None,
        member: str | None = None,
        call_kwargs: dict[str, Any] | None = None,
    ) -> RouteResult:
        """Route, sample with fallbacks, rerank."""
        state = await self._start(messages, threshold, member)
        for option in self._options(state):
            result = await self._best_of_n(state, option, messages, stop, call_kwargs or {})
            if result is not None:
                return result
        self._raise_all_failed(state)

    async def astream(
        self,
        messages: Sequence[BaseMessage],
        *,
        threshold: float,
        stop: list[str] | None = None,
        member: str | None = None,
        call_kwargs: dict[str, Any] | None = None,
    ) -> AsyncIterator[AIMessageChunk | RouteResult]:
        """Yield the answer's chunks, then the ``RouteResult`` last.

        With n = 1 the member's own chunks are passed through as they arrive (their usage
        is held back and reported once, on the final chunk). With n > 1 the samples are
        drawn and reranked first and the chosen answer is yielded as one chunk. A member
        that fails before its first chunk falls back like ``arun``; one that fails
        mid-stream raises, since tokens already shown cannot be taken back.
        """
        call_kwargs = call_kwargs or {}
        state = await self._start(messages, threshold, member)
        for option in self._options(state):
            if option.n > 1:
                result = await self._best_of_n(state, option, messages, stop, call_kwargs)
                if result is None:
                    continue
                chunk = to_chunk(result.candidates[result.extra["chosen_index"]])
                chunk.response_metadata = {}
                yield chunk
                yield result
                return
            pool_member = self.pool[option.member]
            attempt = Attempt(member=option.member, n=1)
            start = time.perf_counter()
            collected: AIMessageChunk | None = None
            usage: UsageMetadata | None = None
            try:
                async for chunk in self._stream_member(pool_member, messages, stop, call_kwargs):
                    if chunk.usage_metadata:
                        usage = add_usage(usage, chunk.usage_metadata)
                    collected = chunk if collected is None else collected + chunk
                    yield chunk.model_copy(update={"usage_metadata": None, "chunk_position": None, "response_metadata": {}})
            except _NoFirstChunk as exc:
                attempt.error = _describe(exc.__cause__ or exc)
            attempt.latency_s = time.perf_counter() - start
            attempt.bill(usage, pool_member.prices)
            state.record(attempt)
            if collected is None:
                state.failed.add(option.member)
                continue
            attempt.received = 1
            final = AIMessage(
                content=collected.content,
                additional_kwargs=collected.additional_kwargs,
                response_metadata=collected.response_metadata,
                tool_calls=collected.tool_calls,
                invalid_tool_calls=collected.invalid_tool_calls,
                id=collected.id,
            )
            yield self._finish(state, option, [final])
            return
        self._raise_all_failed(state)

    @staticmethod
    async def _pump(
        member: PoolMember,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        queue: asyncio.Queue,
    ) -> None:
        """Move a member's stream into ``queue``: chunks, then ``_STREAM_DONE`` or the error."""
        try:
            async for chunk in member.chat_model.astream(list(messages), stop=stop, **kwargs):
                await queue.put(chunk)
            await queue.put(_STREAM_DONE)
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put(exc)

    async def _stream_member(
        self,
        member: PoolMember,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        call_kwargs: dict[str, Any],
    ) -> AsyncIterator[AIMessageChunk]:
        """The member's chunks, produced by a detached pump task (see module doc).

        Raises ``_NoFirstChunk`` when every try fails before the first chunk (the caller
        falls back); later failures propagate as they are.
        """
        kwargs = self.member_kwargs(member, call_kwargs)
        if member.n_billing is NBilling.NATIVE:
            kwargs.setdefault("stream_usage", True)  # OpenAI protocol: usage only when asked
        last_error: BaseException | None = None
        for try_index in range(member.max_retries + 1):
            if try_index:
                await asyncio.sleep(min(0.05 * 2**try_index, 2.0))
            queue: asyncio.Queue = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(
                _tracing_off(lambda q=queue: self._pump(member, messages, stop, kwargs, q)), context=contextvars.Context()
            )
            received_any = False
            held: AIMessageChunk | None = None  # empty chunks before the first real one
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=member.timeout_s)
                    except asyncio.TimeoutError as exc:
                        item = exc
                    if item is _STREAM_DONE:
                        if not received_any:
                            last_error = RuntimeError("empty response")
                            break
                        return
                    if isinstance(item, BaseException):
                        if received_any:
                            raise item
                        last_error = item
                        break
                    if isinstance(item, AIMessageChunk):
                        if not received_any and not (item.content or item.tool_call_chunks):
                            held = item if held is None else held + item
                            continue
                        if held is not None:
                            item, held = held + item, None
                        received_any = True
                        yield item
            finally:
                if not task.done():
                    task.cancel()
        raise _NoFirstChunk() from last_error


class _NoFirstChunk(Exception):
    pass


_STREAM_DONE = object()
