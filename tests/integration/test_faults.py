"""Failure handling with the real clients: the loopback servers inject timeouts, HTTP
500 and 429, malformed JSON and empty content; BestRoute retries, falls back to the
next cheapest valid option, then the reference, and otherwise raises one clear error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bestroute_lc import BestRouteChatModel, BestRouteError
from tests.helpers import fixed_router, tiny_reward_model
from tests.loopback import Fault, LoopbackLLMServer
from tests.loopback_pools import loopback_pool

pytestmark = pytest.mark.network_loopback

# Routes to mistral-small n=2 first, then mistral-small n=3, gpt-mini n=3, gpt-large.
TABLE = {"gpt-mini": [0.2, 0.3, 0.9], "mistral-small": [0.1, 0.7, 0.8]}

_REWARD: Any = None


def reward() -> Any:
    global _REWARD
    if _REWARD is None:
        _REWARD = tiny_reward_model()
    return _REWARD


def make_llm(openai: LoopbackLLMServer, mistral: LoopbackLLMServer, **member_kwargs: Any) -> BestRouteChatModel:
    member_kwargs.setdefault("timeout_s", 5)
    member_kwargs.setdefault("max_retries", 0)
    pool = loopback_pool(openai.base_url, mistral.base_url, **member_kwargs)
    return BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "gpt-large"), reranker=reward(), threshold=0.6)


def decision(message: Any) -> dict[str, Any]:
    return message.response_metadata["bestroute"]


@pytest.mark.parametrize("fault", [Fault.HTTP_500, Fault.HTTP_429, Fault.MALFORMED_JSON, Fault.EMPTY_CONTENT])
def test_failing_member_falls_back_to_next_cheapest(
    fault: Fault, loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    loopback_mistral_server.set_fault("loop-mistral-small", fault)
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    message = llm.invoke("What is the capital of France?")
    d = decision(message)
    assert (d["routed_member"], d["routed_n"]) == ("mistral-small", 2)
    assert (d["member"], d["n"]) == ("gpt-mini", 3)  # the next valid option of another member
    assert d["reason"] == "fallback"
    assert d["attempts"][0]["member"] == "mistral-small" and d["attempts"][0]["error"]
    assert message.content


def test_timeout_then_fallback(loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer) -> None:
    loopback_mistral_server.set_fault("loop-mistral-small", Fault.TIMEOUT, hang_s=10)
    llm = make_llm(loopback_openai_server, loopback_mistral_server, timeout_s=0.5)
    message = llm.invoke("hello")
    d = decision(message)
    assert d["member"] == "gpt-mini"
    assert "timed out" in d["attempts"][0]["error"]


def test_retry_recovers_a_transient_error(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    loopback_mistral_server.set_fault("loop-mistral-small", Fault.HTTP_500, times=1)
    llm = make_llm(loopback_openai_server, loopback_mistral_server, max_retries=1)
    d = decision(llm.invoke("hello"))
    assert (d["member"], d["n"], d["samples_received"]) == ("mistral-small", 2, 2)
    assert loopback_mistral_server.request_count("loop-mistral-small") == 3  # 2 samples + 1 retry


def test_some_samples_fail_survivors_are_reranked(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    loopback_mistral_server.set_fault("loop-mistral-small", Fault.HTTP_500, times=1)
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    d = decision(llm.invoke("hello"))
    assert (d["member"], d["n"], d["samples_received"]) == ("mistral-small", 2, 1)
    assert "1 of 2" in d["attempts"][0]["error"]


def test_reference_is_last_resort_and_total_failure_is_one_clear_error(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    loopback_mistral_server.set_fault("*", Fault.HTTP_500)
    loopback_openai_server.set_fault("loop-gpt-mini", Fault.HTTP_429)
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    d = decision(llm.invoke("hello"))
    assert (d["member"], d["n"]) == ("gpt-large", 1)
    assert [a["member"] for a in d["attempts"]] == ["mistral-small", "gpt-mini", "gpt-large"]

    loopback_openai_server.set_fault("*", Fault.HTTP_500)
    with pytest.raises(BestRouteError) as info:
        llm.invoke("hello")
    text = str(info.value)
    for name in ("mistral-small (n=2)", "gpt-mini (n=3)", "gpt-large (n=1)"):
        assert name in text
    assert "InternalServerError" in text or "500" in text


def test_native_n_is_one_request_and_usage_counted_once(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    message = llm.invoke("Tell me a fact about owls", model=None, threshold=0.85)  # only gpt-mini n=3 passes
    d = decision(message)
    assert (d["member"], d["n"], d["samples_received"]) == ("gpt-mini", 3, 3)
    bodies = [r for r in loopback_openai_server.requests.snapshot() if r["model"] == "loop-gpt-mini"]
    assert len(bodies) == 1 and bodies[0]["body"]["n"] == 3
    single = make_llm(loopback_openai_server, loopback_mistral_server).invoke("Tell me a fact about owls", model="gpt-mini")
    # One request with n=3 bills the prompt once: same input tokens as a single sample.
    assert message.usage_metadata["input_tokens"] == single.usage_metadata["input_tokens"]
    assert message.usage_metadata["output_tokens"] > single.usage_metadata["output_tokens"]


def test_parallel_n_bills_the_prompt_n_times(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    best_of_two = llm.invoke("Tell me a fact about owls")
    single = llm.invoke("Tell me a fact about owls", model="mistral-small")
    assert decision(best_of_two)["n"] == 2
    assert best_of_two.usage_metadata["input_tokens"] == 2 * single.usage_metadata["input_tokens"]
    assert loopback_mistral_server.request_count("loop-mistral-small") == 3


async def test_stream_falls_back_before_first_token(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    loopback_openai_server.set_fault("loop-gpt-mini", Fault.HTTP_500)
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    chunks = [c async for c in llm.astream("hello", threshold=0.95)]  # t=0.95: nothing passes, the reference streams
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.response_metadata["bestroute"]["member"] == "gpt-large"
    pinned = [c async for c in llm.astream("hello", model="gpt-mini")]
    merged = pinned[0]
    for c in pinned[1:]:
        merged += c
    d = merged.response_metadata["bestroute"]
    assert d["member"] == "gpt-large" and d["attempts"][0]["member"] == "gpt-mini"
    assert sum(1 for c in pinned if c.usage_metadata) == 1


async def test_32_concurrent_calls_share_forward_passes(
    loopback_openai_server: LoopbackLLMServer, loopback_mistral_server: LoopbackLLMServer
) -> None:
    llm = make_llm(loopback_openai_server, loopback_mistral_server)
    llm.router.batcher.max_wait_s = 0.02
    router_before = llm.router.batcher.stats.forward_passes
    reward_before = llm.reranker.batcher.stats.forward_passes
    results = await asyncio.gather(*(llm.ainvoke(f"question number {i}") for i in range(32)))
    assert all(decision(r)["n"] == 2 for r in results)
    assert llm.router.batcher.stats.forward_passes - router_before <= 8
    assert llm.reranker.batcher.stats.forward_passes - reward_before < 32
