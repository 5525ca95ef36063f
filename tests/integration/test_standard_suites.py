"""LangChain's standard chat-model integration suite on BestRouteChatModel.

Pool members are the real ``ChatOpenAI`` and ``ChatMistralAI`` clients talking HTTP to
loopback servers (tests/loopback). The router is a tiny random encoder whose heads are
set to fixed match probabilities, so each class exercises one routing path:

- ``TestBestRouteMistralBestOfTwo``: routes to mistral-small with n = 2 (two requests,
  prompt billed twice), reranked by a tiny reward model;
- ``TestBestRouteOpenAIBestOfThree``: routes to gpt-mini with n = 3 in one request;
- ``TestBestRouteSingleSample``: routes to gpt-mini with n = 1 (streams the member's tokens),
  with every content type the OpenAI API takes.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from bestroute_lc import BestRouteChatModel
from tests.helpers import fixed_router, tiny_reward_model
from tests.loopback_pools import loopback_pool
from tests.standard_capabilities import ToolsJsonUsageOverride

pytestmark = [
    pytest.mark.network_loopback,
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
    pytest.mark.filterwarnings("ignore:Received a Pydantic BaseModel V1 schema:UserWarning"),
]

_REWARD = None


def _reward() -> Any:
    global _REWARD
    if _REWARD is None:
        _REWARD = tiny_reward_model()
    return _REWARD


class _BestRouteSuite(ToolsJsonUsageOverride, ChatModelIntegrationTests):
    table: dict[str, list[float]]
    threshold = 0.6
    with_mistral = True

    @property
    def chat_model_class(self) -> type[BestRouteChatModel]:
        return BestRouteChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "pool": loopback_pool(with_mistral=self.with_mistral),
            "router": fixed_router(self.table, "gpt-large"),
            "reranker": _reward(),
            "threshold": self.threshold,
        }

    @property
    def model_override_value(self) -> str:
        # A per-call model= names a pool member and pins the call to it.
        return "gpt-large"

    @property
    def supports_image_inputs(self) -> bool:
        return True  # both the OpenAI and the Mistral API take images

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False  # Anthropic-format content blocks: neither provider in the pool takes them

    @property
    def enable_vcr_tests(self) -> bool:
        return False  # test_stream_time replays VCR cassettes recorded against a real provider

    expected_member: str
    expected_n: int

    def test_routes_as_configured(self, model: BestRouteChatModel) -> None:
        """The suite above really went through the routing path this class is for."""
        message = model.invoke("Hello")
        decision = message.response_metadata["bestroute"]
        assert (decision["member"], decision["n"]) == (self.expected_member, self.expected_n)
        assert decision["samples_received"] == self.expected_n
        assert decision["actual_cost_usd"] > 0
        if self.expected_n > 1:
            assert len(decision["candidate_scores"]) == self.expected_n


class TestBestRouteMistralBestOfTwo(_BestRouteSuite):
    # mistral-small reaches 0.6 at n = 2; gpt-mini only at n = 3 (and costs more).
    table = {"gpt-mini": [0.2, 0.3, 0.9], "mistral-small": [0.1, 0.7, 0.8]}
    expected_member, expected_n = "mistral-small", 2

    @property
    def supports_pdf_inputs(self) -> bool:
        return False  # mistral-small is in the pool and the Mistral chat API takes no PDF blocks

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # likewise, no audio blocks in the Mistral chat API

    @property
    def supports_image_tool_message(self) -> bool:
        return False  # the Mistral chat API takes tool results as text only

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False  # idem


class TestBestRouteOpenAIBestOfThree(_BestRouteSuite):
    with_mistral = False
    table = {"gpt-mini": [0.2, 0.3, 0.9]}
    expected_member, expected_n = "gpt-mini", 3

    @property
    def supports_pdf_inputs(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supports_pdf_tool_message(self) -> bool:
        return True


class TestBestRouteSingleSample(TestBestRouteOpenAIBestOfThree):
    table = {"gpt-mini": [0.9, 0.95, 0.97]}
    expected_member, expected_n = "gpt-mini", 1
