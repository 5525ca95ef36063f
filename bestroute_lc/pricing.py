"""Token prices per pool member and the billed cost of a call.

Prices are USD per million tokens. They come from, in order of precedence:
1. explicit ``Prices(...)`` given by the user (always wins);
2. the paper's Table 6 preset (``paper_prices("gpt-4o")``), for reproducing the paper;
3. ``genai-prices`` looked up by model name (and provider, when known), which tracks
   providers' current list prices including cached-input prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def approximate_tokens(text: str) -> int:
    """Token estimate where no usage is reported: about four characters per token.

    Used for the cost model's input tokens (only the *relative* cost of options matters to
    the policy, and every member sees the same prompt, so a provider-independent estimate is
    enough) and for unconfirmed cost (a request that may have been billed but reported no
    usage). Billed cost uses the provider's reported usage.
    """
    return max(1, (len(text) + 3) // 4)


class Prices(BaseModel):
    """USD per 1M tokens for one model."""

    model_config = ConfigDict(frozen=True)

    # allow_inf_nan=False: an infinite or NaN price would poison every cost and comparison.
    input_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    #: Price of input tokens served from the provider's prompt cache; None = same as input.
    cache_read_per_mtok: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    #: Where the numbers came from ("user", "paper-table-6", "genai-prices:<provider>/<model>").
    source: str = "user"

    def input_cost(self, tokens: float, cache_read_tokens: float = 0.0) -> float:
        cached = min(cache_read_tokens, tokens)
        cache_price = self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        return ((tokens - cached) * self.input_per_mtok + cached * cache_price) / 1e6

    def output_cost(self, tokens: float) -> float:
        return tokens * self.output_per_mtok / 1e6


#: Table 6 of the paper (USD per 1M tokens), keyed by the paper's model names.
PAPER_TABLE6: dict[str, Prices] = {
    name: Prices(input_per_mtok=i, output_per_mtok=o, source="paper-table-6")
    for name, (i, o) in {
        "gpt-4o": (5.0, 15.0),
        "gpt-3.5-turbo": (3.0, 6.0),
        "llama-3.1-8b": (0.3, 0.61),
        "mistral-7b": (0.25, 0.25),
        "mistral-8x7b": (0.7, 0.7),
        "phi-3-mini": (0.3, 0.9),
        "phi-3-medium": (0.5, 1.5),
        "codestral-22b": (1.0, 3.0),
    }.items()
}

#: Named presets users can pass as ``prices="paper-table-6"``.
PRESETS: dict[str, Mapping[str, Prices]] = {"paper-table-6": PAPER_TABLE6}


def paper_prices(model: str) -> Prices:
    """Prices of ``model`` in the paper's Table 6 (case-insensitive)."""
    key = model.lower()
    if key not in PAPER_TABLE6:
        raise ValueError(f"{model!r} is not in the paper's Table 6; known: {sorted(PAPER_TABLE6)}")
    return PAPER_TABLE6[key]


def lookup_prices(model: str, provider: str | None = None) -> Prices:
    """Current list prices of ``model`` from ``genai-prices``.

    Raises ``ValueError`` naming the model when genai-prices does not know it, so the
    caller can pass ``Prices(...)`` explicitly instead.
    """
    from genai_prices import Usage, calc_price

    try:
        # Price one million tokens of each kind: the per-MTok prices fall out directly,
        # including tiered prices at that volume.
        calc = calc_price(Usage(input_tokens=1_000_000, output_tokens=1_000_000), model, provider_id=provider)
    except LookupError as exc:  # genai-prices raises LookupError subclasses for unknown models
        raise ValueError(
            f"no price known for model {model!r}"
            + (f" (provider {provider!r})" if provider else "")
            + "; pass prices=Prices(input_per_mtok=..., output_per_mtok=...)"
        ) from exc
    cache_read = getattr(calc.model_price, "cache_read_mtok", None)
    cache_read_value = _as_float(cache_read) if cache_read is not None else None
    return Prices(
        input_per_mtok=float(calc.input_price),
        output_per_mtok=float(calc.output_price),
        cache_read_per_mtok=cache_read_value,
        source=f"genai-prices:{calc.provider.id}/{calc.model.id}",
    )


def _as_float(value: Any) -> float | None:
    """genai-prices stores flat prices as Decimal and tiered ones as objects; take the base tier."""
    try:
        return float(value)
    except (TypeError, ValueError):
        base = getattr(value, "base", None)
        return float(base) if base is not None else None


def usage_cost_split(usage: Mapping[str, Any] | None, prices: Prices) -> tuple[float, float]:
    """(input, output) billed USD of one LangChain ``usage_metadata`` dict under ``prices``."""
    if not usage:
        return 0.0, 0.0
    details = usage.get("input_token_details") or {}
    cache_read = details.get("cache_read") or 0
    return prices.input_cost(usage.get("input_tokens", 0) or 0, cache_read), prices.output_cost(
        usage.get("output_tokens", 0) or 0
    )


def usage_cost_usd(usage: Mapping[str, Any] | None, prices: Prices) -> float:
    """Billed cost of one LangChain ``usage_metadata`` dict under ``prices``."""
    return sum(usage_cost_split(usage, prices))
