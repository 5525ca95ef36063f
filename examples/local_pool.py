"""BEST-Route on real local models, offline: the shipped router and reward model over the local pool.

    python examples/local_pool.py                         # four held-out prompts, policy cost_reduction=0.4
    python examples/local_pool.py "What is 17 * 23?"      # your own prompt (no ground truth: not scored)
    python examples/local_pool.py --target max_quality_drop=5   # the shipped default policy

The pool: SmolLM2-135M-Instruct (routed, cheap) and Qwen2.5-Coder-1.5B-Instruct (reference), both
run in-process by llama.cpp (``bash scripts/local_models.sh install`` puts them in place). The
router and reward model were trained on the pool's generated data (``data/local_pool``) and ship
in the package (``bestroute_lc/local/artifacts``, heads over the frozen all-MiniLM-L6-v2). Code
prompts are verified against the example visible in the prompt (isolated sandbox): a rejected
pick escalates to the reference. Each prompt is also answered by the reference alone, so the
totals compare BEST-Route with always-reference on the same prompts, scored by the data set's
ground truth (GSM8K: the final number; MBPP: its unit tests in the sandbox).

Prices are compute prices (CPU time per token on a reference machine, ``bestroute_lc/local/pool.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.messages import AIMessage

ROOT = Path(__file__).resolve().parents[1]
#: Held-out prompts (the local data set's test split: neither model was trained on them), picked
#: so that each path shows at the demo target: SmolLM2 with n > 1 and reranking (a GSM8K and a code
#: prompt), a code pick that fails its visible example and escalates, and the reference. They are
#: not a sample of quality: benchmarks/local_pool.py measures that on 50 held-out prompts.
DEFAULT_PROMPTS = ("mbpp-57", "gsm8k-train-4485", "mbpp-12", "gsm8k-train-516")
DEMO_TARGET = "cost_reduction=0.4"


def held_out_prompts(ids: tuple[str, ...]) -> list:
    from training.generate import load_prompts

    rows = {p.id: p for p in load_prompts(ROOT / "data" / "local_pool" / "prompts.jsonl")}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SystemExit(f"unknown prompt ids {missing}")
    return [rows[i] for i in ids]


def short(text: str, width: int = 88) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", nargs="*", help="your own prompt (default: four held-out prompts)")
    # The demo runs the calibrated "save 40 %" policy: it routes to SmolLM2 (n > 1, reranked, verified
    # and escalated on code) so the mechanics show, and the totals show what that costs in quality on
    # this pool. The shipped default (max_quality_drop=5) calls the reference for everything here.
    parser.add_argument("--target", default=DEMO_TARGET, help=f"a calibrated target stored in the router (default {DEMO_TARGET})")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="llama.cpp threads per model")
    args = parser.parse_args(argv)

    from bestroute_lc.local.default import default_chat_model
    from bestroute_lc.local.pool import REFERENCE, local_pool
    from bestroute_lc.verifiers import ExecutionVerifier
    from training.config import load_config
    from training.scorers import build_scorer

    target = args.target
    pool = local_pool(n_threads=args.threads, max_tokens=384)
    llm = default_chat_model(pool=pool, target=target)
    # Code prompts: the pick must pass the example the prompt shows, else the reference answers.
    verified = default_chat_model(pool=pool, target=target, verifier=ExecutionVerifier(), escalation=[(REFERENCE, 1)])
    scorer = build_scorer(load_config(ROOT / "training" / "local_pool" / "run.yaml").scorer)
    policy = llm.policy.kind if llm.policy is not None else "router"
    print(f"pool: {', '.join(pool.names)} (reference {REFERENCE}); target {target}: {policy} policy, threshold {llm.threshold:.4f}\n")

    if args.prompt:
        message = llm.invoke(" ".join(args.prompt))
        decision = message.response_metadata["bestroute"]
        print(message.content)
        print(f"\n-> {decision['member']} n={decision['n']} ({decision['reason']}), cost ${decision['actual_cost_usd']:.8f}")
        return 0

    totals = {"best-route": [0.0, 0.0], "reference": [0.0, 0.0]}
    for record in held_out_prompts(DEFAULT_PROMPTS):
        model = verified if record.scorer == "code_tests" else llm
        started = time.perf_counter()
        routed: AIMessage = model.invoke(record.prompt)
        routed_s = time.perf_counter() - started
        reference: AIMessage = llm.invoke(record.prompt, model=REFERENCE)
        decision = routed.response_metadata["bestroute"]
        ref_decision = reference.response_metadata["bestroute"]
        routed_score, reference_score = (float(s) for s in scorer.score(record, [str(routed.content), str(reference.content)]))
        print(f"[{record.id}] {short(record.prompt.splitlines()[-1] if record.source == 'gsm8k' else record.prompt)}")
        p = decision.get("match_probabilities") or {}
        print(f"  router p[smollm2-135m, n=1..{len(next(iter(p.values()), []))}]: "
              + " ".join(f"{v:.3f}" for v in next(iter(p.values()), [])))
        stages = " -> ".join(f"{s['member']}:{s['n']} ({'accepted' if s.get('accepted') else 'rejected'})"
                             for s in decision.get("stages", [])) or "-"
        print(f"  BEST-Route: {decision['member']} n={decision['n']} ({decision['reason']}); "
              f"reranker scores {decision.get('candidate_scores')}; verified stages: {stages}")
        print(f"  answer: {short(str(routed.content))}")
        print(f"  ground truth {routed_score:.0f}, cost ${decision['actual_cost_usd']:.8f}, {routed_s:.1f} s | "
              f"always-reference: ground truth {reference_score:.0f}, cost ${ref_decision['actual_cost_usd']:.8f}\n")
        for name, score, cost in (("best-route", routed_score, decision["actual_cost_usd"]),
                                  ("reference", reference_score, ref_decision["actual_cost_usd"])):
            totals[name][0] += score
            totals[name][1] += cost
    count = len(DEFAULT_PROMPTS)
    (bq, bc), (rq, rc) = totals["best-route"], totals["reference"]
    print(f"total on {count} prompts: BEST-Route {bq:.0f}/{count} correct for ${bc:.8f}; "
          f"always-reference {rq:.0f}/{count} for ${rc:.8f} ({100 * (1 - bc / rc):+.1f} % cost saved)")
    print("decision of the last call:", json.dumps(decision, indent=1, default=str)[:1500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
