"""The CPU inference back-end of the router and the reward model: their encoder in ONNX Runtime.

On CPU, ONNX Runtime runs all-MiniLM-L6-v2 faster than torch on the same weights, with the
same outputs (max |difference| ~4e-6): five 256-token pairs through the reward model in 132 ms
against 192 ms for torch (2 cores, 2 threads each), and several times faster than torch's
default threads on a busy machine (a router call: 9 vs 101 ms, 2 cores, one busy). Only the
*encoder* runs here: it is exported once per set of weights (``torch.onnx.export``, the dynamo
exporter, which traces the attention masks correctly where the legacy TorchScript tracer bakes
in the sequence length; with the eager attention, see ``export_encoder``), written to the cache
(``BESTROUTE_ONNX_CACHE``, else ``~/.cache/bestroute/onnx``) under the weights' checksum, and loaded in one ``InferenceSession`` per file per process, so
a router and a reward model on the same frozen encoder share it (one copy in memory). Pooling
and the heads (a few thousand multiply-adds) stay with the predictor.

Every session is checked against the torch encoder on a probe batch when it is first
created; a file that disagrees (a different exporter, a corrupt or replaced cache entry) is
not used, and the predictor stays on torch with a warning.

Threads: ``inference_threads()`` (``BESTROUTE_NUM_THREADS``, else every CPU this process may
use, at most 4), with ONNX Runtime's spin-waiting turned off, so an intra-op thread with
nothing to do sleeps instead of taking a core from the event loop, the provider clients or
other processes. Measured on 2 cores (five 256-token pairs through MiniLM): idle, 239 ms
with 1 thread and 135 ms with 2; with one other busy process, 238 ms with 1 thread, 203 ms
with 2 not spinning, 286 ms with 2 spinning; with both cores busy, 327 / 261 / 373 ms. Three
forwards at once (a loaded server): 132 ms per forward with 1 thread each, 151 ms with 2.
(torch's OpenMP threads spin: one router call took 545 ms with 2 threads and 21 ms with 1
on 2 cores with one busy, which is why the torch path is not the CPU default.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Encoder inputs an exported graph may take, in this order.
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Largest |torch - onnx| accepted on the probe batch (measured: ~1e-7 for MiniLM).
PROBE_TOLERANCE = 1e-4
#: Bump when the export changes, so old cache entries are not reused (2: eager attention).
EXPORT_VERSION = 2


BACKENDS = ("auto", "onnx", "onnx-int8", "torch")


def requested_backend(backend: str | None = None) -> str:
    """``backend``, else ``BESTROUTE_BACKEND``, else ``"auto"``; one of ``BACKENDS``."""
    backend = backend or os.environ.get("BESTROUTE_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'onnx', 'onnx-int8' or 'torch', got {backend!r}")
    return backend


def inference_threads() -> int:
    """Intra-op threads for one encoder forward: ``BESTROUTE_NUM_THREADS``, else the CPUs
    this process may run on (at most 4: MiniLM's matrices at these lengths gain little from
    more). The sessions do not spin-wait (see the module docstring), so a thread that is not
    needed does not hold a core."""
    explicit = os.environ.get("BESTROUTE_NUM_THREADS")
    if explicit:
        try:
            value = int(explicit)
        except ValueError:
            raise ValueError(f"BESTROUTE_NUM_THREADS must be a positive integer, got {explicit!r}") from None
        if value < 1:
            raise ValueError(f"BESTROUTE_NUM_THREADS must be a positive integer, got {explicit!r}")
        return value
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def onnx_cache_dir() -> Path:
    """``BESTROUTE_ONNX_CACHE``, else ``$XDG_CACHE_HOME/bestroute/onnx``, else ``~/.cache/bestroute/onnx``."""
    from bestroute_lc.files import user_cache_dir

    return user_cache_dir("BESTROUTE_ONNX_CACHE", "onnx")


def onnx_available() -> bool:
    """ONNX Runtime and the exporter's dependencies are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


def _input_names(tokenizer: Any) -> list[str]:
    names = set(getattr(tokenizer, "model_input_names", ENCODER_INPUTS))
    return [name for name in ENCODER_INPUTS if name in names]


