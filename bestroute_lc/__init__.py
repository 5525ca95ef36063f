"""BEST-Route for LangChain: cost-aware routing with best-of-n sampling.

The names below are imported on first use (PEP 562): ``import bestroute_lc`` and the pure
parts (``Pool``, ``Prices``, ``choose``...) do not load torch or transformers; the router,
the reward model and the chat model that holds them do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "ArtifactError": "bestroute_lc.artifacts",
    "RewardConfig": "bestroute_lc.artifacts",
    "RouterConfig": "bestroute_lc.artifacts",
    "MicroBatcher": "bestroute_lc.batching",
    "DECISION_EVENT": "bestroute_lc.chat_model",
    "BestRouteChatModel": "bestroute_lc.chat_model",
    "BestRouteEngine": "bestroute_lc.engine",
    "BestRouteError": "bestroute_lc.engine",
    "RouteResult": "bestroute_lc.engine",
    "Decision": "bestroute_lc.policy",
    "MemberCosts": "bestroute_lc.policy",
    "Option": "bestroute_lc.policy",
    "choose": "bestroute_lc.policy",
    "NBilling": "bestroute_lc.pool",
    "Pool": "bestroute_lc.pool",
    "PoolMember": "bestroute_lc.pool",
    "PAPER_TABLE6": "bestroute_lc.pricing",
    "Prices": "bestroute_lc.pricing",
    "lookup_prices": "bestroute_lc.pricing",
    "paper_prices": "bestroute_lc.pricing",
    "Reranker": "bestroute_lc.rerankers.base",
    "RewardModel": "bestroute_lc.reward",
    "RewardPredictor": "bestroute_lc.reward",
    "pairwise_ranking_loss": "bestroute_lc.reward",
    "MultiHeadRouter": "bestroute_lc.router",
    "RouterPredictor": "bestroute_lc.router",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from bestroute_lc.artifacts import ArtifactError, RewardConfig, RouterConfig
    from bestroute_lc.batching import MicroBatcher
    from bestroute_lc.chat_model import DECISION_EVENT, BestRouteChatModel
    from bestroute_lc.engine import BestRouteEngine, BestRouteError, RouteResult
    from bestroute_lc.policy import Decision, MemberCosts, Option, choose
    from bestroute_lc.pool import NBilling, Pool, PoolMember
    from bestroute_lc.pricing import PAPER_TABLE6, Prices, lookup_prices, paper_prices
    from bestroute_lc.rerankers.base import Reranker
    from bestroute_lc.reward import RewardModel, RewardPredictor, pairwise_ranking_loss
    from bestroute_lc.router import MultiHeadRouter, RouterPredictor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bestroute_lc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
