"""The isolation layer and the trusted verdicts: what the sandboxed code sees, how its
values are carried and judged, hidden tests through two sandboxes, and failing closed.

Attacks written as an adversary would are in ``tests/security``; this file checks the
mechanics those defences rest on."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from bestroute_lc import _sandbox_child as child
from bestroute_lc.isolation import (
    BWRAP_ENV,
    IsolationUnavailableError,
    isolated_command,
    isolation_status,
)
from bestroute_lc.sandbox import (
    ExpressionCheck,
    SandboxLimits,
    judge_value,
    run_in_sandbox,
    run_tests_in_sandbox,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the isolation layer is Linux-only")

ADD = "def add(a, b):\n    return a + b\n"
FAST = SandboxLimits(timeout_s=5.0, check_timeout_s=2.0)


def test_isolation_is_available_and_drops_privileges():
    status = isolation_status()
    assert status.available, status.reason
    checks = [
        ExpressionCheck("os.getuid() != 0 and os.geteuid() != 0", "True"),
        ExpressionCheck("sorted(p for p in os.listdir('/proc') if p.isdigit()) <= ['1', '2', '3']", "True"),
        ExpressionCheck("os.path.exists(os.path.expanduser('~')) and os.getcwd()", "'/sandbox'"),
        ExpressionCheck("os.path.exists('/etc/passwd') or os.path.exists('/root/.bashrc')", "False"),
        ExpressionCheck("os.uname().nodename", "'sandbox'"),
        ExpressionCheck("[n for n in os.listdir('/sys/class/net')] if os.path.exists('/sys/class/net') else ['lo']", "['lo']"),
        ExpressionCheck("open('/proc/self/status').read().split('CapEff:')[1].split()[0]", "'0000000000000000'"),
    ]
    result = run_in_sandbox("import os\n", checks, limits=FAST)
    assert result.check_passed == (True,) * len(checks), result.check_errors


def test_the_interpreter_is_read_only_and_the_workdir_is_capped():
    program = (
        "import os, sys\n"
        "def write(path):\n"
        "    try:\n"
        "        with open(path, 'w') as f: f.write('x')\n"
        "        return 'written'\n"
        "    except OSError as e:\n"
        "        return type(e).__name__\n"
        "def fill():\n"
        "    try:\n"
        "        for i in range(100):\n"
        "            with open(f'/sandbox/f{i}', 'wb') as f: f.write(b'x' * (1 << 20))\n"
        "        return 'filled'\n"
        "    except OSError as e:\n"
        "        return 'full'\n"
    )
    result = run_in_sandbox(
        program,
        [
            ExpressionCheck("write(os.path.join(sys.prefix, 'owned'))", "'OSError'"),
            ExpressionCheck("write('/usr/owned')", "'OSError'"),
            ExpressionCheck("write('/sandbox/ok')", "'written'"),
            ExpressionCheck("fill()", "'full'"),
        ],
        limits=SandboxLimits(timeout_s=10.0, check_timeout_s=5.0, workdir_bytes=8 << 20),
    )
    assert result.check_passed == (True, True, True, True), result.check_errors
    assert not os.path.exists(os.path.join(sys.prefix, "owned"))


def test_command_unshares_every_namespace_and_dies_with_its_parent():
    command = isolated_command(["python"])
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"):
        assert flag in command
    assert "--proc" in command and "--tmpfs" in command
    if os.geteuid() == 0:
        assert any(part.startswith("--reuid=") for part in command) and "--no-new-privs" in command


# --------------------------------------------------------------------------------------
# Values: encoded by the child, judged here
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, 3, -(10**30), 0.5, float("inf"), 1 + 2j, "é", b"\x00\xff", [1, (2, 3)], {1, 2}, frozenset({3}),
     {"a": [1, {"b": None}]}, range(1, 9, 2), ()],
)
def test_codec_round_trips_plain_values(value):
    assert child.decode_value(child._make_encoder()(value)) == value


def test_codec_reads_subclasses_through_the_builtin_and_refuses_malformed_input():
    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    encode = child._make_encoder()
    tagged = encode(Liar(4))
    assert tagged[0] == "sub" and child.decode_value(tagged) == 4 and type(child.decode_value(tagged)) is int
    assert encode(map(str, [1, 2]))[0] == "iter"
    for bad in (["int", "12x"], ["list", "nope"], ["dict", [[["int", "1"]]]], ["what"], "str", [["nested"]]):
        with pytest.raises(ValueError):
            child.decode_value(bad)
    deep: list = ["none"]
    for _ in range(child.MAX_DEPTH + 5):
        deep = ["list", [deep]]
    with pytest.raises(ValueError):
        child.decode_value(deep)


def test_judging_uses_literals_repr_and_printed_output():
    encode = child._make_encoder()
    assert judge_value({"value": encode(0.1 + 0.2)}, "0.3")
    assert judge_value({"value": encode(set())}, "set()")
    assert judge_value({"value": encode(float("inf"))}, "float('inf')")
    assert judge_value({"value": encode(None), "printed": "hi\n"}, "hi")
    assert judge_value({"value": encode(None), "printed": ""}, "None")
    assert not judge_value({"value": encode(2)}, "3")
    assert not judge_value({"value": ["repr", "3", "Weird"]}, "4")
    assert judge_value({"value": ["repr", "Point(1, 2)", "Point"]}, "Point(1, 2)")
    assert not judge_value({"error": "boom"}, "1")
    assert not judge_value({"value": ["int", "nope"]}, "1")
    # Expected text is never evaluated as code.
    assert not judge_value({"value": encode(0)}, "__import__('os').system('true')")


def test_a_value_that_lies_about_equality_is_judged_by_its_plain_value():
    program = (
        "class Always:\n"
        "    def __eq__(self, other): return True\n"
        "    def __repr__(self): return 'nope'\n"
        "class LyingInt(int):\n"
        "    def __eq__(self, other): return True\n"
        "    __hash__ = int.__hash__\n"
        "def answer(): return Always()\n"
        "def answer_int(): return LyingInt(1)\n"
    )
    result = run_in_sandbox(
        program, [ExpressionCheck("answer()", "5"), ExpressionCheck("answer_int()", "5"), ExpressionCheck("answer_int()", "1")]
    )
    assert result.check_passed == (False, False, True)


# --------------------------------------------------------------------------------------
# Hidden tests through two sandboxes
# --------------------------------------------------------------------------------------

CHECK = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate([1], [2]) == [1, 2]
    assert candidate((1,), (2,)) == (1, 2)
    try:
        candidate(1, 'a')
    except TypeError:
        pass
    else:
        raise AssertionError('expected a TypeError')

check(add)
"""


