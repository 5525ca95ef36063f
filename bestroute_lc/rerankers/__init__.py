"""Best-of-n pickers. The learned reward model (``bestroute_lc.reward.RewardPredictor``)
is the default; ``CodeExecutionReranker`` runs code answers against the prompt's examples."""

from bestroute_lc.rerankers.base import Reranker, argmax_first
from bestroute_lc.rerankers.code_execution import CodeExecutionReranker

__all__ = ["CodeExecutionReranker", "Reranker", "argmax_first"]
