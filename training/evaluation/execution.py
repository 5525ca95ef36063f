"""Visible-example execution of every recorded code sample, once, cached on disk.

The code-execution picker and the execution verifier both need, per recorded sample, how
many of the examples visible in the prompt it passes (``CodeExecutionReranker.execute``:
the prompt's doctests / ``f(x) == y`` lines, run in the isolated sandbox, judged in this
process). That is the expensive part of evaluating them (one sandboxed subprocess per
sample: about 0.1 s each on a 2-core machine), and it does not depend on any trained
model, so it is computed once per table and kept in a cache file.

The prompt text given to the reranker is the rendered conversation (``"user: <prompt>"``
for a one-turn prompt), exactly what the engine passes at run time; identical sample texts
of a prompt run once.

Cache: ``<cache_dir>/execution-<key>.json.gz`` where ``key`` hashes the table fingerprint
(given by the caller, e.g. the sha256 of the table file) and the sandbox settings. Inside,
per prompt: a fingerprint of the examples extracted from its prompt text, and per distinct
sample text (sha256) the pair ``[passed, total]``. On load the examples are extracted again
(cheap) and a prompt's entries are reused only if its fingerprint still matches, so a change
to the example extraction reruns exactly the prompts it affects. A change to the sandbox's
judging is not detected: delete the file (or pass another ``cache_dir``) after one.
Timed-out runs are retried once, alone, before they are recorded as failures.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Bumped when the cache layout or meaning changes.
CACHE_VERSION = 1


@dataclass(frozen=True)
class ExecutionSettings:
    """What the runs depend on besides the texts (the runtime's defaults)."""

    timeout_s: float = 5.0
    max_examples: int = 32

    def key(self) -> str:
        return f"t{self.timeout_s:g}-e{self.max_examples}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def examples_fingerprint(prompt_text: str, max_examples: int = 32) -> str:
    """sha256 of the examples ``extract_examples`` finds in ``prompt_text`` ("" if none)."""
    from bestroute_lc.rerankers.code_execution import extract_examples

    examples = extract_examples(prompt_text, max_examples=max_examples)
    if not examples:
        return ""
    return _sha(json.dumps([[e.expression, e.expected, e.setup] for e in examples]))


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (the table fingerprint of a routing table)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, table_fingerprint: str, settings: ExecutionSettings) -> Path:
    key = _sha(f"v{CACHE_VERSION}|{table_fingerprint}|{settings.key()}")[:20]
    return Path(cache_dir) / f"execution-{key}.json.gz"


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        logger.warning("execution cache %s unreadable (%s); recomputing", path, exc)
        return {}
    return data.get("prompts", {}) if data.get("version") == CACHE_VERSION else {}


def _save(path: Path, prompts: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        json.dump({"version": CACHE_VERSION, **meta, "prompts": prompts}, handle, sort_keys=True)
    os.replace(tmp, path)


Runner = Callable[[str, Sequence[str]], Sequence[tuple[int, int, bool]]]


def sandbox_runner(settings: ExecutionSettings, max_workers: int | None = None) -> Runner:
    """(prompt, candidates) -> [(passed, total, timed_out)] with ``CodeExecutionReranker.execute``
    (isolated sandbox; fails closed without the isolation layer)."""
    from bestroute_lc.isolation import require_isolation
    from bestroute_lc.rerankers.code_execution import CodeExecutionReranker

    require_isolation(False, what="recorded code samples (evaluation)")
    reranker = CodeExecutionReranker(timeout_s=settings.timeout_s, max_examples=settings.max_examples, max_workers=max_workers)

    def run(prompt: str, candidates: Sequence[str]) -> list[tuple[int, int, bool]]:
        return [(r.passed, r.total, r.timed_out) for r in reranker.execute(prompt, list(candidates))]

    return run


def execute_samples(
    prompts: Mapping[str, str],
    texts: Mapping[tuple[str, str], Sequence[str]],
    *,
    cache_dir: str | Path | None,
    table_fingerprint: str,
    settings: ExecutionSettings = ExecutionSettings(),
    runner: Runner | None = None,
    max_workers: int | None = None,
    progress: bool = False,
    save_every_s: float = 30.0,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Visible-example results of every sample: ``{(prompt_id, member): (passed [m], total [m])}``.

    ``prompts``: prompt id -> the text the reranker sees (the rendered conversation).
    ``texts``: (prompt id, member) -> the recorded sample texts. ``cache_dir`` None: no cache.
    ``runner``: replaces the sandbox (tests).
    """
    settings = settings or ExecutionSettings()
    path = cache_file(cache_dir, table_fingerprint, settings) if cache_dir is not None else None
    cached = _load(path) if path is not None else {}
    run = runner or sandbox_runner(settings, max_workers)
    store: dict[str, dict] = dict(cached)  # other prompts' entries are kept
    todo: list[tuple[str, list[str]]] = []
    for prompt_id, prompt_text in prompts.items():
        fingerprint = examples_fingerprint(prompt_text, settings.max_examples)
        entry = cached.get(prompt_id)
        if not entry or entry.get("examples") != fingerprint:
            entry = {"examples": fingerprint, "results": {}}
        store[prompt_id] = entry
        wanted = {_sha(t): t for (pid, _), samples in texts.items() if pid == prompt_id for t in samples}
        missing = [t for h, t in wanted.items() if h not in entry["results"]]
        if not fingerprint:  # no examples: nothing runs, every sample passes 0 of 0
            for h in wanted:
                entry["results"][h] = [0, 0]
        elif missing:
            todo.append((prompt_id, missing))
    meta = {"table": table_fingerprint, "settings": settings.key()}
    if todo:
        total = sum(len(m) for _, m in todo)
        logger.info("executing %d distinct samples of %d prompts (cache: %s)", total, len(todo), path)
        started = last_save = time.monotonic()
        done = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="visible examples", unit="sample")
        for prompt_id, missing in todo:
            results = list(run(prompts[prompt_id], missing))
            retry = [i for i, r in enumerate(results) if r[2]]
            if retry:  # a timeout under load is not a verdict: once more, alone
                again = list(run(prompts[prompt_id], [missing[i] for i in retry]))
                for i, r in zip(retry, again):
                    results[i] = r
            for text, (passed, count, _) in zip(missing, results):
                store[prompt_id]["results"][_sha(text)] = [int(passed), int(count)]
            done += len(missing)
            if bar is not None:
                bar.update(len(missing))
            if path is not None and time.monotonic() - last_save > save_every_s:
                _save(path, store, meta)
                last_save = time.monotonic()
        if bar is not None:
            bar.close()
        logger.info("executed %d samples in %.0f s", done, time.monotonic() - started)
        if path is not None:
            _save(path, store, meta)
    out = {}
    for (prompt_id, member), samples in texts.items():
        results = store[prompt_id]["results"]
        pairs = [results[_sha(t)] for t in samples]
        out[(prompt_id, member)] = (np.asarray([p for p, _ in pairs], float), np.asarray([t for _, t in pairs], float))
    return out
