"""Scrub key-like strings from text that leaves the process (error messages in metadata,
exceptions, logs, callbacks, traces, artifacts): an upstream that echoes the API key in an
error must not put it anywhere else."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_PATTERNS = [
    # Provider keys: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...), Mistral/others by shape below.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-" + MASK),
    # HTTP auth headers.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 " + MASK),
    # key = value / "key": "value" for secret-looking names.
    (re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)"
                r"([^\s\"',;}{]{4,})"), r"\1" + MASK),
    # Long opaque tokens (32+ characters mixing letters and digits), e.g. a bare key echoed back.
    (re.compile(r"\b(?=[A-Za-z0-9_\-]*[A-Za-z])(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{32,}\b"), MASK),
]
_SECRET_KEY_NAMES = re.compile(r"(?i)(api[_-]?key|token|secret|password|authorization|credential)")


def scrub_secrets(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_mapping(value: Any) -> Any:
    """A copy of a config-like structure with secret-named keys masked and strings scrubbed."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY_NAMES.search(k) else scrub_mapping(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_mapping(v) for v in value]
    if isinstance(value, str):
        return scrub_secrets(value)
    return value
