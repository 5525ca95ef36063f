"""BEST-Route for LangChain: cost-aware routing with best-of-n sampling."""

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

__all__ = [
    "DECISION_EVENT",
    "PAPER_TABLE6",
    "ArtifactError",
    "BestRouteChatModel",
    "BestRouteEngine",
    "BestRouteError",
    "Decision",
    "MemberCosts",
    "MicroBatcher",
    "MultiHeadRouter",
    "NBilling",
    "Option",
    "Pool",
    "PoolMember",
    "Prices",
    "Reranker",
    "RewardConfig",
    "RewardModel",
    "RewardPredictor",
    "RouteResult",
    "RouterConfig",
    "RouterPredictor",
    "choose",
    "lookup_prices",
    "pairwise_ranking_loss",
    "paper_prices",
]
