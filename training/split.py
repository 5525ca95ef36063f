"""Train / validation / test split by prompt, stratified by ``source``.

Every source is split in the same proportions (shuffled with a fixed seed), so a small
source cannot end up only in training. A source with fewer prompts than splits puts
its prompts in training first. The split is recorded in artifact metadata.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.records import PromptRecord


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo'd key is an error, not a silent default
    train: float = Field(default=0.8, gt=0)
    validation: float = Field(default=0.1, ge=0)
    test: float = Field(default=0.1, ge=0)
    seed: int = 0
    #: Out-of-distribution check (paper Table 3): every prompt of these sources goes to the
    #: test split, so the router and reward model never see that source in training.
    holdout_sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.validation + self.test - 1.0) > 1e-9:
            raise ValueError("train + validation + test must sum to 1")
        return self


class Split(BaseModel):
    train: list[str]
    validation: list[str]
    test: list[str]
    config: SplitConfig

    def of(self, prompt_id: str) -> str:
        for name in ("train", "validation", "test"):
            if prompt_id in getattr(self, name):
                return name
        raise KeyError(prompt_id)

    def restricted(self, prompt_ids: set[str]) -> Split:
        """The same split over ``prompt_ids`` only (each prompt keeps its part)."""
        return self.model_copy(update={name: [p for p in getattr(self, name) if p in prompt_ids]
                                       for name in ("train", "validation", "test")})

    def fingerprint(self) -> str:
        text = "|".join(",".join(sorted(getattr(self, name))) for name in ("train", "validation", "test"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        return {
            "sizes": {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)},
            "seed": self.config.seed,
            "fractions": self.config.model_dump(exclude={"seed", "holdout_sources"}),
            "holdout_sources": list(self.config.holdout_sources),
            "fingerprint": self.fingerprint(),
        }


def stratified_split(prompts: Sequence[PromptRecord], config: SplitConfig | None = None) -> Split:
    config = config or SplitConfig()
    by_source: dict[str, list[str]] = defaultdict(list)
    for prompt in prompts:
        by_source[prompt.source].append(prompt.id)
    rng = random.Random(config.seed)
    train: list[str] = []
    validation: list[str] = []
    test: list[str] = []
    for source in sorted(by_source):
        ids = sorted(by_source[source])
        if source in config.holdout_sources:
            test.extend(ids)
            continue
        rng.shuffle(ids)
        n_validation = round(len(ids) * config.validation)
        n_test = round(len(ids) * config.test)
        if len(ids) - n_validation - n_test < 1:  # keep at least one training prompt per source
            n_test = max(0, len(ids) - 1 - n_validation)
        test.extend(ids[:n_test])
        validation.extend(ids[n_test : n_test + n_validation])
        train.extend(ids[n_test + n_validation :])
    return Split(train=train, validation=validation, test=test, config=config)
