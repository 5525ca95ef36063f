"""Run model-written code against examples and tests, isolated from everything else.

Two entry points, both fail closed (:class:`~bestroute_lc.isolation.IsolationUnavailableError`
unless ``allow_unisolated=True``):

* :func:`run_in_sandbox`: execute a program, evaluate each :class:`ExpressionCheck`
  expression in its namespace, and judge the values **in this (trusted) process**. The
  child reports only tagged, size-capped plain values (:mod:`bestroute_lc._sandbox_child`);
  it never sees the expected values. Used by the code-execution reranker for a prompt's
  visible examples.
* :func:`run_tests_in_sandbox`: hidden ``check()``-style tests (training's ``code_tests``
  scorer). The test code cannot run in the candidate's interpreter without trusting it,
  so two sandboxes run side by side: the candidate's program answers calls, the test
  code calls it through proxies, and this process relays each call and reply as plain
  values. The candidate cannot touch the test's interpreter (patched builtins, forged
  verdicts, objects whose ``__eq__`` lies); the verdict is the test process's.

Every run goes through :func:`bestroute_lc.isolation.isolated_command` (bubblewrap: fresh
pid/net/mount/ipc/uts namespaces, an unprivileged uid, read-only interpreter, a private
tmpfs, die-with-parent, everything killed when the run ends); inside it the harness
also lowers resource limits (CPU, address space, file size, processes, no core dumps)
before any untrusted code runs, which the unprivileged uid cannot raise again. What is
and is not covered: ``docs/security.md``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bestroute_lc import _sandbox_child as child
from bestroute_lc.isolation import (
    SANDBOX_WORKDIR,
    IsolationUnavailableError,
    isolated_command,
    require_isolation,
    seccomp_fd,
)

__all__ = [
    "CodeChunk",
    "ExpressionCheck",
    "IsolationUnavailableError",
    "SandboxLimits",
    "SandboxResult",
    "TestRunResult",
    "isolation_status",
    "run_in_sandbox",
    "run_tests_in_sandbox",
]

from bestroute_lc.isolation import isolation_status

_IS_POSIX = os.name == "posix"

#: How much of the child's stderr is kept in :attr:`SandboxResult.stderr_tail`.
_STDERR_TAIL_CHARS = 2000
_MISSING = object()


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
            user against it (each isolated run has a uid of its own when the caller is
            root), so 0 forbids the child to fork or start threads at all.
        workdir_bytes: size of the private tmpfs that is the child's only writable
            directory (``$HOME`` and ``$TMPDIR`` point there).
    """

    timeout_s: float = 5.0
    check_timeout_s: float | None = 2.0
    cpu_seconds: int | None = None
    memory_bytes: int | None = 1 << 30
    file_size_bytes: int = 8 << 20
    max_processes: int | None = 0
    workdir_bytes: int = 64 << 20

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
            (doctest output is the ``repr`` of the result); it stays in the trusted
            process. The check passes when the reported value, decoded into plain
            builtins, is ``==`` the literal (numbers: within a relative 1e-6), else
            when its ``repr`` equals this text, else when the expression returned
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


@dataclass(frozen=True)
class TestRunResult:
    """The verdict of hidden tests run against one candidate (:func:`run_tests_in_sandbox`).

    Attributes:
        passed: the test code ran to the end without an exception.
        timed_out: the wall-clock limit ended the run.
        error: why it failed (a failed assertion, an exception, ``"timeout"``...), else
            ``None``.
        program_error: why the candidate's program failed to load, else ``None``.
        calls: how many calls the tests made to the candidate.
        stderr_tail: the last characters the candidate's interpreter wrote to stderr.
    """

    passed: bool
    timed_out: bool = False
    error: str | None = None
    program_error: str | None = None
    calls: int = 0
    stderr_tail: str = ""


# --------------------------------------------------------------------------------------
# Starting a child
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _child_source() -> str:
    return Path(child.__file__).read_text(encoding="utf-8")


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


def _chunks_json(chunks: Sequence[CodeChunk]) -> list[dict[str, Any]]:
    return [{"code": c.code, "required": c.required} for c in chunks]


