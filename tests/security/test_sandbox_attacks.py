"""Adversarial tests: candidate programs written to escape the code-execution sandbox.

Every attack is a candidate answer handed to the code-execution reranker and/or the
training scorer ``CodeTestScorer`` (see ``attacks.py``); each call also carries an honest
control candidate, so a sandbox that runs nothing at all cannot pass by accident. The
escape attempts are written so that they succeed against a naive subprocess sandbox
(the old best-effort one): when one works, the candidate answers correctly and scores.

Nothing here passes ``allow_unisolated=True`` except the tests of that switch: without
the isolation layer every attack test fails (fail closed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bestroute_lc import sandbox
from bestroute_lc.rerankers.base import argmax_first
from bestroute_lc.rerankers.code_execution import CodeExecutionReranker
from bestroute_lc.sandbox import ExpressionCheck, SandboxLimits, run_in_sandbox
from tests.security import attacks
from tests.security.conftest import KEY_PREFIX, kill_marked, processes_with, survivors
from tests.security.victim import describe
from training.records import PromptRecord
from training.scorers import CodeTestScorer

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the isolation layer is Linux only (bubblewrap)"),
]

HONEST_SCORE = 3.0  # three visible doctests
PARTIAL_SCORE = 2.0
QUICK = SandboxLimits(timeout_s=4.0, check_timeout_s=3.0)
RECORD = PromptRecord(id="security", prompt=attacks.PROMPT, tests=attacks.HIDDEN_TESTS, entry_point=attacks.ENTRY)


def api(name: str) -> Any:
    """A name of the isolation layer's public API (a clear failure while it is missing)."""
    value = getattr(sandbox, name, None)
    if value is None:
        pytest.fail(f"bestroute_lc.sandbox.{name} does not exist: the isolation layer has not landed")
    return value


def reranker(limits: SandboxLimits = QUICK, workers: int = 4, **kwargs: Any) -> CodeExecutionReranker:
    return CodeExecutionReranker(limits=limits, max_workers=workers, **kwargs)


def scorer(timeout_s: float = 4.0, workers: int = 4, **kwargs: Any) -> CodeTestScorer:
    return CodeTestScorer(timeout_s=timeout_s, max_workers=workers, **kwargs)


def scorer_results(instance: CodeTestScorer, candidates: Sequence[str]) -> list[Any]:
    """The scorer's sandbox results, where it still exposes them (``run``)."""
    run = getattr(instance, "run", None)
    return list(run(RECORD, candidates)) if run is not None else []


def assert_no_key(key: str, texts: Iterable[str], where: str) -> None:
    for text in texts:
        assert key not in text, (
            f"the parent's API key leaked into {where}: ...{text[max(0, text.find(key) - 200) :][:400]}"
        )
        assert not re.search(re.escape(KEY_PREFIX) + "[0-9a-f]{8}", text), f"an API key leaked into {where}"


def assert_no_key_in_files(key: str, paths: Iterable[Path]) -> None:
    for root in paths:
        candidates = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            try:
                if path.stat().st_size > (4 << 20):
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            assert key.encode() not in data, f"the API key was written to {path}"


def new_files_in_tmp(before: set[str], marker: str) -> list[Path]:
    return [Path("/tmp", n) for n in set(os.listdir("/tmp")) - before if marker in n or n.startswith("bestroute-sec")]


# --------------------------------------------------------------------------------------
# The layer is there, and without it nothing runs
# --------------------------------------------------------------------------------------


def test_isolation_layer_is_available() -> None:
    status = api("isolation_status")()
    assert isinstance(status.mechanism, str) and status.mechanism
    assert status.available is True, f"no isolation layer on this machine: {status.reason}"


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESTROUTE_BWRAP", "/nonexistent")


def _ran_marker_candidate(path: Path) -> str:
    return attacks.oracle(f"with open({str(path)!r}, 'w') as handle:\n    handle.write('ran')\nreturn True")


def _assert_says_what_to_install(error: BaseException) -> None:
    message = str(error)
    assert re.search(r"bubblewrap|bwrap", message, re.IGNORECASE), message
    assert "install" in message.lower(), message


@pytest.mark.usefixtures("no_bwrap")
def test_isolation_status_reports_a_missing_bwrap() -> None:
    status = api("isolation_status")()
    assert status.available is False
    assert isinstance(status.mechanism, str)
    assert isinstance(status.reason, str) and status.reason.strip()


