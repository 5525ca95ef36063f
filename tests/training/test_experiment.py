"""Train-and-evaluate on the real HumanEval table (skipped without ../shared/data), small and fast:
a tiny random encoder (frozen), a few problems, visible-example results from a stand-in runner.
Checks the plumbing, not the numbers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import tiny_encoder
from training import cli
from training.evaluation import shared_data
from training.evaluation.experiment import (
    Settings,
    attach_execution,
    cross_validate,
    kfold,
    load_table,
    train_test,
    write_outputs,
)
from training.evaluation.shared_data import default_data_dir

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "humaneval_routing").exists(), reason="shared routing data not available"
)


def passes_like_ground_truth(prompt: str, candidates):
    """Stand-in for the sandbox: 2 visible examples, passed by any candidate containing 'return'."""
    return [(2 if "return" in c else 0, 2, False) for c in candidates]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("enc")
    encoder, tokenizer = tiny_encoder()
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> tuple[Path, Path]:
    """Two small tables in the shared format (train: 12 problems, test: 6 others)."""
    source = shared_data._table_file(None, "humaneval_routing", None)
    with gzip.open(source, "rt") as handle:
        rows = [line for line in handle if line.strip()][:18]
    folder = tmp_path_factory.mktemp("tables")
    paths = []
    for name, part in (("train", rows[:12]), ("test", rows[12:])):
        path = folder / f"humaneval_routing.{name}.jsonl.gz"
        with gzip.open(path, "wt") as handle:
            handle.writelines(part)
        paths.append(path)
    return paths[0], paths[1]


def settings(backbone: Path, tmp_path: Path, **kwargs) -> Settings:
    base = {"backbone": backbone, "max_length": 64, "cache_dir": tmp_path / "cache", "feature_cache": tmp_path / "features",
            "cascades": False, "chain_depth": 1}
    return Settings(**{**base, **kwargs})


def test_cross_validation_writes_folds_pooled_and_calibrated_policies(backbone: Path, small_files, tmp_path: Path) -> None:
    table = load_table("humaneval", small_files[0])
    assert all(p.text.startswith("user: ") and p.conversation.text == p.text for p in table.eval_set.prompts)
    attach_execution(table, cache_dir=None, runner=passes_like_ground_truth)
    folds = kfold(table.eval_set, 3, seed=0)
    assert sorted(pid for fold in folds for pid in fold) == sorted(table.prompt_ids) and {len(f) for f in folds} == {4}
    config = settings(backbone, tmp_path, reranker="code_execution", verifier="execution")
    results = cross_validate(table, config, folds=3, seed=0)
    report = results[0].report
    assert {"BEST-Route", "BEST-Route + verified escalation", "verified chains", "best constant", "n-label", "random"} <= set(report.curves)
    assert report.baseline.quality > 0.5
    assert [row["target"] for row in report.calibrated] == [
        "cost_reduction=0.1", "cost_reduction=0.2", "cost_reduction=0.4", "cost_reduction=0.6", "max_quality_drop=0",
    ]
    for row in report.calibrated:
        assert row["kind"] in {"router", "router+verifier", "constant", "verified"} and row["reason"]
    text = write_outputs(tmp_path / "out", results, config, {"test": True}, plots=False)
    assert "Calibrated policy (chosen on validation, measured on test)" in text and "Pooled out-of-fold" in text
    pooled = json.loads((tmp_path / "out" / "pooled" / "report.json").read_text())
    assert pooled["split"] == {"pooled_folds": 3}
    assert json.loads((tmp_path / "out" / "aggregate.json").read_text())["settings"]["picker"] == "execution"
    # one seed, one result
    again = cross_validate(table, config, folds=3, seed=0)
    assert again[0].report.json_text() == report.json_text()


def test_train_on_one_table_and_score_on_another(backbone: Path, small_files, tmp_path: Path) -> None:
    train, test = load_table("humaneval", small_files[0]), load_table("humaneval", small_files[1])
    result = train_test(train, test, settings(backbone, tmp_path), seed=1)
    assert len(result.report.curves["BEST-Route"]) >= 2
    assert result.report.split["test"] == 6 and result.report.split["test_table"].endswith("test.jsonl.gz")
    assert np.isfinite(result.report.baseline.quality)


def test_cli_evaluate_on_tables(backbone: Path, small_files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = [
        "evaluate", "--table", "humaneval", "--train-data", str(small_files[0]), "--test-data", str(small_files[1]),
        "--out", str(out), "--backbone", str(backbone), "--max-length", "64", "--reranker", "random",
        "--target", "cost_reduction=0.4", "--cache-dir", str(tmp_path / "cache"),
    ]
    assert cli.main(args) == 0
    data = json.loads((out / "test" / "report.json").read_text())
    assert [row["target"] for row in data["calibrated"]] == ["cost_reduction=0.4"]
    assert "random" in json.loads((out / "aggregate.json").read_text())["settings"]["picker"]
    assert cli.main(["evaluate", "--table", "humaneval", "--train-data", str(small_files[0])]) == 2
    assert "--test-data" in capsys.readouterr().err


def test_fine_tuned_and_cross_fitted_routers_train_and_score(backbone: Path, small_files, tmp_path: Path) -> None:
    train, test = load_table("humaneval", small_files[0]), load_table("humaneval", small_files[1])
    tuned = train_test(train, test, settings(backbone, tmp_path, encoder="finetune", epochs=1), seed=1)
    assert tuned.training["router"]["best_epoch"] >= 1 and "head_calibration" in tuned.training["router"]
    assert tuned.probabilities.shape == (6, 3, train.eval_set.max_n) and np.all((tuned.probabilities >= 0) & (tuned.probabilities <= 1))
    crossfit = train_test(train, test, settings(backbone, tmp_path, router_fit="crossfit"), seed=1)
    info = crossfit.training["router"]
    assert info["selection"].startswith("5-fold cross-fitting") and len(info["candidates"]) >= 2
    assert len(crossfit.report.curves["BEST-Route"]) >= 2


def test_repeated_kfold_aggregates_every_repeat(backbone: Path, small_files, tmp_path: Path) -> None:
    from training.evaluation import experiment

    out = tmp_path / "repeated"
    args = ["humaneval", "--out", str(out), "--data-dir", str(small_files[0]), "--folds", "3", "--repeats", "2",
            "--backbone", str(backbone), "--max-length", "64", "--reranker", "random", "--no-cascades", "--no-plots",
            "--cache-dir", str(tmp_path / "cache"), "--feature-cache", str(tmp_path / "features")]
    assert experiment.main(args) == 0
    data = json.loads((out / "aggregate.json").read_text())
    assert data["runs"] == 6 and len(data["training"]) == 6
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("fold")) == ["fold1", "fold2", "fold3"]
    pooled = json.loads((out / "pooled" / "report.json").read_text())
    assert pooled["split"] == {"pooled_folds": 6}


def test_verified_option_heads_are_priced_with_their_escalation(backbone: Path, small_files, tmp_path: Path) -> None:
    from training.evaluation.chains import StageArrays, verified_option_labels
    from training.evaluation.experiment import head_labels, static_rejection

    with pytest.raises(ValueError, match="needs a verifier"):
        settings(backbone, tmp_path, router_heads="verified")
    table = load_table("humaneval", small_files[0])
    attach_execution(table, cache_dir=None, runner=passes_like_ground_truth)
    config = settings(backbone, tmp_path, reranker="oracle", verifier="execution", router_heads="verified")
    ids = table.prompt_ids[:8]
    subset = table.eval_set.subset(ids)
    # the labels are the verified chains' exact labels, the rejection rate the verifier's mean
    labels = head_labels(table, table.eval_set, ids, config)
    exact = verified_option_labels(subset, "oracle")
    assert sorted(labels) == sorted(ids)
    for i, p in enumerate(subset.prompts):
        np.testing.assert_allclose(labels[p.id], exact[i])
    rejection = static_rejection(subset, config)
    stages = StageArrays.of(subset, "oracle")
    routed = [subset.members.index(m) for m in subset.routed]
    np.testing.assert_allclose(rejection, stages.rejected[:, routed].mean(axis=0))
    results = cross_validate(table, config, folds=3, seed=0)
    report = results[0].report
    # the router only runs verified: no unverified BEST-Route curve beside it
    assert "BEST-Route + verified escalation" not in report.curves and len(report.curves["BEST-Route"]) >= 2
    assert results[0].rejection is not None and results[0].rejection.shape == (3, table.eval_set.max_n)
    assert "rejection" in results[0].training and any("verified-option heads" in n for n in report.notes)
    for row in report.calibrated:
        assert row["kind"] in {"router+verifier", "constant", "verified"}
