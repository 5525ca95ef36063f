"""Crash-safe writes: a reader finds the old file or the new one, never a half-written one.

Everything is written to a temporary sibling, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX within one file system). A directory (an artifact) is
written whole into a temporary sibling directory and swapped in the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it replaces ``path`` (an existing
    directory there is moved aside first and removed after), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_of(*paths: str | Path) -> str:
    """SHA-256 (hex) of the files' bytes in order, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def truncate_partial_last_line(path: str | Path, block: int = 1 << 16) -> bool:
    """Cut a JSONL file back to its last complete line, in place (no rewrite: a kill at any
    moment leaves either the file or the file less its torn tail). True if it cut."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            found = chunk.rfind(b"\n")
            if found != -1:
                handle.truncate(start + found + 1)
                return True
            end = start
        handle.truncate(0)
        return True


def user_cache_dir(override_env: str, leaf: str) -> Path:
    """``$<override_env>``, else ``$XDG_CACHE_HOME/bestroute/<leaf>``, else ``~/.cache/bestroute/<leaf>``."""
    explicit = os.environ.get(override_env)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "bestroute" / leaf
