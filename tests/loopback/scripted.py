"""Deterministic "scripted LLM" used by the loopback servers.

Everything here is pure (no I/O, no clocks, no randomness): the reply is a
function of the request body, the model name and the sample index only.

The default responder is tuned so that LangChain's standard chat-model
integration suite passes against the real ``ChatOpenAI`` / ``ChatMistralAI``
clients:

* tools bound and ``tool_choice`` not ``"none"`` and the last message is not a
  tool result -> one tool call, arguments synthesised from the tool's JSON
  schema (integers are taken, in order, from the digits in the last user
  message; strings from its quoted values, then from a small table of
  plausible values keyed by property name);
* last message is a tool result -> a text answer quoting the tool result;
* ``response_format`` ``json_schema`` -> JSON synthesised from the schema;
  ``json_object`` -> an object whose keys are the identifiers quoted in the
  prompt (e.g. ``'setup'`` and ``'punchline'``);
* otherwise -> a short text echoing the last user message plus a hash of the
  conversation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ScriptedReply",
    "ToolCallSpec",
    "count_words",
    "default_responder",
    "message_text",
    "prompt_token_count",
    "synthesize_from_schema",
]


@dataclass
class ToolCallSpec:
    """One tool call the scripted model emits."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class ScriptedReply:
    """What one choice of the scripted model says.

    ``kind`` is ``"text"`` (``reply_prefix`` and ``(sample i)`` suffixes are
    applied), ``"json"`` (content is a JSON document; left untouched) or
    ``"tool"`` (``tool_calls`` is non-empty).
    """

    content: str = ""
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    kind: str = "text"


# --------------------------------------------------------------------------- #
# Request inspection helpers
# --------------------------------------------------------------------------- #


