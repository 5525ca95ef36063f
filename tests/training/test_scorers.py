"""Ground-truth scorers (training/scorers.py): each scorer on right vs wrong answers,
parsing edge cases, missing fields and non-finite scores, plus the registry."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from training.records import PromptRecord
from training.scorers import (
    DEFAULT_JUDGE_RUBRIC,
    BleuScorer,
    CodeTestScorer,
    ExactMatchScorer,
    GroundTruthScorer,
    JudgeParseError,
    LLMJudgeScorer,
    NumericAnswerScorer,
    RewardModelScorer,
    RougeScorer,
    build_scorer,
    extract_numeric_answer,
    normalize_answer,
    parse_judge_rating,
)

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
HUMANEVAL_DEV = REPO_ROOT.parent / "shared" / "data" / "humaneval_routing" / "humaneval_routing.dev.jsonl.gz"


def record(**fields: Any) -> PromptRecord:
    fields.setdefault("id", "p1")
    if "messages" not in fields:
        fields.setdefault("prompt", "What is 6 times 7?")
    return PromptRecord(**fields)


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------


class _ConstantScorer(GroundTruthScorer):
    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, prompt: PromptRecord, responses: Sequence[str]) -> list[float]:
        return self._checked(prompt, responses, [self.value] * len(responses))


def test_default_ascore_runs_score_and_non_finite_scores_raise() -> None:
    assert asyncio.run(_ConstantScorer(0.5).ascore(record(), ["a", "b"])) == [0.5, 0.5]
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="'p1' is not finite"):
            _ConstantScorer(bad).score(record(), ["a"])


@pytest.mark.parametrize(
    "scorer, field",
    [
        (ExactMatchScorer(), "reference"),
        (NumericAnswerScorer(), "reference"),
        (BleuScorer(), "reference"),
        (RougeScorer(), "reference"),
        (CodeTestScorer(timeout_s=2), "tests"),
    ],
)
def test_missing_field_raises_naming_prompt_and_field(scorer: GroundTruthScorer, field: str) -> None:
    with pytest.raises(ValueError, match=rf"'{field}'.*'q-17'"):
        scorer.score(record(id="q-17"), ["anything"])


# --------------------------------------------------------------------------------------
# 1. Reward model
# --------------------------------------------------------------------------------------


def _tiny_classifier(num_labels: int = 1, seed: int = 0) -> tuple[Any, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.helpers import minilm_tokenizer

    tokenizer = minilm_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval(), tokenizer


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = _tiny_classifier()
    path = tmp_path_factory.mktemp("tiny_rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _direct_reward(model: Any, tokenizer: Any, first: str, second: str | None = None) -> float:
    import torch

    with torch.inference_mode():
        batch = tokenizer(first, second, return_tensors="pt", truncation=True, max_length=256)
        return float(model(**batch).logits[0, 0])


RESPONSES = ["42", "It is forty-two, since 6 * 7 = 42.", "I do not know.", "Bananas are yellow and grow in bunches."]


def test_reward_model_loaded_by_path_matches_direct_forward_and_keeps_order(reward_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = RewardModelScorer(str(reward_dir), batch_size=3, device="cpu")
    prompt = record()
    scores = scorer.score(prompt, RESPONSES)
    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    expected = [_direct_reward(model, tokenizer, prompt.prompt, r) for r in RESPONSES]
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len({round(s, 6) for s in scores}) == len(RESPONSES)
    # Batch size (hence padding and length sorting) does not change any score.
    assert RewardModelScorer(reward_dir, batch_size=1, device="cpu").score(prompt, RESPONSES) == pytest.approx(scores, abs=1e-4)
    assert asyncio.run(scorer.ascore(prompt, RESPONSES)) == pytest.approx(scores, abs=1e-4)
    assert scorer.score(prompt, []) == []
    built = build_scorer({"kind": "reward_model", "path": str(reward_dir), "batch_size": 2, "device": "cpu"})
    assert isinstance(built, RewardModelScorer) and built.batch_size == 2
    assert built.score(prompt, RESPONSES) == pytest.approx(scores, abs=1e-4)


def test_reward_model_refuses_hub_names_and_multi_logit_heads(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a local directory"):
        RewardModelScorer("OpenAssistant/reward-model-deberta-v3-large-v2")
    with pytest.raises(ValueError, match="not a local directory"):
        RewardModelScorer(tmp_path / "missing")
    with pytest.raises(ValueError, match="one output logit"):
        RewardModelScorer(_tiny_classifier(num_labels=2), device="cpu")


def test_reward_model_default_max_length_truncates_long_prompts() -> None:
    model, tokenizer = _tiny_classifier()
    scorer = RewardModelScorer((model, tokenizer), device="cpu")
    assert scorer.max_length == 256  # min(tokenizer 512, position embeddings 256)
    long_prompt = record(prompt="word " * 2000)
    scores = scorer.score(long_prompt, ["short answer", "another " * 500])
    assert all(math.isfinite(s) for s in scores)


def test_reward_model_uses_chat_template_and_keeps_the_response_end(reward_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)  # own instance: safe to modify
    tokenizer.chat_template = "[CLS]{% for m in messages %} {{ m.role }}: {{ m.content }}{% endfor %} [SEP]"
    scorer = RewardModelScorer((model, tokenizer), device="cpu", max_length=24)
    assert scorer.use_chat_template
    prompt = record(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "long question " * 30}])
    scores = scorer.score(prompt, ["yes", "no"])
    for response, got in zip(["yes", "no"], scores):
        text = f"[CLS] system: Be brief. user: {'long question ' * 30} assistant: {response} [SEP]"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-24:]
        assert ids[-2] == tokenizer.convert_tokens_to_ids(response)  # the response survived truncation
        with torch.inference_mode():
            expected = float(model(input_ids=torch.tensor([ids])).logits[0, 0])
        assert got == pytest.approx(expected, abs=1e-4)


def test_reward_model_nan_output_raises() -> None:
    import torch

    model, tokenizer = _tiny_classifier()
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        RewardModelScorer((model, tokenizer), device="cpu").score(record(), ["x"])


# --------------------------------------------------------------------------------------
# 2. Exact and numeric match
# --------------------------------------------------------------------------------------


def test_exact_match_normalised_and_strict() -> None:
    prompt = record(prompt="Capital of France?", reference="Paris")
    responses = ["Paris", "  the PARIS. ", "Paris, France", "Lyon", "paris"]
    assert ExactMatchScorer().score(prompt, responses) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert ExactMatchScorer(normalize=False).score(prompt, responses) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert normalize_answer("3.5") != normalize_answer("35")
    assert normalize_answer("Don't  stop!") == "don't stop"
    assert build_scorer({"kind": "exact_match", "normalize": False}).normalize is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 16 - 3 = <<16-3=13>>13 eggs.\n#### 1,234", 1234.0),
        ("So the total is 5 + 7 = 12 and the answer is 12 dollars.", 12.0),
        ("The answer is 12 apples, bought 3 days ago.\nCheck: 4 + 8 = 12.", 12.0),
        ("#### 42 (6 groups of 7)", 42.0),
        (r"Therefore $x = \boxed{\frac{3}{4}}$ is the value, not 7.", 0.75),
        (r"\boxed{-12.5}", -12.5),
        ("The answer is -3/4.", -0.75),
        ("The final answer: $1,000,000.", 1_000_000.0),
        ("First 3 apples, then 4 more, so 7 in all", 7.0),
        ("A: 26", 26.0),
        ("The temperature fell to −7 degrees", -7.0),
        ("pages 3-5", 5.0),  # a hyphen between numbers is not a minus sign
        ("10 - 3", 3.0),
        ("the values were 1,2,3", 3.0),  # a list, not a thousands separator
        ("0.5 of it", 0.5),
        ("It costs $.75", 0.75),
        ("no number at all", None),
        ("", None),
    ],
)
def test_extract_numeric_answer(text: str, expected: float | None) -> None:
    got = extract_numeric_answer(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_numeric_scorer_against_gsm8k_style_reference() -> None:
    prompt = record(reference="6 * 7 = <<6*7=42>>42\n#### 42")
    responses = ["6 times 7 is 42.", "The answer is 42.0", "#### 41", "I think 42, no wait, 24", "no idea", r"\boxed{42}"]
    assert NumericAnswerScorer().score(prompt, responses) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    fraction = record(reference="0.75")
    assert NumericAnswerScorer().score(fraction, ["3/4", "The answer is 0.7500001", "0.76"]) == [1.0, 1.0, 0.0]
    assert NumericAnswerScorer(rel_tol=0.05).score(fraction, ["0.76"]) == [1.0]
    assert NumericAnswerScorer().score(record(reference="-1,200"), ["It lost $1200", "It changed by -1,200."]) == [0.0, 1.0]
    assert build_scorer({"kind": "numeric", "rel_tol": 0.1}).rel_tol == 0.1


def test_numeric_scorer_reference_without_number_raises() -> None:
    with pytest.raises(ValueError, match="'p9'.*no number"):
        NumericAnswerScorer().score(record(id="p9", reference="forty-two"), ["42"])


# --------------------------------------------------------------------------------------
# 3. Code tests
# --------------------------------------------------------------------------------------

CODE_PROMPT = '''from typing import List


def pairwise_sums(numbers: List[int]) -> List[int]:
    """ Sums of neighbouring elements.
    >>> pairwise_sums([1, 2, 3])
    [3, 5]
    """
'''

CODE_TESTS = """
METADATA = {"author": "tests"}


