"""What verified escalation costs in latency: accepted calls vs escalated calls vs always-reference,
and the verifier's own time.

Simulated pool (no network): a cheap member that answers after ``--cheap-latency`` seconds
(default 0.3) and a reference that answers after ``--reference-latency`` (default 1.0), both
in-process chat models that sleep, then return a code answer. The task is a small coding
prompt with three doctest examples; the cheap member's answer is right with probability
``--p-correct`` (seeded), the reference's always. The verifier is the real
``ExecutionVerifier`` (isolated sandbox run of the pick on the visible examples); with
``n = 3`` the pick comes from ``CodeExecutionReranker`` and the verifier reads its pass
counts instead of running the pick again. One numeric-answer scenario times the
``AgreementVerifier``.

Calls run one at a time, so latencies are not inflated by queueing.

    python benchmarks/escalation_latency.py [--calls 40] [--p-correct 0.7] [--seed 0] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from bestroute_lc import BestRouteChatModel, Pool, PoolMember, Prices
from bestroute_lc.artifacts import PolicyChoice
from bestroute_lc.rerankers.code_execution import CodeExecutionReranker
from bestroute_lc.verifiers import AgreementVerifier, ExecutionVerifier
from tests.helpers import tiny_router

PROMPT = '''Complete this function:
```python
def clamp(x, low, high):
    """Limit x to the range [low, high].
    >>> clamp(5, 0, 10)
    5
    >>> clamp(-3, 0, 10)
    0
    >>> clamp(42, 0, 10)
    10
    """
```
'''
RIGHT = "```python\ndef clamp(x, low, high):\n    return max(low, min(x, high))\n```"
WRONG = "```python\ndef clamp(x, low, high):\n    return min(low, max(x, high))\n```"
MATH_PROMPT = "A shop sells 3 boxes of 12 eggs and 4 more eggs. How many eggs is that?"


class SimulatedMember(BaseChatModel):
    """Sleeps ``latency_s``, then answers the next text of ``script`` (cycled)."""

    name_: str
    latency_s: float
    script: list = Field(default_factory=list)
    position: int = 0

    @property
    def _llm_type(self) -> str:
        return "simulated"

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        text = self.script[self.position % len(self.script)]
        self.position += 1
        prompt_tokens = max(1, sum(len(str(m.content)) for m in messages) // 4)
        output_tokens = max(1, len(text) // 4)
        usage = {"input_tokens": prompt_tokens, "output_tokens": output_tokens, "total_tokens": prompt_tokens + output_tokens}
        return AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.name_})

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        time.sleep(self.latency_s)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        await asyncio.sleep(self.latency_s)
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])


def make_pool(cheap_script: list[str], reference_script: list[str], cheap_latency: float, reference_latency: float) -> Pool:
    return Pool(
        members=[
            PoolMember(
                name="reference",
                chat_model=SimulatedMember(name_="reference", latency_s=reference_latency, script=reference_script),
                prices=Prices(input_per_mtok=2.5, output_per_mtok=10.0),
                timeout_s=30,
            ),
            PoolMember(
                name="cheap",
                chat_model=SimulatedMember(name_="cheap", latency_s=cheap_latency, script=cheap_script),
                prices=Prices(input_per_mtok=0.15, output_per_mtok=0.6),
                timeout_s=30,
            ),
        ],
        reference="reference",
    )


async def run_calls(llm: BestRouteChatModel, prompt: str, calls: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(calls):
        start = time.perf_counter()
        message = await llm.ainvoke(prompt)
        wall = time.perf_counter() - start
        meta = message.response_metadata["bestroute"]
        stages = meta.get("stages") or []
        kind = "escalated" if len(stages) > 1 else ("accepted" if stages else "reference")
        rows.append(
            {
                "kind": kind,
                "latency_s": wall,
                "verify_s": sum(s["verify_s"] for s in stages),
                "rerank_s": meta["latency_s"]["rerank"],
                "cost_usd": meta["actual_cost_usd"],
            }
        )
    return rows


def summary(rows: list[dict[str, Any]], key: str = "latency_s") -> dict[str, float]:
    values = np.array([r[key] for r in rows]) if rows else np.array([float("nan")])
    return {
        "calls": len(rows),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "mean": float(values.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="calls of the verified policy (always-reference: half)")
    parser.add_argument("--p-correct", type=float, default=0.7)
    parser.add_argument("--cheap-latency", type=float, default=0.3)
    parser.add_argument("--reference-latency", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    cheap_script = [RIGHT if rng.random() < args.p_correct else WRONG for _ in range(args.calls * 3)]
    router = tiny_router(["cheap"], "reference", max_n=3)

    def model(policy: PolicyChoice, **kwargs: Any) -> BestRouteChatModel:
        pool = make_pool(cheap_script, [RIGHT], args.cheap_latency, args.reference_latency)
        return BestRouteChatModel(pool=pool, router=router, reranker=CodeExecutionReranker(), policy=policy, **kwargs)

    verified_n1 = model(PolicyChoice(kind="verified", member="cheap", n=1), verifier=ExecutionVerifier())
    verified_n3 = model(PolicyChoice(kind="verified", member="cheap", n=3), verifier=ExecutionVerifier())
    no_reuse = model(PolicyChoice(kind="verified", member="cheap", n=3), verifier=ExecutionVerifier(reuse_reranker_scores=False))
    always_reference = model(PolicyChoice(kind="constant", member="reference", n=1))
    math_pool = make_pool(["3 x 12 = 36, plus 4: #### 40", "36 + 4 = 40", "so 38"], ["#### 40"], args.cheap_latency, args.reference_latency)
    agreement = BestRouteChatModel(
        pool=math_pool,
        router=router,
        reranker=CodeExecutionReranker(),  # no examples in a math prompt: scores are all 0, first sample wins
        policy=PolicyChoice(kind="verified", member="cheap", n=3),
        verifier=AgreementVerifier(),
    )

    async def everything() -> dict[str, list[dict[str, Any]]]:
        await verified_n1.ainvoke(PROMPT)  # warm-up: isolation probe, event loop, first sandbox
        return {
            "n1": await run_calls(verified_n1, PROMPT, args.calls),
            "n3": await run_calls(verified_n3, PROMPT, args.calls // 2),
            "n3_no_reuse": await run_calls(no_reuse, PROMPT, args.calls // 2),
            "reference": await run_calls(always_reference, PROMPT, args.calls // 2),
            "agreement": await run_calls(agreement, MATH_PROMPT, args.calls // 2),
        }

    results = asyncio.run(everything())
    n1 = results["n1"]
    table = {
        "verified cheap n=1, accepted": summary([r for r in n1 if r["kind"] == "accepted"]),
        "verified cheap n=1, escalated": summary([r for r in n1 if r["kind"] == "escalated"]),
        "verified cheap n=1, all calls": summary(n1),
        "always reference": summary(results["reference"]),
    }
    verifier_time = {
        "execution, n=1 (runs the pick)": summary(n1, "verify_s"),
        "execution, n=3 after CodeExecutionReranker (reads its scores)": summary(results["n3"], "verify_s"),
        "execution, n=3, reuse off (runs the pick again)": summary(results["n3_no_reuse"], "verify_s"),
        "agreement, n=3 (numeric answers)": summary(results["agreement"], "verify_s"),
    }
    costs = {
        "verified cheap n=1": float(np.mean([r["cost_usd"] for r in n1])),
        "always reference": float(np.mean([r["cost_usd"] for r in results["reference"]])),
    }
    print(
        f"simulated latency: cheap {args.cheap_latency} s, reference {args.reference_latency} s; "
        f"cheap answer right with p = {args.p_correct} (seed {args.seed}); one call at a time\n"
    )
    print("| calls | count | p50 s | p95 s | mean s |\n|---|---:|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['calls']} | {row['p50']:.3f} | {row['p95']:.3f} | {row['mean']:.3f} |")
    print("\n| verifier's own time | count | p50 ms | p95 ms |\n|---|---:|---:|---:|")
    for name, row in verifier_time.items():
        print(f"| {name} | {row['calls']} | {row['p50'] * 1e3:.1f} | {row['p95'] * 1e3:.1f} |")
    rerank = summary(results["n3"], "rerank_s")
    print(f"\nCodeExecutionReranker on 3 candidates (n=3): p50 {rerank['p50'] * 1e3:.0f} ms, p95 {rerank['p95'] * 1e3:.0f} ms")
    print(
        f"mean billed cost per call: verified cheap n=1 ${costs['verified cheap n=1']:.6f}, "
        f"always reference ${costs['always reference']:.6f}"
    )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "latency": table, "verifier": verifier_time, "costs": costs, "rerank": rerank}, indent=2))


if __name__ == "__main__":
    main()
