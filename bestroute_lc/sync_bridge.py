"""One process-wide event loop in a daemon thread: it runs sync calls, and it owns every
request to a provider.

Sync calls submit the engine's coroutines to it and wait. That works whether or not the
calling thread already has a running loop (Jupyter, async frameworks calling sync
LangChain APIs), where ``asyncio.run`` would fail.

Provider requests run on it for sync *and* async callers (``start_detached``). A chat
model's async HTTP client pools its connections, and a pooled connection belongs to the
loop that opened it: shared across the loops of ``asyncio.run`` calls, threads and the
sync bridge, it fails with "Event loop is closed" once its loop has ended, or "bound to a
different event loop" while two loops use it at once. Plain ``ChatOpenAI`` has the first
failure across two ``asyncio.run`` calls. A loop that never closes and is the only one
touching the clients has neither.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="bestroute-loop", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the background loop and return its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, background_loop()).result()


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time."""
    loop = background_loop()
    try:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(agen.__anext__(), loop).result()  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()


def start_detached(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
    """Start ``coroutine_factory()`` as a task on the background loop, in an empty
    ``contextvars.Context`` (none of the caller's context variables: no LangChain parent
    run, no tracer). Await it with ``asyncio.wrap_future``; cancelling the returned future
    cancels the task.

    ``asyncio.run_coroutine_threadsafe`` would copy the caller's context into the task."""
    loop = background_loop()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def settle(task: asyncio.Task[T]) -> None:
        try:
            if task.cancelled():
                result.cancel()
            elif task.exception() is not None:
                result.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                result.set_result(task.result())
        except concurrent.futures.InvalidStateError:  # the caller cancelled it first
            pass

    def start() -> None:
        if result.cancelled():
            return
        task = loop.create_task(coroutine_factory())  # copies this callback's (empty) context
        task.add_done_callback(settle)
        result.add_done_callback(lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)

    loop.call_soon_threadsafe(start, context=contextvars.Context())
    return result
