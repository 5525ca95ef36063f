"""Ground truth for a mixed prompt set: each prompt scored by the scorer its row names.

``data/local_pool/prompts.jsonl`` mixes GSM8K (``"scorer": "numeric"``) and MBPP
(``"scorer": "code_tests"``) rows, while ``TrainConfig.scorer`` holds one scorer for every
prompt. :class:`PerPromptScorer` dispatches on the row's ``scorer`` field (else on its
``source`` through ``by_source``) to the project's own scorers (``training.scorers``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from training.records import PromptRecord, RecordStore, ScoreRecord
from training.scorers import GroundTruthScorer, build_scorer

DEFAULT_SPECS: dict[str, dict[str, Any]] = {
    "numeric": {"kind": "numeric"},
    "code_tests": {"kind": "code_tests", "timeout_s": 10.0},
}


class PerPromptScorer(GroundTruthScorer):
    """Scores a prompt with ``scorers[row.scorer]`` (or ``scorers[by_source[row.source]]``)."""

    name = "per_prompt"

    def __init__(self, specs: Mapping[str, Mapping[str, Any]] | None = None, by_source: Mapping[str, str] | None = None) -> None:
        self.scorers = {key: build_scorer(dict(spec)) for key, spec in (specs or DEFAULT_SPECS).items()}
        self.by_source = dict(by_source or {"gsm8k": "numeric", "mbpp": "code_tests"})

    def scorer_for(self, prompt: PromptRecord) -> GroundTruthScorer:
        key = (prompt.model_extra or {}).get("scorer") or self.by_source.get(prompt.source)
        if key not in self.scorers:
            raise ValueError(f"prompt {prompt.id!r}: no scorer for {key!r} (source {prompt.source!r}); known: {sorted(self.scorers)}")
        return self.scorers[key]

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        return self._checked(prompt, responses, self.scorer_for(prompt).score(prompt, responses))


def score_store(prompts: Sequence[PromptRecord], samples: Sequence[Any], store: RecordStore[ScoreRecord], scorer: PerPromptScorer) -> int:
    """Score every sample without a score in ``store`` (what ``stage_score`` does, with the
    per-prompt scorer); ``ScoreRecord.scorer`` records the scorer used. Returns rows written."""
    by_prompt: dict[str, list[Any]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample.prompt_id].append(sample)
    written = 0
    for prompt in prompts:
        pending = [s for s in by_prompt.get(prompt.id, []) if s.key not in store]
        if not pending:
            continue
        chosen = scorer.scorer_for(prompt)
        values = scorer.score(prompt, [s.text for s in pending])
        written += store.append(
            ScoreRecord(prompt_id=s.prompt_id, member=s.member, sample_index=s.sample_index, score=float(v), scorer=chosen.name)
            for s, v in zip(pending, values)
        )
    return written
