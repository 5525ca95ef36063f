"""A learned reward model that did not beat a random pick for a member on validation is
not trusted for that member: the engine keeps the first sample and says so."""

from __future__ import annotations

import numpy as np
from langchain_core.messages import HumanMessage

from bestroute_lc import BestRouteChatModel
from tests.helpers import fixed_router, scripted_pool, tiny_reward_model
from training.dataset import MemberSamples, PromptData
from training.records import PromptRecord
from training.train_reward import pick_gain_by_member

TABLE = {"small": [0.2, 0.5, 0.9], "mid": [0.7, 0.8, 0.88]}  # small n = 3 at threshold 0.85


def test_untrusted_member_keeps_its_first_sample_and_the_decision_says_why() -> None:
    reward = tiny_reward_model()
    trusted = BestRouteChatModel(pool=scripted_pool(), router=fixed_router(TABLE, "big"), reranker=reward, threshold=0.85)
    meta = trusted.invoke([HumanMessage("hello")]).response_metadata["bestroute"]
    assert meta["member"] == "small" and meta["n"] == 3 and meta["candidate_scores"] is not None

    reward.config.untrusted_members = ["small"]
    untrusted = BestRouteChatModel(pool=scripted_pool(), router=fixed_router(TABLE, "big"), reranker=reward, threshold=0.85)
    message = untrusted.invoke([HumanMessage("hello")])
    meta = message.response_metadata["bestroute"]
    assert meta["member"] == "small" and meta["n"] == 3
    assert meta["chosen_index"] == 0 and meta["candidate_scores"] is None
    assert "did not beat a random pick" in meta["rerank_error"]


def test_pick_gain_is_positive_for_a_model_that_ranks_and_zero_without_signal() -> None:
    class ByLength:
        """A stand-in reward model: longer answers score higher."""

        def score(self, prompt: str, texts: list[str]) -> list[float]:
            return [float(len(t)) for t in texts]

    data = {}
    for i in range(6):
        prompt = PromptRecord(id=f"q{i}", prompt=f"question {i}")
        data[prompt.id] = PromptData(
            prompt=prompt,
            members={
                # longer is better for "ranked": the picker beats random
                "ranked": MemberSamples(texts=["a", "bbb", "ccccc"], gt_scores=[0.0, 0.5, 1.0], output_tokens=[1, 1, 1]),
                # longer is worse for "reversed": the picker loses to random
                "reversed": MemberSamples(texts=["a", "bbb", "ccccc"], gt_scores=[1.0, 0.5, 0.0], output_tokens=[1, 1, 1]),
            },
        )
    gains = pick_gain_by_member(ByLength(), data, sorted(data))  # type: ignore[arg-type]
    assert gains["ranked"]["gain"] > 0 > gains["reversed"]["gain"]
    assert np.isclose(gains["ranked"]["random"], 0.5)
