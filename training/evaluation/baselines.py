"""Routing baselines of the paper (App. A.2, App. B.2) and reference curves, on recorded outcomes.

Every baseline is fitted on the TRAIN :class:`EvalSet` only and gives a list of
:class:`OperatingPoint` on the TEST EvalSet (same members, prices and billing), evaluated
with the same ``quality`` / ``cost`` arrays as BEST-Route (``test.quality(picker)``,
``test.cost()``), so every curve is on the same axes and plugs into ``Report.curves``::

    featurizer = TfidfFeaturizer()                      # or EncoderFeaturizer(backbone_dir)
    curves = run_baselines(train, test, default_baselines(), featurizer=featurizer, picker="proxy")

The common shape is :class:`RoutingBaseline`: ``fit(train, train_features)`` then
``points(test, test_features, quality, cost)``. ``featurize(featurizer, train, test)`` turns
query texts (``EvalPrompt.text``) into feature matrices; the featurizer is fitted on the
train texts only.

Choices made (the paper describes the baselines in one or two sentences each; where it is
vague we chose what we think a careful reimplementation should do):

**Shared.** A routing baseline (N-class, N-label, clustering) picks one LLM and draws one
sample (n = 1), as in Srivatsa et al. (2024); best-of-n is BEST-Route's addition. The
quality of member k on a training prompt is its n = 1 expected quality: the mean ground
truth of its recorded samples (independent of the picker). "Cheaper" always means a lower
*average training cost* of one call: the mean over training prompts of the prompt cost plus
the mean response cost (``cost()[:, k, 0]``), which is also how the paper orders the cascade.
Float ties (within ``tie_atol``) are broken towards the cheaper member. All sweeps are
deterministic; scikit-learn models are seeded (``seed``).

1. **N-class** (:class:`NClassRouter`). Label of a training prompt: the member with the
   highest n = 1 quality (ties: cheapest). The paper fine-tunes a BERT classifier; for CPU
   cost we fit a multinomial logistic regression on frozen features (TF-IDF, or a frozen
   encoder's mean-pooled states with :class:`EncoderFeaturizer`). The paper's router is the
   argmax: one point (``knob == 0``). To also give a curve we sweep a *reference bias* b in
   [-1, 1]: b is added to the reference's predicted probability before the argmax (b > 0
   sends more prompts to the reference: more quality and cost; b < 0 fewer).
2. **N-label** (:class:`NLabelRouter`). Member k is *capable* on a training prompt when its
   n = 1 quality >= the reference's n = 1 quality - ``tolerance`` (default 0: at least as good
   as the reference on average). One binary logistic regression per non-reference member
   (a member whose label is constant on the training set gets that constant probability).
   The reference is capable by definition, so it is always a candidate: the router takes
   the cheapest member whose P(capable) >= threshold, among the reference and the predicted-
   capable members. Sweeping the threshold over [0, 1] gives the curve (0: the cheapest
   member everywhere; 1: nearly always the reference).
3. **Clustering** (:class:`ClusteringRouter`). K-Means (``n_clusters=50`` as in the paper,
   capped at the number of training prompts; ``n_init=10``, seeded) on the features - TF-IDF
   by default as in the paper, encoder features optionally. Per cluster, the member with the
   best mean n = 1 quality over the cluster's training prompts (ties: cheaper); a test prompt
   goes to its nearest centroid's member (``knob == 0``: the paper's router). Curve: per
   cluster, the cheapest member whose mean quality is within epsilon of the cluster's best;
   epsilon is swept over every breakpoint of the training table (best - mean of each cluster
   and member), so the curve is exact, not a grid. A cluster without training prompts (possible
   only with duplicate features) uses the global means.
4. **Model cascade** (:class:`ModelCascade`, Yue et al. 2023, App. B.2). Members in order of
   average training cost. For each member in turn, take K = 5 responses - the first K recorded
   samples (all of them if fewer) - compute each response's consistency, the mean of
   agree(i, j) over j in [K] (j = i included, as the paper's formula), and stop at the first
   member whose best consistency >= tau; the answer is its most consistent response (first on
   ties) and its quality is that response's ground truth. If no member reaches tau, the last
   member's most consistent response is the answer. Cost: the sum over every member tried of
   the realised bill of its K samples (prompt billed once, or K times for per-sample billing,
   plus the output tokens of those K samples). Agreement: ``exact_match`` (texts normalised by
   :func:`training.scorers.normalize_answer`), ``bleu`` (sacrebleu sentence BLEU of i against
   j, ``effective_order=True``, / 100) or ``rouge`` (ROUGE-L F1 with rouge-score's stemming
   tokenizer; the LCS is computed bit-parallel, each text tokenised once - the same numbers as
   ``rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``, ~30x faster), or any
   ``callable(a, b) -> [0, 1]``; two empty texts agree (1), an empty and a non-empty one do not
   (0). Sample texts are not part of :class:`MemberOutcomes`, so the cascade takes
   ``texts[(prompt_id, member)] -> list[str]``, aligned with the recorded samples. The
   distribution label of a prompt is ``"<answering member>:<K used>"`` (earlier members were
   paid for too). Curve: tau over 0, 0.01, ..., 1. Quality and cost are realised values of one
   cascade run on the recorded samples, not expectations over subsets.
5. **Fixed best-of-n** (:class:`FixedBestOfN`): every (member, n) with n <= ``test.ns(member)``
   as a single constant policy (``knob`` = n).
6. **Random** (:class:`RandomMix`, RouteLLM's random router): with probability p the
   reference at n = 1, else a cheaper member at n = 1, independently per prompt; one such
   strong/weak pair per cheaper member (``against="each"``, each a ``group``, the best shown
   at each cost) or only the cheapest single option (``against="cheapest"``). Cost and
   quality are the exact mixtures (no sampling), so the points lie on straight lines;
   ``knob`` = p, over 0, 0.01, ..., 1, or ``at_cost(...)`` for given target costs.
7. **Oracle** (:class:`OracleRouter`): knows every test outcome. It decides and reports with
   ``test.quality(picker)`` (``picker="oracle"`` by default: best sample by ground truth, the
   upper bound of everything; ``"proxy"``: an oracle router with the production reranker;
   ``None``: the ``quality`` array passed in). Per test prompt, the cheapest (member, n) whose
   quality >= the reference's n = 1 quality - epsilon (ties in cost: higher quality); the
   reference at n = 1 always qualifies. ``knob`` = epsilon, swept from 0 to the largest gap
   (where every prompt gets its cheapest option). ``curve="hull"`` instead gives the exact
   upper concave frontier of all per-prompt choices (the Lagrangian oracle: per prompt, the
   option maximising quality - lambda * cost, every lambda; ``knob`` = lambda in quality per
   USD). Its Pareto interpolation is >= any policy evaluated with the same arrays, randomised
   ones included; the epsilon curve is the requested per-prompt heuristic and need not be.

scikit-learn is needed by N-class, N-label, clustering and :class:`TfidfFeaturizer` and is
imported only there.
"""

