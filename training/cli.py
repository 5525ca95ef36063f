"""``bestroute-train``: from a pool and a prompt set to router and reward-model artifacts.

    bestroute-train generate --config run.yaml   # draw samples (resumable)
    bestroute-train score    --config run.yaml   # ground-truth scores (resumable)
    bestroute-train reward   --config run.yaml   # train the proxy reward model
    bestroute-train labels   --config run.yaml   # exact y[k, n] with the proxy
    bestroute-train router   --config run.yaml   # train the multi-head router
    bestroute-train all      --config run.yaml   # all of the above in order
    bestroute-train calibrate --config run.yaml --target cost_reduction=0.4   # store policies (+ thresholds)
    bestroute-train evaluate --config run.yaml [--target cost_reduction=0.4]   # report on the test split (+ calibrate)
    bestroute-train evaluate --table humaneval --train-data A.jsonl.gz --test-data B.jsonl.gz --out report/
        # train on one routing table, score on another (shared-table format), no re-splitting

``evaluate`` and ``calibrate`` take ``--reranker {reward_model,code_execution,oracle,random}``
and ``--verifier {none,execution}`` (the runtime's picker and verifier); calibration chooses,
per target, among router thresholds, router with verified escalation, constant (member, n)
and verified chains on the validation split and stores a ``PolicyChoice`` per target.

Multi-GPU / multi-node: ``accelerate launch -m training.cli reward --config run.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training import pipeline
from training.config import ConfigError, load_config

STAGES = ("generate", "score", "reward", "labels", "router", "all", "calibrate", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bestroute-train", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", default=None, help="pipeline config (.json, .yaml or .yml); evaluate with --train-data: not needed")
    parser.add_argument("--overwrite", action="store_true", help="rebuild reward/, labels.jsonl, router/ if present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--target", action="append", default=[],
        help="calibrate: cost_reduction=R | max_quality_drop=PCT | reference_share=S | budget_per_1000=USD (repeatable)",
    )
    parser.add_argument("--split", default=None, choices=("train", "validation", "test"),
                        help="calibrate: default validation; evaluate: default test")
    parser.add_argument("--out", default=None, help="evaluate: report folder (default <work_dir>/report)")
    parser.add_argument("--source", action="append", default=None,
                        help="evaluate: only prompts of this source (repeatable; with split.holdout_sources: OOD)")
    parser.add_argument("--reranker", choices=("reward_model", "code_execution", "oracle", "random"), default="reward_model",
                        help="evaluate / calibrate: the best-of-n picker the runtime uses")
    parser.add_argument("--verifier", choices=("none", "execution"), default="none",
                        help="evaluate / calibrate: execution adds verified chains and router escalation (code)")
    parser.add_argument("--seed", type=int, default=None, help="evaluate: seed (default: the split's)")
    parser.add_argument("--cache-dir", default="reports/cache", help="evaluate / calibrate: visible-example execution cache")
    table = parser.add_argument_group("evaluate on routing tables (no --config)")
    table.add_argument("--table", choices=("humaneval", "gsm8k", "alpacaeval"), default=None,
                       help="which shared table's reference, prices and billing the files use")
    table.add_argument("--train-data", default=None, help="table file to train on (.jsonl[.gz], shared-table format)")
    table.add_argument("--test-data", default=None, help="table file to evaluate on (all of it: no re-splitting)")
    table.add_argument("--encoder", choices=("frozen", "finetune"), default="frozen", help="frozen: heads on cached features")
    table.add_argument("--backbone", default=None, help="local encoder dir (default all-MiniLM-L6-v2)")
    table.add_argument("--epochs", type=int, default=3)
    table.add_argument("--max-length", type=int, default=256)
    return parser


def _evaluate_tables(args: argparse.Namespace) -> int:
    """``evaluate --table T --train-data A --test-data B``: train on A, score on B."""
    from training.evaluation import experiment

    if not (args.table and args.train_data and args.test_data and args.out):
        raise ValueError("evaluate on routing tables needs --table, --train-data, --test-data and --out")
    inner = argparse.ArgumentParser()
    experiment.add_arguments(inner)
    forwarded = [
        "--train-data", args.train_data, "--test-data", args.test_data, "--reranker", args.reranker, "--verifier", args.verifier,
        "--encoder", args.encoder, "--epochs", str(args.epochs), "--max-length", str(args.max_length),
        "--cache-dir", args.cache_dir, "--seed", str(args.seed or 0),
    ] + (["--backbone", args.backbone] if args.backbone else [])
    for target in args.target:
        forwarded += ["--eval-target", target]
    inner_args = inner.parse_args(forwarded)
    inner_args.out = args.out
    inner_args.argv = "bestroute-train evaluate " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("table", args.table), ("train_data", args.train_data),
                                                  ("test_data", args.test_data), ("out", args.out)))
    print(experiment.run_from_args(inner_args, args.table))
    print(f"report -> {Path(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One INFO line per HTTP request (720+ in a generate run) is noise: requests log at DEBUG.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "mistralai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    start = time.perf_counter()
    if args.stage != "generate":
        from training.threads import configure_torch_threads

        configure_torch_threads()
    if args.stage == "evaluate" and args.config is None:
        try:
            code = _evaluate_tables(args)
        except (ValueError, FileExistsError, RuntimeError) as exc:
            print(f"bestroute-train {args.stage}: {exc}", file=sys.stderr)
            return 2
        print(f"done in {time.perf_counter() - start:.1f} s")
        return code
    if args.config is None:
        print(f"bestroute-train {args.stage}: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bestroute-train {args.stage}: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    try:
        if args.stage == "generate":
            report = pipeline.stage_generate(config, progress=progress)
            print(report.summary())
            return 0 if report.complete else 1
        if args.stage == "score":
            print(f"scored {pipeline.stage_score(config, progress=progress)} sample(s) -> {config.scores_path}")
        elif args.stage == "reward":
            print(f"reward model -> {pipeline.stage_reward(config, progress=progress, overwrite=args.overwrite)}")
        elif args.stage == "labels":
            print(f"labels -> {pipeline.stage_labels(config, progress=progress, overwrite=args.overwrite)}")
        elif args.stage == "calibrate":
            from training.evaluation.commands import calibrate_store

            results = calibrate_store(
                config, [pipeline.parse_target(t) for t in args.target], args.split or "validation",
                reranker=args.reranker, verifier=args.verifier, cache_dir=Path(args.cache_dir),
            )
            for key, result in results.items():
                _print_calibration(key, result)
            print(f"stored in {config.router_dir / 'config.json'}")
        elif args.stage == "evaluate":
            from training.evaluation.commands import calibrate_store, evaluate_store

            targets = [pipeline.parse_target(t) for t in args.target]
            out = evaluate_store(
                config, Path(args.out) if args.out else None, args.split or "test", sources=args.source,
                reranker=args.reranker, verifier=args.verifier, targets=targets, seed=args.seed, cache_dir=Path(args.cache_dir),
            )
            print(f"report -> {out / 'report.md'}")
            if targets:  # one command: report and calibrated artifact (policies from the validation split)
                results = calibrate_store(config, targets, reranker=args.reranker, verifier=args.verifier, cache_dir=Path(args.cache_dir))
                for key, result in results.items():
                    _print_calibration(key, result)
                print(f"stored in {config.router_dir / 'config.json'}")
        elif args.stage == "router":
            print(f"router -> {pipeline.stage_router(config, progress=progress, overwrite=args.overwrite)}")
        else:
            outputs = pipeline.run_all(config, progress=progress, overwrite=args.overwrite)
            print(outputs["generation"].summary())
            print(f"reward model -> {outputs['reward']}\nlabels -> {outputs['labels']}\nrouter -> {outputs['router']}")
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"bestroute-train {args.stage}: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _print_calibration(key: str, result: dict) -> None:
    threshold = "no router threshold meets it" if result["threshold"] is None else f"router threshold {result['threshold']:.4g}"
    print(
        f"{key}: {result['policy']} (cost reduction {result['cost_reduction']:.1%}, quality drop "
        f"{result['quality_drop_pct']:.2f} %, reference share {result['reference_share']:.1%}, "
        f"${result['cost_per_1000']:.4f} per 1,000 calls on {result['prompts']} {result['split']} prompts); {threshold}"
    )


if __name__ == "__main__":
    sys.exit(main())
