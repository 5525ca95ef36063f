"""Single-thread speed of the local pool's models (the basis of their prices).

    python benchmarks/local_models_speed.py [--threads 1] [--repeats 3] [--max-tokens 128] [--models smollm2-135m ...]

For each model: the first prompts of ``data/local_pool/prompts.jsonl`` (both tasks) through
``ChatLlamaCppLocal``; llama.cpp's own performance counters give prompt-evaluation and
generation tokens per second (medians over the runs). Prints a table and the prices those
speeds imply under ``bestroute_lc.local.pool.CPU_THREAD_HOUR_USD``. The numbers move with
the machine's load: measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def perf(llama) -> tuple[float, int, float, int]:
    """(prompt ms, prompt tokens, generation ms, generated tokens) of the last request."""
    import llama_cpp

    data = llama_cpp.llama_perf_context(llama._ctx.ctx)
    return data.t_p_eval_ms, data.n_p_eval, data.t_eval_ms, data.n_eval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="prompts per model (alternating tasks)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-1.5b"])
    parser.add_argument("--prompts", type=Path, default=ROOT / "data" / "local_pool" / "prompts.jsonl")
    args = parser.parse_args()

    import llama_cpp
    from langchain_core.messages import HumanMessage

    from bestroute_lc.local.chat_model import ChatLlamaCppLocal
    from bestroute_lc.local.pool import CPU_THREAD_HOUR_USD

    rows = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()][: args.repeats]
    print(f"threads={args.threads} max_tokens={args.max_tokens} prompts={len(rows)}")
    print("| model | prompt tok/s | generation tok/s | wall s/sample | USD/1M in | USD/1M out |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        chat = ChatLlamaCppLocal.from_package(name, n_threads=args.threads, max_tokens=args.max_tokens, temperature=0.7)
        llama = chat.load()
        prompt_speeds, gen_speeds, walls = [], [], []
        for i, row in enumerate(rows):
            llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
            start = time.perf_counter()
            chat.invoke([HumanMessage(row["prompt"])], seed=i)
            walls.append(time.perf_counter() - start)
            p_ms, p_n, g_ms, g_n = perf(llama)
            if p_ms > 0 and p_n > 0:
                prompt_speeds.append(p_n / p_ms * 1000)
            if g_ms > 0 and g_n > 0:
                gen_speeds.append(g_n / g_ms * 1000)
        p, g = statistics.median(prompt_speeds), statistics.median(gen_speeds)

        def usd(speed: float) -> float:
            return 1e6 / speed / 3600 * CPU_THREAD_HOUR_USD

        print(f"| {name} | {p:.1f} | {g:.2f} | {statistics.median(walls):.1f} | {usd(p):.4f} | {usd(g):.4f} |")


if __name__ == "__main__":
    main()
