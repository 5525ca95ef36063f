"""The code-execution reranker: example extraction, candidate code extraction, and
picking by passed examples with a learned tiebreaker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bestroute_lc.rerankers import code_execution
from bestroute_lc.rerankers.base import Reranker, argmax_first
from bestroute_lc.rerankers.code_execution import (
    CodeExecutionReranker,
    build_candidate_program,
    extract_candidate_code,
    extract_examples,
    extract_prompt_code,
)

# A HumanEval-style prompt (written for these tests): signature plus docstring with doctests.
PROMPT = '''from typing import List


def running_max(numbers: List[int]) -> List[int]:
    """ Return the running maximum of a list of integers.
    >>> running_max([1, 3, 2, 5, 4])
    [1, 3, 3, 5, 5]
    >>> running_max([])
    []
    >>> running_max([-2, -5])
    [-2, -2]
    """
'''

CORRECT_PROGRAM = """Here is an implementation:

```python
from typing import List


def running_max(numbers: List[int]) -> List[int]:
    result = []
    for number in numbers:
        result.append(number if not result else max(result[-1], number))
    return result
```

Example usage:

```python
print(running_max([1, 2]))
```
"""

WRONG_PROGRAM = """```python
def running_max(numbers):
    return sorted(numbers)
```"""

# HumanEval completion style: only the body, continuing the prompt.
CORRECT_BODY = """    result = []
    current = None
    for number in numbers:
        current = number if current is None else max(current, number)
        result.append(current)
    return result
