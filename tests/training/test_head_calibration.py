"""Head calibration: Platt scaling per head plus shrinkage toward the training prior,
chosen by cross-fitting, so a router with nothing to learn acts as a fixed policy."""

from __future__ import annotations

import numpy as np
from langchain_core.messages import HumanMessage

from bestroute_lc.conversation import render_conversation
from bestroute_lc.router import RouterPredictor, calibrated_probabilities
from tests.helpers import tiny_router
from training.train_router import RouterExample, calibrate_router, fit_head_calibration, fit_platt


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_platt_recovers_a_known_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2, 3)) * 2
    y = _sigmoid(0.5 * z - 1.0)  # soft labels from a known calibration map
    scale, shift = fit_platt(z, y, regularization=1e-3)  # standardised inside, returned in raw-logit units
    assert np.allclose(scale, 0.5, atol=0.05) and np.allclose(shift, -1.0, atol=0.05)


def test_no_signal_shrinks_to_the_prior_and_signal_keeps_the_heads() -> None:
    rng = np.random.default_rng(1)
    train_labels = rng.uniform(size=(60, 2, 3)) * np.array([0.3, 0.9])[:, None]
    noise_logits = rng.normal(size=(40, 2, 3)) * 3
    noise_labels = rng.uniform(size=(40, 2, 3)) * np.array([0.3, 0.9])[:, None]
    shrunk = fit_head_calibration(train_labels, noise_logits, noise_labels)
    p = calibrated_probabilities(noise_logits, shrunk)
    assert np.ptp(p, axis=0).max() < 0.1, shrunk.fit  # nearly constant per head: a fixed policy
    raw_spread = np.ptp(1 / (1 + np.exp(-noise_logits)), axis=0).min()
    assert raw_spread > 0.9

    signal_logits = rng.normal(size=(40, 2, 3)) * 2
    signal_labels = _sigmoid(1.5 * signal_logits)
    kept = fit_head_calibration(train_labels, signal_logits, signal_labels)
    assert kept.weight >= 0.8, kept.fit
    assert kept.fit["oof_bce_by_weight"][str(kept.weight)] < kept.fit["prior_bce"]


def test_calibration_is_stored_in_the_artifact_and_applied_after_loading(tmp_path) -> None:
    predictor = tiny_router(["small"], "big", max_n=2, seed=0)
    examples = [
        RouterExample(render_conversation([HumanMessage(f"question {i}")]), np.full((1, 2), 0.2 if i % 2 else 0.7))
        for i in range(20)
    ]
    calibration = calibrate_router(predictor, examples[:10], examples[10:])
    assert calibration is not None and predictor.config.head_calibration == calibration
    conversation = render_conversation([HumanMessage("question 3")])
    before = predictor.predict(conversation)
    predictor.save_pretrained(tmp_path / "router")
    loaded = RouterPredictor.from_pretrained(tmp_path / "router")
    assert loaded.config.head_calibration == calibration
    assert np.allclose(loaded.predict(conversation)["small"], before["small"], atol=1e-6)
    assert calibrate_router(predictor, examples[:10], examples[10:13]) is None  # too few held-out prompts
    assert predictor.config.head_calibration is None