@pytest.mark.usefixtures("no_bwrap")
@pytest.mark.parametrize("entry", ["reranker_score", "scorer_score", "run_in_sandbox"])
def test_fails_closed_without_the_isolation_layer(entry: str, tmp_path: Path) -> None:
    error_type = api("IsolationUnavailableError")
    assert issubclass(error_type, RuntimeError)
    ran = tmp_path / "ran"
    candidate = _ran_marker_candidate(ran)
    with pytest.raises(error_type) as info:
        if entry == "reranker_score":
            reranker().score(attacks.PROMPT, [candidate, attacks.HONEST])
        elif entry == "scorer_score":
            scorer().score(RECORD, [candidate, attacks.HONEST])
        else:
            from bestroute_lc.rerankers.code_execution import extract_candidate_code

            run_in_sandbox(
                extract_candidate_code(candidate, {attacks.ENTRY}),
                [ExpressionCheck("sum_squares([1])", "1")],
                limits=QUICK,
            )
    _assert_says_what_to_install(info.value)
    assert not ran.exists(), "code was executed although the isolation layer is missing"


def _unisolated_warnings(
    caplog: pytest.LogCaptureFixture, prefixes: tuple[str, ...] = ("bestroute_lc",)
) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(prefixes)]


@pytest.mark.usefixtures("no_bwrap")
def test_allow_unisolated_runs_and_warns_on_every_call(caplog: pytest.LogCaptureFixture, fake_key: str) -> None:
    allowed_reranker = reranker(allow_unisolated=True)
    allowed_scorer = scorer(allow_unisolated=True)
    for _ in range(2):
        caplog.clear()
        scores = allowed_reranker.score(attacks.PROMPT, [attacks.WRONG, attacks.HONEST])
        assert scores[1] == HONEST_SCORE and scores[0] < PARTIAL_SCORE
        assert _unisolated_warnings(caplog), "CodeExecutionReranker(allow_unisolated=True) ran without a warning"

        caplog.clear()
        assert allowed_scorer.score(RECORD, [attacks.WRONG, attacks.HONEST]) == [0.0, 1.0]
        assert _unisolated_warnings(caplog, ("bestroute_lc", "training")), (
            "CodeTestScorer(allow_unisolated=True) ran without a warning"
        )

        caplog.clear()
        result = run_in_sandbox(
            "def sum_squares(numbers):\n    return sum(x * x for x in numbers)\n",
            [ExpressionCheck("sum_squares([1, 2, 3])", "14")],
            limits=QUICK,
            allow_unisolated=True,
        )
        assert result.passed == 1
        assert _unisolated_warnings(caplog), "run_in_sandbox(allow_unisolated=True) ran without a warning"
    assert_no_key(fake_key, [caplog.text], "the logs")


# --------------------------------------------------------------------------------------
# Stealing the API key: environ and memory of the parent
# --------------------------------------------------------------------------------------

VICTIM_BUDGET_S = 2.5


