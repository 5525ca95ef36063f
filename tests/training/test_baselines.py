"""Routing baselines on synthetic outcomes whose right answer is known by construction.

Pool: ``ref`` (expensive, always right), ``mid`` (one right sample of four, ranked first by
the proxy, so best-of-4 is always right and cheaper than ``ref``) and ``cheap`` (all samples
right on source A, all wrong on source B). Source A and B prompts use disjoint vocabularies,
so a text classifier can tell them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from bestroute_lc.pricing import Prices
from training.evaluation.baselines import (
    ClusteringRouter,
    EncoderFeaturizer,
    FixedBestOfN,
    ModelCascade,
    NClassRouter,
    NLabelRouter,
    OracleRouter,
    RandomMix,
    TfidfFeaturizer,
    consistency,
    default_baselines,
    featurize,
    lcs_length,
    n1_quality,
    run_baselines,
)
from training.evaluation.outcomes import (
    Choices,
    EvalPrompt,
    EvalSet,
    MemberOutcomes,
    OperatingPoint,
    evaluate,
)
from training.evaluation.sweep import Baseline, drop_at_cost_reduction, pareto

pytest.importorskip("sklearn")

M = 4
PRICES = {
    "ref": Prices(input_per_mtok=5, output_per_mtok=15),
    "mid": Prices(input_per_mtok=0.5, output_per_mtok=1.0),
    "cheap": Prices(input_per_mtok=0.1, output_per_mtok=0.2),
}
MATH = ["algebra", "equation", "integral", "matrix", "polynomial", "derivative", "theorem", "vector"]
POETRY = ["sonnet", "verse", "rhyme", "stanza", "ballad", "metaphor", "haiku", "lyric"]
MEMBERS = ["ref", "mid", "cheap"]


def _prompt(i: int, source: str, rng: np.random.Generator, split: str) -> EvalPrompt:
    words = rng.choice(MATH if source == "A" else POETRY, size=4, replace=False).tolist()
    text = ("solve this math problem: " if source == "A" else "write a short poem: ") + " ".join(words) + f" {split}{i}"
    mid_gt = np.array([1.0, 0.0, 0.0, 0.0])
    cheap_gt = np.ones(M) if source == "A" else np.zeros(M)

    def outcome(gt: np.ndarray) -> MemberOutcomes:
        return MemberOutcomes(gt=gt, output_tokens=np.full(M, 100.0), input_tokens=50, proxy=gt.copy())

    return EvalPrompt(
        id=f"{split}{i}", text=text, source=source,
        members={"ref": outcome(np.ones(M)), "mid": outcome(mid_gt), "cheap": outcome(cheap_gt)},
    )


def make_set(count: int, split: str, seed: int, sources: str = "AB") -> EvalSet:
    rng = np.random.default_rng(seed)
    prompts = [_prompt(i, sources[i % len(sources)], rng, split) for i in range(count)]
    return EvalSet(prompts, MEMBERS, "ref", PRICES, {m: False for m in MEMBERS}, max_n=M, name=split)


def texts_for(eval_set: EvalSet) -> dict[tuple[str, str], list[str]]:
    """cheap agrees with itself on A only; mid half-agrees on its (right) first sample; ref agrees."""
    out = {}
    for p in eval_set.prompts:
        out[(p.id, "cheap")] = ["Paris."] * M if p.source == "A" else ["a one", "b two", "c three", "d four"]
        out[(p.id, "mid")] = ["the answer", "the answer", "maybe this", "or that"]
        out[(p.id, "ref")] = ["paris"] * M
    return out


@pytest.fixture(scope="module")
def data():
    train, test = make_set(30, "tr", 0), make_set(20, "te", 1)
    train_x, test_x = featurize(TfidfFeaturizer(), train, test)
    return train, test, train_x, test_x, test.quality("proxy"), test.cost()


def _members(test: EvalSet, member_index: np.ndarray) -> list[str]:
    return [test.members[k] for k in member_index]


def _expected_split(test: EvalSet) -> list[str]:
    return ["cheap" if p.source == "A" else "ref" for p in test.prompts]


def _by_knob(points, knob):
    return next(p for p in points if p.knob == pytest.approx(knob))


# -- the learned routers ------------------------------------------------------------------------


def test_n_class_learns_the_source_split(data) -> None:
    train, test, train_x, test_x, quality, cost = data
    router = NClassRouter().fit(train, train_x)
    # labels: the best member, ties (cheap and ref are both perfect on A) to the cheaper
    assert _members(train, router.labels) == _expected_split(train)
    probabilities = router.predict_proba(test_x)
    assert _members(test, router.decide(probabilities)) == _expected_split(test)
    points = router.points(test, test_x, quality, cost)
    assert len(points) == 101
    fixed = _by_knob(points, 0.0)
    assert fixed.quality == pytest.approx(1.0) and fixed.distribution == {"cheap:1": 0.5, "ref:1": 0.5}
    assert _by_knob(points, 1.0).distribution == {"ref:1": 1.0}
    assert "ref:1" not in _by_knob(points, -1.0).distribution
    costs = [p.cost for p in sorted(points, key=lambda p: p.knob)]
    assert costs == sorted(costs)  # more reference bias never costs less


def test_n_class_with_one_label_is_constant() -> None:
    train, test = make_set(10, "tr", 0, sources="B"), make_set(6, "te", 1)
    train_x, test_x = featurize(TfidfFeaturizer(), train, test)
    router = NClassRouter().fit(train, train_x)
    assert router.model is None
    point = _by_knob(router.points(test, test_x, test.quality("proxy"), test.cost()), 0.0)
    assert point.distribution == {"ref:1": 1.0}


def test_n_label_routes_to_the_cheapest_capable(data) -> None:
    train, test, train_x, test_x, quality, cost = data
    router = NLabelRouter().fit(train, train_x)
    assert router.labels[:, 0].all()  # the reference is always capable
    assert not router.labels[:, 1].any()  # mid (0.25 at n = 1) never is
    assert router.models[1] == 0.0
    probabilities = router.predict_proba(test_x)
    assert _members(test, router.decide(probabilities, 0.5)) == _expected_split(test)
    points = router.points(test, test_x, quality, cost)
    assert [p.knob for p in points] == pytest.approx(list(np.linspace(0, 1, 101)))
    assert _by_knob(points, 0.0).distribution == {"cheap:1": 1.0}
    assert _by_knob(points, 0.5).quality == pytest.approx(1.0)
    costs = [p.cost for p in points]
    assert costs == sorted(costs)  # a stricter threshold never costs less


def test_n_label_tolerance_makes_weaker_members_capable(data) -> None:
    train, _, train_x, _, _, _ = data
    router = NLabelRouter(tolerance=0.8).fit(train, train_x)
    assert router.labels[:, 1].all()  # mid 0.25 >= 1 - 0.8


@pytest.mark.parametrize("n_clusters", [2, 50])
def test_clustering_routes_each_cluster_to_its_best_member(data, n_clusters: int) -> None:
    train, test, train_x, test_x, quality, cost = data
    router = ClusteringRouter(n_clusters=n_clusters).fit(train, train_x)
    assert router.kmeans.n_clusters == min(n_clusters, len(train.prompts))  # capped at the training size
    clusters = router.kmeans.predict(test_x)
    assert _members(test, router.cluster_members(0.0)[clusters]) == _expected_split(test)
    points = router.points(test, test_x, quality, cost)
    assert points[0].knob == 0.0 and points[0].quality == pytest.approx(1.0)
    assert points[0].distribution == {"cheap:1": 0.5, "ref:1": 0.5}
    # the largest epsilon admits every member: the cheapest everywhere
    assert points[-1].distribution == {"cheap:1": 1.0}
    assert [p.knob for p in points] == sorted(p.knob for p in points)


def test_encoder_featurizer_is_batch_invariant_and_feeds_clustering(tmp_path, data) -> None:
    from tests.helpers import tiny_encoder

    model, tokenizer = tiny_encoder()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    train, test, _, _, quality, cost = data
    texts = [p.text for p in test.prompts]
    small = EncoderFeaturizer(tmp_path, batch_size=3, device="cpu").transform(texts)
    large = EncoderFeaturizer(tmp_path, batch_size=64, device="cpu").transform(texts)
    assert small.shape == (len(texts), 32)
    np.testing.assert_allclose(small, large, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-6)
    train_x, test_x = featurize(EncoderFeaturizer(tmp_path, device="cpu"), train, test)
    points = ClusteringRouter(n_clusters=4).fit(train, train_x).points(test, test_x, quality, cost)
    assert all(0.0 <= p.quality <= 1.0 for p in points)


def test_routers_reject_a_different_pool(data) -> None:
    train, test, train_x, test_x, quality, cost = data
    router = NClassRouter().fit(train, train_x)
    other = EvalSet(test.prompts, ["ref", "cheap", "mid"], "ref", PRICES, {m: False for m in MEMBERS}, max_n=M)
    with pytest.raises(ValueError, match="differ from the training"):
        router.points(other, test_x, quality, cost)
    with pytest.raises(ValueError, match="feature rows"):
        router.points(test, train_x, quality, cost)


# -- the cascade ----------------------------------------------------------------------------------


def test_consistency_agreements() -> None:
    assert consistency(["Paris.", "paris", "Rome"], "exact_match").tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    same = ["the cat sat on the mat"] * 3
    for agreement in ("bleu", "rouge"):
        assert consistency(same, agreement).tolist() == pytest.approx([1.0, 1.0, 1.0])
        mixed = consistency(["the cat sat on the mat", "the cat sat on the mat", "dogs bark loudly at night"], agreement)
        assert mixed[0] == mixed[1] and 0.0 < mixed[2] < mixed[0] < 1.0
    assert consistency(["", ""], "bleu").tolist() == [1.0, 1.0]
    assert consistency(["a", "b"], lambda a, b: 0.5).tolist() == [0.5, 0.5]


def test_rouge_agreement_matches_rouge_score_and_lcs_is_exact() -> None:
    from rouge_score import rouge_scorer

    from training.evaluation.baselines import agreement_matrix

    rng = np.random.default_rng(0)
    vocab = ["cat", "cats", "sat", "on", "the", "mat", "running", "runs", "dog", "a"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, 12))) for _ in range(6)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [[scorer.score(b, a)["rougeL"].fmeasure for b in texts] for a in texts]
    np.testing.assert_allclose(agreement_matrix(texts, "rouge"), expected, atol=1e-12)

    def lcs_dp(a, b):
        table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1, j + 1] = table[i, j] + 1 if x == y else max(table[i, j + 1], table[i + 1, j])
        return int(table[-1, -1])

    for _ in range(200):
        a, b = (rng.choice(list("abcd"), size=rng.integers(0, 80)).tolist() for _ in range(2))
        assert lcs_length(a, b) == lcs_dp(a, b)


def test_cascade_stops_early_when_the_cheap_member_agrees(data) -> None:
    train, test, _, _, quality, cost = data
    cascade = ModelCascade(texts_for(test), agreement="exact_match").fit(train)
    assert cascade.order == ["cheap", "mid", "ref"]  # by average training cost
    points = {p.knob: p for p in cascade.points(test, None, quality, cost)}
    rows = np.arange(len(test.prompts))
    a = np.array([p.source == "A" for p in test.prompts])
    k_cheap, k_mid = (test.members.index(m) for m in ("cheap", "mid"))
    # K = 5 > m = 4: all 4 samples per member; native billing and equal lengths, so each
    # stage costs exactly best-of-4 of that member
    c4 = cost[:, :, M - 1]
    # tau = 0: everyone stops at cheap (right on A, wrong on B)
    assert points[0.0].distribution == {"cheap:4": 1.0}
    assert points[0.0].cost == pytest.approx(c4[:, k_cheap].mean()) and points[0.0].quality == pytest.approx(0.5)
    # tau = 0.5: A stops at cheap (all agree); B goes on to mid, whose most consistent answer
    # (2 of 4 agree) is its first, right sample
    half = points[0.5]
    assert half.distribution == {"cheap:4": 0.5, "mid:4": 0.5} and half.quality == pytest.approx(1.0)
    assert half.cost == pytest.approx(np.where(a, c4[:, k_cheap], c4[:, k_cheap] + c4[:, k_mid]).mean())
    # tau = 1: B needs full agreement, which only ref gives: it pays for all three members
    full = points[1.0]
    assert full.distribution == {"cheap:4": 0.5, "ref:4": 0.5} and full.quality == pytest.approx(1.0)
    assert full.cost == pytest.approx(np.where(a, c4[:, k_cheap], c4[rows].sum(axis=1)).mean())
    # cascading costs more than always using the reference once on B
    assert full.cost > Baseline.of(test).cost / 2


def test_cascade_uses_the_first_k_samples_and_checks_texts(data) -> None:
    train, test, _, _, quality, cost = data
    texts = texts_for(test)
    cascade = ModelCascade(texts, k=2).fit(train)
    best, gt, stage_cost, used = cascade.stages(test)
    assert (used == 2).all()
    # mid's first two texts agree: consistency 1, answer its first (right) sample
    assert best[:, 1].tolist() == [1.0] * len(test.prompts) and (gt[:, 1] == 1.0).all()
    k_mid = test.members.index("mid")
    assert stage_cost[:, 1] == pytest.approx(cost[:, k_mid, 1])
    bad = dict(texts)
    bad[(test.prompts[0].id, "mid")] = ["only one"]
    with pytest.raises(ValueError, match="texts for 4 recorded samples"):
        ModelCascade(bad).fit(train).points(test, None, quality, cost)
    del bad[(test.prompts[0].id, "mid")]
    with pytest.raises(KeyError, match="no sample texts"):
        ModelCascade(bad).fit(train).points(test, None, quality, cost)


@pytest.mark.parametrize("agreement", ["bleu", "rouge"])
def test_cascade_with_text_similarity_agreements(data, agreement: str) -> None:
    train, test, _, _, quality, cost = data
    points = ModelCascade(texts_for(test), agreement=agreement, taus=(0.0, 0.99)).fit(train).points(test, None, quality, cost)
    assert points[0].distribution == {"cheap:4": 1.0}
    # at 0.99 only identical texts agree enough: A stops at cheap, B goes on to ref
    assert points[1].distribution == {"cheap:4": 0.5, "ref:4": 0.5} and points[1].quality == pytest.approx(1.0)


# -- fixed, random, oracle -----------------------------------------------------------------------


def test_fixed_best_of_n_equals_direct_evaluation(data) -> None:
    train, test, _, _, quality, cost = data
    points = FixedBestOfN().fit(train).points(test, None, quality, cost)
    assert len(points) == len(MEMBERS) * M
    i = 0
    for k in range(len(MEMBERS)):
        for n in range(1, M + 1):
            direct = evaluate(test, Choices.constant(len(test.prompts), k, n), quality, cost, knob=float(n))
            assert points[i] == direct
            i += 1
    mid = [p for p in points if "mid:" in next(iter(p.distribution))]
    assert [p.quality for p in mid] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_random_mix_per_cheaper_member_is_grouped_and_the_best_is_shown(data) -> None:
    train, test, _, _, quality, cost = data
    points = RandomMix().fit(train).points(test, None, quality, cost)
    groups = {p.group for p in points}
    assert groups == {m for m in test.members if m != test.reference}
    baseline = Baseline.of(test)
    for member in groups:
        own = [p for p in points if p.group == member]
        assert own[0].distribution == {f"{member}:1": 1.0} and own[-1].distribution == {"ref:1": 1.0}
    # Table 1 reads the best member's line at each cost, never a mix of two cheaper members
    target = 0.5 * baseline.cost
    lines = []
    for member in groups:
        own = [p for p in points if p.group == member]
        weak, ref = own[0], own[-1]
        if weak.cost <= target:
            w = (target - weak.cost) / (ref.cost - weak.cost)
            lines.append(weak.quality + w * (ref.quality - weak.quality))
    assert drop_at_cost_reduction(points, baseline, 0.5) == pytest.approx(baseline.quality_drop_pct(
        OperatingPoint(target, max(lines), {})
    ))


def test_random_mix_lies_on_the_line_between_cheapest_and_reference(data) -> None:
    train, test, _, _, quality, cost = data
    random = RandomMix(against="cheapest").fit(train)
    points = random.points(test, None, quality, cost)
    cheapest, reference = points[0], points[-1]
    assert cheapest.distribution == {"cheap:1": 1.0} and reference.distribution == {"ref:1": 1.0}
    assert reference.cost == pytest.approx(Baseline.of(test).cost) and reference.quality == pytest.approx(1.0)
    for point in points:
        w = (point.cost - cheapest.cost) / (reference.cost - cheapest.cost)
        assert w == pytest.approx(point.knob)
        assert point.quality == pytest.approx(cheapest.quality + w * (reference.quality - cheapest.quality))
        assert sum(point.distribution.values()) == pytest.approx(1.0)
    target = 0.3 * cheapest.cost + 0.7 * reference.cost
    (matched,) = random.at_cost(test, quality, cost, [target])
    assert matched.cost == pytest.approx(target) and matched.knob == pytest.approx(0.7)
    assert matched.distribution == pytest.approx({"cheap:1": 0.3, "ref:1": 0.7})


def test_oracle_routes_each_prompt_to_its_cheapest_sufficient_option(data) -> None:
    train, test, _, _, quality, cost = data
    points = OracleRouter().fit(train).points(test, None, quality, cost)
    exact = points[0]
    # A: cheap is perfect; B: mid best-of-4 (its right sample surely drawn) beats ref's price
    assert exact.knob == 0.0 and exact.quality == pytest.approx(1.0)
    assert exact.distribution == {"cheap:1": 0.5, "mid:4": 0.5}
    assert exact.cost < Baseline.of(test).cost
    assert points[-1].distribution == {"cheap:1": 1.0}  # fully relaxed: the cheapest everywhere


def _interpolate(frontier, at_cost: float) -> float:
    costs = [p.cost for p in frontier]
    assert at_cost >= costs[0] - 1e-15, "a method is cheaper than the oracle's cheapest point"
    return float(np.interp(at_cost, costs, [p.quality for p in frontier]))


@pytest.mark.parametrize("curve", ["epsilon", "hull"])
def test_oracle_dominates_every_other_method(data, curve: str) -> None:
    train, test, _, _, _, _ = data
    curves = run_baselines(train, test, [b for b in default_baselines(texts_for(test)) if b.name != "oracle"], picker="proxy")
    curves["random (matched)"] = RandomMix().fit(train).at_cost(test, test.quality("proxy"), test.cost(), [1e-4, 5e-4, 1e-3])
    oracle = pareto(OracleRouter(curve=curve).fit(train).points(test, None, test.quality("proxy"), test.cost()))
    assert set(curves) >= {"n-class", "n-label", "clustering", "fixed best-of-n", "random"} | {
        f"cascade({a})" for a in ("exact_match", "bleu", "rouge")
    }
    for name, points in curves.items():
        for point in points:
            assert point.quality <= _interpolate(oracle, point.cost) + 1e-9, (name, point)


def test_oracle_hull_is_the_exact_frontier_on_random_outcomes() -> None:
    rng = np.random.default_rng(3)
    prompts = []
    for i in range(25):
        members = {
            m: MemberOutcomes(
                gt=rng.random(5).round(1), output_tokens=rng.integers(20, 200, 5).astype(float), input_tokens=float(rng.integers(10, 100)),
                proxy=rng.random(5),
            )
            for m in MEMBERS
        }
        prompts.append(EvalPrompt(f"r{i}", f"random {i}", "s", members))
    test = EvalSet(prompts, MEMBERS, "ref", PRICES, {"ref": False, "mid": True, "cheap": False}, max_n=5)
    quality, cost = test.quality("proxy"), test.cost()
    hull = OracleRouter(picker=None, curve="hull").points(test, None, quality, cost)
    knobs = [p.knob for p in hull]
    assert knobs == sorted(knobs, reverse=True) and len(set(knobs)) == len(knobs)
    for point in hull:
        assert sum(point.distribution.values()) == pytest.approx(1.0)
    # the ends: per prompt the cheapest option, and the best option (cheapest among ties)
    flat_q, flat_c = quality.reshape(25, -1), cost.reshape(25, -1)
    assert hull[0].cost == pytest.approx(flat_c.min(axis=1).mean())
    assert hull[-1].quality == pytest.approx(flat_q.max(axis=1).mean())
    frontier = pareto(hull)
    others = FixedBestOfN().points(test, None, quality, cost) + OracleRouter(picker=None).points(test, None, quality, cost)
    for _ in range(200):  # and random per-prompt policies
        choice = rng.integers(0, flat_q.shape[1], 25)
        others.append(evaluate(test, Choices(choice // 5, choice % 5 + 1), quality, cost))
    for point in others:
        assert point.quality <= _interpolate(frontier, point.cost) + 1e-12


def test_n1_quality_is_the_n1_column_of_every_picker(data) -> None:
    _, test, _, _, quality, _ = data
    np.testing.assert_allclose(n1_quality(test), quality[:, :, 0])
    np.testing.assert_allclose(n1_quality(test), test.quality("random")[:, :, 0])