def check(candidate):
    assert candidate([1, 2, 3]) == [3, 5]
    assert candidate([]) == []
    assert candidate([5]) == []
    assert candidate([-1, 1, 10]) == [0, 11]
"""

CODE_RESPONSES = {
    "correct body": "    return [a + b for a, b in zip(numbers, numbers[1:])]\n",
    "correct program in prose": (
        "Sure! Here it is:\n\n```python\nfrom typing import List\n\n\ndef pairwise_sums(numbers: List[int]) -> List[int]:\n"
        "    return [numbers[i] + numbers[i + 1] for i in range(len(numbers) - 1)]\n```\n\n"
        "Example:\n\n```python\nprint(pairwise_sums([1, 2]))\n```\n"
    ),
    "wrong body": "    return [a + b for a, b in zip(numbers, numbers[2:])]\n",
    "wrong on an edge case": "    if len(numbers) < 2:\n        return [0]\n    return [a + b for a, b in zip(numbers, numbers[1:])]\n",
    "infinite loop": "    while True:\n        pass\n",
    "syntax error": "    return [a + b for a, b in zip(numbers, numbers[1:])\n",
    "raises": "    raise RuntimeError('not implemented')\n",
    "exits early": "    raise SystemExit(0)\n",
    "top-level exit": "```python\nimport sys\n\ndef pairwise_sums(numbers):\n    return []\n\nsys.exit(0)\n```",
    "wrong function name": "```python\ndef pair_sums(numbers):\n    return [a + b for a, b in zip(numbers, numbers[1:])]\n```",
}
CODE_EXPECTED = {name: float(name.startswith("correct")) for name in CODE_RESPONSES}


def test_code_tests_scorer_passes_only_correct_code_and_survives_hangs() -> None:
    prompt = record(id="pairs", prompt=CODE_PROMPT, tests=CODE_TESTS, entry_point="pairwise_sums")
    # 10 sandboxes at once on 2 busy cores: a correct candidate must not hit the time limit
    # (2 s did once, under load); the hanging one still ends at it.
    scorer = CodeTestScorer(timeout_s=6, max_workers=len(CODE_RESPONSES))
    start = time.perf_counter()
    scores = scorer.score(prompt, list(CODE_RESPONSES.values()))
    assert time.perf_counter() - start < 30  # the hanging candidate was cut off
    assert dict(zip(CODE_RESPONSES, scores)) == CODE_EXPECTED
    assert scorer.score(prompt, []) == []


def test_code_tests_scorer_infers_entry_point_and_rejects_bad_prompts() -> None:
    prompt = record(prompt=CODE_PROMPT, tests=CODE_TESTS)  # no entry_point: the prompt's last function
    correct = CODE_RESPONSES["correct body"]
    assert CodeTestScorer(timeout_s=5).score(prompt, [correct, CODE_RESPONSES["wrong body"]]) == [1.0, 0.0]
    as_chat = record(messages=[{"role": "system", "content": "Complete the code."}, {"role": "user", "content": CODE_PROMPT}], tests=CODE_TESTS)
    assert asyncio.run(build_scorer({"kind": "code_tests", "timeout_s": 5}).ascore(as_chat, [CODE_RESPONSES["correct program in prose"]])) == [1.0]
    with pytest.raises(ValueError, match="'entry_point'.*'nofunc'"):
        CodeTestScorer().score(record(id="nofunc", prompt="Write a function.", tests=CODE_TESTS), [correct])
    with pytest.raises(ValueError, match="timeout_s"):
        CodeTestScorer(timeout_s=0)


def _humaneval_sample(rows: list[dict[str, Any]], per_model: int = 2) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Per problem, up to ``per_model`` samples of each model, both outcomes when recorded."""
    picked = []
    for row in rows:
        samples = []
        for model_samples in row["responses"].values():
            passed = [s for s in model_samples if s["passed"]]
            failed = [s for s in model_samples if not s["passed"]]
            chosen = (passed[:1] + failed[:1] + passed[1:] + failed[1:])[:per_model]
            samples.extend(chosen)
        picked.append((row, samples))
    return picked


