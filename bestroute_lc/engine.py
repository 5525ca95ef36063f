"""The engine: one BEST-Route call from messages to the chosen answer.

    messages -> validate -> router (micro-batched) -> policy.choose -> draw n samples
             -> reranker (batched) -> [verifier -> escalate if rejected]
             -> chosen AIMessage + usage + cost + decision

Framework adapters (LangChain, LlamaIndex) only translate to and from this module.

Requests to pool members go through ``sampling.py`` (detached from the caller's
callbacks; usage is reported once, on the outer run).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.messages.tool import tool_call_chunk

from bestroute_lc.artifacts import PolicyChoice
from bestroute_lc.conversation import (
    render_candidate,
    render_conversation,
    validate_messages,
)
from bestroute_lc.isolation import IsolationUnavailableError
from bestroute_lc.policy import (
    ChainWalk,
    Decision,
    Option,
    cheapest,
    choose,
    fixed,
    forced,
    validate_threshold,
    with_stages,
)
from bestroute_lc.pool import Pool, check_pool_matches
from bestroute_lc.pricing import approximate_tokens
from bestroute_lc.rerankers.base import Reranker, argmax_first
from bestroute_lc.sampling import (
    Attempt,
    NoFirstChunk,
    describe_error,
    draw_samples,
    stream_member,
    sum_usage,
    unconfirmed_cost,
)
from bestroute_lc.verifiers import Verdict, Verifier

if TYPE_CHECKING:
    # Annotations only: the router module imports torch, which this module never needs
    # (the engine is handed a loaded router), so importing the engine stays light.
    from bestroute_lc.router import RouterPredictor

logger = logging.getLogger(__name__)


class BestRouteError(RuntimeError):
    """A call that ended without an answer: every option of the fallback chain failed, or a
    stream was cut after tokens were shown. The message names each failure; ``attempts``
    (member, n, received, error, billed and unconfirmed cost), ``cost_usd`` and
    ``unconfirmed_cost_usd`` say what was tried and what it may have cost."""

    def __init__(self, message: str, *, attempts: list[dict[str, Any]] | None = None, cost_usd: float = 0.0,
                 unconfirmed_cost_usd: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = attempts or []
        self.cost_usd = cost_usd
        self.unconfirmed_cost_usd = unconfirmed_cost_usd


def _attempt_record(a: Attempt) -> dict[str, Any]:
    """One attempt as the decision metadata and ``BestRouteError`` report it."""
    return {"member": a.member, "n": a.n, "received": a.received, "short": a.received < a.n, "error": a.error,
            "cost_usd": a.cost_usd, "unconfirmed_cost_usd": a.unconfirmed_cost_usd}


@dataclass
class Stage:
    """One stage of a verified call: a (member, n) that answered, and the verdict on its pick."""

    member: str
    n: int
    samples: int
    #: True when the pick was returned (accepted, or the reference's final answer).
    accepted: bool
    #: The verifier's confidence in [0, 1]; None for the reference (final, not verified).
    confidence: float | None
    reason: str
    #: Billed USD of this stage's requests.
    cost_usd: float
    #: Generation + rerank + verification seconds of this stage.
    latency_s: float
    verify_s: float = 0.0
    verifiable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "n": self.n,
            "samples": self.samples,
            "accepted": self.accepted,
            "confidence": self.confidence,
            "reason": self.reason,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "verify_s": self.verify_s,
            "verifiable": self.verifiable,
        }


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
    #: Verified calls only (a verifier is configured and the call was routed): every stage
    #: that answered, in order; None otherwise.
    stages: list[Stage] | None = None

    @property
    def cost_usd(self) -> float:
        """Billed USD of everything this call sent, failed attempts and every stage included."""
        return self.input_cost_usd + self.output_cost_usd

    def metadata(self) -> dict[str, Any]:
        d = self.decision
        reason = self.extra.get("reason") or (d.reason if self.member == d.member and self.n == d.n else "fallback")
        out = {
            "member": self.member,
            "n": self.n,
            "samples_received": len(self.candidates),
            "threshold": d.threshold,
            "reason": reason,
            "routed_member": d.member,
            "routed_n": d.n,
            "match_probabilities": self.match_probabilities,
            "estimated_cost_usd": d.estimated_cost_usd,
            "actual_cost_usd": self.cost_usd,
            "input_cost_usd": self.input_cost_usd,
            "output_cost_usd": self.output_cost_usd,
            "candidate_scores": self.scores,
            "chosen_index": self.extra.get("chosen_index", 0),
            "reranker": self.reranker,
            "rerank_error": self.rerank_error,
            "unconfirmed_cost_usd": sum(a.unconfirmed_cost_usd for a in self.attempts),
            "attempts": [_attempt_record(a) for a in self.attempts],
            "latency_s": self.latency_s,
            **({"spent_usd": self.extra["spent_usd"]} if "spent_usd" in self.extra else {}),
        }
        if "policy" in self.extra:
            out["policy"] = self.extra["policy"]
        if self.stages is not None:
            out["verifier"] = self.extra.get("verifier")
            out["stages"] = [s.as_dict() for s in self.stages]
        return out


@dataclass
class _CallState:
    """What one call has done so far: the decision, the walk along its chain, every option tried."""

    decision: Decision
    table: dict[str, list[float]]
    routing_s: float
    walk: ChainWalk
    #: Whether this call's picks go through the verifier (None: no stages recorded).
    stages: list[Stage] | None = None
    generation_s: float = 0.0
    rerank_s: float = 0.0
    verify_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self.generation_s += attempt.latency_s

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def unconfirmed_usd(self) -> float:
        return sum(a.unconfirmed_cost_usd for a in self.attempts)

    @property
    def exposure_usd(self) -> float:
        """What the spend cap counts: billed plus unconfirmed."""
        return self.cost_usd + self.unconfirmed_usd

    def error(self, message: str) -> BestRouteError:
        """The call's failure, with its attempts and what they cost."""
        return BestRouteError(message, attempts=[_attempt_record(a) for a in self.attempts], cost_usd=self.cost_usd,
                              unconfirmed_cost_usd=self.unconfirmed_usd)


