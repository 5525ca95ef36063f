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


# -- bucketed scheduler (length_fn) ------------------------------------------------------


def test_bucket_width_validation():
    with pytest.raises(ValueError, match="bucket_width"):
        MicroBatcher(lambda xs: xs, length_fn=len, bucket_width=0)


def test_bucket_of_is_fixed_width():
    batcher = MicroBatcher(lambda xs: xs, length_fn=len, bucket_width=16)
    assert [batcher.bucket_of(n) for n in (0, 1, 16, 17, 32, 33, 400)] == [0, 0, 0, 1, 1, 2, 24]


def test_items_of_very_different_lengths_never_share_a_pass(make_batcher):
    rec = Recorder(fn=lambda s: s.upper(), delay_s=0.01)
    batcher = make_batcher(rec, max_batch_size=8, max_wait_s=0.05, length_fn=len, bucket_width=16)
    lengths = [3, 200, 15, 17, 90, 4, 31, 33, 199, 1, 64, 65, 16, 180, 2, 250] * 3
    texts = [chr(ord("a") + i % 26) * n for i, n in enumerate(lengths)]
    futures = [batcher.submit([t]) for t in texts]  # they pile up behind the first (slow) pass
    assert [f.result(timeout=5) for f in futures] == [[t.upper()] for t in texts]
    assert sorted(x for b in rec.batches for x in b) == sorted(texts)  # each item in exactly one pass
    for batch in rec.batches:
        assert len(batch) <= 8
        assert len({batcher.bucket_of(len(x)) for x in batch}) == 1, batch
        assert max(map(len, batch)) - min(map(len, batch)) < 16, batch
    assert batcher.stats.items == len(texts) and batcher.stats.requests == len(texts)
    assert batcher.stats.forward_passes == len(rec.batches) < len(texts)  # equal buckets shared passes


def test_multi_item_request_split_across_buckets_gets_results_in_order(make_batcher):
    rec = Recorder(fn=lambda s: len(s))
    batcher = make_batcher(rec, max_wait_s=0.05, length_fn=len, bucket_width=16)
    request = ["a" * 3, "b" * 100, "c" * 5, "d" * 101, "e" * 40]
    assert batcher(request) == [3, 100, 5, 101, 40]
    # one pass per bucket, each in submission order; the oldest item's bucket first
    assert rec.batches == [["a" * 3, "c" * 5], ["b" * 100, "d" * 101], ["e" * 40]]
    assert (batcher.stats.forward_passes, batcher.stats.items, batcher.stats.requests) == (3, 5, 1)


def test_requests_sharing_buckets_get_their_own_results(make_batcher):
    rec = Recorder(fn=lambda s: f"<{s}>", delay_s=0.01)
    batcher = make_batcher(rec, max_batch_size=4, max_wait_s=0.05, length_fn=len, bucket_width=8)
    requests = [[f"{i}" * (1 + (i * 7 + j * 13) % 40) for j in range(1 + i % 4)] for i in range(1, 25)]
    futures = [batcher.submit(r) for r in requests]
    for request, future in zip(requests, futures):
        assert future.result(timeout=5) == [f"<{x}>" for x in request]
    assert all(len(b) <= 4 for b in rec.batches)
    assert batcher.stats.requests == len(requests)
    assert batcher.stats.items == sum(map(len, requests))


def test_a_bucket_larger_than_max_batch_size_is_split_in_order(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec, max_batch_size=4, length_fn=lambda x: 5)
    assert batcher(list(range(10))) == [x * 10 for x in range(10)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_lone_request_starts_at_once(make_batcher):
    batcher = make_batcher(Recorder(), max_wait_s=1.0, length_fn=lambda x: 1)
    start = time.monotonic()
    assert batcher([1]) == [10]
    assert time.monotonic() - start < 0.5
    # a caller calling in a loop never sits out the window either
    start = time.monotonic()
    assert [batcher([i]) for i in range(10)] == [[i * 10] for i in range(10)]
    assert time.monotonic() - start < 0.9


def test_window_closes_when_the_answered_callers_are_back(make_batcher):
    """Callers in a closed loop share passes, and the window closes long before its 1 s."""
    rec = Recorder(delay_s=0.01)
    batcher = make_batcher(rec, max_batch_size=64, max_wait_s=1.0, length_fn=lambda x: 1)
    barrier = threading.Barrier(8)

    def caller(i):
        barrier.wait(timeout=5)
        return [batcher([i * 100 + k]) for k in range(5)]

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(caller, range(8)))
    assert time.monotonic() - start < 3.0
    assert outcomes == [[[(i * 100 + k) * 10] for k in range(5)] for i in range(8)]
    assert batcher.stats.forward_passes < 40 and batcher.stats.largest_batch > 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_bucketed_cancelled_request_gets_no_pass(make_batcher):
    rec = Recorder(delay_s=0.2)
    batcher = make_batcher(rec, length_fn=len)
    first = batcher.submit(["x"])  # occupies the worker
    time.sleep(0.05)
    doomed = batcher.submit(["doomed", "d" * 50])
    survivor = batcher.submit(["keep"])
    assert doomed.cancel()
    assert survivor.result(timeout=5) == ["keepkeepkeepkeepkeepkeepkeepkeepkeepkeep"]
    assert first.result(timeout=5) == ["x" * 10]
    assert not any("doomed" in b or "d" * 50 in b for b in rec.batches)
    assert batcher(["after"]) == ["after" * 10]