@pytest.fixture(scope="module")
def victim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One victim process (key in its exec-time environment) running every phase."""
    import secrets

    key = KEY_PREFIX + secrets.token_hex(16)
    marker = "bestroute-sec-victim-" + secrets.token_hex(8)
    out_dir = tmp_path_factory.mktemp("victim")
    leak_paths = [str(out_dir / "leak.txt"), f"/tmp/{marker}-leak.txt", str(Path.home() / f".{marker}-leak")]
    job = {
        "root_pid": os.getpid(),
        "budget_s": VICTIM_BUDGET_S,
        "leak_paths": leak_paths,
        "phases": [
            "exfil_reranker",
            "exfil_reranker_leak",
            "exfil_scorer",
            "exfil_scorer_leak",
            "kill_reranker",
            "kill_scorer",
        ],
    }
    env = dict(os.environ, OPENAI_API_KEY=key, HF_HUB_OFFLINE="1")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("victim.py")), marker],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
            timeout=100,
            start_new_session=True,  # whatever kills its process group stays away from pytest
        )
    finally:
        kill_marked(marker)
    phases = {}
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "phase" in record:
            phases[record["phase"]] = record
    run = {
        "key": key,
        "marker": marker,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "phases": phases,
        "done": '{"done": true}' in proc.stdout,
        "leak_paths": [Path(p) for p in leak_paths],
        "out_dir": out_dir,
        "elapsed_s": time.monotonic() - start,
    }
    yield run
    for path in run["leak_paths"]:
        path.unlink(missing_ok=True)


def _phase(run: dict[str, Any], name: str) -> dict[str, Any]:
    phase = run["phases"].get(name)
    assert phase is not None, (
        f"victim never finished phase {name!r} (exit status {run['returncode']}); stderr tail:\n{run['stderr'][-3000:]}"
    )
    assert "error" not in phase, f"phase {name!r} failed: {phase['error']}\n{phase.get('traceback', '')[-3000:]}"
    return phase


def test_parent_environ_and_memory_are_out_of_reach(victim_run: dict[str, Any]) -> None:
    """``/proc/<ppid>/environ``, ``/proc/<ppid>/mem`` (through ``maps``) and the same for
    the parent found by scanning ``/proc``: the key is not obtainable."""
    key = victim_run["key"]
    scores = _phase(victim_run, "exfil_reranker")["scores"]
    assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[0] == 0.0, "a candidate read the parent's API key (environ or memory) through the reranker"
    assert _phase(victim_run, "exfil_scorer")["scores"] == [0.0, 1.0], (
        "a candidate read the parent's API key through CodeTestScorer"
    )
    for name in ("exfil_reranker_leak", "exfil_scorer_leak"):
        assert_no_key(key, _phase(victim_run, name)["texts"], f"the results of {name}")
    assert_no_key(key, [victim_run["stdout"], victim_run["stderr"]], "the victim's output and logs")
    for path in victim_run["leak_paths"]:
        assert not path.exists(), f"the sandbox wrote {path}"
    assert_no_key_in_files(key, [victim_run["out_dir"]])


def test_killing_the_parent_only_fails_the_candidate(victim_run: dict[str, Any]) -> None:
    """``os.kill(os.getppid(), 9)``, a kill of the parent found by scanning ``/proc``,
    ``os.kill(0, 9)``: the parent survives and the attack is just a failed candidate."""
    assert victim_run["done"] and victim_run["returncode"] == 0, (
        f"the process running the sandbox did not survive (exit status {victim_run['returncode']}, "
        f"phases finished: {sorted(victim_run['phases'])})"
    )
    reranker_scores = _phase(victim_run, "kill_reranker")["scores"]
    assert reranker_scores[2] == HONEST_SCORE and reranker_scores[0] == 0.0 and reranker_scores[1] == 0.0, (
        reranker_scores
    )
    assert _phase(victim_run, "kill_scorer")["scores"] == [0.0, 0.0, 1.0]


def test_key_in_the_test_process_never_leaks(
    fake_key: str, marker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The key set in this very process (``os.environ`` only): memory scans of the
    parent find nothing, and nothing returned, logged or written contains it."""
    tmp_before = set(os.listdir("/tmp"))
    home_leak = Path.home() / f".{marker}-leak"
    leak_paths = [str(tmp_path / "leak.txt"), f"/tmp/{marker}-leak.txt", str(home_leak)]
    exfil = attacks.exfiltrate(root_pid=os.getpid(), victim_marker=marker, budget_s=2.5, leak_paths=leak_paths)
    leak = attacks.exfiltrate_and_leak(root_pid=os.getpid(), victim_marker=marker, budget_s=2.5, leak_paths=leak_paths)
    limits = SandboxLimits(timeout_s=6.0, check_timeout_s=5.0)
    try:
        results = reranker(limits).execute(attacks.PROMPT, [exfil, leak, attacks.HONEST])
        assert results[2].passed == 3, f"the honest control failed: {results[2]!r}"
        assert results[0].passed == 0, "a candidate found the API key in the parent's memory"
        assert results[1].passed == 0
        assert_no_key(fake_key, describe(results), "the reranker's results")

        instance = scorer(timeout_s=6.0)
        assert instance.score(RECORD, [exfil, leak, attacks.HONEST]) == [0.0, 0.0, 1.0]
        assert_no_key(fake_key, describe(scorer_results(instance, [leak])), "the scorer's results")

        assert_no_key(fake_key, [caplog.text], "the logs")
        for path in leak_paths:
            assert not Path(path).exists(), f"the sandbox wrote {path}"
        assert_no_key_in_files(fake_key, [tmp_path, *new_files_in_tmp(tmp_before, marker)])
    finally:
        for path in leak_paths:
            Path(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


def test_no_network_to_the_test_machine(listener: Any, marker: str) -> None:
    candidates = [
        attacks.network(body, port=listener.port, token=marker)
        for body in (attacks.NET_CTYPES, attacks.NET_PYSOCKET, attacks.NET_PLAIN)
    ]
    scores = reranker().score(attacks.PROMPT, [*candidates, attacks.HONEST])
    test_scores = scorer().score(RECORD, [*candidates, attacks.HONEST])
    listener.settle()
    assert listener.received == b"" and listener.connections == 0, (
        f"the loopback listener got {listener.connections} connection(s) and {listener.received[:200]!r}"
    )
    assert scores[-1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[:-1] == [0.0, 0.0, 0.0], f"network attacks (ctypes, _socket, socket) scored {scores[:-1]}"
    assert test_scores == [0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------------------
# Processes outliving the run
# --------------------------------------------------------------------------------------

SURVIVOR_SLEEP_S = 1.5


def test_no_process_outlives_the_run(marker: str, tmp_path: Path) -> None:
    mark_dirs = [str(tmp_path), "/tmp"]

    def candidates(stage: str) -> list[str]:
        return [
            attacks.survivor(
                attacks.FORK_MANY, marker=marker, kind=f"{stage}-fork20", mark_dirs=mark_dirs, sleep_s=SURVIVOR_SLEEP_S
            ),
            attacks.survivor(
                attacks.FORK_SETSID,
                marker=marker,
                kind=f"{stage}-setsid",
                mark_dirs=mark_dirs,
                sleep_s=SURVIVOR_SLEEP_S,
            ),
            attacks.survivor(
                attacks.FORK_EXEC,
                marker=marker,
                kind=f"{stage}-forkexec",
                mark_dirs=mark_dirs,
                sleep_s=SURVIVOR_SLEEP_S,
            ),
            attacks.HONEST,
        ]

    try:
        scores = reranker().score(attacks.PROMPT, candidates("reranker"))
        after_reranker = survivors(marker)
        test_scores = scorer().score(RECORD, candidates("scorer"))
        after_scorer = survivors(marker)
        returned = time.monotonic()
        assert not after_reranker, f"processes started by reranker candidates are still alive: {after_reranker}"
        assert not after_scorer, f"processes started by scorer candidates are still alive: {after_scorer}"
        assert scores[-1] == HONEST_SCORE and test_scores[-1] == 1.0, (scores, test_scores)
        time.sleep(max(0.0, returned + SURVIVOR_SLEEP_S + 0.8 - time.monotonic()))
        late = processes_with(marker)
        marks = sorted(str(p) for d in mark_dirs for p in Path(d).glob(f"{marker}-*"))
        assert not late, f"processes from the sandbox came back later: {late}"
        assert not marks, f"processes from the sandbox wrote marker files after the call returned: {marks}"
    finally:
        kill_marked(marker)
        for path in Path("/tmp").glob(f"{marker}-*"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Files of the test machine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["reranker", "scorer"])
def test_home_and_test_files_are_untouched(component: str, marker: str, tmp_path: Path) -> None:
    home_file = Path.home() / f".{marker}-{component}"
    canary = tmp_path / "canary.txt"
    canary.write_text("canary\n")
    outside = tmp_path / "outside.txt"
    candidate = attacks.files(home_file=str(home_file), canary=str(canary), outside_file=str(outside))
    try:
        if component == "reranker":
            scores = reranker().score(attacks.PROMPT, [candidate, attacks.HONEST])
            assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
            assert scores[0] == 0.0, "the candidate wrote or deleted files of the test machine"
        else:
            assert scorer().score(RECORD, [candidate, attacks.HONEST]) == [0.0, 1.0]
        assert not home_file.exists(), f"the sandbox wrote {home_file} (the parent's $HOME)"
        assert canary.exists() and canary.read_text() == "canary\n", "the sandbox deleted or changed the canary file"
        assert not outside.exists(), f"the sandbox wrote {outside}"
    finally:
        home_file.unlink(missing_ok=True)


def test_host_files_cannot_be_read(fake_key: str, marker: str, tmp_path: Path) -> None:
    """A secret file in the test's tmp dir and in ``$HOME``, and this very test file."""
    secret = tmp_path / "secret.txt"
    secret.write_text(fake_key + "\n")
    home_secret = Path.home() / f".{marker}-secret"
    home_secret.write_text(fake_key + "\n")
    try:
        candidate = attacks.read_files([str(secret), str(home_secret), str(Path(__file__).resolve())])
        scores = reranker().score(attacks.PROMPT, [candidate, attacks.HONEST])
        assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
        assert scores[0] == 0.0, "the candidate read files of the test machine"
        assert scorer().score(RECORD, [candidate, attacks.HONEST]) == [0.0, 1.0]
    finally:
        home_secret.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Sibling sandboxes
# --------------------------------------------------------------------------------------


def test_a_saboteur_cannot_kill_its_sibling_sandboxes() -> None:
    """The saboteur SIGKILLs, for 2.5 s, every process it can see that descends from the
    test process; an honest but slow candidate runs next to it in the same call."""
    saboteur = attacks.saboteur(root_pid=os.getpid(), duration_s=2.5)
    limits = SandboxLimits(timeout_s=6.0, check_timeout_s=5.0)
    scores = reranker(limits, workers=2).score(attacks.PROMPT, [saboteur, attacks.HONEST_SLOW])
    assert scores[1] == HONEST_SCORE, f"the honest candidate lost its marks to the saboteur: {scores}"
    assert argmax_first(scores) == 1
    assert scorer(timeout_s=6.0, workers=2).score(RECORD, [saboteur, attacks.HONEST_SLOW]) == [0.0, 1.0]


# --------------------------------------------------------------------------------------
# Cheating the verdict
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(attacks.CHEATS))
def test_a_cheat_never_outscores_an_honest_partial_answer(name: str, fake_key: str) -> None:
    scores = reranker().score(attacks.PROMPT, [attacks.CHEATS[name], attacks.PARTIAL, attacks.HONEST])
    assert scores[2] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[1] == PARTIAL_SCORE, f"the partial control should pass 2 of 3: {scores}"
    assert scores[0] < scores[1], f"cheat {name!r} scored {scores[0]}, more than an honest 2-of-3 answer"
    assert argmax_first(scores[:2]) == 1


@pytest.mark.parametrize("name", sorted(attacks.CHEATS))
def test_a_cheat_scores_zero_on_hidden_tests(name: str) -> None:
    scores = scorer().score(RECORD, [attacks.CHEATS[name], attacks.HONEST])
    assert scores == [0.0, 1.0], f"cheat {name!r} against the hidden check(): {scores}"


def answering_pool(answers: Sequence[str]) -> Any:
    """A pool of local members that answer with ``answers`` in turn (no network)."""
    from langchain_core.messages import AIMessage

    from bestroute_lc import Pool, PoolMember, Prices
    from tests.helpers import ScriptedChatModel

    class AnsweringChatModel(ScriptedChatModel):
        answers: list = []

        def _reply(self, messages: list, kwargs: dict) -> AIMessage:
            self.calls.append({"messages": messages, "kwargs": kwargs})
            text = self.answers[(len(self.calls) - 1) % len(self.answers)]
            usage = {"input_tokens": 10, "output_tokens": 10, "total_tokens": 20}
            return AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.name_})

    prices = {
        "big": Prices(input_per_mtok=5, output_per_mtok=15),
        "small": Prices(input_per_mtok=0.1, output_per_mtok=0.2),
        "mid": Prices(input_per_mtok=1, output_per_mtok=2),
    }
    members = [
        PoolMember(
            name=name,
            chat_model=AnsweringChatModel(name_=name, calls=[], answers=list(answers)),
            prices=prices[name],
            avg_output_tokens=100,
            timeout_s=10,
            max_retries=0,
        )
        for name in ("big", "small", "mid")
    ]
    return Pool(members=members, reference="big")


