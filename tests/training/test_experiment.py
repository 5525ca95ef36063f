"""Train-and-evaluate on the real HumanEval table (skipped without ../shared/data), small and fast:
a tiny random encoder, one epoch, 40 problems. Checks the plumbing, not the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import tiny_encoder
from training.evaluation.experiment import load_table, run_seed
from training.evaluation.shared_data import default_data_dir
from training.loop import FitConfig
from training.split import SplitConfig

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "humaneval_routing").exists(), reason="shared routing data not available"
)


def test_humaneval_seed_produces_a_full_report(tmp_path: Path) -> None:
    table = load_table("humaneval")
    table = table.subset([p.id for p in table.eval_set.prompts[:40]])
    encoder, tokenizer = tiny_encoder()
    encoder.save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    fit = FitConfig(epochs=1, batch_size=16)
    report = run_seed(
        table, 0, backbone=tmp_path / "enc", split=SplitConfig(train=0.6, validation=0.2, test=0.2),
        reward_fit=fit, router_fit=fit, max_length=64,
    )
    assert {"BEST-Route", "BEST-Route (oracle picker)", "n-class", "n-label", "clustering", "oracle", "random"} <= set(report.curves)
    assert report.baseline.quality > 0.5  # gpt-4 passes most HumanEval problems
    # the oracle router (cheapest option that matches the reference per prompt) is at least as good
    # as BEST-Route at every cost reduction BEST-Route reaches
    table1 = report.table1()
    for reduction, drop in table1["BEST-Route"].items():
        if not np.isnan(drop):
            assert table1["oracle"][reduction] <= drop + 1e-9
    paths = report.save(tmp_path / "report")
    assert paths["markdown"].read_text().startswith("# BEST-Route evaluation")