class _Child:
    """One sandboxed interpreter running the harness in ``mode``; the job (first stdin
    line) carries everything else. Isolated unless the caller opted out."""

    def __init__(
        self,
        mode: str,
        job: dict[str, Any],
        limits: SandboxLimits,
        scratch: Path,
        *,
        isolated: bool,
        stdout: Any,
        name: str,
    ) -> None:
        self.nonce = secrets.token_hex(16)
        filter_fd = None
        if isolated:
            workdir = SANDBOX_WORKDIR
            filter_fd = seccomp_fd()
            argv = isolated_command(
                [sys.executable, "-I", "-c", _child_source()], workdir_bytes=limits.workdir_bytes, seccomp=filter_fd
            )
            cwd = None
        else:
            host_workdir = scratch / f"{name}-work"
            host_workdir.mkdir()
            workdir = cwd = str(host_workdir)
            argv = [sys.executable, "-I", "-c", _child_source()]
        self.stderr_path = scratch / f"{name}-stderr"
        full_job = {
            **job,
            "mode": mode,
            "nonce": self.nonce,
            "workdir": workdir,
            "rlimits": limits.rlimits() if _IS_POSIX else [],
        }
        popen_kwargs: dict[str, Any] = {}
        if _IS_POSIX:
            popen_kwargs["start_new_session"] = True  # own process group, killable as one
        else:
            popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        try:
            with self.stderr_path.open("wb") as err:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=stdout,
                    stderr=err,
                    cwd=cwd,
                    env=_minimal_environment(workdir),
                    pass_fds=() if filter_fd is None else (filter_fd,),
                    **popen_kwargs,
                )
        finally:
            if filter_fd is not None:
                os.close(filter_fd)
        self.job_line = json.dumps(full_job).encode("utf-8") + b"\n"

    def kill(self) -> None:
        _kill_process_tree(self.proc)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stderr_tail(self) -> str:
        return _read_tail(self.stderr_path, _STDERR_TAIL_CHARS)


def _kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill the child and everything in its process group (it leads its own session).

    In the isolation layer the child is bwrap: killing it takes down the namespace
    (its init gets the parent-death signal, and the kernel kills every process in a pid
    namespace whose init exits). Only called while the child has not been reaped, so
    its process-group id cannot have been reused by an unrelated process.
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