def test_chat_model_returns_the_honest_answer_not_a_cheat() -> None:
    """End to end: a pool member returns two cheats and the honest answer as its n
    samples; the code-execution reranker must pick the honest one."""
    from langchain_core.messages import HumanMessage

    from bestroute_lc import BestRouteChatModel
    from tests.helpers import fixed_router

    answers = [attacks.CHEAT_ALWAYS_EQUAL, attacks.CHEAT_PATCH_JSON, attacks.HONEST]
    pool = answering_pool(answers)
    table = {"small": [0.2, 0.5, 0.9], "mid": [0.7, 0.8, 0.88]}  # small n=3 at threshold 0.85
    llm = BestRouteChatModel(pool=pool, router=fixed_router(table, "big"), reranker=reranker(), threshold=0.85)
    message = llm.invoke([HumanMessage("Complete this function:\n```python\n" + attacks.PROMPT + "```\n")])
    meta = message.response_metadata["bestroute"]
    assert meta["member"] == "small" and meta["n"] == 3, meta
    assert meta["rerank_error"] is None, meta["rerank_error"]
    assert message.content == attacks.HONEST, (
        f"picked candidate {meta['chosen_index']} with scores {meta['candidate_scores']}"
    )
    scores = meta["candidate_scores"]
    assert scores[2] == HONEST_SCORE and max(scores[:2]) < PARTIAL_SCORE, scores


def test_chat_model_fails_closed_without_the_isolation_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat model cannot be built around the code reranker where isolation is missing,
    and one built earlier raises instead of handing back an unverified pick."""
    from langchain_core.messages import HumanMessage

    from bestroute_lc import BestRouteChatModel
    from bestroute_lc.sandbox import IsolationUnavailableError
    from tests.helpers import fixed_router

    table = {"small": [0.2, 0.5, 0.9], "mid": [0.7, 0.8, 0.88]}
    pool = answering_pool([attacks.CHEAT_ALWAYS_EQUAL, attacks.HONEST, attacks.HONEST])
    llm = BestRouteChatModel(pool=pool, router=fixed_router(table, "big"), reranker=reranker(), threshold=0.85)
    monkeypatch.setenv("BESTROUTE_BWRAP", "/nonexistent")
    with pytest.raises(IsolationUnavailableError, match="bubblewrap"):
        BestRouteChatModel(pool=pool, router=fixed_router(table, "big"), reranker=reranker(), threshold=0.85)
    with pytest.raises(IsolationUnavailableError):
        llm.invoke([HumanMessage("Complete this function:\n```python\n" + attacks.PROMPT + "```\n")])


# --------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------


def test_memory_cpu_and_exit_attacks_are_contained() -> None:
    """An 8 GiB allocation, an infinite loop and ``sys.exit(0)``: the call returns in
    bounded time and each of them is a failed candidate."""
    candidates = [attacks.memory_bomb(), attacks.INFINITE_LOOP, attacks.SYS_EXIT_AT_LOAD, attacks.HONEST]
    limits = SandboxLimits(timeout_s=3.0, check_timeout_s=2.0)
    start = time.monotonic()
    scores = reranker(limits).score(attacks.PROMPT, candidates)
    elapsed = time.monotonic() - start
    assert elapsed < 20.0, f"the reranker took {elapsed:.1f}s with a 3s limit per candidate"
    assert scores[-1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[:-1] == [0.0, 0.0, 0.0], f"memory bomb, loop, sys.exit scored {scores[:-1]}"

    start = time.monotonic()
    test_scores = scorer(timeout_s=3.0).score(RECORD, candidates)
    elapsed = time.monotonic() - start
    assert elapsed < 20.0, f"CodeTestScorer took {elapsed:.1f}s with a 3s limit per response"
    assert test_scores == [0.0, 0.0, 0.0, 1.0]


MEMORY_LIMIT = 256 << 20


@pytest.mark.parametrize("name", sorted(attacks.MEMORY_BYPASSES))
def test_memory_limit_cannot_be_bypassed(name: str) -> None:
    """Memory no address-space limit sees (SysV shared memory, memfd files, a tmpfs in a
    user namespace of the candidate's own): holding three times the limit must fail."""
    candidate = attacks.memory_bypass(name, goal_bytes=3 * MEMORY_LIMIT)
    limits = SandboxLimits(timeout_s=6.0, check_timeout_s=5.0, memory_bytes=MEMORY_LIMIT)
    scores = reranker(limits, workers=2).score(attacks.PROMPT, [candidate, attacks.HONEST])
    assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[0] == 0.0, (
        f"a candidate held {3 * MEMORY_LIMIT >> 20} MiB through {name} with a {MEMORY_LIMIT >> 20} MiB limit"
    )


def test_no_user_namespace_inside_the_sandbox() -> None:
    """``unshare(CLONE_NEWUSER)`` makes the candidate root of a namespace of its own: a
    mount and network stack to attack the kernel with, and limits to step around."""
    scores = reranker().score(attacks.PROMPT, [attacks.nested_user_namespace(), attacks.HONEST])
    assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[0] == 0.0, "a candidate created a user namespace inside the sandbox"


def test_writable_storage_is_bounded() -> None:
    """Memory by other means: files in the sandbox's writable area (a tmpfs lives in
    RAM). Storing 256 MiB (four times the default 64 MiB work directory) must fail."""
    candidate = attacks.storage_fill(budget_s=3.0)
    limits = SandboxLimits(timeout_s=6.0, check_timeout_s=5.0)
    scores = reranker(limits, workers=2).score(attacks.PROMPT, [candidate, attacks.HONEST])
    assert scores[1] == HONEST_SCORE, f"the honest control failed: {scores}"
    assert scores[0] == 0.0, "a candidate stored 256 MiB of files inside the sandbox"
