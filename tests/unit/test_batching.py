"""MicroBatcher: concurrent callers share forward passes and each gets its own results."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bestroute_lc.batching import MicroBatcher

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """A batch function that records every batch it sees."""

    def __init__(self, fn=lambda x: x * 10, delay_s: float = 0.0):
        self.fn = fn
        self.delay_s = delay_s
        self.batches: list[list] = []
        self.threads: set[int] = set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        return [self.fn(x) for x in items]


@pytest.fixture
def make_batcher():
    made: list[MicroBatcher] = []

    def make(fn, **kwargs):
        batcher = MicroBatcher(fn, **kwargs)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def test_constructor_validation():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda xs: xs, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(lambda xs: xs, max_wait_s=-0.1)


def test_single_sync_call(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec)
    assert batcher([1, 2, 3]) == [10, 20, 30]
    assert rec.batches == [[1, 2, 3]]
    assert (batcher.stats.forward_passes, batcher.stats.items, batcher.stats.requests) == (1, 3, 1)
    assert batcher.stats.largest_batch == 3


def test_empty_request_resolves_without_forward_pass(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec)
    assert batcher([]) == []
    assert rec.batches == [] and batcher.stats.forward_passes == 0


def test_results_routed_to_the_right_callers(make_batcher):
    rec = Recorder(fn=lambda x: f"r{x}")
    batcher = make_batcher(rec, max_wait_s=0.05)
    futures = {i: batcher.submit([i, i + 1000]) for i in range(20)}
    for i, future in futures.items():
        assert future.result(timeout=5) == [f"r{i}", f"r{i + 1000}"]
    assert sum(len(b) for b in rec.batches) == 40
    assert batcher.stats.requests == 20
    assert len(rec.batches) < 20  # they shared passes


async def test_concurrent_async_callers_share_forward_passes(make_batcher):
    rec = Recorder(fn=lambda x: x * x)
    batcher = make_batcher(rec, max_batch_size=64, max_wait_s=0.02)
    results = await asyncio.gather(*(batcher.acall([i]) for i in range(32)))
    assert results == [[i * i] for i in range(32)]
    assert batcher.stats.forward_passes <= 4
    assert batcher.stats.forward_passes == len(rec.batches)
    assert batcher.stats.requests == 32 and batcher.stats.items == 32
    assert batcher.stats.largest_batch >= 8
    # one worker thread owns the model, not the event loop thread
    assert rec.threads and threading.get_ident() not in rec.threads and len(rec.threads) == 1


async def test_async_callers_with_mixed_sizes(make_batcher):
    rec = Recorder(fn=lambda x: -x)
    batcher = make_batcher(rec, max_batch_size=64, max_wait_s=0.02)
    sizes = [1, 3, 5, 2, 8, 1]
    requests = []
    start = 0
    for size in sizes:
        requests.append(list(range(start, start + size)))
        start += size
    results = await asyncio.gather(*(batcher.acall(r) for r in requests))
    assert results == [[-x for x in r] for r in requests]


def test_multi_item_requests_kept_together(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec, max_batch_size=4, max_wait_s=0.05)
    requests = [[f"a{i}" for i in range(3)], [f"b{i}" for i in range(3)], [f"c{i}" for i in range(6)], ["d0"]]
    futures = [batcher.submit(r) for r in requests]
    for request, future in zip(requests, futures):
        assert future.result(timeout=5) == [x * 10 for x in request]
    for request in requests:
        holding = [b for b in rec.batches if set(request) & set(b)]
        assert len(holding) == 1, (request, rec.batches)
        batch = holding[0]
        start = batch.index(request[0])
        assert batch[start : start + len(request)] == request  # contiguous and in order
    # a request larger than max_batch_size is not split
    assert ["c0", "c1", "c2", "c3", "c4", "c5"] in [b[b.index("c0") : b.index("c0") + 6] for b in rec.batches if "c0" in b]


def test_max_batch_size_respected_for_single_items(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec, max_batch_size=4, max_wait_s=0.1)
    futures = [batcher.submit([i]) for i in range(22)]
    assert [f.result(timeout=5) for f in futures] == [[i * 10] for i in range(22)]
    assert all(len(b) <= 4 for b in rec.batches)
    assert batcher.stats.largest_batch == 4
    assert len(rec.batches) >= 6
    # order is preserved across batches
    assert [x for b in rec.batches for x in b] == list(range(22))


def test_late_arrivals_within_max_wait_join_the_batch(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec, max_batch_size=16, max_wait_s=0.3)
    futures = []
    for i in range(3):
        futures.append(batcher.submit([i]))
        time.sleep(0.02)  # staggered, but well inside the collection window
    assert [f.result(timeout=5) for f in futures] == [[0], [10], [20]]
    assert rec.batches == [[0, 1, 2]]


def test_lone_request_is_not_held_much_longer_than_max_wait(make_batcher):
    batcher = make_batcher(Recorder(), max_batch_size=16, max_wait_s=0.05)
    batcher([0])  # start the worker
    start = time.monotonic()
    assert batcher([1]) == [10]
    assert time.monotonic() - start < 1.0


def test_max_wait_zero_still_works(make_batcher):
    batcher = make_batcher(Recorder(), max_wait_s=0.0)
    assert [batcher([i]) for i in range(5)] == [[i * 10] for i in range(5)]


def test_error_propagated_to_every_caller_in_the_batch(make_batcher):
    calls = []

    def failing(items):
        calls.append(list(items))
        if "boom" in items:
            raise KeyError("bad item")
        return items

    batcher = make_batcher(failing, max_batch_size=16, max_wait_s=0.2)
    futures = [batcher.submit(["a"]), batcher.submit(["boom"]), batcher.submit(["b", "c"])]
    errors = []
    for future in futures:
        with pytest.raises(KeyError, match="bad item") as info:
            future.result(timeout=5)
        errors.append(info.value)
    assert len(calls) == 1  # all three were in the failing batch
    assert errors[0] is errors[1] is errors[2]
    assert batcher.stats.forward_passes == 0
    # the worker survives and serves later calls
    assert batcher(["x"]) == ["x"]
    assert batcher.stats.forward_passes == 1


async def test_error_propagated_to_async_callers(make_batcher):
    def failing(items):
        raise RuntimeError("model on fire")

    batcher = make_batcher(failing, max_wait_s=0.02)
    results = await asyncio.gather(*(batcher.acall([i]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "model on fire" in str(r) for r in results)


def test_wrong_result_count_is_an_error(make_batcher):
    batcher = make_batcher(lambda items: items[:-1])
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        batcher([1, 2])


def test_sync_callers_from_threads(make_batcher):
    rec = Recorder(fn=lambda x: (x, threading.get_ident()), delay_s=0.01)
    batcher = make_batcher(rec, max_batch_size=64, max_wait_s=0.05)
    barrier = threading.Barrier(16)

    def call(i):
        barrier.wait(timeout=5)
        return threading.get_ident(), batcher([i])

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(call, range(16)))
    for i, (_, result) in enumerate(outcomes):
        assert [r[0] for r in result] == [i]
    assert batcher.stats.requests == 16 and batcher.stats.items == 16
    assert batcher.stats.forward_passes < 16
    caller_threads = {tid for tid, _ in outcomes}
    assert not (rec.threads & caller_threads)


def test_callers_from_several_event_loops(make_batcher):
    batcher = make_batcher(Recorder(), max_wait_s=0.01)

    async def run(offset):
        return await asyncio.gather(*(batcher.acall([offset + i]) for i in range(4)))

    assert asyncio.run(run(0)) == [[0], [10], [20], [30]]
    assert asyncio.run(run(100)) == [[1000], [1010], [1020], [1030]]

    results = {}

    def in_thread():
        results["t"] = asyncio.run(run(7))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=10)
    assert results["t"] == [[70], [80], [90], [100]]


def test_close_stops_worker_and_submit_restarts_it(make_batcher):
    batcher = make_batcher(Recorder())
    assert batcher([1]) == [10]
    first = batcher._thread
    batcher.close()
    assert first is not None and not first.is_alive()
    assert batcher([2]) == [20]
    assert batcher._thread is not first and batcher._thread.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_cancelled_caller_does_not_break_the_others(make_batcher):
    batcher = make_batcher(Recorder(delay_s=0.1), max_wait_s=0.05)
    cancelled = asyncio.create_task(batcher.acall([1]))
    survivor = asyncio.create_task(batcher.acall([2]))
    await asyncio.sleep(0.01)  # both are queued / collected; the pass has not finished
    cancelled.cancel()
    assert await asyncio.wait_for(survivor, timeout=2) == [20]
    assert await asyncio.wait_for(batcher.acall([3]), timeout=3) == [30]
