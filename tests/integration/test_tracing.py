"""Cost, routed member and decision in every trace, streamed or not: the real langsmith client
posting to a loopback capture server, LangChain's own usage counting kept intact, the decision
event through create_agent's streamed runs, and get_bestroute_cost_callback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.messages.ai import add_usage
from langchain_core.tools import tool
from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client

from bestroute_lc import BestRouteChatModel
from bestroute_lc.tracing import get_bestroute_cost_callback
from tests.helpers import LengthReranker, fixed_router
from tests.loopback.langsmith_capture import LangSmithCapture as Capture
from tests.loopback_pools import loopback_pool

pytestmark = pytest.mark.network_loopback
TABLE = {"gpt-mini": [0.5, 0.8], "mistral-small": [0.1, 0.2]}


@pytest.fixture()
def capture():
    with Capture() as server:
        yield server


def tracer(server: Capture) -> LangChainTracer:
    client = Client(api_url=server.url, api_key="test", auto_batch_tracing=False)
    return LangChainTracer(client=client, project_name="bestroute-test")


def make_llm(threshold: float = 0.7) -> BestRouteChatModel:
    return BestRouteChatModel(pool=loopback_pool(), router=fixed_router(TABLE, "gpt-large"), reranker=LengthReranker(),
                              threshold=threshold)


def check_traced(run: dict[str, Any], member: str) -> None:
    metadata = run["extra"]["metadata"]
    usage = metadata["usage_metadata"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_cost"] > 0 and usage["total_cost"] == pytest.approx(usage["input_cost"] + usage["output_cost"])
    assert metadata["bestroute_member"] == member and metadata["ls_model_name"] == member
    decision = run["outputs"]["generations"][0][0]["message"]["kwargs"]["response_metadata"]["bestroute"]
    assert decision["actual_cost_usd"] == pytest.approx(usage["total_cost"])


def test_invoke_and_stream_runs_carry_cost_member_and_decision(capture: Capture) -> None:
    llm = make_llm()
    trace = tracer(capture)
    message = llm.invoke("Hello there", config={"callbacks": [trace]})
    assert isinstance(message.usage_metadata["input_tokens"], int) and "total_cost" not in message.usage_metadata
    chunks = list(make_llm(threshold=0.9).stream("Tell me a story", config={"callbacks": [trace]}))
    assert all("total_cost" not in (c.usage_metadata or {}) for c in chunks)
    trace.wait_for_futures()
    runs = capture.llm_runs()
    assert len(runs) == 2
    check_traced(runs[0], "gpt-mini")
    check_traced(runs[1], "gpt-large")


def test_langchain_usage_counting_keeps_working() -> None:
    llm = make_llm()
    with get_usage_metadata_callback() as usage_cb, get_bestroute_cost_callback() as cost_cb:
        first = llm.invoke("one")
        second = llm.invoke("two")
        streamed = list(llm.stream("three"))
    total = add_usage(first.usage_metadata, second.usage_metadata)
    assert total["input_tokens"] == first.usage_metadata["input_tokens"] + second.usage_metadata["input_tokens"]
    counted = usage_cb.usage_metadata["gpt-mini"]
    assert counted["input_tokens"] >= total["input_tokens"]  # the streamed call counted too
    assert cost_cb.calls == 3 and cost_cb.by_member["gpt-mini"].calls == 3
    expected = sum(m.response_metadata["bestroute"]["actual_cost_usd"] for m in (first, second))
    assert cost_cb.total_cost_usd > expected > 0
    assert "gpt-mini" in repr(cost_cb)
    assert streamed[-1].usage_metadata["output_tokens"] > 0


class Decisions(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == "bestroute_decision":
            self.events.append(data)


def test_decision_event_and_cost_through_an_agents_streamed_runs(capture: Capture) -> None:
    from langchain.agents import create_agent

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    agent = create_agent(make_llm(), tools=[add])
    decisions, trace = Decisions(), tracer(capture)
    parts = list(agent.stream({"messages": [("user", "What is 2 + 3? Use the tool.")]}, stream_mode="messages",
                              config={"callbacks": [decisions, trace]}))
    assert parts
    model_calls = len(decisions.events)
    assert model_calls >= 2 and all(e["member"] == "gpt-mini" for e in decisions.events)  # tool call, then the answer
    trace.wait_for_futures()
    runs = capture.llm_runs()
    assert len(runs) == model_calls
    for run in runs:
        check_traced(run, "gpt-mini")

    async def events() -> list[dict[str, Any]]:
        return [e async for e in agent.astream_events({"messages": [("user", "What is 2 + 3?")]}, version="v2")]

    custom = [e for e in asyncio.run(events()) if e["event"] == "on_custom_event" and e["name"] == "bestroute_decision"]
    assert len(custom) >= 2 and custom[0]["data"]["member"] == "gpt-mini"


def test_agents_read_the_pools_profile() -> None:
    """create_agent picks the provider strategy for response_format from the profile, and the
    summarization middleware's fraction trigger finds a context window."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import SummarizationMiddleware
    from pydantic import BaseModel

    from bestroute_lc import Pool, PoolMember, Prices
    from tests.loopback_pools import openai_client

    profile = {"max_input_tokens": 8000, "max_output_tokens": 1000, "tool_calling": True, "structured_output": True}
    pool = Pool(members=[
        PoolMember.from_model(openai_client("loop-gpt-large", profile=profile), name="gpt-large", prices=Prices(input_per_mtok=5, output_per_mtok=15)),
        PoolMember.from_model(openai_client("loop-gpt-mini", profile={**profile, "max_input_tokens": 4000}), name="gpt-mini",
                              prices=Prices(input_per_mtok=0.15, output_per_mtok=0.6)),
    ], reference="gpt-large")
    llm = BestRouteChatModel(pool=pool, router=fixed_router({"gpt-mini": [0.9, 0.95]}, "gpt-large"), reranker=LengthReranker(),
                             threshold=0.5)
    assert llm.profile["max_input_tokens"] == 4000 and llm.profile["structured_output"] is True

    class Answer(BaseModel):
        answer: str
        confidence: float

    agent = create_agent(llm, tools=[], response_format=Answer)
    result = agent.invoke({"messages": [("user", "What is 2 + 2?")]})
    assert isinstance(result["structured_response"], Answer)
    middleware = SummarizationMiddleware(model=llm, trigger=("fraction", 0.8))
    assert create_agent(llm, tools=[], middleware=[middleware]).invoke({"messages": [("user", "hi")]})["messages"]