"""
WRONG_BODY = "    return numbers[:]\n"


class FixedScores(Reranker):
    """A stand-in for the learned reward model."""

    name = "fixed"

    def __init__(self, scores: Sequence[float]):
        self.scores = list(scores)
        self.calls = 0

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        self.calls += 1
        return self.scores[: len(candidates)]


# ---------------------------------------------------------------------------- examples


def test_doctest_examples_are_extracted():
    examples = extract_examples(PROMPT)
    assert [(e.expression, e.expected) for e in examples] == [
        ("running_max([1, 3, 2, 5, 4])", "[1, 3, 3, 5, 5]"),
        ("running_max([])", "[]"),
        ("running_max([-2, -5])", "[-2, -2]"),
    ]


def test_doctest_variants_setup_multiline_output_and_assertion_style():
    prompt = '''def pair(a, b):
    """
    >>> xs = [1, 2]
    >>> pair(*xs)
    ['one',
     'two']
    >>> pair(3, 4) == ['three', 'four']
    >>> pair(0, 0)
    Traceback (most recent call last):
    ValueError: zero
    """
'''
    examples = extract_examples(prompt)
    assert [(e.expression, e.expected, e.setup) for e in examples] == [
        ("pair(*xs)", "['one',\n 'two']", "xs = [1, 2]"),
        ("pair(3, 4)", "['three', 'four']", "xs = [1, 2]"),
    ]


def test_prose_example_formats_are_recognised():
    prompt = '''def total(lst, k):
    """Sum the first k items.
    Examples:
    total([1, 2, 3], 2) == 3
    * total([], 0) => 0
    total([5], 1) ➞ 5
    total([1, 1], 1) -> 1.
    total([2, 2], 2) returns 4
    total([3], 1) should return 3
    for total([4], 1) = 4
    total([9], 1)  # => 9
    For lst = [1, 2], k = 1 the output should be 1
    Input: lst = [7, 7], k = 2
    Output: 14
    """
assert total([0], 1) == 0
'''
    found = {(e.expression, e.expected) for e in extract_examples(prompt)}
    assert found == {
        ("total([1, 2, 3], 2)", "3"),
        ("total([], 0)", "0"),
        ("total([5], 1)", "5"),
        ("total([1, 1], 1)", "1"),
        ("total([2, 2], 2)", "4"),
        ("total([3], 1)", "3"),
        ("total([4], 1)", "4"),
        ("total([9], 1)", "9"),
        ("total([1, 2], 1)", "1"),
        ("total([7, 7], 2)", "14"),
        ("total([0], 1)", "0"),
    }


def test_ambiguous_lines_are_not_taken_as_examples():
    prompt = '''def tri(n):
    """Tribonacci.
    tri(n) = 1 + n / 2, if n is even.
    tri(3) = tri(2) + tri(1) + tri(4)
    tri([1, 2]) == 1 + 9 = 10
    len(x) == 3
    helper(2) == 4
    """
'''
    assert extract_examples(prompt) == []


def test_no_examples_in_plain_prompt():
    assert extract_examples("Write a function that reverses a string.") == []


def test_examples_in_a_rendered_conversation():
    conversation = "System: You write Python.\nHuman: Complete this function:\n```python\n" + PROMPT + "```\n"
    assert len(extract_examples(conversation)) == 3
    assert "def running_max" in extract_prompt_code(conversation)


# ---------------------------------------------------------------------- candidate code


def test_fenced_code_keeps_definition_blocks_and_drops_usage_blocks():
    code = extract_candidate_code(CORRECT_PROGRAM, {"running_max"})
    assert "def running_max" in code and "print(running_max" not in code
    assert "Here is" not in code


def test_fenced_code_without_the_entry_takes_the_longest_block_and_unclosed_fences_count():
    text = "```python\nx = 1\n```\n\n```python\ndef other():\n    return 2\n```"
    assert extract_candidate_code(text, {"missing"}).startswith("def other")
    truncated = "Sure:\n```python\ndef f(x):\n    return x\n"
    assert extract_candidate_code(truncated, {"f"}).startswith("def f(x):")


def test_unfenced_code_between_prose_is_found():
    text = "Here you go.\n\ndef f(x):\n    return x + 1\n\nThis adds one."
    assert extract_candidate_code(text, {"f"}).strip() == "def f(x):\n    return x + 1"


def test_body_only_completion_is_appended_to_the_prompt():
    program = build_candidate_program(extract_prompt_code(PROMPT), CORRECT_BODY, {"running_max"})
    assert len(program) == 1 and program[0].code.startswith("from typing import List")
    assert program[0].code.rstrip().endswith("return result")


def test_body_without_first_line_indentation_is_repaired():
    body = "result = []\n    for n in numbers:\n        result.append(max([n] + result[-1:]))\n    return result\n"
    program = build_candidate_program(extract_prompt_code(PROMPT), body, {"running_max"})
    compile(program[0].code, "<test>", "exec")


def test_body_followed_by_a_helper_or_by_prose():
    prompt_code = extract_prompt_code(PROMPT)
    with_helper = (
        "    return _running(numbers)\n\n\ndef _running(xs):\n    return [max(xs[: i + 1]) for i in range(len(xs))]\n"
    )
    with_prose = CORRECT_BODY + "\nThis keeps the maximum seen so far.\n"
    reranker = CodeExecutionReranker()
    assert [r.passed for r in reranker.execute(PROMPT, [with_helper, with_prose])] == [3, 3]
    assert "This keeps" not in build_candidate_program(prompt_code, with_prose, {"running_max"})[0].code


# ------------------------------------------------------------------------------- picking


def test_picks_the_correct_program_over_a_wrong_one_in_either_order():
    reranker = CodeExecutionReranker()
    scores = reranker.score(PROMPT, [WRONG_PROGRAM, CORRECT_PROGRAM])
    assert scores[1] == 3.0 and scores[0] < scores[1]
    assert argmax_first(reranker.score(PROMPT, [CORRECT_PROGRAM, WRONG_PROGRAM])) == 0


def test_picks_the_correct_body_only_completion():
    scores = CodeExecutionReranker().score(PROMPT, [WRONG_BODY, CORRECT_BODY])
    assert argmax_first(scores) == 1
    assert scores[1] == 3.0


def test_broken_and_hanging_candidates_score_zero_without_blocking_the_others():
    hanging = "def running_max(numbers):\n    while True:\n        pass\n"
    broken = "def running_max(numbers:\n"
    # 4 s: the correct candidate must finish inside the limit even on 2 busy cores (1 s once did not).
    reranker = CodeExecutionReranker(timeout_s=4.0)
    results = reranker.execute(PROMPT, [hanging, broken, CORRECT_PROGRAM])
    assert [r.passed for r in results] == [0, 0, 3]
    assert results[1].program_error.startswith("SyntaxError")


def test_tiebreaker_orders_candidates_with_equal_passes():
    tiebreaker = FixedScores([0.0, 5.0, 100.0])
    reranker = CodeExecutionReranker(tiebreaker=tiebreaker)
    candidates = [CORRECT_PROGRAM, CORRECT_BODY, WRONG_PROGRAM]
    scores = reranker.score(PROMPT, candidates)
    assert argmax_first(scores) == 1  # both correct ones pass 3; the tiebreaker prefers #1
    assert 3.0 <= scores[0] < scores[1] < 4.0
    assert scores[2] < 3.0  # a huge tiebreaker score never beats one more passed example


def test_more_passes_always_win_even_against_saturated_tiebreaker_scores():
    reranker = CodeExecutionReranker(tiebreaker=FixedScores([1e6, -1e6]))
    scores = reranker.score(PROMPT, [WRONG_PROGRAM, CORRECT_PROGRAM])
    assert argmax_first(scores) == 1


def test_without_tiebreaker_ties_go_to_the_earliest_candidate():
    scores = CodeExecutionReranker().score(PROMPT, [CORRECT_BODY, CORRECT_PROGRAM])
    assert scores == [3.0, 3.0] and argmax_first(scores) == 0


def test_no_examples_falls_back_to_the_tiebreaker_without_executing(monkeypatch):
    def must_not_run(*_args, **_kwargs):
        raise AssertionError("nothing should be executed without examples")

    monkeypatch.setattr(code_execution, "run_in_sandbox", must_not_run)
    prompt = "Write a Python function that reverses a string."
    assert CodeExecutionReranker(tiebreaker=FixedScores([0.3, -2.0])).score(prompt, ["a", "b"]) == [0.3, -2.0]
    assert CodeExecutionReranker().score(prompt, ["a", "b"]) == [0.0, 0.0]
    assert CodeExecutionReranker().score(prompt, []) == []


async def test_ascore_matches_score():
    reranker = CodeExecutionReranker(tiebreaker=FixedScores([1.0, 0.0]))
    candidates = [WRONG_BODY, CORRECT_BODY]
    assert await reranker.ascore(PROMPT, candidates) == pytest.approx(reranker.score(PROMPT, candidates))


def test_tiebreaker_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        CodeExecutionReranker(tiebreaker=FixedScores([1.0])).score(PROMPT, [CORRECT_BODY, WRONG_BODY])


def test_reranker_name():
    assert CodeExecutionReranker.name == "code_execution"


def test_a_rendered_conversation_keeps_the_prompts_first_line_import():
    """The engine hands the reranker "user: <prompt>": the import on the prompt's first
    line must not be lost (function-body answers would fail with NameError)."""
    prompt = (
        "from typing import List\n\n\n"
        "def total(numbers: List[int]) -> int:\n"
        '    """ Sum of the numbers.\n'
        "    >>> total([1, 2])\n"
        "    3\n"
        '    """\n'
    )
    rendered = "user: " + prompt
    assert extract_prompt_code(rendered).startswith("from typing import List")
    body = "    return sum(numbers)\n"
    assert CodeExecutionReranker().score(rendered, [body]) == [1.0]
    # An annotated variable named like a role is code, not a prefix.
    assert extract_prompt_code("user: int = 1\ndef f():\n    return user\n").startswith("user: int = 1")
