"""Run untrusted Python code (model-written candidates) in a restricted subprocess.

What it does, per call of :func:`run_in_sandbox`:

* starts ``sys.executable -I`` (isolated mode: no ``PYTHON*`` environment variables,
  no user site-packages, the script's directory not on ``sys.path``) in a fresh
  temporary directory as its working directory, with a minimal environment (``PATH``,
  locale, ``HOME``/``TMPDIR`` pointing into the temporary directory; no proxies, no API
  keys, nothing else inherited from the parent);
* enforces a wall-clock timeout and, when it expires, kills the child's whole process
  group (the child is started in a new session, so anything it spawned goes too);
* on POSIX, lowers resource limits before any untrusted code runs: CPU seconds, address
  space, file size, core dumps (none) and number of processes;
* disables networking inside the child: ``socket.socket``, ``socket.create_connection``,
  ``socket.getaddrinfo`` and friends are replaced by functions that raise ``OSError``,
  and an audit hook refuses socket and process-spawning events;
* executes the given code chunks, then evaluates each :class:`ExpressionCheck`
  (``expression`` against ``expected``) individually, with a per-check timer, so one
  failing or hanging check does not hide the others; results are streamed back one
  line per check, tagged with a random nonce so that whatever the code prints cannot
  be mistaken for a result.

.. warning::
   This is **best effort, not a security boundary**. It stops honest mistakes
   (infinite loops, memory bombs, accidental network or file-system use, noisy
   output) in code written by a language model. It does not stop code written to
   escape: the untrusted code runs in the same interpreter as the checking harness and
   can, for instance, import ``_socket`` or ``ctypes``, call ``os`` functions, or read
   files the current user can read. Run untrusted code from adversaries in a real
   isolation layer (container, VM, seccomp/gVisor) instead.

Resource limits are applied by the child itself, as the first thing it does, rather
than in a ``preexec_fn``: ``preexec_fn`` is documented as unsafe when the parent has
threads (the child can deadlock between ``fork`` and ``exec``), and the code-execution
reranker starts sandboxes from a thread pool. The only code that runs unlimited is the
interpreter's start-up and the small harness below, both trusted.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CodeChunk",
    "ExpressionCheck",
    "SandboxLimits",
    "SandboxResult",
    "run_in_sandbox",
]

_IS_POSIX = os.name == "posix"

#: How much of the child's stderr is kept in :attr:`SandboxResult.stderr_tail`.
_STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run.

    Attributes:
        timeout_s: wall-clock limit for the whole child process (start-up included).
        check_timeout_s: wall-clock limit for loading the code and for each check,
            enforced inside the child with a timer (POSIX only); ``None`` disables it.
            Keeps one hanging example from using up the whole ``timeout_s``.
        cpu_seconds: ``RLIMIT_CPU``; ``None`` means ``ceil(timeout_s) + 1``.
        memory_bytes: ``RLIMIT_AS`` (address space); ``None`` for no limit.
        file_size_bytes: ``RLIMIT_FSIZE``: the largest file the child may write
            (its captured stdout included).
        max_processes: ``RLIMIT_NPROC``. Linux counts every process and thread of the
            user against it, so a small value forbids the child to fork or start
            threads at all. Not enforced for root (the audit hook still refuses
            ``fork``/``exec``/``subprocess``).
    """

    timeout_s: float = 5.0
    check_timeout_s: float | None = 2.0
    cpu_seconds: int | None = None
    memory_bytes: int | None = 1 << 30
    file_size_bytes: int = 8 << 20
    max_processes: int | None = 0

    def rlimits(self) -> list[tuple[str, int]]:
        """The ``(resource.RLIMIT_* name, value)`` pairs the child applies to itself."""
        cpu = self.cpu_seconds if self.cpu_seconds is not None else math.ceil(self.timeout_s) + 1
        limits = [("RLIMIT_CPU", int(cpu)), ("RLIMIT_FSIZE", int(self.file_size_bytes)), ("RLIMIT_CORE", 0)]
        if self.memory_bytes is not None:
            limits.append(("RLIMIT_AS", int(self.memory_bytes)))
        if self.max_processes is not None:
            limits.append(("RLIMIT_NPROC", int(self.max_processes)))
        return limits


