"""A reranker that runs code candidates against the examples visible in the prompt.

For a coding prompt such as a HumanEval problem, the docstring usually shows a few
input/output examples. :class:`CodeExecutionReranker` extracts them, runs every
candidate against every example in a sandboxed subprocess (:mod:`bestroute_lc.sandbox`),
and scores a candidate by how many examples it passes. A fallback reranker (typically
the learned reward model) breaks ties: ``score = passes + sigmoid(fallback score)``, the
second term in ``[0, 1)``, so more passed examples always win.

Recognised examples (precision over recall: a line that does not match exactly one of
these is ignored). ``f`` stands for a function defined in the prompt's code (when the
prompt has no parseable code: any name that is not a Python builtin); call arguments
and expected values must be Python literals, except in doctests and asserts, which
are code already:

* doctest: ``>>> expr`` (with ``...`` continuation lines) followed by its output
  line(s), compared by value, else by ``repr``, else with what ``expr`` printed.
  ``>>> f(x) == y`` with no output line counts as the example ``f(x)`` -> ``y``;
  ``>>> f(x)`` with no output expects ``None``; ``>>> x = ...`` statements are run
  before the later examples; examples whose output is a traceback are skipped.
* ``assert f(x) == y`` (compared like the others) and ``assert <boolean expression
  calling f>`` (must be truthy).
* one-line (or bracket-continued) call examples, optionally after a bullet (``*``,
  ``-``), ``for`` or ``Example:``: ``f(x) == y``, ``f(x) => y``, ``f(x) ==> y``,
  ``f(x) -> y``, ``f(x) ➞ y``, ``f(x) = y``, ``f(x) returns y``,
  ``f(x) should return y``, ``f(x) # => y``, ``f(x) # returns y``. A trailing
  period or a trailing comment or parenthetical after ``y`` is allowed.
* ``For a = 1, b = "x" the output should be y`` (also ``the result should be``) and
  ``Input: a = 1, b = 2`` / ``Output: y`` blocks (also ``name : value`` lines). The
  names are matched to the parameters of the prompt's last function: by name, else by
  position when the counts agree.

Candidates may be whole programs (chat models), possibly inside fenced code blocks
and surrounded by prose, or just the body of the prompt's function (completion
models, HumanEval style); see :func:`build_candidate_program`.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import keyword
import logging
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from bestroute_lc.isolation import IsolationUnavailableError, require_isolation
from bestroute_lc.rerankers.base import Reranker
from bestroute_lc.sandbox import (
    CodeChunk,
    ExpressionCheck,
    SandboxLimits,
    SandboxResult,
    run_in_sandbox,
)

__all__ = [
    "CodeExecutionReranker",
    "IsolationUnavailableError",
    "build_candidate_program",
    "extract_candidate_code",
    "extract_examples",
    "extract_prompt_code",
]

logger = logging.getLogger(__name__)

#: The tiebreak is kept strictly below 1 (with room to spare for float rounding) so
#: that ``passes + tiebreak`` never reaches ``passes + 1``.
_MAX_TIEBREAK = 1.0 - 1e-9

_PYTHON_FENCE_LANGUAGES = {"", "python", "py", "python3", "py3", "ipython", "pycon"}
_FENCE_RE = re.compile(r"```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)")
# The engine renders a conversation as "user: <text>" turns (bestroute_lc.conversation);
# a prompt's first code line (often an import) then starts after such a role prefix.
_ROLE_PREFIX_RE = re.compile(r"^(?:user|system|assistant|tool\[[^\]\n]*\]): ")
_NOT_EXAMPLE_NAMES = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {"print"}


# --------------------------------------------------------------------------------------
# Small parsing helpers
# --------------------------------------------------------------------------------------


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return None


def _literal_source(text: str) -> str | None:
    """``text`` stripped, if it is one Python literal (no trailing-comma tuples)."""
    text = text.strip()
    if not text or text.endswith(","):
        return None
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return text


def _literal_prefix(text: str, allowed_rest: str = "(#;,.") -> str | None:
    """The longest literal at the start of ``text`` (e.g. ``'No' (the name...)`` -> ``'No'``).

    What follows the literal must be empty or start with one of ``allowed_rest``, so
    that ``1 + 9 = 10`` is rejected rather than read as ``1``.
    """
    text = text.strip()
    whole = _literal_source(text.rstrip(" .;,")) or _literal_source(text)
    if whole is not None:
        return whole
    for end in range(len(text) - 1, 0, -1):
        rest = text[end:].lstrip()
        if not rest or rest[0] not in allowed_rest:
            continue
        literal = _literal_source(text[:end])
        if literal is not None:
            return literal
    return None


def _matching_bracket_end(text: str, open_index: int) -> int | None:
    """Index just past the bracket closing ``text[open_index]``; string-aware."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    i = open_index
    quote: str | None = None
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif char in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else char
            i += len(quote)
            continue
        elif char in pairs:
            stack.append(pairs[char])
        elif char in ")]}":
            if not stack or stack.pop() != char:
                return None
            if not stack:
                return i + 1
        i += 1
    return None


def _is_literal_call(call_source: str, allowed_names: frozenset[str] | None) -> bool:
    """``name(<literals>)`` with ``name`` allowed (``None``: any non-builtin name)."""
    try:
        node = ast.parse(call_source.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return False
    name = node.func.id
    if allowed_names is not None and name not in allowed_names:
        return False
    if allowed_names is None and name in _NOT_EXAMPLE_NAMES:
        return False
    try:
        for arg in [*node.args, *(kw.value for kw in node.keywords)]:
            if isinstance(arg, ast.Starred):
                return False
            ast.literal_eval(arg)
        return all(kw.arg is not None for kw in node.keywords)
    except (ValueError, SyntaxError, TypeError, RecursionError):
        return False


def _called_names(expression: str) -> set[str]:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        try:
            tree = ast.parse(expression)
        except SyntaxError:
            return set()
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _top_level_function_names(code: str) -> set[str]:
    tree = _parse(code)
    if tree is None:
        # Unparseable (e.g. a syntax error in a candidate): fall back to a textual scan.
        return set(re.findall(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", code, re.MULTILINE))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _normalise(source: str) -> str:
    try:
        return ast.unparse(ast.parse(source.strip(), mode="eval"))
    except SyntaxError:
        return " ".join(source.split())


# --------------------------------------------------------------------------------------
# Code in the prompt and in the candidates
# --------------------------------------------------------------------------------------


def _fenced_blocks(text: str) -> list[str]:
    """Contents of the Python (or unlabeled) fenced code blocks, in order; an unclosed
    final fence (a truncated answer) counts too."""
    blocks = []
    for match in _FENCE_RE.finditer(text):
        if match.group(1).lower() in _PYTHON_FENCE_LANGUAGES and match.group(2).strip():
            blocks.append(match.group(2))
    return blocks


def _without_role_prefix(line: str) -> str:
    """``line`` without a leading ``"user: "``-style prefix when code starts right after it
    (an annotated variable such as ``user: int = 1`` stays as it is)."""
    stripped = _ROLE_PREFIX_RE.sub("", line, count=1)
    return stripped if stripped is not line and _CODE_START_RE.match(stripped) else line


def _code_region(text: str, max_lines: int = 400) -> str | None:
    """The longest parseable stretch of ``text`` that starts at a top-level ``def``,
    ``class``, ``import`` or decorator line (code pasted between prose, no fences)."""
    lines = [_without_role_prefix(line) for line in text.splitlines()[:max_lines]]
    starts = [i for i, line in enumerate(lines) if _CODE_START_RE.match(line)]
    for start in starts[:5]:
        for end in range(len(lines), start, -1):
            chunk = "\n".join(lines[start:end]).rstrip() + "\n"
            if _parse(chunk) is not None:
                return chunk
    return None


def extract_prompt_code(prompt: str) -> str | None:
    """The Python code in a prompt (a HumanEval prompt, or a conversation that quotes it).

    Tried in order: the fenced code blocks that parse, the whole prompt if it parses,
    else the longest parseable stretch starting at a top-level ``def``/``import`` line.
    A role prefix such as ``"user: "`` (the rendered conversation the engine passes)
    does not hide the line it starts.
    """
    blocks = [b for b in _fenced_blocks(prompt) if _parse(b) is not None]
    if blocks:
        return "\n\n".join(blocks)
    if _parse(prompt) is not None and _top_level_function_names(prompt):
        return prompt
    return _code_region(prompt)


def _last_function(code: str | None) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    tree = _parse(code) if code else None
    if tree is None:
        return None
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return functions[-1] if functions else None


def _ends_with_function_stub(code: str | None) -> bool:
    """Does ``code`` end with a function whose body is only a docstring (or ``pass`` /
    ``...``), i.e. a signature the candidate is meant to continue?"""
    tree = _parse(code) if code else None
    if tree is None or not tree.body or not isinstance(tree.body[-1], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    for statement in tree.body[-1].body:
        if isinstance(statement, ast.Pass):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            if isinstance(statement.value.value, str) or statement.value.value is Ellipsis:
                continue
        return False
    return True


def _has_definitions(code: str) -> bool:
    tree = _parse(code)
    return tree is not None and any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
        for n in tree.body
    )


def extract_candidate_code(text: str, function_names: Iterable[str] = ()) -> str:
    """The code in one candidate answer.

    * Fenced code blocks: if some block defines one of ``function_names``, all blocks
      with definitions or imports (helpers may sit in their own block; blocks that only
      demonstrate usage are dropped); else the longest block.
    * No fences: the text itself if it parses, else the longest parseable stretch that
      starts at a top-level ``def``/``import`` line, else the text unchanged (a function
      body continuing the prompt does not parse on its own).
    """
    names = set(function_names)
    blocks = _fenced_blocks(text)
    if blocks:
        defining = [b for b in blocks if names & _top_level_function_names(b)]
        if defining:
            kept = [b for b in blocks if b in defining or _has_definitions(b)]
            return "\n\n".join(kept)
        return max(blocks, key=len)
    if _parse(text) is not None:
        return text
    return _code_region(text) or text


def _continue_function_stub(prompt_code: str, body: str) -> str:
    """``prompt_code`` (ending with a function stub) followed by ``body``: as given if
    that parses, else re-indented, else with trailing prose (unindented lines after
    the body) cut off. Returns the plain concatenation if nothing parses (a real
    syntax error then counts as zero passes)."""
    head = prompt_code.rstrip() + "\n"
    if not body.strip():
        body = "    pass\n"
    lines = body.splitlines()
    first_prose_line = next(
        (
            i
            for i, line in enumerate(lines)
            if i > 0 and line.strip() and not line[0].isspace() and not line.startswith("#")
        ),
        None,
    )
    without_prose = "\n".join(lines[:first_prose_line]) + "\n" if first_prose_line else None
    variants = []
    for text in (body, without_prose):
        if text is None:
            continue
        variants += [
            head + text,
            head + textwrap.indent(textwrap.dedent(text), "    "),
            head + "    " + text.lstrip(),  # the first line lost its indentation
        ]
    return next((v for v in variants if _parse(v) is not None), variants[0])


def build_candidate_program(prompt_code: str | None, candidate: str, function_names: Iterable[str]) -> list[CodeChunk]:
    """The code chunks to execute for one candidate.

    * If the candidate's code defines one of ``function_names``, it is a whole program:
      the prompt's code runs first as tolerated context (so helpers and imports the
      prompt provides exist, as they would in the file the prompt came from), then the
      candidate, whose definitions replace the prompt's.
    * Otherwise, if the prompt's code ends with a function stub, the candidate is read
      as that function's body (HumanEval completion style) and appended to the prompt's
      code; if the result does not parse, re-indented variants of the body are tried.
    * Otherwise the candidate's code runs on its own (and will most likely fail).
    """
    names = set(function_names)
    code = extract_candidate_code(candidate, names)
    defines_entry = bool(names & _top_level_function_names(textwrap.dedent(code)))
    if defines_entry:
        code = textwrap.dedent(code)
    if not defines_entry and _ends_with_function_stub(prompt_code):
        assert prompt_code is not None
        # A fenced body is the block; an unfenced one is the whole text (not the
        # ``def helper`` stretch that may follow the body, which extraction would pick).
        body = code if _fenced_blocks(candidate) else candidate
        return [CodeChunk(_continue_function_stub(prompt_code, body))]
    chunks = []
    if prompt_code:
        chunks.append(CodeChunk(prompt_code, required=False))
    chunks.append(CodeChunk(code))
    return chunks


# --------------------------------------------------------------------------------------
# Examples in the prompt
# --------------------------------------------------------------------------------------

_DOCTEST_PROMPT_RE = re.compile(r"^(\s*)>>> ?(.*)$")
_DOCTEST_CONTINUATION_RE = re.compile(r"^\s*\.\.\.(?: (.*)|)$")
_LINE_PREFIX_RE = re.compile(
    r"[ \t]*(?:[-*•][ \t]+)?(?:(?:for[ \t]+example|examples?|e\.g\.)[ \t]*[:,]?[ \t]*)?(?:for[ \t]+)?",
    re.IGNORECASE,
)
_CALL_START_RE = re.compile(r"([A-Za-z_]\w*)[ \t]*\(")
_SEPARATOR_RE = re.compile(
    r"[ \t]*(?:#[ \t]*)?(?:==>|=>|==|->|➞|→|⇒|=(?!=)|(?:(?:should|will|must)[ \t]+)?returns?\b|should[ \t]+be\b)[ \t]*",
    re.IGNORECASE,
)
_FOR_ASSIGNMENT_RE = re.compile(
    r"^[ \t]*(?:[-*•][ \t]+)?for[ \t]+(?P<inputs>.+?)[ \t]*,?[ \t]*(?:then[ \t]+)?(?:the[ \t]+)?"
    r"(?:output|result|answer|return[ \t]+value)[ \t]+(?:should[ \t]+be|will[ \t]+be|is)[ \t]+(?P<output>.+)$",
    re.IGNORECASE,
)
_ASSIGNMENT_RE = re.compile(r"\s*([A-Za-z_]\w*)\s*[=:]\s*")


def _doctest_examples(prompt: str) -> list[ExpressionCheck]:
    lines = prompt.splitlines()
    examples: list[ExpressionCheck] = []
    setup: list[str] = []
    i = 0
    while i < len(lines):
        match = _DOCTEST_PROMPT_RE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, source_lines = match.group(1), [match.group(2)]
        i += 1
        while i < len(lines) and (continuation := _DOCTEST_CONTINUATION_RE.match(lines[i])):
            source_lines.append(continuation.group(1) or "")
            i += 1
        output_lines = []
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if not stripped or _DOCTEST_PROMPT_RE.match(line) or stripped in ('"""', "'''"):
                break
            if len(line) - len(line.lstrip()) < len(indent):
                break  # dedented: prose after the example
            if stripped.endswith(('"""', "'''")):
                output_lines.append(line[len(indent) :].rstrip()[:-3])
                i += 1
                break
            output_lines.append(line[len(indent) :])
            i += 1
        source = "\n".join(source_lines).strip()
        output = "\n".join(output_lines).strip()
        if not source or output.startswith("Traceback (most recent call last)"):
            continue
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError:
            if _parse(source) is not None:
                setup.append(source)  # a statement (``x = ...``): context for later examples
            continue
        if not output:
            node = tree.body
            if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
                # ``>>> f(x) == y`` without an output line: the author meant an assertion.
                expression = ast.get_source_segment(source, node.left) or ast.unparse(node.left)
                output = ast.get_source_segment(source, node.comparators[0]) or ast.unparse(node.comparators[0])
                examples.append(ExpressionCheck(expression, output, "\n".join(setup)))
            else:
                examples.append(ExpressionCheck(source, "None", "\n".join(setup)))
            continue
        examples.append(ExpressionCheck(source, output, "\n".join(setup)))
    return examples


def _assert_examples(prompt: str, allowed_names: frozenset[str] | None) -> list[ExpressionCheck]:
    lines = prompt.splitlines()
    examples = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("assert "):
            continue
        statement = None
        for end in range(i + 1, min(i + 10, len(lines)) + 1):  # bracket-continued asserts
            candidate = textwrap.dedent("\n".join(lines[i:end]))
            tree = _parse(candidate)
            if tree is not None and len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
                statement = (candidate, tree.body[0])
                break
        if statement is None:
            continue
        source, node = statement
        called = _called_names(ast.unparse(node.test))
        relevant = called & allowed_names if allowed_names is not None else called - _NOT_EXAMPLE_NAMES
        if not relevant:
            continue  # e.g. ``assert len(xs) > 0`` inside the prompt's own code
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            left = ast.get_source_segment(source, test.left) or ast.unparse(test.left)
            right = ast.get_source_segment(source, test.comparators[0]) or ast.unparse(test.comparators[0])
            examples.append(ExpressionCheck(left, right))
        else:
            examples.append(ExpressionCheck(f"bool({ast.unparse(test)})", "True"))
    return examples


def _call_line_examples(prompt: str, allowed_names: frozenset[str] | None) -> list[ExpressionCheck]:
    examples = []
    line_start = 0
    while line_start < len(prompt):
        line_end = prompt.find("\n", line_start)
        line_end = len(prompt) if line_end < 0 else line_end
        example = _call_example_at(prompt, line_start, line_end, allowed_names)
        if example is not None:
            examples.append(example)
        line_start = line_end + 1
    return examples


def _call_example_at(
    text: str, line_start: int, line_end: int, allowed_names: frozenset[str] | None
) -> ExpressionCheck | None:
    """``f(<literals>) <separator> <literal>`` starting on the line at ``line_start``."""
    prefix = _LINE_PREFIX_RE.match(text, line_start, line_end)
    position = prefix.end() if prefix else line_start
    call = _CALL_START_RE.match(text, position, line_end)
    if call is None:
        return None
    call_end = _matching_bracket_end(text, call.end() - 1)
    if call_end is None or text.count("\n", call.end(), call_end) > 20:
        return None
    call_source = text[call.start() : call_end]
    if not _is_literal_call(call_source, allowed_names):
        return None
    rest_end = text.find("\n", call_end)
    rest_end = len(text) if rest_end < 0 else rest_end
    separator = _SEPARATOR_RE.match(text, call_end, rest_end)
    if separator is None:
        return None
    expected_text = text[separator.end() : rest_end]
    if expected_text[:1] in "([{":
        # An expected list/dict that continues on the next lines.
        bracket_end = _matching_bracket_end(text, separator.end())
        if bracket_end is not None and bracket_end > rest_end and text.count("\n", rest_end, bracket_end) <= 20:
            after = text.find("\n", bracket_end)
            expected_text = text[separator.end() : len(text) if after < 0 else after]
    expected = _literal_prefix(expected_text)
    if expected is None:
        return None
    return ExpressionCheck(" ".join(call_source.split()), expected)


def _parse_assignments(text: str) -> list[tuple[str, str]]:
    """``a = 1, b = "x"`` / ``grid : [[1]]`` -> ``[("a", "1"), ("b", '"x"')]``, stopping
    at the first thing that is not such an assignment."""
    assignments = []
    position = 0
    while True:
        match = _ASSIGNMENT_RE.match(text, position)
        if match is None:
            break
        rest = text[match.end() :]
        literal = None
        # The longest literal followed by a separator (comma, whitespace) or the end.
        for end in range(len(rest), 0, -1):
            if end < len(rest) and rest[end] not in ", \t\n;":
                continue
            literal = _literal_source(rest[:end])
            if literal is not None:
                break
        if literal is None:
            break
        assignments.append((match.group(1), literal))
        position = match.end() + rest.index(literal) + len(literal)
        separator = re.compile(r"\s*(?:,|;|\band\b)?\s*").match(text, position)
        position = separator.end() if separator else position
    return assignments


def _call_from_assignments(
    function: ast.FunctionDef | ast.AsyncFunctionDef | None, assignments: list[tuple[str, str]]
) -> str | None:
    """Turn named inputs into a positional call of ``function``: by parameter name when
    every required parameter is named, else by position when the counts agree."""
    if function is None or not assignments:
        return None
    parameters = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    required = parameters[: len(parameters) - len(function.args.defaults)]
    values = dict(assignments)
    if len(values) == len(assignments) and set(values) <= set(parameters) and set(required) <= set(values):
        ordered = [values[p] for p in parameters if p in values]
        if [p for p in parameters if p in values] == parameters[: len(ordered)]:
            return f"{function.name}({', '.join(ordered)})"
    if len(assignments) == len(parameters):
        return f"{function.name}({', '.join(v for _, v in assignments)})"
    return None


def _named_input_examples(
    prompt: str, function: ast.FunctionDef | ast.AsyncFunctionDef | None
) -> list[ExpressionCheck]:
    if function is None:
        return []
    examples = []
    lines = prompt.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        for_match = _FOR_ASSIGNMENT_RE.match(line)
        if for_match:
            call = _call_from_assignments(function, _parse_assignments(for_match.group("inputs")))
            expected = _literal_prefix(for_match.group("output"))
            if call and expected is not None:
                examples.append(ExpressionCheck(call, expected))
            continue
        if not stripped.lower().startswith("input:"):
            continue
        input_parts = [stripped[len("input:") :]]
        for j in range(i + 1, min(i + 10, len(lines))):
            following = lines[j].strip()
            if following.lower().startswith("output:"):
                output = following[len("output:") :].strip()
                if not output and j + 1 < len(lines):
                    output = lines[j + 1].strip()
                call = _call_from_assignments(
                    function, _parse_assignments(", ".join(p for p in input_parts if p.strip()))
                )
                expected = _literal_prefix(output)
                if call and expected is not None:
                    examples.append(ExpressionCheck(call, expected))
                break
            if following.lower().startswith("input:"):
                break
            input_parts.append(following)
    return examples


def extract_examples(prompt: str, *, max_examples: int = 32) -> list[ExpressionCheck]:
    """The input/output examples visible in ``prompt`` (see the module docstring for
    the recognised forms), de-duplicated, at most ``max_examples``."""
    prompt_code = extract_prompt_code(prompt)
    defined = _top_level_function_names(prompt_code) if prompt_code else set()
    if not defined:
        defined = set(re.findall(r"\bdef\s+([A-Za-z_]\w*)\s*\(", prompt))
    allowed_names = frozenset(defined) if defined else None
    found = [
        *_doctest_examples(prompt),
        *_assert_examples(prompt, allowed_names),
        *_call_line_examples(prompt, allowed_names),
        *_named_input_examples(prompt, _last_function(prompt_code)),
    ]
    unique: dict[tuple[str, str, str], ExpressionCheck] = {}
    for example in found:
        key = (_normalise(example.expression), _normalise(example.expected), example.setup)
        unique.setdefault(key, example)
    return list(unique.values())[:max_examples]


# --------------------------------------------------------------------------------------
# The reranker
# --------------------------------------------------------------------------------------


def _squash(raw: float) -> float:
    """Numerically stable sigmoid, kept in ``[0, _MAX_TIEBREAK]``; NaN -> 0."""
    if math.isnan(raw):
        return 0.0
    if raw >= 0:
        value = 1.0 / (1.0 + math.exp(-raw))
    else:
        exp_raw = math.exp(raw)
        value = exp_raw / (1.0 + exp_raw)
    return min(value, _MAX_TIEBREAK)


class CodeExecutionReranker(Reranker):
    """Scores code candidates by the number of prompt examples they pass when executed.

    ``score = passes + tiebreak``: ``passes`` is how many of the prompt's visible
    examples (see :func:`extract_examples`) the candidate passes in a sandboxed
    subprocess (one per candidate, run in parallel); ``tiebreak`` is the sigmoid of the
    ``tiebreaker``'s score, in ``[0, 1)``, or 0 without one (then ties go to the
    earliest candidate). When the prompt has no recognisable examples nothing is
    executed and the scores are the tiebreaker's own (all 0 without one).

    Args:
        tiebreaker: a reranker (typically the learned reward model) that orders
            candidates passing the same number of examples.
        timeout_s: wall-clock limit per candidate.
        max_workers: candidates executed at once (default: the CPU count, at most 8).
        limits: full sandbox limits; overrides ``timeout_s`` when given.
        max_examples: examples taken from a prompt at most.
        allow_unisolated: run candidates without the isolation layer when it is
            missing (a warning on every use) instead of raising
            :class:`~bestroute_lc.isolation.IsolationUnavailableError`. Never with
            untrusted prompts: see ``docs/security.md``.

    Candidates run in :func:`~bestroute_lc.sandbox.run_in_sandbox`: isolated, and judged
    here on the values they report, never by their own interpreter.
    """

    name = "code_execution"

    def __init__(
        self,
        tiebreaker: Reranker | None = None,
        *,
        timeout_s: float = 5.0,
        max_workers: int | None = None,
        limits: SandboxLimits | None = None,
        max_examples: int = 32,
        allow_unisolated: bool = False,
    ) -> None:
        self.tiebreaker = tiebreaker
        self.allow_unisolated = allow_unisolated
        self.limits = limits or SandboxLimits(timeout_s=timeout_s, check_timeout_s=min(2.0, timeout_s))
        self.max_workers = max_workers or min(8, os.cpu_count() or 1)
        self.max_examples = max_examples

    def execute(self, prompt: str, candidates: Sequence[str]) -> list[SandboxResult]:
        """Run every candidate against the prompt's examples; one result per candidate
        (``total == 0`` and nothing executed when the prompt has no examples)."""
        examples = extract_examples(prompt, max_examples=self.max_examples)
        if not examples or not candidates:
            return [SandboxResult(passed=0, total=0) for _ in candidates]
        prompt_code = extract_prompt_code(prompt)
        called = set().union(*(_called_names(e.expression) for e in examples))
        defined = _top_level_function_names(prompt_code) if prompt_code else set()
        # The functions a candidate must define to count as a whole program.
        entry_names = (called & defined) or called
        programs = [build_candidate_program(prompt_code, c, entry_names) for c in candidates]
        workers = max(1, min(self.max_workers, len(programs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-execution") as pool:
            results = list(pool.map(self._run_one, programs, [examples] * len(programs)))
        logger.debug("code_execution: %d examples, passes %s", len(examples), [r.passed for r in results])
        return results

    def check_ready(self) -> None:
        """Fail closed at start-up: :class:`~bestroute_lc.isolation.IsolationUnavailableError`
        unless the isolation layer works here or the caller opted out."""
        require_isolation(self.allow_unisolated, what="model-written code (code-execution reranker)")
        if self.tiebreaker is not None:
            self.tiebreaker.check_ready()

    def _run_one(self, program: list[CodeChunk], examples: list[ExpressionCheck]) -> SandboxResult:
        return run_in_sandbox(program, examples, limits=self.limits, allow_unisolated=self.allow_unisolated)

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        if not candidates:
            return []
        results = self.execute(prompt, candidates)
        has_examples = any(r.total for r in results)
        tiebreaker_scores = self.tiebreaker.score(prompt, candidates) if self.tiebreaker else None
        return self._combine(results, tiebreaker_scores, has_examples, len(candidates))

    async def ascore(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Executes the candidates and runs the tiebreaker's ``ascore`` concurrently."""
        if not candidates:
            return []
        execution = asyncio.to_thread(self.execute, prompt, candidates)
        if self.tiebreaker is None:
            results, tiebreaker_scores = await execution, None
        else:
            results, tiebreaker_scores = await asyncio.gather(execution, self.tiebreaker.ascore(prompt, candidates))
        has_examples = any(r.total for r in results)
        return self._combine(results, tiebreaker_scores, has_examples, len(candidates))

    @staticmethod
    def _combine(
        results: Sequence[SandboxResult],
        tiebreaker_scores: Sequence[float] | None,
        has_examples: bool,
        count: int,
    ) -> list[float]:
        if tiebreaker_scores is not None and len(tiebreaker_scores) != count:
            raise ValueError(f"tiebreaker returned {len(tiebreaker_scores)} scores for {count} candidates")
        if not has_examples:
            return [float(s) for s in tiebreaker_scores] if tiebreaker_scores is not None else [0.0] * count
        tiebreaks = [_squash(float(s)) for s in tiebreaker_scores] if tiebreaker_scores is not None else [0.0] * count
        return [float(r.passed) + t for r, t in zip(results, tiebreaks, strict=True)]
