"""The local pool's definition, its prompt set and config, and the generation driver.

No model is loaded here: the driver runs on scripted chat models (tests/helpers.py)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from training.config import load_config
from training.generate import load_prompts
from training.local_pool import build_prompts, generate_local
from training.scorers import PerPromptScorer
from training.records import (
    PromptRecord,
    RecordStore,
    SampleRecord,
    ScoreRecord,
    read_records,
)

ROOT = Path(__file__).resolve().parents[2]
RUN_YAML = ROOT / "training" / "local_pool" / "run.yaml"
PROMPTS = ROOT / "data" / "local_pool" / "prompts.jsonl"


# -- prices and config -----------------------------------------------------------------------------
def test_prices_come_from_measured_speeds() -> None:
    from bestroute_lc.local.pool import (
        CPU_THREAD_HOUR_USD,
        LOCAL_PRICES,
        MEASURED_TOKENS_PER_S,
    )

    for name, prices in LOCAL_PRICES.items():
        speed = MEASURED_TOKENS_PER_S[name]
        assert prices.input_per_mtok == pytest.approx(1e6 / speed["prompt"] / 3600 * CPU_THREAD_HOUR_USD, rel=1e-2)
        assert prices.output_per_mtok == pytest.approx(1e6 / speed["generation"] / 3600 * CPU_THREAD_HOUR_USD, rel=1e-2)
        assert prices.source.startswith("local-cpu:")
    small, reference = LOCAL_PRICES["smollm2-135m"], LOCAL_PRICES["qwen2.5-coder-1.5b"]
    assert small.output_per_mtok < reference.output_per_mtok and small.input_per_mtok < reference.input_per_mtok


def test_run_yaml_matches_the_pool_definition() -> None:
    from bestroute_lc.local.pool import LOCAL_PRICES, REFERENCE, ROUTED

    config = load_config(RUN_YAML)
    assert config.pool.reference == REFERENCE
    assert [m.name for m in config.pool.members] == [ROUTED, REFERENCE]
    for member in config.pool.members:
        assert member.provider == "factory" and member.factory == "bestroute_lc.local.pool:chat_model"
        assert member.factory_kwargs["model"] == member.name and member.factory_kwargs["n_threads"] == 1
        assert member.resolved_prices().input_per_mtok == LOCAL_PRICES[member.name].input_per_mtok
        assert member.resolved_prices().output_per_mtok == LOCAL_PRICES[member.name].output_per_mtok
        assert member.n_billing is not None and member.n_billing.value == "native"
        assert member.timeout_s >= 600
    assert config.prompts == PROMPTS.resolve() or config.prompts.resolve() == PROMPTS.resolve()
    assert config.samples_per_member == 8 and config.max_n <= 8
    counts = generate_local.samples_per_member(config, {})
    assert counts == {ROUTED: 8, REFERENCE: 4}


# -- the prompt set ----------------------------------------------------------------------------------
def test_prompt_file_is_valid_and_interleaved() -> None:
    prompts = load_prompts(PROMPTS)
    sources = Counter(p.source for p in prompts)
    assert sources == {"gsm8k": 300, "mbpp": 426}
    first = [p.source for p in prompts[:20]]
    assert 8 <= first.count("gsm8k") <= 12  # both tasks early
    for p in prompts:
        extra = p.model_extra or {}
        assert p.max_tokens == 384
        if p.source == "gsm8k":
            assert extra["scorer"] == "numeric" and p.reference and float(p.reference) == float(p.reference)
            assert p.prompt.endswith(p.prompt.split("Question: ", 1)[1]) and "####" in p.prompt
        else:
            assert extra["scorer"] == "code_tests" and p.entry_point and p.tests.count("assert ") >= 3
            assert f"`{p.entry_point}`" in p.prompt and "```" not in p.prompt
            first_assert = p.tests.split("def check(candidate):\n", 1)[1].splitlines()[0].strip()
            assert first_assert in p.prompt
    assert not any("humaneval" in p.id.lower() for p in prompts)


def test_scorer_dispatch_on_real_rows() -> None:
    prompts = load_prompts(PROMPTS)
    math = next(p for p in prompts if p.source == "gsm8k")
    code = next(p for p in prompts if p.source == "mbpp")
    scorer = PerPromptScorer()
    assert scorer.score(math, [f"so\n#### {math.reference}", "#### -1"]) == [1.0, 0.0]
    solution = (code.model_extra or {})["canonical_solution"]
    assert scorer.score(code, [f"Here:\n```python\n{solution}\n```", "```python\ndef nothing(): pass\n```"]) == [1.0, 0.0]


def test_builder_pieces() -> None:
    import ast

    assert build_prompts.gsm8k_reference("a\n#### 1,234") == "1234"
    tree = ast.parse("def check(candidate):\n    assert set(f(1)) == set((1,))\n    assert f(2) == [2]\n")
    asserts = [n for n in tree.body[0].body if isinstance(n, ast.Assert)]
    assert build_prompts.mbpp_entry_point(asserts) == "f"
    tree = ast.parse("def check(candidate):\n    assert sum(1, 2) == 3\n")
    assert build_prompts.mbpp_entry_point([tree.body[0].body[0]]) == "sum"
    mixed = build_prompts.interleave([{"i": i} for i in range(2)], [{"j": j} for j in range(4)])
    assert [("i" in r) for r in mixed] == [False, True, False, False, True, False]
    row, why = build_prompts.mbpp_row(
        {
            "task_id": "MbppEval/9",
            "prompt": "import math\ndef g(x):\n    '''\n    Write a function.\n    '''\n",
            "canonical_solution": "\treturn math.floor(x)\n",
            "test": "def check(candidate):\n    assert math.isclose(g(1.5), 1)\n    assert g(2) == 2\n",
            "entry_point": "g",
        }
    )
    assert why == "" and row["entry_point"] == "g" and row["tests"].startswith("import math\n")
    assert row["canonical_solution"] == "import math\ndef g(x):\n\treturn math.floor(x)\n"


# -- the driver, on scripted models ------------------------------------------------------------------
def _config(tmp_path: Path, prompts: list[dict]) -> Path:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    member = (
        "{{name: {name}, provider: factory, factory: 'tests.helpers:ScriptedChatModel', "
        "factory_kwargs: {{name_: {name}, calls: []}}, prices: {{input_per_mtok: 1, output_per_mtok: 2}}, timeout_s: 5}}"
    )
    (tmp_path / "run.yaml").write_text(
        "work_dir: run\nprompts: prompts.jsonl\nsamples_per_member: 3\nmax_n: 2\nscorer: {kind: per_prompt}\n"
        f"pool:\n  reference: big\n  members:\n    - {member.format(name='small')}\n    - {member.format(name='big')[:-1]}, samples: 4}}\n"
    )
    return tmp_path / "run.yaml"


PROMPT_ROWS = [
    {"id": "m1", "prompt": "2+1?", "source": "gsm8k", "scorer": "numeric", "reference": "1", "max_tokens": 7},
    {"id": "c1", "prompt": "write f", "source": "mbpp", "scorer": "code_tests", "tests": "def check(candidate):\n    assert f() == 1\n",
     "entry_point": "f", "max_tokens": 9},
    {"id": "m2", "prompt": "3-2?", "source": "gsm8k", "scorer": "numeric", "reference": "2"},
]


def test_driver_generates_per_member_counts_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="generate_local")
    path = _config(tmp_path, PROMPT_ROWS)
    assert generate_local.main(["generate", "--config", str(path)]) == 0
    samples = list(read_records(tmp_path / "run" / "samples.jsonl", SampleRecord))
    counts = Counter((s.member, s.prompt_id) for s in samples)
    assert counts == {("small", p["id"]): 3 for p in PROMPT_ROWS} | {("big", p["id"]): 4 for p in PROMPT_ROWS}
    assert "small prompt 3/3 m2: +3 samples (0 failed)" in caplog.text and "samples/h" in caplog.text
    # A rerun finds everything and draws nothing.
    assert generate_local.main(["generate", "--config", str(path), "--samples", "big=2"]) == 0
    assert len(list(read_records(tmp_path / "run" / "samples.jsonl", SampleRecord))) == len(samples)
    # Score with the scorer each row names, then report.
    assert generate_local.main(["score", "--config", str(path)]) == 0
    scores = list(read_records(tmp_path / "run" / "scores.jsonl", ScoreRecord))
    assert len(scores) == len(samples)
    assert {s.scorer for s in scores if s.prompt_id == "c1"} == {"code_tests"}
    assert {s.scorer for s in scores if s.prompt_id != "c1"} == {"numeric"}
    # "small answer 1": the numeric scorer reads 1, right for m1 only; no code passes.
    assert {(s.prompt_id, s.score) for s in scores if s.member == "small" and s.sample_index == 0} == {("m1", 1.0), ("c1", 0.0), ("m2", 0.0)}
    capsys.readouterr()
    assert generate_local.main(["report", "--config", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_member_source"]["big/mbpp"]["samples"] == 4


def test_driver_passes_each_prompts_max_tokens(tmp_path: Path) -> None:
    from bestroute_lc.pool import PoolMember
    from bestroute_lc.pricing import Prices
    from tests.helpers import ScriptedChatModel

    chat = ScriptedChatModel(name_="small", calls=[])
    member = PoolMember.from_model(chat, name="small", prices=Prices(input_per_mtok=1, output_per_mtok=1))
    prompts = [PromptRecord.model_validate(p) for p in PROMPT_ROWS]
    store = RecordStore(tmp_path / "s.jsonl", SampleRecord)
    asyncio.run(generate_local._member_loop(member, 1, prompts, store, tmp_path / "s.jsonl"))
    assert [c["kwargs"].get("max_tokens") for c in chat.calls] == [7, 9, None]


def test_samples_below_max_n_are_refused(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, PROMPT_ROWS))
    with pytest.raises(SystemExit, match="max_n"):
        generate_local.samples_per_member(config, {"small": 1})
    with pytest.raises(SystemExit, match="unknown member"):
        generate_local.samples_per_member(config, {"nobody": 3})