@pytest.mark.skipif(not HUMANEVAL_DEV.exists(), reason=f"{HUMANEVAL_DEV} not present")
def test_code_tests_scorer_agrees_with_recorded_humaneval_results() -> None:
    with gzip.open(HUMANEVAL_DEV, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(10), handle)]
    scorer = CodeTestScorer(timeout_s=10, max_workers=8)
    start = time.perf_counter()
    agree, total, mismatches = 0, 0, []
    for row, samples in _humaneval_sample(rows):
        prompt = PromptRecord(id=row["task_id"], prompt=row["prompt"], tests=row["test"], entry_point=row["entry_point"])
        scores = scorer.score(prompt, [s["text"] for s in samples])
        for sample, got in zip(samples, scores):
            total += 1
            if (got == 1.0) == sample["passed"]:
                agree += 1
            else:
                mismatches.append((row["task_id"], sample["passed"], got))
    assert time.perf_counter() - start < 30
    assert total >= 60 and sum(s["passed"] for _, ss in _humaneval_sample(rows) for s in ss) >= 20
    assert agree / total >= 0.95, mismatches


# --------------------------------------------------------------------------------------
# 4. BLEU and ROUGE
# --------------------------------------------------------------------------------------


def test_bleu_scorer_orders_by_overlap() -> None:
    prompt = record(prompt="Translate: Le chat est sur le tapis.", reference="The cat is on the mat.")
    exact, close, far, empty = BleuScorer().score(prompt, ["The cat is on the mat.", "The cat sits on the mat.", "Dogs bark loudly", ""])
    assert exact == pytest.approx(1.0)
    assert 0.0 < close < exact
    assert far == 0.0 and empty == 0.0
    assert all(0.0 <= s <= 1.0 for s in (exact, close, far, empty))
    assert BleuScorer(lowercase=True).score(prompt, ["THE CAT IS ON THE MAT."]) == [pytest.approx(1.0)]
    assert isinstance(build_scorer({"kind": "bleu"}), BleuScorer)


