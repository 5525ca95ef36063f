"""Generate and score the local pool's training samples (resumable, one model thread each).

    python -m training.local_pool.generate_local generate [--config training/local_pool/run.yaml]
        [--samples qwen2.5-coder-1.5b=4] [--limit N] [--members NAME ...]
    python -m training.local_pool.generate_local score  [--config ...]
    python -m training.local_pool.generate_local report [--config ...]
    python -m training.local_pool.generate_local ship   [--config ...]   # trained artifacts -> bestroute_lc/local/artifacts

``generate`` draws the samples missing from ``<work_dir>/samples.jsonl`` with
``training.generate.agenerate_samples`` (the pipeline's own function: same pool members,
billing, retries, append-as-you-go store), one prompt at a time in file order, every member
in its own loop so a fast member is not held back by a slow one. What the config format
cannot say yet, this driver adds:

* samples per member: the config's (``samples_per_member``, or a member's own ``samples``:
  8 for smollm2-135m, 4 for the reference), except the members given with ``--samples NAME=M``;
* one loop per member, so the fast member is not held back by the slow one (the pipeline's
  ``generate`` draws both at once); each prompt's ``max_tokens`` (384 here) goes with its requests.

Killed at any point, a rerun resumes where it stopped (samples in the store are skipped;
a half-written last line is dropped). Progress goes to stdout, one line per prompt and member:
samples, output tokens, seconds, tokens/s, samples/hour and an estimate of the time left.

``score`` scores every unscored sample with the scorer each prompt row names
(``training.scorers.PerPromptScorer``, ``training.pipeline.score_samples``) into ``<work_dir>/scores.jsonl`` (resumable);
``report`` prints progress and pass rates per member and source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config
from training.generate import agenerate_samples, load_prompts
from training.records import (
    PromptRecord,
    RecordStore,
    SampleRecord,
    ScoreRecord,
    read_records,
)

DEFAULT_CONFIG = Path(__file__).with_name("run.yaml")
log = logging.getLogger("generate_local")


def samples_per_member(config: TrainConfig, overrides: dict[str, int]) -> dict[str, int]:
    names = [m.name for m in config.pool.members]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SystemExit(f"--samples names unknown member(s) {unknown}; pool: {names}")
    counts = config.samples_by_member()
    counts.update(overrides)
    for name, m in counts.items():
        if name != config.pool.reference and m < config.max_n:
            raise SystemExit(f"member {name!r}: {m} samples < max_n={config.max_n} (labels draw n of m without replacement)")
    return counts


def _single_member_pool(member: Any) -> Any:
    """A pool of one member for ``agenerate_samples`` (a ``Pool`` validates >= 2 members)."""
    from bestroute_lc.pool import Pool

    return Pool.model_construct(members=[member], reference=member.name)


class _Meter:
    """Running totals of one member for the progress lines."""

    def __init__(self, name: str, total_samples: int, done_before: int) -> None:
        self.name, self.total, self.done_before = name, total_samples, done_before
        self.samples = self.tokens = 0
        self.start = time.perf_counter()

    def line(self, prompt_id: str, index: int, count: int, written: int, tokens: int, seconds: float, failed: int) -> str:
        self.samples += written
        self.tokens += tokens
        elapsed = time.perf_counter() - self.start
        per_hour = self.samples / elapsed * 3600 if elapsed > 0 else 0.0
        left = self.total - self.done_before - self.samples
        eta_h = left / per_hour if per_hour > 0 else float("nan")
        return (
            f"{self.name} prompt {index + 1}/{count} {prompt_id}: +{written} samples ({failed} failed), {tokens} out tok, "
            f"{seconds:.1f} s ({tokens / seconds if seconds > 0 else 0:.1f} tok/s) | run: {self.done_before + self.samples}/{self.total} "
            f"samples, {self.tokens / elapsed if elapsed > 0 else 0:.1f} out tok/s, {per_hour:.0f} samples/h, ~{eta_h:.1f} h left"
        )


async def _member_loop(member: Any, m: int, prompts: list[PromptRecord], store: RecordStore[SampleRecord], path: Path) -> dict[str, int]:
    pool = _single_member_pool(member)
    done_before = sum(1 for p in prompts for i in range(m) if (p.id, member.name, i) in store)
    meter = _Meter(member.name, m * len(prompts), done_before)
    log.info("%s: %d of %d samples already in %s", member.name, done_before, m * len(prompts), path)
    failures: Counter[str] = Counter()
    for index, prompt in enumerate(prompts):
        if all((prompt.id, member.name, i) in store for i in range(m)):
            continue
        before = len(store)
        start = time.perf_counter()
        report = await agenerate_samples(
            [prompt], pool, store, m, max_concurrency_per_member=1, progress=False
        )  # the prompt's own max_tokens goes with its requests
        seconds = time.perf_counter() - start
        new = [r for r in _tail(path, len(store) - before) if r.member == member.name and r.prompt_id == prompt.id]
        tokens = sum(r.output_tokens for r in new)
        for errors in report.failed.values():
            failures.update(errors)
        log.info(meter.line(prompt.id, index, len(prompts), report.written, tokens, seconds, report.failed_count))
        for error, count in (report.failed.get(member.name) or {}).items():
            log.warning("%s %s: %d x %s", member.name, prompt.id, count, error)
    log.info("%s: done (%s)", member.name, dict(failures) or "no failures")
    return dict(failures)


def _tail(path: Path, rows: int) -> list[SampleRecord]:
    """The last ``rows`` records of the store (the samples one request just appended)."""
    if rows <= 0:
        return []
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size, block, data = handle.tell(), 1 << 16, b""
        while data.count(b"\n") <= rows and size > 0:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()][-rows:]
    out = []
    for line in lines:
        try:
            out.append(SampleRecord.model_validate_json(line))
        except ValueError:
            continue
    return out


def command_generate(config: TrainConfig, args: argparse.Namespace) -> int:
    overrides = dict(_pair(item) for item in args.samples)
    counts = samples_per_member(config, overrides)
    prompts = load_prompts(config.prompts)
    if args.limit:
        prompts = prompts[: args.limit]
    pool = config.pool.build()
    members = [m for m in pool if not args.members or m.name in args.members]
    store = RecordStore(config.samples_path, SampleRecord)
    log.info("prompts %d, samples per member %s, store %s", len(prompts), {m.name: counts[m.name] for m in members}, config.samples_path)

    async def run() -> None:
        await asyncio.gather(*(_member_loop(m, counts[m.name], prompts, store, config.samples_path) for m in members))

    asyncio.run(run())
    return 0


def _pair(item: str) -> tuple[str, int]:
    name, _, value = item.partition("=")
    if not value.isdigit():
        raise SystemExit(f"--samples takes NAME=M, got {item!r}")
    return name, int(value)


def _scored_samples(config: TrainConfig, prompts: list[PromptRecord]) -> list[SampleRecord]:
    """The samples in the store; safe while ``generate`` appends (a line still being written is left for later)."""
    if not config.samples_path.exists():
        return []
    ids = {p.id for p in prompts}
    data = config.samples_path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
    samples = [SampleRecord.model_validate_json(line) for line in complete.splitlines() if line.strip()]
    return [s for s in samples if s.prompt_id in ids]


def command_score(config: TrainConfig, args: argparse.Namespace) -> int:
    from training.pipeline import score_samples
    from training.scorers import PerPromptScorer, build_scorer

    prompts = load_prompts(config.prompts)
    store = RecordStore(config.scores_path, ScoreRecord)
    scorer = build_scorer(config.scorer)
    if not isinstance(scorer, PerPromptScorer):
        raise SystemExit(f"{args.config}: the local pool's prompts need scorer kind 'per_prompt', got {config.scorer}")
    written = score_samples(prompts, _scored_samples(config, prompts), store, scorer, progress=False)
    log.info("scored %d new samples into %s", written, config.scores_path)
    return 0


def command_report(config: TrainConfig, args: argparse.Namespace) -> int:
    prompts = {p.id: p for p in load_prompts(config.prompts)}
    samples = _scored_samples(config, list(prompts.values()))
    scores = {s.key: s.score for s in read_records(config.scores_path, ScoreRecord)} if config.scores_path.exists() else {}
    table: dict[tuple[str, str], list[float]] = defaultdict(list)
    tokens: dict[tuple[str, str], list[int]] = defaultdict(list)
    prompts_done: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        source = prompts[s.prompt_id].source
        tokens[(s.member, source)].append(s.output_tokens)
        prompts_done[s.member].add(s.prompt_id)
        if s.key in scores:
            table[(s.member, source)].append(scores[s.key])
    report = {
        "prompts": len(prompts),
        "samples": len(samples),
        "prompts_started": {m: len(ids) for m, ids in prompts_done.items()},
        "by_member_source": {
            f"{member}/{source}": {
                "samples": len(tokens[(member, source)]),
                "mean_output_tokens": round(sum(tokens[(member, source)]) / len(tokens[(member, source)]), 1),
                "scored": len(table[(member, source)]),
                "pass_rate": round(sum(table[(member, source)]) / len(table[(member, source)]), 3) if table[(member, source)] else None,
            }
            for member, source in sorted(tokens)
        },
    }
    print(json.dumps(report, indent=2))
    return 0


def command_ship(config: TrainConfig, args: argparse.Namespace) -> int:
    """Copy ``<work_dir>/router`` and ``reward`` into the package (``bestroute_lc/local/artifacts``),
    after checking that they are heads-only artifacts that load against the local pool's members."""
    import shutil

    from bestroute_lc.artifacts import read_config
    from bestroute_lc.local.default import ARTIFACTS
    from bestroute_lc.local.pool import REFERENCE, ROUTED

    for kind, source in (("router", config.router_dir), ("reward", config.reward_dir)):
        artifact = read_config(source, kind)
        if artifact.shared_encoder is None:
            raise SystemExit(f"{source}: not a heads-only artifact (reward_encoder / router_encoder: frozen, no backbone)")
        if kind == "router" and (artifact.members, artifact.reference) != ([ROUTED], REFERENCE):  # type: ignore[attr-defined]
            raise SystemExit(f"{source}: trained for {artifact.members} -> {artifact.reference}, not the local pool")  # type: ignore[attr-defined]
        size = sum(f.stat().st_size for f in source.iterdir())
        if size > 5_000_000:
            raise SystemExit(f"{source}: {size / 1e6:.1f} MB; the package ships heads-only artifacts of a few MB at most")
        target = ARTIFACTS / kind
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        for path in target.iterdir():
            path.chmod(0o644)
        print(f"{kind}: {source} -> {target} ({size / 1e6:.2f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["generate", "score", "report", "ship"])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--samples", nargs="*", default=[], help="NAME=M: samples per prompt for a member")
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    parser.add_argument("--members", nargs="*", default=[], help="only these members")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = load_config(args.config)
    commands = {"generate": command_generate, "score": command_score, "report": command_report, "ship": command_ship}
    return commands[args.command](config, args)


if __name__ == "__main__":
    raise SystemExit(main())
