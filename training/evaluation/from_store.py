"""EvalSets from a training work directory (samples, scores, the trained proxy), and the
router's predictions for an EvalSet.

Prompt (input) tokens. A sample record's ``input_tokens`` is ambiguous for a member that
draws n samples in one request (prompt billed once): ``generate`` splits the request's
prompt tokens over its records, a hand-made ``samples.jsonl`` may give the whole prompt on
every record, and a resumed run may have drawn a member's samples in several requests.
Summing or averaging the records gets one of these conventions wrong. So the evaluation
does not read them: one request's prompt tokens are the runtime's own estimate for the
rendered conversation (characters / 4, ``bestroute_lc.pricing.approximate_tokens``), the
same for every member, billed once (NATIVE) or n times (PARALLEL). Output tokens are per
sample and unambiguous; they are read from the records.
"""

from __future__ import annotations

import numpy as np

from bestroute_lc.conversation import RenderedConversation, render_conversation
from bestroute_lc.reward import RewardPredictor
from bestroute_lc.router import RouterPredictor
from training.config import TrainConfig
from training.dataset import PromptData
from training.evaluation.outcomes import EvalPrompt, EvalSet, MemberOutcomes


def eval_set_from_store(
    config: TrainConfig, prompt_ids: list[str], reward: RewardPredictor | None, name: str = "dataset",
    data: dict[str, PromptData] | None = None,
) -> EvalSet:
    """The given prompts with every member's recorded samples; proxy scores from ``reward``
    (None: no proxy picker). Prompts missing some member's samples are left out. ``data``:
    the work directory's joined records when the caller has them (else read here)."""
    from bestroute_lc.pricing import approximate_tokens
    from training.pipeline import load_data

    if data is None:
        _, data, _ = load_data(config)
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
        input_tokens = float(approximate_tokens(conversation.text))  # see the module docstring
        for member in members:
            samples = entry.members[member]
            proxy = None
            if reward is not None:
                # A member the reward model is not trusted for keeps its first sample at run time
                # (``Reranker.trusted_for``): samples arrive in random order, so that is a uniform
                # pick, which tied proxy scores reproduce exactly.
                proxy = (np.asarray(reward.score(conversation.text, samples.texts)) if reward.trusted_for(member)
                         else np.zeros(len(samples.texts)))
            outcomes[member] = MemberOutcomes(
                gt=np.asarray(samples.gt_scores, dtype=float),
                output_tokens=np.asarray(samples.output_tokens, dtype=float),
                input_tokens=input_tokens,
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


def _default_billing(spec) -> str:
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
