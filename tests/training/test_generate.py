"""Sample generation: every (prompt, member, index) once, resumable, billed, fault-tolerant."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from bestroute_lc.pool import NBilling
from tests.helpers import scripted_pool
from tests.loopback import Fault, LoopbackLLMServer, prompt_token_count
from tests.loopback.fixtures import loopback_mistral_server, loopback_openai_server  # noqa: F401 - fixtures
from tests.loopback_pools import loopback_pool
from training.generate import agenerate_samples, generate_samples, load_prompts
from training.records import PromptRecord, RecordError, RecordStore, SampleRecord


def make_prompts(k: int = 3) -> list[PromptRecord]:
    prompts = [PromptRecord(id=f"p{i}", prompt=f"question number {i} about things") for i in range(k - 1)]
    prompts.append(PromptRecord(id="chat", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]))
    return prompts


def open_store(path: Path) -> RecordStore[SampleRecord]:
    return RecordStore(path, SampleRecord)


def rows(path: Path) -> list[SampleRecord]:
    return list(open_store(path))


def all_keys(prompts: list[PromptRecord], members: list[str], s: int) -> set[tuple[str, str, int]]:
    return {(p.id, m, i) for p in prompts for m in members for i in range(s)}


def assert_exactly_once(path: Path, expected: set[tuple[str, str, int]]) -> None:
    keys = Counter(r.key for r in rows(path))
    assert set(keys) == expected
    assert max(keys.values()) == 1


def calls(pool) -> dict[str, int]:
    return {m.name: len(m.chat_model.calls) for m in pool}


# -- scripted pool ------------------------------------------------------------------------
def test_every_key_once_with_usage_and_cost(tmp_path: Path) -> None:
    pool, prompts, s = scripted_pool(), make_prompts(), 4
    path = tmp_path / "samples.jsonl"
    report = generate_samples(prompts, pool, open_store(path), s, progress=False)

    expected = all_keys(prompts, pool.names, s)
    assert_exactly_once(path, expected)
    assert (report.written, report.skipped, report.failed, report.missing) == (len(expected), 0, {}, [])
    assert report.written_by_member == {"big": 12, "small": 12, "mid": 12}
    assert calls(pool) == {"big": 12, "small": 12, "mid": 12}  # parallel: one request per sample

    for record in rows(path):
        member = pool[record.member]
        prompt = next(p for p in prompts if p.id == record.prompt_id)
        words = sum(len(str(m.content).split()) for m in prompt.chat_messages())
        assert record.text.startswith(f"{record.member} answer ")
        assert (record.input_tokens, record.output_tokens) == (words, 3)
        assert record.cost_usd == pytest.approx(member.prices.input_cost(words) + member.prices.output_cost(3))
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in rows(path)))
    assert report.complete and report.wall_s > 0


def test_failed_requests_are_reported_and_retried_on_rerun(tmp_path: Path) -> None:
    pool, prompts, s = scripted_pool(), make_prompts(), 4
    pool["small"].chat_model.fail_first = 5
    path = tmp_path / "samples.jsonl"
    report = generate_samples(prompts, pool, open_store(path), s, progress=False)

    assert report.failed == {"small": {"RuntimeError: small is down": 5}}
    assert len(report.missing) == 5 and {k[1] for k in report.missing} == {"small"}
    assert not any(k in open_store(path) for k in report.missing)
    assert report.written == 36 - 5 and not report.complete
    assert "small: 5 x RuntimeError: small is down" in report.summary()

    before = calls(pool)
    again = generate_samples(prompts, pool, open_store(path), s, progress=False)
    after = calls(pool)
    assert {m: after[m] - before[m] for m in after} == {"big": 0, "small": 5, "mid": 0}  # only the missing ones
    assert (again.written, again.skipped, again.failed, again.missing) == (5, 31, {}, [])
    assert_exactly_once(path, all_keys(prompts, pool.names, s))


def test_empty_answers_are_failures(tmp_path: Path) -> None:
    pool, prompts = scripted_pool(), make_prompts(2)
    pool["mid"].chat_model.empty = True
    report = generate_samples(prompts, pool, open_store(tmp_path / "s.jsonl"), 2, progress=False)
    assert report.failed == {"mid": {"empty response": 4}}
    assert sorted(report.missing) == sorted(all_keys(prompts, ["mid"], 2))
    assert report.written_by_member == {"big": 4, "small": 4, "mid": 0}


async def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    pool, prompts, s = scripted_pool(), make_prompts(4), 5
    for member in pool:
        member.chat_model.latency_s = 0.01
    path = tmp_path / "samples.jsonl"
    store = open_store(path)
    task = asyncio.ensure_future(agenerate_samples(prompts, pool, store, s, max_concurrency_per_member=2, progress=False))
    while len(store) < 15:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    killed_at = len(store)
    assert 15 <= killed_at < 60
    assert len(rows(path)) == killed_at  # nothing written after the cancel returned
    # ... and the process died mid-write of one more row.
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt_id": "p0", "member": "big", "sample_in')

    before = sum(calls(pool).values())
    reopened = open_store(path)
    assert len(reopened) == killed_at
    report = await agenerate_samples(prompts, pool, reopened, s, progress=False)
    assert sum(calls(pool).values()) - before == 60 - killed_at  # only missing indices requested
    assert (report.written, report.skipped, report.missing) == (60 - killed_at, killed_at, [])
    assert_exactly_once(path, all_keys(prompts, pool.names, s))


async def test_sync_wrapper_works_inside_a_running_loop(tmp_path: Path) -> None:
    pool, prompts = scripted_pool(), make_prompts(2)
    report = generate_samples(prompts, pool, open_store(tmp_path / "s.jsonl"), 2, progress=False)
    assert report.written == 12 and report.complete


async def test_concurrency_is_bounded_per_member(tmp_path: Path) -> None:
    pool, prompts = scripted_pool(), make_prompts(3)
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    for member in pool:
        model = member.chat_model
        original = model._agenerate

        async def tracked(*args, _original=original, _name=member.name, **kwargs):
            in_flight[_name] += 1
            peak[_name] = max(peak[_name], in_flight[_name])
            try:
                await asyncio.sleep(0.01)
                return await _original(*args, **kwargs)
            finally:
                in_flight[_name] -= 1

        object.__setattr__(model, "_agenerate", tracked)
    report = await agenerate_samples(prompts, pool, open_store(tmp_path / "s.jsonl"), 4, max_concurrency_per_member=3, progress=False)
    assert report.written == 36
    assert dict(peak) == {"big": 3, "small": 3, "mid": 3}  # bounded per member, members in parallel


def test_progress_bar_shows_member_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool, prompts = scripted_pool(), make_prompts(2)
    pool["small"].chat_model.fail = True
    generate_samples(prompts, pool, open_store(tmp_path / "s.jsonl"), 2, progress=True)
    err = capsys.readouterr().err
    assert "12/12" in err and "big=4/4" in err and "small=0/4 (4 failed)" in err


def test_bad_arguments(tmp_path: Path) -> None:
    pool, store = scripted_pool(), open_store(tmp_path / "s.jsonl")
    with pytest.raises(ValueError, match="duplicate prompt ids"):
        generate_samples([PromptRecord(id="a", prompt="x")] * 2, pool, store, 1, progress=False)
    with pytest.raises(ValueError, match="request_n"):
        generate_samples(make_prompts(1), pool, store, 1, request_n=0, progress=False)


# -- real clients against the loopback servers -----------------------------------------------
@pytest.fixture
def servers(
    loopback_openai_server: LoopbackLLMServer,  # noqa: F811 - the imported fixture
    loopback_mistral_server: LoopbackLLMServer,  # noqa: F811
) -> tuple[LoopbackLLMServer, LoopbackLLMServer]:
    """Fresh OpenAI- and Mistral-protocol loopback servers for one test."""
    return loopback_openai_server, loopback_mistral_server


def chat_requests(server: LoopbackLLMServer, model: str) -> list[dict]:
    return [r["body"] for r in server.requests.for_model(model)]


@pytest.mark.network_loopback
def test_native_n_is_one_request_parallel_is_n(
    tmp_path: Path, servers: tuple[LoopbackLLMServer, LoopbackLLMServer]
) -> None:
    openai, mistral = servers
    pool = loopback_pool(openai.base_url, mistral.base_url, timeout_s=5, max_retries=0)
    assert pool["gpt-mini"].n_billing is NBilling.NATIVE and pool["mistral-small"].n_billing is NBilling.PARALLEL
    prompts, s = make_prompts(2), 3
    path = tmp_path / "samples.jsonl"
    report = generate_samples(prompts, pool, open_store(path), s, progress=False)
    assert report.complete and report.written == 2 * 3 * s
    assert_exactly_once(path, all_keys(prompts, pool.names, s))

    for model in ("loop-gpt-large", "loop-gpt-mini"):
        bodies = chat_requests(openai, model)
        assert len(bodies) == len(prompts) and all(b["n"] == s for b in bodies)  # ONE request per prompt
    parallel = chat_requests(mistral, "loop-mistral-small")
    assert len(parallel) == len(prompts) * s and all(b.get("n", 1) == 1 for b in parallel)

    records = rows(path)
    for prompt in prompts:
        body = next(b for b in chat_requests(openai, "loop-gpt-mini") if b["messages"][-1]["content"] == prompt.chat_messages()[-1].content)
        prompt_tokens = prompt_token_count(body)
        mini = [r for r in records if r.prompt_id == prompt.id and r.member == "gpt-mini"]
        small = [r for r in records if r.prompt_id == prompt.id and r.member == "mistral-small"]
        # Native n: the prompt is billed once and split over the samples; parallel: once per sample.
        assert sum(r.input_tokens for r in mini) == prompt_tokens
        assert max(r.input_tokens for r in mini) - min(r.input_tokens for r in mini) <= 1
        assert all(r.input_tokens == prompt_tokens for r in small)
        prices = pool["gpt-mini"].prices
        billed = prices.input_cost(prompt_tokens) + prices.output_cost(sum(r.output_tokens for r in mini))
        assert sum(r.cost_usd for r in mini) == pytest.approx(billed)
        assert all(r.output_tokens > 0 and r.text for r in mini + small)
        assert len({r.text for r in mini}) == s  # distinct choices
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in records))


@pytest.mark.network_loopback
def test_request_n_caps_native_requests(
    tmp_path: Path, servers: tuple[LoopbackLLMServer, LoopbackLLMServer]
) -> None:
    openai, _ = servers
    pool = loopback_pool(openai.base_url, with_mistral=False, timeout_s=5, max_retries=0)
    report = generate_samples(make_prompts(1), pool, open_store(tmp_path / "s.jsonl"), 5, request_n=2, progress=False)
    assert report.complete and report.written == 10
    bodies = chat_requests(openai, "loop-gpt-mini")
    assert sorted(b.get("n", 1) for b in bodies) == [1, 2, 2]


@pytest.mark.network_loopback
def test_faulty_member_is_reported_then_filled_on_rerun(
    tmp_path: Path, servers: tuple[LoopbackLLMServer, LoopbackLLMServer]
) -> None:
    openai, mistral = servers
    pool = loopback_pool(openai.base_url, mistral.base_url, timeout_s=5, max_retries=0)
    prompts, s = make_prompts(2), 3
    path = tmp_path / "samples.jsonl"
    mistral.set_fault("loop-mistral-small", Fault.HTTP_500)
    openai.set_fault("loop-gpt-mini", Fault.HTTP_500, times=1)  # one native request of n=3
    report = generate_samples(prompts, pool, open_store(path), s, progress=False)

    assert set(report.failed) == {"mistral-small", "gpt-mini"}
    assert sum(report.failed["mistral-small"].values()) == len(prompts) * s
    assert sum(report.failed["gpt-mini"].values()) == s
    assert all("500" in error for errors in report.failed.values() for error in errors)
    mistral_keys = all_keys(prompts, ["mistral-small"], s)
    assert mistral_keys <= set(report.missing) and len(report.missing) == len(mistral_keys) + s
    assert report.written_by_member == {"gpt-large": 6, "gpt-mini": 3, "mistral-small": 0}

    mistral.clear_faults()
    openai_before = len(openai.requests)
    mistral_before = len(mistral.requests)
    again = generate_samples(prompts, pool, open_store(path), s, progress=False)
    assert again.complete and again.written == len(report.missing) and again.failed == {}
    assert len(openai.requests) - openai_before == 1  # the one failed native request
    assert len(mistral.requests) - mistral_before == len(prompts) * s
    assert_exactly_once(path, all_keys(prompts, pool.names, s))


# -- load_prompts ---------------------------------------------------------------------------
def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_prompts(tmp_path: Path) -> None:
    ok = write_lines(
        tmp_path / "ok.jsonl",
        [json.dumps({"id": "a", "prompt": "hi"}), "", json.dumps({"id": "b", "messages": [{"role": "user", "content": "yo"}], "source": "x"})],
    )
    assert [(p.id, p.source) for p in load_prompts(ok)] == [("a", "default"), ("b", "x")]


def test_load_prompts_malformed_row_names_its_line(tmp_path: Path) -> None:
    bad_json = write_lines(tmp_path / "a.jsonl", [json.dumps({"id": "a", "prompt": "hi"}), "{not json"])
    with pytest.raises(RecordError, match=r"a\.jsonl:2: not valid JSON"):
        load_prompts(bad_json)
    invalid = write_lines(tmp_path / "b.jsonl", [json.dumps({"id": "a", "prompt": "hi"}), "", json.dumps({"id": "b"})])
    with pytest.raises(RecordError, match=r"b\.jsonl:3: invalid PromptRecord"):
        load_prompts(invalid)


def test_load_prompts_duplicate_id_names_its_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [json.dumps({"id": "a", "prompt": "1"}), "", json.dumps({"id": "b", "prompt": "2"}), json.dumps({"id": "a", "prompt": "3"})],
    )
    with pytest.raises(RecordError, match=r"d\.jsonl:4: duplicate prompt id 'a' \(first on line 1\)"):
        load_prompts(path)


def test_samples_per_member_by_name_and_each_prompts_max_tokens(tmp_path: Path) -> None:
    """The reference may draw fewer samples than the routed members; a prompt's own
    ``max_tokens`` goes with its requests."""
    pool = scripted_pool()
    prompts = [
        PromptRecord(id="short", prompt="a", max_tokens=7),
        PromptRecord(id="plain", prompt="b"),
    ]
    report = generate_samples(prompts, pool, open_store(tmp_path / "s.jsonl"), {"big": 1, "small": 3, "mid": 2}, progress=False)
    counts = Counter(r.member for r in rows(tmp_path / "s.jsonl"))
    assert counts == {"big": 2, "small": 6, "mid": 4} and report.written == 12
    budgets = {
        (call["messages"][-1].content, call["kwargs"].get("max_tokens"))
        for member in pool
        for call in member.chat_model.calls
    }
    assert budgets == {("a", 7), ("b", None)}
    with pytest.raises(ValueError, match="missing member"):
        generate_samples(prompts, pool, open_store(tmp_path / "t.jsonl"), {"big": 1}, progress=False)


def test_config_per_member_samples_and_per_prompt_scorer(tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.scorers import PerPromptScorer, build_scorer

    member = {"provider": "factory", "factory": "tests.helpers:ScriptedChatModel", "prices": {"input_per_mtok": 1, "output_per_mtok": 1}}
    raw = {
        "work_dir": "run", "prompts": "p.jsonl", "samples_per_member": 4, "max_n": 3,
        "scorer": {"kind": "per_prompt", "by_source": {"math": "numeric"}},
        "pool": {"reference": "big", "members": [{"name": "small", **member}, {"name": "big", "samples": 1, **member}]},
    }
    config = TrainConfig.model_validate(raw)
    assert config.samples_by_member() == {"small": 4, "big": 1}
    with pytest.raises(ValueError, match="samples=2 < max_n=3"):
        TrainConfig.model_validate({**raw, "pool": {"reference": "big", "members": [{"name": "small", "samples": 2, **member}, {"name": "big", **member}]}})
    scorer = build_scorer(config.scorer)
    assert isinstance(scorer, PerPromptScorer)
    math = PromptRecord(id="m", prompt="1+1?", source="math", reference="2")
    named = PromptRecord.model_validate({"id": "x", "prompt": "1+2?", "source": "other", "reference": "3", "scorer": "numeric"})
    assert scorer.score(math, ["#### 2", "#### 3"]) == [1.0, 0.0]
    assert scorer.score(named, ["#### 3"]) == [1.0]
    with pytest.raises(ValueError, match="no scorer"):
        scorer.score(PromptRecord(id="y", prompt="?", source="other"), ["x"])
