"""A stand-in for an application process that scores untrusted code.

Started by the security tests as a separate process (``python victim.py <marker>``)
with the fake API key in its *initial* environment, so that ``/proc/<pid>/environ``
holds it the way it would in a real deployment (``monkeypatch.setenv`` only changes the
test process's ``os.environ``, not its exec-time environment block), and so that
attacks which kill "the parent" kill this process instead of the pytest run.

Reads a JSON job on stdin, runs the phases it names, and prints one JSON line per
finished phase (flushed at once, so what ran before a crash is still reported), then
``{"done": true}``. Logging goes to stderr at DEBUG level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def describe(results: list) -> list[str]:
    """Everything a result object shows (repr, stderr tail, per-check errors)."""
    texts = []
    for result in results:
        parts = [repr(result)]
        for name in ("stderr_tail", "check_errors", "program_error", "stdout_tail", "error"):
            parts.append(repr(getattr(result, name, None)))
        parts.append(repr(getattr(result, "__dict__", None)))
        texts.append("\n".join(parts))
    return texts


def main() -> int:
    marker = sys.argv[1]
    job = json.loads(sys.stdin.read())
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")

    from bestroute_lc.rerankers.code_execution import CodeExecutionReranker
    from bestroute_lc.sandbox import SandboxLimits
    from tests.security import attacks
    from training.records import PromptRecord
    from training.scorers import CodeTestScorer

    me = os.getpid()
    root_pid = int(job["root_pid"])
    budget = float(job["budget_s"])
    record = PromptRecord(id="victim", prompt=attacks.PROMPT, tests=attacks.HIDDEN_TESTS, entry_point=attacks.ENTRY)
    exfil = attacks.exfiltrate(root_pid=root_pid, victim_marker=marker, budget_s=budget, leak_paths=job["leak_paths"])
    leak = attacks.exfiltrate_and_leak(
        root_pid=root_pid, victim_marker=marker, budget_s=budget, leak_paths=job["leak_paths"]
    )
    kill_parent = attacks.kill_parent(root_pid=root_pid, victim_pid=me, victim_marker=marker)
    kill_group = attacks.kill_group()

    slow = SandboxLimits(timeout_s=budget + 4.0, check_timeout_s=budget + 3.0)
    quick = SandboxLimits(timeout_s=4.0, check_timeout_s=3.0)

    def reranker(limits: SandboxLimits) -> CodeExecutionReranker:
        return CodeExecutionReranker(limits=limits, max_workers=2)

    def scorer(timeout_s: float) -> CodeTestScorer:
        return CodeTestScorer(timeout_s=timeout_s, max_workers=2)

    def run_scorer_results(timeout_s: float, candidates: list[str]) -> list:
        instance = scorer(timeout_s)
        if hasattr(instance, "run"):
            return list(instance.run(record, candidates))
        instance.score(record, candidates)
        return []

    phases = {
        "exfil_reranker": lambda: {"scores": reranker(slow).score(attacks.PROMPT, [exfil, attacks.HONEST])},
        "exfil_reranker_leak": lambda: {"texts": describe(reranker(slow).execute(attacks.PROMPT, [leak]))},
        "exfil_scorer": lambda: {"scores": scorer(budget + 4.0).score(record, [exfil, attacks.HONEST])},
        "exfil_scorer_leak": lambda: {"texts": describe(run_scorer_results(budget + 4.0, [leak]))},
        "kill_reranker": lambda: {
            "scores": reranker(quick).score(attacks.PROMPT, [kill_parent, kill_group, attacks.HONEST])
        },
        "kill_scorer": lambda: {"scores": scorer(4.0).score(record, [kill_parent, kill_group, attacks.HONEST])},
    }
    for name in job["phases"]:
        start = time.monotonic()
        try:
            out = {"phase": name, **phases[name]()}
        except BaseException as exc:  # reported, not raised: the test decides
            out = {"phase": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out["elapsed_s"] = time.monotonic() - start
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    sys.stdout.write(json.dumps({"done": True}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
