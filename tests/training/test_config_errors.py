"""bestroute-train refuses bad configs in one line naming the file (no tracebacks, no silent
defaults for typo'd keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "training" / "run.yaml"


def run(tmp_path: Path, text: str, capsys, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    assert cli.main(["score", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(path) in err
    return err


@pytest.mark.parametrize(("edit", "key"), [
    ({"split": {"train": 0.8, "validation": 0.1, "test": 0.1, "holdout_source": ["x"]}}, "split.holdout_source"),
    ({"reward": {"epoch": 3}}, "reward.epoch"),
    ({"router_encoders": "frozen"}, "router_encoders"),
])
def test_typoed_keys_are_errors(tmp_path: Path, capsys, edit, key) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    err = run(tmp_path, yaml.safe_dump({**raw, **edit}), capsys)
    assert key in err and "Extra inputs are not permitted" in err


def test_a_typoed_pool_key_is_an_error(tmp_path: Path, capsys) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["pool"]["timeout_s"] = 5
    assert "pool.timeout_s" in run(tmp_path, yaml.safe_dump(raw), capsys)


def test_yaml_syntax_and_missing_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    err = run(tmp_path, "work_dir: x\npool: [unclosed\n", capsys)
    assert "not valid YAML" in err and "run.yaml:" in err
    assert cli.main(["score", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the config" in capsys.readouterr().err
    assert "expected a mapping" in run(tmp_path, "- a\n- b\n", capsys, "list.yaml")


def test_duplicate_and_empty_inputs_are_refused_by_file_and_line(tmp_path: Path, capsys) -> None:
    import json

    raw = yaml.safe_load(EXAMPLE.read_text())
    (tmp_path / "prompts.jsonl").write_text('{"id": "q1", "prompt": "What is 1 + 1?", "reference": "2", "source": "math"}\n')
    work = tmp_path / "work"
    work.mkdir()
    sample = {"prompt_id": "q1", "member": "gpt-4o", "sample_index": 0, "text": "2", "output_tokens": 1}
    (work / "samples.jsonl").write_text(json.dumps(sample) + "\n" + json.dumps(sample) + "\n")
    (work / "scores.jsonl").write_text("")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**raw, "prompts": "prompts.jsonl", "work_dir": "work"}))
    assert cli.main(["reward", "--config", str(config), "--no-progress"]) == 2
    assert "samples.jsonl:2: duplicate sample for" in capsys.readouterr().err
    (work / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    score = {"prompt_id": "q1", "member": "gpt-4o", "sample_index": 0, "score": 1.0}
    (work / "scores.jsonl").write_text(json.dumps(score) + "\n" + json.dumps({**score, "score": 0.0}) + "\n")
    assert cli.main(["reward", "--config", str(config), "--no-progress"]) == 2
    assert "scores.jsonl:2: duplicate score" in capsys.readouterr().err
    (work / "scores.jsonl").write_text(json.dumps({**score, "prompt_id": "nope"}) + "\n")
    assert cli.main(["reward", "--config", str(config), "--no-progress"]) == 2
    assert "scores.jsonl:1: score for unknown prompt id 'nope'" in capsys.readouterr().err
    (tmp_path / "prompts.jsonl").write_text("")
    assert cli.main(["reward", "--config", str(config), "--no-progress"]) == 2
    assert "no prompts" in capsys.readouterr().err
