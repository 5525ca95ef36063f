"""The engine: one BEST-Route call from messages to the chosen answer.

    messages -> validate -> router (micro-batched) -> policy.choose -> draw n samples
             -> reranker (batched) -> chosen AIMessage + usage + cost + decision

Framework adapters (LangChain, LlamaIndex) only translate to and from this module.

Requests to pool members go through ``sampling.py`` (detached from the caller's
callbacks; usage is reported once, on the outer run).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.messages.tool import tool_call_chunk

from bestroute_lc.conversation import (
    render_candidate,
    render_conversation,
    validate_messages,
)
from bestroute_lc.isolation import IsolationUnavailableError
from bestroute_lc.policy import (
    Decision,
    Option,
    cheapest,
    choose,
    forced,
    validate_threshold,
)
from bestroute_lc.pool import Pool, check_pool_matches
from bestroute_lc.rerankers.base import Reranker, argmax_first
from bestroute_lc.router import RouterPredictor
from bestroute_lc.sampling import (
    Attempt,
    NoFirstChunk,
    describe_error,
    draw_samples,
    stream_member,
    sum_usage,
)

logger = logging.getLogger(__name__)


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
            **({"spent_usd": self.extra["spent_usd"]} if "spent_usd" in self.extra else {}),
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


def to_chunk(message: AIMessage) -> AIMessageChunk:
    """A whole message as one stream chunk (tool calls become tool-call chunks)."""
    return AIMessageChunk(
        content=message.content,
        additional_kwargs={k: v for k, v in message.additional_kwargs.items() if k != "tool_calls"},
        response_metadata=dict(message.response_metadata),
        tool_call_chunks=[
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c.get("id"), index=i)
            for i, c in enumerate(message.tool_calls)
        ],
        id=message.id,
    )


class SpendGuard:
    """Counts what calls have cost; past ``cap_usd`` calls go to the cheapest option."""

    def __init__(self, cap_usd: float | None) -> None:
        if cap_usd is not None and cap_usd < 0:
            raise ValueError(f"spend cap must be >= 0, got {cap_usd}")
        self.cap_usd = cap_usd
        self.spent_usd = 0.0
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        return self.cap_usd is not None and self.spent_usd >= self.cap_usd

    def add(self, cost_usd: float) -> None:
        with self._lock:
            self.spent_usd += cost_usd


class BestRouteEngine:
    """Routes, samples, reranks. Thread-safe; one instance serves many concurrent calls."""

    def __init__(
        self, pool: Pool, router: RouterPredictor, reranker: Reranker | None, spend_cap_usd: float | None = None
    ) -> None:
        check_pool_matches(router.config.members, router.config.reference, pool, "the router")
        if reranker is None and router.config.max_n > 1:
            raise ValueError("a reranker is required when the router can choose n > 1 (max_n > 1)")
        if reranker is not None:
            reranker.check_ready()  # e.g. code execution without its isolation layer: fail closed now
        self.pool = pool
        self.router = router
        self.reranker = reranker
        self.spend = SpendGuard(spend_cap_usd)

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
        if self.spend.exhausted:
            return cheapest(costs, input_tokens, threshold), {}, 0.0
        start = time.perf_counter()
        table = await self.router.apredict(conversation)
        table = {name: table[name] for name in self.pool.routed_names}
        decision = choose(table, costs, self.pool.reference, input_tokens, threshold)
        return decision, table, time.perf_counter() - start

    # -- reranking ----------------------------------------------------------------------
    async def arerank(self, messages: Sequence[BaseMessage], candidates: list[AIMessage]) -> tuple[int, list[float] | None, str | None]:
        """(index of the best candidate, scores, error). One candidate needs no reranker."""
        if len(candidates) == 1 or self.reranker is None:
            return 0, None, None
        prompt = render_conversation(messages).text
        try:
            scores = await self.reranker.ascore(prompt, [render_candidate(c) for c in candidates])
        except IsolationUnavailableError:
            raise  # fail closed: never hand back unverified model-written code as "reranked"
        except Exception as exc:  # noqa: BLE001 - a broken reranker must not lose paid-for samples
            logger.warning("bestroute: reranker failed (%s); returning the first sample", describe_error(exc))
            return 0, None, describe_error(exc)
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
        self.spend.add(sum(a.cost_usd for a in state.attempts))  # failed calls can still be billed
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
        usage = sum_usage([a.usage for a in state.attempts])
        message = chosen.model_copy(deep=True)
        message.usage_metadata = usage
        self.spend.add(sum(a.cost_usd for a in state.attempts))
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
            extra={"chosen_index": chosen_index, **({"spent_usd": self.spend.spent_usd} if self.spend.cap_usd is not None else {})},
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
        samples, attempt = await draw_samples(self.pool[option.member], option.n, messages, stop, call_kwargs)
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
                async for chunk in stream_member(pool_member, messages, stop, call_kwargs):
                    if chunk.usage_metadata:
                        usage = add_usage(usage, chunk.usage_metadata)
                    collected = chunk if collected is None else collected + chunk
                    yield chunk.model_copy(update={"usage_metadata": None, "chunk_position": None, "response_metadata": {}})
            except NoFirstChunk as exc:
                attempt.error = describe_error(exc.__cause__ or exc)
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

