"""The offline local pool: SmolLM2-135M (routed) and Qwen2.5-Coder-1.5B (reference), with prices.

Prices (USD per 1M tokens) are what the tokens cost in compute, the one place every local
pool definition takes them from (:data:`LOCAL_PRICES`; ``training/local_pool/run.yaml`` repeats
them and a test checks that the two agree):

    price per 1M tokens = 1e6 / (tokens per second on one CPU thread) / 3600 × CPU_THREAD_HOUR_USD

* ``CPU_THREAD_HOUR_USD`` = 0.045: AWS EC2 ``c7i.large`` on-demand (Linux, us-east-1) lists
  $0.08925 per hour for 2 vCPUs, i.e. ≈ $0.045 per vCPU-hour.
* Tokens per second: measured with one thread on the project's 2-core machine by
  ``benchmarks/local_models_speed.py`` (prompt evaluation for input tokens, generation for
  output tokens; medians of the runs recorded in ``MEASURED_TOKENS_PER_S``).

Only the ratio between members matters to the router's choice; the absolute numbers make the
billed ``cost_usd`` of the local pool comparable to a small hosted model's.
"""

from __future__ import annotations

from typing import Any

from bestroute_lc.local.models import MODELS, QWEN_CODER_1_5B, SMOLLM2_135M
from bestroute_lc.pool import NBilling, Pool, PoolMember
from bestroute_lc.pricing import Prices

__all__ = [
    "CPU_THREAD_HOUR_USD",
    "LOCAL_PRICES",
    "MEASURED_TOKENS_PER_S",
    "REFERENCE",
    "ROUTED",
    "chat_model",
    "cpu_prices",
    "local_pool",
]

#: USD per vCPU-hour (AWS c7i.large on-demand: $0.08925/h for 2 vCPUs).
CPU_THREAD_HOUR_USD = 0.045

#: One thread, this project's 2-core machine (shared with other work, so on the low side),
#: ``python benchmarks/local_models_speed.py --repeats 4 --max-tokens 96`` with llama-cpp-python
#: 0.3.36: medians of llama.cpp's counters, tokens per second for prompt evaluation and for
#: generation. (A 135M model evaluates prompts slowly on one thread: its matrices are too
#: small to use the vector units well; generation of both is bound by memory bandwidth.)
MEASURED_TOKENS_PER_S: dict[str, dict[str, float]] = {
    SMOLLM2_135M.name: {"prompt": 125.6, "generation": 88.5},
    QWEN_CODER_1_5B.name: {"prompt": 49.6, "generation": 16.0},
}


def cpu_prices(name: str, *, thread_hour_usd: float = CPU_THREAD_HOUR_USD) -> Prices:
    """Compute prices of a local model from its measured single-thread throughput."""
    speed = MEASURED_TOKENS_PER_S[name]

    def per_mtok(tokens_per_s: float) -> float:
        return float(f"{1e6 / tokens_per_s / 3600 * thread_hour_usd:.3g}")

    return Prices(
        input_per_mtok=per_mtok(speed["prompt"]),
        output_per_mtok=per_mtok(speed["generation"]),
        source=f"local-cpu:{name}@{thread_hour_usd}usd-per-thread-hour",
    )


#: Prices of the local members (USD per 1M tokens), by member name.
LOCAL_PRICES: dict[str, Prices] = {name: cpu_prices(name) for name in MEASURED_TOKENS_PER_S}

#: Member names: the routed member and the reference.
ROUTED = SMOLLM2_135M.name
REFERENCE = QWEN_CODER_1_5B.name


def chat_model(model: str, **kwargs: Any) -> Any:
    """``ChatLlamaCppLocal`` over a packaged model (``provider: factory`` in a training config:
    ``factory: "bestroute_lc.local.pool:chat_model"``, ``factory_kwargs: {model: smollm2-135m, ...}``)."""
    from bestroute_lc.local.chat_model import ChatLlamaCppLocal

    return ChatLlamaCppLocal.from_package(model, **kwargs)


def local_pool(
    *,
    n_threads: int | None = 1,
    temperature: float = 0.7,
    max_tokens: int = 384,
    cache_dir: str | None = None,
    timeout_s: float = 3600.0,
    max_retries: int = 1,
    **chat_kwargs: Any,
) -> Pool:
    """The local pool: ``smollm2-135m`` (routed) and ``qwen2.5-coder-1.5b`` (reference).

    Members bill n samples as ``NBilling.NATIVE`` (one call draws all n; the prompt is
    evaluated and counted once). ``timeout_s`` is generous: a CPU draws a few tokens per
    second, and a cancelled request stops at its next token.
    """
    members = []
    for name in (ROUTED, REFERENCE):
        chat = chat_model(name, n_threads=n_threads, temperature=temperature, max_tokens=max_tokens, cache_dir=cache_dir, **chat_kwargs)
        members.append(
            PoolMember.from_model(
                chat,
                name=name,
                prices=LOCAL_PRICES[name],
                n_billing=NBilling.NATIVE,
                timeout_s=timeout_s,
                max_retries=max_retries,
            )
        )
    assert set(MODELS) >= {ROUTED, REFERENCE}
    return Pool(members=members, reference=REFERENCE)