@dataclass(frozen=True)
class CodeChunk:
    """A piece of source code the child executes, in order, into one shared namespace.

    ``required=False`` marks context whose failure is tolerated (for example the
    prompt's own code run before a candidate that redefines it); when a required chunk
    fails to compile or raises, every check counts as failed.
    """

    code: str
    required: bool = True


@dataclass(frozen=True)
class ExpressionCheck:
    """One example: evaluate ``expression`` and compare it with ``expected``.

    Attributes:
        expression: a Python expression evaluated in the namespace the code chunks
            built, e.g. ``"add(2, 3)"``.
        expected: source text of the expected value, e.g. ``"5"`` or ``"'abc'"``
            (doctest output is the ``repr`` of the result). The check passes when the
            evaluated values are ``==`` (numbers: within a relative 1e-6), else when
            ``repr(actual)`` equals this text, else when the expression returned
            ``None`` and what it printed equals this text (doctest ``print`` style).
        setup: statements run first, in a copy of the namespace (doctest
            ``>>> x = ...`` lines before the example).
    """

    expression: str
    expected: str
    setup: str = ""


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run produced.

    Attributes:
        passed: number of checks that passed.
        total: number of checks asked for.
        check_passed: one flag per check, in order (checks the child never reported,
            because it crashed or timed out first, count as failed).
        timed_out: the wall-clock timeout killed the child.
        returncode: the child's exit status (negative: killed by that signal);
            ``None`` if it could not be started.
        program_error: why a required code chunk failed (``"SyntaxError: ..."``), else
            ``None``.
        stderr_tail: the last characters the child wrote to stderr.
        check_errors: per check, ``None`` or why it failed (``"timeout"``,
            ``"NameError: ..."``, ``"not run"``); a wrong value is ``None``.
    """

    passed: int
    total: int
    check_passed: tuple[bool, ...] = ()
    timed_out: bool = False
    returncode: int | None = None
    program_error: str | None = None
    stderr_tail: str = ""
    check_errors: tuple[str | None, ...] = field(default=(), repr=False)


# The harness the child runs. It is a plain string executed with ``python -I -c``; it
# reads its job (code, checks, limits, nonce) from stdin as JSON so that nothing about
# it is visible in argv. Every name it defines lives inside one function so the
# untrusted code's namespace stays clean.
_CHILD_HARNESS = r'''
def _bestroute_sandbox_child():
    import builtins, io, json, math, os, sys, traceback

    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    nonce = job["nonce"]

    # 1. Resource limits, before any untrusted code. Hard limit = soft limit (CPU: +1 s
    #    so SIGXCPU comes before SIGKILL) so the code cannot raise them again.
    try:
        import resource
    except ImportError:
        resource = None
    if resource is not None:
        for name, value in job["rlimits"]:
            which = getattr(resource, name, None)
            if which is None:
                continue
            try:
                _soft, hard = resource.getrlimit(which)
                soft_value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                hard_value = soft_value + 1 if name == "RLIMIT_CPU" else soft_value
                if hard != resource.RLIM_INFINITY:
                    hard_value = min(hard_value, hard)
                resource.setrlimit(which, (soft_value, hard_value))
            except (ValueError, OSError):
                pass  # e.g. a limit the platform does not support: best effort

    # 2. No network: the socket constructors and resolvers raise.
    import socket, _socket

    def _no_network(*_args, **_kwargs):
        raise OSError("network access is disabled in this sandbox")

    class _NoNetworkSocket(socket.socket):
        def __init__(self, *_args, **_kwargs):
            _no_network()

    socket.socket = _NoNetworkSocket
    socket.SocketType = _NoNetworkSocket
    _socket.socket = _NoNetworkSocket
    for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                  "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "socketpair", "fromfd"):
        if hasattr(socket, _name):
            setattr(socket, _name, _no_network)
        if hasattr(_socket, _name):
            setattr(_socket, _name, _no_network)

    # Results go to a private duplicate of fd 1, one line per check, tagged with the nonce.
    result_fd = os.dup(1)

    def emit(record):
        os.write(result_fd, (nonce + " " + json.dumps(record) + "\n").encode("utf-8"))

    # An audit hook cannot be removed once added: it refuses sockets and new processes
    # even if the code finds the original socket class somewhere.
    _refused_events = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.spawn",
                       "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn")

    def _audit(event, _args):
        if event.startswith(_refused_events):
            raise OSError("refused in this sandbox: " + event)

    sys.addaudithook(_audit)

    # 3. The untrusted code's view of the world: no stdin, stdout captured (capped).
    class CappedWriter(io.TextIOBase):
        limit = 65536

        def __init__(self):
            self.parts, self.size = [], 0

        def writable(self):
            return True

        def write(self, text):
            text = str(text)
            if self.size < self.limit:
                self.parts.append(text[: self.limit - self.size])
                self.size += len(text)
            return len(text)

        def getvalue(self):
            return "".join(self.parts)

    sys.stdin = io.StringIO("")

    class CheckTimeout(BaseException):
        """BaseException so that the code's own ``except Exception`` cannot swallow it."""

    import signal
    timer_s = job["check_timeout_s"]
    use_timer = bool(timer_s) and hasattr(signal, "setitimer")
    if use_timer:
        def _on_timer(_signum, _frame):
            raise CheckTimeout()
        signal.signal(signal.SIGALRM, _on_timer)

    def start_timer():
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, timer_s)

    def stop_timer():
        if use_timer:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def describe(exc):
        if isinstance(exc, CheckTimeout):
            return "timeout"
        return (type(exc).__name__ + ": " + str(exc))[:300]

    _missing = object()

    def numbers_close(a, b):
        if isinstance(a, bool) or isinstance(b, bool):
            return False
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        if numbers and (isinstance(a, float) or isinstance(b, float)):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return False

    def values_equal(actual, expected):
        if numbers_close(actual, expected):
            return True
        if isinstance(actual, (list, tuple)) and type(actual) is type(expected) and len(actual) == len(expected):
            if any(numbers_close(a, e) for a, e in zip(actual, expected)):
                return all(a == e or numbers_close(a, e) for a, e in zip(actual, expected))
        return bool(actual == expected)

    def matches(actual, expected_text, printed):
        expected_value = _missing
        try:
            expected_value = eval(expected_text, {"__builtins__": builtins})
        except Exception:
            pass
        if expected_value is not _missing:
            try:
                if values_equal(actual, expected_value):
                    return True
            except Exception:
                pass
        try:
            if repr(actual) == expected_text.strip():
                return True
        except Exception:
            pass
        return actual is None and printed.strip() != "" and printed.strip() == expected_text.strip()

    namespace = {"__name__": "__sandboxed__", "__builtins__": builtins}
    program_error = None
    def run_chunk(code):
        try:
            start_timer()
            exec(compile(code, "<candidate>", "exec"), namespace)
            return None
        except BaseException as exc:  # SystemExit and timeouts included
            return describe(exc)
        finally:
            stop_timer()

    for chunk in job["program"]:
        sys.stdout = CappedWriter()
        sys.stderr = CappedWriter()
        try:
            chunk_error = run_chunk(chunk["code"])
        except CheckTimeout:
            chunk_error = "timeout"
        if chunk_error is not None and chunk["required"]:
            program_error = chunk_error
            break
    sys.stderr = sys.__stderr__
    emit({"program_error": program_error})

    def run_check(check):
        printed = CappedWriter()
        sys.stdout = printed
        try:
            start_timer()
            scope = namespace
            if check.get("setup"):
                scope = dict(namespace)
                exec(compile(check["setup"], "<example setup>", "exec"), scope)
            actual = eval(compile(check["expression"], "<example>", "eval"), scope)
            return bool(matches(actual, check["expected"], printed.getvalue())), None
        except BaseException as exc:
            return False, describe(exc)
        finally:
            stop_timer()

    for index, check in enumerate(job["checks"]):
        ok, error = False, "program failed"
        if program_error is None:
            try:
                ok, error = run_check(check)
            except CheckTimeout:  # the timer fired between the check's end and stop_timer()
                ok, error = False, "timeout"
        sys.stdout = CappedWriter()
        emit({"check": index, "ok": ok, "error": error})
    emit({"done": True})
    # Skip atexit handlers and non-daemon threads the code may have left behind.
    os._exit(0)


