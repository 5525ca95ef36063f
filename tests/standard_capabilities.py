"""The capabilities every standard-suite class in this repo declares.

Mixed into ``ChatModelUnitTests`` / ``ChatModelIntegrationTests`` subclasses (put it
first in the bases) so the flags are stated once.
"""

from __future__ import annotations


class ToolsJsonUsageOverride:
    """Tool calling and tool choice, structured output, JSON mode, usage metadata,
    and a per-call ``model=`` override (each class names its ``model_override_value``)."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return True