from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from training.evaluation.outcomes import (
    Choices,
    EvalSet,
    OperatingPoint,
    Picker,
    evaluate,
)

#: Features of a prompt set: a dense [Q, D] array or a scipy sparse matrix with Q rows.
Features = Any

#: 0, 0.01, ..., 1: thresholds, shares and consistency levels.
UNIT_GRID = tuple(round(float(t), 10) for t in np.linspace(0.0, 1.0, 101))
#: -1, -0.98, ..., 1: N-class reference biases.
BIAS_GRID = tuple(round(float(t), 10) for t in np.linspace(-1.0, 1.0, 101))

__all__ = [
    "BIAS_GRID",
    "UNIT_GRID",
    "ClusteringRouter",
    "EncoderFeaturizer",
    "Featurizer",
    "FixedBestOfN",
    "ModelCascade",
    "NClassRouter",
    "NLabelRouter",
    "OracleRouter",
    "RandomMix",
    "RoutingBaseline",
    "TfidfFeaturizer",
    "average_member_costs",
    "consistency",
    "default_baselines",
    "featurize",
    "lcs_length",
    "n1_quality",
    "run_baselines",
]


# --------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------


class Featurizer(ABC):
    """Query texts -> feature rows. ``fit`` sees the training texts only."""

    name: str = "features"

    def fit(self, texts: Sequence[str]) -> Featurizer:
        return self

    @abstractmethod
    def transform(self, texts: Sequence[str]) -> Features: ...

    def fit_transform(self, texts: Sequence[str]) -> Features:
        return self.fit(texts).transform(texts)


class TfidfFeaturizer(Featurizer):
    """scikit-learn ``TfidfVectorizer`` (its defaults unless overridden) fitted on the train
    texts; gives a sparse CSR matrix (L2-normalised rows)."""

    name = "tfidf"

    def __init__(self, **vectorizer_kwargs: Any) -> None:
        self.vectorizer_kwargs = vectorizer_kwargs
        self.vectorizer: Any = None

    def fit(self, texts: Sequence[str]) -> TfidfFeaturizer:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(**self.vectorizer_kwargs).fit(list(texts))
        return self

    def transform(self, texts: Sequence[str]) -> Features:
        if self.vectorizer is None:
            raise RuntimeError("TfidfFeaturizer.transform before fit")
        return self.vectorizer.transform(list(texts))


