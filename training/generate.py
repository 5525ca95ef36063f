"""Stage 1 of the pipeline: draw samples from every pool member for every prompt.

    prompts.jsonl -> generate_samples -> samples.jsonl (SampleRecord per (prompt, member, index))

For every prompt and every member (the reference included) ``samples_per_member``
answers are drawn (the paper uses 20) through the same LangChain objects, timeouts,
retries and detached callbacks the runtime uses (``bestroute_lc.sampling.draw_samples``).

Resumable: keys already in the store are skipped and only the missing sample indices
are requested; every sample is appended as soon as its request returns, so a killed run
loses at most the requests in flight and a rerun duplicates nothing.

Billing attribution per SampleRecord:

* PARALLEL members: one request per sample; the sample carries its own request's usage
  and billed cost.
* NATIVE members: one request with ``n`` for up to ``request_n`` missing samples. The
  prompt is billed once, so its input tokens and input cost are split evenly over the
  ``n`` choices requested. The OpenAI protocol reports usage per *request*, not per
  choice (LangChain copies the request's usage onto every choice), so the output tokens
  and output cost are split evenly over the non-empty choices received (an empty choice
  produces no output tokens). Integer token splits spread the remainder over the first
  samples so the records sum to what was billed.

``GenerationReport.cost_usd`` is everything billed in the run (failed-but-billed choices
included); the records' ``cost_usd`` sum to at most that.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from bestroute_lc.conversation import render_candidate
from bestroute_lc.pool import NBilling, Pool, PoolMember
from bestroute_lc.sampling import Attempt, draw_samples
from bestroute_lc.sync_bridge import run_sync
from training.records import (
    PromptRecord,
    RecordError,
    RecordStore,
    SampleRecord,
    read_records,
)

Key = tuple[str, str, int]

__all__ = ["GenerationReport", "agenerate_samples", "generate_samples", "load_prompts"]


# -- prompts ------------------------------------------------------------------------------
def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read ``prompts.jsonl``; a malformed row or a repeated id raises ``RecordError``
    naming the file and line."""
    path = Path(path)
    prompts: list[PromptRecord] = []
    first_line: dict[str, int] = {}
    # The 1-based line of each non-blank row, counted the way ``read_records`` counts.
    with path.open(encoding="utf-8") as handle:
        line_numbers = [n for n, line in enumerate(handle, start=1) if line.strip()]
    for record, line_number in zip(read_records(path, PromptRecord), line_numbers):
        if record.id in first_line:
            raise RecordError(f"{path}:{line_number}: duplicate prompt id {record.id!r} (first on line {first_line[record.id]})")
        first_line[record.id] = line_number
        prompts.append(record)
    if not prompts:
        raise RecordError(f"{path}: no prompts (the file is empty)")
    return prompts


