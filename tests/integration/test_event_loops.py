"""Sync and async calls in one process, in any order and from many threads, with real
clients that keep their connections alive (as real providers do): no "Event loop is
closed", no "bound to a different event loop", so no spurious fallback either.

A pooled connection belongs to the loop that opened it; BestRoute sends every provider
request from its one background loop (``bestroute_lc.sync_bridge``), whichever loop the
caller runs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bestroute_lc import BestRouteChatModel
from bestroute_lc.sync_bridge import start_detached
from tests.helpers import fixed_router, tiny_reward_model
from tests.loopback import LoopbackLLMServer
from tests.loopback.fixtures import SHARED_MODELS
from tests.loopback_pools import loopback_pool

pytestmark = pytest.mark.network_loopback

# mistral-small n=2 (two requests) for the first route: both protocols and both n billings.
TABLE = {"gpt-mini": [0.2, 0.3, 0.9], "mistral-small": [0.1, 0.7, 0.8]}


@pytest.fixture(scope="module")
def keep_alive_llm() -> Iterator[BestRouteChatModel]:
    with (
        LoopbackLLMServer("openai", models=SHARED_MODELS["openai"], keep_alive=True) as openai,
        LoopbackLLMServer("mistral", models=SHARED_MODELS["mistral"], keep_alive=True) as mistral,
    ):
        pool = loopback_pool(openai.base_url, mistral.base_url, timeout_s=10, max_retries=0)
        yield BestRouteChatModel(pool=pool, router=fixed_router(TABLE, "gpt-large"), reranker=tiny_reward_model(), threshold=0.6)


def assert_clean(message: Any) -> None:
    decision = message.response_metadata["bestroute"]
    assert [a["error"] for a in decision["attempts"]] == [None] * len(decision["attempts"])
    assert decision["reason"] != "fallback" and message.content


def test_sync_after_asyncio_run_and_the_reverse(keep_alive_llm: BestRouteChatModel) -> None:
    for i in range(4):
        assert_clean(asyncio.run(keep_alive_llm.ainvoke(f"async {i}")))
        assert_clean(keep_alive_llm.invoke(f"sync {i}"))
        assert "".join(str(c.content) for c in keep_alive_llm.stream(f"stream {i}"))

        async def astream(i: int = i) -> str:
            return "".join([str(c.content) async for c in keep_alive_llm.astream(f"astream {i}")])

        assert asyncio.run(astream())


def client_threads() -> set[str]:
    """Threads on the client side (the loopback servers keep one per open connection)."""
    return {t.name for t in threading.enumerate() if "process_request" not in t.name and not t.name.startswith("loopback-")}


def test_many_threads_mixing_sync_calls_and_their_own_loops(keep_alive_llm: BestRouteChatModel) -> None:
    def one(i: int) -> Any:
        if i % 2:
            return asyncio.run(keep_alive_llm.ainvoke(f"thread {i}"))
        return keep_alive_llm.invoke(f"thread {i}")

    threads_before = client_threads()
    with ThreadPoolExecutor(max_workers=60) as pool:
        messages = list(pool.map(one, range(120)))
    for message in messages:
        assert_clean(message)
    assert client_threads() <= threads_before | {"bestroute-loop"}


def test_detached_tasks_see_none_of_the_callers_context_and_cancel_through() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    async def read_marker() -> str:
        return marker.get()

    async def hang(started: threading.Event, cancelled: threading.Event) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        marker.set("caller")
        assert await asyncio.wrap_future(start_detached(read_marker)) == "unset"
        started, cancelled = threading.Event(), threading.Event()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(start_detached(lambda: hang(started, cancelled))), 0.2)
        assert started.is_set() and cancelled.wait(5)

    asyncio.run(main())
