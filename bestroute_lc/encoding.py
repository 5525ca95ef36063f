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
    # Full lengths on purpose (texts are cut to the budget next): verbose=False keeps transformers from
    # warning that these counts exceed the model maximum.
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def _count(tokenizer: Any, text: str) -> int:
    return len(_token_ids(tokenizer, [text])[0]) if text else 0


def _budget(tokenizer: Any, max_length: int, pair: bool) -> int:
    return max_length - tokenizer.num_special_tokens_to_add(pair=pair)


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]


def tail_text(tokenizer: Any, text: str, keep_tokens: int) -> str:
    """The end of ``text`` that encodes to at most ``keep_tokens`` tokens.

    Cut in characters, at a word start, not in token ids: decoding a cut that falls
    inside a word gives a leading sub-word piece that re-encodes to more tokens, and
    the overflow would then be truncated from the *end*, losing the newest text.
    """
    if keep_tokens <= 0 or not text:
        return ""
    while True:
        offsets = _offsets(tokenizer, text)
        if len(offsets) <= keep_tokens:
            return text
        start = offsets[len(offsets) - keep_tokens][0]
        while 0 < start < len(text) and not text[start - 1].isspace():
            start += 1  # move to the next word start
        text = text[start:]


def head_text(tokenizer: Any, text: str, keep_tokens: int) -> str:
    """The start of ``text`` that encodes to at most ``keep_tokens`` tokens."""
    while True:
        if keep_tokens <= 0 or not text:
            return ""
        offsets = _offsets(tokenizer, text)
        if len(offsets) <= keep_tokens:
            return text
        # A cut after a token is a prefix of the same pieces; the loop guards the rare
        # tokenizer for which it is not.
        text = text[: offsets[keep_tokens - 1][1]]
        keep_tokens -= 0 if len(_offsets(tokenizer, text)) <= keep_tokens else 1


def _fit_conversation(tokenizer: Any, conversation: RenderedConversation, budget: int) -> str:
    pieces: list[str] = []
    remaining = budget
    if conversation.system:
        system = head_text(tokenizer, conversation.system, budget // 4)
        pieces.append(system)
        remaining -= _count(tokenizer, system) + 1  # +1: the newline between pieces
    kept: list[str] = []
    for turn, ids in zip(reversed(conversation.turns), reversed(_token_ids(tokenizer, conversation.turns))):
        if remaining <= 1:
            break
        if len(ids) + 1 <= remaining:
            kept.append(turn)
            remaining -= len(ids) + 1
        else:
            kept.append(tail_text(tokenizer, turn, remaining - 1))
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
    # One tokenizer call for every distinct text (the n candidates of a call share their
    # prompt); pairs that fit as they are, the usual case, need no other until the final one.
    distinct = list(dict.fromkeys([*prompts, *responses]))
    lengths = dict(zip(distinct, map(len, _token_ids(tokenizer, distinct))))
    fitted_prompts, fitted_responses = [], []
    for prompt, response in zip(prompts, responses):
        p_len, r_len = lengths[prompt], lengths[response]
        if p_len + r_len <= budget:
            fitted_prompts.append(prompt)
            fitted_responses.append(response)
            continue
        response_budget = min(r_len, max(budget - p_len, (3 * budget) // 4))
        fitted_response = head_text(tokenizer, response, response_budget)
        fitted_responses.append(fitted_response)
        fitted_prompts.append(tail_text(tokenizer, prompt, budget - _count(tokenizer, fitted_response)))
    return tokenizer(
        fitted_prompts,
        fitted_responses,
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )
