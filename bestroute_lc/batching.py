"""Dynamic micro-batching: concurrent calls share one forward pass.

A single worker thread owns the model. Callers (sync or async, from any event loop)
put items on a queue and wait on a future. The worker takes the first waiting item,
then keeps collecting until ``max_batch_size`` items or ``max_wait_s`` has passed,
runs ``batch_fn`` once on all of them and hands each caller its own result.
A call that submits several items at once (the reward model scoring n candidates)
keeps them together in one batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Request(Generic[Item, Result]):
    items: list[Item]
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    forward_passes: int = 0
    items: int = 0
    requests: int = 0
    largest_batch: int = 0


class MicroBatcher(Generic[Item, Result]):
    """Runs ``batch_fn(items) -> results`` (same length) over items from many callers."""

    def __init__(
        self,
        batch_fn: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        name: str = "bestroute-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._name = name

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, items: Sequence[Item]) -> Future:
        """Queue ``items``; the future resolves to their results, in order."""
        request: _Request = _Request(items=list(items))
        if not request.items:
            request.future.set_result([])
            return request.future
        self._ensure_worker()
        self._queue.put(request)
        return request.future

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        return self.submit(items).result()

    async def acall(self, items: Sequence[Item]) -> list[Result]:
        return await asyncio.wrap_future(self.submit(items))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                request = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
            size += len(request.items)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            # Callers that gave up (cancelled or timed out) while queued get no forward pass.
            batch = [request for request in batch if request.future.set_running_or_notify_cancel()]
            if not batch:
                if stop:
                    return
                continue
            items = [item for request in batch for item in request.items]
            try:
                results = list(self._batch_fn(items))
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except BaseException as exc:  # hand the error to every waiting caller
                for request in batch:
                    request.future.set_exception(exc)
            else:
                self.stats.forward_passes += 1
                self.stats.items += len(items)
                self.stats.requests += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(items))
                offset = 0
                for request in batch:
                    request.future.set_result(results[offset : offset + len(request.items)])
                    offset += len(request.items)
            if stop:
                return