class EncoderFeaturizer(Featurizer):
    """A frozen Hugging Face encoder, mask-weighted mean (or CLS) pooled, in batches.

    ``backbone``: a local directory (``load_backbone``; never the hub) or a ``(model,
    tokenizer)`` pair. Texts are encoded in batches of ``batch_size`` (sorted by length to
    limit padding, results in input order), truncated to ``max_length`` tokens. With
    ``normalize`` the rows are L2-normalised (cosine geometry for K-Means). Nothing is fitted.
    """

    name = "encoder"

    def __init__(
        self,
        backbone: str | Path | tuple[Any, Any],
        *,
        pooling: Literal["mean", "cls"] = "mean",
        batch_size: int = 32,
        max_length: int = 256,
        device: str | None = None,
        normalize: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.backbone = backbone
        self.pooling = pooling
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.normalize = normalize
        self._loaded: tuple[Any, Any, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            from bestroute_lc.encoders import load_backbone, select_device

            if isinstance(self.backbone, tuple):
                model, tokenizer = self.backbone
            else:
                model, tokenizer = load_backbone(self.backbone)
            device = select_device(self.device)
            self._loaded = (model.to(device).eval(), tokenizer, device)
        return self._loaded

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from bestroute_lc.encoders import pool_hidden_states

        model, tokenizer, device = self._load()
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[np.ndarray] = [np.empty(0)] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in chunk], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = model(**inputs).last_hidden_state
                pooled = pool_hidden_states(hidden, inputs["attention_mask"], self.pooling).float().cpu().numpy()
                for i, row in zip(chunk, pooled):
                    rows[i] = row
        if not texts:
            return np.zeros((0, 0))
        out = np.stack(rows).astype(np.float64)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def featurize(featurizer: Featurizer, train: EvalSet, test: EvalSet) -> tuple[Features, Features]:
    """(train features, test features) of the prompts' texts; the featurizer sees train only."""
    return featurizer.fit_transform([p.text for p in train.prompts]), featurizer.transform([p.text for p in test.prompts])


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def n1_quality(eval_set: EvalSet) -> np.ndarray:
    """[Q, M] expected quality of one sample: the mean ground truth of the recorded samples."""
    return np.asarray([[float(np.mean(p.members[m].gt)) for m in eval_set.members] for p in eval_set.prompts])


def average_member_costs(eval_set: EvalSet) -> np.ndarray:
    """[M] mean over prompts of one call's expected cost (prompt + mean response cost)."""
    return eval_set.cost()[:, :, 0].mean(axis=0)


def _argmax_cheapest(scores: np.ndarray, cost_order: np.ndarray, atol: float) -> np.ndarray:
    """Per row the column with the highest score; scores within ``atol`` of the best count
    as ties, won by the column earliest in ``cost_order`` (cheapest first)."""
    ordered = scores[:, cost_order]
    best = np.nanmax(ordered, axis=1, keepdims=True)
    return cost_order[np.argmax(ordered >= best - atol, axis=1)]


def _n_rows(features: Features) -> int:
    return int(features.shape[0])


class RoutingBaseline(ABC):
    """A routing method fitted on a train EvalSet and swept on a test EvalSet."""

    name: str = "baseline"
    #: Whether ``fit`` / ``points`` need feature rows.
    needs_features: bool = False
    #: Whether anything is learned from the training set (False: ``fit`` is optional and
    #: only records the pool, which ``points`` then checks the test set against).
    needs_fit: bool = True

    def __init__(self, *, tie_atol: float = 1e-9) -> None:
        self.tie_atol = tie_atol
        self.members: list[str] | None = None
        self.reference: str | None = None
        self.avg_cost: np.ndarray | None = None  # [M] average training cost of one call
        self.cost_order: np.ndarray | None = None  # member indices, cheapest first

    def fit(self, train: EvalSet | None = None, train_features: Features | None = None) -> RoutingBaseline:
        if train is None:
            if self.needs_fit:
                raise ValueError(f"{self.name} must be fitted on a training set")
            return self
        if not train.prompts:
            raise ValueError(f"{self.name}: empty training set")
        if self.needs_features:
            if train_features is None:
                raise ValueError(f"{self.name} needs training features")
            if _n_rows(train_features) != len(train.prompts):
                raise ValueError(f"{self.name}: {_n_rows(train_features)} feature rows for {len(train.prompts)} training prompts")
        self.members, self.reference = list(train.members), train.reference
        self.avg_cost = average_member_costs(train)
        self.cost_order = np.argsort(self.avg_cost, kind="stable")
        self._fit(train, train_features)
        return self

    def _fit(self, train: EvalSet, features: Features | None) -> None:
        """Subclass hook; ``members``, ``reference``, ``avg_cost`` are set."""

    def _check_test(self, test: EvalSet, features: Features | None) -> None:
        if self.members is None:
            if self.needs_fit:
                raise RuntimeError(f"{self.name}: points() before fit()")
            return
        if list(test.members) != self.members or test.reference != self.reference:
            raise ValueError(
                f"{self.name}: test members {test.members} (reference {test.reference}) differ from the training "
                f"members {self.members} (reference {self.reference})"
            )
        if self.needs_features:
            if features is None:
                raise ValueError(f"{self.name} needs test features")
            if _n_rows(features) != len(test.prompts):
                raise ValueError(f"{self.name}: {_n_rows(features)} feature rows for {len(test.prompts)} test prompts")

    @property
    def ref_index(self) -> int:
        assert self.members is not None and self.reference is not None
        return self.members.index(self.reference)

    @abstractmethod
    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        """Operating points on ``test`` (``quality``/``cost``: ``test.quality(picker)``, ``test.cost()``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _single_sample_points(
    test: EvalSet, decisions: Sequence[tuple[float, np.ndarray]], quality: np.ndarray, cost: np.ndarray
) -> list[OperatingPoint]:
    ones = np.ones(len(test.prompts), dtype=int)
    return [evaluate(test, Choices(np.asarray(member, dtype=int), ones), quality, cost, knob=float(knob)) for knob, member in decisions]


def _logistic(C: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, random_state=seed)


# --------------------------------------------------------------------------------------
# 1. N-class
# --------------------------------------------------------------------------------------


class NClassRouter(RoutingBaseline):
    """Predict the best single member (see the module docstring, 1.)."""

    needs_features = True

    def __init__(
        self,
        *,
        C: float = 1.0,
        max_iter: int = 2000,
        biases: Sequence[float] = BIAS_GRID,
        seed: int = 0,
        name: str = "n-class",
        tie_atol: float = 1e-9,
    ) -> None:
        super().__init__(tie_atol=tie_atol)
        self.C, self.max_iter, self.biases, self.seed, self.name = C, max_iter, tuple(biases), seed, name
        self.model: Any = None
        self.constant: int | None = None  # the one class when training labels never vary
        self.labels: np.ndarray | None = None

    def _fit(self, train: EvalSet, features: Features | None) -> None:
        assert self.cost_order is not None
        self.labels = _argmax_cheapest(n1_quality(train), self.cost_order, self.tie_atol)
        classes = np.unique(self.labels)
        if len(classes) == 1:
            self.model, self.constant = None, int(classes[0])
        else:
            self.model, self.constant = _logistic(self.C, self.max_iter, self.seed).fit(features, self.labels), None

    def predict_proba(self, features: Features) -> np.ndarray:
        """[Q, M] predicted probability that each member is the best (0 for unseen classes)."""
        assert self.members is not None
        out = np.zeros((_n_rows(features), len(self.members)))
        if self.constant is not None:
            out[:, self.constant] = 1.0
        else:
            out[:, self.model.classes_] = self.model.predict_proba(features)
        return out

    def decide(self, probabilities: np.ndarray, bias: float = 0.0) -> np.ndarray:
        """[Q] member index: argmax with ``bias`` added to the reference (ties: cheaper)."""
        assert self.cost_order is not None
        scores = probabilities.copy()
        scores[:, self.ref_index] += bias
        return _argmax_cheapest(scores, self.cost_order, self.tie_atol)

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, test_features)
        probabilities = self.predict_proba(test_features)
        return _single_sample_points(test, [(b, self.decide(probabilities, b)) for b in self.biases], quality, cost)


# --------------------------------------------------------------------------------------
# 2. N-label
# --------------------------------------------------------------------------------------


class NLabelRouter(RoutingBaseline):
    """Predict the capable members, take the cheapest (see the module docstring, 2.)."""

    needs_features = True

    def __init__(
        self,
        *,
        tolerance: float = 0.0,
        C: float = 1.0,
        max_iter: int = 2000,
        thresholds: Sequence[float] = UNIT_GRID,
        seed: int = 0,
        name: str = "n-label",
        tie_atol: float = 1e-9,
    ) -> None:
        super().__init__(tie_atol=tie_atol)
        if tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        self.tolerance, self.C, self.max_iter, self.thresholds, self.seed, self.name = (
            tolerance, C, max_iter, tuple(thresholds), seed, name,
        )
        self.models: dict[int, Any] = {}  # member index -> classifier, or a float (constant probability)
        self.labels: np.ndarray | None = None

    def _fit(self, train: EvalSet, features: Features | None) -> None:
        quality = n1_quality(train)
        ref = self.ref_index
        self.labels = quality >= quality[:, [ref]] - self.tolerance - self.tie_atol  # [Q, M]
        self.models = {}
        for k in range(len(train.members)):
            if k == ref:
                continue
            y = self.labels[:, k].astype(int)
            if y.min() == y.max():
                self.models[k] = float(y[0])
            else:
                self.models[k] = _logistic(self.C, self.max_iter, self.seed).fit(features, y)

    def predict_proba(self, features: Features) -> np.ndarray:
        """[Q, M] predicted P(capable); 1 for the reference."""
        assert self.members is not None
        out = np.ones((_n_rows(features), len(self.members)))
        for k, model in self.models.items():
            out[:, k] = model if isinstance(model, float) else model.predict_proba(features)[:, list(model.classes_).index(1)]
        return out

    def decide(self, probabilities: np.ndarray, threshold: float) -> np.ndarray:
        """[Q] the cheapest member with P(capable) >= threshold (the reference always qualifies)."""
        assert self.cost_order is not None
        capable = probabilities >= threshold
        capable[:, self.ref_index] = True
        return self.cost_order[np.argmax(capable[:, self.cost_order], axis=1)]

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, test_features)
        probabilities = self.predict_proba(test_features)
        return _single_sample_points(test, [(t, self.decide(probabilities, t)) for t in self.thresholds], quality, cost)


# --------------------------------------------------------------------------------------
# 3. Clustering
# --------------------------------------------------------------------------------------


class ClusteringRouter(RoutingBaseline):
    """K-Means on query features, one member per cluster (see the module docstring, 3.)."""

    needs_features = True

    def __init__(
        self,
        *,
        n_clusters: int = 50,
        n_init: int = 10,
        epsilons: Sequence[float] | None = None,
        seed: int = 0,
        name: str = "clustering",
        tie_atol: float = 1e-9,
    ) -> None:
        super().__init__(tie_atol=tie_atol)
        if n_clusters < 1:
            raise ValueError("n_clusters must be >= 1")
        self.n_clusters, self.n_init, self.epsilons, self.seed, self.name = n_clusters, n_init, epsilons, seed, name
        self.kmeans: Any = None
        self.table: np.ndarray | None = None  # [C, M] mean n = 1 quality per cluster

    def _fit(self, train: EvalSet, features: Features | None) -> None:
        from sklearn.cluster import KMeans

        k = min(self.n_clusters, len(train.prompts))
        self.kmeans = KMeans(n_clusters=k, n_init=self.n_init, random_state=self.seed).fit(features)
        quality = n1_quality(train)
        assignment = self.kmeans.labels_
        table = np.tile(quality.mean(axis=0), (k, 1))  # empty clusters: global means
        for c in range(k):
            rows = assignment == c
            if rows.any():
                table[c] = quality[rows].mean(axis=0)
        self.table = table

    def cluster_members(self, epsilon: float = 0.0) -> np.ndarray:
        """[C] per cluster the cheapest member whose mean quality >= the cluster's best - epsilon."""
        assert self.table is not None and self.cost_order is not None
        ordered = self.table[:, self.cost_order]
        ok = ordered >= ordered.max(axis=1, keepdims=True) - epsilon - self.tie_atol
        return self.cost_order[np.argmax(ok, axis=1)]

    def default_epsilons(self) -> list[float]:
        """0 and every (cluster best - member mean): the exact breakpoints of the curve."""
        assert self.table is not None
        gaps = (self.table.max(axis=1, keepdims=True) - self.table).ravel()
        return sorted({0.0, *(float(g) for g in gaps if g > self.tie_atol)})

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, test_features)
        clusters = self.kmeans.predict(test_features)
        epsilons = self.default_epsilons() if self.epsilons is None else list(self.epsilons)
        return _single_sample_points(test, [(e, self.cluster_members(e)[clusters]) for e in epsilons], quality, cost)