# -- report -------------------------------------------------------------------------------
@dataclass
class GenerationReport:
    #: Samples appended to the store in this run.
    written: int = 0
    #: Samples already in the store when the run started (not requested again).
    skipped: int = 0
    #: member -> error -> number of samples that failed with it (after the member's retries).
    failed: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Keys (prompt_id, member, sample_index) still absent from the store at the end; a
    #: rerun requests exactly these.
    missing: list[Key] = field(default_factory=list)
    wall_s: float = 0.0
    #: Billed USD of every request of this run (failed-but-billed choices included).
    cost_usd: float = 0.0
    written_by_member: dict[str, int] = field(default_factory=dict)

    @property
    def failed_count(self) -> int:
        return sum(sum(errors.values()) for errors in self.failed.values())

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        lines = [
            f"written {self.written}, skipped {self.skipped}, failed {self.failed_count}, missing {len(self.missing)}, "
            + f"billed ${self.cost_usd:.6f}, {self.wall_s:.1f} s"
        ]
        for member, errors in sorted(self.failed.items()):
            for error, count in sorted(errors.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {member}: {count} x {error}")
        if self.missing:
            lines.append("rerun to retry the missing samples")
        return "\n".join(lines)


# -- sampling -----------------------------------------------------------------------------
def _error_of(attempt: Attempt, requested: int) -> str:
    """Why an attempt came back short."""
    if attempt.causes:
        return "; ".join(attempt.causes)
    return f"provider returned {attempt.received} of {requested} sample(s)"


def _split_int(total: int, parts: int) -> list[int]:
    base, extra = divmod(max(0, int(total)), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _records(
    prompt_id: str, member: PoolMember, indices: Sequence[int], samples: Sequence[AIMessage], attempt: Attempt
) -> list[SampleRecord]:
    """SampleRecords for ``samples`` (one request of ``len(indices)`` choices), with
    usage and cost attributed as the module doc says."""
    received = samples[: len(indices)]
    if not received:
        return []
    usage = attempt.usage or {}
    requested = len(indices)
    input_tokens = _split_int(usage.get("input_tokens", 0) or 0, requested)
    output_tokens = _split_int(usage.get("output_tokens", 0) or 0, len(received))
    input_cost = attempt.input_cost_usd / requested
    output_cost = attempt.output_cost_usd / len(received)
    return [
        SampleRecord(
            prompt_id=prompt_id,
            member=member.name,
            sample_index=index,
            text=render_candidate(message),
            input_tokens=input_tokens[i],
            output_tokens=output_tokens[i],
            cost_usd=input_cost + output_cost,
        )
        for i, (index, message) in enumerate(zip(indices, received))
    ]


@dataclass
class _Job:
    prompt: PromptRecord
    indices: list[int]


def _jobs(prompts: Sequence[PromptRecord], member: PoolMember, missing: Mapping[str, list[int]], request_n: int | None) -> Iterator[_Job]:
    for prompt in prompts:
        indices = missing.get(prompt.id) or []
        if member.n_billing is NBilling.NATIVE:
            size = request_n or len(indices) or 1
        else:
            size = 1
        for start in range(0, len(indices), size):
            yield _Job(prompt, indices[start : start + size])


class _Progress:
    """tqdm over samples with per-member ``written/target`` counts in the postfix."""

    def __init__(self, total: int, targets: Mapping[str, int], enabled: bool) -> None:
        self.targets = dict(targets)
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="samples", unit="sample", dynamic_ncols=True)
            self._postfix()

    def _postfix(self) -> None:
        assert self.bar is not None
        postfix = {}
        for name, target in self.targets.items():
            text = f"{self.done[name]}/{target}"
            if self.failed[name]:
                text += f" ({self.failed[name]} failed)"
            postfix[name] = text
        self.bar.set_postfix(postfix, refresh=False)

    def update(self, member: str, written: int, failed: int) -> None:
        self.done[member] += written
        self.failed[member] += failed
        if self.bar is not None:
            self._postfix()
            self.bar.update(written + failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- generation ---------------------------------------------------------------------------
def _samples_by_member(pool: Pool, samples_per_member: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(samples_per_member, Mapping):
        unknown = sorted(set(samples_per_member) - set(pool.names))
        missing = sorted(set(pool.names) - set(samples_per_member))
        if unknown or missing:
            raise ValueError(f"samples_per_member: unknown member(s) {unknown}, missing member(s) {missing}; pool: {pool.names}")
        counts = {name: int(samples_per_member[name]) for name in pool.names}
    else:
        counts = {name: int(samples_per_member) for name in pool.names}
    negative = {name: m for name, m in counts.items() if m < 0}
    if negative:
        raise ValueError(f"samples_per_member must be >= 0, got {negative}")
    return counts


async def agenerate_samples(
    prompts: Sequence[PromptRecord],
    pool: Pool,
    store: RecordStore[SampleRecord],
    samples_per_member: int | Mapping[str, int],
    *,
    max_concurrency_per_member: int = 4,
    request_n: int | None = None,
    progress: bool = True,
    call_kwargs: Mapping[str, Any] | None = None,
) -> GenerationReport:
    """Draw the samples missing from ``store``; see the module doc.

    ``samples_per_member``: one m for every member, or m by member name (every member
    named). ``request_n``: most choices in one native-n request (default: all missing
    samples of a (prompt, member) at once). ``call_kwargs``: extra arguments for every
    request (e.g. ``temperature``, ``max_tokens``), translated per member like at
    runtime; a prompt's own ``max_tokens`` overrides the run's for its requests.
    """
    counts = _samples_by_member(pool, samples_per_member)
    if max_concurrency_per_member < 1:
        raise ValueError(f"max_concurrency_per_member must be >= 1, got {max_concurrency_per_member}")
    if request_n is not None and request_n < 1:
        raise ValueError(f"request_n must be >= 1 or None, got {request_n}")
    ids = [p.id for p in prompts]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise ValueError(f"duplicate prompt ids: {repeated[:10]}")

    start = time.perf_counter()
    report = GenerationReport()
    kwargs = dict(call_kwargs or {})

    # What is missing, per member and prompt.
    missing: dict[str, dict[str, list[int]]] = {}
    for member in pool:
        per_prompt: dict[str, list[int]] = {}
        for prompt in prompts:
            wanted = counts[member.name]
            indices = [i for i in range(wanted) if (prompt.id, member.name, i) not in store]
            report.skipped += wanted - len(indices)
            if indices:
                per_prompt[prompt.id] = indices
        missing[member.name] = per_prompt
    to_draw = {name: sum(map(len, per_prompt.values())) for name, per_prompt in missing.items()}
    bar = _Progress(sum(to_draw.values()), to_draw, progress)
    failed: dict[str, Counter[str]] = defaultdict(Counter)
    written: Counter[str] = Counter()
    messages_cache: dict[str, list[BaseMessage]] = {}

    async def run_job(member: PoolMember, job: _Job) -> None:
        messages = messages_cache.get(job.prompt.id)
        if messages is None:
            messages = messages_cache[job.prompt.id] = job.prompt.chat_messages()
        job_kwargs = {**kwargs, "max_tokens": job.prompt.max_tokens} if job.prompt.max_tokens else kwargs
        # Data generation wants every sample: no circuit breaker (a rerun fills what failed).
        samples, attempt = await draw_samples(member, len(job.indices), messages, None, job_kwargs, respect_cooldown=False)
        report.cost_usd += attempt.cost_usd
        records = _records(job.prompt.id, member, job.indices, samples, attempt)
        added = store.append(records) if records else 0
        written[member.name] += added
        short = len(job.indices) - len(records)
        if short:
            failed[member.name][_error_of(attempt, len(job.indices))] += short
        bar.update(member.name, added, short)

    async def worker(member: PoolMember, jobs: Iterator[_Job]) -> None:
        # ``max_concurrency_per_member`` workers share one job iterator per member: at
        # most that many requests to the member in flight, and jobs are created lazily.
        for job in jobs:
            await run_job(member, job)

    tasks: list[asyncio.Task[None]] = []
    try:
        for member in pool:
            jobs = _jobs(prompts, member, missing[member.name], request_n)
            tasks += [asyncio.ensure_future(worker(member, jobs)) for _ in range(max_concurrency_per_member)]
        await asyncio.gather(*tasks)
    finally:
        # Cancelled or a worker raised: stop the others; what was appended stays.
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()

    report.written = sum(written.values())
    report.written_by_member = {name: written[name] for name in pool.names}
    report.failed = {name: dict(errors) for name, errors in failed.items() if errors}
    report.missing = [
        (prompt.id, name, i)
        for name, per_prompt in missing.items()
        for prompt in prompts
        for i in per_prompt.get(prompt.id, [])
        if (prompt.id, name, i) not in store
    ]
    report.wall_s = time.perf_counter() - start
    return report


def generate_samples(
    prompts: Sequence[PromptRecord],
    pool: Pool,
    store: RecordStore[SampleRecord],
    samples_per_member: int | Mapping[str, int],
    *,
    max_concurrency_per_member: int = 4,
    request_n: int | None = None,
    progress: bool = True,
    call_kwargs: Mapping[str, Any] | None = None,
) -> GenerationReport:
    """Synchronous ``agenerate_samples``: ``asyncio.run`` where no loop is running, else
    (Jupyter, inside an async framework) on ``bestroute_lc.sync_bridge``'s background loop."""
    coroutine = agenerate_samples(
        prompts,
        pool,
        store,
        samples_per_member,
        max_concurrency_per_member=max_concurrency_per_member,
        request_n=request_n,
        progress=progress,
        call_kwargs=call_kwargs,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)  # Ctrl-C cancels the workers; written samples stay
    return run_sync(coroutine)  # inside a running loop: the package's background loop