_bestroute_sandbox_child()
'''


def _minimal_environment(workdir: str) -> dict[str, str]:
    """Only what an interpreter needs: nothing from the parent (proxies, API keys...)."""
    env = {
        "PATH": os.defpath,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Numerical libraries start a thread pool on import; with RLIMIT_NPROC that fails.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if not _IS_POSIX:
        # Windows cannot start Python (random numbers, sockets) without SYSTEMROOT.
        for name in ("SYSTEMROOT", "SystemRoot"):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def _as_chunks(program: str | Sequence[CodeChunk]) -> list[CodeChunk]:
    if isinstance(program, str):
        return [CodeChunk(program)]
    return list(program)


def _kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill the child and everything in its process group (it leads its own session).

    Only called while the child has not been reaped, so its process-group id cannot
    have been reused by an unrelated process.
    """
    if _IS_POSIX:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _read_tail(path: Path, chars: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4 * chars))
            return handle.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _parse_results(stdout_path: Path, nonce: str, total: int) -> tuple[list[bool], list[str | None], str | None]:
    """Read the nonce-tagged result lines; anything else on stdout is the code's noise."""
    passed = [False] * total
    errors: list[str | None] = ["not run"] * total
    program_error: str | None = None
    prefix = (nonce + " ").encode("ascii")
    try:
        lines = stdout_path.read_bytes().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if not line.startswith(prefix):
            continue
        try:
            record = json.loads(line[len(prefix) :].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if "program_error" in record:
            program_error = record["program_error"]
        elif "check" in record and isinstance(record["check"], int) and 0 <= record["check"] < total:
            passed[record["check"]] = bool(record.get("ok"))
            errors[record["check"]] = record.get("error")
    return passed, errors, program_error


def run_in_sandbox(
    program: str | Sequence[CodeChunk],
    checks: Sequence[ExpressionCheck] = (),
    *,
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Execute ``program`` in a sandboxed subprocess and evaluate ``checks`` against it.

    Args:
        program: source code, or code chunks executed in order into one namespace
            (``__name__`` is not ``"__main__"``, so ``if __name__ == "__main__":``
            blocks do not run).
        checks: examples to evaluate after the program ran; each one is evaluated on
            its own (a failing, raising or hanging check does not affect the others).
        limits: time, memory and process limits (:class:`SandboxLimits` defaults).

    Returns:
        A :class:`SandboxResult`. Never raises for anything the code does; if the
        interpreter cannot be started at all, ``returncode`` is ``None`` and every
        check counts as failed.
    """
    limits = limits or SandboxLimits()
    chunks = _as_chunks(program)
    checks = list(checks)
    nonce = secrets.token_hex(16)
    job = {
        "nonce": nonce,
        "rlimits": limits.rlimits() if _IS_POSIX else [],
        "check_timeout_s": limits.check_timeout_s,
        "program": [{"code": c.code, "required": c.required} for c in chunks],
        "checks": [{"expression": c.expression, "expected": c.expected, "setup": c.setup} for c in checks],
    }
    payload = json.dumps(job).encode("utf-8")

    with tempfile.TemporaryDirectory(prefix="bestroute-sandbox-", ignore_cleanup_errors=True) as root:
        # The code runs in work/; its captured output lives beside it, not inside it.
        workdir = Path(root) / "work"
        workdir.mkdir()
        stdout_path, stderr_path = Path(root) / "stdout", Path(root) / "stderr"
        timed_out = False
        returncode: int | None = None
        start_error: str | None = None
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            popen_kwargs: dict = {}
            if _IS_POSIX:
                popen_kwargs["start_new_session"] = True  # own process group, killable as one
            else:
                popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _CHILD_HARNESS],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    env=_minimal_environment(str(workdir)),
                    **popen_kwargs,
                )
            except OSError as exc:
                proc = None
                start_error = f"could not start the sandbox: {exc}"
            if proc is not None:
                try:
                    proc.communicate(input=payload, timeout=limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_process_tree(proc)
                    proc.communicate()
                except BaseException:
                    _kill_process_tree(proc)
                    proc.wait()
                    raise
                returncode = proc.returncode
        passed, errors, program_error = _parse_results(stdout_path, nonce, len(checks))
        stderr_tail = start_error or _read_tail(stderr_path, _STDERR_TAIL_CHARS)

    return SandboxResult(
        passed=sum(passed),
        total=len(checks),
        check_passed=tuple(passed),
        timed_out=timed_out,
        returncode=returncode,
        program_error=program_error,
        stderr_tail=stderr_tail,
        check_errors=tuple(errors),
    )
