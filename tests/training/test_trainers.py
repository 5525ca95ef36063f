"""Reward-model and router training on small synthetic data with a learnable signal."""

from __future__ import annotations

import numpy as np
from langchain_core.messages import HumanMessage
import pytest

from bestroute_lc.conversation import render_conversation
from bestroute_lc.router import RouterPredictor
from tests.helpers import tiny_encoder, tiny_reward_model, tiny_router
from training.dataset import MemberSamples, PromptData, average_output_tokens
from training.loop import FitConfig
from training.records import PromptRecord
from training.split import SplitConfig, stratified_split
from training.train_reward import ranking_pairs, train_reward_model
from training.train_router import (
    RouterExample,
    mean_spearman,
    router_examples,
    train_router,
)


def synthetic_data(count: int = 24) -> dict[str, PromptData]:
    """Answers saying "correct" score 1, "wrong" 0, "partly" 0.5."""
    data = {}
    for i in range(count):
        prompt = PromptRecord(id=f"q{i}", prompt=f"question {i}: is it {'hard' if i % 2 else 'easy'}?", source="s" + str(i % 2))
        samples = MemberSamples(
            texts=["the answer is wrong", "the answer is partly right", "the answer is correct"],
            gt_scores=[0.0, 0.5, 1.0],
            output_tokens=[4, 5, 4],
        )
        data[prompt.id] = PromptData(prompt=prompt, members={"small": samples})
    return data


def test_ranking_pairs_are_worst_median_best() -> None:
    data = synthetic_data(2)
    pairs = ranking_pairs(data, ["q0"])
    assert [(p.better, p.worse) for p in pairs] == [
        ("the answer is partly right", "the answer is wrong"),
        ("the answer is correct", "the answer is partly right"),
    ]
    data["q1"].members["small"].gt_scores = [1.0, 1.0, 1.0]
    assert ranking_pairs(data, ["q1"]) == []  # equal scores give no pair


def test_reward_model_learns_the_ranking() -> None:
    data = synthetic_data()
    predictor = tiny_reward_model()
    ids = sorted(data)
    result = train_reward_model(
        predictor, data, ids[:18], ids[18:], FitConfig(epochs=6, batch_size=8, learning_rate=1e-3, head_learning_rate=3e-3, patience=6), progress=False
    )
    assert result.best_metric >= 0.9
    scores = predictor.score("user: question 99", ["the answer is wrong", "the answer is correct"])
    assert scores[1] > scores[0]
    assert predictor.config.training["best_epoch"] == result.best_epoch


def test_router_learns_which_prompts_are_hard() -> None:
    data = synthetic_data(32)
    labels = {
        pid: np.full((1, 2), 0.1 if "hard" in d.prompt.prompt else 0.9) + np.array([[0.0, 0.05]])
        for pid, d in data.items()
    }
    router = tiny_router(["small"], "big", max_n=2)
    ids = sorted(data)
    train = router_examples(data, labels, ids[:24])
    validation = router_examples(data, labels, ids[24:])
    result = train_router(router, train, validation, FitConfig(epochs=8, batch_size=8, learning_rate=1e-3, head_learning_rate=3e-3, patience=8), progress=False)
    assert result.best_metric > 0.8  # Spearman on the validation prompts
    hard = router.predict(render_conversation(data["q1"].prompt.chat_messages()))["small"][0]
    easy = router.predict(render_conversation(data["q0"].prompt.chat_messages()))["small"][0]
    assert easy > hard


def test_mean_spearman_ignores_constant_heads() -> None:
    predicted = np.array([[[0.1, 0.5]], [[0.2, 0.5]], [[0.3, 0.5]]])
    target = np.array([[[0.0, 1.0]], [[0.5, 1.0]], [[1.0, 1.0]]])
    assert mean_spearman(predicted, target) == pytest.approx(1.0)
    assert np.isnan(mean_spearman(predicted[:, :, 1:], target[:, :, 1:]))


def test_split_is_stratified_and_reproducible() -> None:
    prompts = [PromptRecord(id=f"{s}{i}", prompt="x", source=s) for s in "ab" for i in range(10)]
    split = stratified_split(prompts, SplitConfig(train=0.6, validation=0.2, test=0.2, seed=3))
    assert split == stratified_split(prompts, SplitConfig(train=0.6, validation=0.2, test=0.2, seed=3))
    for source in "ab":
        assert sum(pid.startswith(source) for pid in split.test) == 2
        assert sum(pid.startswith(source) for pid in split.validation) == 2
    assert sorted(split.train + split.validation + split.test) == sorted(p.id for p in prompts)
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(train=0.5, validation=0.1, test=0.1)


def test_average_output_tokens_uses_given_prompts() -> None:
    data = synthetic_data(2)
    data["q1"].members["small"].output_tokens = [10, 10, 10]
    assert average_output_tokens(data, ["q0"]) == {"small": pytest.approx(13 / 3)}
    assert average_output_tokens(data, ["q0", "q1"]) == {"small": pytest.approx((13 + 30) / 6)}


def test_router_example_keeps_label_shape() -> None:
    data = synthetic_data(1)
    (example,) = router_examples(data, {"q0": np.zeros((1, 3))}, ["q0"])
    assert isinstance(example, RouterExample) and example.labels.shape == (1, 3)


def test_holdout_sources_go_entirely_to_test() -> None:
    prompts = [PromptRecord(id=f"{s}{i}", prompt="x", source=s) for s in "ab" for i in range(10)]
    split = stratified_split(prompts, SplitConfig(train=0.6, validation=0.2, test=0.2, holdout_sources=["b"]))
    assert all(pid.startswith("a") for pid in split.train + split.validation)
    assert sorted(pid for pid in split.test if pid.startswith("b")) == sorted(f"b{i}" for i in range(10))
    assert split.summary()["holdout_sources"] == ["b"]


def test_new_heads_and_training_are_reproducible_from_the_seed() -> None:
    """One seed, one model: the heads created before training are seeded too (they used to
    take whatever state the global RNG was in)."""
    import torch

    def trained(seed: int, unrelated_draws: int) -> list[float]:
        backbone = tiny_encoder()
        torch.rand(unrelated_draws)  # RNG use between loading a backbone and building heads must not matter
        predictor = RouterPredictor.from_backbone(backbone, members=["small"], reference="big", max_n=3, max_length=128, seed=seed)
        data = synthetic_data(12)
        labels = {pid: np.full((1, 3), 0.8 if int(pid[1:]) % 2 else 0.2) for pid in data}
        ids = sorted(data)
        train_router(
            predictor,
            router_examples(data, labels, ids[:8]),
            router_examples(data, labels, ids[8:]),
            FitConfig(epochs=2, batch_size=4, seed=seed),
            progress=False,
        )
        return predictor.predict(render_conversation([HumanMessage("question 3: is it hard?")]))["small"]

    first, again, other = trained(3, 1), trained(3, 7), trained(4, 1)
    assert first == again
    assert first != other