def message_text(message: dict[str, Any]) -> str:
    """Concatenated text of a chat message's ``content`` (str or block list)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif isinstance(block.get("content"), str):
                    parts.append(block["content"])
        return " ".join(p for p in parts if p)
    return str(content)


def count_words(text: str) -> int:
    """Deterministic token count: number of whitespace-separated words."""
    return len(text.split())


def prompt_token_count(body: dict[str, Any]) -> int:
    """Words of all message contents plus assistant tool-call arguments."""
    total = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += count_words(message_text(message))
        for tc in message.get("tool_calls") or []:
            fn = (tc or {}).get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, dict):
                args = json.dumps(args, ensure_ascii=False)
            if isinstance(args, str):
                total += count_words(args)
    return total


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def _conversation_hash(body: dict[str, Any], model: str) -> str:
    payload = {
        "model": model,
        "messages": body.get("messages") or [],
        "seed": body.get("seed", body.get("random_seed")),
    }
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]


_QUOTED_RE = re.compile(r"""(?<![\w'"])(?:'([^'\n]+)'|"([^"\n]+)"|`([^`\n]+)`)(?![\w])""")
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quoted_values(text: str) -> list[str]:
    out = []
    for m in _QUOTED_RE.finditer(text):
        value = next(g for g in m.groups() if g is not None)
        if value.strip():
            out.append(value)
    return out


def _numbers(text: str) -> list[float]:
    return [float(m.group(0)) for m in _NUMBER_RE.finditer(text)]


# --------------------------------------------------------------------------- #
# JSON-schema synthesis
# --------------------------------------------------------------------------- #

#: Plausible string values keyed by (lower-cased) property name.
CANNED_STRINGS: dict[str, str] = {
    "setup": "Why did the cat sit on the computer?",
    "punchline": "To keep an eye on the mouse!",
    "joke": "Why did the cat sit on the computer? To keep an eye on the mouse!",
    "location": "San Francisco, CA",
    "city": "San Francisco",
    "country": "United States",
    "name": "Alice",
    "customer_name": "Alice",
    "first_name": "Alice",
    "last_name": "Smith",
    "email": "alice@example.com",
    "answer": "42",
    "justification": "It follows from the question.",
    "reasoning": "It follows from the question.",
    "description": "A sample description.",
    "answer_style": "pirate",
    "style": "pirate",
    "query": "loopback",
    "question": "What is the answer?",
    "text": "hello",
    "title": "A Title",
    "summary": "A short summary.",
    "language": "English",
    "color": "blue",
    "fav_color": "blue",
    "date": "2024-01-01",
    "url": "https://example.com",
}

_FORMAT_STRINGS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "alice@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class _SynthContext:
    """Values harvested from the prompt, consumed in order while synthesising."""

    def __init__(self, root: dict[str, Any], hint_text: str = "") -> None:
        self.root = root
        self.strings = _quoted_values(hint_text)
        self.numbers = _numbers(hint_text)
        self.depth = 0

    def next_number(self) -> float | None:
        return self.numbers.pop(0) if self.numbers else None

    def next_string(self) -> str | None:
        return self.strings.pop(0) if self.strings else None

    def resolve(self, schema: Any) -> dict[str, Any]:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            seen += 1
            if not isinstance(ref, str) or not ref.startswith("#"):
                return {}
            target: Any = self.root
            for part in ref.lstrip("#").strip("/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    return {}
                target = target[part]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, dict) else {}
        return schema if isinstance(schema, dict) else {}


def _schema_type(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return non_null[0] if non_null else "null"
    if t is not None:
        return t
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _synth(schema: Any, ctx: _SynthContext, prop_name: str | None) -> Any:
    schema = ctx.resolve(schema)
    ctx.depth += 1
    try:
        if ctx.depth > 12:
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                resolved = [ctx.resolve(o) for o in options]
                non_null = [o for o in resolved if _schema_type(o) != "null"]
                chosen = non_null[0] if non_null else resolved[0]
                merged = {k: v for k, v in schema.items() if k != key}
                return _synth({**merged, **chosen}, ctx, prop_name)
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = ctx.resolve(part)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                req = list(merged.get("required", [])) + list(part.get("required", []))
                merged = {**merged, **part}
                if props:
                    merged["properties"] = props
                if req:
                    merged["required"] = req
            return _synth(merged, ctx, prop_name)

        kind = _schema_type(schema)
        if kind == "object":
            props = schema.get("properties") or {}
            out: dict[str, Any] = {}
            for name, sub in props.items():
                out[name] = _synth(sub, ctx, name)
            return out
        if kind == "array":
            count = int(schema.get("minItems") or 0)
            items = schema.get("items") or {}
            if isinstance(items, list):  # tuple form
                return [_synth(s, ctx, prop_name) for s in items]
            return [_synth(items, ctx, prop_name) for _ in range(count)]
        if kind == "integer":
            return int(_bounded_number(schema, ctx, integer=True))
        if kind == "number":
            return float(_bounded_number(schema, ctx, integer=False))
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        if kind == "string" or kind is None:
            return _string_value(schema, ctx, prop_name)
        return None
    finally:
        ctx.depth -= 1


def _bounded_number(schema: dict[str, Any], ctx: _SynthContext, *, integer: bool) -> float:
    value = ctx.next_number()
    if value is None:
        value = 3
    if integer:
        value = int(value)
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if isinstance(lo, (int, float)) and value < lo:
        value = lo
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and value <= xlo:
        value = xlo + step
    if isinstance(hi, (int, float)) and value > hi:
        value = hi
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and value >= xhi:
        value = xhi - step
    return value


def _string_value(schema: dict[str, Any], ctx: _SynthContext, prop_name: str | None) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_STRINGS:
        value = _FORMAT_STRINGS[fmt]
    else:
        quoted = ctx.next_string()
        if quoted is not None:
            value = quoted
        elif prop_name and prop_name.lower() in CANNED_STRINGS:
            value = CANNED_STRINGS[prop_name.lower()]
        elif prop_name:
            value = f"example {prop_name}"
        else:
            value = "foo"
    min_len = schema.get("minLength")
    if isinstance(min_len, int) and len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    max_len = schema.get("maxLength")
    if isinstance(max_len, int) and len(value) > max_len:
        value = value[:max_len]
    return value


def synthesize_from_schema(schema: dict[str, Any], hint_text: str = "") -> Any:
    """Return an instance of ``schema`` (JSON Schema) built deterministically.

    ``hint_text`` (usually the last user message) supplies numbers and quoted
    strings that are consumed in property order before falling back to
    defaults (3 / 3.0 / canned strings).
    """
    ctx = _SynthContext(schema, hint_text)
    return _synth(schema, ctx, None)


# --------------------------------------------------------------------------- #
# The default responder
# --------------------------------------------------------------------------- #


def _tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    if isinstance(tool.get("function"), dict):
        return tool["function"]
    return tool


def _tool_name(tool: dict[str, Any]) -> str | None:
    name = _tool_function(tool).get("name")
    return name if isinstance(name, str) else None


def _choose_tool(tools: list[dict[str, Any]], tool_choice: Any, last_user: str) -> dict[str, Any] | None:
    named = None
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if isinstance(fn, dict):
            named = fn.get("name")
        elif isinstance(tool_choice.get("name"), str):
            named = tool_choice["name"]
    elif isinstance(tool_choice, str) and tool_choice not in {"auto", "any", "required", "none"}:
        named = tool_choice
    if named:
        for tool in tools:
            if _tool_name(tool) == named:
                return tool
    # First tool whose name appears in the last user message.
    best: tuple[int, dict[str, Any]] | None = None
    for tool in tools:
        name = _tool_name(tool)
        if name:
            pos = last_user.find(name)
            if pos >= 0:
                # prefer the longest name at the earliest position
                key = pos * 1000 - len(name)
                if best is None or key < best[0]:
                    best = (key, tool)
    if best is not None:
        return best[1]
    return tools[0] if tools else None


def _tool_name_for_result(messages: list[dict[str, Any]], tool_msg: dict[str, Any]) -> str:
    if isinstance(tool_msg.get("name"), str) and tool_msg["name"]:
        return tool_msg["name"]
    call_id = tool_msg.get("tool_call_id")
    for message in reversed(messages):
        for tc in message.get("tool_calls") or []:
            if tc and tc.get("id") == call_id:
                fn = tc.get("function") or {}
                if isinstance(fn.get("name"), str):
                    return fn["name"]
    return "tool"


def _truncate_words(text: str, limit: int) -> str:
    words = text.split()
    if len(words) <= limit:
        return " ".join(words)
    return " ".join(words[:limit]) + " ..."


def _json_object_reply(body: dict[str, Any]) -> dict[str, Any]:
    keys: list[str] = []
    for message in body.get("messages") or []:
        if message.get("role") not in {"user", "system", "developer"}:
            continue
        for value in _quoted_values(message_text(message)):
            if _IDENT_RE.match(value) and value not in keys:
                keys.append(value)
    if not keys:
        return {"response": "ok"}
    return {k: CANNED_STRINGS.get(k.lower(), f"example {k}") for k in keys}


def default_responder(body: dict[str, Any], *, model: str = "") -> ScriptedReply:
    """The deterministic scripted LLM (see module docstring)."""
    messages = [m for m in (body.get("messages") or []) if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    last_user = _last_user_text(messages)
    tools = [t for t in (body.get("tools") or []) if isinstance(t, dict)]
    tool_choice = body.get("tool_choice")

    if tools and tool_choice != "none" and last.get("role") != "tool":
        tool = _choose_tool(tools, tool_choice, last_user)
        if tool is not None:
            fn = _tool_function(tool)
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            args = synthesize_from_schema(params, last_user)
            if not isinstance(args, dict):
                args = {}
            return ScriptedReply(tool_calls=[ToolCallSpec(name=fn["name"], arguments=args)], kind="tool")

    if last.get("role") == "tool":
        name = _tool_name_for_result(messages, last)
        result = _truncate_words(message_text(last), 20) or "(empty)"
        return ScriptedReply(content=f"The {name} tool returned: {result}", kind="text")

    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        rf_type = response_format.get("type")
        if rf_type == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") or {"type": "object", "properties": {}}
            value = synthesize_from_schema(schema, "")
            return ScriptedReply(content=json.dumps(value, ensure_ascii=False), kind="json")
        if rf_type == "json_object":
            return ScriptedReply(content=json.dumps(_json_object_reply(body), ensure_ascii=False), kind="json")

    echo = _truncate_words(last_user, 24) if last_user else "nothing"
    digest = _conversation_hash(body, model)
    return ScriptedReply(content=f"Loopback reply to: {echo} [ref {digest}]", kind="text")
