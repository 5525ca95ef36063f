"""Turn rendered conversations into encoder inputs that fit the encoder's limit.

Router input (``encode_conversations``): the system prompt is kept (at most a quarter
of the budget, from its start: it states the task), then the most recent turns that
fit, newest last; the oldest turn kept may be cut from its start. Everything older is
dropped. Rationale: the last user turn decides how hard the query is, and the system
prompt says what kind of task it is; early chit-chat matters least.

Reward-model input (``encode_pairs``): (prompt, response) as a text pair. The response
keeps its beginning, up to three quarters of the budget; the prompt keeps its end
(the most recent turns) in what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bestroute_lc.conversation import RenderedConversation


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _budget(tokenizer: Any, max_length: int, pair: bool) -> int:
    return max_length - tokenizer.num_special_tokens_to_add(pair=pair)


def _fit_conversation(tokenizer: Any, conversation: RenderedConversation, budget: int) -> str:
    pieces: list[str] = []
    remaining = budget
    if conversation.system:
        system_ids = _token_ids(tokenizer, [conversation.system])[0]
        cap = min(len(system_ids), budget // 4)
        pieces.append(conversation.system if cap == len(system_ids) else tokenizer.decode(system_ids[:cap]))
        remaining -= cap + 1  # +1: the newline between pieces
    kept: list[str] = []
    for turn, ids in zip(reversed(conversation.turns), reversed(_token_ids(tokenizer, conversation.turns))):
        if remaining <= 0:
            break
        if len(ids) + 1 <= remaining:
            kept.append(turn)
            remaining -= len(ids) + 1
        else:
            kept.append(tokenizer.decode(ids[len(ids) - remaining + 1 :]) if remaining > 1 else "")
            remaining = 0
    return "\n".join(pieces + [t for t in reversed(kept) if t])


def encode_conversations(tokenizer: Any, conversations: Sequence[RenderedConversation], max_length: int) -> Any:
    """Batch of router inputs (``BatchEncoding`` of torch tensors), truncated as documented."""
    budget = _budget(tokenizer, max_length, pair=False)
    texts = [_fit_conversation(tokenizer, c, budget) for c in conversations]
    # The final truncation is a safety net for decode/encode round trips that do not
    # give back exactly the same number of tokens.
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> Any:
    """Batch of (prompt, response) reward-model inputs, truncated as documented."""
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses must have the same length")
    budget = _budget(tokenizer, max_length, pair=True)
    prompt_ids = _token_ids(tokenizer, prompts)
    response_ids = _token_ids(tokenizer, responses)
    fitted_prompts, fitted_responses = [], []
    for prompt, p_ids, response, r_ids in zip(prompts, prompt_ids, responses, response_ids):
        response_budget = min(len(r_ids), max(budget - len(p_ids), (3 * budget) // 4))
        prompt_budget = budget - response_budget
        fitted_responses.append(response if response_budget == len(r_ids) else tokenizer.decode(r_ids[:response_budget]))
        if len(p_ids) <= prompt_budget:
            fitted_prompts.append(prompt)
        else:
            fitted_prompts.append(tokenizer.decode(p_ids[len(p_ids) - prompt_budget :]) if prompt_budget > 0 else "")
    return tokenizer(
        fitted_prompts,
        fitted_responses,
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )
