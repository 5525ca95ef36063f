"""Billing truth: requests that end without a usage report (timeouts, lost connections) carry an
estimated, unconfirmed cost, counted by the spend cap and reported apart from the billed cost;
HTTP errors carry none; fewer samples than asked are flagged."""

from __future__ import annotations

import pytest

from bestroute_lc import BestRouteChatModel, BestRouteError
from tests.helpers import LengthReranker, ScriptedChatModel, fixed_router, scripted_pool

TABLE = {"small": [0.9, 0.95, 0.97], "mid": [0.1, 0.1, 0.1]}


def make_llm(threshold: float = 0.5, **kwargs) -> BestRouteChatModel:
    pool = scripted_pool()
    for member in pool:
        member.timeout_s, member.max_retries = 0.2, 0
    return BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "big"), reranker=LengthReranker(), threshold=threshold, **kwargs)


def test_a_timed_out_request_carries_an_unconfirmed_cost() -> None:
    llm = make_llm()
    llm.pool["small"].chat_model = ScriptedChatModel(name_="small", calls=[], latency_s=1.0)  # hangs past the timeout
    meta = llm.invoke("hi").response_metadata["bestroute"]
    assert meta["member"] == "big"  # fell back
    failed = meta["attempts"][0]
    assert failed["member"] == "small" and failed["cost_usd"] == 0.0 and failed["unconfirmed_cost_usd"] > 0
    assert meta["unconfirmed_cost_usd"] == pytest.approx(failed["unconfirmed_cost_usd"])
    assert meta["actual_cost_usd"] == pytest.approx(meta["attempts"][1]["cost_usd"])  # billed stays billed


def test_an_http_style_error_carries_none() -> None:
    class Unauthorized(Exception):
        status_code = 401

    class Failing(ScriptedChatModel):
        def _reply(self, messages, kwargs):
            raise Unauthorized("bad key")

    llm = make_llm()
    llm.pool["small"].chat_model = Failing(name_="small", calls=[])
    meta = llm.invoke("hi").response_metadata["bestroute"]
    assert meta["attempts"][0]["unconfirmed_cost_usd"] == 0.0 and meta["unconfirmed_cost_usd"] == 0.0


def test_the_spend_cap_counts_unconfirmed_cost() -> None:
    llm = make_llm(spend_cap_usd=1e-9)
    for member in llm.pool:
        member.chat_model = ScriptedChatModel(name_=member.name, calls=[], latency_s=1.0)
    with pytest.raises(BestRouteError):
        llm.invoke("hi")
    assert llm._engine.spend.spent_usd > 1e-9  # nothing was billed, but the estimate counts
    assert llm._engine.spend.exhausted


def test_fewer_samples_than_asked_are_flagged() -> None:
    llm = make_llm(threshold=0.96)  # small n = 3, three requests (parallel billing)
    llm.pool["small"].chat_model = ScriptedChatModel(name_="small", calls=[], fail_first=1)
    meta = llm.invoke("hi").response_metadata["bestroute"]
    attempt = meta["attempts"][0]
    assert (attempt["n"], attempt["received"], attempt["short"]) == (3, 2, True)
    assert meta["member"] == "small" and meta["samples_received"] == 2


def test_a_stream_cut_after_the_first_chunk_ends_in_best_route_error_with_attempts_and_cost() -> None:
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    class CutStream(ScriptedChatModel):
        async def _astream(self, messages, stop=None, run_manager=None, **kwargs):
            yield ChatGenerationChunk(message=AIMessageChunk(content="The answer "))
            yield ChatGenerationChunk(message=AIMessageChunk(content="is "))
            raise ConnectionError("connection reset by peer, api_key=sk-proj-0123456789abcdefghij")

    llm = make_llm(threshold=0.99)  # nothing passes: the reference, n = 1, streams through
    llm.pool["big"].chat_model = CutStream(name_="big", calls=[])
    shown = []
    with pytest.raises(BestRouteError, match="mid-stream") as info:
        for chunk in llm.stream("hi"):
            shown.append(chunk.content)
    assert "".join(shown) == "The answer is "
    error = info.value
    assert error.attempts and error.attempts[-1]["member"] == "big" and "stream cut" in error.attempts[-1]["error"]
    assert error.unconfirmed_cost_usd > 0 and error.cost_usd == 0.0
    assert "sk-proj-0123456789abcdefghij" not in str(error) and "sk-proj-0123456789abcdefghij" not in str(error.attempts)
