"""How much of a perfect picker's gain does the code-execution picker keep on HumanEval?

For every model in the HumanEval routing table and every n in {1, 2, 3, 5, 10}, this
draws random subsets of n of the model's samples per problem (``--draws`` per problem,
fixed ``--seed``) and measures the pass rate (official tests, the ``passed`` field) of

* **random**: picking one of the n samples at random (the subset's mean pass rate);
* **picker**: :class:`~bestroute_lc.rerankers.code_execution.CodeExecutionReranker`
  with only the examples visible in the prompt and no tiebreaker (ties go to the
  earliest sample in the subset's random order, as in the engine);
* **oracle**: a perfect picker (the subset contains a passing sample).

and reports the fraction of the oracle's gain the picker keeps:
``(picker - random) / (oracle - random)``.

Each sample is executed once: the number of visible examples a sample passes does not
depend on which other samples are in the subset, so scoring every subset with the
reranker would give the same picks, only slower.

The data (``humaneval_routing.dev.jsonl.gz``, see ``shared/data/README.md``) is read
from outside the repository and never copied into it.

Usage::

    python benchmarks/code_picker_humaneval.py [--data DIR] [--out results.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
try:
    from bestroute_lc.rerankers.base import argmax_first
    from bestroute_lc.rerankers.code_execution import CodeExecutionReranker, extract_examples
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))
    from bestroute_lc.rerankers.base import argmax_first
    from bestroute_lc.rerankers.code_execution import CodeExecutionReranker, extract_examples

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
TABLE_FILE = Path("humaneval_routing") / "humaneval_routing.dev.jsonl.gz"
SUBSET_SIZES = (1, 2, 3, 5, 10)


def load_rows(data_dir: Path) -> list[dict]:
    path = data_dir / TABLE_FILE
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def execute_all_samples(rows: list[dict], reranker: CodeExecutionReranker, models: list[str]) -> dict:
    """``{(task_id, model): (visible_passes, visible_total, official_passed)}`` arrays."""
    outcomes = {}
    jobs = [(row, model) for row in rows for model in models if model in row["responses"]]
    for row, model in tqdm(jobs, desc="executing samples", unit="problem x model"):
        samples = row["responses"][model]
        results = reranker.execute(row["prompt"], [s["text"] for s in samples])
        outcomes[(row["task_id"], model)] = (
            np.array([r.passed for r in results], dtype=float),
            np.array([r.total for r in results], dtype=int),
            np.array([bool(s["passed"]) for s in samples], dtype=bool),
        )
    return outcomes


def simulate(outcomes: dict, models: list[str], sizes: tuple[int, ...], draws: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    table = []
    for model in models:
        keys = sorted(k for k in outcomes if k[1] == model)
        for n in sizes:
            random_pick, picker, oracle, problems = [], [], [], 0
            for key in keys:
                visible_passes, _total, passed = outcomes[key]
                if len(passed) < n:
                    continue
                problems += 1
                for _ in range(draws):
                    subset = rng.permutation(len(passed))[:n]  # random order: ties go to a random sample
                    random_pick.append(passed[subset].mean())
                    picker.append(passed[subset[argmax_first(list(visible_passes[subset]))]])
                    oracle.append(passed[subset].any())
            r, p, o = (float(np.mean(x)) if x else float("nan") for x in (random_pick, picker, oracle))
            gain_kept = (p - r) / (o - r) if o - r > 1e-12 else None
            table.append(
                {
                    "model": model,
                    "n": n,
                    "problems": problems,
                    "random": r,
                    "picker": p,
                    "oracle": o,
                    "gain_kept": gain_kept,
                }
            )
    return table


def extraction_stats(rows: list[dict], outcomes: dict, models: list[str]) -> dict:
    """How many prompts yield examples, and how well "passes all visible examples"
    agrees with the official tests (a sanity check on extraction and execution)."""
    counts = [len(extract_examples(row["prompt"])) for row in rows]
    agreement = {}
    for model in models:
        passes_all_if_passed, passes_all_if_failed = [], []
        for (_task_id, m), (visible, total, passed) in outcomes.items():
            if m != model or total.max(initial=0) == 0:
                continue
            passes_all = visible == total
            passes_all_if_passed += list(passes_all[passed])
            passes_all_if_failed += list(passes_all[~passed])
        agreement[model] = {
            "p_all_visible_given_passed": float(np.mean(passes_all_if_passed)) if passes_all_if_passed else None,
            "p_all_visible_given_failed": float(np.mean(passes_all_if_failed)) if passes_all_if_failed else None,
        }
    return {
        "prompts": len(rows),
        "prompts_with_examples": sum(c > 0 for c in counts),
        "examples_per_prompt_mean": float(np.mean(counts)) if counts else 0.0,
        "agreement": agreement,
    }


def markdown_table(table: list[dict]) -> str:
    lines = [
        "| model | n | random | code-exec picker | oracle | oracle gain kept |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        kept = "n/a" if row["gain_kept"] is None else f"{100 * row['gain_kept']:.0f} %"
        rates = " | ".join(f"{row[column]:.3f}" for column in ("random", "picker", "oracle"))
        lines.append(f"| {row['model']} | {row['n']} | {rates} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="the shared data directory")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (and the table as .md beside it)")
    parser.add_argument("--draws", type=int, default=20, help="random subsets per problem and n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="candidates executed in parallel")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per candidate")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (quick runs)")
    parser.add_argument("--models", nargs="*", help="default: every model in the table")
    args = parser.parse_args(argv)

    rows = load_rows(args.data)[: args.limit]
    models = args.models or sorted({m for row in rows for m in row["responses"]})
    reranker = CodeExecutionReranker(timeout_s=args.timeout, max_workers=args.workers)

    started = time.perf_counter()
    outcomes = execute_all_samples(rows, reranker, models)
    execution_s = time.perf_counter() - started
    table = simulate(outcomes, models, SUBSET_SIZES, args.draws, args.seed)
    stats = extraction_stats(rows, outcomes, models)

    print()
    print(markdown_table(table))
    print()
    print(
        f"{stats['prompts_with_examples']}/{stats['prompts']} prompts with visible examples "
        f"({stats['examples_per_prompt_mean']:.1f} per prompt on average); "
        f"executed {sum(len(o[2]) for o in outcomes.values())} samples in {execution_s:.0f} s"
    )
    for model, agreement in stats["agreement"].items():
        print(
            f"  {model}: passes every visible example in {agreement['p_all_visible_given_passed']:.1%} of "
            f"samples that pass the official tests, {agreement['p_all_visible_given_failed']:.1%} of those that fail"
        )

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "table": table,
            "extraction": stats,
            "settings": {
                "draws": args.draws,
                "seed": args.seed,
                "timeout_s": args.timeout,
                "sizes": SUBSET_SIZES,
                "problems": len(rows),
                "data": str(args.data / TABLE_FILE),
            },
            "execution_s": execution_s,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown_table(table) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
