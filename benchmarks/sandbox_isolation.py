"""What the isolation layer costs: time per candidate check with and without it.

On the HumanEval routing table (``../shared/data``), a fixed random sample of recorded
answers is executed, alternating isolated and unisolated runs of the same candidate so
that machine noise hits both alike:

* **visible examples** (the code-execution reranker's work): one
  :func:`~bestroute_lc.sandbox.run_in_sandbox` call per answer against the examples in
  the prompt;
* **hidden tests** (training's ``code_tests`` scorer): one
  :func:`~bestroute_lc.sandbox.run_tests_in_sandbox` call per answer, which runs the
  candidate and the tests in two sandboxes and relays plain values.

"Unisolated" is the same harness started as a plain subprocess (``allow_unisolated``
with the isolation layer switched off), which is what every check cost before the
isolation layer existed. The scorer's verdicts are also compared with the table's
recorded ``passed`` field.

Usage::

    python benchmarks/sandbox_isolation.py [--samples 200] [--seed 0] [--out results.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bestroute_lc.isolation import BWRAP_ENV, isolation_status
from bestroute_lc.rerankers.code_execution import (
    _called_names,
    _top_level_function_names,
    build_candidate_program,
    extract_examples,
    extract_prompt_code,
)
from bestroute_lc.sandbox import SandboxLimits, run_in_sandbox, run_tests_in_sandbox
from training.scorers import CodeTestScorer

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "humaneval_routing" / "humaneval_routing.dev.jsonl.gz"


class _Unisolated:
    """Switch the isolation layer off for the calls inside (a missing bwrap binary)."""

    def __enter__(self):
        self.saved = os.environ.get(BWRAP_ENV)
        os.environ[BWRAP_ENV] = "/nonexistent/bwrap"
        logging.getLogger("bestroute_lc.isolation").setLevel(logging.ERROR)  # one warning per call otherwise

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop(BWRAP_ENV, None)
        else:
            os.environ[BWRAP_ENV] = self.saved


def sample_answers(path: Path, count: int, seed: int) -> list[tuple[dict, str, bool]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    pairs = [(row, sample["text"], bool(sample["passed"])) for row in rows for samples in row["responses"].values() for sample in samples]
    random.Random(seed).shuffle(pairs)
    return pairs[:count]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    status = isolation_status()
    if not status.available:
        raise SystemExit(f"the isolation layer is not available here: {status.reason}")
    answers = sample_answers(args.data, args.samples, args.seed)
    limits = SandboxLimits(timeout_s=10.0, check_timeout_s=5.0)
    timings: dict[str, list[float]] = {k: [] for k in ("examples_isolated", "examples_plain", "tests_isolated", "tests_plain")}
    agreement = {"isolated": 0, "plain": 0, "same_verdict": 0, "examples_same_passes": 0}
    for row, text, recorded in tqdm(answers, desc="candidates"):
        prompt = row["prompt"]
        prompt_code = extract_prompt_code(prompt)
        examples = extract_examples(prompt)
        called = set().union(*(_called_names(e.expression) for e in examples)) if examples else set()
        defined = _top_level_function_names(prompt_code) if prompt_code else set()
        entry = row["entry_point"]
        example_program = build_candidate_program(prompt_code, text, (called & defined) or called or {entry})
        test_program = build_candidate_program(prompt_code, text, [entry])
        test_code = CodeTestScorer._test_code(row["test"], entry)
        passes = {}
        verdicts = {}
        for isolated in (True, False):
            context = _Unisolated() if not isolated else None
            if context:
                context.__enter__()
            try:
                tag = "isolated" if isolated else "plain"
                if examples:
                    start = time.perf_counter()
                    passes[tag] = run_in_sandbox(example_program, examples, limits=limits, allow_unisolated=not isolated).passed
                    timings[f"examples_{tag}"].append(time.perf_counter() - start)
                start = time.perf_counter()
                result = run_tests_in_sandbox(
                    test_program, test_code, [entry], test_context=prompt_code or (), limits=limits, allow_unisolated=not isolated
                )
                timings[f"tests_{tag}"].append(time.perf_counter() - start)
                verdicts[tag] = result.passed
                agreement[tag] += int(result.passed == recorded)
            finally:
                if context:
                    context.__exit__(None, None, None)
        agreement["same_verdict"] += int(verdicts["isolated"] == verdicts["plain"])
        agreement["examples_same_passes"] += int(passes.get("isolated") == passes.get("plain"))

    def summary(values: list[float]) -> dict[str, float]:
        return {"mean_ms": 1000 * statistics.fmean(values), "median_ms": 1000 * statistics.median(values), "n": len(values)}

    results = {
        "mechanism": status.mechanism,
        "samples": len(answers),
        "seed": args.seed,
        "timings": {k: summary(v) for k, v in timings.items() if v},
        "ratio_examples": statistics.fmean(timings["examples_isolated"]) / statistics.fmean(timings["examples_plain"]),
        "ratio_tests": statistics.fmean(timings["tests_isolated"]) / statistics.fmean(timings["tests_plain"]),
        "agreement_with_recorded_passed": {k: agreement[k] / len(answers) for k in ("isolated", "plain")},
        "same_verdict_isolated_vs_plain": agreement["same_verdict"] / len(answers),
        "same_example_passes_isolated_vs_plain": agreement["examples_same_passes"] / len(answers),
    }
    lines = [
        "| check | isolated (ms, mean / median) | unisolated (ms, mean / median) | ratio of means |",
        "|---|---:|---:|---:|",
    ]
    for kind, ratio in (("examples", results["ratio_examples"]), ("tests", results["ratio_tests"])):
        iso, plain = results["timings"][f"{kind}_isolated"], results["timings"][f"{kind}_plain"]
        label = "visible examples (reranker)" if kind == "examples" else "hidden tests (scorer)"
        lines.append(
            f"| {label} | {iso['mean_ms']:.0f} / {iso['median_ms']:.0f} | {plain['mean_ms']:.0f} / {plain['median_ms']:.0f} | {ratio:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(json.dumps({k: v for k, v in results.items() if k != "timings"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
