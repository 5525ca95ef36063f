"""BEST-Route on the local pool, live: quality, cost and overhead on held-back prompts.

    python benchmarks/local_pool.py [--prompts 50] [--threads 2] [--target max_quality_drop=5] [--out reports/local_pool]

The first ``--prompts`` prompts of the local data set's test split (``data/local_pool/run/split.json``:
neither the router nor the reward model saw them), each answered live through the models three
ways: BEST-Route with the shipped router and reward model at the calibrated ``--target`` (the
default model, ``bestroute_lc.local.default``), always the reference (``qwen2.5-coder-1.5b``,
n = 1) and always the small model (``smollm2-135m``, n = 1). Every answer is scored by the data
set's ground truth (GSM8K: the final number; MBPP: the unit tests, in the sandbox); cost is the
billed compute price of what each call drew. Overhead: BEST-Route's routing + reranking seconds
as a share of its whole call (``latency_s`` in the decision metadata).

Results append to ``<out>/benchmark_calls.jsonl`` as they come (a killed run resumes with the
prompts it has); the summary goes to ``<out>/benchmark.md`` and ``benchmark.json``. Timings move
with the machine's load; the ratios within one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("best-route", "always-reference", "always-small")


def held_back(count: int) -> list:
    from training.generate import load_prompts

    prompts = load_prompts(ROOT / "data" / "local_pool" / "prompts.jsonl")
    test = set(json.loads((ROOT / "data" / "local_pool" / "run" / "split.json").read_text())["test"])
    return [p for p in prompts if p.id in test][:count]


def summarize(rows: list[dict], target: str, threads: int) -> tuple[dict, str]:
    out: dict = {"prompts": len(rows), "target": target, "threads": threads, "policies": {}}
    for policy in POLICIES:
        calls = [r[policy] for r in rows]
        out["policies"][policy] = {
            "quality": statistics.fmean(c["score"] for c in calls),
            "cost_per_1000_usd": 1000 * statistics.fmean(c["cost_usd"] for c in calls),
            "mean_seconds": statistics.fmean(c["seconds"] for c in calls),
        }
    routed = [r["best-route"] for r in rows]
    overhead = [(c["routing_s"] + c["rerank_s"]) / c["seconds"] for c in routed if c["seconds"] > 0]
    members: dict[str, int] = {}
    for c in routed:
        key = f"{c['member']}:{c['n']}"
        members[key] = members.get(key, 0) + 1
    reference = out["policies"]["always-reference"]
    best = out["policies"]["best-route"]
    out.update(
        routing_and_rerank_share_of_call=statistics.fmean(overhead) if overhead else None,
        routing_and_rerank_seconds=statistics.fmean(c["routing_s"] + c["rerank_s"] for c in routed),
        answered_by=members,
        cost_reduction_vs_reference=1 - best["cost_per_1000_usd"] / reference["cost_per_1000_usd"],
        quality_drop_pct_vs_reference=100 * (reference["quality"] - best["quality"]) / reference["quality"] if reference["quality"] else None,
    )
    lines = [
        f"# BEST-Route on the local pool, live ({len(rows)} held-back prompts, target {target}, {threads} threads)",
        "",
        "| policy | quality (ground truth) | cost per 1,000 calls (USD) | mean seconds per call |",
        "|---|---:|---:|---:|",
    ]
    for policy in POLICIES:
        p = out["policies"][policy]
        lines.append(f"| {policy} | {p['quality']:.3f} | {p['cost_per_1000_usd']:.5f} | {p['mean_seconds']:.1f} |")
    lines += [
        "",
        (f"BEST-Route vs always-reference: {100 * out['cost_reduction_vs_reference']:.1f} % cost saved, "
         f"quality drop {out['quality_drop_pct_vs_reference']:.1f} %. Answered by: "
         + ", ".join(f"{k} {v}" for k, v in sorted(members.items())) + "."),
        f"Routing + reranking: {out['routing_and_rerank_seconds'] * 1000:.0f} ms per call, "
        f"{100 * (out['routing_and_rerank_share_of_call'] or 0):.2f} % of BEST-Route's call time.",
    ]
    return out, "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default=None, help="calibrated target (default: the shipped default)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "local_pool")
    args = parser.parse_args()

    from tqdm import tqdm

    from bestroute_lc.local.default import DEFAULT_TARGET, default_chat_model
    from bestroute_lc.local.pool import REFERENCE, ROUTED, local_pool
    from training.config import load_config
    from training.scorers import build_scorer

    target = args.target or DEFAULT_TARGET
    args.out.mkdir(parents=True, exist_ok=True)
    calls_path = args.out / "benchmark_calls.jsonl"
    done = {}
    if calls_path.exists():
        for line in calls_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("target") == target:
                    done[row["prompt_id"]] = row
    prompts = held_back(args.prompts)
    llm = default_chat_model(pool=local_pool(n_threads=args.threads, max_tokens=384), target=target)
    scorer = build_scorer(load_config(ROOT / "training" / "local_pool" / "run.yaml").scorer)
    for record in tqdm([p for p in prompts if p.id not in done], desc="prompts"):
        row: dict = {"prompt_id": record.id, "source": record.source, "target": target}
        for policy, member in (("best-route", None), ("always-reference", REFERENCE), ("always-small", ROUTED)):
            message = llm.invoke(record.prompt, **({"model": member} if member else {}))
            meta = message.response_metadata["bestroute"]
            latency = meta["latency_s"]
            row[policy] = {
                "member": meta["member"], "n": meta["n"], "cost_usd": meta["actual_cost_usd"],
                "score": float(scorer.score(record, [str(message.content)])[0]),
                "seconds": sum(latency.values()), "routing_s": latency.get("routing", 0.0), "rerank_s": latency.get("rerank", 0.0),
            }
        with calls_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[record.id] = row
    rows = [done[p.id] for p in prompts if p.id in done]
    summary, text = summarize(rows, target, args.threads)
    (args.out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    (args.out / "benchmark.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
