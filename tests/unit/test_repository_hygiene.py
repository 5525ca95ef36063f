"""The repository stays source, data and small artifacts: no wheels, model files or other
binaries, nothing large (a 10.6 MB wheel once sat in the root, 86 % of the git pack)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Binary kinds that belong on a package index or in a cache, never in git.
FORBIDDEN_SUFFIXES = {".whl", ".gguf", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".so", ".zip", ".tar", ".onnx", ".egg"}
#: The shipped heads-only artifacts (KBs) are the only weights in the repository.
WEIGHTS_ALLOWED_UNDER = "bestroute_lc/local/artifacts/"
MAX_FILE_BYTES = 10_000_000


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in out.decode().split("\0") if name]


def test_no_binaries_or_large_files_are_tracked() -> None:
    files = tracked_files()
    forbidden = [f for f in files if Path(f).suffix.lower() in FORBIDDEN_SUFFIXES]
    weights = [f for f in files if f.endswith(".safetensors") and not f.startswith(WEIGHTS_ALLOWED_UNDER)]
    large = [(f, (ROOT / f).stat().st_size) for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > MAX_FILE_BYTES]
    assert not forbidden, f"binary files tracked: {forbidden}"
    assert not weights, f"weights outside {WEIGHTS_ALLOWED_UNDER}: {weights}"
    assert not large, f"files over {MAX_FILE_BYTES / 1e6:.0f} MB: {large}"
    shipped = sum((ROOT / f).stat().st_size for f in files if f.startswith(WEIGHTS_ALLOWED_UNDER))
    assert shipped < 5_000_000, f"shipped artifacts are {shipped / 1e6:.1f} MB"