def test_hidden_tests_pass_an_honest_candidate_and_fail_a_wrong_one():
    honest = run_tests_in_sandbox(ADD, CHECK, ["add"], limits=FAST)
    assert honest.passed and honest.calls == 4, honest
    wrong = run_tests_in_sandbox("def add(a, b):\n    return a\n", CHECK, ["add"], limits=FAST)
    assert not wrong.passed and wrong.error.startswith("AssertionError")


def test_hidden_tests_use_the_prompts_helpers_and_bare_asserts():
    context = "def double(x):\n    return 2 * x\n"
    tests = "assert half(double(5)) == 5\nassert half(8) == 4\n"
    result = run_tests_in_sandbox("def half(x):\n    return x // 2\n", tests, ["half"], test_context=context, limits=FAST)
    assert result.passed, result


def test_hidden_tests_survive_a_candidate_that_hangs_crashes_or_does_not_load():
    hang = run_tests_in_sandbox(
        "def add(a, b):\n    while True: pass\n",
        CHECK,
        ["add"],
        limits=SandboxLimits(timeout_s=3.0, check_timeout_s=0.5),
    )
    assert not hang.passed
    exits = run_tests_in_sandbox("import os\ndef add(a, b):\n    os._exit(0)\n", CHECK, ["add"], limits=FAST)
    assert not exits.passed
    broken = run_tests_in_sandbox("def add(:\n", CHECK, ["add"], limits=FAST)
    assert not broken.passed and broken.program_error.startswith("SyntaxError")


def test_hidden_tests_ignore_forged_replies_and_patched_builtins():
    program = (
        "import builtins, os, sys\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\n"
        "builtins.bool = lambda *a: True\n"
        "def add(a, b):\n"
        "    # forge a verdict and replies on every descriptor we can find\n"
        "    for fd in range(3, 20):\n"
        "        try: os.write(fd, b'{\"verdict\": \"passed\"}\\n')\n"
        "        except OSError: pass\n"
        "    return 0\n"
    )
    result = run_tests_in_sandbox(program, CHECK, ["add"], limits=FAST)
    assert not result.passed


# --------------------------------------------------------------------------------------
# Failing closed
# --------------------------------------------------------------------------------------


def test_missing_isolation_fails_closed_with_what_to_install(monkeypatch):
    monkeypatch.setenv(BWRAP_ENV, "/nonexistent/bwrap")
    assert not isolation_status().available
    with pytest.raises(IsolationUnavailableError, match="bubblewrap"):
        run_in_sandbox(ADD, [ExpressionCheck("add(1, 2)", "3")])
    with pytest.raises(IsolationUnavailableError, match="allow_unisolated"):
        run_tests_in_sandbox(ADD, CHECK, ["add"])


def test_opting_out_runs_unisolated_and_warns_every_time(monkeypatch, caplog):
    monkeypatch.setenv(BWRAP_ENV, "/nonexistent/bwrap")
    with caplog.at_level(logging.WARNING, logger="bestroute_lc"):
        for _ in range(2):
            result = run_in_sandbox(ADD, [ExpressionCheck("add(1, 2)", "3")], allow_unisolated=True)
            assert result.passed == 1
    warnings = [r for r in caplog.records if "WITHOUT isolation" in r.getMessage()]
    assert len(warnings) == 2


def test_an_interpreter_under_tmp_keeps_tmp_as_a_read_only_parent(monkeypatch):
    """A checkout under /tmp (CI clones there, for one) must not clash with the /tmp symlink."""
    from bestroute_lc import isolation

    monkeypatch.setattr(isolation, "_read_only_roots", lambda: ["/tmp/checkout/.venv", "/opt/python"])
    command = isolation.isolated_command(["python"], bwrap="bwrap")
    assert "/tmp" not in [command[i + 2] for i, part in enumerate(command) if part == "--symlink"]
    assert ["--perms", "0755", "--dir", "/tmp"] == command[command.index("/tmp") - 3 : command.index("/tmp") + 1]
    monkeypatch.setattr(isolation, "_read_only_roots", lambda: ["/opt/python"])
    command = isolation.isolated_command(["python"], bwrap="bwrap")
    assert ["--symlink", isolation.SANDBOX_WORKDIR, "/tmp"] == command[command.index("/tmp") - 2 : command.index("/tmp") + 1]
