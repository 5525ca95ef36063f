"""Ground-truth scorers: how good is each sampled response to a prompt?

Every scorer implements :class:`GroundTruthScorer`::

    scores = scorer.score(prompt_record, ["response 1", "response 2", ...])
    # one finite float per response, higher is better

and has an async variant ``await scorer.ascore(...)`` (by default ``score`` run in a
worker thread). Scorers are stateless between calls and safe to call from several
threads. ``scorer.name`` is what the pipeline stores in ``ScoreRecord.scorer``.

===================  =====================================  ==========  ============================
scorer               needs in the PromptRecord              range       registry ``kind``
===================  =====================================  ==========  ============================
RewardModelScorer    ``prompt`` or ``messages``             real line   ``reward_model``
ExactMatchScorer     ``reference``                          {0, 1}      ``exact_match``
NumericAnswerScorer  ``reference`` (containing a number)    {0, 1}      ``numeric``
CodeTestScorer       ``tests`` (defining ``check``),        {0, 1}      ``code_tests``
                     ``entry_point`` (else inferred)
BleuScorer           ``reference``                          [0, 1]      ``bleu``
RougeScorer          ``reference``                          [0, 1]      ``rouge``
LLMJudgeScorer       ``prompt`` or ``messages``             [0, 1]      ``llm_judge``
===================  =====================================  ==========  ============================

Failure behaviour shared by all of them: a prompt without the field a scorer needs
raises :class:`ValueError` naming the prompt id and the field; a score that is not a
finite number (NaN, inf) raises :class:`ValueError` instead of being returned. What a
*response* does wrong (no number in it, code that crashes or hangs) is a low score,
never an exception; the exception to that rule is :class:`LLMJudgeScorer`, which raises
:class:`JudgeParseError` when the judge's verdict has no readable rating.

:func:`build_scorer` builds a scorer from a config dict, e.g. ``{"kind": "numeric"}``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import math
import os
import re
import string
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from bestroute_lc.answers import extract_numeric_answer
from training.records import PromptRecord

__all__ = [
    "DEFAULT_JUDGE_RUBRIC",
    "SCORER_KINDS",
    "BleuScorer",
    "CodeTestScorer",
    "ExactMatchScorer",
    "GroundTruthScorer",
    "JudgeParseError",
    "LLMJudgeScorer",
    "NumericAnswerScorer",
    "RewardModelScorer",
    "RougeScorer",
    "build_scorer",
    "extract_numeric_answer",
    "normalize_answer",
    "parse_judge_rating",
]


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------


class GroundTruthScorer(ABC):
    """Scores responses to one prompt: one finite float per response, higher is better."""

    #: Short identifier, stored in ``ScoreRecord.scorer``.
    name: str = "scorer"

    @abstractmethod
    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        """One finite score per response, in the order given (``[]`` for no responses)."""

    async def ascore(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        """Async variant; by default :meth:`score` run in a worker thread."""
        return await asyncio.to_thread(self.score, prompt, list(responses))

    # Helpers for implementations -------------------------------------------------------

    def _checked(self, prompt: PromptRecord, responses: Sequence[str], scores: Sequence[float]) -> list[float]:
        """``scores`` as floats, after checking there is one finite score per response."""
        if len(scores) != len(responses):
            raise ValueError(
                f"{self.name} scorer: {len(scores)} scores for {len(responses)} responses (prompt {prompt.id!r})"
            )
        out = [float(s) for s in scores]
        for index, value in enumerate(out):
            if not math.isfinite(value):
                raise ValueError(
                    f"{self.name} scorer: score {value} for response {index} of prompt {prompt.id!r} is not finite"
                )
        return out

    def _require(self, prompt: PromptRecord, field: str) -> str:
        """The prompt's ``field`` (``reference``, ``tests``...), or a ValueError naming both."""
        value = getattr(prompt, field, None)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{self.name} scorer needs {field!r} but prompt {prompt.id!r} has none")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _prompt_text(prompt: PromptRecord) -> str:
    """The prompt as one string: ``prompt``, or the conversation as ``role: content`` turns."""
    if prompt.prompt is not None:
        return prompt.prompt
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt.messages or [])


