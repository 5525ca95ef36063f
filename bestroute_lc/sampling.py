"""Drawing samples from one pool member: the one place that calls provider chat models.

Used by the engine at run time and by ``training/generate.py``, so training data is
drawn exactly as production calls are (same clients, same n billing, same retries).

Every request runs *detached*: on the process-wide background loop (``sync_bridge``: the
one loop that touches the members' HTTP clients, whichever loop or thread the call came
from), in a fresh ``contextvars.Context`` with LangSmith tracing off, so the caller's
callbacks and tracer never see it. Otherwise LangChain's context propagation would fire
``on_chat_model_start`` for each sample and count tokens twice; usage is reported once, by
the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage

from bestroute_lc.conversation import render_candidate
from bestroute_lc.pool import NBilling, PoolMember
from bestroute_lc.pricing import Prices, approximate_tokens, usage_cost_split
from bestroute_lc.secrets import scrub_secrets
from bestroute_lc.sync_bridge import start_detached

logger = logging.getLogger(__name__)

#: Kwargs of a call that are tool bindings, translated per member by its own bind_tools.
TOOL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "strict")
#: Kwargs that only BestRoute reads; never forwarded to members.
ENGINE_KWARGS = ("threshold", "model", "ls_structured_output_format")


@dataclass
class Attempt:
    """One option tried during a call."""

    member: str
    n: int
    received: int = 0
    #: A one-line summary for people ("2 of 3 sample(s) failed: ...").
    error: str | None = None
    #: The distinct causes of failed samples, for code that counts them.
    causes: list[str] = field(default_factory=list)
    #: USD that requests which ended without a usage report (timed out, cut, connection lost)
    #: may still have cost: their prompt plus the expected output, an estimate the provider did
    #: not confirm; counted by the spend cap, reported apart from the billed cost.
    unconfirmed_cost_usd: float = 0.0
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


def _usage_from_result(generation_message: BaseMessage | None, llm_output: dict[str, Any] | None) -> UsageMetadata | None:
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


def sum_usage(usages: Sequence[UsageMetadata | None]) -> UsageMetadata | None:
    total: UsageMetadata | None = None
    for usage in usages:
        if usage:
            total = add_usage(total, usage)
    return total


def _is_empty(message: AIMessage) -> bool:
    return not render_candidate(message).strip()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    # Scrubbed before it goes anywhere (attempt metadata, BestRouteError, logs, traces): a
    # provider may echo the key it was sent.
    text = scrub_secrets(str(exc)).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def run_detached(coroutine_factory: Any) -> Any:
    """Await ``coroutine_factory()`` on the background loop, in an empty context with tracing
    off (see module doc)."""
    return await asyncio.wrap_future(start_detached(lambda: _tracing_off(coroutine_factory)))


async def _tracing_off(factory: Any) -> Any:
    from langsmith.run_helpers import tracing_context

    with tracing_context(enabled=False):
        return await factory()


def member_call_kwargs(member: PoolMember, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call kwargs for one member: tools bound through the member's own ``bind_tools``."""
    kwargs = {k: v for k, v in call_kwargs.items() if k not in ENGINE_KWARGS and k not in TOOL_KWARGS}
    tools = call_kwargs.get("tools")
    if tools:
        extra = {k: call_kwargs[k] for k in ("tool_choice", "parallel_tool_calls", "strict") if call_kwargs.get(k) is not None}
        bound = member.chat_model.bind_tools(tools, **extra)
        kwargs.update(getattr(bound, "kwargs", {}))
    return kwargs

#: HTTP statuses worth another try (as the OpenAI SDK and LiteLLM retry): request timeout,
#: conflict, rate limit, and server errors. Any other status (400, 401, 403, 404, 422...) fails
#: the same way again.
RETRYABLE_STATUS = frozenset({408, 409, 429})


