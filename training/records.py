"""The on-disk records every stage reads and writes (JSON Lines, one object a line).

``prompts.jsonl``  PromptRecord: what to ask, plus what a ground-truth scorer may need.
``samples.jsonl``  SampleRecord: one sampled answer of one member, keyed by
                   (prompt_id, member, sample_index), with usage and billed cost.
``scores.jsonl``   ScoreRecord: the ground-truth score of one sample, same key.

Stores are append-only: a stage that is killed and restarted reads what is there,
skips existing keys and appends the rest, so nothing is lost or duplicated. Reading
checks every row and reports the file and line number of a bad one.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class PromptRecord(BaseModel):
    """One prompt. Either ``prompt`` (a single user turn) or ``messages`` (a conversation
    as ``[{"role": "system"|"user"|"assistant", "content": "..."}]``)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    #: Source dataset or task, used to stratify the train/validation/test split.
    source: str = "default"
    #: For reference-based scorers: gold answer (exact/numeric match, BLEU, ROUGE).
    reference: str | None = None
    #: For the code scorer: test code run after the candidate (HumanEval ``check``).
    tests: str | None = None
    entry_point: str | None = None
    #: Output budget for this prompt's requests in ``generate`` (overrides the run's).
    max_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_form(self) -> PromptRecord:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        for i, m in enumerate(self.messages or []):
            if m.get("role") not in {"system", "user", "assistant"} or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] needs role system|user|assistant and string content")
        return self

    def chat_messages(self) -> list[Any]:
        """The prompt as LangChain messages."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        if self.prompt is not None:
            return [HumanMessage(self.prompt)]
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        return [kinds[m["role"]](m["content"]) for m in self.messages or []]


class SampleRecord(BaseModel):
    prompt_id: str
    member: str
    sample_index: int = Field(ge=0)
    text: str
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    #: Billed USD attributed to this sample (a native-n request's prompt cost is split evenly).
    cost_usd: float = Field(default=0.0, ge=0)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.prompt_id, self.member, self.sample_index)


class ScoreRecord(BaseModel):
    prompt_id: str
    member: str
    sample_index: int = Field(ge=0)
    score: float
    scorer: str = ""

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"score must be a finite number, got {value}")
        return value

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.prompt_id, self.member, self.sample_index)


Record = TypeVar("Record", bound=BaseModel)


class RecordError(ValueError):
    """A malformed row; the message names the file and the 1-based line number."""


def read_records(path: str | Path, record_type: type[Record]) -> Iterator[Record]:
    for _, record in read_numbered_records(path, record_type):
        yield record


def read_numbered_records(path: str | Path, record_type: type[Record]) -> Iterator[tuple[int, Record]]:
    """(1-based line number, record) for every non-blank line."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from exc
            try:
                yield line_number, record_type.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
                raise RecordError(f"{path}:{line_number}: invalid {record_type.__name__}: {problems}") from exc


class RecordStore(Generic[Record]):
    """Append-only JSONL store keyed by ``record.key``; safe to share between threads."""

    def __init__(self, path: str | Path, record_type: type[Record]) -> None:
        self.path = Path(path)
        self.record_type = record_type
        self._lock = threading.Lock()
        self._keys: set[Any] = set()
        if self.path.exists():
            self._repair_partial_last_line()
            for record in read_records(self.path, record_type):
                key = record.key  # type: ignore[attr-defined]
                if key in self._keys:
                    raise RecordError(f"{self.path}: duplicate key {key}")
                self._keys.add(key)

    def _repair_partial_last_line(self) -> None:
        """A run killed mid-write leaves a last line without newline: drop just that line,
        truncating in place (rewriting the file would risk all of it to another kill)."""
        from bestroute_lc.files import truncate_partial_last_line

        truncate_partial_last_line(self.path)

    def __contains__(self, key: Any) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def append(self, records: Iterable[Record]) -> int:
        """Append records whose key is new; returns how many were written."""
        written = 0
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                for record in records:
                    key = record.key  # type: ignore[attr-defined]
                    if key in self._keys:
                        continue
                    handle.write(record.model_dump_json() + "\n")
                    self._keys.add(key)
                    written += 1
                handle.flush()
        return written

    def __iter__(self) -> Iterator[Record]:
        if not self.path.exists():
            return iter(())
        return read_records(self.path, self.record_type)
