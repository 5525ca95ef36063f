"""Verified escalation end to end: BestRouteChatModel with a verifier, on scripted members
(no network): stages, costs, usage, events, streaming, policies and calibrated targets."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from pydantic import Field

from bestroute_lc import DECISION_EVENT, BestRouteChatModel
from bestroute_lc.artifacts import PolicyChoice
from bestroute_lc.policy import ChainWalk, MemberCosts, choose
from bestroute_lc.verifiers import (
    AgreementVerifier,
    ExecutionVerifier,
    RewardLevelVerifier,
    Verdict,
    Verifier,
)
from tests.helpers import LengthReranker, ScriptedChatModel, fixed_router, scripted_pool
from tests.unit.test_chat_model import Recorder

# At t = 0.85: small n=3 (cheapest), then mid n=3, then the reference big n=1.
TABLE = {"small": [0.2, 0.5, 0.9], "mid": [0.7, 0.8, 0.88]}
# At t = 0.85 only small n=3 passes: chain small n=3 -> big n=1.
SMALL_ONLY = {"small": [0.2, 0.5, 0.9], "mid": [0.1, 0.2, 0.3]}
# At t = 0.85: small n=1, then mid n=1, then big.
N1 = {"small": [0.9, 0.9, 0.9], "mid": [0.9, 0.9, 0.9]}


class ByMember(Verifier):
    """Accepts the picks of the members in ``accept``; records every call."""

    name = "by_member"

    def __init__(self, accept: set[str] = frozenset(), fail: bool = False) -> None:  # type: ignore[assignment]
        self.accept = set(accept)
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    def verify(self, prompt, candidates, chosen, scores=None, *, member=None, reranker=None):  # type: ignore[override]
        self.calls.append({"member": member, "candidates": list(candidates), "chosen": chosen, "scores": scores, "reranker": reranker})
        if self.fail:
            raise RuntimeError("verifier broke")
        ok = member in self.accept
        return Verdict(ok, 0.9 if ok else 0.2, f"{member}: {'ok' if ok else 'not good enough'}")


class AnsweringModel(ScriptedChatModel):
    """A scripted member whose answers cycle through ``answers`` (usage as ScriptedChatModel)."""

    answers: list = Field(default_factory=list)

    def _reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        reply = super()._reply(messages, kwargs)
        return reply.model_copy(update={"content": self.answers[(len(self.calls) - 1) % len(self.answers)]})


def make_llm(
    table: dict | None = None,
    threshold: float = 0.85,
    verifier: Verifier | None = None,
    answers: dict[str, list[str]] | None = None,
    **kwargs: Any,
) -> BestRouteChatModel:
    pool = scripted_pool()
    for name, texts in (answers or {}).items():
        pool[name].chat_model = AnsweringModel(name_=name, answers=texts, calls=[])
    return BestRouteChatModel(
        pool=pool,
        router=fixed_router(table or TABLE, "big"),
        reranker=LengthReranker(),
        threshold=threshold,
        verifier=verifier,
        **kwargs,
    )


def meta(message: AIMessage) -> dict[str, Any]:
    return message.response_metadata["bestroute"]


def calls(llm: BestRouteChatModel, name: str) -> int:
    return len(llm.pool[name].chat_model.calls)


# -- accepted at stage 1 ------------------------------------------------------------------------------


def test_accepted_at_stage_one_is_one_cheap_stage() -> None:
    verifier = ByMember(accept={"small"})
    llm = make_llm(verifier=verifier)
    message = llm.invoke("What is 2 + 2?")
    m = meta(message)
    assert (m["member"], m["n"], m["reason"], m["verifier"]) == ("small", 3, "router", "by_member")
    assert len(m["stages"]) == 1
    stage = m["stages"][0]
    assert (stage["member"], stage["n"], stage["samples"], stage["accepted"]) == ("small", 3, 3, True)
    assert stage["confidence"] == 0.9 and stage["reason"] == "small: ok"
    assert stage["cost_usd"] == pytest.approx(m["actual_cost_usd"]) and m["actual_cost_usd"] > 0
    assert stage["latency_s"] >= stage["verify_s"] >= 0 and "verify" in m["latency_s"]
    assert calls(llm, "big") == 0 and calls(llm, "mid") == 0
    # The verifier saw every candidate, the pick and the reranker's scores.
    seen = verifier.calls[0]
    assert len(seen["candidates"]) == 3 and seen["scores"] is not None and isinstance(seen["reranker"], LengthReranker)


def test_without_a_verifier_nothing_changes() -> None:
    message = make_llm().invoke("hi")
    assert "stages" not in meta(message) and "verifier" not in meta(message)
    assert set(meta(message)["latency_s"]) == {"routing", "generation", "rerank"}


# -- rejected -> escalated ------------------------------------------------------------------------------


def test_rejected_pick_escalates_to_the_reference_with_costs_usage_and_event() -> None:
    llm = make_llm(table=SMALL_ONLY, verifier=ByMember())
    recorder = Recorder()
    message = llm.invoke("What is 2 + 2?", config={"callbacks": [recorder]})
    m = meta(message)
    assert (m["member"], m["n"], m["reason"]) == ("big", 1, "escalated")
    assert (m["routed_member"], m["routed_n"]) == ("small", 3)
    assert message.content.startswith("big answer")
    small, big = m["stages"]
    assert (small["member"], small["n"], small["accepted"], small["confidence"]) == ("small", 3, False, 0.2)
    assert (big["member"], big["n"], big["accepted"], big["confidence"]) == ("big", 1, True, None)
    assert "final" in big["reason"]
    # Cost and usage: every stage.
    assert m["actual_cost_usd"] == pytest.approx(small["cost_usd"] + big["cost_usd"])
    assert big["cost_usd"] > small["cost_usd"] > 0
    assert message.usage_metadata["output_tokens"] == 3 * 3 + 3
    assert [a["member"] for a in m["attempts"]] == ["small", "big"]
    # The decision event carries both stages; llm_output has the summed cost.
    ((name, event),) = recorder.events
    assert name == DECISION_EVENT and [s["member"] for s in event["stages"]] == ["small", "big"]
    assert event["usage"]["output_tokens"] == 12
    assert recorder.ends[0].llm_output["cost_usd"] == pytest.approx(m["actual_cost_usd"])


def test_default_escalation_goes_to_a_stronger_members_valid_option_first() -> None:
    llm = make_llm(verifier=ByMember(accept={"mid"}))
    m = meta(llm.invoke("hi"))
    assert [(s["member"], s["n"], s["accepted"]) for s in m["stages"]] == [("small", 3, False), ("mid", 3, True)]
    assert (m["member"], m["n"], m["reason"]) == ("mid", 3, "escalated")
    assert calls(llm, "big") == 0


def test_rejected_at_every_stage_ends_with_the_references_final_answer() -> None:
    llm = make_llm(verifier=ByMember())
    message = llm.invoke("hi")
    m = meta(message)
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", False), ("mid", False), ("big", True)]
    assert m["member"] == "big" and m["reason"] == "escalated"
    assert m["actual_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in m["stages"]))
    assert message.usage_metadata["output_tokens"] == 3 * 3 + 3 * 3 + 3


def test_explicit_escalation_stages_are_followed_in_order() -> None:
    llm = make_llm(verifier=ByMember(accept={"mid"}), escalation=[("mid", 2)])
    m = meta(llm.invoke("hi"))
    assert [(s["member"], s["n"]) for s in m["stages"]] == [("small", 3), ("mid", 2)]
    with pytest.raises(ValueError, match="unknown pool member"):
        make_llm(verifier=ByMember(), escalation=[("nope", 1)])


async def test_async_escalation() -> None:
    llm = make_llm(table=SMALL_ONLY, verifier=ByMember())
    message = await llm.ainvoke("hi")
    assert [s["member"] for s in meta(message)["stages"]] == ["small", "big"]


def test_the_reference_is_not_verified_when_routed_to_directly() -> None:
    verifier = ByMember()
    message = make_llm(threshold=0.99, verifier=verifier).invoke("hi")
    m = meta(message)
    assert m["reason"] == "reference" and verifier.calls == []
    assert [(s["member"], s["accepted"], s["confidence"]) for s in m["stages"]] == [("big", True, None)]


# -- failures, spend cap, pinned members ----------------------------------------------------------------


def test_provider_failure_still_falls_back_and_the_fallback_is_verified() -> None:
    llm = make_llm(verifier=ByMember(accept={"mid"}))
    llm.pool["small"].chat_model.fail = True
    m = meta(llm.invoke("hi"))
    assert m["member"] == "mid" and m["reason"] == "fallback"
    assert [s["member"] for s in m["stages"]] == ["mid"]
    assert "down" in m["attempts"][0]["error"]


def test_reference_failing_after_a_rejection_returns_the_rejected_pick_marked_unverified() -> None:
    llm = make_llm(table=SMALL_ONLY, verifier=ByMember())
    llm.pool["big"].chat_model.fail = True
    message = llm.invoke("hi")
    m = meta(message)
    assert (m["member"], m["reason"]) == ("small", "unverified")
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", False)]
    assert m["attempts"][-1]["member"] == "big" and m["attempts"][-1]["error"]


def test_a_broken_verifier_rejects_and_escalates() -> None:
    m = meta(make_llm(table=SMALL_ONLY, verifier=ByMember(fail=True)).invoke("hi"))
    assert m["stages"][0]["reason"].startswith("verifier error: RuntimeError") and m["member"] == "big"


def test_spend_cap_stops_escalation_and_then_sends_calls_to_the_cheapest() -> None:
    llm = make_llm(table=SMALL_ONLY, verifier=ByMember(), spend_cap_usd=1e-7)
    first = meta(llm.invoke("hi"))
    assert (first["member"], first["reason"]) == ("small", "unverified")  # small's three samples reach the cap
    assert "spend cap" in first["stages"][0]["reason"] and calls(llm, "big") == 0
    second = meta(llm.invoke("hi"))
    assert second["reason"] == "budget" and (second["member"], second["n"]) == ("small", 1)
    assert "stages" not in second  # budget calls are not verified


def test_pinned_member_is_not_verified() -> None:
    verifier = ByMember()
    m = meta(make_llm(verifier=verifier).invoke("hi", model="small"))
    assert m["reason"] == "forced" and "stages" not in m and verifier.calls == []


# -- streaming ----------------------------------------------------------------------------------------------


def full(chunks: list) -> Any:
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    return total


def test_stream_with_escalation_buffers_the_verified_answer_and_streams_the_reference() -> None:
    llm = make_llm(table=N1, verifier=ByMember())  # small n=1 rejected, mid n=1 rejected, big streams
    recorder = Recorder()
    chunks = list(llm.stream("hi", config={"callbacks": [recorder]}))
    contents = [c.content for c in chunks if c.content]
    assert contents[0] == "big" and len(contents) >= 3  # token by token from the reference only
    assert not any("small" in c or "mid" in c for c in contents)
    assert sum(1 for c in chunks if c.usage_metadata) == 1 and chunks[-1].chunk_position == "last"
    message = full(chunks)
    assert message.content.startswith("big answer")
    m = message.response_metadata["bestroute"]
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", False), ("mid", False), ("big", True)]
    assert message.usage_metadata["output_tokens"] == 9
    assert len(recorder.events) == 1 and len(recorder.events[0][1]["stages"]) == 3


async def test_astream_accepted_n1_answer_arrives_whole_after_the_verdict() -> None:
    llm = make_llm(table=N1, verifier=ByMember(accept={"small"}))
    chunks = [c async for c in llm.astream("hi")]
    assert len(chunks) == 2  # the whole verified answer, then the final chunk
    assert chunks[0].content.startswith("small answer")
    assert chunks[-1].response_metadata["bestroute"]["stages"][0]["accepted"] is True


# -- real verifiers end to end --------------------------------------------------------------------------------

CODE_PROMPT = 'Complete:\n```python\ndef double(x):\n    """\n    >>> double(2)\n    4\n    >>> double(5)\n    10\n    """\n```\n'
WRONG = "```python\ndef double(x):\n    return x + 2\n```"
RIGHT = "```python\ndef double(x):\n    return 2 * x\n```"


def test_execution_verifier_end_to_end() -> None:
    answers = {"small": [WRONG], "mid": [WRONG], "big": [RIGHT]}
    wrong = make_llm(table=SMALL_ONLY, verifier=ExecutionVerifier(), answers=answers)
    m = meta(wrong.invoke(CODE_PROMPT))
    assert m["member"] == "big" and m["stages"][0]["confidence"] == 0.5  # x + 2 passes double(2) only
    assert "passed 1 of 2" in m["stages"][0]["reason"]
    right = make_llm(table=SMALL_ONLY, verifier=ExecutionVerifier(), answers={"small": [RIGHT]})
    m = meta(right.invoke(CODE_PROMPT))
    assert m["member"] == "small" and m["stages"][0]["accepted"] and calls(right, "big") == 0


def test_execution_verifier_reuses_the_code_rerankers_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from bestroute_lc import verifiers
    from bestroute_lc.rerankers.code_execution import CodeExecutionReranker

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reranker already ran the pick")

    monkeypatch.setattr(verifiers, "run_in_sandbox", must_not_run)
    llm = make_llm(table=SMALL_ONLY, verifier=ExecutionVerifier(), answers={"small": [WRONG, RIGHT, WRONG]})
    llm = BestRouteChatModel(
        pool=llm.pool, router=llm.router, reranker=CodeExecutionReranker(), threshold=0.85, verifier=ExecutionVerifier()
    )
    m = meta(llm.invoke(CODE_PROMPT))
    assert (m["member"], m["chosen_index"]) == ("small", 1) and m["stages"][0]["accepted"]
    assert "reranker's run" in m["stages"][0]["reason"]


def test_reward_level_verifier_scores_single_picks_with_the_engines_reranker() -> None:
    # LengthReranker scores "small answer 1" 14 and "mid answer 1" 12.
    llm = make_llm(table=N1, verifier=RewardLevelVerifier({"small": 20.0, "mid": 10.0}))
    m = meta(llm.invoke("hi"))
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", False), ("mid", True)]
    assert "reward 14 < level 20" in m["stages"][0]["reason"]


# -- policies ------------------------------------------------------------------------------------------------------


def test_constant_policy_always_answers_with_its_member_without_the_router() -> None:
    llm = make_llm(policy=PolicyChoice(kind="constant", member="mid", n=2))
    before = llm.router.batcher.stats.forward_passes
    m = meta(llm.invoke("hi"))
    assert (m["member"], m["n"], m["reason"], m["policy"]) == ("mid", 2, "constant", "constant")
    assert m["match_probabilities"] == {} and "stages" not in m
    assert llm.router.batcher.stats.forward_passes == before
    assert meta(llm.invoke("hi", model="small"))["member"] == "small"  # pinning still works


def test_verified_policy_from_a_policy_choice_builds_its_verifier_and_escalates() -> None:
    policy = PolicyChoice(kind="verified", member="small", n=3, verifier="agreement", escalation=[("mid", 1), ("big", 1)])
    llm = make_llm(policy=policy)
    assert isinstance(llm.verifier, AgreementVerifier)
    m = meta(llm.invoke("hi"))
    # small's answers carry the numbers 1, 2, 3: the pick agrees with nobody; mid n=1 cannot be
    # checked for agreement (one sample) and is accepted as unverifiable.
    assert [(s["member"], s["n"], s["accepted"]) for s in m["stages"]] == [("small", 3, False), ("mid", 1, True)]
    assert "1 of 3" in m["stages"][0]["reason"] and "not verifiable" in m["stages"][1]["reason"]
    assert (m["policy"], m["routed_member"], m["member"], m["reason"]) == ("verified", "small", "mid", "escalated")

    agreeing = make_llm(policy=policy, answers={"small": ["so #### 4", "it is 4", "maybe 5"]})
    m = meta(agreeing.invoke("hi"))
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", True)]


def test_verified_policy_needs_a_verifier_and_router_policy_sets_the_threshold() -> None:
    with pytest.raises(ValueError, match="verifier"):
        make_llm(policy=PolicyChoice(kind="verified", member="small", n=1))
    with pytest.raises(ValueError, match="levels"):
        make_llm(policy=PolicyChoice(kind="verified", member="small", n=1, verifier="reward_level"))
    with pytest.raises(ValueError, match="unknown pool member"):
        make_llm(policy=PolicyChoice(kind="constant", member="nope", n=1))
    pool = scripted_pool()
    router = BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "big"), reranker=LengthReranker(), policy=PolicyChoice(kind="router", threshold=0.85))
    assert router.threshold == 0.85 and meta(router.invoke("hi"))["member"] == "small"


def test_from_pretrained_uses_the_policy_calibrated_for_the_target(tmp_path) -> None:
    router = fixed_router(TABLE, "big")
    router.config.thresholds["cost_reduction=0.4"] = 0.87
    router.config.policies["cost_reduction=0.4"] = PolicyChoice(
        kind="verified", member="small", n=3, verifier="agreement", escalation=[("big", 1)], reason="best on validation"
    )
    router.config.policies["reference_share=0.2"] = PolicyChoice(kind="router", threshold=0.85)
    router.config.policies["budget_per_1000=1"] = PolicyChoice(kind="verified", member="small", n=1, verifier="reward_level")
    router.save_pretrained(tmp_path / "router")
    path = tmp_path / "router"

    llm = BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target_cost_reduction=0.4)
    assert llm.policy.kind == "verified" and isinstance(llm.verifier, AgreementVerifier)
    m = meta(llm.invoke("hi"))
    assert [(s["member"], s["accepted"]) for s in m["stages"]] == [("small", False), ("big", True)]

    same = BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target="cost_reduction=0.4")
    assert same.policy == llm.policy

    routed = BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target_reference_share=0.2)
    assert routed.policy.kind == "router" and routed.threshold == pytest.approx(0.85) and routed.verifier is None

    with pytest.raises(ValueError, match="levels"):
        BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target_budget_per_1000=1)
    levels = RewardLevelVerifier({"small": 0.0})
    own = BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target_budget_per_1000=1, verifier=levels)
    assert own.verifier is levels and meta(own.invoke("hi"))["stages"][0]["accepted"]

    with pytest.raises(ValueError, match="calibrated: .*'cost_reduction=0.4', 'reference_share=0.2'"):
        BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target_cost_reduction=0.1)
    with pytest.raises(ValueError, match="single target"):
        BestRouteChatModel.from_pretrained(path, pool=scripted_pool(), reranker=LengthReranker(), target="cost_reduction=0.4", target_cost_reduction=0.4)


# -- the chain walk (pure policy) -------------------------------------------------------------------------------


def test_default_walk_escalates_at_most_one_stage_before_the_reference() -> None:
    def costs(price: float) -> MemberCosts:
        return MemberCosts(price, price, 100, True)

    member_costs = {"ref": costs(10), "a": costs(0.1), "b": costs(1), "c": costs(3)}
    decision = choose({"a": [0.9, 0.9], "b": [0.9, 0.9], "c": [0.9, 0.9]}, member_costs, "ref", 100, 0.5)
    units = {name: c.estimate(1, 100) for name, c in member_costs.items()}
    walk = ChainWalk(decision, units, "ref")
    first = walk.next()
    assert (first.member, first.n) == ("a", 1)
    walk.reject("a")
    second = walk.next()
    assert second.member == "b"  # the next valid option of a more expensive member (a n=2 skipped)
    walk.reject("b")
    assert walk.next().member == "ref"  # c is skipped: one stage at most before the reference
    assert walk.next() is None
    # A failure moves on as before, without skipping weaker members.
    failing = ChainWalk(decision, units, "ref")
    failing.next()
    failing.fail("a")
    assert failing.next().member == "b"
