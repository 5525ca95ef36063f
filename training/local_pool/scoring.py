"""Ground truth for a mixed prompt set: each prompt scored by the scorer its row names.

``data/local_pool/prompts.jsonl`` mixes GSM8K (``"scorer": "numeric"``) and MBPP
(``"scorer": "code_tests"``) rows; :class:`training.scorers.PerPromptScorer` (config
``scorer: {kind: per_prompt}``) dispatches on the row's ``scorer`` field.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from training.records import PromptRecord, RecordStore, ScoreRecord
from training.scorers import PerPromptScorer


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
