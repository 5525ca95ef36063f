"""Train and evaluate on a table of recorded outputs (e.g. the shared routing tables),
over several random splits: the proxy reward model and the router are trained on each
split's training prompts, the threshold sweep and the baselines run on its test prompts.

    python -m training.evaluation.experiment humaneval --seeds 0 1 2 --out reports/humaneval

Small tables (HumanEval has 107 problems) give noisy numbers; the aggregate reports the
mean ± standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bestroute_lc.conversation import RenderedConversation
from bestroute_lc.reward import RewardPredictor
from bestroute_lc.router import RouterPredictor
from training.dataset import MemberSamples, PromptData
from training.evaluation import shared_data
from training.evaluation.baselines import default_baselines, run_baselines
from training.evaluation.from_store import router_probabilities
from training.evaluation.outcomes import EvalSet
from training.evaluation.report import Report, aggregate, aggregate_tables
from training.evaluation.sweep import sweep
from training.loop import FitConfig
from training.records import PromptRecord
from training.split import SplitConfig, stratified_split
from training.train_reward import train_reward_model
from training.train_router import prompt_labels, router_examples, train_router

logger = logging.getLogger(__name__)


@dataclass
class TableData:
    eval_set: EvalSet
    data: dict[str, PromptData]
    texts: dict[tuple[str, str], list[str]]

    def subset(self, prompt_ids: list[str]) -> TableData:
        keep = set(prompt_ids)
        return TableData(
            self.eval_set.subset(prompt_ids),
            {k: v for k, v in self.data.items() if k in keep},
            {k: v for k, v in self.texts.items() if k[0] in keep},
        )


def load_table(name: str, data_dir: str | None = None) -> TableData:
    """One of the shared tables with its sample texts (for training and cascades)."""
    loaders = {"humaneval": shared_data.humaneval_eval_set, "gsm8k": shared_data.gsm8k_eval_set, "alpacaeval": shared_data.alpacaeval_eval_set}
    files = {"humaneval": "humaneval_routing", "gsm8k": "gsm8k_routing", "alpacaeval": "alpacaeval_routing"}
    if name not in loaders:
        raise ValueError(f"unknown table {name!r}; known: {sorted(loaders)}")
    eval_set = loaders[name](data_dir)
    rows, _, _ = shared_data._parse_rows(shared_data._table_file(data_dir, files[name], None), None, None, None, set(eval_set.members))
    by_id = {row.id: row for row in rows}
    data, texts = {}, {}
    for prompt in eval_set.prompts:
        row = by_id[prompt.id]
        members = {}
        for member in eval_set.members:
            samples_texts = [s.text or "" for s in row.responses[member]]
            outcome = prompt.members[member]
            texts[(prompt.id, member)] = samples_texts
            members[member] = MemberSamples(texts=samples_texts, gt_scores=outcome.gt.tolist(), output_tokens=outcome.output_tokens.astype(int).tolist())
        data[prompt.id] = PromptData(prompt=PromptRecord(id=prompt.id, prompt=prompt.text, source=prompt.source), members=members)
    return TableData(eval_set, data, texts)


def run_seed(
    table: TableData,
    seed: int,
    *,
    backbone: Path,
    split: SplitConfig,
    reward_fit: FitConfig,
    router_fit: FitConfig,
    max_length: int = 256,
    progress: bool = False,
) -> Report:
    prompts = [entry.prompt for entry in table.data.values()]
    parts = stratified_split(prompts, split.model_copy(update={"seed": seed}))
    eval_set = table.eval_set
    routed = eval_set.routed
    proxy_needed = eval_set.max_n > 1
    scored = copy.deepcopy(eval_set)
    if proxy_needed:
        reward = RewardPredictor.from_backbone(backbone, max_length=max_length)
        train_reward_model(reward, table.data, parts.train, parts.validation, reward_fit.model_copy(update={"seed": seed}), progress=progress)
        for prompt in scored.prompts:
            for member, outcome in prompt.members.items():
                outcome.proxy = np.asarray(reward.score(prompt.text, table.texts[(prompt.id, member)]))
    else:  # n = 1 only: the pick is the one sample, no proxy needed
        for prompt in scored.prompts:
            for outcome in prompt.members.values():
                outcome.proxy = np.zeros(len(outcome.gt))
    proxy_of = {p.id: {m: o.proxy for m, o in p.members.items()} for p in scored.prompts}
    labels = prompt_labels(
        table.data, parts.train + parts.validation, eval_set.reference, routed, eval_set.max_n,
        lambda pid, member, _texts: proxy_of[pid][member],
    )
    router = RouterPredictor.from_backbone(backbone, members=routed, reference=eval_set.reference, max_n=eval_set.max_n, max_length=max_length)
    train_router(router, router_examples(table.data, labels, parts.train), router_examples(table.data, labels, parts.validation),
                 router_fit.model_copy(update={"seed": seed}), progress=progress)
    train_set, test_set = scored.subset(parts.train), scored.subset(parts.test)
    for prompt in test_set.prompts:
        prompt.conversation = RenderedConversation(system="", turns=(f"user: {prompt.text}",))
    avg_tokens = train_set.average_output_tokens()
    probabilities = router_probabilities(router, test_set)
    curves = {"BEST-Route": sweep(test_set, probabilities, avg_tokens, picker="proxy")}
    if proxy_needed:
        curves["BEST-Route (oracle picker)"] = sweep(test_set, probabilities, avg_tokens, picker="oracle")
    test_texts = {k: v for k, v in table.texts.items() if k[0] in set(parts.test)}
    train_texts = {k: v for k, v in table.texts.items() if k[0] in set(parts.train)}
    curves.update(run_baselines(train_set, test_set, default_baselines({**train_texts, **test_texts}, seed=seed)))
    return Report.from_eval_set(
        test_set, curves, avg_output_tokens=avg_tokens, routing_method="BEST-Route",
        split={"seed": seed, **parts.summary()["sizes"]},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("humaneval", "gsm8k", "alpacaeval"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--backbone", type=Path, default=None, help="local encoder dir (default all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.pipeline import default_backbone

    table = load_table(args.table, args.data_dir)
    fit = FitConfig(epochs=args.epochs, batch_size=16, learning_rate=3e-5, head_learning_rate=1e-3, patience=2)
    reports = []
    for seed in args.seeds:
        report = run_seed(
            table, seed, backbone=args.backbone or default_backbone(), split=SplitConfig(train=0.6, validation=0.2, test=0.2),
            reward_fit=fit, router_fit=fit, max_length=args.max_length,
        )
        report.save(args.out / f"seed{seed}")
        reports.append(report)
        print(report.to_markdown().split("## Summary")[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aggregate.md").write_text(aggregate_tables(reports))
    (args.out / "aggregate.json").write_text(json.dumps(aggregate(reports), indent=2, sort_keys=True, default=_jsonable))
    print(aggregate_tables(reports))
    return 0


def _jsonable(value: Any) -> Any:
    return float(value) if isinstance(value, np.floating) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
