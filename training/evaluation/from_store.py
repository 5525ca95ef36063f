"""EvalSets from a training work directory (samples, scores, the trained proxy), and the
router's predictions for an EvalSet."""

from __future__ import annotations

import numpy as np

from bestroute_lc.conversation import RenderedConversation, render_conversation
from bestroute_lc.reward import RewardPredictor
from bestroute_lc.router import RouterPredictor
from training.config import TrainConfig
from training.evaluation.outcomes import EvalPrompt, EvalSet, MemberOutcomes
from training.records import SampleRecord, read_records


def eval_set_from_store(
    config: TrainConfig, prompt_ids: list[str], reward: RewardPredictor | None, name: str = "dataset"
) -> EvalSet:
    """The given prompts with every member's recorded samples; proxy scores from ``reward``
    (None: no proxy picker). Prompts missing some member's samples are left out."""
    from training.pipeline import load_data

    _, data, _ = load_data(config)
    tokens: dict[tuple[str, str], list[SampleRecord]] = {}
    for sample in read_records(config.samples_path, SampleRecord):
        tokens.setdefault((sample.prompt_id, sample.member), []).append(sample)
    members = [m.name for m in config.pool.members]
    pool_specs = {m.name: m for m in config.pool.members}
    parallel = {m: (pool_specs[m].n_billing or _default_billing(pool_specs[m])) == "parallel" for m in members}
    prompts = []
    for prompt_id in prompt_ids:
        entry = data[prompt_id]
        if any(m not in entry.members for m in members):
            continue
        conversation = render_conversation(entry.prompt.chat_messages())
        outcomes = {}
        for member in members:
            samples = entry.members[member]
            records = sorted(tokens[(prompt_id, member)], key=lambda r: r.sample_index)
            proxy = np.asarray(reward.score(conversation.text, samples.texts)) if reward is not None else None
            outcomes[member] = MemberOutcomes(
                gt=np.asarray(samples.gt_scores, dtype=float),
                output_tokens=np.asarray(samples.output_tokens, dtype=float),
                # PARALLEL records each carry the whole prompt; NATIVE records drawn in one
                # request (generate's default) each carry an equal share of it.
                input_tokens=float(np.mean([r.input_tokens for r in records]) if parallel[member] else sum(r.input_tokens for r in records)),
                proxy=proxy,
            )
        prompts.append(EvalPrompt(prompt_id, conversation.text, entry.prompt.source, outcomes, conversation))
    return EvalSet(
        prompts=prompts,
        members=members,
        reference=config.pool.reference,
        prices={m: pool_specs[m].resolved_prices() for m in members},
        prompt_billed_per_sample=parallel,
        max_n=config.max_n,
        name=name,
    )


def _default_billing(spec) -> str:  # noqa: ANN001 - MemberSpec
    return "native" if spec.provider == "openai" else "parallel"


def router_probabilities(router: RouterPredictor, eval_set: EvalSet) -> np.ndarray:
    """[Q, K, N] match probabilities for ``eval_set.routed`` in order (heads matched by name)."""
    conversations = [p.conversation or RenderedConversation(system="", turns=(p.text,)) for p in eval_set.prompts]
    predicted = router.predict_batch(conversations)  # [Q, K_router, N_router]
    index = [router.config.members.index(m) for m in eval_set.routed]
    out = predicted[:, index, :]
    if out.shape[2] < eval_set.max_n:
        raise ValueError(f"the router has N={out.shape[2]} heads but the evaluation asks for max_n={eval_set.max_n}")
    return out[:, :, : eval_set.max_n]
