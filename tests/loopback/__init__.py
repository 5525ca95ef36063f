"""Deterministic loopback LLM servers (OpenAI Chat Completions and Mistral chat
protocols) for tests that drive the real LangChain provider clients.

See :mod:`tests.loopback.server` for the API and :mod:`tests.loopback.fixtures`
for ready-made pytest fixtures.
"""

from .scripted import (
    ScriptedReply,
    ToolCallSpec,
    count_words,
    default_responder,
    prompt_token_count,
    synthesize_from_schema,
)
from .server import Fault, FaultRule, LoopbackLLMServer, ModelBehavior, RequestLog

__all__ = [
    "Fault",
    "FaultRule",
    "LoopbackLLMServer",
    "ModelBehavior",
    "RequestLog",
    "ScriptedReply",
    "ToolCallSpec",
    "count_words",
    "default_responder",
    "prompt_token_count",
    "synthesize_from_schema",
]
