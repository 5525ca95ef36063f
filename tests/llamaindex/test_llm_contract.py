"""BestRouteLLM, the LlamaIndex face: the contract a LlamaIndex LLM keeps (sync, async,
streaming, completion, tools, structured output, errors, token counting, instrumentation),
on a pool of real ChatOpenAI / ChatMistralAI clients talking to loopback servers.
llama-index-core has no standard LLM test kit; this is its equivalent."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole
from pydantic import BaseModel

from bestroute_lc import BestRouteChatModel
from bestroute_llamaindex import BestRouteLLM
from tests.helpers import LengthReranker, fixed_router
from tests.loopback_pools import loopback_pool

pytestmark = pytest.mark.network_loopback

#: gpt-mini with n = 2 passes every threshold <= 0.8 (cheapest); mistral-small never does.
TABLE = {"gpt-mini": [0.5, 0.8], "mistral-small": [0.1, 0.2]}


def make_llm(threshold: float = 0.7, **kwargs) -> BestRouteLLM:
    return BestRouteLLM(pool=loopback_pool(), router=fixed_router(TABLE, "gpt-large"), reranker=LengthReranker(),
                        threshold=threshold, **kwargs)


def check_response(response, *, member: str = "gpt-mini", n: int = 2) -> None:
    decision = response.raw["bestroute"]
    assert (decision["member"], decision["n"]) == (member, n)
    usage = response.raw["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.raw["cost_usd"] == pytest.approx(decision["actual_cost_usd"]) and response.raw["cost_usd"] > 0
    assert response.additional_kwargs["prompt_tokens"] == usage["prompt_tokens"]


def test_metadata() -> None:
    meta = make_llm().metadata
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.context_window > 0 and "gpt-large" in meta.model_name
    llm = make_llm()
    assert BestRouteLLM(pool=llm.pool, router=llm.router, reranker=llm.reranker, context_window=2048).metadata.context_window == 2048


def test_chat_and_complete_route_and_report_usage_cost_and_decision() -> None:
    llm = make_llm()
    response = llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="Be brief."), ChatMessage(role=MessageRole.USER, content="Hello there")])
    assert response.message.role == MessageRole.ASSISTANT and response.message.content
    check_response(response)
    completion = llm.complete("Say something")
    assert completion.text
    check_response(completion)
    # the threshold per call: nothing passes 0.9, so the reference answers
    assert llm.chat([ChatMessage(role="user", content="hi")], threshold=0.9).raw["bestroute"]["member"] == "gpt-large"
    assert llm.complete("hi", model="mistral-small").raw["bestroute"]["member"] == "mistral-small"


def test_async_forms() -> None:
    llm = make_llm()

    async def run():
        chat = await llm.achat([ChatMessage(role="user", content="Hello")])
        completion = await llm.acomplete("Hello")
        stream = [r async for r in await llm.astream_chat([ChatMessage(role="user", content="Hello")])]
        completions = [r async for r in await llm.astream_complete("Hello")]
        return chat, completion, stream, completions

    chat, completion, stream, completions = asyncio.run(run())
    check_response(chat)
    check_response(completion)
    check_response(stream[-1])
    check_response(completions[-1])
    assert stream[-1].message.content == chat.message.content or stream[-1].message.content


def test_streaming_passes_tokens_through_and_ends_with_usage_and_decision() -> None:
    llm = make_llm(threshold=0.9)  # the reference, n = 1: its tokens stream through
    responses = list(llm.stream_chat([ChatMessage(role="user", content="Tell me a short story")]))
    assert len(responses) > 2
    text = "".join(r.delta or "" for r in responses)
    assert text == responses[-1].message.content and text
    check_response(responses[-1], member="gpt-large", n=1)
    completions = list(llm.stream_complete("Tell me a short story"))
    assert "".join(c.delta or "" for c in completions) == completions[-1].text


def test_tools_predict_and_call_and_structured_predict() -> None:
    from llama_index.core.prompts import PromptTemplate
    from llama_index.core.tools import FunctionTool

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    tool = FunctionTool.from_defaults(fn=add)
    llm = make_llm()
    response = llm.chat_with_tools([tool], user_msg="What is 2 + 3? Use the tool.", tool_required=True)
    calls = llm.get_tool_calls_from_response(response)
    assert calls and calls[0].tool_name == "add" and set(calls[0].tool_kwargs) == {"a", "b"}
    check_response(response)
    output = llm.predict_and_call([tool], user_msg="Add 2 and 3")
    assert output.sources and output.sources[0].tool_name == "add"
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(llm.chat([ChatMessage(role="user", content="no tools here")]))

    class Person(BaseModel):
        name: str
        age: int

    person = llm.structured_predict(Person, PromptTemplate("Invent a person called {name}."), name="Ada")
    assert isinstance(person, Person)


def test_tool_history_round_trips() -> None:
    from llama_index.core.base.llms.types import ToolCallBlock

    from bestroute_llamaindex import to_langchain

    history = [
        ChatMessage(role="user", content="What is 2 + 3?"),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 2, "b": 3})]),
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": "c1"}),
    ]
    messages = to_langchain(history)
    assert messages[1].tool_calls[0]["name"] == "add" and messages[2].tool_call_id == "c1"
    response = make_llm().chat(history)
    assert response.message.content


def test_the_llamaindex_face_does_not_go_through_the_langchain_chat_model() -> None:
    import importlib
    import sys

    sys.modules.pop("bestroute_llamaindex.llm", None)
    module = importlib.import_module("bestroute_llamaindex.llm")
    assert "bestroute_lc.chat_model" not in module.__dict__ and "BestRouteChatModel" not in vars(module)
    llm = make_llm()
    assert type(llm._engine).__name__ == "BestRouteEngine"


def test_bad_input_is_a_clear_error() -> None:
    llm = make_llm()
    with pytest.raises(ValueError, match="ImageBlock"):
        llm.chat([ChatMessage(role="user", blocks=[ImageBlock(url="http://127.0.0.1/x.png")])])
    with pytest.raises(ValueError):
        llm.chat([])
    with pytest.raises(ValueError, match="threshold"):
        llm.chat([ChatMessage(role="user", content="hi")], threshold=1.5)


def test_token_counting_handler_and_instrumentation_see_usage_and_decision() -> None:
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent

    counter = TokenCountingHandler()
    llm = make_llm()
    llm.callback_manager = CallbackManager([counter])
    seen = []

    class Capture(BaseEventHandler):
        def handle(self, event, **kwargs) -> None:
            if isinstance(event, LLMChatEndEvent) and event.response is not None:
                seen.append(event.response.raw.get("bestroute"))

    dispatcher = get_dispatcher()
    handler = Capture()
    dispatcher.add_event_handler(handler)
    try:
        response = llm.chat([ChatMessage(role="user", content="Count my tokens")])
    finally:
        dispatcher.event_handlers.remove(handler)
    assert counter.prompt_llm_token_count == response.raw["usage"]["prompt_tokens"]
    assert counter.completion_llm_token_count == response.raw["usage"]["completion_tokens"]
    assert seen and seen[-1]["member"] == "gpt-mini"


def test_query_engine_chat_engine_and_function_agent() -> None:
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.tools import FunctionTool

    llm = make_llm()
    previous = (Settings._llm, Settings._embed_model)  # the properties would resolve (import) OpenAI defaults
    Settings.llm, Settings.embed_model = llm, MockEmbedding(embed_dim=8)
    try:
        index = VectorStoreIndex.from_documents([Document(text="BEST-Route routes each query to a model and a number of samples."),
                                                 Document(text="The reference model answers when no cheaper option is good enough.")])
        answer = index.as_query_engine().query("What does BEST-Route do?")
        assert str(answer) and answer.source_nodes
        chat = index.as_chat_engine(chat_mode="context")
        assert str(chat.chat("And the reference?"))

        def multiply(a: int, b: int) -> int:
            """Multiply two integers."""
            return a * b

        agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=multiply)], llm=llm)

        async def ask():  # a workflow runs inside an event loop
            return await agent.run("What is 6 times 7? Use the tool.")

        result = asyncio.run(ask())
        assert str(result)
        assert any(call.tool_name == "multiply" for call in result.tool_calls)
    finally:
        Settings._llm, Settings._embed_model = previous


def test_a_llamaindex_llm_can_be_a_pool_member() -> None:
    from llama_index.core.llms import MockLLM

    from bestroute_lc import Pool, PoolMember, Prices
    from bestroute_llamaindex.members import LlamaIndexChatModel
    from tests.loopback_pools import openai_client

    pool = Pool(members=[
        PoolMember.from_model(openai_client("loop-gpt-large"), name="gpt-large", prices=Prices(input_per_mtok=5, output_per_mtok=15)),
        PoolMember.from_model(LlamaIndexChatModel(llm=MockLLM(max_tokens=8)), name="li-mock", prices=Prices(input_per_mtok=0.1, output_per_mtok=0.2)),
    ], reference="gpt-large")
    model = BestRouteChatModel(pool=pool, router=fixed_router({"li-mock": [0.9, 0.95]}, "gpt-large"), reranker=LengthReranker(),
                               threshold=0.5)
    llm = BestRouteLLM(pool=pool, router=model.router, reranker=model.reranker, threshold=0.5)
    response = llm.chat([ChatMessage(role="user", content="Hello from LlamaIndex")])
    decision = response.raw["bestroute"]
    assert decision["member"] == "li-mock" and response.message.content
    assert response.raw["usage"]["completion_tokens"] > 0 and response.raw["cost_usd"] > 0
    assert model.invoke("hi", model="li-mock").response_metadata["bestroute"]["member"] == "li-mock"  # LangChain face too
