"""Pools of real ChatOpenAI / ChatMistralAI clients pointed at the loopback servers."""

from __future__ import annotations

from typing import Any

from langchain_mistralai import ChatMistralAI
from langchain_openai import ChatOpenAI

from bestroute_lc import Pool, PoolMember, Prices
from tests.loopback.fixtures import get_shared_server

#: Content block types the OpenAI and Mistral chat APIs take besides text.
OPENAI_CONTENT = frozenset({"image", "image_url", "file", "audio", "input_audio"})
MISTRAL_CONTENT = frozenset({"image", "image_url"})


def openai_client(model: str, base_url: str | None = None, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, base_url=base_url or get_shared_server("openai").base_url, api_key="test", max_retries=0, timeout=10, **kwargs
    )


def mistral_client(model: str, endpoint: str | None = None, **kwargs: Any) -> ChatMistralAI:
    return ChatMistralAI(
        model=model, endpoint=endpoint or get_shared_server("mistral").base_url, api_key="test", max_retries=0, timeout=10, **kwargs
    )


def loopback_pool(openai_url: str | None = None, mistral_url: str | None = None, *, with_mistral: bool = True, **member_kwargs: Any) -> Pool:
    """Reference gpt-large (OpenAI), gpt-mini (OpenAI, n in one request), mistral-small (n requests)."""
    members = [
        PoolMember.from_model(
            openai_client("loop-gpt-large", openai_url), name="gpt-large",
            prices=Prices(input_per_mtok=5, output_per_mtok=15), avg_output_tokens=40, extra_content_types=OPENAI_CONTENT, **member_kwargs,
        ),
        PoolMember.from_model(
            openai_client("loop-gpt-mini", openai_url), name="gpt-mini",
            prices=Prices(input_per_mtok=0.15, output_per_mtok=0.6), avg_output_tokens=40, extra_content_types=OPENAI_CONTENT, **member_kwargs,
        ),
    ]
    if with_mistral:
        members.append(
            PoolMember.from_model(
                mistral_client("loop-mistral-small", mistral_url), name="mistral-small",
                prices=Prices(input_per_mtok=0.1, output_per_mtok=0.3), avg_output_tokens=40, extra_content_types=MISTRAL_CONTENT, **member_kwargs,
            )
        )
    return Pool(members=members, reference="gpt-large")
