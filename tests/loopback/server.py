"""Deterministic loopback HTTP servers speaking the OpenAI Chat Completions and
the Mistral chat protocols (standard library only).

Typical use::

    from tests.loopback import Fault, LoopbackLLMServer, ModelBehavior

    with LoopbackLLMServer("openai", models={"model-a": ModelBehavior(reply_prefix="A: ")}) as srv:
        llm = ChatOpenAI(model="model-a", base_url=srv.base_url, api_key="test", max_retries=0)
        srv.set_fault("model-a", Fault.HTTP_500, times=2)   # next 2 requests -> 500
        ...
        assert srv.requests[-1]["body"]["model"] == "model-a"

The server binds 127.0.0.1 on an ephemeral port, serves from a daemon thread
(one daemon thread per connection), and ``stop()`` wakes every sleeping
handler (latency / TIMEOUT faults), closes open connections and joins the
threads, so nothing hangs after a test.
"""

from __future__ import annotations

import copy
import enum
import http.server
import inspect
import json
import math
import re
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .scripted import (
    ScriptedReply,
    ToolCallSpec,
    count_words,
    default_responder,
    prompt_token_count,
)

__all__ = [
    "Fault",
    "FaultRule",
    "LoopbackLLMServer",
    "ModelBehavior",
    "RequestLog",
    "ScriptedReply",
    "ToolCallSpec",
]

PROTOCOLS = ("openai", "mistral")
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_MODELS_PATHS = ("/v1/models", "/models")


class Fault(str, enum.Enum):
    """Injectable failure modes."""

    HTTP_500 = "http_500"
    """HTTP 500 with a protocol-shaped error body (openai.InternalServerError /
    httpx.HTTPStatusError for Mistral)."""
    HTTP_429 = "http_429"
    """HTTP 429 with ``Retry-After`` (seconds) and ``retry-after-ms`` headers
    (openai.RateLimitError / httpx.HTTPStatusError for Mistral)."""
    MALFORMED_JSON = "malformed_json"
    """HTTP 200 whose JSON body (or, when streaming, an SSE ``data:`` line) is
    truncated / not valid JSON."""
    EMPTY_CONTENT = "empty_content"
    """A well-formed reply whose content is ``""`` (no content deltas when
    streaming), no tool calls, ``completion_tokens == 0``."""
    TIMEOUT = "timeout"
    """Sleep ``hang_s`` (default 30 s) before answering; the sleep ends early when
    the client disconnects or the server stops."""


@dataclass
class FaultRule:
    """One entry of a model's fault plan.

    ``remaining`` is how many more requests it applies to (``None`` = always).
    """

    fault: Fault
    remaining: int | None = None
    retry_after_s: float | None = None
    hang_s: float | None = None
    status: int | None = None
    """Override the HTTP status for HTTP_500/HTTP_429 (e.g. 503)."""


@dataclass
class ModelBehavior:
    """How one hosted model answers.

    ``responder(request_body)`` (or ``responder(request_body, sample_index)``)
    may return a ``str`` (plain text), a :class:`ScriptedReply`, or a dict
    ``{"content": str, "tool_calls": [{"name": ..., "arguments": {...}}]}``.
    ``None`` means the deterministic default responder
    (:func:`tests.loopback.scripted.default_responder`).

    ``reply_prefix`` is prepended to text replies (not to JSON or tool calls).
    ``latency_s`` is slept before answering; ``chunk_delay_s`` between SSE chunks.
    ``faults`` is the initial fault plan (normally managed via
    ``LoopbackLLMServer.set_fault``).
    """

    reply_prefix: str = ""
    responder: Callable[..., Any] | None = None
    latency_s: float = 0.0
    chunk_delay_s: float = 0.0
    faults: list[FaultRule] = field(default_factory=list)


