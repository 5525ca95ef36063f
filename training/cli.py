"""``bestroute-train``: from a pool and a prompt set to router and reward-model artifacts.

    bestroute-train generate --config run.yaml   # draw samples (resumable)
    bestroute-train score    --config run.yaml   # ground-truth scores (resumable)
    bestroute-train reward   --config run.yaml   # train the proxy reward model
    bestroute-train labels   --config run.yaml   # exact y[k, n] with the proxy
    bestroute-train router   --config run.yaml   # train the multi-head router
    bestroute-train all      --config run.yaml   # all of the above in order
    bestroute-train calibrate --config run.yaml --target cost_reduction=0.4   # store thresholds
    bestroute-train evaluate --config run.yaml [--target cost_reduction=0.4]   # report on the test split (+ calibrate)

Multi-GPU / multi-node: ``accelerate launch -m training.cli reward --config run.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training import pipeline
from training.config import load_config

STAGES = ("generate", "score", "reward", "labels", "router", "all", "calibrate", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bestroute-train", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", required=True, help="pipeline config (.json, .yaml or .yml)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    progress = not args.no_progress
    start = time.perf_counter()
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
            results = pipeline.stage_calibrate(config, [pipeline.parse_target(t) for t in args.target], args.split or "validation")
            for key, result in results.items():
                print(
                    f"{key}: threshold {result['threshold']:.2f} (cost reduction {result['cost_reduction']:.1%}, "
                    f"quality drop {result['quality_drop_pct']:.2f} %, reference share {result['reference_share']:.1%}, "
                    f"${result['cost_per_1000']:.4f} per 1,000 calls on {result['prompts']} {result['split']} prompts)"
                )
            print(f"stored in {config.router_dir / 'config.json'}")
        elif args.stage == "evaluate":
            out = pipeline.stage_evaluate(config, Path(args.out) if args.out else None, args.split or "test", sources=args.source)
            print(f"report -> {out / 'report.md'}")
            if args.target:  # one command: report and calibrated artifact (thresholds from the validation split)
                for key, result in pipeline.stage_calibrate(config, [pipeline.parse_target(t) for t in args.target]).items():
                    print(f"{key}: threshold {result['threshold']:.2f} stored in {config.router_dir / 'config.json'}")
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


if __name__ == "__main__":
    sys.exit(main())