# --------------------------------------------------------------------------------------
# 4. Model cascade
# --------------------------------------------------------------------------------------

Agreement = Union[Literal["exact_match", "bleu", "rouge"], Callable[[str, str], float]]  # noqa: UP007 - runtime alias


@functools.lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


class _CachedPorterStemmer:
    """rouge-score's Porter stemmer (nltk) with a word cache: stemming dominates ROUGE time."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self.stem = functools.lru_cache(maxsize=1 << 17)(porter.PorterStemmer().stem)


@functools.lru_cache(maxsize=1)
def _rouge_stemmer() -> _CachedPorterStemmer:
    return _CachedPorterStemmer()


def _rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokenisation with stemming (``RougeScorer(..., use_stemmer=True)``)."""
    from rouge_score.tokenize import tokenize

    return tokenize(text, _rouge_stemmer())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, bit-parallel
    (Allison-Dix / Hyyro: one big-integer step per token of ``b``)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _rouge_l_f1(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of token lists, as rouge-score's ``rougeL`` (symmetric); two empty lists agree."""
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _empty_guard(a: str, b: str) -> float | None:
    empty_a, empty_b = not a.strip(), not b.strip()
    if empty_a or empty_b:
        return 1.0 if empty_a and empty_b else 0.0
    return None


def _bleu_agree(a: str, b: str) -> float:
    guard = _empty_guard(a, b)
    return guard if guard is not None else min(1.0, max(0.0, _bleu().sentence_score(a, [b]).score / 100.0))


def agreement_matrix(texts: Sequence[str], agreement: Agreement) -> np.ndarray:
    """[K, K] agree(i, j) for every pair (i: the response scored, j: the one compared with)."""
    k = len(texts)
    if agreement == "exact_match":
        from training.scorers import normalize_answer

        canonical = [normalize_answer(t) for t in texts]
        return np.asarray([[float(canonical[i] == canonical[j]) for j in range(k)] for i in range(k)])
    if agreement == "rouge":  # symmetric: tokenise (and stem) each text once, score each pair once
        tokens = [_rouge_tokens(t) for t in texts]
        out = np.eye(k)
        for i in range(k):
            for j in range(i + 1, k):
                out[i, j] = out[j, i] = _rouge_l_f1(tokens[i], tokens[j])
        for i in range(k):
            out[i, i] = _rouge_l_f1(tokens[i], tokens[i])
        return out
    if agreement == "bleu":
        fn: Callable[[str, str], float] = _bleu_agree
    elif callable(agreement):
        fn = agreement
    else:
        raise ValueError(f"unknown agreement {agreement!r}; use 'exact_match', 'bleu', 'rouge' or a callable")
    return np.asarray([[float(fn(texts[i], texts[j])) for j in range(k)] for i in range(k)])


def consistency(texts: Sequence[str], agreement: Agreement = "exact_match") -> np.ndarray:
    """[K] consistency(i) = mean over j in [K] (i included) of agree(i, j) (paper App. A.2)."""
    if not texts:
        raise ValueError("consistency of no responses")
    return agreement_matrix(texts, agreement).mean(axis=1)


class ModelCascade(RoutingBaseline):
    """Yue et al. (2023) cascade with self-consistency (see the module docstring, 4.).

    ``texts[(prompt_id, member)]``: the recorded sample texts in the order of the recorded
    ground truths (every test prompt, every cascade member). ``members``: the cascade's
    members (default: all), ordered by average training cost in ``fit``.
    """

    def __init__(
        self,
        texts: Mapping[tuple[str, str], Sequence[str]],
        *,
        agreement: Agreement = "exact_match",
        k: int = 5,
        taus: Sequence[float] = UNIT_GRID,
        members: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError("k must be >= 1")
        self.texts, self.agreement, self.k, self.taus = texts, agreement, k, tuple(taus)
        self.cascade_members = None if members is None else list(members)
        label = agreement if isinstance(agreement, str) else getattr(agreement, "__name__", "custom")
        self.name = name or f"cascade({label})"
        self.order: list[str] = []

    def _fit(self, train: EvalSet, features: Features | None) -> None:
        assert self.avg_cost is not None and self.cost_order is not None
        chosen = train.members if self.cascade_members is None else self.cascade_members
        unknown = [m for m in chosen if m not in train.members]
        if unknown or not chosen:
            raise ValueError(f"{self.name}: cascade members {list(chosen)} must be a non-empty subset of {train.members}")
        self.order = [train.members[i] for i in self.cost_order if train.members[i] in chosen]

    def stages(self, test: EvalSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per test prompt and cascade stage: best consistency, ground truth of the most
        consistent response, realised cost of the stage's samples, and samples used; each [Q, S]."""
        shape = (len(test.prompts), len(self.order))
        best, gt, cost, used = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=int)
        for qi, prompt in enumerate(test.prompts):
            for si, member in enumerate(self.order):
                outcome = prompt.members[member]
                key = (prompt.id, member)
                if key not in self.texts:
                    raise KeyError(f"{self.name}: no sample texts for prompt {prompt.id!r}, member {member!r}")
                texts = list(self.texts[key])
                if len(texts) != len(outcome.gt):
                    raise ValueError(
                        f"{self.name}: prompt {prompt.id!r}, {member}: {len(texts)} texts for {len(outcome.gt)} recorded samples"
                    )
                k = min(self.k, len(texts))
                scores = consistency(texts[:k], self.agreement)
                top = int(np.argmax(scores))
                prices = test.prices[member]
                billed_inputs = k if test.prompt_billed_per_sample[member] else 1
                best[qi, si], gt[qi, si], used[qi, si] = scores[top], float(outcome.gt[top]), k
                cost[qi, si] = prices.input_cost(outcome.input_tokens) * billed_inputs + prices.output_cost(
                    float(np.sum(outcome.output_tokens[:k]))
                )
        return best, gt, cost, used

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, None)
        best, gt, stage_cost, used = self.stages(test)
        rows = np.arange(len(test.prompts))
        cumulative = np.cumsum(stage_cost, axis=1)
        last = len(self.order) - 1
        out = []
        for tau in self.taus:
            reached = best >= tau - 1e-12
            stop = np.where(reached.any(axis=1), np.argmax(reached, axis=1), last)
            labels = Counter(f"{self.order[s]}:{used[q, s]}" for q, s in zip(rows, stop))
            out.append(
                OperatingPoint(
                    cost=float(cumulative[rows, stop].mean()),
                    quality=float(gt[rows, stop].mean()),
                    distribution={label: count / len(rows) for label, count in sorted(labels.items())},
                    knob=float(tau),
                )
            )
        return out


# --------------------------------------------------------------------------------------
# 5. Fixed best-of-n, 6. random mixing, 7. oracle
# --------------------------------------------------------------------------------------


class FixedBestOfN(RoutingBaseline):
    """Every (member, n) as one constant policy; ``knob`` = n."""

    needs_fit = False

    def __init__(self, *, ns: Sequence[int] | None = None, name: str = "fixed best-of-n") -> None:
        super().__init__()
        self.ns, self.name = ns, name

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, None)
        count, out = len(test.prompts), []
        for index, member in enumerate(test.members):
            for n in range(1, test.ns(member) + 1) if self.ns is None else [n for n in self.ns if n <= test.ns(member)]:
                out.append(evaluate(test, Choices.constant(count, index, n), quality, cost, knob=float(n)))
        return out


