"""LangChain messages -> the text the router and reward model read, and input checks.

Rendering: one line block per message, ``"<role>: <text>"``, tool calls as JSON, so the
encoders see the whole conversation (system prompt and every turn), not just the last
user message. Truncation to the encoder's limit happens in ``encoding.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage

#: Content block types that are text for our purposes.
TEXT_BLOCK_TYPES = frozenset({"text"})
#: Block types that carry no user-visible content and can be skipped when rendering.
IGNORABLE_BLOCK_TYPES = frozenset({"reasoning", "thinking", "tool_use", "tool_call", "function_call"})


@dataclass(frozen=True)
class RenderedConversation:
    system: str
    turns: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole conversation as one string (system first)."""
        return "\n".join(([self.system] if self.system else []) + list(self.turns))


def content_block_types(message: BaseMessage) -> set[str]:
    """The non-text content block types in a message (e.g. {"image_url"})."""
    content = message.content
    if isinstance(content, str):
        return set()
    found: set[str] = set()
    for block in content:
        if isinstance(block, str):
            continue
        kind = block.get("type", "unknown") if isinstance(block, dict) else type(block).__name__
        if kind not in TEXT_BLOCK_TYPES and kind not in IGNORABLE_BLOCK_TYPES:
            found.add(kind)
    return found


def message_text(message: BaseMessage) -> str:
    """The text of a message; non-text blocks are skipped (they are validated elsewhere)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def render_tool_calls(message: AIMessage) -> str:
    if not message.tool_calls:
        return ""
    calls = [{"name": c["name"], "args": c["args"]} for c in message.tool_calls]
    return json.dumps(calls, ensure_ascii=False, sort_keys=True)


def render_message(message: BaseMessage) -> str:
    role = {"human": "user", "ai": "assistant"}.get(message.type, message.type)
    text = message_text(message)
    if isinstance(message, AIMessage) and message.tool_calls:
        text = (text + "\n" if text else "") + "tool calls: " + render_tool_calls(message)
    if isinstance(message, ToolMessage):
        role = f"tool[{message.name or message.tool_call_id}]"
    return f"{role}: {text}"


def render_conversation(messages: Sequence[BaseMessage]) -> RenderedConversation:
    """System messages (joined) and the other turns, oldest first."""
    system = "\n".join(render_message(m) for m in messages if isinstance(m, SystemMessage))
    turns = tuple(render_message(m) for m in messages if not isinstance(m, SystemMessage))
    return RenderedConversation(system=system, turns=turns)


def render_candidate(message: AIMessage) -> str:
    """What the reranker reads for one sampled answer: its text plus any tool calls."""
    text = message_text(message)
    calls = render_tool_calls(message)
    return text + ("\n" if text and calls else "") + (f"tool calls: {calls}" if calls else "")


def validate_messages(messages: Sequence[BaseMessage], accepted_types_by_member: dict[str, Iterable[str]]) -> None:
    """Raise ``ValueError`` for inputs no member can take: no messages, or content blocks
    (images, audio, files...) that some pool member cannot accept."""
    if not messages:
        raise ValueError("BestRoute needs at least one message; got an empty message list")
    used: set[str] = set()
    for message in messages:
        used |= content_block_types(message)
    if not used:
        return
    refusing = {
        name: sorted(used - set(types)) for name, types in accepted_types_by_member.items() if used - set(types)
    }
    if refusing:
        detail = "; ".join(f"{name} cannot take {kinds}" for name, kinds in refusing.items())
        raise ValueError(
            f"the messages contain content of type(s) {sorted(used)} that not every pool member accepts ({detail}). "
            "Declare what a member accepts with PoolMember(extra_content_types={...}) or send text only."
        )
