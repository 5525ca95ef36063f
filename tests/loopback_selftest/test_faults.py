"""Fault injection and protocol details of the loopback servers, observed
through the real ``ChatOpenAI`` / ``ChatMistralAI`` clients (and the raw OpenAI
SDK / httpx where LangChain hides the wire)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_mistralai import ChatMistralAI
from langchain_openai import ChatOpenAI

from tests.loopback import Fault, LoopbackLLMServer, ModelBehavior, ScriptedReply

pytestmark = pytest.mark.network_loopback


def _openai(srv: LoopbackLLMServer, model: str = "loop-gpt", **kw: Any) -> ChatOpenAI:
    params: dict[str, Any] = {"model": model, "base_url": srv.base_url, "api_key": "test", "max_retries": 0, "timeout": 10}
    params.update(kw)
    return ChatOpenAI(**params)


def _mistral(srv: LoopbackLLMServer, model: str = "loop-mistral", **kw: Any) -> ChatMistralAI:
    params: dict[str, Any] = {"model": model, "endpoint": srv.base_url, "api_key": "test", "max_retries": 0, "timeout": 10}
    params.update(kw)
    return ChatMistralAI(**params)


def _collect(stream: Any) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    chunks = list(stream)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return chunks, full


# --------------------------------------------------------------------------- #
# HTTP errors
# --------------------------------------------------------------------------- #


def test_http_500_openai(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=1)
    with pytest.raises(openai.InternalServerError) as info:
        _openai(srv).invoke("hi")
    assert info.value.status_code == 500
    assert srv.requests[-1]["status"] == 500
    assert srv.requests[-1]["fault"] is Fault.HTTP_500
    assert _openai(srv).invoke("hi").content  # plan consumed


def test_http_429_openai_has_retry_after(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_429, times=1, retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as info:
        _openai(srv).invoke("hi")
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "2000"
    assert info.value.code == "rate_limit_exceeded"


def test_http_errors_while_streaming_openai(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=1)
    with pytest.raises(openai.InternalServerError):
        list(_openai(srv).stream("hi"))
    srv.set_fault("loop-gpt", Fault.HTTP_429, times=1)
    with pytest.raises(openai.RateLimitError):
        list(_openai(srv).stream("hi"))


async def test_http_500_openai_async(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=1)
    with pytest.raises(openai.InternalServerError):
        await _openai(srv).ainvoke("hi")
    assert (await _openai(srv).ainvoke("hi")).content


def test_http_errors_mistral(loopback_mistral_server: LoopbackLLMServer) -> None:
    """ChatMistralAI raises httpx.HTTPStatusError and never retries on status codes."""
    srv = loopback_mistral_server
    srv.set_fault("loop-mistral", Fault.HTTP_500, times=1)
    with pytest.raises(httpx.HTTPStatusError) as info:
        _mistral(srv, max_retries=3).invoke("hi")
    assert info.value.response.status_code == 500
    assert json.loads(info.value.response.text)["object"] == "error"
    assert srv.request_count("loop-mistral") == 1

    srv.set_fault("loop-mistral", Fault.HTTP_429, times=1, retry_after_s=1)
    with pytest.raises(httpx.HTTPStatusError) as info:
        list(_mistral(srv).stream("hi"))
    assert info.value.response.status_code == 429
    assert info.value.response.headers["retry-after"] == "1"
    assert _mistral(srv).invoke("hi").content


# --------------------------------------------------------------------------- #
# times=k / always / retries
# --------------------------------------------------------------------------- #


def test_fail_next_k_then_succeed(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=2)
    llm = _openai(srv)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            llm.invoke("hi")
    assert llm.invoke("hi").content
    assert [r["status"] for r in srv.requests] == [500, 500, 200]
    assert srv.pending_faults("loop-gpt") == []


def test_always_fail_until_cleared(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_429)  # times=None -> always
    llm = _openai(srv)
    for _ in range(4):
        with pytest.raises(openai.RateLimitError):
            llm.invoke("hi")
    # other models are unaffected
    assert _openai(srv, model="loop-gpt-mini").invoke("hi").content
    srv.clear_faults()
    assert llm.invoke("hi").content


def test_fault_plan_sequence_and_wildcard(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=1)
    srv.add_fault("loop-gpt", Fault.HTTP_429, times=1)
    llm = _openai(srv)
    with pytest.raises(openai.InternalServerError):
        llm.invoke("hi")
    with pytest.raises(openai.RateLimitError):
        llm.invoke("hi")
    assert llm.invoke("hi").content
    srv.set_fault("*", Fault.HTTP_500, times=1)  # any model
    with pytest.raises(openai.InternalServerError):
        _openai(srv, model="some-other-model").invoke("hi")
    assert _openai(srv, model="some-other-model").invoke("hi").content


def test_openai_client_retries_through_transient_faults(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.HTTP_429, times=2, retry_after_s=0.01)
    result = _openai(srv, max_retries=2).invoke("hi")
    assert result.content
    assert [r["status"] for r in srv.requests] == [429, 429, 200]


# --------------------------------------------------------------------------- #
# malformed JSON / empty content
# --------------------------------------------------------------------------- #


def test_malformed_json_openai(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.MALFORMED_JSON, times=2)
    with pytest.raises(ValueError):  # json.JSONDecodeError
        _openai(srv).invoke("hi")
    with pytest.raises(ValueError):
        list(_openai(srv).stream("hi"))
    assert _openai(srv).invoke("hi").content


def test_malformed_json_mistral(loopback_mistral_server: LoopbackLLMServer) -> None:
    srv = loopback_mistral_server
    srv.set_fault("loop-mistral", Fault.MALFORMED_JSON, times=2)
    with pytest.raises(ValueError):
        _mistral(srv).invoke("hi")
    with pytest.raises(ValueError):
        list(_mistral(srv).stream("hi"))
    assert _mistral(srv).invoke("hi").content


def test_empty_content_openai(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.EMPTY_CONTENT, times=2)
    llm = _openai(srv, stream_usage=True)
    msg = llm.invoke("hi")
    assert isinstance(msg, AIMessage)
    assert msg.content == ""
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 0
    chunks, full = _collect(llm.stream("hi"))
    assert full.content == ""
    assert all(c.content == "" for c in chunks)
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == 0
    assert llm.invoke("hi").content


def test_empty_content_mistral(loopback_mistral_server: LoopbackLLMServer) -> None:
    srv = loopback_mistral_server
    srv.set_fault("loop-mistral", Fault.EMPTY_CONTENT, times=2)
    llm = _mistral(srv)
    assert llm.invoke("hi").content == ""
    _, full = _collect(llm.stream("hi"))
    assert full.content == ""
    assert llm.invoke("hi").content


# --------------------------------------------------------------------------- #
# timeouts and clean shutdown
# --------------------------------------------------------------------------- #


def test_timeout_openai(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.TIMEOUT, times=1)  # default hang: 30 s
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _openai(srv, timeout=0.5).invoke("hi")
    assert time.monotonic() - t0 < 5
    assert _openai(srv, timeout=5).invoke("hi").content


async def test_timeout_openai_async_stream(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_fault("loop-gpt", Fault.TIMEOUT, times=1)
    with pytest.raises(openai.APITimeoutError):
        async for _ in _openai(srv, timeout=0.5).astream("hi"):
            pass


def test_timeout_mistral(loopback_mistral_server: LoopbackLLMServer) -> None:
    srv = loopback_mistral_server
    srv.set_fault("loop-mistral", Fault.TIMEOUT, times=1)
    t0 = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        _mistral(srv, timeout=1).invoke("hi")
    assert time.monotonic() - t0 < 5


def test_stop_interrupts_hanging_requests() -> None:
    srv = LoopbackLLMServer("openai").start()
    srv.set_fault("loop-gpt", Fault.TIMEOUT)  # always hang (30 s)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _openai(srv, timeout=20).invoke("hi")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 5
    while srv.request_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.request_count() == 1
    handlers = list(srv._conns.values())
    assert handlers  # the hanging handler thread
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2
    assert not [t for t in handlers if t.is_alive()]
    caller.join(5)
    assert not caller.is_alive()
    assert errors and isinstance(errors[0], openai.APIConnectionError)


def test_hung_handler_ends_when_client_gives_up() -> None:
    with LoopbackLLMServer("openai") as srv:
        srv.set_fault("loop-gpt", Fault.TIMEOUT, hang_s=30)
        with pytest.raises(openai.APITimeoutError):
            _openai(srv, timeout=0.3).invoke("hi")
        deadline = time.monotonic() + 3
        while srv._conns and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not srv._conns  # the handler noticed the disconnect and ended


def test_latency(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_behavior("loop-gpt", latency_s=0.3)
    t0 = time.monotonic()
    assert _openai(srv).invoke("hi").content
    assert time.monotonic() - t0 >= 0.3


# --------------------------------------------------------------------------- #
# n > 1, usage, streaming usage
# --------------------------------------------------------------------------- #


def test_n_choices_usage_counted_once(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    llm = _openai(srv, n=3)
    result = llm.generate([[HumanMessage("tell me something nice")]])
    gens = result.generations[0]
    assert len(gens) == 3
    texts = [g.text for g in gens]
    assert len(set(texts)) == 3
    assert all(f"(sample {i})" in t for i, t in enumerate(texts))
    usage = result.llm_output["token_usage"]
    assert usage["prompt_tokens"] == 4  # counted once, not per choice
    assert usage["completion_tokens"] == sum(len(t.split()) for t in texts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert srv.requests[-1]["body"]["n"] == 3


def test_n_choices_streaming_per_index(loopback_openai_server: LoopbackLLMServer) -> None:
    """Raw SDK: deltas carry their choice index; usage arrives once at the end."""
    srv = loopback_openai_server
    client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
    messages = [{"role": "user", "content": "tell me something nice"}]
    stream = client.chat.completions.create(
        model="loop-gpt", messages=messages, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts = {0: "", 1: ""}
    finish: dict[int, str] = {}
    usages = []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
            assert chunk.choices == []
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    plain = client.chat.completions.create(model="loop-gpt", messages=messages, n=2)
    assert [texts[0], texts[1]] == [c.message.content for c in plain.choices]
    assert texts[0] != texts[1]
    assert finish == {0: "stop", 1: "stop"}
    assert len(usages) == 1
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(usages[0], key) == getattr(plain.usage, key)
    assert plain.model == "loop-gpt" and plain.system_fingerprint and plain.id and plain.created


def test_stream_usage_on_exactly_one_chunk(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    chunks, full = _collect(_openai(srv, stream_usage=True).stream("count these four words"))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1
    assert full.usage_metadata["input_tokens"] == 4
    assert full.usage_metadata["output_tokens"] == len(str(full.content).split())
    assert srv.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    # without stream_usage the OpenAI protocol sends no usage at all
    chunks, _ = _collect(_openai(srv).stream("count these four words"))
    assert not [c for c in chunks if c.usage_metadata]


def test_stream_usage_mistral_single_chunk(loopback_mistral_server: LoopbackLLMServer) -> None:
    chunks, full = _collect(_mistral(loopback_mistral_server).stream("count these four words"))
    assert len([c for c in chunks if c.usage_metadata]) == 1
    assert full.usage_metadata["input_tokens"] == 4


# --------------------------------------------------------------------------- #
# stop / max_tokens / tools / response_format / behaviours
# --------------------------------------------------------------------------- #


def test_stop_and_max_tokens(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    full = _openai(srv).invoke("alpha beta gamma delta").content
    assert "beta" in full
    cut = _openai(srv).invoke("alpha beta gamma delta", stop=["beta"])
    assert cut.content == full[: full.index("beta")]
    assert cut.response_metadata["finish_reason"] == "stop"
    short = _openai(srv, max_tokens=3).invoke("alpha beta gamma delta")
    assert len(short.content.split()) == 3
    assert short.response_metadata["finish_reason"] == "length"
    assert short.usage_metadata["output_tokens"] == 3
    _, streamed = _collect(_openai(srv, max_tokens=3).stream("alpha beta gamma delta"))
    assert streamed.content == short.content
    assert streamed.response_metadata["finish_reason"] == "length"
    assert srv.requests[-1]["body"]["max_completion_tokens"] == 3 or srv.requests[-1]["body"].get("max_tokens") == 3


def test_tool_choice_variants(loopback_openai_server: LoopbackLLMServer) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    llm = _openai(loopback_openai_server)
    msg = llm.bind_tools([add, weather]).invoke("use weather for 'Paris'")
    assert msg.tool_calls[0]["name"] == "weather" and msg.tool_calls[0]["args"] == {"city": "Paris"}
    msg = llm.bind_tools([add, weather], tool_choice="add").invoke("what is 5 + 7")
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 5, "b": 7}
    msg = llm.bind_tools([add, weather], tool_choice="none").invoke("what is 5 + 7")
    assert not msg.tool_calls and msg.content
    msg = llm.bind_tools([add, weather], tool_choice="any").invoke("hello")
    assert msg.tool_calls[0]["name"] == "add"
    ids = {llm.bind_tools([add]).invoke("1 + 2").tool_calls[0]["id"] for _ in range(3)}
    assert len(ids) == 3


def test_tool_calls_mistral_ids(loopback_mistral_server: LoopbackLLMServer) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = _mistral(loopback_mistral_server).bind_tools([add], tool_choice="any")
    msg = llm.invoke("what is 5 + 7")
    call = msg.tool_calls[0]
    assert call["args"] == {"a": 5, "b": 7}
    assert len(call["id"]) == 9 and call["id"].isalnum()
    assert loopback_mistral_server.requests[-1]["body"]["tool_choice"] == "any"


def test_response_formats(loopback_openai_server: LoopbackLLMServer) -> None:
    client = openai.OpenAI(base_url=loopback_openai_server.base_url, api_key="test", max_retries=0)
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "count": {"type": "integer", "minimum": 10},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "kind": {"enum": ["x", "y"]},
            "nested": {"$ref": "#/$defs/N"},
        },
        "required": ["title", "count", "tags", "kind", "nested"],
        "$defs": {"N": {"type": "object", "properties": {"flag": {"type": "boolean"}, "ratio": {"type": "number"}}}},
    }
    out = client.chat.completions.create(
        model="loop-gpt",
        messages=[{"role": "user", "content": "give me data"}],
        response_format={"type": "json_schema", "json_schema": {"name": "Data", "schema": schema}},
    )
    data = json.loads(out.choices[0].message.content)
    assert data["count"] >= 10 and len(data["tags"]) == 2 and data["kind"] == "x"
    assert data["nested"] == {"flag": True, "ratio": 3.0}
    out = client.chat.completions.create(
        model="loop-gpt",
        messages=[{"role": "user", "content": "Return JSON with 'name' and 'age' keys."}],
        response_format={"type": "json_object"},
    )
    assert set(json.loads(out.choices[0].message.content)) == {"name", "age"}


def test_behaviors_prefix_responder_reset() -> None:
    def responder(body: dict[str, Any], sample_index: int) -> str:
        return f"custom {sample_index} for {body['model']}"

    behaviors = {
        "cheap": ModelBehavior(reply_prefix="[cheap] "),
        "custom": ModelBehavior(responder=responder),
        "tooly": ModelBehavior(responder=lambda body: {"tool_calls": [{"name": "f", "arguments": {"x": 1}}]}),
    }
    with LoopbackLLMServer("openai", models=behaviors, allow_unknown_models=False) as srv:
        assert _openai(srv, model="cheap").invoke("hi").content.startswith("[cheap] Loopback reply to: hi")
        gens = _openai(srv, model="custom", n=2).generate([[HumanMessage("x")]]).generations[0]
        assert [g.text for g in gens] == ["custom 0 for custom", "custom 1 for custom"]
        msg = _openai(srv, model="tooly").invoke("x")
        assert msg.tool_calls[0]["name"] == "f" and msg.tool_calls[0]["args"] == {"x": 1}
        with pytest.raises(openai.NotFoundError):
            _openai(srv, model="nope").invoke("hi")
        assert [r["model"] for r in srv.requests] == ["cheap", "custom", "tooly", "nope"]
        assert srv.models == ["cheap", "custom", "tooly"]
        srv.set_behavior("cheap", reply_prefix="changed ")
        srv.set_fault("cheap", Fault.HTTP_500)
        srv.reset()
        assert len(srv.requests) == 0
        assert _openai(srv, model="cheap").invoke("hi").content.startswith("[cheap] ")
        assert isinstance(ScriptedReply(), ScriptedReply)


def test_deterministic_across_servers() -> None:
    with LoopbackLLMServer("openai") as a, LoopbackLLMServer("openai") as b:
        assert _openai(a).invoke("same prompt").content == _openai(b).invoke("same prompt").content
        assert _openai(a).invoke("same prompt", seed=1).content != _openai(a).invoke("same prompt", seed=2).content


def test_api_key_enforced() -> None:
    with LoopbackLLMServer("openai", api_key="secret") as srv:
        with pytest.raises(openai.AuthenticationError):
            _openai(srv).invoke("hi")
        assert ChatOpenAI(model="m", base_url=srv.base_url, api_key="secret", max_retries=0).invoke("hi").content


def test_concurrent_requests_and_request_log(loopback_openai_server: LoopbackLLMServer) -> None:
    srv = loopback_openai_server
    srv.set_behavior("loop-gpt", latency_s=0.2)
    srv.set_fault("loop-gpt", Fault.HTTP_500, times=5)
    llm = _openai(srv)
    t0 = time.monotonic()
    results = llm.batch([f"prompt {i}" for i in range(40)], config={"max_concurrency": 40}, return_exceptions=True)
    elapsed = time.monotonic() - t0
    assert elapsed < 3  # served in parallel, not 40 x 0.2 s
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 5 and all(isinstance(f, openai.InternalServerError) for f in failures)
    assert len(srv.requests) == 40
    assert sorted(r["status"] for r in srv.requests) == [200] * 35 + [500] * 5
    assert {r["body"]["messages"][0]["content"] for r in srv.requests} == {f"prompt {i}" for i in range(40)}


async def test_concurrent_async_mistral(loopback_mistral_server: LoopbackLLMServer) -> None:
    import asyncio

    srv = loopback_mistral_server
    srv.set_behavior("loop-mistral", latency_s=0.2)
    llm = _mistral(srv)
    t0 = time.monotonic()
    outs = await asyncio.gather(*(llm.ainvoke(f"q{i}") for i in range(20)))
    assert time.monotonic() - t0 < 3
    assert all(o.content for o in outs)
    assert srv.request_count("loop-mistral") == 20
