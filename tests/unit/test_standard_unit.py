"""LangChain's standard chat-model unit suite on BestRouteChatModel (no network:
the pool's clients point at loopback addresses but no request is sent)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from bestroute_lc import BestRouteChatModel
from tests.helpers import LengthReranker, fixed_router
from tests.loopback_pools import loopback_pool
from tests.standard_capabilities import ToolsJsonUsageOverride

_UNUSED = "http://127.0.0.1:9/v1"  # discard port: nothing is sent in unit tests


class TestBestRouteChatModelUnit(ToolsJsonUsageOverride, ChatModelUnitTests):
    """Skipped by the suite itself, and why that is right here:
    test_init_from_env: BestRoute reads no environment variables (its members do);
    test_serdes: a BestRouteChatModel holds live clients and torch modules, which
    LangChain's serializer cannot represent (``is_lc_serializable()`` is False)."""

    @property
    def chat_model_class(self) -> type[BestRouteChatModel]:
        return BestRouteChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "pool": loopback_pool(_UNUSED, _UNUSED),
            "router": fixed_router({"gpt-mini": [0.2, 0.3, 0.9], "mistral-small": [0.1, 0.7, 0.8]}, "gpt-large"),
            "reranker": LengthReranker(),
        }

    @property
    def model_override_value(self) -> str:
        return "gpt-large"