def test_rouge_scorer_f1_by_variant() -> None:
    prompt = record(prompt="Summarise.", reference="the cat sat on the mat")
    # rougeL: LCS 3 tokens -> precision 1, recall 1/2 -> F1 2/3.
    assert RougeScorer().score(prompt, ["the cat sat", "the cat sat on the mat", "dogs bark"]) == pytest.approx([2 / 3, 1.0, 0.0])
    # rouge2 counts bigrams: "the cat", "cat sat" of 5 reference bigrams -> F1 = 2*1*0.4/1.4.
    rouge2 = build_scorer({"kind": "rouge", "variant": "rouge2"})
    assert rouge2.name == "rouge2"
    assert rouge2.score(prompt, ["the cat sat"]) == pytest.approx([2 * 0.4 / 1.4])
    # rougeL respects order, rouge1 does not.
    reversed_words = "mat the on sat cat the"
    assert RougeScorer("rouge1").score(prompt, [reversed_words])[0] == pytest.approx(1.0)
    assert RougeScorer("rougeL").score(prompt, [reversed_words])[0] == pytest.approx(0.5)  # LCS "the cat the"
    with pytest.raises(ValueError, match="unknown ROUGE kind"):
        RougeScorer("rougeX")


# --------------------------------------------------------------------------------------
# 5. LLM judge
# --------------------------------------------------------------------------------------


class VerdictChatModel(BaseChatModel):
    """Answers a judge request with ``verdicts[<the response being rated>]``; records
    every request and the largest number of requests in flight at once."""

    verdicts: dict[str, str]
    requests: list = []  # noqa: RUF012 (a pydantic field: copied per instance)
    latency_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def _llm_type(self) -> str:
        return "verdicts"

    def _verdict(self, messages: list[BaseMessage]) -> AIMessage:
        self.requests.append(messages)
        user = str(messages[-1].content)
        rated = user.split("[Response to rate]\n", 1)[1].rsplit("\n[End of response]", 1)[0]
        return AIMessage(content=self.verdicts[rated])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._verdict(messages))])

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            return self._generate(messages)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize(
    "verdict, expected",
    [
        ("Clear and correct.\nRating: [[8]]", 8.0),
        ("Rating: 7", 7.0),
        ("**Rating:** 6", 6.0),
        ("I would give it 7/10.", 7.0),
        ("Overall: 9 out of 10", 9.0),
        ("Score: 4.5", 4.5),
        ("3", 3.0),
        ("[[2]] ... but an earlier draft said 9/10", 2.0),  # [[N]] wins over other forms
        ("Rating: 11", None),  # off the scale
        ("Rating: 0", None),
        ("The answer is good, I like it.", None),
        ("", None),
    ],
)
def test_parse_judge_rating(verdict: str, expected: float | None) -> None:
    assert parse_judge_rating(verdict, (1, 10)) == expected