def status_code(exc: BaseException) -> int | None:
    for source in (exc, getattr(exc, "response", None)):
        code = getattr(source, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors and failures without a status are retried; of HTTP errors,
    only ``RETRYABLE_STATUS`` and 5xx."""
    code = status_code(exc)
    return code is None or code in RETRYABLE_STATUS or code >= 500


def retry_after_s(exc: BaseException) -> float | None:
    """The wait a 429/503 asks for (``retry-after-ms``, ``Retry-After`` in seconds or as a date)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, AttributeError):
        return None


def _retry_wait(member: PoolMember, error: BaseException, attempt: int) -> float:
    """Seconds before try ``attempt``: what Retry-After asks (up to the member's timeout), else a short backoff."""
    wait = retry_after_s(error)
    return min(wait, member.timeout_s) if wait is not None else min(0.05 * 2**attempt, 2.0)


async def _one_request(
    member: PoolMember, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> tuple[list[AIMessage], UsageMetadata | None]:
    """One request with retries and a timeout per attempt; returns (samples, billed usage).

    Retries only what can succeed on another try (``is_retryable``), after the wait the
    provider asked for (``Retry-After``, capped by the member's timeout) or a short backoff.
    Every outcome feeds the member's circuit breaker (``PoolMember.health``)."""
    last_error: BaseException | None = None
    for attempt in range(member.max_retries + 1):
        if attempt:
            assert last_error is not None
            await asyncio.sleep(_retry_wait(member, last_error, attempt))
        try:
            result = await asyncio.wait_for(
                run_detached(lambda: member.chat_model.agenerate([list(messages)], stop=stop, **kwargs)),
                timeout=member.request_deadline_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, retried when it can help
            last_error = exc
            member.record_request(False)
            logger.info("bestroute: %s attempt %d failed: %s", member.name, attempt + 1, describe_error(exc))
            if not is_retryable(exc):
                break
            continue
        member.record_request(True)
        generations = result.generations[0]
        messages_out = [g.message for g in generations if isinstance(g.message, AIMessage)]
        # With native n the provider reports the usage of the whole request on every
        # choice: count it once.
        # No choices at all (a provider can answer 200 with none) still bills what it reports.
        usage = _usage_from_result(generations[0].message if generations else None, result.llm_output)
        return messages_out, usage
    assert last_error is not None
    raise last_error

def may_have_been_billed(exc: BaseException) -> bool:
    """A request that ended without a readable answer but maybe after the provider did the
    work: timeouts and connection failures (no HTTP status), and a 200 whose body could not be
    read. HTTP errors are not billed."""
    code = status_code(exc)
    return code is None or 200 <= code < 300


def unconfirmed_cost(member: PoolMember, messages: Sequence[BaseMessage], samples: int) -> float:
    """The prompt (about 4 characters a token) plus ``samples`` expected answers, at the member's prices."""
    prompt_tokens = approximate_tokens("".join(str(m.content) for m in messages))
    return member.prices.input_cost(prompt_tokens) + member.prices.output_cost(samples * member.avg_output_tokens)


async def draw_samples(
    member: PoolMember, n: int, messages: Sequence[BaseMessage], stop: list[str] | None, call_kwargs: dict[str, Any],
    respect_cooldown: bool = True,
) -> tuple[list[AIMessage], Attempt]:
    """Draw ``n`` samples from ``member``; failed or empty samples are dropped and recorded."""
    attempt = Attempt(member=member.name, n=n)
    left = member.health.cooling_down() if respect_cooldown else 0.0
    if left > 0:  # failed repeatedly just now: skip it without a request (the caller falls back)
        attempt.error = f"cooling down: {left:.1f} s left after {member.cooldown_after} failed requests in a row"
        attempt.causes = ["cooling down"]
        return [], attempt
    kwargs = member_call_kwargs(member, call_kwargs)
    start = time.perf_counter()
    if member.n_billing is NBilling.NATIVE and n > 1:
        requests = [_one_request(member, messages, stop, {**kwargs, "n": n})]
    else:
        requests = [_one_request(member, messages, stop, kwargs) for _ in range(n)]
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    samples: list[AIMessage] = []
    usages: list[UsageMetadata | None] = []
    errors: list[str] = []
    per_request = n if len(requests) == 1 else 1
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            errors.append(describe_error(outcome))
            if may_have_been_billed(outcome):
                attempt.unconfirmed_cost_usd += unconfirmed_cost(member, messages, per_request)
            continue
        got, usage = outcome
        usages.append(usage)
        if not got:
            errors.append("no choices returned")
        for message in got:
            if _is_empty(message):
                errors.append("empty response")
            else:
                samples.append(message)
    attempt.latency_s = time.perf_counter() - start
    attempt.received = len(samples)
    attempt.bill(sum_usage(usages), member.prices)
    if errors:
        attempt.causes = sorted(set(errors))
        attempt.error = f"{len(errors)} of {n} sample(s) failed: " + "; ".join(attempt.causes)
    return samples, attempt


async def _pump(
    member: PoolMember,
    messages: Sequence[BaseMessage],
    stop: list[str] | None,
    kwargs: dict[str, Any],
    deliver: Callable[[Any], None],
) -> None:
    """Hand a member's stream to ``deliver``: chunks, then ``_STREAM_DONE`` or the error."""
    try:
        async for chunk in member.chat_model.astream(list(messages), stop=stop, **kwargs):
            deliver(chunk)
        deliver(_STREAM_DONE)
    except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
        deliver(exc)
        if isinstance(exc, asyncio.CancelledError):
            raise


def _deliver_to(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[Any], None]:
    """Put items into ``queue`` (owned by ``loop``) from the background loop's thread."""

    def deliver(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop has closed: nobody is reading
            pass

    return deliver

async def stream_member(
    member: PoolMember,
    messages: Sequence[BaseMessage],
    stop: list[str] | None,
    call_kwargs: dict[str, Any],
) -> AsyncIterator[AIMessageChunk]:
    """The member's chunks, produced by a detached pump task (see module doc).

    Raises ``NoFirstChunk`` when every try fails before the first chunk (the caller
    falls back); later failures propagate as they are.
    """
    if member.health.cooling_down() > 0:
        raise NoFirstChunk() from RuntimeError(f"{member.name} is cooling down after repeated failures")
    kwargs = member_call_kwargs(member, call_kwargs)
    if member.n_billing is NBilling.NATIVE:
        kwargs.setdefault("stream_usage", True)  # OpenAI protocol: usage only when asked
    last_error: BaseException | None = None
    for try_index in range(member.max_retries + 1):
        if try_index:
            assert last_error is not None
            if not is_retryable(last_error):
                break
            await asyncio.sleep(_retry_wait(member, last_error, try_index))
        queue: asyncio.Queue = asyncio.Queue()
        deliver = _deliver_to(asyncio.get_running_loop(), queue)
        pump = start_detached(lambda d=deliver: _tracing_off(lambda: _pump(member, messages, stop, kwargs, d)))
        received_any = False
        held: AIMessageChunk | None = None  # empty chunks before the first real one
        try:
            while True:
                try:
                    # The client's own retries happen before the first chunk.
                    wait_s = member.timeout_s if received_any else member.request_deadline_s
                    item = await asyncio.wait_for(queue.get(), timeout=wait_s)
                except asyncio.TimeoutError as exc:
                    item = exc
                if item is _STREAM_DONE:
                    if not received_any:
                        last_error = RuntimeError("empty response")
                        member.record_request(False)
                        break
                    member.record_request(True)
                    return
                if isinstance(item, BaseException):
                    member.record_request(False)
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
            pump.cancel()
    raise NoFirstChunk() from last_error


class NoFirstChunk(Exception):
    """A streamed request failed before its first chunk (so falling back is safe)."""


_STREAM_DONE = object()
