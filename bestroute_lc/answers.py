"""Final answers in free text: what a math-style answer ends with.

One piece of code for both sides: ``training/scorers.py`` (the ``numeric`` ground-truth
scorer) and ``bestroute_lc/verifiers.py`` (``AgreementVerifier``: do the n samples agree
on the pick's final answer?).
"""

from __future__ import annotations

import math
import re

__all__ = ["extract_numeric_answer", "numbers_agree"]


_SIGNED_NUMBER = (
    r"(?<![\w./])(?P<sign>[-−–])?(?:\$\s?)?"  # sign only when not glued to a word (5-3 is 3)
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d.]*\d|\s*/))?"
)
_NUMBER_RE = re.compile(_SIGNED_NUMBER)
_ANSWER_PHRASE_RE = re.compile(r"\banswer\s*(?:is|:|=|would\s+be|will\s+be)\s*:?", re.IGNORECASE)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")


def _clean_latex(text: str) -> str:
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\$", "$")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    return text.replace("\\left", "").replace("\\right", "")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}``, braces matched."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append(text[start:i])
                break
    return found


def _numbers(text: str) -> list[float]:
    values = []
    for match in _NUMBER_RE.finditer(text):
        try:
            value = float(match.group("num").replace(",", ""))
            if match.group("den") is not None:
                denominator = float(match.group("den"))
                if denominator == 0:
                    continue
                value /= denominator
        except ValueError:
            continue
        values.append(-value if match.group("sign") else value)
    return values


def extract_numeric_answer(text: str) -> float | None:
    """The final numeric answer in free text, or ``None`` if there is no number.

    Looked for in order: after the last ``####`` (GSM8K), inside the last ``\\boxed{}``,
    after the last "answer is" / "answer:" phrase (same line), else the last number in
    the text. Numbers may have thousands commas (``1,234``), a sign, decimals, a ``$``
    prefix, or be simple fractions (``3/4``, ``\\frac{3}{4}``).
    """
    text = _clean_latex(text)
    if "####" in text:
        values = _numbers(text.rsplit("####", 1)[1])
        if values:
            return values[0]
    boxed = _boxed_contents(text)
    if boxed:
        values = _numbers(boxed[-1])
        if values:
            return values[0]
    phrases = list(_ANSWER_PHRASE_RE.finditer(text))
    if phrases:
        rest = text[phrases[-1].end() :].split("\n", 1)[0]
        values = _numbers(rest)
        if values:
            return values[0]
    values = _numbers(text)
    return values[-1] if values else None


def numbers_agree(a: float | None, b: float | None, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Two extracted answers are the same number (``math.isclose``); ``None`` agrees with nothing."""
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