def _records(lines: Sequence[bytes], nonce: str) -> list[dict[str, Any]]:
    """The nonce-tagged JSON records among ``lines``; anything else is the code's noise."""
    prefix = (nonce + " ").encode("ascii")
    records = []
    for line in lines:
        if not line.startswith(prefix) or len(line) > child.MAX_RECORD_BYTES:
            continue
        try:
            record = json.loads(line[len(prefix) :].decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# --------------------------------------------------------------------------------------
# Judging a reported value (trusted side)
# --------------------------------------------------------------------------------------

_LITERAL_CALLS = {
    "set": set,
    "frozenset": frozenset,
    "tuple": tuple,
    "list": list,
    "dict": dict,
    "float": float,
    "int": int,
    "str": str,
    "complex": complex,
    "bool": bool,
}


def _literal_node(node: ast.AST, depth: int = 0) -> Any:
    """A Python literal (with ``set()``, ``float('inf')`` and the like), else ValueError."""
    if depth > child.MAX_DEPTH:
        raise ValueError("too deep")
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_literal_node(e, depth + 1) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else set(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking")
        return {_literal_node(k, depth + 1): _literal_node(v, depth + 1) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal_node(node.operand, depth + 1)
        if type(operand) not in (int, float, complex):
            raise ValueError("sign of a non-number")
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        left, right = _literal_node(node.left, depth + 1), _literal_node(node.right, depth + 1)
        if type(left) not in (int, float) or type(right) is not complex:
            raise ValueError("only complex literals add")
        return left + right if isinstance(node.op, ast.Add) else left - right
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _LITERAL_CALLS
        and not node.keywords
        and len(node.args) <= 1
    ):
        args = [_literal_node(a, depth + 1) for a in node.args]
        if args and node.func.id in ("int", "str") and len(str(args[0])) > 4000:
            raise ValueError("too large")
        return _LITERAL_CALLS[node.func.id](*args)
    raise ValueError(f"not a literal: {type(node).__name__}")


@lru_cache(maxsize=4096)
def _expected_literal(text: str) -> Any:
    """``text`` as a value, or ``_MISSING`` when it is not a (safe) literal."""
    if len(text) > 100_000:
        return _MISSING
    try:
        return _literal_node(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        return _MISSING


def _numbers_close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    if numbers and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return False


def _values_equal(actual: Any, expected: Any) -> bool:
    """Plain values only (both sides built by this process): ``==`` is trustworthy."""
    if _numbers_close(actual, expected):
        return True
    if isinstance(actual, (list, tuple)) and type(actual) is type(expected) and len(actual) == len(expected):
        if any(_numbers_close(a, e) for a, e in zip(actual, expected)):
            return all(a == e or _numbers_close(a, e) for a, e in zip(actual, expected))
    return bool(actual == expected)


def judge_value(record: dict[str, Any], expected_text: str) -> bool:
    """Whether a child's report for one example matches ``expected_text``."""
    tagged = record.get("value")
    printed = record.get("printed")
    printed = printed.strip() if isinstance(printed, str) else ""
    expected_stripped = expected_text.strip()
    if tagged is None:
        return False
    try:
        actual = child.decode_value(tagged)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        return False
    expected = _expected_literal(expected_text)
    try:
        if expected is not _MISSING and not isinstance(actual, child.Opaque) and _values_equal(actual, expected):
            return True
        text = child.reported_repr(tagged)
        if text is None and not isinstance(actual, child.Opaque):
            text = repr(actual)
        if text is not None and text == expected_stripped:
            return True
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        return False
    return actual is None and printed != "" and printed == expected_stripped


# --------------------------------------------------------------------------------------
# Visible examples
# --------------------------------------------------------------------------------------


def run_in_sandbox(
    program: str | Sequence[CodeChunk],
    checks: Sequence[ExpressionCheck] = (),
    *,
    limits: SandboxLimits | None = None,
    allow_unisolated: bool = False,
) -> SandboxResult:
    """Execute ``program`` isolated and judge ``checks`` against the values it reports.

    Args:
        program: source code, or code chunks executed in order into one namespace
            (``__name__`` is not ``"__main__"``, so ``if __name__ == "__main__":``
            blocks do not run).
        checks: examples evaluated after the program ran, each on its own (a failing,
            raising or hanging check does not affect the others). Only the expressions
            (and setups) reach the child; the expected values stay here.
        limits: time, memory and process limits (:class:`SandboxLimits` defaults).
        allow_unisolated: run without the isolation layer when it is missing (logs a
            warning on every call) instead of raising.

    Returns:
        A :class:`SandboxResult`. Never raises for anything the code does; if the
        interpreter cannot be started at all, ``returncode`` is ``None`` and every
        check counts as failed.

    Raises:
        IsolationUnavailableError: the isolation layer cannot run here and
            ``allow_unisolated`` is false.
    """
    limits = limits or SandboxLimits()
    status = require_isolation(allow_unisolated)
    checks = list(checks)
    job = {
        "check_timeout_s": limits.check_timeout_s,
        "program": _chunks_json(_as_chunks(program)),
        "checks": [{"expression": c.expression, "setup": c.setup} for c in checks],
    }
    passed = [False] * len(checks)
    errors: list[str | None] = ["not run"] * len(checks)
    program_error: str | None = None
    timed_out = False
    returncode: int | None = None
    with tempfile.TemporaryDirectory(prefix="bestroute-sandbox-", ignore_cleanup_errors=True) as root:
        scratch = Path(root)
        stdout_path = scratch / "stdout"
        try:
            with stdout_path.open("wb") as out:
                runner = _Child("checks", job, limits, scratch, isolated=status.available, stdout=out, name="checks")
        except OSError as exc:
            return SandboxResult(
                passed=0,
                total=len(checks),
                check_passed=tuple(passed),
                stderr_tail=f"could not start the sandbox: {exc}",
                check_errors=tuple(errors),
            )
        try:
            runner.proc.communicate(input=runner.job_line, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            runner.kill()  # also when it exited: nothing it started outlives the run
        returncode = runner.proc.returncode
        lines = stdout_path.read_bytes().splitlines() if stdout_path.exists() else []
        seen: set[int] = set()
        for record in _records(lines, runner.nonce):
            if "program_error" in record:
                program_error = record["program_error"] if isinstance(record["program_error"], str) else None
                continue
            index = record.get("check")
            if type(index) is not int or not 0 <= index < len(checks) or index in seen:
                continue
            seen.add(index)  # the first report of a check counts
            error = record.get("error")
            errors[index] = error[:300] if isinstance(error, str) else None
            passed[index] = error is None and judge_value(record, checks[index].expected)
        stderr_tail = runner.stderr_tail()
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


# --------------------------------------------------------------------------------------
# Hidden tests: two sandboxes, values relayed by this process
# --------------------------------------------------------------------------------------


class _RecordPipe:
    """Nonce-tagged records from a child's stdout, with a deadline and a size cap."""

    def __init__(self, runner: _Child) -> None:
        self.runner = runner
        self.fd = runner.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.in_fd = runner.proc.stdin.fileno()
        os.set_blocking(self.in_fd, False)
        self.buffer = b""
        self.pending: list[dict[str, Any]] = []
        self.closed = False

    def next_record(self, deadline: float) -> dict[str, Any] | None:
        """The next record, or ``None`` at end of output or past the deadline."""
        while not self.pending:
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                return None
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                self.closed = True
                chunk = b"\n"
            self.buffer += chunk
            *lines, self.buffer = self.buffer.split(b"\n")
            if len(self.buffer) > child.MAX_RECORD_BYTES:
                self.buffer = b""  # an over-long line is noise: drop it
            self.pending.extend(_records(lines, self.runner.nonce))
        return self.pending.pop(0)

    def send(self, record: dict[str, Any], deadline: float) -> bool:
        """Write one JSON line; ``False`` when the child stopped reading or time ran out."""
        data = json.dumps(record).encode("utf-8") + b"\n"
        return self.send_raw(data, deadline)

    def send_raw(self, data: bytes, deadline: float) -> bool:
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _, writable, _ = select.select([], [self.in_fd], [], remaining)
            if not writable:
                return False
            try:
                written = os.write(self.in_fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                return False
            view = view[written:]
        return True


def _plain_reply(reply: dict[str, Any]) -> dict[str, Any] | None:
    """Only the fields a test needs, checked here: a value that decodes, or an error."""
    if "value" in reply:
        try:
            child.decode_value(reply["value"])
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
            return {"error": "the candidate returned a malformed value", "exc_type": "Exception"}
        return {"value": reply["value"]}
    error, exc_type = reply.get("error"), reply.get("exc_type")
    return {
        "error": error[:300] if isinstance(error, str) else "candidate error",
        "exc_type": exc_type if isinstance(exc_type, str) and exc_type.isidentifier() else "Exception",
    }


def run_tests_in_sandbox(
    candidate_program: str | Sequence[CodeChunk],
    test_code: str,
    entry_names: Sequence[str],
    *,
    test_context: str | Sequence[CodeChunk] = (),
    limits: SandboxLimits | None = None,
    allow_unisolated: bool = False,
) -> TestRunResult:
    """Run hidden tests against a candidate with only plain values crossing between them.

    Args:
        candidate_program: the candidate's code (the prompt's code first, as chunks).
        test_code: the tests, e.g. ``"def check(candidate): ...\ncheck(candidate)"``;
            the test passes when this code runs to the end without an exception.
        entry_names: the candidate's functions the tests call (the first is also bound
            to ``candidate``). In the test process each is a proxy: its arguments are
            encoded as plain values, the candidate's process calls the real function, and
            the result comes back decoded into fresh builtins (lists, dicts, ints...), so
            what the test compares cannot run the candidate's code. Exceptions come back
            as the builtin exception type of the same name.
        test_context: trusted code the tests rely on, run first in the test process (the
            prompt's helper functions); failures there are tolerated.
        limits: ``timeout_s`` bounds the whole run; ``check_timeout_s`` each call.
        allow_unisolated: as for :func:`run_in_sandbox`.

    Residual risk: arguments are copies, so a test that checks in-place mutation of
    an argument, or passes a function to the candidate, fails; see ``docs/security.md``.
    """
    limits = limits or SandboxLimits()
    status = require_isolation(allow_unisolated)
    entry_names = [name for name in entry_names if name.isidentifier()]
    if not entry_names:
        raise ValueError("run_tests_in_sandbox needs at least one entry name (a Python identifier)")
    context_chunks = [CodeChunk(c.code, required=False) for c in _as_chunks(test_context)] if test_context else []
    deadline = time.monotonic() + limits.timeout_s
    calls = 0
    with tempfile.TemporaryDirectory(prefix="bestroute-tests-", ignore_cleanup_errors=True) as root:
        scratch = Path(root)
        runners: list[_Child] = []
        try:
            candidate = _Child(
                "serve",
                {"check_timeout_s": limits.check_timeout_s, "program": _chunks_json(_as_chunks(candidate_program))},
                limits,
                scratch,
                isolated=status.available,
                stdout=subprocess.PIPE,
                name="candidate",
            )
            runners.append(candidate)
            tests = _Child(
                "tests",
                {
                    "check_timeout_s": limits.timeout_s,
                    "program": _chunks_json(context_chunks),
                    "test_code": test_code,
                    "entry_names": entry_names,
                },
                limits,
                scratch,
                isolated=status.available,
                stdout=subprocess.PIPE,
                name="tests",
            )
            runners.append(tests)
        except OSError as exc:
            for runner in runners:
                runner.kill()
            return TestRunResult(passed=False, error=f"could not start the sandbox: {exc}")
        try:
            candidate_pipe, tests_pipe = _RecordPipe(candidate), _RecordPipe(tests)
            if not (candidate_pipe.send_raw(candidate.job_line, deadline) and tests_pipe.send_raw(tests.job_line, deadline)):
                return TestRunResult(passed=False, timed_out=True, error="timeout")
            ready = candidate_pipe.next_record(deadline)
            while ready is not None and "ready" not in ready:
                ready = candidate_pipe.next_record(deadline)
            if ready is None:
                return TestRunResult(
                    passed=False,
                    timed_out=time.monotonic() >= deadline,
                    error="the candidate's program did not load",
                    stderr_tail=candidate.stderr_tail(),
                )
            program_error = ready.get("program_error")
            if isinstance(program_error, str):
                return TestRunResult(passed=False, error=program_error[:300], program_error=program_error[:300])
            while True:
                record = tests_pipe.next_record(deadline)
                if record is None:
                    timed_out = time.monotonic() >= deadline
                    return TestRunResult(
                        passed=False,
                        timed_out=timed_out,
                        error="timeout" if timed_out else "the test process ended without a verdict",
                        calls=calls,
                        stderr_tail=candidate.stderr_tail(),
                    )
                if "verdict" in record:
                    error = record.get("error")
                    return TestRunResult(
                        passed=record["verdict"] == "passed",
                        error=error[:300] if isinstance(error, str) else None,
                        calls=calls,
                        stderr_tail=candidate.stderr_tail(),
                    )
                call = record.get("call")
                if not isinstance(call, dict) or type(call.get("id")) is not int:
                    continue
                calls += 1
                if not candidate_pipe.send(call, deadline):
                    reply: dict[str, Any] | None = {"error": "the candidate stopped answering", "exc_type": "Exception"}
                else:
                    reply = candidate_pipe.next_record(deadline)
                    while reply is not None and reply.get("id") != call["id"]:
                        reply = candidate_pipe.next_record(deadline)  # stale or forged ids
                    reply = _plain_reply(reply) if reply is not None else {"error": "timeout", "exc_type": "TimeoutError"}
                if not tests_pipe.send(reply, deadline):
                    continue  # the next read reports the timeout or the missing verdict
        finally:
            for runner in runners:
                runner.kill()
