"""The reranker interface: how best-of-n picks one candidate.

The engine renders every candidate (text plus any tool calls) to a string and asks a
`Reranker` for one score per candidate; the highest score wins (ties: the earliest
candidate). Anything that can score (prompt, response) pairs fits here: the learned
reward model (the default), a code-execution picker, an LLM judge.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence


class Reranker(ABC):
    """Scores candidate responses to one prompt; higher is better."""

    #: Short name recorded in the routing decision (``response_metadata["bestroute"]``).
    name: str = "reranker"

    @abstractmethod
    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Return one finite float per candidate, in the candidates' order.

        ``prompt`` is the whole conversation rendered as text (see
        ``bestroute_lc.conversation.render_conversation``).
        """

    async def ascore(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Async variant; the default runs :meth:`score` in a worker thread."""
        return await asyncio.to_thread(self.score, prompt, candidates)

    def trusted_for(self, member: str | None) -> bool:
        """Whether this reranker's pick among ``member``'s samples is worth more than a
        random one (a learned reward model that lost to random on validation is not)."""
        return True

    def check_ready(self) -> None:
        """Raise if this reranker cannot work on this machine at all (a missing isolation
        layer, say). The engine calls it once, when it is built, so that a configuration
        error surfaces at start-up rather than as a silent fallback on every call."""


def argmax_first(scores: Sequence[float]) -> int:
    """Index of the highest score; the earliest one wins a tie (deterministic)."""
    if not scores:
        raise ValueError("cannot pick from zero candidates")
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best
