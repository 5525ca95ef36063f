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

from collections.abc import Callable, Sequence
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


def _offsets(tokenizer: Any, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """Character offsets of each text's tokens (no special tokens), in one tokenizer call."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]


Cut = Callable[[str, list[tuple[int, int]], int], str]


def _cut_until_they_fit(
    tokenizer: Any,
    texts: Sequence[str],
    keeps: Sequence[int],
    cut: Cut,
    *,
    shrink_on_overflow: bool,
    offsets: Sequence[list[tuple[int, int]]] | None = None,
) -> tuple[list[str], list[int]]:
    """Cut every text until it encodes to at most its ``keeps`` tokens; return the texts and
    their token counts. One tokenizer call per round for all texts still too long (usually
    one round: a cut at a token boundary re-encodes to the same tokens). ``offsets``: the
    texts' token offsets when the caller already has them. ``shrink_on_overflow``: a cut
    that still re-encodes to too many tokens is cut again one token shorter (for a cut
    that could otherwise land on the same place again)."""
    texts, keeps = list(texts), list(keeps)
    current = list(offsets) if offsets is not None else _offsets(tokenizer, texts)
    was_cut = [False] * len(texts)
    pending = list(range(len(texts)))
    while pending:
        still_long = []
        for i in pending:
            if len(current[i]) <= keeps[i] and texts[i]:
                continue
            if was_cut[i] and shrink_on_overflow:
                keeps[i] -= 1
            if keeps[i] <= 0 or not texts[i]:
                texts[i], current[i] = "", []
                continue
            texts[i], was_cut[i] = cut(texts[i], current[i], keeps[i]), True
            still_long.append(i)
        for i, fresh in zip(still_long, _offsets(tokenizer, [texts[i] for i in still_long])):
            current[i] = fresh
        pending = still_long
    return texts, [len(o) for o in current]


def _head_cut(text: str, offsets: list[tuple[int, int]], keep_tokens: int) -> str:
    # A cut after a token is a prefix of the same pieces (shrink_on_overflow guards the rare
    # tokenizer for which it is not).
    return text[: offsets[keep_tokens - 1][1]]


def _tail_cut(text: str, offsets: list[tuple[int, int]], keep_tokens: int) -> str:
    # Cut in characters, at a word start, not in token ids: decoding a cut that falls inside
    # a word gives a leading sub-word piece that re-encodes to more tokens, and the overflow
    # would then be truncated from the *end*, losing the newest text.
    start = offsets[len(offsets) - keep_tokens][0]
    if start == 0:  # pieces of the first character only (several tokens from one): step past it, or loop forever
        start = next((s for s, _ in offsets if s > 0), len(text))
    while 0 < start < len(text) and not text[start - 1].isspace():
        start += 1  # move to the next word start
    return text[start:]


def head_texts(tokenizer: Any, texts: Sequence[str], keeps: Sequence[int], offsets: Any = None) -> tuple[list[str], list[int]]:
    """The start of each text that encodes to at most its ``keeps`` tokens, and its token count."""
    return _cut_until_they_fit(tokenizer, texts, keeps, _head_cut, shrink_on_overflow=True, offsets=offsets)


def tail_texts(tokenizer: Any, texts: Sequence[str], keeps: Sequence[int], offsets: Any = None) -> tuple[list[str], list[int]]:
    """The end of each text that encodes to at most its ``keeps`` tokens (from a word start),
    and its token count."""
    return _cut_until_they_fit(tokenizer, texts, keeps, _tail_cut, shrink_on_overflow=False, offsets=offsets)


def _cut_distinct(
    cut_texts: Callable[..., tuple[list[str], list[int]]],
    tokenizer: Any,
    texts: list[str],
    keeps: list[int],
    offsets: dict[str, list[tuple[int, int]]],
) -> list[tuple[str, int]]:
    """``cut_texts`` (head_texts or tail_texts) over the distinct (text, keep) requests only:
    the n candidates of one call repeat their prompt, and often their cut."""
    requests = list(dict.fromkeys(zip(texts, keeps)))
    cut, counts = cut_texts(tokenizer, [t for t, _ in requests], [k for _, k in requests], offsets=[offsets[t] for t, _ in requests])
    results = dict(zip(requests, zip(cut, counts)))
    return [results[request] for request in zip(texts, keeps)]


def head_text(tokenizer: Any, text: str, keep_tokens: int) -> str:
    """The start of ``text`` that encodes to at most ``keep_tokens`` tokens."""
    return head_texts(tokenizer, [text], [keep_tokens])[0][0]


def tail_text(tokenizer: Any, text: str, keep_tokens: int) -> str:
    """The end of ``text`` that encodes to at most ``keep_tokens`` tokens, from a word start."""
    return tail_texts(tokenizer, [text], [keep_tokens])[0][0]


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
    # prompt), one more per round of cuts for all pairs that do not fit, then the final one.
    distinct = list(dict.fromkeys([*prompts, *responses]))
    offsets = dict(zip(distinct, _offsets(tokenizer, distinct)))
    fitted_prompts, fitted_responses = list(prompts), list(responses)
    too_long = [i for i, (p, r) in enumerate(zip(prompts, responses)) if len(offsets[p]) + len(offsets[r]) > budget]
    if too_long:
        # Responses keep their start (up to 3/4 of the budget, more if the prompt is short)...
        response_keeps = [
            min(len(offsets[responses[i]]), max(budget - len(offsets[prompts[i]]), (3 * budget) // 4)) for i in too_long
        ]
        cut_responses = _cut_distinct(head_texts, tokenizer, [responses[i] for i in too_long], response_keeps, offsets)
        # ... and prompts their end in what is left.
        prompt_keeps = [budget - count for _, count in cut_responses]
        cut_prompts = _cut_distinct(tail_texts, tokenizer, [prompts[i] for i in too_long], prompt_keeps, offsets)
        for i, (response, _), (prompt, _) in zip(too_long, cut_responses, cut_prompts):
            fitted_responses[i], fitted_prompts[i] = response, prompt
    return tokenizer(
        fitted_prompts,
        fitted_responses,
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )
