"""The retry policy with the real clients against a fault-injecting loopback server: only
retryable failures are retried, Retry-After is honoured, retries never multiply, and a member
that keeps failing cools down (skipped without requests)."""

from __future__ import annotations

import time

import pytest
from langchain_openai import ChatOpenAI

from bestroute_lc import BestRouteChatModel, PoolMember, Prices
from bestroute_lc.pool import Pool
from tests.helpers import LengthReranker, fixed_router
from tests.loopback import Fault, LoopbackLLMServer

pytestmark = pytest.mark.network_loopback


def client(server: LoopbackLLMServer, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key="test", max_retries=0, timeout=10)


def make_llm(server: LoopbackLLMServer, **member_kwargs) -> BestRouteChatModel:
    members = [
        PoolMember.from_model(client(server, "ref"), name="ref", prices=Prices(input_per_mtok=5, output_per_mtok=15),
                              timeout_s=5, max_retries=1),
        PoolMember.from_model(client(server, "mini"), name="mini", prices=Prices(input_per_mtok=0.1, output_per_mtok=0.2),
                              **{"timeout_s": 5, "max_retries": 2, **member_kwargs}),
    ]
    return BestRouteChatModel(pool=Pool(members=members, reference="ref"), router=fixed_router({"mini": [0.9]}, "ref"),
                              reranker=LengthReranker(), threshold=0.5)


@pytest.fixture()
def server():
    with LoopbackLLMServer("openai", models=["ref", "mini"]) as s:
        yield s


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(server: LoopbackLLMServer, status: int) -> None:
    server.set_fault("mini", Fault.HTTP_500, status=status)
    message = make_llm(server).invoke("hi")
    assert message.response_metadata["bestroute"]["member"] == "ref"  # fell back at once
    assert server.request_count("mini") == 1


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retryable_errors_are_retried(server: LoopbackLLMServer, status: int) -> None:
    server.set_fault("mini", Fault.HTTP_500, 1, status=status, retry_after_s=0.0)
    message = make_llm(server).invoke("hi")
    assert message.response_metadata["bestroute"]["member"] == "mini"
    assert server.request_count("mini") == 2


def test_retry_after_is_honoured(server: LoopbackLLMServer) -> None:
    server.set_fault("mini", Fault.HTTP_429, 1, retry_after_s=1.5)
    start = time.perf_counter()
    message = make_llm(server).invoke("hi")
    assert message.response_metadata["bestroute"]["member"] == "mini"
    assert time.perf_counter() - start >= 1.4 and server.request_count("mini") == 2


def test_retries_never_multiply() -> None:
    retrying = ChatOpenAI(model="mini", base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=2)
    member = PoolMember.from_model(retrying, name="mini", prices=Prices(input_per_mtok=1, output_per_mtok=1))
    assert member.max_retries == 0  # the client owns the retries
    with pytest.raises(ValueError, match="would multiply"):
        PoolMember.from_model(retrying, name="mini", prices=Prices(input_per_mtok=1, output_per_mtok=1), max_retries=1)


@pytest.mark.parametrize("stream", [False, True])
def test_the_clients_own_retries_each_get_the_member_timeout(server: LoopbackLLMServer, stream: bool) -> None:
    """Two 429s with Retry-After 1 s, waited out by the SDK (max_retries=2): 2 s of waiting in
    one request of a member whose timeout is 1.5 s is not cut short as "timed out"."""
    retrying = ChatOpenAI(model="mini", base_url=server.base_url, api_key="test", max_retries=2, timeout=10)
    mini = PoolMember.from_model(retrying, name="mini", prices=Prices(input_per_mtok=0.1, output_per_mtok=0.2), timeout_s=1.5)
    assert (mini.max_retries, mini.client_retries, mini.request_deadline_s) == (0, 2, 4.5)
    ref = PoolMember.from_model(client(server, "ref"), name="ref", prices=Prices(input_per_mtok=5, output_per_mtok=15))
    llm = BestRouteChatModel(pool=Pool(members=[ref, mini], reference="ref"), router=fixed_router({"mini": [0.9]}, "ref"),
                             reranker=LengthReranker(), threshold=0.5)
    server.set_fault("mini", Fault.HTTP_429, 2, retry_after_s=1.0)
    if stream:
        chunks = list(llm.stream("hi"))
        decision = next(c.response_metadata["bestroute"] for c in chunks if "bestroute" in c.response_metadata)
    else:
        decision = llm.invoke("hi").response_metadata["bestroute"]
    assert decision["member"] == "mini" and decision["attempts"][0]["error"] is None
    assert server.request_count("mini") == 3


def test_a_failing_member_cools_down(server: LoopbackLLMServer) -> None:
    server.set_fault("mini", Fault.HTTP_500)
    llm = make_llm(server, max_retries=0, cooldown_after=3, cooldown_s=60)
    for _ in range(3):
        assert llm.invoke("hi").response_metadata["bestroute"]["member"] == "ref"
    assert server.request_count("mini") == 3
    message = llm.invoke("hi")  # cooling down: no request, straight to the fallback
    attempts = message.response_metadata["bestroute"]["attempts"]
    assert server.request_count("mini") == 3
    assert attempts[0]["member"] == "mini" and "cooling down" in attempts[0]["error"]
    assert message.response_metadata["bestroute"]["member"] == "ref"