class RequestLog:
    """Thread-safe, list-like log of received requests.

    Each entry is a dict with keys ``method``, ``path``, ``model``, ``body``
    (parsed JSON or ``None``), ``headers``, ``status`` (HTTP status sent) and
    ``fault`` (the :class:`Fault` applied, or ``None``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []

    def append(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def bodies(self, path: str | None = None) -> list[Any]:
        return [r["body"] for r in self.snapshot() if path is None or r["path"] == path]

    def for_model(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.snapshot() if r.get("model") == model]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.snapshot())

    def __getitem__(self, index: Any) -> Any:
        with self._lock:
            return self._items[index]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} requests)"


@dataclass
class _Choice:
    index: int
    content: str
    tool_calls: list[tuple[str, ToolCallSpec]]  # (id, spec)
    finish_reason: str
    completion_tokens: int


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # bursts of parallel calls (batch / best-of-n fan-out)
    owner: LoopbackLLMServer

    def server_bind(self) -> None:  # skip the reverse-DNS lookup of HTTPServer
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port


class _ClientGone(Exception):
    pass


class LoopbackLLMServer:
    """A chat-completions server on 127.0.0.1 for ``protocol`` ``"openai"`` or
    ``"mistral"``, hosting several models (selected by the request's ``model``).

    Args:
        protocol: ``"openai"`` or ``"mistral"``.
        models: model names, or a mapping name -> :class:`ModelBehavior` (or
            ``None`` for the default behaviour).
        allow_unknown_models: if ``True`` (default) a request for a model not in
            ``models`` is served with a default behaviour (and the model is
            added); if ``False`` it gets a 404 ``model_not_found`` error.
        api_key: if set, requests without ``Authorization: Bearer <api_key>``
            get 401.
        default_hang_s: sleep of a ``Fault.TIMEOUT`` without ``hang_s``.
        default_retry_after_s: ``Retry-After`` of a ``Fault.HTTP_429`` without
            ``retry_after_s`` (sent as whole seconds in ``Retry-After`` and as
            milliseconds in ``retry-after-ms``, which the OpenAI SDK prefers).
        keep_alive: keep HTTP/1.1 connections open between requests. Off by
            default: every response carries ``Connection: close``, because
            ChatOpenAI shares one cached async HTTP client per base_url across
            instances, and a pooled connection created in one test's event loop
            breaks ("Event loop is closed") when reused from the next test's loop.
    """

    def __init__(
        self,
        protocol: str = "openai",
        models: Mapping[str, ModelBehavior | None] | Iterable[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_unknown_models: bool = True,
        api_key: str | None = None,
        default_hang_s: float = 30.0,
        default_retry_after_s: float = 0.1,
        keep_alive: bool = False,
    ) -> None:
        if protocol not in PROTOCOLS:
            msg = f"protocol must be one of {PROTOCOLS}, got {protocol!r}"
            raise ValueError(msg)
        self.protocol = protocol
        self.host = host
        self._requested_port = port
        self.allow_unknown_models = allow_unknown_models
        self.api_key = api_key
        self.default_hang_s = default_hang_s
        self.default_retry_after_s = default_retry_after_s
        self.keep_alive = keep_alive

        self._lock = threading.RLock()
        self._behaviors: dict[str, ModelBehavior] = {}
        if models is not None:
            items = models.items() if isinstance(models, Mapping) else ((m, None) for m in models)
            for name, behavior in items:
                self._behaviors[name] = behavior if behavior is not None else ModelBehavior()
        self._initial_behaviors = copy.deepcopy(self._behaviors)
        self.requests = RequestLog()
        #: What a provider would bill: (model, prompt tokens, completion tokens) of every request
        #: it did the work for, whether or not the client stayed to read the answer (hangs and
        #: broken bodies included; HTTP errors bill nothing).
        self.billing: list[tuple[str, int, int]] = []
        self._counter = 0
        self._stop_event = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LoopbackLLMServer:
        with self._lock:
            if self._httpd is not None:
                return self
            self._stop_event.clear()
            httpd = _HTTPServer((self.host, self._requested_port), _Handler)
            httpd.owner = self
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"loopback-{self.protocol}-{httpd.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd, self._thread = None, None
        if httpd is None:
            return
        self._stop_event.set()  # wake latency / TIMEOUT sleeps
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        deadline = time.monotonic() + timeout
        for _, t in conns:
            t.join(max(0.0, deadline - time.monotonic()))

    close = stop

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> LoopbackLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            msg = "server not started"
            raise RuntimeError(msg)
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: ``base_url`` for ChatOpenAI, ``endpoint``
        for ChatMistralAI (both post to ``{base_url}/chat/completions``)."""
        return f"{self.url}/v1"

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[str]:
        with self._lock:
            return [m for m in self._behaviors if m != "*"]

    def add_model(self, name: str, behavior: ModelBehavior | None = None) -> ModelBehavior:
        with self._lock:
            b = behavior if behavior is not None else ModelBehavior()
            self._behaviors[name] = b
            return b

    def behavior(self, name: str) -> ModelBehavior:
        with self._lock:
            return self._behaviors[name]

    def set_behavior(self, name: str, **changes: Any) -> ModelBehavior:
        """Update fields of a model's behaviour (adding the model if unknown)."""
        with self._lock:
            current = self._behaviors.get(name) or ModelBehavior()
            new = replace(current, **changes)
            self._behaviors[name] = new
            return new

    # ------------------------------------------------------------------ faults
    def set_fault(
        self,
        model: str,
        fault: Fault | str,
        times: int | None = None,
        *,
        retry_after_s: float | None = None,
        hang_s: float | None = None,
        status: int | None = None,
    ) -> None:
        """Replace ``model``'s fault plan: fail the next ``times`` requests with
        ``fault`` (``times=None``: every request until cleared).
        ``model="*"`` applies to every model that has no plan of its own."""
        with self._lock:
            b = self._ensure_behavior(model)
            b.faults = []
        self.add_fault(model, fault, times, retry_after_s=retry_after_s, hang_s=hang_s, status=status)

    def add_fault(
        self,
        model: str,
        fault: Fault | str,
        times: int | None = None,
        *,
        retry_after_s: float | None = None,
        hang_s: float | None = None,
        status: int | None = None,
    ) -> None:
        """Append to ``model``'s fault plan (rules are consumed in order)."""
        if times is not None and times < 0:
            msg = "times must be >= 0 or None"
            raise ValueError(msg)
        rule = FaultRule(Fault(fault), times, retry_after_s, hang_s, status)
        with self._lock:
            self._ensure_behavior(model).faults.append(rule)

    def clear_faults(self, model: str | None = None) -> None:
        with self._lock:
            targets = [model] if model is not None else list(self._behaviors)
            for name in targets:
                if name in self._behaviors:
                    self._behaviors[name].faults = []

    def pending_faults(self, model: str) -> list[FaultRule]:
        with self._lock:
            b = self._behaviors.get(model)
            return [replace(r) for r in b.faults] if b else []

    def _ensure_behavior(self, model: str) -> ModelBehavior:
        b = self._behaviors.get(model)
        if b is None:
            if not self.allow_unknown_models and model != "*":
                msg = f"model {model!r} is not hosted (allow_unknown_models=False); add_model() it first"
                raise KeyError(msg)
            b = self._behaviors[model] = ModelBehavior()
        return b

    def _take_fault(self, model: str) -> FaultRule | None:
        """Consume and return the next applicable rule (model's plan, then "*")."""
        with self._lock:
            for name in (model, "*"):
                b = self._behaviors.get(name)
                if b is None:
                    continue
                while b.faults:
                    rule = b.faults[0]
                    if rule.remaining is None:
                        return replace(rule)
                    if rule.remaining <= 0:
                        b.faults.pop(0)
                        continue
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        b.faults.pop(0)
                    return replace(rule)
            return None

    # ------------------------------------------------------------------ misc
    def reset(self) -> None:
        """Clear the request log and every fault, and restore the behaviours
        given at construction (models added later are removed)."""
        with self._lock:
            self.requests.clear()
            self._behaviors = copy.deepcopy(self._initial_behaviors)

    def request_count(self, model: str | None = None) -> int:
        if model is None:
            return len(self.requests)
        return len(self.requests.for_model(model))

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _sleep(self, seconds: float, conn: socket.socket | None = None) -> None:
        """Interruptible sleep; raises _ClientGone if the client disconnects."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stop_event.wait(min(left, 0.05)):
                raise _ClientGone
            if conn is not None and _peer_closed(conn):
                raise _ClientGone

    # ------------------------------------------------------------------ replies
    def _behavior_for(self, model: str) -> ModelBehavior | None:
        with self._lock:
            b = self._behaviors.get(model)
            if b is None and self.allow_unknown_models:
                b = self._behaviors[model] = ModelBehavior()
            return b

    def _scripted(self, behavior: ModelBehavior, body: dict[str, Any], model: str, n: int) -> list[ScriptedReply]:
        responder = behavior.responder
        if responder is None:
            base = default_responder(body, model=model)
            return [_with_sample(base, i, n, behavior.reply_prefix) for i in range(n)]
        per_sample = _accepts_sample_index(responder)
        out = []
        base_reply = None if per_sample else _coerce_reply(responder(body))
        for i in range(n):
            if per_sample:
                out.append(_with_sample(_coerce_reply(responder(body, i)), i, 1, behavior.reply_prefix))
            else:
                assert base_reply is not None
                out.append(_with_sample(base_reply, i, n, behavior.reply_prefix))
        return out

    def _build_choices(
        self, body: dict[str, Any], model: str, behavior: ModelBehavior, fault: Fault | None
    ) -> list[_Choice]:
        n = body.get("n") or 1
        try:
            n = max(1, int(n))
        except (TypeError, ValueError):
            n = 1
        if fault is Fault.EMPTY_CONTENT:
            replies = [ScriptedReply(content="", kind="text") for _ in range(n)]
        else:
            replies = self._scripted(behavior, body, model, n)
        stops = body.get("stop")
        if isinstance(stops, str):
            stops = [stops]
        stops = [s for s in (stops or []) if isinstance(s, str) and s]
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        choices = []
        for i, reply in enumerate(replies):
            content = reply.content or ""
            finish = "stop"
            if stops and content:
                cut = min((p for p in (content.find(s) for s in stops) if p >= 0), default=-1)
                if cut >= 0:
                    content = content[:cut]
            if isinstance(limit, int) and limit >= 0 and count_words(content) > limit:
                content = "".join(re.findall(r"\s*\S+", content)[:limit])
                finish = "length"
            calls = []
            for spec in reply.tool_calls:
                calls.append((self._tool_call_id(), spec))
            if calls and finish == "stop":
                finish = "tool_calls"
            tokens = count_words(content) + sum(count_words(s.arguments_json()) for _, s in calls)
            choices.append(_Choice(i, content, calls, finish, tokens))
        return choices

    def _tool_call_id(self) -> str:
        k = self._next_id()
        if self.protocol == "mistral":  # Mistral requires 9 alphanumerics
            return _base62(k * 7919 + 104729).rjust(9, "0")[-9:]
        return f"call_loop{k:06d}"

    def _usage(self, body: dict[str, Any], choices: list[_Choice]) -> dict[str, int]:
        prompt = prompt_token_count(body)
        completion = sum(c.completion_tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion_json(self, body: dict[str, Any], model: str, choices: list[_Choice], rid: str, created: int) -> dict[str, Any]:
        usage = self._usage(body, choices)
        out_choices = []
        for c in choices:
            if self.protocol == "openai":
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": (c.content if (c.content or not c.tool_calls) else None),
                    "refusal": None,
                }
                if c.tool_calls:
                    message["tool_calls"] = [
                        {"id": tid, "type": "function", "function": {"name": s.name, "arguments": s.arguments_json()}}
                        for tid, s in c.tool_calls
                    ]
                out_choices.append({"index": c.index, "message": message, "logprobs": None, "finish_reason": c.finish_reason})
            else:
                message = {
                    "role": "assistant",
                    "content": c.content,
                    "tool_calls": (
                        [
                            {"id": tid, "type": "function", "function": {"name": s.name, "arguments": s.arguments_json()}}
                            for tid, s in c.tool_calls
                        ]
                        if c.tool_calls
                        else None
                    ),
                    "prefix": False,
                }
                out_choices.append({"index": c.index, "message": message, "finish_reason": c.finish_reason})
        doc: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out_choices,
            "usage": usage,
        }
        if self.protocol == "openai":
            doc["system_fingerprint"] = "fp_loopback"
            doc["service_tier"] = "default"
        return doc

    def _stream_events(
        self, body: dict[str, Any], model: str, choices: list[_Choice], rid: str, created: int
    ) -> Iterator[dict[str, Any]]:
        """SSE payloads (dicts) for a streamed completion, choices interleaved."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = self._usage(body, choices)
        is_openai = self.protocol == "openai"

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
            if is_openai:
                choice["logprobs"] = None
            doc: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if is_openai:
                doc["system_fingerprint"] = "fp_loopback"
                doc["service_tier"] = "default"
                if include_usage:
                    doc["usage"] = None
            return doc

        per_choice: list[list[dict[str, Any]]] = []
        for c in choices:
            events = []
            first: dict[str, Any] = {"role": "assistant", "content": ""}
            if is_openai:
                first["refusal"] = None
            events.append(chunk(c.index, first))
            for piece in re.findall(r"\S+\s*|\s+", c.content):
                events.append(chunk(c.index, {"content": piece}))
            for k, (tid, spec) in enumerate(c.tool_calls):
                args = spec.arguments_json()
                if is_openai:
                    events.append(
                        chunk(c.index, {"tool_calls": [{"index": k, "id": tid, "type": "function", "function": {"name": spec.name, "arguments": ""}}]})
                    )
                    for piece in _split_args(args):
                        events.append(chunk(c.index, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}))
                else:
                    events.append(
                        chunk(c.index, {"content": "", "tool_calls": [{"id": tid, "function": {"name": spec.name, "arguments": args}, "index": k}]})
                    )
            events.append(chunk(c.index, {} if is_openai else {"content": ""}, c.finish_reason))
            per_choice.append(events)

        # round-robin interleave of the choices (as the real APIs do for n > 1)
        ordered: list[dict[str, Any]] = []
        longest = max((len(e) for e in per_choice), default=0)
        for i in range(longest):
            for events in per_choice:
                if i < len(events):
                    ordered.append(events[i])
        if is_openai:
            yield from ordered
            if include_usage:
                yield {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_loopback",
                    "service_tier": "default",
                    "choices": [],
                    "usage": usage,
                }
        else:
            # Mistral always reports usage, on the last chunk.
            if ordered:
                ordered[-1]["usage"] = usage
            yield from ordered

    def _error_json(self, status: int, message: str, kind: str, code: str | None) -> dict[str, Any]:
        if self.protocol == "openai":
            return {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "LoopbackLLM/1.0"
    sys_version = ""

    # -- bookkeeping so stop() can close idle keep-alive connections
    def setup(self) -> None:
        super().setup()
        owner = self.server.owner
        with owner._lock:
            owner._conns[self.connection] = threading.current_thread()
        if owner._stop_event.is_set():  # accepted just before stop(): refuse
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.owner._lock:
                self.server.owner._conns.pop(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        return

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError, _ClientGone, OSError):
            self.close_connection = True

    # -- low level writers
    def _send_json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None, raw: bytes | None = None) -> None:
        payload = raw if raw is not None else json.dumps(doc, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if not self.server.owner.keep_alive:
            self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
        self.wfile.flush()

    # -- routes
    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in _MODELS_PATHS:
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in owner.models if m != "*"]
            self._send_json(200, {"object": "list", "data": data})
        elif path in ("/health", "/v1/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, owner._error_json(404, f"Unknown path {path}", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        record: dict[str, Any] = {
            "method": "POST",
            "path": path,
            "model": body.get("model") if isinstance(body, dict) else None,
            "body": body,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "status": None,
            "fault": None,
            "time": time.time(),
        }
        owner.requests.append(record)

        def send_error(status: int, message: str, kind: str, code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
            record["status"] = status
            self._send_json(status, owner._error_json(status, message, kind, code), headers)

        if path not in _CHAT_PATHS:
            send_error(404, f"Unknown path {path}", "invalid_request_error", "not_found")
            return
        if owner.api_key is not None:
            auth = self.headers.get("Authorization") or ""
            if auth != f"Bearer {owner.api_key}":
                send_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
                return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            send_error(400, "Request body must be a JSON object with 'messages'.", "invalid_request_error", "invalid_body")
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            send_error(400, "'model' is required.", "invalid_request_error", "missing_model")
            return
        behavior = owner._behavior_for(model)
        if behavior is None:
            send_error(404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")
            return

        rule = owner._take_fault(model)
        fault = rule.fault if rule else None
        record["fault"] = fault
        stream = bool(body.get("stream"))

        choices = None
        if fault not in (Fault.HTTP_500, Fault.HTTP_429):
            try:
                choices = owner._build_choices(body, model, behavior, fault)
            except Exception as exc:  # a broken custom responder -> 500 with the reason
                send_error(500, f"responder failed: {exc!r}", "server_error")
                return
            usage = owner._usage(body, choices)
            with owner._lock:
                owner.billing.append((model, usage["prompt_tokens"], usage["completion_tokens"]))

        if fault is Fault.TIMEOUT:
            hang = rule.hang_s if rule and rule.hang_s is not None else owner.default_hang_s
            owner._sleep(hang, self.connection)  # raises _ClientGone on disconnect / stop
        if behavior.latency_s > 0:
            owner._sleep(behavior.latency_s, self.connection)

        if fault is Fault.HTTP_500:
            headers = {}
            if rule and rule.retry_after_s is not None:
                headers = _retry_headers(rule.retry_after_s)
            status = rule.status if rule and rule.status else 500
            send_error(status, "The server had an error while processing your request.", "server_error", None, headers)
            return
        if fault is Fault.HTTP_429:
            ra = rule.retry_after_s if rule and rule.retry_after_s is not None else owner.default_retry_after_s
            status = (rule.status if rule and rule.status else 429)
            send_error(status, "Rate limit reached for requests.", "requests", "rate_limit_exceeded", _retry_headers(ra))
            return

        rid_num = owner._next_id()
        rid = f"chatcmpl-loop{rid_num:06d}" if owner.protocol == "openai" else f"{rid_num:032x}"
        created = int(time.time())
        common_headers = {"x-request-id": f"req_loop{rid_num:06d}", "x-loopback-model": model}

        if fault is Fault.MALFORMED_JSON and not stream:
            record["status"] = 200
            self._send_json(200, None, common_headers, raw=b'{"id": "' + rid.encode() + b'", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assist')
            return

        assert choices is not None

        if not stream:
            record["status"] = 200
            self._send_json(200, owner._completion_json(body, model, choices, rid, created), common_headers)
            return

        # ---- SSE streaming (chunked transfer encoding, keep-alive friendly)
        record["status"] = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        if not owner.keep_alive:
            self.send_header("Connection", "close")
        for k, v in common_headers.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            for i, event in enumerate(owner._stream_events(body, model, choices, rid, created)):
                if i > 0 and behavior.chunk_delay_s > 0:
                    owner._sleep(behavior.chunk_delay_s, self.connection)
                self._write_chunk(b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n")
                if fault is Fault.MALFORMED_JSON:
                    self._write_chunk(b'data: {"id": "' + rid.encode() + b'", "choices": [{"delta": {"content": "br\n\n')
                    break
            else:
                self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")  # terminating zero-length chunk
        except (_ClientGone, ConnectionError, OSError):
            self.close_connection = True


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _retry_headers(seconds: float) -> dict[str, str]:
    seconds = max(0.0, float(seconds))
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(int(round(seconds * 1000)))}


def _peer_closed(conn: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        data = conn.recv(1, socket.MSG_PEEK)
        return data == b""
    except (OSError, ValueError):
        return True


def _split_args(args: str, size: int = 8) -> list[str]:
    if not args:
        return []
    return [args[i : i + size] for i in range(0, len(args), size)]


def _base62(num: int) -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        num, rem = divmod(num, 62)
        out = alphabet[rem] + out
        if num == 0:
            return out


def _accepts_sample_index(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def _coerce_reply(value: Any) -> ScriptedReply:
    if isinstance(value, ScriptedReply):
        return value
    if isinstance(value, str):
        return ScriptedReply(content=value, kind="text")
    if isinstance(value, dict):
        calls = []
        for tc in value.get("tool_calls") or []:
            if isinstance(tc, ToolCallSpec):
                calls.append(tc)
            else:
                calls.append(ToolCallSpec(name=tc["name"], arguments=tc.get("arguments", tc.get("args", {}))))
        kind = value.get("kind") or ("tool" if calls else "text")
        return ScriptedReply(content=value.get("content") or "", tool_calls=calls, kind=kind)
    msg = f"responder must return str, dict or ScriptedReply, got {type(value).__name__}"
    raise TypeError(msg)


def _with_sample(reply: ScriptedReply, index: int, n: int, prefix: str) -> ScriptedReply:
    content = reply.content
    if reply.kind == "text":
        content = f"{prefix}{content}" if prefix else content
        if n > 1 and content:
            content = f"{content} (sample {index})"
    return ScriptedReply(content=content, tool_calls=list(reply.tool_calls), kind=reply.kind)