def _cheapest_option(test: EvalSet, quality: np.ndarray, cost: np.ndarray) -> tuple[int, int]:
    """(member index, n) of the lowest mean cost among options recorded on every prompt."""
    best: tuple[float, float, int, int] | None = None
    for k, member in enumerate(test.members):
        for n in range(1, test.ns(member) + 1):
            key = (float(cost[:, k, n - 1].mean()), -float(quality[:, k, n - 1].mean()), k, n)
            best = key if best is None or key < best else best
    assert best is not None
    return best[2], best[3]


class RandomMix(RoutingBaseline):
    """RouteLLM's random router: per prompt, the reference (n = 1) with probability p, else
    a cheaper member (n = 1), independently per prompt.

    ``against="each"`` (default): one strong/weak mix per cheaper member, each its own
    ``group`` (``sweep.hulls`` reads the best member at each cost, not mixes across them);
    ``against="cheapest"``: only the cheapest single option (the cheapest mean cost over all
    (member, n)). Cost and quality are the exact mixtures (no sampling), so the points lie on
    the straight lines between the ends; ``knob`` = p, over ``shares``, or ``at_cost(...)``
    (cheapest option only) for given target costs.
    """

    needs_fit = False

    def __init__(self, *, shares: Sequence[float] = UNIT_GRID, name: str = "random", against: Literal["each", "cheapest"] = "each") -> None:
        super().__init__()
        if against not in ("each", "cheapest"):
            raise ValueError(f"against must be 'each' or 'cheapest', got {against!r}")
        self.shares, self.name, self.against = tuple(shares), name, against

    def _ends(self, test: EvalSet, quality: np.ndarray, cost: np.ndarray) -> tuple[OperatingPoint, OperatingPoint]:
        count = len(test.prompts)
        k, n = _cheapest_option(test, quality, cost)
        cheap = evaluate(test, Choices.constant(count, k, n), quality, cost)
        ref = evaluate(test, Choices.constant(count, test.members.index(test.reference), 1), quality, cost)
        return cheap, ref

    @staticmethod
    def _mix(cheap: OperatingPoint, ref: OperatingPoint, p: float, group: str | None = None) -> OperatingPoint:
        distribution: dict[str, float] = {}
        for point, weight in ((cheap, 1.0 - p), (ref, p)):
            for label, share in point.distribution.items():
                distribution[label] = distribution.get(label, 0.0) + weight * share
        return OperatingPoint(
            cost=(1.0 - p) * cheap.cost + p * ref.cost,
            quality=(1.0 - p) * cheap.quality + p * ref.quality,
            distribution={label: share for label, share in sorted(distribution.items()) if share > 0},
            knob=float(p),
            group=group,
        )

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, None)
        if self.against == "cheapest":
            cheap, ref = self._ends(test, quality, cost)
            return [self._mix(cheap, ref, p) for p in self.shares]
        count, ref_index = len(test.prompts), test.members.index(test.reference)
        ref = evaluate(test, Choices.constant(count, ref_index, 1), quality, cost)
        out = []
        for index, member in enumerate(test.members):
            if index == ref_index:
                continue
            weak = evaluate(test, Choices.constant(count, index, 1), quality, cost)
            out += [self._mix(weak, ref, p, group=member) for p in self.shares]
        return out

    def at_cost(self, test: EvalSet, quality: np.ndarray, cost: np.ndarray, targets: Sequence[float]) -> list[OperatingPoint]:
        """The mixture (with the cheapest option) whose expected cost is each target
        (clipped to [cheapest, reference])."""
        cheap, ref = self._ends(test, quality, cost)
        span = ref.cost - cheap.cost
        out = []
        for target in targets:
            p = 0.0 if span <= 0 else float(np.clip((target - cheap.cost) / span, 0.0, 1.0))
            out.append(self._mix(cheap, ref, p))
        return out


