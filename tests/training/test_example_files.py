"""The example files the README points to stay valid."""

from __future__ import annotations

from pathlib import Path

from training.config import load_config
from training.generate import load_prompts
from training.records import SampleRecord, ScoreRecord, read_records

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "training"


def test_example_config_and_records_parse() -> None:
    config = load_config(EXAMPLES / "run.yaml")
    assert config.pool.reference == "gpt-4o" and config.max_n <= config.samples_per_member
    prompts = load_prompts(EXAMPLES / "prompts.jsonl")
    assert {p.source for p in prompts} == {"math", "code"}
    samples = list(read_records(EXAMPLES / "samples.jsonl", SampleRecord))
    scores = list(read_records(EXAMPLES / "scores.jsonl", ScoreRecord))
    assert {s.key for s in samples} == {s.key for s in scores}
