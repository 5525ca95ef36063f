"""``bestroute-train evaluate`` / ``calibrate`` on a work directory with bring-your-own samples:
the prompt-token convention, and policies written for the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bestroute_lc.artifacts import PolicyChoice
from bestroute_lc.pricing import approximate_tokens
from tests.training.test_pipeline_e2e import write_own_samples, write_run
from training import cli
from training.config import load_config
from training.evaluation.from_store import eval_set_from_store
from training.pipeline import load_data


def trained(tmp_path: Path):
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    return config_path, config


def test_prompt_tokens_do_not_depend_on_how_records_split_them(tmp_path: Path) -> None:
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    # a hand-made samples.jsonl with the whole prompt on every record of a native-n member
    rows = [json.loads(line) for line in config.samples_path.read_text().splitlines()]
    config.samples_path.write_text("".join(json.dumps({**row, "input_tokens": 4000}) + "\n" for row in rows))
    load_data(config)  # the work directory is valid
    eval_set = eval_set_from_store(config, ["q0", "q1"], None)
    for prompt in eval_set.prompts:
        tokens = {m: o.input_tokens for m, o in prompt.members.items()}
        assert set(tokens.values()) == {float(approximate_tokens(prompt.conversation.text))}
        assert prompt.text == prompt.conversation.text and prompt.text.startswith("user: ")
    cost = eval_set.cost()
    # the native member's prompt is billed once for n samples, the parallel one n times
    mid, cheap = eval_set.members.index("toy-mid"), eval_set.members.index("toy-cheap")
    prices = eval_set.prices
    prompt_tokens = eval_set.prompts[0].members["toy-mid"].input_tokens
    assert cost[0, mid, 2] - cost[0, mid, 0] == pytest.approx(2 * 6 * prices["toy-mid"].output_per_mtok / 1e6)
    assert cost[0, cheap, 2] - cost[0, cheap, 0] == pytest.approx(
        2 * (6 * prices["toy-cheap"].output_per_mtok + prompt_tokens * prices["toy-cheap"].input_per_mtok) / 1e6
    )


def test_calibrate_writes_policy_choices_with_reasons(tmp_path: Path, capsys) -> None:
    config_path, config = trained(tmp_path)
    args = ["calibrate", "--config", str(config_path), "--reranker", "code_execution", "--verifier", "execution",
            "--cache-dir", str(tmp_path / "cache"), "--target", "cost_reduction=0.5", "--target", "max_quality_drop=0"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "cost_reduction=0.5:" in out and "stored in" in out
    stored = json.loads((config.router_dir / "config.json").read_text())
    assert set(stored["policies"]) == {"cost_reduction=0.5", "max_quality_drop=0"}
    for key, raw in stored["policies"].items():
        policy = PolicyChoice.model_validate(raw)
        assert policy.reason and policy.validation["prompts"] == 4
        if policy.kind == "verified":
            assert policy.verifier == "execution" and policy.escalation[-1] == ("toy-ref", 1)
        if policy.kind == "router":
            assert policy.threshold is not None
        calibration = stored["training"]["calibration"][key]
        assert calibration["reranker"] == "code_execution" and calibration["verifier"] == "execution"
        if calibration["threshold"] is not None:  # the best router-only threshold is kept for older runtimes
            assert stored["thresholds"][key] == calibration["threshold"]


def test_evaluate_reports_families_and_calibrated_policies(tmp_path: Path) -> None:
    config_path, config = trained(tmp_path)
    out = tmp_path / "report"
    args = ["evaluate", "--config", str(config_path), "--no-progress", "--out", str(out), "--verifier", "execution",
            "--reranker", "code_execution", "--cache-dir", str(tmp_path / "cache"), "--target", "cost_reduction=0.5"]
    assert cli.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"BEST-Route", "BEST-Route + verified escalation", "verified chains", "best constant", "n-label"} <= set(report["methods"])
    assert [row["target"] for row in report["calibrated"]] == ["cost_reduction=0.5"]
    assert "cost_reduction=0.5" in json.loads((config.router_dir / "config.json").read_text())["policies"]


def test_members_the_reward_model_is_not_trusted_for_are_evaluated_as_a_random_pick(tmp_path: Path) -> None:
    """The engine keeps an untrusted member's first sample (a uniform pick): the evaluator must
    score that, not the reward model's pick."""
    from bestroute_lc.reward import RewardPredictor

    _, config = trained(tmp_path)
    reward = RewardPredictor.from_pretrained(config.reward_dir)
    reward.config.untrusted_members = ["toy-cheap"]
    eval_set = eval_set_from_store(config, ["q0", "q1", "q2"], reward)
    for prompt in eval_set.prompts:
        assert not prompt.members["toy-cheap"].proxy.any()  # tied: a uniform pick
        trusted = prompt.members["toy-mid"].proxy
        assert trusted.tolist() == pytest.approx(reward.score(prompt.conversation.text, load_data(config)[1][prompt.id].members["toy-mid"].texts))
    quality = eval_set.quality("proxy")
    cheap = eval_set.members.index("toy-cheap")
    for q, prompt in enumerate(eval_set.prompts):  # every n: the mean of the member's samples
        assert quality[q, cheap, :] == pytest.approx(prompt.members["toy-cheap"].gt.mean())


def test_pick_gains_mark_a_proxy_that_picks_worse_than_random_untrusted() -> None:
    from training.train_reward import pick_gains, untrusted_members

    rows = [("good", [3, 2, 1], [1, 0, 0]), ("bad", [1, 2, 3], [1, 0, 0]), ("flat", [0, 0, 0], [1, 0, 0]),
            ("good", [1, 0], [1, 0])]
    gains = pick_gains(rows)
    assert gains["good"]["gain"] > 0 and gains["bad"]["gain"] < 0 and gains["flat"]["gain"] == pytest.approx(0)
    assert gains["good"]["prompts"] == 2
    assert untrusted_members(gains) == ["bad", "flat"]