class OracleRouter(RoutingBaseline):
    """Per-prompt perfect routing (see the module docstring, 7.)."""

    needs_fit = False

    def __init__(
        self,
        *,
        picker: Picker | None = "oracle",
        curve: Literal["epsilon", "hull"] = "epsilon",
        epsilons: Sequence[float] | None = None,
        n_epsilons: int = 101,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if curve not in ("epsilon", "hull"):
            raise ValueError(f"unknown oracle curve {curve!r}")
        self.picker, self.curve, self.epsilons, self.n_epsilons = picker, curve, epsilons, n_epsilons
        self.name = name or ("oracle" if curve == "epsilon" else "oracle (hull)")

    def _arrays(self, test: EvalSet, quality: np.ndarray) -> np.ndarray:
        return quality if self.picker is None else test.quality(self.picker)

    def choose(self, quality: np.ndarray, cost: np.ndarray, ref_index: int, epsilon: float) -> Choices:
        """Per prompt the cheapest option with quality >= reference n = 1 - epsilon (ties: higher quality)."""
        target = quality[:, ref_index, 0] - epsilon - self.tie_atol
        flat_q = quality.reshape(len(quality), -1)
        ok = np.nan_to_num(flat_q, nan=-np.inf) >= target[:, None]
        masked_cost = np.where(ok, cost.reshape(len(cost), -1), np.inf)
        cheapest = masked_cost.min(axis=1, keepdims=True)
        tied = masked_cost <= cheapest * (1 + 1e-12)
        pick = np.argmax(np.where(tied, np.nan_to_num(flat_q, nan=-np.inf), -np.inf), axis=1)
        n_max = quality.shape[2]
        return Choices(pick // n_max, pick % n_max + 1)

    def default_epsilons(self, quality: np.ndarray, ref_index: int) -> list[float]:
        gaps = quality[:, ref_index, 0][:, None, None] - quality
        span = float(np.nanmax(gaps)) if np.isfinite(gaps).any() else 0.0
        if span <= 0:
            return [0.0]
        return [round(float(e), 12) for e in np.linspace(0.0, span, self.n_epsilons)]

    def points(self, test: EvalSet, test_features: Features | None, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
        self._check_test(test, None)
        q = self._arrays(test, quality)
        ref_index = test.members.index(test.reference)
        if self.curve == "hull":
            return _hull_points(test, q, cost)
        epsilons = self.default_epsilons(q, ref_index) if self.epsilons is None else list(self.epsilons)
        return [evaluate(test, self.choose(q, cost, ref_index, e), q, cost, knob=float(e)) for e in epsilons]


def _prompt_hull(costs: np.ndarray, qualities: np.ndarray) -> list[int]:
    """Indices of the options on the upper-left concave chain of (cost, quality), from the
    cheapest option (best quality among the cheapest) to the cheapest best-quality one."""
    valid = np.flatnonzero(np.isfinite(qualities))
    order = sorted(valid.tolist(), key=lambda i: (costs[i], -qualities[i]))
    top = max(qualities[i] for i in order)
    last = next(i for i in order if qualities[i] >= top)
    chain: list[int] = []
    for i in order[: order.index(last) + 1]:
        if chain and costs[i] <= costs[chain[-1]]:
            continue  # same cost, no better
        if chain and qualities[i] <= qualities[chain[-1]]:
            continue  # dearer and no better
        while len(chain) >= 2:
            a, b = chain[-2], chain[-1]
            cross = (costs[b] - costs[a]) * (qualities[i] - qualities[a]) - (qualities[b] - qualities[a]) * (costs[i] - costs[a])
            if cross >= 0:  # b on or below the segment a -> i
                chain.pop()
            else:
                break
        chain.append(i)
    return chain


def _hull_points(test: EvalSet, quality: np.ndarray, cost: np.ndarray) -> list[OperatingPoint]:
    """The exact upper concave frontier of per-prompt choices (greedy by marginal quality per USD)."""
    count, n_max = len(test.prompts), quality.shape[2]
    flat_q, flat_c = quality.reshape(count, -1), cost.reshape(count, -1)

    def label(option: int) -> str:
        return f"{test.members[option // n_max]}:{option % n_max + 1}"

    chains = [_prompt_hull(flat_c[q], flat_q[q]) for q in range(count)]
    current = [chain[0] for chain in chains]
    total_cost = float(sum(flat_c[q, current[q]] for q in range(count)))
    total_quality = float(sum(flat_q[q, current[q]] for q in range(count)))
    counts = Counter(label(o) for o in current)
    segments = []
    for q, chain in enumerate(chains):
        for a, b in itertools.pairwise(chain):
            slope = (flat_q[q, b] - flat_q[q, a]) / (flat_c[q, b] - flat_c[q, a])
            segments.append((-slope, q, a, b))
    segments.sort(key=lambda s: s[0])  # steepest first; a prompt's own slopes decrease along its chain

    def point(knob: float) -> OperatingPoint:
        return OperatingPoint(
            cost=total_cost / count,
            quality=total_quality / count,
            distribution={k: v / count for k, v in sorted(counts.items()) if v},
            knob=knob,
        )

    out = [point(float("inf"))]
    for index, (neg_slope, q, a, b) in enumerate(segments):
        total_cost += flat_c[q, b] - flat_c[q, a]
        total_quality += flat_q[q, b] - flat_q[q, a]
        counts[label(a)] -= 1
        counts[label(b)] += 1
        if index + 1 == len(segments) or segments[index + 1][0] != neg_slope:
            out.append(point(-neg_slope))
    return out


# --------------------------------------------------------------------------------------
# Running them all
# --------------------------------------------------------------------------------------


def default_baselines(
    texts: Mapping[tuple[str, str], Sequence[str]] | None = None, *, seed: int = 0
) -> list[RoutingBaseline]:
    """The paper's baselines and the reference curves; cascades (all three agreements) only with ``texts``."""
    baselines: list[RoutingBaseline] = [
        NClassRouter(seed=seed),
        NLabelRouter(seed=seed),
        ClusteringRouter(seed=seed),
        FixedBestOfN(),
        RandomMix(),
        OracleRouter(),
    ]
    if texts is not None:
        baselines += [ModelCascade(texts, agreement=a) for a in ("exact_match", "bleu", "rouge")]
    return baselines


def run_baselines(
    train: EvalSet,
    test: EvalSet,
    baselines: Sequence[RoutingBaseline],
    *,
    featurizer: Featurizer | None = None,
    picker: Picker = "proxy",
) -> dict[str, list[OperatingPoint]]:
    """Fit every baseline on ``train`` and sweep it on ``test`` (``test.quality(picker)``,
    ``test.cost()``); features (TF-IDF unless ``featurizer``) are computed once if needed."""
    names = [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise ValueError(f"baseline names must be unique: {names}")
    train_x = test_x = None
    if any(b.needs_features for b in baselines):
        train_x, test_x = featurize(featurizer or TfidfFeaturizer(), train, test)
    quality, cost = test.quality(picker), test.cost()
    curves = {}
    for baseline in baselines:
        baseline.fit(train, train_x)
        curves[baseline.name] = baseline.points(test, test_x, quality, cost)
    return curves
