"""BestRouteChatModel end to end on local scripted pool members (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.runnables import ConfigurableField
from pydantic import BaseModel

from bestroute_lc import DECISION_EVENT, BestRouteChatModel, BestRouteError
from tests.helpers import LengthReranker, fixed_router, scripted_pool, tiny_reward_model

# p tables: "small" reaches 0.9 only at n=3, "mid" is 0.7 at n=1.
TABLE = {"small": [0.2, 0.5, 0.9], "mid": [0.7, 0.8, 0.88]}
# "small" never reaches 0.6, so at t=0.6 the cheapest valid option is mid n=1.
MID_FIRST = {"small": [0.1, 0.2, 0.3], "mid": [0.7, 0.8, 0.85]}


def make_llm(threshold: float = 0.6, table: dict | None = None, **member_knobs: dict[str, Any]) -> BestRouteChatModel:
    pool = scripted_pool()
    for name, knobs in member_knobs.items():
        for key, value in knobs.items():
            setattr(pool[name].chat_model, key, value)
    return BestRouteChatModel(
        pool=pool, router=fixed_router(table or TABLE, "big"), reranker=LengthReranker(), threshold=threshold
    )


def meta(message: AIMessage) -> dict[str, Any]:
    return message.response_metadata["bestroute"]


def test_routes_to_cheapest_option_that_passes_threshold() -> None:
    llm = make_llm(threshold=0.85)
    message = llm.invoke("What is 2 + 2?")
    # small n=3 costs 3*100*0.2 + prompt vs mid n=3 ~ 3*100*2: small wins
    assert meta(message)["member"] == "small" and meta(message)["n"] == 3
    assert meta(message)["reason"] == "router"
    assert len(meta(message)["candidate_scores"]) == 3
    assert len(llm.pool["small"].chat_model.calls) == 3  # parallel billing: three requests
    assert message.response_metadata["model_name"] == "small"
    # usage summed over the three billed requests
    assert message.usage_metadata["output_tokens"] == 9
    assert meta(message)["actual_cost_usd"] == pytest.approx(
        sum(a["cost_usd"] for a in meta(message)["attempts"])
    )
    assert meta(message)["actual_cost_usd"] > 0


def test_reference_when_nothing_passes_and_per_call_threshold() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST)
    assert meta(llm.invoke("hi"))["member"] == "mid"
    high = llm.invoke("hi", threshold=0.95)
    assert meta(high)["member"] == "big" and meta(high)["n"] == 1 and meta(high)["reason"] == "reference"
    assert meta(llm.bind(threshold=0.95).invoke("hi"))["member"] == "big"
    configurable = llm.configurable_fields(threshold=ConfigurableField(id="threshold"))
    assert meta(configurable.invoke("hi", config={"configurable": {"threshold": 0.95}}))["member"] == "big"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_invalid_threshold_is_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        make_llm(threshold=bad)
    with pytest.raises(ValueError, match="threshold"):
        make_llm().invoke("hi", threshold=bad)


def test_bad_input_errors() -> None:
    llm = make_llm()
    with pytest.raises(ValueError, match="at least one message"):
        llm.invoke([])
    with pytest.raises(ValueError, match="unknown pool member"):
        llm.invoke("hi", model="nope")
    image = HumanMessage(content=[{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:x"}}])
    with pytest.raises(ValueError, match="image_url"):
        llm.invoke([image])


def test_model_override_pins_member() -> None:
    llm = make_llm()
    message = llm.invoke("hi", model="small")
    assert meta(message)["member"] == "small" and meta(message)["reason"] == "forced"
    assert message.response_metadata["model_name"] == "small"


def test_fallback_to_next_cheapest_then_reference() -> None:
    # valid options by cost: small n=3 fails (member down) -> mid n=1
    llm_small = make_llm(threshold=0.85, small={"fail": True})
    message = llm_small.invoke("hi")
    assert meta(message)["member"] == "mid"
    assert meta(message)["reason"] == "fallback"
    assert meta(message)["attempts"][0]["member"] == "small" and "down" in meta(message)["attempts"][0]["error"]
    both_down = make_llm(threshold=0.6, table=MID_FIRST, small={"fail": True}, mid={"fail": True})
    assert meta(both_down.invoke("hi"))["member"] == "big"


def test_partial_sample_failures_rerank_survivors() -> None:
    llm = make_llm(threshold=0.85, small={"fail_first": 1})
    message = llm.invoke("hi")
    assert meta(message)["member"] == "small"
    assert meta(message)["samples_received"] == 2
    assert "1 of 3" in meta(message)["attempts"][0]["error"]
    assert len(meta(message)["candidate_scores"]) == 2


def test_empty_responses_count_as_failures() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST, mid={"empty": True})
    message = llm.invoke("hi")
    assert meta(message)["member"] != "mid"
    assert "empty" in meta(message)["attempts"][0]["error"]


def test_everything_failing_raises_one_clear_error() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST, small={"fail": True}, mid={"fail": True}, big={"fail": True})
    with pytest.raises(BestRouteError) as info:
        llm.invoke("hi")
    text = str(info.value)
    assert "mid (n=1)" in text and "big (n=1)" in text and "down" in text


def test_slow_member_times_out_and_falls_back() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST, mid={"latency_s": 2.0})
    llm.pool["mid"].timeout_s = 0.2
    message = llm.invoke("hi")
    assert meta(message)["member"] == "small" or meta(message)["member"] == "big"
    assert meta(message)["attempts"][0]["error"].endswith("timed out")


def test_reward_model_picks_and_reports_scores() -> None:
    pool = scripted_pool()
    llm = BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "big"), reranker=tiny_reward_model(), threshold=0.85)
    message = llm.invoke([SystemMessage("be brief"), HumanMessage("hi")])
    scores = meta(message)["candidate_scores"]
    assert meta(message)["reranker"] == "reward_model"
    assert meta(message)["chosen_index"] == max(range(3), key=lambda i: scores[i])


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0
        self.ends: list[Any] = []
        self.events: list[tuple[str, Any]] = []
        self.tokens: list[str] = []

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends.append(response)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))


def test_callbacks_see_one_run_with_cost_and_the_decision_event() -> None:
    llm = make_llm(threshold=0.85)
    recorder = Recorder()
    message = llm.invoke("hi", config={"callbacks": [recorder]})
    assert recorder.starts == 1  # inner pool calls are detached from the outer run
    assert len(recorder.ends) == 1
    llm_output = recorder.ends[0].llm_output
    assert llm_output["token_usage"]["completion_tokens"] == 9
    assert llm_output["cost_usd"] == pytest.approx(meta(message)["actual_cost_usd"])
    assert [name for name, _ in recorder.events] == [DECISION_EVENT]
    assert recorder.events[0][1]["member"] == "small"


async def test_async_callbacks_and_astream_events() -> None:
    llm = make_llm(threshold=0.85)
    events = [e async for e in llm.astream_events("hi", version="v2")]
    kinds = [e["event"] for e in events]
    assert kinds.count("on_chat_model_start") == 1
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert custom and custom[0]["name"] == DECISION_EVENT


def test_stream_n1_passes_member_tokens_and_usage_once() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST)  # mid n=1
    recorder = Recorder()
    chunks = list(llm.stream("hi", config={"callbacks": [recorder]}))
    assert len(chunks) >= 3  # member's word-level chunks + final
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.content.startswith("mid answer")
    assert full.response_metadata["bestroute"]["member"] == "mid"
    assert recorder.starts == 1 and len(recorder.events) == 1


async def test_astream_n_gt_1_streams_the_chosen_answer_after_rerank() -> None:
    llm = make_llm(threshold=0.85)
    chunks = [c async for c in llm.astream("hi")]
    assert len(chunks) == 2
    assert chunks[0].content and chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["output_tokens"] == 9
    assert chunks[-1].response_metadata["bestroute"]["n"] == 3


def test_stream_falls_back_when_member_fails_before_first_chunk() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST, mid={"fail": True})
    chunks = list(llm.stream("hi"))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.response_metadata["bestroute"]["member"] in {"small", "big"}
    assert full.content


def test_tools_are_bound_on_members_and_candidates_reranked() -> None:
    def lookup(x: int) -> int:
        """Look x up."""
        return x

    llm = make_llm(threshold=0.85)
    message = llm.bind_tools([lookup], tool_choice="lookup").invoke("look up 3")
    assert message.tool_calls and message.tool_calls[0]["name"] == "lookup"
    sent = llm.pool["small"].chat_model.calls[-1]["kwargs"]
    assert sent["tools"][0]["function"]["name"] == "lookup" and sent["tool_choice"] == "lookup"
    assert len(meta(message)["candidate_scores"]) == 3


def test_structured_output_function_calling() -> None:
    class Lookup(BaseModel):
        x: int

    llm = make_llm(threshold=0.6)
    result = llm.with_structured_output(Lookup).invoke("x please")
    assert isinstance(result, Lookup) and result.x >= 1


def test_batch_and_abatch() -> None:
    llm = make_llm(threshold=0.6, table=MID_FIRST)
    outputs = llm.batch(["a", "b", "c"])
    assert [meta(o)["member"] for o in outputs] == ["mid"] * 3
    outputs = asyncio.run(llm.abatch(["a", "b"]))
    assert len(outputs) == 2


async def test_concurrent_calls_share_router_forward_passes() -> None:
    llm = make_llm(threshold=0.6)
    llm.router.batcher.max_wait_s = 0.02
    before = llm.router.batcher.stats.forward_passes
    await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(32)))
    passes = llm.router.batcher.stats.forward_passes - before
    assert passes < 32 / 4, f"32 concurrent calls took {passes} router forward passes"


def test_reranker_required_for_best_of_n_routers() -> None:
    with pytest.raises(ValueError, match="reranker"):
        BestRouteChatModel(pool=scripted_pool(), router=fixed_router(TABLE, "big"))


def test_pool_that_does_not_match_the_router_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks member"):
        BestRouteChatModel(pool=scripted_pool(others=("small",)), router=fixed_router(TABLE, "big"), reranker=LengthReranker())


def test_costs_in_usage_metadata_only_when_asked() -> None:
    plain = make_llm(threshold=0.85).invoke("hi")
    assert "total_cost" not in plain.usage_metadata  # LangChain sums usage as integers
    llm = make_llm(threshold=0.85)
    llm.cost_in_usage_metadata = True
    message = llm.invoke("hi")
    usage = message.usage_metadata
    assert usage["total_cost"] == pytest.approx(meta(message)["actual_cost_usd"])
    assert usage["input_cost"] + usage["output_cost"] == pytest.approx(usage["total_cost"])
    # small: 0.1 $/M in, 0.2 $/M out; three requests of 3 output tokens each
    assert usage["output_cost"] == pytest.approx(9 * 0.2 / 1e6)
    streamed = list(llm.stream("hi"))
    assert all("total_cost" not in (c.usage_metadata or {}) for c in streamed)


def test_spend_cap_sends_calls_to_the_cheapest_option() -> None:
    pool = scripted_pool()
    llm = BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "big"), reranker=LengthReranker(), threshold=0.99, spend_cap_usd=1e-6)
    first = llm.invoke("hi")
    assert meta(first)["member"] == "big"  # nothing passes 0.99: the reference
    assert meta(first)["spent_usd"] >= 1e-6
    second = llm.invoke("hi")
    assert meta(second)["reason"] == "budget" and (meta(second)["member"], meta(second)["n"]) == ("small", 1)


def test_from_pretrained_uses_a_calibrated_threshold(tmp_path) -> None:
    router = fixed_router(TABLE, "big")
    router.config.thresholds["cost_reduction=0.4"] = 0.87
    router.save_pretrained(tmp_path / "router")
    llm = BestRouteChatModel.from_pretrained(tmp_path / "router", pool=scripted_pool(), reranker=LengthReranker(), target_cost_reduction=0.4)
    assert llm.threshold == pytest.approx(0.87)
    with pytest.raises(ValueError, match="calibrated: \\['cost_reduction=0.4'\\]"):
        BestRouteChatModel.from_pretrained(tmp_path / "router", pool=scripted_pool(), reranker=LengthReranker(), target_cost_reduction=0.2)
    with pytest.raises(ValueError, match="one of threshold"):
        BestRouteChatModel.from_pretrained(tmp_path / "router", pool=scripted_pool(), reranker=LengthReranker(), target_cost_reduction=0.4, threshold=0.5)


def test_profile_is_the_pools_common_ground() -> None:
    from tests.helpers import ScriptedChatModel, fixed_router
    from bestroute_lc import Pool, PoolMember, Prices

    def member(name: str, profile: dict | None) -> PoolMember:
        return PoolMember(name=name, chat_model=ScriptedChatModel(name_=name, calls=[], profile=profile),
                          prices=Prices(input_per_mtok=1, output_per_mtok=1))

    big = {"max_input_tokens": 128000, "max_output_tokens": 16384, "tool_calling": True, "structured_output": True, "image_inputs": True}
    small = {"max_input_tokens": 32000, "max_output_tokens": 8192, "tool_calling": True, "image_inputs": False}
    pool = Pool(members=[member("big", big), member("small", small)], reference="big")
    llm = BestRouteChatModel(pool=pool, router=fixed_router({"small": [0.5]}, "big"), threshold=0.5)
    assert llm.profile["max_input_tokens"] == 32000 and llm.profile["max_output_tokens"] == 8192
    assert llm.profile["tool_calling"] is True
    assert llm.profile["structured_output"] is False and llm.profile["image_inputs"] is False  # not every member
    unknown = Pool(members=[member("big", big), member("small", None)], reference="big")
    assert BestRouteChatModel(pool=unknown, router=fixed_router({"small": [0.5]}, "big"), threshold=0.5).profile is None
    given = BestRouteChatModel(pool=pool, router=fixed_router({"small": [0.5]}, "big"), threshold=0.5, profile={"max_input_tokens": 10})
    assert given.profile == {"max_input_tokens": 10}