def test_bucketed_error_goes_to_the_requests_of_the_failing_pass(make_batcher):
    def failing(items):
        if any(len(x) > 50 for x in items):
            raise KeyError("long item")
        time.sleep(0.05)
        return [x.upper() for x in items]

    batcher = make_batcher(failing, max_wait_s=0.05, length_fn=len)
    short = batcher.submit(["ab"])  # runs alone, keeps the worker busy while the rest queue up
    time.sleep(0.01)
    mixed = batcher.submit(["cd", "x" * 60])  # one short item, one that fails
    long_only = batcher.submit(["y" * 61])
    short_too = batcher.submit(["ef"])
    assert short.result(timeout=5) == ["AB"]
    for future in (mixed, long_only):
        with pytest.raises(KeyError, match="long item"):
            future.result(timeout=5)
    assert short_too.result(timeout=5) == ["EF"]
    assert batcher(["gh", "ij"]) == ["GH", "IJ"]  # the worker survives


def test_length_fn_errors_raise_in_the_caller(make_batcher):
    rec = Recorder()
    batcher = make_batcher(rec, length_fn=len)
    with pytest.raises(TypeError):
        batcher.submit([1])
    assert rec.batches == [] and batcher(["ok"]) == ["ok" * 10]


async def test_bucketed_async_callers(make_batcher):
    rec = Recorder(fn=lambda s: len(s), delay_s=0.01)
    batcher = make_batcher(rec, max_wait_s=0.02, length_fn=len)
    texts = ["z" * (1 + (i * 37) % 300) for i in range(40)]
    results = await asyncio.gather(*(batcher.acall([t]) for t in texts))
    assert results == [[len(t)] for t in texts]
    assert rec.threads and threading.get_ident() not in rec.threads and len(rec.threads) == 1


def test_bucketed_close_serves_what_was_queued_and_restarts(make_batcher):
    rec = Recorder(delay_s=0.02)
    batcher = make_batcher(rec, length_fn=len)
    futures = [batcher.submit(["a" * n]) for n in (1, 30, 60, 90)]
    batcher.close()
    assert [f.result(timeout=5) for f in futures] == [["a" * n * 10] for n in (1, 30, 60, 90)]
    first = batcher._thread
    assert first is not None and not first.is_alive()
    assert batcher.submit(["b"]).result(timeout=5) == ["b" * 10]
    assert batcher._thread is not first


def test_a_synchronous_call_on_an_idle_batcher_runs_in_the_callers_thread(make_batcher):
    """No hand-off to the worker and back when nothing is queued or running; the same passes."""
    rec = Recorder(fn=lambda s: len(s))
    batcher = make_batcher(rec, max_batch_size=2, length_fn=len, bucket_width=16)
    assert batcher(["a" * 3, "b" * 100, "c" * 5, "d" * 4]) == [3, 100, 5, 4]
    assert rec.threads == {threading.get_ident()} and batcher._thread is None
    assert rec.batches == [["a" * 3, "c" * 5], ["d" * 4], ["b" * 100]]
    assert (batcher.stats.forward_passes, batcher.stats.items, batcher.stats.requests) == (3, 4, 1)
    failing_fn = Recorder(fn=lambda s: 1 / 0)
    failing = make_batcher(failing_fn, length_fn=len)
    for _ in range(2):  # the error raises in the caller, and the next call runs again
        with pytest.raises(ZeroDivisionError):
            failing(["x"])
    assert len(failing_fn.batches) == 2 and failing._queued == 0


def test_inline_calls_never_run_beside_the_worker_or_each_other(make_batcher):
    """Synchronous callers (inline when idle) and asynchronous ones (the worker) mixed: one
    batch_fn at a time, queued work first, every caller its own results."""
    running, most = [0], [0]
    lock = threading.Lock()

    def forward(items):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return [x * 10 for x in items]

    batcher = make_batcher(forward, length_fn=lambda x: x % 50, bucket_width=8)

    def caller(base: int) -> list:
        out = []
        for i in range(15):
            x = base * 100 + i
            out.append(batcher([x])[0] if i % 3 else batcher.submit([x]).result(timeout=5)[0])
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(caller, range(8)))
    assert results == [[(b * 100 + i) * 10 for i in range(15)] for b in range(8)]
    assert most[0] == 1
    assert batcher.stats.requests == 8 * 15 and batcher._queued == 0
