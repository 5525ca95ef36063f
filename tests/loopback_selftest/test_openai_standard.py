"""LangChain's standard chat-model integration suite, run with the real
``ChatOpenAI`` against the loopback OpenAI-protocol server."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from tests.loopback.fixtures import get_shared_server
from tests.standard_capabilities import ToolsJsonUsageOverride

pytestmark = [
    pytest.mark.network_loopback,
    # client-side noise: the OpenAI SDK's parse() result and the V1-schema fallback
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
    pytest.mark.filterwarnings("ignore:Received a Pydantic BaseModel V1 schema:UserWarning"),
    pytest.mark.filterwarnings("ignore:OpenAI may require a filename:UserWarning"),
]


class TestLoopbackChatOpenAI(ToolsJsonUsageOverride, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "loop-gpt",
            "base_url": get_shared_server("openai").base_url,
            "api_key": "test",
            "max_retries": 0,
            "timeout": 10,
            # The real OpenAI endpoint turns this on by default; with a custom
            # base_url ChatOpenAI leaves it off, so ask for usage explicitly.
            "stream_usage": True,
        }

    @property
    def model_override_value(self) -> str:
        return "loop-gpt-mini"

    # Multimodal tests: the suite downloads its media with httpx.get, which the
    # conftest replaces with small local files (no network here). The scripted
    # model ignores non-text blocks; these tests check the wire format only.
    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

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

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def enable_vcr_tests(self) -> bool:  # test_stream_time needs VCR cassettes + benchmark
        return False
