"""Rendering LangChain messages and fitting them into the encoders' token limit."""

from __future__ import annotations

import json
import re

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from bestroute_lc.conversation import (
    RenderedConversation,
    content_block_types,
    message_text,
    render_candidate,
    render_conversation,
    render_message,
    validate_messages,
)
from bestroute_lc.encoding import encode_conversations, encode_pairs
from bestroute_lc.pool import Pool, PoolMember
from bestroute_lc.pricing import Prices
from tests.helpers import ScriptedChatModel, minilm_tokenizer


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


def _decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _markers(text: str, prefix: str) -> list[int]:
    return [int(m) for m in re.findall(rf"\b{prefix}(\d\d\d)\b", text)]


# -- rendering ---------------------------------------------------------------------------------

TOOL_CALL = {"name": "search", "args": {"q": "weather in Paris", "k": 3}, "id": "call_1", "type": "tool_call"}


def test_render_roles():
    assert render_message(SystemMessage("be brief")) == "system: be brief"
    assert render_message(HumanMessage("hi there")) == "user: hi there"
    assert render_message(AIMessage("hello")) == "assistant: hello"


def test_render_ai_with_tool_calls_only():
    rendered = render_message(AIMessage(content="", tool_calls=[TOOL_CALL]))
    assert rendered.startswith("assistant: tool calls: ")
    calls = json.loads(rendered.removeprefix("assistant: tool calls: "))
    # name and args only (ids are noise for the router), deterministic key order
    assert calls == [{"args": {"k": 3, "q": "weather in Paris"}, "name": "search"}]
    assert "call_1" not in rendered


def test_render_ai_with_text_and_tool_calls():
    rendered = render_message(AIMessage(content="let me look", tool_calls=[TOOL_CALL]))
    assert rendered.split("\n") == [
        "assistant: let me look",
        'tool calls: [{"args": {"k": 3, "q": "weather in Paris"}, "name": "search"}]',
    ]


def test_render_tool_message_named_and_unnamed():
    assert render_message(ToolMessage("sunny, 21C", tool_call_id="call_1", name="search")) == "tool[search]: sunny, 21C"
    assert render_message(ToolMessage("sunny", tool_call_id="call_1")) == "tool[call_1]: sunny"


def test_render_conversation_splits_system_and_keeps_turn_order():
    messages = [
        SystemMessage("rule one"),
        HumanMessage("q1"),
        AIMessage(content="", tool_calls=[TOOL_CALL]),
        ToolMessage("r1", tool_call_id="call_1", name="search"),
        SystemMessage("rule two"),
        AIMessage("a1"),
        HumanMessage("q2"),
    ]
    conv = render_conversation(messages)
    assert conv.system == "system: rule one\nsystem: rule two"
    assert conv.turns[0] == "user: q1"
    assert conv.turns[1].startswith("assistant: tool calls: ")
    assert conv.turns[2:] == ("tool[search]: r1", "assistant: a1", "user: q2")
    assert conv.text.split("\n")[:2] == ["system: rule one", "system: rule two"]
    assert conv.text.endswith("assistant: a1\nuser: q2")


def test_rendered_text_without_system():
    conv = render_conversation([HumanMessage("only")])
    assert conv.system == "" and conv.text == "user: only"


def test_message_text_from_blocks_skips_non_text():
    message = HumanMessage(
        content=[
            {"type": "text", "text": "what is "},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            "this?",
        ]
    )
    assert message_text(message) == "what is this?"
    assert content_block_types(message) == {"image_url"}
    assert "AAAA" not in render_message(message)


def test_reasoning_blocks_are_ignorable():
    message = AIMessage(content=[{"type": "reasoning", "reasoning": "hmm"}, {"type": "text", "text": "42"}])
    assert content_block_types(message) == set()
    assert render_message(message) == "assistant: 42"


def test_render_candidate():
    assert render_candidate(AIMessage("plain")) == "plain"
    with_calls = render_candidate(AIMessage(content="ok", tool_calls=[TOOL_CALL]))
    assert with_calls.startswith("ok\ntool calls: [")
    only_calls = render_candidate(AIMessage(content="", tool_calls=[TOOL_CALL]))
    assert only_calls.startswith("tool calls: [") and "search" in only_calls


# -- input validation ----------------------------------------------------------------------------


def _pool(vision: set[str]) -> Pool:
    members = [
        PoolMember(
            name=name,
            chat_model=ScriptedChatModel(name_=name, calls=[]),
            prices=Prices(input_per_mtok=1, output_per_mtok=1),
            extra_content_types=frozenset({"image_url"}) if name in vision else frozenset(),
        )
        for name in ("big", "small", "mid")
    ]
    return Pool(members=members, reference="big")


