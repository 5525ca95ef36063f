"""Prices, the paper's Table 6 preset, genai-prices lookup and billed cost of a call."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bestroute_lc.pricing import (
    PAPER_TABLE6,
    PRESETS,
    Prices,
    lookup_prices,
    paper_prices,
    usage_cost_usd,
)

# -- Prices math ----------------------------------------------------------------------


def test_input_and_output_cost():
    p = Prices(input_per_mtok=2.5, output_per_mtok=10.0)
    assert p.input_cost(1_000_000) == pytest.approx(2.5)
    assert p.input_cost(400) == pytest.approx(400 * 2.5 / 1e6)
    assert p.output_cost(1_000_000) == pytest.approx(10.0)
    assert p.output_cost(123) == pytest.approx(123 * 10.0 / 1e6)
    assert p.input_cost(0) == 0.0 and p.output_cost(0) == 0.0
    assert p.source == "user"


def test_cache_reads_billed_at_cache_price():
    p = Prices(input_per_mtok=2.0, output_per_mtok=8.0, cache_read_per_mtok=0.5)
    # 1000 input tokens, 600 of them from cache: 400 * 2 + 600 * 0.5 = 800 + 300 = 1100
    assert p.input_cost(1000, cache_read_tokens=600) == pytest.approx(1100 / 1e6)


def test_cache_reads_without_cache_price_cost_full_input_price():
    p = Prices(input_per_mtok=2.0, output_per_mtok=8.0)
    assert p.input_cost(1000, cache_read_tokens=600) == pytest.approx(p.input_cost(1000))


def test_cache_reads_capped_at_input_tokens():
    p = Prices(input_per_mtok=2.0, output_per_mtok=8.0, cache_read_per_mtok=0.5)
    # more cached than total: all 100 tokens at the cache price, never negative
    assert p.input_cost(100, cache_read_tokens=1000) == pytest.approx(100 * 0.5 / 1e6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_per_mtok": -1, "output_per_mtok": 1},
        {"input_per_mtok": 1, "output_per_mtok": -0.1},
        {"input_per_mtok": 1, "output_per_mtok": 1, "cache_read_per_mtok": -1},
    ],
)
def test_negative_prices_rejected(kwargs):
    with pytest.raises(ValidationError):
        Prices(**kwargs)


def test_prices_are_frozen():
    p = Prices(input_per_mtok=1, output_per_mtok=2)
    with pytest.raises(ValidationError):
        p.input_per_mtok = 3  # type: ignore[misc]


# -- paper Table 6 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, i, o",
    [
        ("gpt-4o", 5.0, 15.0),
        ("gpt-3.5-turbo", 3.0, 6.0),
        ("llama-3.1-8b", 0.3, 0.61),
        ("mistral-7b", 0.25, 0.25),
        ("mistral-8x7b", 0.7, 0.7),
        ("phi-3-mini", 0.3, 0.9),
        ("phi-3-medium", 0.5, 1.5),
        ("codestral-22b", 1.0, 3.0),
    ],
)
def test_paper_table6_values(model, i, o):
    p = paper_prices(model)
    assert (p.input_per_mtok, p.output_per_mtok) == (i, o)
    assert p.source == "paper-table-6"
    assert p.cache_read_per_mtok is None
    assert PAPER_TABLE6[model] is p


def test_paper_table6_has_exactly_eight_models_and_is_a_preset():
    assert len(PAPER_TABLE6) == 8
    assert PRESETS["paper-table-6"] is PAPER_TABLE6


def test_paper_prices_case_insensitive():
    assert paper_prices("GPT-4o") == paper_prices("gpt-4o")


def test_paper_prices_unknown_lists_known_models():
    with pytest.raises(ValueError, match="not in the paper's Table 6") as info:
        paper_prices("gpt-5")
    assert "gpt-4o" in str(info.value) and "'gpt-5'" in str(info.value)


# -- genai-prices lookup (offline: the package ships its price data) -------------------


def test_lookup_known_model():
    p = lookup_prices("gpt-4o-mini")
    assert p.input_per_mtok > 0 and p.output_per_mtok > 0
    assert p.output_per_mtok > p.input_per_mtok
    assert p.source.startswith("genai-prices:")
    assert "gpt-4o-mini" in p.source
    # gpt-4o-mini has a discounted cached-input price
    assert p.cache_read_per_mtok is not None
    assert 0 < p.cache_read_per_mtok < p.input_per_mtok


def test_lookup_with_provider():
    p = lookup_prices("gpt-4o-mini", provider="openai")
    assert p.source.startswith("genai-prices:openai/")
    assert p == lookup_prices("gpt-4o-mini")


def test_lookup_unknown_model_helpful_error():
    with pytest.raises(ValueError) as info:
        lookup_prices("definitely-not-a-model-xyz-123")
    message = str(info.value)
    assert "definitely-not-a-model-xyz-123" in message
    assert "Prices(" in message


def test_lookup_unknown_model_with_provider_names_provider():
    with pytest.raises(ValueError, match="provider 'openai'"):
        lookup_prices("definitely-not-a-model-xyz-123", provider="openai")


# -- usage_cost_usd ---------------------------------------------------------------------


def test_usage_cost_plain():
    p = Prices(input_per_mtok=2.0, output_per_mtok=8.0)
    usage = {"input_tokens": 1000, "output_tokens": 250, "total_tokens": 1250}
    assert usage_cost_usd(usage, p) == pytest.approx((2000 + 2000) / 1e6)


def test_usage_cost_with_cache_read_details():
    p = Prices(input_per_mtok=2.0, output_per_mtok=8.0, cache_read_per_mtok=0.5)
    usage = {
        "input_tokens": 1000,
        "output_tokens": 100,
        "total_tokens": 1100,
        "input_token_details": {"cache_read": 800, "audio": 0},
        "output_token_details": {"reasoning": 20},
    }
    # 200 * 2 + 800 * 0.5 + 100 * 8 = 400 + 400 + 800
    assert usage_cost_usd(usage, p) == pytest.approx(1600 / 1e6)


def test_usage_cost_from_langchain_message_usage_metadata():
    from langchain_core.messages import AIMessage

    message = AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "input_token_details": {"cache_read": 4},
        },
    )
    p = Prices(input_per_mtok=1.0, output_per_mtok=3.0, cache_read_per_mtok=0.1)
    assert usage_cost_usd(message.usage_metadata, p) == pytest.approx((6 * 1 + 4 * 0.1 + 5 * 3) / 1e6)


@pytest.mark.parametrize(
    "usage",
    [None, {}],
)
def test_usage_cost_missing_usage_is_zero(usage):
    assert usage_cost_usd(usage, Prices(input_per_mtok=1, output_per_mtok=1)) == 0.0


def test_usage_cost_tolerates_none_fields():
    p = Prices(input_per_mtok=1.0, output_per_mtok=2.0, cache_read_per_mtok=0.5)
    usage = {"input_tokens": None, "output_tokens": 10, "input_token_details": None}
    assert usage_cost_usd(usage, p) == pytest.approx(20 / 1e6)
    usage = {"input_tokens": 10, "input_token_details": {"cache_read": None}}
    assert usage_cost_usd(usage, p) == pytest.approx(10 / 1e6)