def _prompt_messages(prompt: PromptRecord) -> list[dict[str, str]]:
    """The prompt as chat-template messages (role/content only)."""
    if prompt.prompt is not None:
        return [{"role": "user", "content": prompt.prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt.messages or []]


def _last_user_text(prompt: PromptRecord) -> str:
    if prompt.prompt is not None:
        return prompt.prompt
    users = [m["content"] for m in prompt.messages or [] if m["role"] == "user"]
    return users[-1] if users else _prompt_text(prompt)


# --------------------------------------------------------------------------------------
# 1. Reward model
# --------------------------------------------------------------------------------------


class RewardModelScorer(GroundTruthScorer):
    """Scores with a Hugging Face sequence-classification reward model (one logit).

    Works with any ``AutoModelForSequenceClassification`` whose head has a single output
    (e.g. ``OpenAssistant/reward-model-deberta-v3-large-v2``), and with models whose
    output carries a ``score`` field (ArmoRM-style, ``trust_remote_code=True``).

    Input format: if the tokenizer has a chat template, the conversation (the prompt's
    ``messages``, or ``prompt`` as one user turn) plus the response as the assistant turn
    is rendered with it; if a rendered sequence is longer than ``max_length`` its *start*
    is dropped, so the response is kept. Without a chat template the model gets the
    text pair ``(prompt, response)`` (a conversation rendered as ``role: content``
    turns), truncated longest-first to ``max_length`` tokens.

    Args:
        model: a path to a **local** directory holding the model and its tokenizer, or a
            ``(model, tokenizer)`` pair already loaded. Hub names are refused with a
            ValueError (nothing is downloaded; fetch the model first and pass its path).
        batch_size: sequences per forward pass (sorted by length to limit padding).
            A tokenizer without a pad token runs one sequence at a time.
        device: ``"cuda"``, ``"cpu"``, ...; default: CUDA when available, else CPU.
        max_length: token limit per sequence; default: the smaller of the tokenizer's
            ``model_max_length`` and the model's ``max_position_embeddings`` (else 4096).
        dtype: optional torch dtype used when loading from a path (e.g. ``torch.bfloat16``).
        trust_remote_code: passed to ``from_pretrained`` (needed by ArmoRM-style models).

    Expects ``prompt`` or ``messages``. Range: the model's raw reward (any real number).
    Fails with ValueError for a missing directory, a model with more than one output,
    or a non-finite reward.
    """

    name = "reward_model"

    def __init__(
        self,
        model: str | os.PathLike[str] | tuple[Any, Any],
        batch_size: int = 16,
        device: str | None = None,
        max_length: int | None = None,
        *,
        dtype: Any = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, (str, os.PathLike)):
            self.model, self.tokenizer = self._load(Path(model), dtype=dtype, trust_remote_code=trust_remote_code)
        elif isinstance(model, tuple) and len(model) == 2:
            self.model, self.tokenizer = model
        else:
            raise TypeError("model must be a local directory path or a (model, tokenizer) pair")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length or self._default_max_length()
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        num_labels = getattr(self.model.config, "num_labels", 1)
        if num_labels != 1 and not trust_remote_code:
            raise ValueError(f"a reward model needs exactly one output logit, this one has num_labels={num_labels}")
        # Decoder models (Llama & co.) find the last token through config.pad_token_id.
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is not None and getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = pad_id

    @staticmethod
    def _load(path: Path, *, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not path.is_dir():
            raise ValueError(
                f"reward model {str(path)!r} is not a local directory; models are never downloaded here: "
                "download it first (e.g. `huggingface-cli download <name> --local-dir <dir>`) and pass the directory"
            )
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        return model, tokenizer

    def _default_max_length(self) -> int:
        limits = [getattr(self.tokenizer, "model_max_length", None), getattr(self.model.config, "max_position_embeddings", None)]
        usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
        return min(usable) if usable else 4096

    def _encode(self, prompt: PromptRecord, responses: Sequence[str]) -> list[dict[str, list[int]]]:
        tok = self.tokenizer
        if self.use_chat_template:
            history = _prompt_messages(prompt)
            texts = [
                tok.apply_chat_template([*history, {"role": "assistant", "content": r}], tokenize=False) for r in responses
            ]
            encoded = tok(texts, add_special_tokens=False)
            features = []
            for i in range(len(texts)):
                row = {k: list(v[i]) for k, v in encoded.items()}
                if len(row["input_ids"]) > self.max_length:  # keep the end: the response
                    row = {k: v[-self.max_length :] for k, v in row.items()}
                features.append(row)
            return features
        text = _prompt_text(prompt)
        encoded = tok([text] * len(responses), list(responses), truncation="longest_first", max_length=self.max_length)
        return [{k: list(v[i]) for k, v in encoded.items()} for i in range(len(responses))]

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        import torch

        if not responses:
            return []
        features = self._encode(prompt, responses)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        step = self.batch_size if getattr(self.tokenizer, "pad_token_id", None) is not None else 1
        scores: list[float] = [0.0] * len(features)
        with torch.inference_mode():
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                batch = self.tokenizer.pad([features[i] for i in chunk], return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                output = self.model(**batch)
                values = self._rewards(output)
                for i, value in zip(chunk, values, strict=True):
                    scores[i] = value
        return self._checked(prompt, responses, scores)

    @staticmethod
    def _rewards(output: Any) -> list[float]:
        score = getattr(output, "score", None)  # ArmoRM-style custom heads
        values = score if score is not None else output.logits
        if values.dim() == 2:
            if values.shape[-1] != 1:
                raise ValueError(f"a reward model needs one output logit per sequence, got {values.shape[-1]}")
            values = values[:, 0]
        return [float(v) for v in values.float().cpu()]


# --------------------------------------------------------------------------------------
# 2. Exact and numeric match
# --------------------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = set(string.punctuation) | {"“", "”", "‘", "’", "«", "»", "…", "–", "—"}


def normalize_answer(text: str) -> str:
    """Normalisation used by :class:`ExactMatchScorer`: NFKC, case-folded, punctuation
    dropped unless it sits between two letters/digits (``3.5`` and ``don't`` survive,
    ``"Paris."`` becomes ``paris``), English articles removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = []
    for i, char in enumerate(text):
        if char in _PUNCTUATION:
            inner = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            kept.append(char if inner else " ")
        else:
            kept.append(char)
    return " ".join(word for word in "".join(kept).split() if word not in _ARTICLES)


class ExactMatchScorer(GroundTruthScorer):
    """1.0 if the response equals ``prompt.reference``, else 0.0.

    With ``normalize=True`` both sides go through :func:`normalize_answer` first; with
    ``normalize=False`` only surrounding whitespace is ignored. Expects ``reference``
    (ValueError naming the prompt id if missing). Range: {0, 1}.
    """

    name = "exact_match"

    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize

    def _canonical(self, text: str) -> str:
        return normalize_answer(text) if self.normalize else text.strip()

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        reference = self._canonical(self._require(prompt, "reference"))
        return self._checked(prompt, responses, [float(self._canonical(r) == reference) for r in responses])


class NumericAnswerScorer(GroundTruthScorer):
    """1.0 if the final number in the response equals the reference's, else 0.0.

    Both sides go through :func:`extract_numeric_answer` (so a reference may be a bare
    ``"42"`` or a whole GSM8K solution ending in ``#### 42``) and are compared with
    ``math.isclose(rel_tol, abs_tol)``. Expects ``reference`` containing a number
    (ValueError naming the prompt id otherwise). A response without a number scores 0.
    Range: {0, 1}.
    """

    name = "numeric"

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> None:
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        reference_text = self._require(prompt, "reference")
        gold = extract_numeric_answer(reference_text)
        if gold is None:
            raise ValueError(f"{self.name} scorer: the reference of prompt {prompt.id!r} has no number: {reference_text!r}")
        scores = []
        for response in responses:
            answer = extract_numeric_answer(response)
            ok = answer is not None and math.isclose(answer, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
            scores.append(float(ok))
        return self._checked(prompt, responses, scores)


# --------------------------------------------------------------------------------------
# 3. Code tests (HumanEval style)
# --------------------------------------------------------------------------------------


class CodeTestScorer(GroundTruthScorer):
    """1.0 if the response's code passes the prompt's tests, else 0.0 (HumanEval pass@1).

    The candidate's program is built with
    :func:`bestroute_lc.rerankers.code_execution.build_candidate_program`: a response that
    defines ``entry_point`` (a whole program, possibly in fenced blocks between prose)
    runs after the prompt's code; otherwise it is read as the body of the function stub
    the prompt ends with (completion style). The tests (``prompt.tests``, which define
    ``check(candidate)``, or bare ``assert`` lines calling ``entry_point``) then run with
    :func:`bestroute_lc.sandbox.run_tests_in_sandbox`: in a sandbox of their own, next to
    the candidate's sandbox, calling it through proxies that pass only plain values, so
    the candidate's code cannot patch what the tests use nor forge their verdict. Both
    sandboxes are isolated (no network, no host files, unprivileged, resource limits).
    Responses run in parallel.

    Args:
        timeout_s: wall-clock limit for one response's whole run (start-up, definitions
            and tests).
        max_workers: responses executed at once (default: CPU count, at most 8).
        memory_bytes: address-space limit of each child (default 2 GiB).
        allow_unisolated: run without the isolation layer when it is missing (a
            warning on every use) instead of raising ``IsolationUnavailableError``.

    Expects ``tests`` (ValueError naming the prompt id if missing) and ``entry_point``
    (if missing: the last function defined in the prompt's code, else ValueError); the
    prompt's code comes from ``prompt`` (or the last user message). Range: {0, 1}; a
    syntax error, an exception, a failed assertion, a timeout or a crash is 0.0.
    """

    name = "code_tests"

    def __init__(
        self,
        timeout_s: float = 10.0,
        *,
        max_workers: int | None = None,
        memory_bytes: int | None = 2 << 30,
        allow_unisolated: bool = False,
    ) -> None:
        from bestroute_lc.sandbox import SandboxLimits

        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.max_workers = max_workers or min(8, os.cpu_count() or 1)
        self.allow_unisolated = allow_unisolated
        self.limits = SandboxLimits(timeout_s=self.timeout_s, check_timeout_s=self.timeout_s, memory_bytes=memory_bytes)

    def _entry_point(self, prompt: PromptRecord, prompt_code: str | None) -> str:
        if prompt.entry_point:
            return prompt.entry_point
        try:
            tree = ast.parse(prompt_code) if prompt_code else None
        except SyntaxError:
            tree = None
        functions = [n.name for n in (tree.body if tree else []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not functions:
            raise ValueError(
                f"{self.name} scorer needs 'entry_point' but prompt {prompt.id!r} has none "
                "and its prompt defines no function to infer it from"
            )
        return functions[-1]

    @staticmethod
    def _test_code(tests: str, entry: str) -> str:
        """HumanEval tests define ``check(candidate)``, which is then called; MBPP-style
        tests are bare asserts calling the function by name, which run as they are."""
        try:
            tree = ast.parse(tests)
        except SyntaxError:
            return tests  # fails in the test process, with the error recorded
        defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
        return f"{tests}\n\ncheck({entry})\n" if defines_check else tests

    def run(self, prompt: PromptRecord, responses: Sequence[str]) -> list[Any]:
        """The :class:`~bestroute_lc.sandbox.TestRunResult` of every response (for debugging)."""
        from bestroute_lc.rerankers.code_execution import (
            build_candidate_program,
            extract_prompt_code,
        )
        from bestroute_lc.sandbox import run_tests_in_sandbox

        tests = self._require(prompt, "tests")
        prompt_code = extract_prompt_code(_last_user_text(prompt))
        entry = self._entry_point(prompt, prompt_code)
        if not entry.isidentifier():
            raise ValueError(f"{self.name} scorer: entry_point {entry!r} of prompt {prompt.id!r} is not an identifier")
        test_code = self._test_code(tests, entry)

        def run_one(response: str) -> Any:
            program = build_candidate_program(prompt_code, response, [entry])
            return run_tests_in_sandbox(
                program,
                test_code,
                [entry],
                test_context=prompt_code or (),
                limits=self.limits,
                allow_unisolated=self.allow_unisolated,
            )

        if not responses:
            return []
        workers = max(1, min(self.max_workers, len(responses)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-tests") as pool:
            return list(pool.map(run_one, responses))

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        results = self.run(prompt, responses)
        scores = [float(r.passed and not r.timed_out) for r in results]
        return self._checked(prompt, responses, scores)


# --------------------------------------------------------------------------------------
# 4. BLEU and ROUGE
# --------------------------------------------------------------------------------------


class BleuScorer(GroundTruthScorer):
    """sacrebleu sentence BLEU of the response against ``prompt.reference``, divided by 100.

    Uses sacrebleu's defaults (``13a`` tokenisation) with ``effective_order=True``, the
    recommended setting for single sentences (n-gram orders longer than the response do
    not zero the score). Expects ``reference`` (ValueError naming the prompt id if
    missing). Range: [0, 1]; an empty response scores 0.
    """

    name = "bleu"

    def __init__(self, tokenize: str | None = None, lowercase: bool = False) -> None:
        from sacrebleu.metrics import BLEU

        kwargs: dict[str, Any] = {"effective_order": True, "lowercase": lowercase}
        if tokenize is not None:
            kwargs["tokenize"] = tokenize
        self._bleu = BLEU(**kwargs)

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        reference = self._require(prompt, "reference")
        scores = [min(1.0, max(0.0, self._bleu.sentence_score(r, [reference]).score / 100.0)) for r in responses]
        return self._checked(prompt, responses, scores)


_ROUGE_KIND_RE = re.compile(r"^rouge(?:[1-9]|L|Lsum)$")


class RougeScorer(GroundTruthScorer):
    """ROUGE F1 (``rouge-score`` package, Porter stemming) against ``prompt.reference``.

    ``kind`` is ``rouge1`` ... ``rouge9``, ``rougeL`` or ``rougeLsum`` (summary-level LCS,
    sentences split at newlines). Note that ``rouge-score``'s tokenizer keeps only
    ASCII letters and digits, so it is meant for English text. Expects ``reference``
    (ValueError naming the prompt id if missing). Range: [0, 1].
    """

    def __init__(self, kind: str = "rougeL", use_stemmer: bool = True) -> None:
        from rouge_score import rouge_scorer

        if not _ROUGE_KIND_RE.match(kind):
            raise ValueError(f"unknown ROUGE kind {kind!r}; use rouge1..rouge9, rougeL or rougeLsum")
        self.kind = kind
        self.name = kind
        self._scorer = rouge_scorer.RougeScorer([kind], use_stemmer=use_stemmer)

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        reference = self._require(prompt, "reference")
        scores = [self._scorer.score(reference, r)[self.kind].fmeasure for r in responses]
        return self._checked(prompt, responses, scores)


# --------------------------------------------------------------------------------------
# 5. LLM judge
# --------------------------------------------------------------------------------------

#: The grading criteria used when no ``rubric`` is given.
DEFAULT_JUDGE_RUBRIC = (
    "Judge how well the response serves the user: correctness and factual accuracy first, then how "
    "completely and directly it follows the instructions, then helpfulness, relevance, depth and clarity. "
    "Penalise mistakes, made-up facts, ignored instructions, unsafe content and needless verbosity. "
    "Do not let the length of the response or the order of your reasoning influence the rating."
)

_JUDGE_SYSTEM = (
    "You are an impartial judge. You are shown a conversation with an AI assistant and the assistant's "
    "final response, and you rate the quality of that response.\n\n"
    "Grading criteria:\n{rubric}\n\n"
    "First explain your judgement in a few sentences. Then, on the last line, give your rating as a "
    "number from {low} (worst) to {high} (best) in exactly this format: Rating: [[N]]"
)

_JUDGE_USER = (
    "[Conversation]\n{conversation}\n[End of conversation]\n\n"
    "[Response to rate]\n{response}\n[End of response]"
)

_NUM = r"[-+]?\d+(?:\.\d+)?"
_JUDGE_PATTERNS = (
    re.compile(rf"\[\[\s*({_NUM})\s*(?:/\s*\d+(?:\.\d+)?\s*)?\]\]"),  # [[7]], [[7/10]]
    re.compile(rf"(?:rating|score|grade|verdict)\**\s*(?:is|of|=|:)?\s*\**\s*\[?\s*({_NUM})\b", re.IGNORECASE),
    re.compile(rf"({_NUM})\s*(?:/|out\s+of)\s*{{high}}\b", re.IGNORECASE),  # 7/10, 7 out of 10
)


class JudgeParseError(ValueError):
    """The judge's verdict contains no rating on the scale."""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_judge_rating(verdict: str, scale: tuple[float, float] = (1, 10)) -> float | None:
    """The rating in a judge's verdict, or ``None`` if there is none on the scale.

    Accepted, most specific first (the last occurrence of the first kind found wins):
    ``[[7]]``; ``Rating: 7`` / ``Score: 7`` / ``rating is 7``; ``7/10`` / ``7 out of 10``
    (denominator = top of the scale); a reply that is just a number.
    """
    low, high = scale
    patterns = [p if "{high}" not in p.pattern else re.compile(p.pattern.replace("{high}", re.escape(_fmt(high))), p.flags) for p in _JUDGE_PATTERNS]
    text = verdict.replace("*", "")
    candidates = [m.group(1) for p in patterns for m in [*p.finditer(text)][-1:]]
    stripped = text.strip().rstrip(".")
    if re.fullmatch(_NUM, stripped):
        candidates.append(stripped)
    for candidate in candidates:
        value = float(candidate)
        if low <= value <= high:
            return value
    return None


def _reply_text(reply: Any) -> str:
    """The text of a chat model's reply (string content or a list of content blocks)."""
    content = getattr(reply, "content", reply)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [b if isinstance(b, str) else b.get("text", "") for b in content if isinstance(b, (str, dict))]
        return "".join(p for p in parts if isinstance(p, str))
    return str(content)


class LLMJudgeScorer(GroundTruthScorer):
    """Asks a LangChain chat model to rate each response; the rating normalised to [0, 1].

    Each response gets its own request: a system message with the grading instructions
    (``rubric``, default :data:`DEFAULT_JUDGE_RUBRIC`, embedded in a fixed frame asking for
    ``Rating: [[N]]`` on the scale) and a user message with the conversation (``prompt``
    or ``messages`` as ``role: content`` turns) and the response. Requests run with
    ``max_concurrency`` at a time (``batch`` / ``abatch``). The verdict is parsed by
    :func:`parse_judge_rating` and mapped to ``(rating - low) / (high - low)``.

    Expects ``prompt`` or ``messages``. Range: [0, 1]. An unreadable verdict, or a rating
    outside the scale, raises :class:`JudgeParseError` naming the prompt id and response
    index (no silent default); errors of the chat model propagate.
    """

    name = "llm_judge"

    def __init__(
        self,
        chat_model: Any,
        rubric: str | None = None,
        scale: tuple[float, float] = (1, 10),
        max_concurrency: int = 4,
    ) -> None:
        low, high = scale
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"scale must be (low, high) with low < high, got {scale}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.chat_model = chat_model
        self.rubric = rubric if rubric is not None else DEFAULT_JUDGE_RUBRIC
        self.scale = (low, high)
        self.max_concurrency = max_concurrency

    def messages(self, prompt: PromptRecord, response: str) -> list[Any]:
        """The judge request for one response."""
        from langchain_core.messages import HumanMessage, SystemMessage

        low, high = self.scale
        system = _JUDGE_SYSTEM.format(rubric=self.rubric, low=_fmt(low), high=_fmt(high))
        user = _JUDGE_USER.format(conversation=_prompt_text(prompt), response=response)
        return [SystemMessage(system), HumanMessage(user)]

    def _normalise(self, prompt: PromptRecord, replies: Sequence[Any], responses: Sequence[str]) -> list[float]:
        low, high = self.scale
        scores = []
        for index, reply in enumerate(replies):
            verdict = _reply_text(reply)
            rating = parse_judge_rating(verdict, self.scale)
            if rating is None:
                excerpt = verdict.strip().replace("\n", " ")[-200:]
                raise JudgeParseError(
                    f"llm_judge: no rating from {_fmt(low)} to {_fmt(high)} in the verdict on response {index} "
                    f"of prompt {prompt.id!r}: {excerpt!r}"
                )
            scores.append((rating - low) / (high - low))
        return self._checked(prompt, responses, scores)

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        if not responses:
            return []
        requests = [self.messages(prompt, r) for r in responses]
        replies = self.chat_model.batch(requests, config={"max_concurrency": self.max_concurrency})
        return self._normalise(prompt, replies, responses)

    async def ascore(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        if not responses:
            return []
        requests = [self.messages(prompt, r) for r in responses]
        replies = await self.chat_model.abatch(requests, config={"max_concurrency": self.max_concurrency})
        return self._normalise(prompt, replies, responses)


# --------------------------------------------------------------------------------------
# 6. Registry
# --------------------------------------------------------------------------------------


def _reward_model(spec: dict[str, Any], judge: Any) -> GroundTruthScorer:
    return RewardModelScorer(spec.pop("path", None) or spec.pop("model"), **spec)


def _rouge(spec: dict[str, Any], judge: Any) -> GroundTruthScorer:
    if "variant" in spec:  # "kind" already names the scorer kind in a spec
        spec["kind"] = spec.pop("variant")
    return RougeScorer(**spec)


def _llm_judge(spec: dict[str, Any], judge: Any) -> GroundTruthScorer:
    if judge is None:
        raise ValueError("the 'llm_judge' scorer needs the judge chat model: build_scorer(spec, judge=chat_model)")
    if "scale" in spec:
        spec["scale"] = tuple(spec["scale"])
    return LLMJudgeScorer(judge, **spec)


class PerPromptScorer(GroundTruthScorer):
    """A mixed prompt set: each prompt scored by the scorer its row names.

    The row's extra field ``scorer`` (e.g. ``"numeric"``) picks one of ``specs`` (scorer
    specs by key, default ``numeric`` and ``code_tests``); a row without it uses
    ``by_source[row.source]``. Config: ``scorer: {kind: per_prompt, specs: {...},
    by_source: {gsm8k: numeric, mbpp: code_tests}}``.
    """

    name = "per_prompt"
    DEFAULT_SPECS: ClassVar[dict[str, dict[str, Any]]] = {"numeric": {"kind": "numeric"}, "code_tests": {"kind": "code_tests", "timeout_s": 10.0}}

    def __init__(self, specs: dict[str, dict[str, Any]] | None = None, by_source: dict[str, str] | None = None, *, judge: Any = None) -> None:
        specs = dict(specs or self.DEFAULT_SPECS)
        nested = [key for key, spec in specs.items() if isinstance(spec, dict) and spec.get("kind") == "per_prompt"]
        if nested:
            raise ValueError(f"per_prompt scorer: specs {nested} are per_prompt themselves")
        self.scorers = {key: build_scorer(dict(spec), judge=judge) for key, spec in specs.items()}
        self.by_source = dict(by_source or {})
        unknown = sorted(set(self.by_source.values()) - set(self.scorers))
        if unknown:
            raise ValueError(f"per_prompt scorer: by_source names unknown scorer(s) {unknown}; specs: {sorted(self.scorers)}")

    def scorer_for(self, prompt: PromptRecord) -> GroundTruthScorer:
        key = (prompt.model_extra or {}).get("scorer") or self.by_source.get(prompt.source)
        if key not in self.scorers:
            raise ValueError(
                f"prompt {prompt.id!r}: no scorer for {key!r} (source {prompt.source!r}); known: {sorted(self.scorers)}"
            )
        return self.scorers[key]

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        return self._checked(prompt, responses, self.scorer_for(prompt).score(prompt, responses))


#: kind -> (factory(spec without "kind", judge), accepted spec keys).
SCORER_KINDS: dict[str, tuple[Callable[[dict[str, Any], Any], GroundTruthScorer], frozenset[str]]] = {
    "reward_model": (_reward_model, frozenset({"path", "model", "batch_size", "device", "max_length", "dtype", "trust_remote_code"})),
    "exact_match": (lambda s, j: ExactMatchScorer(**s), frozenset(inspect.signature(ExactMatchScorer).parameters)),
    "numeric": (lambda s, j: NumericAnswerScorer(**s), frozenset(inspect.signature(NumericAnswerScorer).parameters)),
    "code_tests": (lambda s, j: CodeTestScorer(**s), frozenset(inspect.signature(CodeTestScorer).parameters)),
    "bleu": (lambda s, j: BleuScorer(**s), frozenset(inspect.signature(BleuScorer).parameters)),
    "rouge": (_rouge, frozenset({"variant", "use_stemmer"})),
    "llm_judge": (_llm_judge, frozenset({"rubric", "scale", "max_concurrency"})),
    "per_prompt": (lambda s, j: PerPromptScorer(**s, judge=j), frozenset({"specs", "by_source"})),
}


def build_scorer(spec: dict[str, Any], *, judge: Any = None) -> GroundTruthScorer:
    """A scorer from a config dict: ``{"kind": <kind>, **options}``.

    Kinds and options: ``reward_model`` (``path``, ``batch_size``, ``device``,
    ``max_length``, ``dtype``, ``trust_remote_code``); ``exact_match`` (``normalize``);
    ``numeric`` (``rel_tol``, ``abs_tol``); ``code_tests`` (``timeout_s``, ``max_workers``,
    ``memory_bytes``, ``allow_unisolated``); ``bleu`` (``tokenize``, ``lowercase``); ``rouge`` (``variant``, e.g.
    ``"rougeL"``, ``use_stemmer``); ``llm_judge`` (``rubric``, ``scale``,
    ``max_concurrency``; the chat model is passed as ``judge=``); ``per_prompt`` (``specs``,
    ``by_source``: each prompt scored by the scorer its row's ``scorer`` field names).
    Unknown kinds or options raise ValueError listing what is accepted.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a scorer spec is a dict with a 'kind' (one of {sorted(SCORER_KINDS)}), got {spec!r}")
    options = dict(spec)
    kind = options.pop("kind")
    if kind not in SCORER_KINDS:
        raise ValueError(f"unknown scorer kind {kind!r}; known kinds: {', '.join(sorted(SCORER_KINDS))}")
    factory, accepted = SCORER_KINDS[kind]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for scorer kind {kind!r}; accepted: {sorted(accepted)}")
    if kind == "reward_model" and not (options.get("path") or options.get("model")):
        raise ValueError("the 'reward_model' scorer needs 'path': a local directory holding the model")
    return factory(options, judge)