IMAGE_MESSAGE = HumanMessage(
    content=[{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
)


def test_empty_messages_rejected():
    with pytest.raises(ValueError, match="at least one message"):
        validate_messages([], {"big": {"text"}})


def test_text_only_always_accepted():
    validate_messages([HumanMessage("hi"), AIMessage("yo")], {m.name: m.accepts_content_types for m in _pool(set())})


def test_image_blocks_rejected_naming_refusing_members():
    pool = _pool(vision={"big"})
    with pytest.raises(ValueError) as info:
        validate_messages([SystemMessage("s"), IMAGE_MESSAGE], {m.name: m.accepts_content_types for m in pool})
    message = str(info.value)
    assert "image_url" in message
    assert "small cannot take ['image_url']" in message
    assert "mid cannot take ['image_url']" in message
    assert "big cannot" not in message
    assert "extra_content_types" in message


def test_image_blocks_accepted_when_every_member_declares_them():
    pool = _pool(vision={"big", "small", "mid"})
    validate_messages([IMAGE_MESSAGE], {m.name: m.accepts_content_types for m in pool})


# -- router input: truncation --------------------------------------------------------------------


def _long_conversation(turns: int = 40, words_per_turn: int = 12, system_words: int = 200) -> RenderedConversation:
    messages = [SystemMessage("syshead task description " + "filler " * system_words + "systail")]
    for i in range(turns):
        cls = HumanMessage if i % 2 == 0 else AIMessage
        messages.append(cls(f"mk{i:03d} " + " ".join(["word"] * words_per_turn)))
    return render_conversation(messages)


@pytest.mark.parametrize("max_length", [64, 128, 256])
def test_router_truncation_keeps_system_head_and_recent_turns(tok, max_length):
    conv = _long_conversation()
    encoded = encode_conversations(tok, [conv], max_length)
    ids = encoded["input_ids"][0]
    assert len(ids) <= max_length
    # the budget is used, not thrown away (one token per kept piece is reserved for newlines)
    assert int(encoded["attention_mask"][0].sum()) >= 0.9 * max_length
    text = _decode(tok, ids)
    # system prompt: its head is kept, its tail (beyond a quarter of the budget) is not
    assert text.startswith("system : syshead task description")
    assert "systail" not in text
    # at most a quarter of the budget: "system : syshead task description" is 7 tokens, "filler" 2
    cap = (max_length - 2) // 4
    system_tokens = 7 + 2 * len(re.findall(r"\bfiller\b", text))
    assert cap - 2 <= system_tokens <= cap
    # turns: a contiguous run of the most recent ones, the newest always present
    kept = _markers(text, "mk")
    assert kept, text
    assert kept[-1] == 39
    assert kept == list(range(kept[0], 40))
    assert 0 not in kept
    # the system head comes before every turn
    assert text.index("syshead") < text.index(f"mk{kept[0]:03d}")


def test_router_short_conversation_untouched(tok):
    conv = render_conversation([SystemMessage("be helpful"), HumanMessage("what is two plus two"), AIMessage("four")])
    ids = encode_conversations(tok, [conv], 128)["input_ids"][0]
    assert _decode(tok, ids) == "system : be helpful user : what is two plus two assistant : four"


def test_router_batch_pads_and_never_exceeds_limit(tok):
    convs = [_long_conversation(turns=t, system_words=s) for t, s in [(1, 0), (5, 10), (60, 400), (200, 3)]]
    encoded = encode_conversations(tok, convs, 96)
    assert encoded["input_ids"].shape[0] == 4
    assert encoded["input_ids"].shape[1] <= 96
    for row in range(4):
        text = _decode(tok, encoded["input_ids"][row])
        assert "syshead" in text
        kept = _markers(text, "mk")
        assert kept and kept == list(range(kept[0], kept[-1] + 1))
    # the newest turn of each conversation survives
    assert _markers(_decode(tok, encoded["input_ids"][3]), "mk")[-1] == 199


def test_router_no_system_prompt_uses_whole_budget_for_turns(tok):
    messages = [HumanMessage(f"mk{i:03d} " + "word " * 12) for i in range(50)]
    ids = encode_conversations(tok, [render_conversation(messages)], 128)["input_ids"][0]
    assert len(ids) <= 128
    kept = _markers(_decode(tok, ids), "mk")
    assert kept[-1] == 49 and kept == list(range(kept[0], 50))
    assert len(kept) >= 7  # ~15 tokens per turn in 126 tokens


def test_router_huge_last_turn_keeps_its_end(tok):
    # One turn longer than the budget: it is cut from its start, its end survives.
    turn = "user: startword " + " ".join(f"mk{i:03d}" for i in range(200))
    conv = RenderedConversation(system="system: syshead", turns=("assistant: older", turn))
    text = _decode(tok, encode_conversations(tok, [conv], 64)["input_ids"][0])
    assert text.startswith("system : syshead")
    assert "startword" not in text and "older" not in text
    kept = _markers(text, "mk")
    assert 199 in kept
    assert kept[-5:] == [195, 196, 197, 198, 199]


def test_router_truncation_never_cuts_the_newest_tokens(tok):
    # No system prompt, a single turn cut mid-word ('turnmarker' splits into turn/##mark/##er/##NN).
    turn = "user: " + " ".join(f"turnmarker{i:02d}" for i in range(60)) + " lastwordzz"
    text = _decode(tok, encode_conversations(tok, [RenderedConversation(system="", turns=(turn,))], 64)["input_ids"][0])
    assert text.endswith("lastwordzz")
    assert "##" not in text


# -- reward input: (prompt, response) pairs --------------------------------------------------------


def _segments(tok, encoded, row: int = 0) -> tuple[str, str]:
    ids = encoded["input_ids"][row].tolist()
    types = encoded["token_type_ids"][row].tolist()
    mask = encoded["attention_mask"][row].tolist()
    first = [i for i, t, m in zip(ids, types, mask) if t == 0 and m]
    second = [i for i, t, m in zip(ids, types, mask) if t == 1 and m]
    return _decode(tok, first), _decode(tok, second)


def test_pairs_keep_response_beginning_and_prompt_end(tok):
    prompt = "system: syshead\n" + "\n".join(f"user: pm{i:03d} question words here" for i in range(60))
    response = " ".join(f"rm{i:03d}" for i in range(200))
    encoded = encode_pairs(tok, [prompt], [response], 128)
    assert encoded["input_ids"].shape[1] <= 128
    prompt_text, response_text = _segments(tok, encoded)
    # response: its beginning, contiguous from rm000, about three quarters of the budget
    r_kept = _markers(response_text, "rm")
    assert r_kept[0] == 0 and r_kept == list(range(len(r_kept)))
    assert 199 not in r_kept
    response_tokens = len(tok(response_text, add_special_tokens=False)["input_ids"])
    assert (3 * 125) // 4 - 2 <= response_tokens <= (3 * 125) // 4
    # prompt: its end (most recent turns), contiguous up to the last one
    p_kept = _markers(prompt_text, "pm")
    assert p_kept[-1] == 59 and p_kept == list(range(p_kept[0], 60))
    assert 0 not in p_kept and "syshead" not in prompt_text


def test_pairs_short_prompt_gives_response_the_rest(tok):
    prompt = "user: short question"
    response = " ".join(f"rm{i:03d}" for i in range(300))
    encoded = encode_pairs(tok, [prompt], [response], 128)
    prompt_text, response_text = _segments(tok, encoded)
    assert prompt_text == "user : short question"
    assert int(encoded["attention_mask"][0].sum()) == 128
    assert _markers(response_text, "rm")[0] == 0


def test_pairs_that_fit_are_untouched(tok):
    encoded = encode_pairs(tok, ["user: hi", "user: what is 2 + 2"], ["hello there", "4"], 64)
    assert _segments(tok, encoded, 0) == ("user : hi", "hello there")
    assert _segments(tok, encoded, 1) == ("user : what is 2 + 2", "4")


def test_pairs_length_mismatch_rejected(tok):
    with pytest.raises(ValueError, match="same length"):
        encode_pairs(tok, ["a", "b"], ["c"], 64)


def test_pairs_never_cut_the_prompt_end(tok):
    prompt = "user: " + " ".join(f"turnmarker{i:02d}" for i in range(80)) + " lastwordzz"
    prompt_text, response_text = _segments(tok, encode_pairs(tok, [prompt], ["short answer here"], 128))
    assert response_text == "short answer here"
    assert prompt_text.endswith("lastwordzz")


class _CountingTokenizer:
    """The real tokenizer, counting its calls."""

    def __init__(self, tok) -> None:
        self.tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_pairs_tokenise_a_call_in_a_few_tokenizer_calls_whatever_n(tok, n):
    """The n candidates of one call, all over the budget: one call for the distinct texts, one per
    round of cuts (responses, then the prompt), the final one; not one set per candidate. The
    result is what cutting each pair on its own gives."""
    prompt = "user: " + " ".join(f"question word {i}" for i in range(100))
    candidates = [" ".join(f"answer{j} word {i}" for i in range(150)) for j in range(n)]
    counting = _CountingTokenizer(tok)
    together = encode_pairs(counting, [prompt] * n, candidates, 128)
    assert counting.calls <= 4
    for j, candidate in enumerate(candidates):
        alone = encode_pairs(tok, [prompt], [candidate], 128)
        assert together["input_ids"][j].tolist() == alone["input_ids"][0].tolist()


class _PiecesTokenizer:
    """One token per non-space character, two for "X" (both spanning it): a character that
    encodes to several pieces, which share their start offset."""

    def __call__(self, texts, **kwargs):
        offsets = [[span for i, c in enumerate(t) if not c.isspace() for span in [(i, i + 1)] * (2 if c == "X" else 1)] for t in texts]
        return {"offset_mapping": offsets, "input_ids": [[0] * len(o) for o in offsets]}


def test_tail_cut_progresses_when_the_first_characters_pieces_share_an_offset():
    """The cut would start at offset 0 (the first character's second piece): it must step past
    that character instead of cutting nothing, forever (a user's prompt could start so)."""
    from bestroute_lc.encoding import head_text, tail_text

    tokenizer = _PiecesTokenizer()
    assert tail_text(tokenizer, "Xab cd", 5) == "cd"
    assert tail_text(tokenizer, "X", 1) == ""
    assert head_text(tokenizer, "Xab", 1) == ""  # the head cut shrinks past a split character
    assert head_text(tokenizer, "Xab", 2) == "X"
