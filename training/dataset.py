"""Join prompts, samples and scores into what the trainers need."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.records import PromptRecord, SampleRecord, ScoreRecord


@dataclass
class MemberSamples:
    """The scored samples of one member for one prompt, in sample-index order."""

    texts: list[str] = field(default_factory=list)
    gt_scores: list[float] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)


@dataclass
class PromptData:
    prompt: PromptRecord
    members: dict[str, MemberSamples] = field(default_factory=dict)


def join(
    prompts: Sequence[PromptRecord], samples: Iterable[SampleRecord], scores: Iterable[ScoreRecord]
) -> dict[str, PromptData]:
    """Prompt id -> its samples with ground-truth scores. Samples without a score are
    left out; scores or samples of unknown prompts are errors."""
    data = {p.id: PromptData(prompt=p) for p in prompts}
    score_of = {}
    for score in scores:
        if score.prompt_id not in data:
            raise ValueError(f"score for unknown prompt {score.prompt_id!r}")
        score_of[score.key] = score.score
    grouped: dict[tuple[str, str], list[SampleRecord]] = defaultdict(list)
    for sample in samples:
        if sample.prompt_id not in data:
            raise ValueError(f"sample for unknown prompt {sample.prompt_id!r}")
        if sample.key in score_of:
            grouped[(sample.prompt_id, sample.member)].append(sample)
    for (prompt_id, member), records in grouped.items():
        records.sort(key=lambda r: r.sample_index)
        data[prompt_id].members[member] = MemberSamples(
            texts=[r.text for r in records],
            gt_scores=[score_of[r.key] for r in records],
            output_tokens=[r.output_tokens for r in records],
        )
    return data


def average_output_tokens(data: dict[str, PromptData], prompt_ids: Iterable[str]) -> dict[str, float]:
    """Mean output tokens per member over the given prompts (the paper's cost estimator)."""
    totals: dict[str, list[int]] = defaultdict(list)
    for prompt_id in prompt_ids:
        for member, samples in data[prompt_id].members.items():
            totals[member].extend(samples.output_tokens)
    return {member: float(np.mean(tokens)) for member, tokens in totals.items() if tokens}
