"""Visible-example execution of recorded samples: computed once, cached by table fingerprint,
rerun only where the example extraction changed; one real sandboxed run."""

from __future__ import annotations

import pytest

from training.evaluation import execution
from training.evaluation.execution import ExecutionSettings, cache_file, execute_samples

PROMPT = 'user: def add(a, b):\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n    >>> add(0, 0)\n    0\n    """\n'
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def fake_runner(calls: list):
    def run(prompt: str, candidates):
        calls.append(list(candidates))
        return [(2 if "+" in c else 1, 2, False) for c in candidates]

    return run


def test_results_are_cached_per_distinct_text_and_reused(tmp_path) -> None:
    prompts = {"p1": PROMPT, "p2": "user: write a poem"}  # p2 has no visible examples: nothing runs
    texts = {("p1", "a"): [RIGHT, WRONG, RIGHT], ("p1", "b"): [WRONG], ("p2", "a"): ["roses"]}
    calls: list = []
    out = execute_samples(prompts, texts, cache_dir=tmp_path, table_fingerprint="t1", runner=fake_runner(calls))
    assert calls == [[RIGHT, WRONG]]  # each distinct text of a prompt once
    assert out[("p1", "a")][0].tolist() == [2, 1, 2] and out[("p1", "a")][1].tolist() == [2, 2, 2]
    assert out[("p2", "a")][1].tolist() == [0]
    assert cache_file(tmp_path, "t1", ExecutionSettings()).is_file()
    calls.clear()
    again = execute_samples(prompts, texts, cache_dir=tmp_path, table_fingerprint="t1", runner=fake_runner(calls))
    assert calls == [] and again[("p1", "b")][0].tolist() == [1]
    # another table fingerprint is another cache file
    execute_samples(prompts, texts, cache_dir=tmp_path, table_fingerprint="t2", runner=fake_runner(calls))
    assert calls == [[RIGHT, WRONG]]


def test_a_changed_example_extraction_reruns_that_prompt(tmp_path, monkeypatch) -> None:
    prompts = {"p1": PROMPT}
    texts = {("p1", "a"): [RIGHT, WRONG]}
    calls: list = []
    execute_samples(prompts, texts, cache_dir=tmp_path, table_fingerprint="t", runner=fake_runner(calls))
    monkeypatch.setattr(execution, "examples_fingerprint", lambda text, max_examples=32: "changed")
    execute_samples(prompts, texts, cache_dir=tmp_path, table_fingerprint="t", runner=fake_runner(calls))
    assert len(calls) == 2


def test_timeouts_are_retried_once(tmp_path) -> None:
    attempts: list = []

    def flaky(prompt, candidates):
        attempts.append(len(candidates))
        return [(0, 2, len(attempts) == 1) for _ in candidates]

    out = execute_samples({"p1": PROMPT}, {("p1", "a"): [RIGHT]}, cache_dir=None, table_fingerprint="t", runner=flaky)
    assert attempts == [1, 1] and out[("p1", "a")][0].tolist() == [0]


def test_one_real_sandboxed_run(tmp_path) -> None:
    from bestroute_lc.isolation import isolation_status

    if not isolation_status().available:
        pytest.skip("no isolation layer here")
    out = execute_samples({"p1": PROMPT}, {("p1", "a"): [RIGHT, WRONG]}, cache_dir=tmp_path, table_fingerprint="real")
    passed, total = out[("p1", "a")]
    assert total.tolist() == [2, 2] and passed.tolist() == [2, 1]  # add(0, 0) == 0 holds for a - b too