def export_encoder(encoder: Any, input_names: list[str], path: Path) -> None:
    """Write ``encoder`` (last hidden state, dynamic batch and length) to ``path`` atomically."""
    import torch

    class LastHiddenState(torch.nn.Module):
        """Named inputs (the exporter maps ``dynamic_axes`` by name) -> last hidden state."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    # Two rows of different lengths, so padding and the mask are part of what is traced.
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    example = {"input_ids": torch.ones((2, 8), dtype=torch.long), "attention_mask": mask,
               "token_type_ids": torch.zeros((2, 8), dtype=torch.long)}
    inputs = tuple(example[name] for name in input_names)
    dynamic_axes = {name: {0: "batch", 1: "length"} for name in input_names} | {"last_hidden_state": {0: "batch", 1: "length"}}
    wrapper = LastHiddenState(encoder).eval()
    # Exported with the eager attention (the same arithmetic as torch's SDPA; outputs within
    # ~4e-6): the SDPA graph carries NaN guards and reshapes that ONNX Runtime does not fuse
    # away, and ran 5 x 256 tokens of MiniLM in 147 ms against 121 ms (2 threads).
    attention = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
    settable = attention not in (None, "eager") and hasattr(encoder, "set_attn_implementation")
    # The exporter's chatter ("torchvision is not installed", one per op; its optimiser's passes)
    # at INFO/WARNING, under an application that logs INFO.
    exporter_logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in exporter_logs]
    for log in exporter_logs:
        log.setLevel(logging.ERROR)
    try:
        if settable:
            encoder.set_attn_implementation("eager")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, inputs, dynamo=True, input_names=input_names, output_names=["last_hidden_state"],
                dynamic_axes=dynamic_axes, verbose=False,
            )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.optimize()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            program.save(str(staging))
            os.replace(staging, path)  # a reader finds the whole file or none
        finally:
            staging.unlink(missing_ok=True)
    finally:
        if settable:
            encoder.set_attn_implementation(attention)  # torch keeps its own (a torch forward meanwhile: same arithmetic)
        for log, level in zip(exporter_logs, levels):
            log.setLevel(level)


_sessions: dict[tuple[Path, int], Any] = {}
_sessions_lock = threading.Lock()


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    with _sessions_lock:
        session = _sessions.get((path, threads))
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            # Idle intra-op threads sleep rather than spin: the machine is shared with the
            # event loop, the provider clients and other processes (measured in the docstring).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _sessions[(path, threads)] = session
        return session


class OnnxEncoder:
    """An encoder's last hidden state from ONNX Runtime; inputs are the tokenizer's int64 arrays."""

    def __init__(self, session: Any, input_names: list[str], path: Path) -> None:
        self.session = session
        self.input_names = input_names
        self.path = path

    def __call__(self, encoded: Any) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(np.asarray(encoded[name]), dtype=np.int64) for name in self.input_names}
        return self.session.run(None, feeds)[0]


def quantize_encoder(source: Path, path: Path) -> None:
    """Dynamic int8 quantisation of an exported encoder (weights int8 per output channel,
    activations quantised per batch), written atomically. Per channel: with one scale per
    tensor, MiniLM's pooled output drifted to cosine 0.95 of fp32; per channel keeps >= 0.985
    at the same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # The quantiser logs advice ("consider pre-processing") on the root logger, in the user's log.
    advice = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(source), str(staging), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(staging, path)
    finally:
        logging.getLogger().removeFilter(advice)
        staging.unlink(missing_ok=True)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def load_onnx_encoder(
    encoder: Any, tokenizer: Any, weights_key: str, threads: int | None = None, int8: bool = False
) -> OnnxEncoder | None:
    """The ONNX Runtime twin of ``encoder`` (exported on first use, cached under
    ``weights_key``; ``int8``: then quantised), checked against it on a probe batch; None,
    with a warning, when it cannot be built or disagrees.

    The check: fp32 within ``PROBE_TOLERANCE`` of torch on every token; int8 (an
    approximation by design) a mean-pooled cosine similarity of at least 0.98, which catches
    a broken file, not a small shift (the agreement test on the shared tables measures that)."""
    import torch

    input_names = _input_names(tokenizer)
    path = onnx_cache_dir() / f"encoder-{weights_key[:32]}-v{EXPORT_VERSION}.onnx"
    int8_path = path.with_name(path.stem + "-int8.onnx")
    try:
        if not path.is_file():
            logger.info("bestroute: exporting the encoder to ONNX (once per set of weights): %s", path)
            export_encoder(encoder, input_names, path)
        if int8 and not int8_path.is_file():
            quantize_encoder(path, int8_path)
        used = int8_path if int8 else path
        onnx = OnnxEncoder(_session(used, threads or inference_threads()), input_names, used)
        probe = tokenizer(["Route this question: what is 2 + 2?", "short"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            expected = encoder(**{k: probe[k] for k in input_names}).last_hidden_state.float().numpy()
        got = onnx(probe)
        mask = probe["attention_mask"].numpy()
        if int8:
            a, b = pool_numpy(got, mask, "mean"), pool_numpy(expected, mask, "mean")
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            agrees, measure = bool(cosine.min() >= 0.98), f"min cosine {cosine.min():.3f}"
        else:
            difference = float(np.abs(got[mask.astype(bool)] - expected[mask.astype(bool)]).max())
            agrees, measure = difference <= PROBE_TOLERANCE, f"max |difference| {difference:.1e}"
    except Exception as exc:  # noqa: BLE001 - torch still works; say why the fast path is off
        warnings.warn(f"bestroute: ONNX Runtime back-end unavailable, using torch ({type(exc).__name__}: {exc})", stacklevel=3)
        return None
    if not agrees:
        warnings.warn(
            f"bestroute: {used} disagrees with the torch encoder ({measure}); using torch. "
            "Delete the file to export it again.", stacklevel=3,
        )
        return None
    return onnx


def pool_numpy(hidden: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
    """[B, T, H] -> [B, H], as ``encoders.pool_hidden_states`` does in torch."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = np.asarray(attention_mask, dtype=hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
