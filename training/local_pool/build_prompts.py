"""Build ``data/local_pool/prompts.jsonl``: GSM8K train questions + MBPP (sanitized) tasks.

Sources (both MIT; see ``data/local_pool/DATA_CARD.md``):

* GSM8K train: ``grade_school_math/data/train.jsonl`` of github.com/openai/grade-school-math
* MBPP sanitized, HumanEval-style: ``CodeT/data/dataset/mbpp_sanitized_for_code_generation.jsonl``
  of github.com/microsoft/CodeT

Usage (the two source files extracted from the repositories first)::

    python -m training.local_pool.build_prompts --gsm8k train.jsonl --mbpp mbpp_sanitized.jsonl \
        --out data/local_pool/prompts.jsonl [--gsm8k-count 300] [--seed 0] [--no-verify]

Rows (``training.records.PromptRecord``):

* GSM8K: ``id`` ``gsm8k-train-<line>``, ``source`` ``gsm8k``, ``scorer`` ``numeric``,
  ``reference`` = the gold final answer (after ``####``, commas removed). The prompt asks for
  brief step-by-step reasoning ending with ``#### <number>``. ``max_tokens`` 384.
* MBPP: ``id`` ``mbpp-<task>``, ``source`` ``mbpp``, ``scorer`` ``code_tests``, ``entry_point``
  = the function the asserts call, ``tests`` = the module imports of the original stub followed
  by ``def check(candidate):`` and every assert (they call the function by name, as MBPP's do).
  The prompt gives the task text and the first assert as the visible example, and asks for the
  function in one fenced Python block; ``max_tokens`` 384. The prompt holds no code of its own (no fences, no
  ``def``/``import`` line), so the scorer runs the answer's code alone, then the tests.

A task is kept only when its reference solution (stub + canonical body) passes the
``code_tests`` scorer (``--no-verify`` skips that check) and its entry point is not ``check``.
The output interleaves the two tasks evenly, so any prefix of the file (what the generate
stage does first) has both.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import random
import sys
from pathlib import Path
from typing import Any

GSM8K_TEMPLATE = (
    "Solve the following math problem. Reason step by step in plain text, briefly, without LaTeX. "
    'Then write the final answer as a single number on the last line, in the form "#### <number>".\n\n'
    "Question: {question}"
)

MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {task}\n"
    "Your code should pass this test:\n\n"
    "{example}\n\n"
    "Write the Python function `{entry}` and give the complete code in a single fenced Python code block."
)

#: Answer budgets (the generate driver passes a prompt's ``max_tokens`` to the members).
#: Qwen2.5-Coder-1.5B's GSM8K solutions run ~180-300 tokens even when asked to be brief
#: (it writes LaTeX anyway): 256 cut most of them before the final line.
GSM8K_MAX_TOKENS = 384
MBPP_MAX_TOKENS = 384

_BUILTINS = frozenset(dir(builtins))


def gsm8k_reference(answer: str) -> str:
    """The gold final answer of a GSM8K solution (the text after ``####``), commas removed."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer without '####': {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_rows(path: Path, count: int, seed: int) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = sorted(random.Random(seed).sample(range(len(lines)), count))
    rows = []
    for index in chosen:
        item = lines[index]
        rows.append(
            {
                "id": f"gsm8k-train-{index + 1}",  # 1-based line of train.jsonl
                "prompt": GSM8K_TEMPLATE.format(question=item["question"].strip()),
                "source": "gsm8k",
                "scorer": "numeric",
                "max_tokens": GSM8K_MAX_TOKENS,
                "reference": gsm8k_reference(item["answer"]),
            }
        )
    return rows


def _called_names(node: ast.AST) -> list[str]:
    return [n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]


def mbpp_entry_point(asserts: list[ast.Assert]) -> str | None:
    """The one non-builtin function every assert calls (MBPP's tested function); failing
    that, the one function every assert calls (a task may shadow a builtin, e.g. ``sum``)."""
    for skip_builtins in (True, False):
        common: set[str] | None = None
        for statement in asserts:
            names = {n for n in _called_names(statement) if not (skip_builtins and n in _BUILTINS)}
            common = names if common is None else common & names
        if common and len(common) == 1:
            return next(iter(common))
    return None


def reference_solution(stub: str, function: ast.FunctionDef, body: str) -> str:
    """Stub + canonical body as one program. CodeT's bodies are indented with tabs or two
    spaces under a docstring indented with four, so the docstring lines are dropped."""
    docstring = function.body[0]
    lines = stub.splitlines(keepends=True)
    kept = lines[: docstring.lineno - 1] + lines[docstring.end_lineno :]
    return "".join(kept) + body


def mbpp_row(item: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(row, "") or (None, why the task is left out)."""
    number = item["task_id"].rsplit("/", 1)[-1]
    stub = ast.parse(item["prompt"])
    functions = [n for n in stub.body if isinstance(n, ast.FunctionDef)]
    task = ast.get_docstring(functions[-1]) if functions else None
    if not task:
        return None, "no task text"
    imports = [ast.get_source_segment(item["prompt"], n) for n in stub.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    test_tree = ast.parse(item["test"])
    checks = [n for n in test_tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return None, "tests without one check()"
    asserts = [n for n in checks[0].body if isinstance(n, ast.Assert)]
    if not asserts:
        return None, "no asserts"
    entry = mbpp_entry_point(asserts)
    if entry is None:
        return None, "no single tested function"
    if entry == "check":
        return None, "tested function is named check (clashes with the test harness)"
    assert_lines = [ast.get_source_segment(item["test"], a) for a in asserts]
    # Some asserts compare floats with math.isclose; CodeT's harness has math in scope.
    if any("math." in line for line in assert_lines) and "import math" not in imports:
        imports.append("import math")
    tests = "".join(f"{line}\n" for line in imports) + "\n\ndef check(candidate):\n" + "".join(f"    {a}\n" for a in assert_lines)
    task_text = " ".join(task.split())
    row = {
        "id": f"mbpp-{number}",
        "prompt": MBPP_TEMPLATE.format(task=task_text, example=assert_lines[0], entry=entry),
        "source": "mbpp",
        "scorer": "code_tests",
        "max_tokens": MBPP_MAX_TOKENS,
        "tests": tests,
        "entry_point": entry,
        # Kept for the reference check and for readers; not used by any stage.
        "canonical_solution": reference_solution(item["prompt"], functions[-1], item["canonical_solution"]),
    }
    return row, ""


def mbpp_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows, dropped = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        row, why = mbpp_row(item)
        if row is None:
            dropped[item["task_id"]] = why
        else:
            rows.append(row)
    return rows, dropped


def verify_mbpp(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Run every task's reference solution through the ``code_tests`` scorer; the ids that fail."""
    from concurrent.futures import ThreadPoolExecutor

    from training.records import PromptRecord
    from training.scorers import CodeTestScorer

    scorer = CodeTestScorer(timeout_s=20.0, max_workers=1)

    def one(row: dict[str, Any]) -> tuple[str, float]:
        record = PromptRecord.model_validate(row)
        answer = f"```python\n{row['canonical_solution']}\n```"
        return row["id"], scorer.score(record, [answer])[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, rows))
    return {rid: "reference solution fails its tests" for rid, score in results if score < 1.0}


def interleave(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Both lists merged in proportion: row i of a list of length L sits at (i + 0.5) / L."""
    keyed = [((i + 0.5) / len(a), 0, row) for i, row in enumerate(a)] + [((i + 0.5) / len(b), 1, row) for i, row in enumerate(b)]
    return [row for _, _, row in sorted(keyed, key=lambda t: (t[0], t[1]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gsm8k", type=Path, required=True, help="grade_school_math/data/train.jsonl")
    parser.add_argument("--mbpp", type=Path, required=True, help="mbpp_sanitized_for_code_generation.jsonl (CodeT)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gsm8k-count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip running the MBPP reference solutions")
    args = parser.parse_args(argv)

    math_rows = gsm8k_rows(args.gsm8k, args.gsm8k_count, args.seed)
    code_rows, dropped = mbpp_rows(args.mbpp)
    if not args.no_verify:
        failing = verify_mbpp(code_rows)
        dropped.update(failing)
        code_rows = [r for r in code_rows if r["id"] not in failing]
    rows = interleave(math_rows, code_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {args.out}: {len(math_rows)} gsm8k, {len(code_rows)} mbpp", file=sys.stderr)
    for task_id, why in sorted(dropped.items()):
        print(f"  left out {task_id}: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
