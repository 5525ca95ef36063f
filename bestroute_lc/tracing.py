"""Cost and the routing decision in LangSmith traces, and a cost-totalling callback.

**Why not cost in ``usage_metadata``.** LangSmith reads a run's cost from the ``input_cost``,
``output_cost`` and ``total_cost`` keys of its usage, but LangChain adds usage with integer
arithmetic (``add_usage``, ``get_usage_metadata_callback``): float cost there breaks both.
So the message a caller gets keeps integer usage, and cost goes into the trace only:

:func:`trace_cost_around_tracers` puts a pair of inline handlers around each
``LangChainTracer`` of a run's callback handlers. On ``on_llm_end`` the first adds the call's
USD cost (from the ``bestroute`` decision in the message's ``response_metadata``) to the
message's usage just before the tracer serialises it, and records the routed member, n and
cost in the traced run's metadata (``ls_model_name`` too, so runs can be filtered by the
member that answered); the second restores the integer usage right after, before any other
handler (or the caller) sees the message. Inline handlers run in list order on the sync and
async paths alike, so nothing else runs between the three.

:func:`get_bestroute_cost_callback` (like ``get_openai_callback``) totals USD, tokens and
calls per member for every BEST-Route call inside the ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook
from langchain_core.tracers.langchain import LangChainTracer

COST_KEYS = ("input_cost", "output_cost", "total_cost")


def _decisions(response: LLMResult) -> Iterator[tuple[ChatGeneration, dict[str, Any]]]:
    for batch in response.generations:
        for generation in batch:
            if isinstance(generation, ChatGeneration):
                decision = generation.message.response_metadata.get("bestroute")
                if isinstance(decision, dict):
                    yield generation, decision


def _cost_fields(decision: dict[str, Any]) -> dict[str, float]:
    total = float(decision.get("actual_cost_usd") or 0.0)
    out = {"total_cost": total}
    if decision.get("input_cost_usd") is not None and decision.get("output_cost_usd") is not None:
        out.update(input_cost=float(decision["input_cost_usd"]), output_cost=float(decision["output_cost_usd"]))
    return out


class _TraceCost(BaseCallbackHandler):
    """One side of the pair around a tracer (see the module docstring)."""

    run_inline = True

    def __init__(self, tracer: LangChainTracer, phase: str) -> None:
        self.tracer, self.phase = tracer, phase
        self._saved: dict[int, Any] = {}

    def on_llm_end(self, response: LLMResult, *, run_id: Any, **kwargs: Any) -> None:
        for generation, decision in _decisions(response):
            message = generation.message
            key = id(message)
            if self.phase == "add":
                usage = getattr(message, "usage_metadata", None)
                if usage is None:
                    continue
                self._saved[key] = usage
                message.usage_metadata = {**usage, **_cost_fields(decision)}  # type: ignore[attr-defined,typeddict-item]
                run = self.tracer.run_map.get(str(run_id))
                if run is not None:
                    metadata = run.extra.setdefault("metadata", {})
                    metadata.update(
                        ls_model_name=decision.get("member"), bestroute_member=decision.get("member"),
                        bestroute_n=decision.get("n"), bestroute_reason=decision.get("reason"),
                        bestroute_cost_usd=decision.get("actual_cost_usd"),
                    )
            elif key in self.partner._saved:
                message.usage_metadata = self.partner._saved.pop(key)  # type: ignore[attr-defined]

    partner: _TraceCost


def trace_cost_around_tracers(handlers: list[BaseCallbackHandler]) -> None:
    """Put the cost pair around each ``LangChainTracer`` in ``handlers`` (in place, once)."""
    index = 0
    while index < len(handlers):
        handler = handlers[index]
        already = index > 0 and isinstance(handlers[index - 1], _TraceCost) and handlers[index - 1].tracer is handler
        if isinstance(handler, LangChainTracer) and not already:
            add, restore = _TraceCost(handler, "add"), _TraceCost(handler, "restore")
            restore.partner = add
            add.partner = restore
            handlers[index:index + 1] = [add, handler, restore]
            index += 3
        else:
            index += 1


# -- get_bestroute_cost_callback -------------------------------------------------------------
@dataclass
class MemberTotals:
    calls: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class BestRouteCostCallbackHandler(BaseCallbackHandler):
    """Totals of the BEST-Route calls seen: USD, tokens and calls, per member (the member that
    answered; fallbacks and escalations are in its call's cost) and overall (their sums)."""

    by_member: dict[str, MemberTotals] = field(default_factory=dict)
    _lock: Lock = field(default_factory=Lock, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    @property
    def total_cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.by_member.values())

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.by_member.values())

    @property
    def input_tokens(self) -> int:
        return sum(t.input_tokens for t in self.by_member.values())

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.by_member.values())

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generation, decision in _decisions(response):
            usage = getattr(generation.message, "usage_metadata", None) or {}
            with self._lock:
                totals = self.by_member.setdefault(str(decision.get("member")), MemberTotals())
                totals.calls += 1
                totals.input_tokens += int(usage.get("input_tokens", 0))
                totals.output_tokens += int(usage.get("output_tokens", 0))
                totals.cost_usd += float(decision.get("actual_cost_usd") or 0.0)

    def __repr__(self) -> str:
        return (f"BEST-Route calls: {self.calls}, cost: ${self.total_cost_usd:.6f}, tokens: {self.input_tokens} in / "
                f"{self.output_tokens} out, by member: {self.by_member}")


_cost_callback_var: ContextVar[BestRouteCostCallbackHandler | None] = ContextVar("bestroute_cost_callback", default=None)
register_configure_hook(_cost_callback_var, inheritable=True)


@contextmanager
def get_bestroute_cost_callback() -> Iterator[BestRouteCostCallbackHandler]:
    """Total the USD cost (and tokens, calls, per member) of every BEST-Route call in the block::

        with get_bestroute_cost_callback() as cb:
            llm.invoke("...")
            agent.invoke({...})
        cb.total_cost_usd, cb.by_member
    """
    handler = BestRouteCostCallbackHandler()
    token = _cost_callback_var.set(handler)
    try:
        yield handler
    finally:
        _cost_callback_var.reset(token)
