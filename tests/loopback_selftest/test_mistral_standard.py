"""LangChain's standard chat-model integration suite, run with the real
``ChatMistralAI`` against the loopback Mistral-protocol server."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_mistralai import ChatMistralAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from tests.loopback.fixtures import get_shared_server
from tests.standard_capabilities import ToolsJsonUsageOverride

pytestmark = pytest.mark.network_loopback


class TestLoopbackChatMistralAI(ToolsJsonUsageOverride, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatMistralAI]:
        return ChatMistralAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "loop-mistral",
            "endpoint": get_shared_server("mistral").base_url,
            "api_key": "test",
            "max_retries": 0,
            "timeout": 10,
        }

    @property
    def model_override_value(self) -> str:
        return "loop-mistral-small"

    # The suite downloads its media with httpx.get, which the conftest replaces
    # with small local files. Only what Mistral's chat API accepts is turned on
    # (image_url blocks); the scripted model ignores non-text blocks.
    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def enable_vcr_tests(self) -> bool:
        return False

    # ChatMistralAI's *non-streaming* path reports ``self.model`` (not the
    # response's ``model``) as ``response_metadata["model_name"]``
    # (langchain_mistralai.chat_models.ChatMistralAI._create_chat_result), so the
    # standard assertion cannot hold for a per-call override whatever the server
    # answers: strict xfail (the suite's required convention for overrides), plus
    # companion tests that check the override reaches the wire and is echoed.
    # The streaming override tests (the client reads the chunk's ``model``) run
    # unmodified and pass.
    _OVERRIDE_REASON = (
        "ChatMistralAI (non-streaming) reports self.model as model_name, not the "
        "response's model; client limitation, see test_*_model_override_on_wire"
    )

    @pytest.mark.xfail(reason=_OVERRIDE_REASON, strict=True)
    def test_invoke_with_model_override(self, model: Any) -> None:
        super().test_invoke_with_model_override(model)

    @pytest.mark.xfail(reason=_OVERRIDE_REASON, strict=True)
    async def test_ainvoke_with_model_override(self, model: Any) -> None:
        await super().test_ainvoke_with_model_override(model)

    def test_invoke_model_override_on_wire(self, model: Any) -> None:
        srv = get_shared_server("mistral")
        override = self.model_override_value
        before = len(srv.requests)
        result = model.invoke("Hello", model=override)
        assert result.content
        sent = srv.requests.snapshot()[before:]
        assert [r["body"]["model"] for r in sent] == [override]

    async def test_ainvoke_model_override_on_wire(self, model: Any) -> None:
        srv = get_shared_server("mistral")
        override = self.model_override_value
        before = len(srv.requests)
        result = await model.ainvoke("Hello", model=override)
        assert result.content
        sent = srv.requests.snapshot()[before:]
        assert [r["body"]["model"] for r in sent] == [override]
