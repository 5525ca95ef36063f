"""The router and the proxy reward model with a *frozen* encoder: CPU-cheap training for
cross-validation on the shared tables.

Fine-tuning all-MiniLM-L6-v2 on every fold costs minutes per fold on a 2-core machine
(most of it scoring every recorded sample with the reward model). With the encoder frozen,
the pooled encoder output of every input is computed once per table and cached on disk;
each fold then trains only the heads, in seconds:

* router: the K x N heads (``MultiHeadRouter.heads``), soft-label binary cross entropy
  (the paper's loss) on the pooled conversation, L2-regularised, the strength picked by
  the validation loss;
* reward model: the scalar head (``RewardModel.head``), the paper's pairwise ranking loss
  on the same (worst, median) and (median, best) pairs as ``train_reward.ranking_pairs``,
  L2-regularised, the strength picked by validation pair accuracy.

The trained heads are written into real ``RouterPredictor`` / ``RewardPredictor`` objects
(``install_*``), so the models evaluated are the artifacts the runtime would load (the
backbone unchanged), and their ``predict_batch`` / ``score`` give what the cached features
give (checked in the tests). Inputs are encoded exactly as at run time
(``encode_conversations``, ``encode_pairs``, the model's ``max_length``).

Feature cache: ``<cache_dir>/features-<kind>-<key>.npz``, ``key`` hashing the encoder's
config, tokenizer fingerprint, weight-file sizes, pooling and ``max_length``; rows are
looked up by the sha256 of their input text(s). The missing inputs of a request are batched
with inputs of the same token length only (no padding), in a fixed order (length, then hash),
so the same request gives the same bits in any order. Batch composition still moves the last
bits of a float, so ``experiment`` encodes a whole table in one request before its folds: a
table's features are then the same whether the cache started empty or full.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _sha(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def model_key(predictor: Any, backbone: str | Path | None = None) -> str:
    """Identity of the frozen encoder and how inputs are encoded."""
    config = predictor.config
    sizes = ""
    if backbone is not None and Path(backbone).is_dir():
        sizes = ",".join(f"{p.name}:{p.stat().st_size}" for p in sorted(Path(backbone).iterdir()) if p.suffix in (".safetensors", ".bin"))
    encoder = json.dumps({k: v for k, v in config.encoder_config.items() if k not in ("_name_or_path", "transformers_version")}, sort_keys=True, default=str)
    return _sha(encoder, config.tokenizer.fingerprint, sizes, config.pooling, str(config.max_length))[:20]


class FeatureCache:
    """Pooled encoder outputs by input hash, persisted as one ``.npz`` per model and kind."""

    def __init__(self, cache_dir: str | Path | None, kind: str, key: str) -> None:
        self.path = None if cache_dir is None else Path(cache_dir) / f"features-{kind}-{key}.npz"
        self.rows: dict[str, np.ndarray] = {}
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self.rows = dict(zip(data["keys"].tolist(), data["features"]))
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("feature cache %s unreadable (%s); recomputing", self.path, exc)

    def save(self) -> None:
        if self.path is None or not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.rows)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, keys=np.asarray(keys), features=np.stack([self.rows[k] for k in keys]).astype(np.float32))
        os.replace(tmp, self.path)


def _encode(module: torch.nn.Module, encoded: Any, onnx: Any = None) -> np.ndarray:
    from bestroute_lc.encoders import encoder_forward

    if onnx is not None:
        from bestroute_lc.onnx_backend import pool_numpy

        return pool_numpy(onnx(encoded), encoded["attention_mask"].numpy(), module.pooling).astype(np.float32)
    device = next(module.parameters()).device
    batch = {k: v.to(device) for k, v in encoded.items()}
    return encoder_forward(module.encoder, batch, module.pooling).float().cpu().numpy()


def _onnx_twin(predictor: Any) -> Any:
    """The frozen encoder in ONNX Runtime (as at run time: faster on CPU, same features
    within 1e-6); None where the run time would use torch (GPU, BESTROUTE_BACKEND=torch,
    ONNX Runtime not installed)."""
    from bestroute_lc.onnx_backend import requested_backend

    if requested_backend() == "torch":
        return None
    twin, _ = predictor.onnx_twin(_frozen_weights_key(predictor))
    return twin


def _frozen_weights_key(predictor: Any) -> str:
    """The encoder's weights named as the run time names them, so a machine that trains and
    serves exports each encoder once: the artifact's key when it has one, the package's when
    the encoder is the default package's (the usual frozen backbone), else a checksum of its
    tensors."""
    from bestroute_lc.artifacts import ArtifactError
    from bestroute_lc.encoders import package_encoder, shared_weights_key

    key = predictor.weights_key()
    if key is not None:
        return key
    try:
        shared = package_encoder()
        if predictor.encoder_is(shared):
            return shared_weights_key(shared)
    except ArtifactError:  # the package is not installed: not its encoder
        pass
    digest = hashlib.sha256()
    for name, tensor in sorted(predictor.module.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "frozen-" + digest.hexdigest()


def _features(
    items: Sequence[Any],
    keys: Sequence[str],
    tokenize: Any,
    predictor: Any,
    cache: FeatureCache,
    batch_size: int,
    description: str,
    progress: bool,
) -> np.ndarray:
    """Rows for ``keys`` from the cache; the missing ones encoded in batches of inputs of the
    same token length (no padding: a row is then what encoding its input alone gives)."""
    missing = {k: i for i, k in enumerate(keys) if k not in cache.rows}
    if missing:
        started, last_save = time.monotonic(), time.monotonic()
        module = predictor.module.eval()
        onnx = _onnx_twin(predictor)
        by_length: dict[int, list[tuple[str, int]]] = {}
        for key, i in sorted(missing.items()):
            by_length.setdefault(int(tokenize([items[i]])["input_ids"].shape[1]), []).append((key, i))
        chunks = [group[j : j + batch_size] for _, group in sorted(by_length.items()) for j in range(0, len(group), batch_size)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(missing), desc=description, unit="input")
        for chunk in chunks:
            encoded = tokenize([items[i] for _, i in chunk])
            parts = [encoded] if bool(encoded["attention_mask"].all()) else [tokenize([items[i]]) for _, i in chunk]
            with torch.inference_mode():
                rows = np.concatenate([_encode(module, part, onnx) for part in parts])
            for (key, _), row in zip(chunk, rows):
                cache.rows[key] = row.astype(np.float32)
            if bar is not None:
                bar.update(len(chunk))
            if time.monotonic() - last_save > 60:
                cache.save()
                last_save = time.monotonic()
        if bar is not None:
            bar.close()
        cache.save()
        logger.info("%s: encoded %d inputs in %.0f s", description, len(missing), time.monotonic() - started)
    return np.stack([cache.rows[k] for k in keys]).astype(np.float64) if keys else np.zeros((0, 0))


def router_features(
    router: Any, conversations: Sequence[Any], *, cache_dir: str | Path | None, backbone: str | Path | None = None,
    batch_size: int = 32, progress: bool = False,
) -> np.ndarray:
    """[Q, H] pooled encoder output of each conversation (``RenderedConversation``), as the router encodes it."""
    from bestroute_lc.encoding import encode_conversations

    cache = FeatureCache(cache_dir, "router", model_key(router, backbone))
    keys = [_sha(c.system, *c.turns) for c in conversations]

    def tokenize(batch: list[Any]) -> Any:
        return encode_conversations(router.tokenizer, batch, router.config.max_length)

    return _features(list(conversations), keys, tokenize, router, cache, batch_size, "router features", progress)


def reward_features(
    reward: Any, pairs: Sequence[tuple[str, str]], *, cache_dir: str | Path | None, backbone: str | Path | None = None,
    batch_size: int = 32, progress: bool = False,
) -> np.ndarray:
    """[P, H] pooled encoder output of each (prompt text, candidate) pair, as the reward model encodes it."""
    from bestroute_lc.encoding import encode_pairs

    cache = FeatureCache(cache_dir, "reward", model_key(reward, backbone))
    keys = [_sha(p, c) for p, c in pairs]

    def tokenize(batch: list[tuple[str, str]]) -> Any:
        return encode_pairs(reward.tokenizer, [p for p, _ in batch], [c for _, c in batch], reward.config.max_length)

    return _features(list(pairs), keys, tokenize, reward, cache, batch_size, "reward features", progress)


# -- heads ---------------------------------------------------------------------------------
def _standardize(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def _minimize(fun: Any, x0: np.ndarray) -> np.ndarray:
    """L-BFGS (scipy) on a smooth convex objective returning (value, gradient): deterministic."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    # small problems: BLAS threads only add contention (and make timings load-dependent)
    with threadpool_limits(limits=1):
        result = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 300, "gtol": 1e-7, "ftol": 1e-12})
    return np.asarray(result.x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_router_heads(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *, seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID, components: int | None = 32,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Heads for [Q, H] features and [Q, K, N] soft labels: (weight [K*N, H], bias [K*N], info).

    Soft-label binary cross entropy (the router's loss) + l2 x ||W||^2 / (K N) on standardised
    features projected on their top ``components`` principal directions (training prompts;
    None: all H dimensions), for every l2 in ``l2_grid``; the one with the lowest validation
    loss wins (the training loss when there is no validation prompt). The projection is folded
    back into an ordinary [K*N, H] head. Deterministic (L-BFGS from zero weights and the label
    means' logits as biases); ``seed`` is recorded only."""
    mean, std = _standardize(train_x)
    xt, xv = (train_x - mean) / std, (val_x - mean) / std
    basis = np.eye(xt.shape[1])
    if components is not None and components < min(xt.shape):
        _, _, vt = np.linalg.svd(xt, full_matrices=False)
        basis = vt[:components].T  # [H, d]
        signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(basis.shape[1])])
        basis = basis * np.where(signs == 0, 1.0, signs)  # a deterministic sign per direction
    xt, xv = xt @ basis, xv @ basis
    yt, yv = train_y.reshape(len(train_y), -1), val_y.reshape(len(val_y), int(np.prod(train_y.shape[1:])))
    outputs, hidden = yt.shape[1], xt.shape[1]
    prior = np.clip(yt.mean(axis=0), 1e-4, 1 - 1e-4)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    history = []
    for l2 in l2_grid:

        def fun(theta: np.ndarray, l2: float = l2) -> tuple[float, np.ndarray]:
            weight, bias = theta[: outputs * hidden].reshape(outputs, hidden), theta[outputs * hidden :]
            logits = xt @ weight.T + bias
            grad_logits = (_sigmoid(logits) - yt) / yt.size
            value = _bce(logits, yt) + l2 * float((weight**2).sum()) / outputs
            grad_w = grad_logits.T @ xt + 2 * l2 * weight / outputs
            return value, np.concatenate([grad_w.ravel(), grad_logits.sum(axis=0)])

        theta = _minimize(fun, np.concatenate([np.zeros(outputs * hidden), np.log(prior / (1 - prior))]))
        weight, bias = theta[: outputs * hidden].reshape(outputs, hidden), theta[outputs * hidden :]
        val_loss = _bce(xv @ weight.T + bias, yv) if len(yv) else _bce(xt @ weight.T + bias, yt)
        history.append({"l2": l2, "val_loss": val_loss})
        if best is None or val_loss < best[0] - 1e-12:
            best = (val_loss, l2, weight, bias)
    assert best is not None
    val_loss, l2, weight, bias = best
    w = (weight @ basis.T) / std[None, :]
    b = bias - w @ mean
    return w, b, {"l2": l2, "val_loss": val_loss, "history": history, "seed": seed, "components": basis.shape[1],
                  "train_prompts": len(train_x), "validation_prompts": len(val_x)}


def fit_reward_head(
    features: np.ndarray, train_pairs: Sequence[tuple[int, int]], val_pairs: Sequence[tuple[int, int]], *, seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A scalar head for [S, H] pair features from (better, worse) row pairs: (weight [H], info).
    The paper's pairwise loss mean(softplus(-(r_better - r_worse))) + l2 x ||w||^2 on
    standardised features; the l2 with the best validation pair accuracy (then loss) wins.
    Score = features @ weight (a bias cancels in every comparison: 0). Deterministic."""
    if not train_pairs:
        return np.zeros(features.shape[1]), {"l2": None, "val_accuracy": float("nan"), "pairs": 0, "seed": seed}
    rows = sorted({i for pair in train_pairs for i in pair})
    _, std = _standardize(features[rows])
    x = features / std
    diff_t = x[[b for b, _ in train_pairs]] - x[[w for _, w in train_pairs]]
    diff_v = x[[b for b, _ in val_pairs]] - x[[w for _, w in val_pairs]] if val_pairs else np.zeros((0, x.shape[1]))
    best: tuple[tuple[float, float], float, np.ndarray] | None = None
    history = []
    for l2 in l2_grid:

        def fun(weight: np.ndarray, l2: float = l2) -> tuple[float, np.ndarray]:
            margin = diff_t @ weight
            value = float(np.mean(np.logaddexp(0.0, -margin))) + l2 * float(weight @ weight)
            grad = -(_sigmoid(-margin) @ diff_t) / len(margin) + 2 * l2 * weight
            return value, grad

        weight = _minimize(fun, np.zeros(x.shape[1]))
        if len(diff_v):
            margin = diff_v @ weight
            accuracy = float(np.mean(margin > 0) + 0.5 * np.mean(margin == 0))
            loss = float(np.mean(np.logaddexp(0.0, -margin)))
        else:
            accuracy, loss = float("nan"), float("nan")
        history.append({"l2": l2, "val_accuracy": accuracy, "val_loss": loss})
        key = (-accuracy if np.isfinite(accuracy) else 0.0, loss if np.isfinite(loss) else 0.0)
        if best is None or key < best[0]:
            best = (key, l2, weight)
    assert best is not None
    return best[2] / std, {"l2": best[1], "val_accuracy": -best[0][0], "history": history, "pairs": len(train_pairs), "seed": seed}


def install_router_heads(router: Any, weight: np.ndarray, bias: np.ndarray, info: dict[str, Any] | None = None) -> None:
    heads = router.module.heads
    with torch.no_grad():
        heads.weight.copy_(torch.tensor(weight, dtype=heads.weight.dtype))
        heads.bias.copy_(torch.tensor(bias, dtype=heads.bias.dtype))
    router.module.eval()
    router.config.training.update({"objective": "soft-label binary cross entropy over K x N heads (frozen encoder)", **(info or {})})


def install_reward_head(reward: Any, weight: np.ndarray, info: dict[str, Any] | None = None) -> None:
    head = reward.module.head
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight[None, :], dtype=head.weight.dtype))
        head.bias.zero_()
    reward.module.eval()
    reward.config.training.update({"objective": "pairwise ranking loss (frozen encoder)", **(info or {})})


def router_probabilities_from_features(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, members: int, max_n: int) -> np.ndarray:
    """[Q, K, N] sigmoid(features @ weight.T + bias): what the installed heads predict."""
    return _sigmoid(features @ weight.T + bias).reshape(len(features), members, max_n)


# -- cross-fitted heads, chosen by the routing metric ------------------------------------------
#: Hyper-parameters the cross-fitted router chooses among: principal directions kept (None:
#: every encoder dimension), L2 strength, and per-head Platt calibration on out-of-fold logits.
COMPONENTS_GRID: tuple[int | None, ...] = (8, 16, 32, 64, None)
CROSS_FIT_L2_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


def _logits(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return features @ weight.T + bias


def inner_folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint index sets covering range(count), seeded."""
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(order[f::folds]) for f in range(folds)]


def _platt_apply(logits: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return _sigmoid(scale * logits + shift)


def cross_fit_router_heads(
    features: np.ndarray,
    labels: np.ndarray,
    routing_score: Any,
    *,
    folds: int = 5,
    seed: int = 0,
    components_grid: Sequence[int | None] = COMPONENTS_GRID,
    l2_grid: Sequence[float] = CROSS_FIT_L2_GRID,
    calibrate: Sequence[bool] = (False, True),
    top: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Router heads with every labelled prompt used for both fitting and model choice.

    For each configuration (principal directions x L2 x Platt calibration or not), the heads
    are fitted ``folds`` times, each time on all prompts but one fold, and predict the held-out
    fold: out-of-fold probabilities [Q, K, N] for every prompt. The calibrated variant fits
    per-head Platt scaling (``train_router.fit_platt``) on the out-of-fold logits of the other
    folds and applies it to each fold, so its score is out-of-fold too. ``routing_score(p)``
    (higher is better; the experiment passes the area under the cost-quality hull of Algorithm 1
    on these prompts) chooses the configuration: the model is chosen by what it is for, not by
    its loss. The chosen configuration is then refitted on every prompt (and calibrated on all
    of its out-of-fold logits).

    Returns (weight [K*N, H], bias [K*N], info) like ``fit_router_heads`` (Platt folded into
    the heads); ``info["oof"]`` holds the chosen configuration's out-of-fold probabilities
    [Q, K, N]: honest predictions for the training prompts, which calibration (choosing among
    policies) uses instead of a small validation split.
    """
    from training.train_router import fit_platt

    count = len(features)
    shape = labels.shape[1:]
    flat = labels.reshape(count, -1)
    parts = inner_folds(count, max(2, min(folds, count)), seed)
    prior = np.clip(flat.mean(axis=0), 1e-4, 1 - 1e-4)
    empty_x, empty_y = np.zeros((0, features.shape[1])), np.zeros((0,) + shape)
    results = []
    for components in components_grid:
        if components is not None and components >= min(count - len(parts[0]), features.shape[1]):
            continue  # no fewer directions than the full space: the None entry covers it
        for l2 in l2_grid:
            oof_logits = np.zeros_like(flat)
            for held in parts:
                keep = np.setdiff1d(np.arange(count), held)
                w, b, _ = fit_router_heads(features[keep], labels[keep], empty_x, empty_y, l2_grid=(l2,), components=components)
                oof_logits[held] = _logits(features[held], w, b)
            for platt in calibrate:
                if platt:
                    oof = np.zeros_like(flat)
                    for held in parts:
                        keep = np.setdiff1d(np.arange(count), held)
                        scale, shift = fit_platt(oof_logits[keep], flat[keep], 1.0, prior)
                        oof[held] = _platt_apply(oof_logits[held], scale, shift)
                else:
                    oof = _sigmoid(oof_logits)
                # Scored per held-out fold (each fold's own model and its own threshold sweep, as one
                # router is used), then averaged: concatenated predictions of different models
                # would mix their probability scales under one threshold.
                fold_scores = np.asarray([routing_score(oof[held].reshape((len(held),) + shape), held) for held in parts])
                score = float(fold_scores.mean())
                results.append({"components": components, "l2": l2, "calibrated": platt, "score": score,
                                "_fold_scores": fold_scores,
                                "bce": _bce(np.log(np.clip(oof, 1e-6, 1 - 1e-6) / np.clip(1 - oof, 1e-6, 1)), flat),
                                "_oof": oof, "_oof_logits": oof_logits})
    if not results:
        raise ValueError("no router configuration to fit (too few prompts?)")
    # The routing metric decides what is clearly better; it is noisy on a few hundred prompts,
    # so every configuration within one standard error of the best (the paired difference of
    # their per-fold scores) counts as tied, and among those the out-of-fold soft-label BCE
    # (a proper scoring rule, much smoother) decides. ``top`` > 1 averages the best ``top``
    # in that order (the mean of linear heads is a linear head: one router).
    best_score = max(results, key=lambda r: r["score"])
    def tied(r: dict[str, Any]) -> bool:
        diff = best_score["_fold_scores"] - r["_fold_scores"]
        return bool(diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else r is best_score
    for r in results:
        r["tied_with_best"] = tied(r)
    ranked = sorted(results, key=lambda r: (not r["tied_with_best"], r["bce"], -r["score"]))
    chosen = ranked[: max(1, top)]
    weights, biases, oof_logits = [], [], []
    for r in chosen:
        w, b, _ = fit_router_heads(features, labels, empty_x, empty_y, l2_grid=(r["l2"],), components=r["components"])
        logits = r["_oof_logits"]
        if r["calibrated"]:
            # Fold Platt into the heads: sigmoid(a (x W^T + b) + c) = sigmoid(x (a W)^T + (a b + c)).
            scale, shift = fit_platt(r["_oof_logits"], flat, 1.0, prior)
            w, b = w * scale.reshape(-1, 1), b * scale.reshape(-1) + shift.reshape(-1)
            logits = np.log(np.clip(r["_oof"], 1e-9, 1)) - np.log(np.clip(1 - r["_oof"], 1e-9, 1))
        weights.append(w)
        biases.append(b)
        oof_logits.append(logits)
    weight, bias = np.mean(weights, axis=0), np.mean(biases, axis=0)
    oof = _sigmoid(np.mean(oof_logits, axis=0))
    ensemble_score = float(np.mean([routing_score(oof[held].reshape((len(held),) + shape), held) for held in parts]))
    info = {
        "selection": f"{len(parts)}-fold cross-fitting on {count} prompts, chosen by the routing metric",
        "ensemble": [{k: v for k, v in r.items() if not k.startswith("_")} for r in chosen], "score": ensemble_score,
        "candidates": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
    }
    return weight, bias, {**info, "oof": oof.reshape((count,) + shape)}
