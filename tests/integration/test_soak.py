"""Soak: 300 concurrent calls through the real clients while the loopback servers fail ~10 % of
requests with 5xx, 5 % with 429 + Retry-After, 5 % hang past the timeout and 2 % break the
stream's JSON. Every call answers or raises BestRouteError (nothing else escapes), nothing is
left running, all in well under a minute."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from langchain_core.messages import AIMessage

from bestroute_lc import BestRouteChatModel, BestRouteError
from tests.helpers import LengthReranker, fixed_router
from tests.loopback import Fault, LoopbackLLMServer
from tests.loopback_pools import loopback_pool

pytestmark = pytest.mark.network_loopback
CALLS = 300
TABLE = {"gpt-mini": [0.5, 0.8], "mistral-small": [0.6, 0.7]}


def plan(server: LoopbackLLMServer, model: str, blocks: int = 6) -> None:
    """Per block: 5 x 5xx, 3 x 429 with Retry-After, 3 hangs past the member timeout, 1 broken
    JSON body (rules are consumed in order by the model's next requests; then it is healthy)."""
    for _ in range(blocks):
        server.add_fault(model, Fault.HTTP_500, 5)
        server.add_fault(model, Fault.HTTP_429, 3, retry_after_s=0.2)
        server.add_fault(model, Fault.TIMEOUT, 3, hang_s=6.0)
        server.add_fault(model, Fault.MALFORMED_JSON, 1)


def test_three_hundred_concurrent_calls_under_faults() -> None:
    threads_before = threading.active_count()
    with LoopbackLLMServer("openai", keep_alive=False) as openai, LoopbackLLMServer("mistral", keep_alive=False) as mistral:
        for server, model in ((openai, "loop-gpt-mini"), (openai, "loop-gpt-large"), (mistral, "loop-mistral-small")):
            plan(server, model)
        pool = loopback_pool(openai.base_url, mistral.base_url, timeout_s=3.0, max_retries=1)
        for member in pool:
            member.cooldown_s = 1.0
        llm = BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "gpt-large"), reranker=LengthReranker(), threshold=0.7)

        async def run() -> list[object]:
            return await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(CALLS)), return_exceptions=True)

        start = time.perf_counter()
        results = asyncio.run(run())
        elapsed = time.perf_counter() - start
    answered = [r for r in results if isinstance(r, AIMessage)]
    failed = [r for r in results if isinstance(r, BestRouteError)]
    other = [r for r in results if not isinstance(r, AIMessage | BestRouteError)]
    assert not other, other[:3]
    assert len(answered) + len(failed) == CALLS and len(answered) >= CALLS * 0.8
    assert elapsed < 60
    for message in answered:
        meta = message.response_metadata["bestroute"]
        assert meta["actual_cost_usd"] > 0 and meta["actual_cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in meta["attempts"]))
    for error in failed:
        assert error.attempts
    # Billing truth: what the calls counted as billed is at most what the servers billed, and
    # billed plus the unconfirmed estimates covers it.
    prices = {f"loop-{m.name}": m.prices for m in pool}
    ledger = sum(prices[model].input_cost(p) + prices[model].output_cost(c)
                 for server in (openai, mistral) for model, p, c in server.billing)
    confirmed = (sum(m.response_metadata["bestroute"]["actual_cost_usd"] for m in answered)
                 + sum(e.cost_usd for e in failed))
    unconfirmed = (sum(m.response_metadata["bestroute"]["unconfirmed_cost_usd"] for m in answered)
                   + sum(e.unconfirmed_cost_usd for e in failed))
    assert confirmed <= ledger * (1 + 1e-9) <= confirmed + unconfirmed
    time.sleep(0.5)
    assert threading.active_count() <= threads_before + 8  # the shared bridge loop and pool threads at most