@dataclass
class _Pick:
    """One option's samples and the reranker's pick among them."""

    option: Option
    attempt: Attempt
    candidates: list[AIMessage]
    index: int = 0
    scores: list[float] | None = None
    rerank_s: float = 0.0
    rerank_error: str | None = None


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
    """Routes, samples, reranks, verifies. Thread-safe; one instance serves many concurrent calls.

    ``policy``: a calibrated :class:`~bestroute_lc.artifacts.PolicyChoice`: ``router``
    (Algorithm 1 at the call's threshold: today's behaviour), ``constant`` (always
    ``member`` with ``n``; the router is not consulted) or ``verified`` (``member`` with
    ``n``, then its escalation stages; needs a verifier). None: ``router``.

    ``verifier``: when set, the reranked pick of every option but the reference is
    verified; a rejection escalates along ``escalation`` stages ((member, n) pairs, in
    order), the policy's stages, or by default the next valid option of a more expensive
    member and finally the reference with n = 1, whose answer is final. Calls pinned to a
    member (``member=``) or sent to the cheapest member by the spend cap are not verified.
    """

    def __init__(
        self,
        pool: Pool,
        router: RouterPredictor,
        reranker: Reranker | None,
        spend_cap_usd: float | None = None,
        *,
        verifier: Verifier | None = None,
        policy: PolicyChoice | None = None,
        escalation: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        check_pool_matches(router.config.members, router.config.reference, pool, "the router")
        if reranker is None and router.config.max_n > 1:
            raise ValueError("a reranker is required when the router can choose n > 1 (max_n > 1)")
        stages = [(str(m), int(n)) for m, n in escalation] if escalation is not None else None
        if stages is None and policy is not None and policy.escalation:
            stages = [(str(m), int(n)) for m, n in policy.escalation]
        fixed_options: list[tuple[str, int]] = list(stages or [])
        if policy is not None and policy.kind in ("constant", "verified"):
            if policy.member is None or policy.n is None:
                raise ValueError(f"a {policy.kind!r} policy needs member and n, got {policy!r}")
            fixed_options.append((policy.member, policy.n))
            if policy.kind == "verified" and verifier is None:
                raise ValueError(
                    f"the verified policy needs a verifier ({policy.verifier or 'none named'}): pass verifier=..."
                )
        for member, n in fixed_options:
            pool[member]  # unknown member -> ValueError naming the members
            if n < 1:
                raise ValueError(f"({member!r}, n={n}): n must be >= 1")
            if n > 1 and reranker is None:
                raise ValueError(f"a reranker is required for ({member!r}, n={n})")
        if reranker is not None:
            reranker.check_ready()  # e.g. code execution without its isolation layer: fail closed now
        if verifier is not None:
            verifier.check_ready()
        self.pool = pool
        self.router = router
        self.reranker = reranker
        self.verifier = verifier
        self.policy = policy
        self.escalation: tuple[tuple[str, int], ...] | None = tuple(stages) if stages is not None else None
        self.spend = SpendGuard(spend_cap_usd)

    # -- decision ---------------------------------------------------------------------
    async def adecide(
        self, messages: Sequence[BaseMessage], threshold: float, member: str | None = None
    ) -> tuple[Decision, dict[str, list[float]], float]:
        """Validate input, run the router and the policy. Returns (decision, p table, seconds)."""
        validate_messages(messages, {m.name: m.accepts_content_types for m in self.pool})
        threshold = validate_threshold(threshold)
        conversation = render_conversation(messages)
        input_tokens = approximate_tokens(conversation.text)
        costs = self.pool.costs()
        reference = self.pool.reference
        if member is not None:
            self.pool[member]  # raises ValueError naming the members
            return forced(member, 1, costs, reference, input_tokens, threshold), {}, 0.0
        if self.spend.exhausted:
            return cheapest(costs, input_tokens, threshold), {}, 0.0
        policy = self.policy
        if policy is not None and policy.kind in ("constant", "verified"):
            assert policy.member is not None and policy.n is not None
            stages = (self.escalation or ()) if self.verifier is not None else ()
            decision = fixed(
                policy.member, policy.n, costs, reference, input_tokens, threshold, reason=policy.kind, stages=stages
            )
            return decision, {}, 0.0
        start = time.perf_counter()
        table = await self.router.apredict(conversation)
        table = {name: table[name] for name in self.pool.routed_names}
        decision = choose(table, costs, reference, input_tokens, threshold)
        if self.verifier is not None and self.escalation is not None:
            decision = with_stages(decision, self.escalation, costs, reference, input_tokens)
        return decision, table, time.perf_counter() - start

    # -- reranking ----------------------------------------------------------------------
    async def arerank(
        self, messages: Sequence[BaseMessage], candidates: list[AIMessage], member: str | None = None
    ) -> tuple[int, list[float] | None, str | None]:
        """(index of the best candidate, scores, error). One candidate needs no reranker."""
        if len(candidates) == 1 or self.reranker is None:
            return 0, None, None
        if not self.reranker.trusted_for(member):
            # Samples arrive in no particular order: the first is a random pick, which this
            # reranker did not beat on validation for this member.
            return 0, None, f"skipped: {self.reranker.name} did not beat a random pick for {member!r} on validation"
        prompt = render_conversation(messages).text
        try:
            scores = await self.reranker.ascore(prompt, [render_candidate(c) for c in candidates])
        except IsolationUnavailableError:
            raise  # fail closed: never hand back unverified model-written code as "reranked"
        except Exception as exc:  # noqa: BLE001 - a broken reranker must not lose paid-for samples
            logger.warning("bestroute: reranker failed (%s); returning the first sample", describe_error(exc))
            return 0, None, describe_error(exc)
        return argmax_first(scores), [float(s) for s in scores], None

    # -- verification ---------------------------------------------------------------------
    async def _averify(self, messages: Sequence[BaseMessage], pick: _Pick) -> Verdict:
        """The verifier's verdict on a pick. A verifier that raises rejects (the call
        escalates: safe, if dearer), except a missing isolation layer, which raises."""
        assert self.verifier is not None
        prompt = render_conversation(messages).text
        candidates = [render_candidate(c) for c in pick.candidates]
        try:
            return await self.verifier.averify(
                prompt,
                candidates,
                pick.index,
                pick.scores,
                member=pick.option.member,
                reranker=self.reranker,
            )
        except IsolationUnavailableError:
            raise  # fail closed, as for the reranker
        except Exception as exc:  # noqa: BLE001
            logger.warning("bestroute: verifier failed (%s); treating the pick as rejected", describe_error(exc))
            return Verdict(False, 0.0, f"verifier error: {describe_error(exc)}")

    # -- whole call -----------------------------------------------------------------------
    async def _start(
        self, messages: Sequence[BaseMessage], threshold: float, member: str | None
    ) -> _CallState:
        decision, table, routing_s = await self.adecide(messages, threshold, member)
        input_tokens = approximate_tokens(render_conversation(messages).text)
        unit_costs = {name: c.estimate(1, input_tokens) for name, c in self.pool.costs().items()}
        verified = self.verifier is not None and decision.reason not in ("forced", "budget")
        return _CallState(
            decision=decision,
            table=table,
            routing_s=routing_s,
            walk=ChainWalk(decision, unit_costs, self.pool.reference),
            stages=[] if verified else None,
        )

    def _verifies(self, state: _CallState, option: Option) -> bool:
        return state.stages is not None and option.member != self.pool.reference

    def _raise_all_failed(self, state: _CallState) -> NoReturn:
        self.spend.add(state.exposure_usd)  # failed calls can still be billed
        detail = "; ".join(f"{a.member} (n={a.n}): {a.error or 'no usable sample'}" for a in state.attempts)
        raise state.error(f"every pool option failed: {detail}")

    def _cap_reached(self, state: _CallState) -> bool:
        """Would escalating spend past the cap? (This call's cost so far counts.)"""
        cap = self.spend.cap_usd
        return cap is not None and self.spend.spent_usd + state.exposure_usd >= cap

    def _finish(self, state: _CallState, pick: _Pick, reason: str | None = None) -> RouteResult:
        candidates = pick.candidates
        chosen = candidates[pick.index]
        usage = sum_usage([a.usage for a in state.attempts])
        message = chosen.model_copy(deep=True)
        message.usage_metadata = usage
        self.spend.add(state.exposure_usd)
        latency = {"routing": state.routing_s, "generation": state.generation_s, "rerank": state.rerank_s}
        if state.stages is not None:
            latency["verify"] = state.verify_s
        extra: dict[str, Any] = {"chosen_index": pick.index}
        if self.spend.cap_usd is not None:
            extra["spent_usd"] = self.spend.spent_usd
        if reason is not None:
            extra["reason"] = reason
        if self.policy is not None:
            extra["policy"] = self.policy.kind
        if self.verifier is not None:
            extra["verifier"] = self.verifier.name
        result = RouteResult(
            message=message,
            decision=state.decision,
            match_probabilities=state.table,
            member=pick.option.member,
            n=pick.option.n,
            candidates=candidates,
            scores=pick.scores,
            attempts=state.attempts,
            usage=usage,
            input_cost_usd=sum(a.input_cost_usd for a in state.attempts),
            output_cost_usd=sum(a.output_cost_usd for a in state.attempts),
            latency_s=latency,
            reranker=self.reranker.name if (self.reranker is not None and len(candidates) > 1) else None,
            rerank_error=pick.rerank_error,
            extra=extra,
            stages=state.stages,
        )
        message.response_metadata = {
            **chosen.response_metadata,
            "model_name": pick.option.member,
            "provider_model_name": chosen.response_metadata.get("model_name"),
            "bestroute": result.metadata(),
        }
        return result

    async def _sample(
        self,
        state: _CallState,
        option: Option,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        call_kwargs: dict[str, Any],
    ) -> _Pick | None:
        """Draw ``option.n`` samples and rerank them; None (member marked failed) if none came."""
        samples, attempt = await draw_samples(self.pool[option.member], option.n, messages, stop, call_kwargs)
        state.record(attempt)
        if not samples:
            state.walk.fail(option.member)
            return None
        start = time.perf_counter()
        index, scores, rerank_error = await self.arerank(messages, samples, option.member)
        rerank_s = time.perf_counter() - start
        state.rerank_s += rerank_s
        return _Pick(option, attempt, samples, index, scores, rerank_s, rerank_error)

    def _final_stage(self, state: _CallState, pick: _Pick) -> None:
        """Record the reference's answer (final, not verified) as a stage of a verified call."""
        if state.stages is not None:
            state.stages.append(
                Stage(
                    member=pick.option.member,
                    n=pick.option.n,
                    samples=len(pick.candidates),
                    accepted=True,
                    confidence=None,
                    reason="reference: final, not verified",
                    cost_usd=pick.attempt.cost_usd,
                    latency_s=pick.attempt.latency_s + pick.rerank_s,
                )
            )

    def _outcome_reason(self, state: _CallState) -> str | None:
        return "escalated" if state.walk.rejected else None

    async def _calls(
        self,
        messages: Sequence[BaseMessage],
        threshold: float,
        stop: list[str] | None,
        member: str | None,
        call_kwargs: dict[str, Any],
        stream: bool,
    ) -> AsyncIterator[AIMessageChunk | RouteResult]:
        """The call, walking the chain: chunks (when streaming), then the ``RouteResult``."""
        state = await self._start(messages, threshold, member)
        rejected: _Pick | None = None
        while (option := state.walk.next()) is not None:
            verify = self._verifies(state, option)
            if stream and option.n == 1 and not verify:
                answered = False
                async for item in self._pass_through(state, option, messages, stop, call_kwargs):
                    answered = isinstance(item, RouteResult)
                    yield item
                if answered:
                    return
                continue  # failed before its first chunk
            pick = await self._sample(state, option, messages, stop, call_kwargs)
            if pick is None:
                continue
            if verify:
                start = time.perf_counter()
                verdict = await self._averify(messages, pick)
                verify_s = time.perf_counter() - start
                state.verify_s += verify_s
                stage = Stage(
                    member=option.member,
                    n=option.n,
                    samples=len(pick.candidates),
                    accepted=verdict.accepted,
                    confidence=verdict.confidence,
                    reason=verdict.reason,
                    cost_usd=pick.attempt.cost_usd,
                    latency_s=pick.attempt.latency_s + pick.rerank_s + verify_s,
                    verify_s=verify_s,
                    verifiable=verdict.verifiable,
                )
                assert state.stages is not None
                state.stages.append(stage)
                if not verdict.accepted:
                    state.walk.reject(option.member)
                    rejected = pick
                    if self._cap_reached(state):
                        stage.reason += "; not escalated: spend cap reached"
                        break
                    continue
            else:
                self._final_stage(state, pick)
            result = self._finish(state, pick, self._outcome_reason(state))
            if stream:
                yield self._whole_chunk(result)
            yield result
            return
        if rejected is not None:
            # Nothing after the rejected pick answered (or the cap stopped escalation): the
            # last rejected pick is better than no answer; metadata says it was rejected.
            result = self._finish(state, rejected, "unverified")
            if stream:
                yield self._whole_chunk(result)
            yield result
            return
        self._raise_all_failed(state)

    @staticmethod
    def _whole_chunk(result: RouteResult) -> AIMessageChunk:
        chunk = to_chunk(result.candidates[result.extra["chosen_index"]])
        chunk.response_metadata = {}
        return chunk

    async def _pass_through(
        self,
        state: _CallState,
        option: Option,
        messages: Sequence[BaseMessage],
        stop: list[str] | None,
        call_kwargs: dict[str, Any],
    ) -> AsyncIterator[AIMessageChunk | RouteResult]:
        """Stream one member's tokens as they arrive, then the ``RouteResult``; nothing (and
        the member marked failed) if it fails before its first chunk."""
        pool_member = self.pool[option.member]
        attempt = Attempt(member=option.member, n=1)
        start = time.perf_counter()
        collected: AIMessageChunk | None = None
        usage: UsageMetadata | None = None
        cut: Exception | None = None
        try:
            async for chunk in stream_member(pool_member, messages, stop, call_kwargs):
                if chunk.usage_metadata:
                    usage = add_usage(usage, chunk.usage_metadata)
                collected = chunk if collected is None else collected + chunk
                yield chunk.model_copy(update={"usage_metadata": None, "chunk_position": None, "response_metadata": {}})
        except NoFirstChunk as exc:
            attempt.error = describe_error(exc.__cause__ or exc)
        except Exception as exc:  # noqa: BLE001 - cut after the first chunk: shown tokens cannot be taken back
            cut = exc
            attempt.error = f"stream cut after the first chunk: {describe_error(exc)}"
        attempt.latency_s = time.perf_counter() - start
        attempt.bill(usage, pool_member.prices)
        if cut is not None and usage is None:
            # The provider did the work up to the cut and reported no usage: the prompt and the
            # tokens shown are unconfirmed cost.
            shown = approximate_tokens(str(collected.content)) if collected is not None else 0
            attempt.unconfirmed_cost_usd = unconfirmed_cost(pool_member, messages, 0) + pool_member.prices.output_cost(shown)
        state.record(attempt)
        if cut is not None:
            self.spend.add(state.exposure_usd)
            raise state.error(f"{option.member} failed mid-stream, after tokens were shown: {attempt.error}") from cut
        if collected is None:
            state.walk.fail(option.member)
            return
        attempt.received = 1
        final = AIMessage(
            content=collected.content,
            additional_kwargs=collected.additional_kwargs,
            response_metadata=collected.response_metadata,
            tool_calls=collected.tool_calls,
            invalid_tool_calls=collected.invalid_tool_calls,
            id=collected.id,
        )
        pick = _Pick(option, attempt, [final])
        self._final_stage(state, pick)
        yield self._finish(state, pick, self._outcome_reason(state))

    async def arun(
        self,
        messages: Sequence[BaseMessage],
        *,
        threshold: float,
        stop: list[str] | None = None,
        member: str | None = None,
        call_kwargs: dict[str, Any] | None = None,
    ) -> RouteResult:
        """Route, sample with fallbacks, rerank, verify and escalate."""
        result: RouteResult | None = None
        async for item in self._calls(messages, threshold, stop, member, call_kwargs or {}, stream=False):
            if isinstance(item, RouteResult):
                result = item
        assert result is not None, "a call ends with a result or raises"
        return result

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
        drawn and reranked first and the chosen answer is yielded as one chunk. With a
        verifier, an answer that must be verified is buffered too (tokens shown cannot be
        taken back if the verifier rejects them) and yielded as one chunk after the
        verdict; only the reference, whose answer is final, streams token by token. A
        member that fails before its first chunk falls back like ``arun``; one that fails
        mid-stream raises, since tokens already shown cannot be taken back.
        """
        async for item in self._calls(messages, threshold, stop, member, call_kwargs or {}, stream=True):
            yield item
