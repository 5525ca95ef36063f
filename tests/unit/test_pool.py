"""PoolMember / Pool construction, billing defaults and artifact-vs-pool checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bestroute_lc.policy import MemberCosts
from bestroute_lc.pool import (
    NBilling,
    Pool,
    PoolMember,
    check_pool_matches,
    default_n_billing,
    model_name_of,
)
from bestroute_lc.pricing import Prices
from tests.helpers import ScriptedChatModel, scripted_pool


def _openai(model: str = "gpt-4o"):
    from langchain_openai import ChatOpenAI

    # A closed local port: constructing the client sends no request.
    return ChatOpenAI(model=model, api_key="x", base_url="http://127.0.0.1:9")


def _scripted(name: str = "s") -> ScriptedChatModel:
    return ScriptedChatModel(name_=name, calls=[])


P1 = Prices(input_per_mtok=1, output_per_mtok=2)


# -- from_model --------------------------------------------------------------------------


def test_from_model_infers_name_from_openai_client_and_uses_preset():
    member = PoolMember.from_model(_openai("gpt-4o"), prices="paper-table-6")
    assert member.name == "gpt-4o"
    assert (member.prices.input_per_mtok, member.prices.output_per_mtok) == (5.0, 15.0)
    assert member.prices.source == "paper-table-6"


def test_from_model_preset_lookup_uses_explicit_name_case_insensitively():
    member = PoolMember.from_model(_openai("gpt-4o-2024-08-06"), name="GPT-3.5-Turbo", prices="paper-table-6")
    assert member.name == "GPT-3.5-Turbo"
    assert (member.prices.input_per_mtok, member.prices.output_per_mtok) == (3.0, 6.0)


def test_from_model_explicit_prices_win():
    member = PoolMember.from_model(_openai("gpt-4o"), prices=P1)
    assert member.prices is P1


def test_from_model_looks_up_genai_prices_by_model_id():
    member = PoolMember.from_model(_openai("gpt-4o-mini"), name="cheap")
    assert member.name == "cheap"
    assert member.prices.source.startswith("genai-prices:")
    assert "gpt-4o-mini" in member.prices.source
    assert member.prices.input_per_mtok > 0


def test_from_model_unknown_model_without_prices_fails_helpfully():
    with pytest.raises(ValueError, match="no price known for model 'my-private-model-zzz'"):
        PoolMember.from_model(_openai("my-private-model-zzz"))


def test_from_model_cannot_infer_name():
    with pytest.raises(ValueError, match="cannot infer a name for ScriptedChatModel"):
        PoolMember.from_model(_scripted(), prices=P1)


def test_from_model_unknown_preset():
    with pytest.raises(ValueError, match="unknown price preset 'table-99'") as info:
        PoolMember.from_model(_openai("gpt-4o"), prices="table-99")
    assert "paper-table-6" in str(info.value)


def test_from_model_member_not_in_preset():
    with pytest.raises(ValueError, match="'gpt-4o-mini' is not in price preset 'paper-table-6'") as info:
        PoolMember.from_model(_openai("gpt-4o-mini"), prices="paper-table-6")
    assert "gpt-4o" in str(info.value)


def test_from_model_passes_kwargs_and_n_billing_override():
    member = PoolMember.from_model(
        _openai(), prices=P1, avg_output_tokens=42, n_billing=NBilling.PARALLEL, timeout_s=3, max_retries=2
    )
    assert member.avg_output_tokens == 42
    assert member.n_billing is NBilling.PARALLEL
    assert (member.timeout_s, member.max_retries) == (3, 2)


# -- n billing -------------------------------------------------------------------------


def test_openai_defaults_to_native_billing():
    chat = _openai()
    assert default_n_billing(chat) is NBilling.NATIVE
    member = PoolMember.from_model(chat, prices="paper-table-6")
    assert member.n_billing is NBilling.NATIVE
    assert member.costs.prompt_billed_per_sample is False


def test_other_models_default_to_parallel_billing():
    chat = _scripted()
    assert default_n_billing(chat) is NBilling.PARALLEL
    member = PoolMember.from_model(chat, name="s", prices=P1)
    assert member.n_billing is NBilling.PARALLEL
    assert member.costs.prompt_billed_per_sample is True


def test_mistral_defaults_to_parallel_billing():
    from langchain_mistralai import ChatMistralAI

    chat = ChatMistralAI(model="mistral-small-latest", api_key="x", endpoint="http://127.0.0.1:9")
    assert default_n_billing(chat) is NBilling.PARALLEL
    assert model_name_of(chat) == "mistral-small-latest"


def test_direct_constructor_default_is_parallel():
    member = PoolMember(name="o", chat_model=_openai(), prices=P1)
    assert member.n_billing is NBilling.PARALLEL


def test_member_costs_mirror_prices():
    member = PoolMember(name="s", chat_model=_scripted(), prices=Prices(input_per_mtok=3, output_per_mtok=7), avg_output_tokens=11)
    assert member.costs == MemberCosts(3.0, 7.0, 11.0, True)


# -- member validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"name": ""}, {"avg_output_tokens": 0}, {"timeout_s": 0}, {"max_retries": -1}],
)
def test_member_field_validation(kwargs):
    base = {"name": "s", "chat_model": _scripted(), "prices": P1}
    with pytest.raises(ValidationError):
        PoolMember(**{**base, **kwargs})


def test_accepts_content_types():
    plain = PoolMember(name="a", chat_model=_scripted(), prices=P1)
    vision = PoolMember(name="b", chat_model=_scripted(), prices=P1, extra_content_types=frozenset({"image_url"}))
    assert plain.accepts_content_types == frozenset({"text"})
    assert vision.accepts_content_types == frozenset({"text", "image_url"})


# -- Pool ------------------------------------------------------------------------------


def test_pool_names_and_routed_names_keep_order():
    pool = scripted_pool(reference="big", others=("small", "mid"))
    assert pool.names == ["big", "small", "mid"]
    assert pool.routed_names == ["small", "mid"]
    assert pool["mid"].name == "mid"
    assert [m.name for m in pool] == ["big", "small", "mid"]
    assert set(pool.costs()) == {"big", "small", "mid"}
    assert pool.costs()["big"].input_per_mtok == 5


def test_pool_reference_in_the_middle():
    members = [PoolMember(name=n, chat_model=_scripted(n), prices=P1) for n in ("a", "ref", "b")]
    pool = Pool(members=members, reference="ref")
    assert pool.routed_names == ["a", "b"]


def test_pool_unknown_member_lookup():
    pool = scripted_pool()
    with pytest.raises(ValueError, match="unknown pool member 'ghost'"):
        pool["ghost"]


def test_pool_duplicate_names():
    members = [PoolMember(name=n, chat_model=_scripted(n), prices=P1) for n in ("a", "b", "a")]
    with pytest.raises(ValueError, match=r"duplicate pool member names: \['a'\]"):
        Pool(members=members, reference="b")


def test_pool_reference_missing():
    members = [PoolMember(name=n, chat_model=_scripted(n), prices=P1) for n in ("a", "b")]
    with pytest.raises(ValueError, match="reference 'c' is not a pool member") as info:
        Pool(members=members, reference="c")
    assert "['a', 'b']" in str(info.value)


def test_pool_needs_two_members():
    with pytest.raises(ValueError, match="at least one other member"):
        Pool(members=[PoolMember(name="a", chat_model=_scripted(), prices=P1)], reference="a")


def test_with_avg_output_tokens_copies():
    pool = scripted_pool()
    updated = pool.with_avg_output_tokens({"small": 17, "nobody": 3})
    assert updated["small"].avg_output_tokens == 17.0
    assert updated["mid"].avg_output_tokens == pool["mid"].avg_output_tokens == 100
    assert updated.costs()["small"].avg_output_tokens == 17.0
    # the original pool is untouched
    assert pool["small"].avg_output_tokens == 100
    assert updated.reference == pool.reference
    assert updated.names == pool.names
    # the chat model objects are shared, not rebuilt
    assert updated["small"].chat_model is pool["small"].chat_model


# -- check_pool_matches --------------------------------------------------------------------


def test_check_pool_matches_ok():
    check_pool_matches(["small", "mid"], "big", scripted_pool(), "router")
    # head order does not matter: heads are matched by name
    check_pool_matches(["mid", "small"], "big", scripted_pool(), "router")


def test_check_pool_matches_missing_member():
    with pytest.raises(ValueError) as info:
        check_pool_matches(["small", "mid", "tiny"], "big", scripted_pool(), "the router")
    message = str(info.value)
    assert message.startswith("the router does not match this pool")
    assert "pool lacks member(s) ['tiny']" in message
    assert "has no heads for" not in message


def test_check_pool_matches_extra_member():
    with pytest.raises(ValueError) as info:
        check_pool_matches(["small"], "big", scripted_pool(), "the router")
    message = str(info.value)
    assert "pool has member(s) ['mid'] that the router has no heads for" in message
    assert "lacks" not in message


def test_check_pool_matches_reference_mismatch():
    with pytest.raises(ValueError) as info:
        check_pool_matches(["small", "mid"], "gpt-4o", scripted_pool(), "the router")
    assert "reference is 'big' but the router was trained with 'gpt-4o'" in str(info.value)


def test_check_pool_matches_reports_all_problems():
    with pytest.raises(ValueError) as info:
        check_pool_matches(["small", "tiny"], "huge", scripted_pool(), "R")
    message = str(info.value)
    assert "reference is 'big'" in message
    assert "lacks member(s) ['tiny']" in message
    assert "has member(s) ['mid']" in message