def test_parse_judge_rating_other_scale() -> None:
    assert parse_judge_rating("That is a 4/5.", (1, 5)) == 4.0
    assert parse_judge_rating("4/10", (1, 5)) is None  # the denominator is not this scale's top
    assert parse_judge_rating("[[0]]", (0, 5)) == 0.0


def test_llm_judge_normalises_and_builds_the_request() -> None:
    verdicts = {"good": "Correct and concise. Rating: [[10]]", "ok": "Rating: 7", "bad": "Wrong. 1/10"}
    judge = VerdictChatModel(verdicts=verdicts, requests=[])
    prompt = record(id="j1", messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "What is 6 * 7?"}])
    scorer = LLMJudgeScorer(judge, rubric="Only correctness matters.", max_concurrency=2)
    assert scorer.score(prompt, ["good", "ok", "bad"]) == pytest.approx([1.0, 6 / 9, 0.0])
    assert len(judge.requests) == 3
    system, user = (str(m.content) for m in judge.requests[0])
    assert "Only correctness matters." in system and DEFAULT_JUDGE_RUBRIC not in system
    assert "from 1 (worst) to 10 (best)" in system and "[[N]]" in system
    assert "user: What is 6 * 7?" in user and "system: Be kind." in user
    default = LLMJudgeScorer(VerdictChatModel(verdicts={"x": "[[3]]"}, requests=[]), scale=(0, 5))
    assert default.score(record(), ["x"]) == [pytest.approx(0.6)]
    assert DEFAULT_JUDGE_RUBRIC in str(default.messages(record(), "x")[0].content)


def test_llm_judge_async_respects_max_concurrency() -> None:
    responses = [f"r{i}" for i in range(8)]
    judge = VerdictChatModel(verdicts={r: f"Rating: {i + 1}" for i, r in enumerate(responses)}, requests=[], latency_s=0.02)
    scorer = build_scorer({"kind": "llm_judge", "max_concurrency": 3, "scale": [1, 8]}, judge=judge)
    assert isinstance(scorer, LLMJudgeScorer) and scorer.scale == (1, 8)
    scores = asyncio.run(scorer.ascore(record(), responses))
    assert scores == pytest.approx([i / 7 for i in range(8)])
    assert 1 < judge.max_in_flight <= 3


def test_llm_judge_unparseable_verdict_raises_naming_prompt() -> None:
    judge = VerdictChatModel(verdicts={"a": "Rating: 5", "b": "It is fine I guess."}, requests=[])
    with pytest.raises(JudgeParseError, match=r"response 1 of prompt 'judge-me'.*fine I guess"):
        LLMJudgeScorer(judge).score(record(id="judge-me"), ["a", "b"])
    with pytest.raises(ValueError, match="scale"):
        LLMJudgeScorer(judge, scale=(5, 5))


def test_llm_judge_with_generic_fake_chat_model() -> None:
    from langchain_core.language_models import GenericFakeChatModel

    fake = GenericFakeChatModel(messages=iter([AIMessage(content="Solid answer.\n\nRating: [[9]]")]))
    assert LLMJudgeScorer(fake, max_concurrency=1).score(record(), ["42"]) == [pytest.approx(8 / 9)]


# --------------------------------------------------------------------------------------
# 6. Registry
# --------------------------------------------------------------------------------------


def test_build_scorer_kinds_and_errors(reward_dir: Path) -> None:
    assert isinstance(build_scorer({"kind": "numeric"}), NumericAnswerScorer)
    code = build_scorer({"kind": "code_tests", "timeout_s": 5})
    assert isinstance(code, CodeTestScorer) and code.timeout_s == 5
    assert isinstance(build_scorer({"kind": "rouge"}), RougeScorer)
    with pytest.raises(ValueError, match="unknown scorer kind 'bertscore'.*bleu.*code_tests.*exact_match.*llm_judge.*numeric.*reward_model.*rouge"):
        build_scorer({"kind": "bertscore"})
    with pytest.raises(ValueError, match="'kind'"):
        build_scorer({"timeout_s": 5})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['timeout'\].*'code_tests'.*timeout_s"):
        build_scorer({"kind": "code_tests", "timeout": 5})
    with pytest.raises(ValueError, match="judge="):
        build_scorer({"kind": "llm_judge"})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_scorer({"kind": "reward_model"})
    with pytest.raises(ValueError, match="not a local directory"):
        build_scorer({"kind": "reward_model", "path": "some-org/some-reward-model"})
