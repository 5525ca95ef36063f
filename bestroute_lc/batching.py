"""Dynamic micro-batching: concurrent calls share one forward pass.

A single worker thread owns the model. Callers (sync or async, from any event loop)
put items on a queue and wait on a future; the worker runs ``batch_fn`` on many callers'
items at once and hands each caller its own results, in order.

Two schedulers, chosen by ``length_fn``:

``length_fn=None`` (the original behaviour). The worker takes the first waiting request,
keeps collecting for ``max_wait_s`` or until ``max_batch_size`` items, and runs them all in
one pass; a request's items stay together, even past ``max_batch_size``. Cheap when items
cost the same, but on a CPU it loses throughput as soon as lengths vary (issue 13: x0.62
against no batching at 128 concurrent calls): every item is padded to the longest one, and a
lone call still sits out the window.

``length_fn`` given (bucketed): never slower than no batching, and as fast as padding allows.
On one CPU thread that is little for long prompts: only the per-pass fixed cost is saved,
so with prompts of 8 to 400 tokens even perfect batching gains ~x1.2 on torch and ~x1.15 on
ONNX Runtime (whose per-pass cost is lower), with 8 to 32 tokens ~x2.2 on torch
(``benchmarks/batching.py`` measures these). Why each part:

* Buckets of fixed width in tokens (``bucket_width``), not powers of two. Sharing a pass saves
  one pass's fixed cost (Python and kernel launches: ~5 ms for MiniLM on one CPU thread) and
  costs the padding tokens (~0.3 ms each there). So padding pays off up to a fixed number of
  tokens, whatever the length: a ratio bound would pad a 300-token prompt by 75 tokens and
  lose. Items whose lengths differ by ``bucket_width`` or more never share a pass; on a GPU,
  where padding is nearly free, raise it.
* A request's items go to their own buckets, so a request can be split over several passes
  (and a bucket over several passes of at most ``max_batch_size``); the request resolves when
  its last item is done, its results in submission order. If any of its passes fails, it gets
  that error and its remaining items are dropped.
* Pending items wait in their bucket; each pass serves the bucket holding the oldest item, so
  under load buckets fill while other buckets run, nobody starves, and no pass waits while
  other work is queued.
* No wait when idle: with nothing running and nothing queued, a request starts at once; a
  synchronous call (``batcher(items)``) then runs in the caller's own thread, sparing the hand-off
  to the worker and back (measured: 2.5 % of a lone caller's MiniLM calls on ONNX Runtime,
  ``benchmarks/batching.py`` at 1 concurrent call). An asynchronous call always goes to the worker:
  the event loop must not run the model.
  Waiting only pays when more items are about to arrive: the callers the last pass just
  answered, who typically call again (a closed loop). So the window opens only right after a
  pass, only if the next pass would otherwise run a partial batch with nothing else queued,
  and closes as soon as as many requests have arrived as the pass answered, or arrivals
  pause for a fifth of ``max_wait_s`` (the callers that have not come back are busy
  elsewhere), or at the latest after ``max_wait_s``. A single caller calling in a loop
  therefore never waits.

Both schedulers skip requests cancelled while queued and hand a failing pass's error to
every request in it; the worker survives and serves later calls.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# _Request.state in the bucketed scheduler (touched by the worker thread only)
_QUEUED, _RUNNING, _DONE = 0, 1, 2


@dataclass(eq=False)
class _Request(Generic[Item, Result]):
    items: list[Item]
    future: Future = field(default_factory=Future)
    lengths: list[int] | None = None
    # bucketed scheduler bookkeeping
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    state: int = _QUEUED


@dataclass
class BatchStats:
    forward_passes: int = 0
    items: int = 0
    requests: int = 0
    largest_batch: int = 0


class MicroBatcher(Generic[Item, Result]):
    """Runs ``batch_fn(items) -> results`` (same length) over items from many callers.

    ``length_fn(item) -> int`` (e.g. the token count) switches to the bucketed scheduler (see
    the module docstring): one ``batch_fn`` call per bucket of lengths within
    ``bucket_width`` of each other, at most ``max_batch_size`` items each, no wait when idle.
    ``batch_fn`` does the padding, to the longest item it is given.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        name: str = "bestroute-batcher",
        length_fn: Callable[[Item], int] | None = None,
        bucket_width: int = 16,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if bucket_width < 1:
            raise ValueError("bucket_width must be >= 1")
        self._batch_fn = batch_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._length_fn = length_fn
        self.bucket_width = bucket_width
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        # Held by whoever runs batch_fn (the worker, or a synchronous caller that found the
        # batcher idle); _queued counts requests given to the worker and not yet resolved.
        self._model_lock = threading.Lock()
        self._queued = 0
        self._thread: threading.Thread | None = None
        self._name = name

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                target = self._run if self._length_fn is None else self._run_bucketed
                self._thread = threading.Thread(target=target, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, items: Sequence[Item]) -> Future:
        """Queue ``items``; the future resolves to their results, in order.

        With ``length_fn``, it runs here, in the caller's thread: its errors raise here.
        """
        request: _Request = _Request(items=list(items))
        if not request.items:
            request.future.set_result([])
            return request.future
        if self._length_fn is not None:
            request.lengths = [int(self._length_fn(item)) for item in request.items]
            with self._lock:
                self._queued += 1
            request.future.add_done_callback(self._resolved)
        self._ensure_worker()
        self._queue.put(request)
        return request.future

    def _resolved(self, _: Future) -> None:
        with self._lock:
            self._queued -= 1

    def __call__(self, items: Sequence[Item]) -> list[Result]:
        items = list(items)
        if self._length_fn is not None and items:
            with self._lock:
                idle = self._queued == 0 and self._model_lock.acquire(blocking=False)
            if idle:  # nothing queued, nothing running: run it here, as the worker would
                try:
                    return self._run_inline(items)
                finally:
                    self._model_lock.release()
        return self.submit(items).result()

    def _run_inline(self, items: list[Item]) -> list[Result]:
        lengths = [int(self._length_fn(item)) for item in items]  # type: ignore[misc]
        by_bucket: dict[int, list[int]] = {}
        for index, length in enumerate(lengths):
            by_bucket.setdefault(self.bucket_of(length), []).append(index)
        chunks = [indices[start : start + self.max_batch_size]
                  for indices in by_bucket.values() for start in range(0, len(indices), self.max_batch_size)]
        results: list[Any] = [None] * len(items)
        for number, chunk in enumerate(chunks, 1):
            for index, result in zip(chunk, self._call_batch_fn([items[i] for i in chunk])):
                results[index] = result
            self._count_pass(len(chunk), 1 if number == len(chunks) else 0)
        return results

    async def acall(self, items: Sequence[Item]) -> list[Result]:
        return await asyncio.wrap_future(self.submit(items))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    def bucket_of(self, length: int) -> int:
        """Bucket index of an item of ``length``: lengths 1..w share bucket 0, w+1..2w bucket 1, ..."""
        return max(length - 1, 0) // self.bucket_width

    # -- original scheduler (length_fn=None) ------------------------------------------
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
                results = self._call_batch_fn(items)
            except BaseException as exc:  # hand the error to every waiting caller
                for request in batch:
                    request.future.set_exception(exc)
            else:
                self._count_pass(len(items), len(batch))
                offset = 0
                for request in batch:
                    request.future.set_result(results[offset : offset + len(request.items)])
                    offset += len(request.items)
            if stop:
                return

    def _count_pass(self, items: int, requests: int) -> None:
        with self._lock:  # the worker and synchronous callers running inline both count
            self.stats.forward_passes += 1
            self.stats.items += items
            self.stats.requests += requests
            self.stats.largest_batch = max(self.stats.largest_batch, items)

    # -- bucketed scheduler (length_fn given) --------------------------------------------
    # The pool of pending items belongs to the worker thread alone; callers only touch the
    # queue and their future.
    def _run_bucketed(self) -> None:
        pool: dict[int, deque[tuple[int, _Request, int]]] = {}
        order = itertools.count()
        stopping = False
        expected = 0  # requests the last pass answered: the callers likely to call again soon
        arrived = 0  # requests arrived since that pass ended
        window_end = last_arrival = 0.0
        pause = self.max_wait_s / 5

        def receive(request: _Request | None) -> None:
            nonlocal stopping, arrived, last_arrival
            if request is None:
                stopping = True
                return
            request.results = [None] * len(request.items)
            request.remaining = len(request.items)
            for index, length in enumerate(request.lengths or ()):
                pool.setdefault(self.bucket_of(length), deque()).append((next(order), request, index))
            arrived += 1
            last_arrival = time.monotonic()

        while True:
            while not stopping:  # everything already queued joins the pool, without waiting
                try:
                    receive(self._queue.get_nowait())
                except queue.Empty:
                    break
            bucket = self._oldest_bucket(pool)
            if bucket is None and stopping:
                return
            window_close = min(window_end, last_arrival + pause)
            window_open = not stopping and arrived < expected and time.monotonic() < window_close
            if bucket is None or (window_open and len(pool) == 1 and len(pool[bucket]) < self.max_batch_size):
                # Idle: block until a request comes. Or a partial batch and nothing else to do
                # while the callers just answered may still come back: wait, within the window.
                try:
                    receive(self._queue.get(timeout=max(window_close - time.monotonic(), 0) if window_open else None))
                except queue.Empty:
                    expected = 0  # the window is over
                continue
            batch = self._take(pool, bucket)
            if batch:
                expected, arrived = self._run_pass(batch), 0
                last_arrival = time.monotonic()
                window_end = last_arrival + self.max_wait_s

    @staticmethod
    def _oldest_bucket(pool: dict[int, deque[tuple[int, _Request, int]]]) -> int | None:
        """The bucket whose first live item arrived first; drops finished requests' items."""
        best, best_order = None, None
        for bucket in list(pool):
            entries = pool[bucket]
            while entries and entries[0][1].state == _DONE:
                entries.popleft()
            if not entries:
                del pool[bucket]
            elif best_order is None or entries[0][0] < best_order:
                best, best_order = bucket, entries[0][0]
        return best

    def _take(self, pool: dict[int, deque[tuple[int, _Request, int]]], bucket: int) -> list[tuple[_Request, int]]:
        entries = pool[bucket]
        batch: list[tuple[_Request, int]] = []
        while entries and len(batch) < self.max_batch_size:
            _, request, index = entries.popleft()
            if request.state == _QUEUED:
                # A caller that gave up (cancelled or timed out) while queued gets no pass.
                request.state = _RUNNING if request.future.set_running_or_notify_cancel() else _DONE
            if request.state == _RUNNING:
                batch.append((request, index))
        if not entries:
            del pool[bucket]
        return batch

    def _call_batch_fn(self, items: list[Item]) -> list[Result]:
        results = list(self._batch_fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _run_pass(self, batch: list[tuple[_Request, int]]) -> int:
        """One ``batch_fn`` call; returns how many requests it finished."""
        requests = list(dict.fromkeys(request for request, _ in batch))
        items = [request.items[index] for request, index in batch]
        try:
            with self._model_lock:
                results = self._call_batch_fn(items)
        except BaseException as exc:  # hand the error to every waiting caller
            for request in requests:
                request.state = _DONE
                request.future.set_exception(exc)
            return len(requests)
        for (request, index), result in zip(batch, results):
            request.results[index] = result
            request.remaining -= 1
        finished = [request for request in requests if request.remaining == 0]
        self._count_pass(len(items), len(finished))
        for request in finished:
            request.state = _DONE
            request.future.set_result(request.results)
        return len(finished)
