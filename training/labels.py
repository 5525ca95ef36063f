"""Router labels, computed exactly from the recorded samples (paper eq. 3).

For a prompt q, a non-reference member k with m recorded samples s_1..s_m (each with a
proxy reward-model score r and a ground-truth score g) and the reference's recorded
samples with ground-truth scores g_ref:

    y[k, n](q) = P( g(best-of-n by r) >= g(one reference sample) - tolerance )

where the n samples are a uniformly random subset of the m recorded ones, drawn
**without replacement**, and the reference sample is uniform over the recorded ones.

Why without replacement: the m recorded samples are i.i.d. draws from the member, so a
random n-subset of distinct recorded samples is distributed exactly like n fresh i.i.d.
draws, using the data without reusing a sample inside one best-of-n set; drawing with
replacement would put the same answer in a set twice and understate what n samples
buy. It requires n <= m (the paper uses m = 20, N = 20).

Exact computation, including ties in the proxy score. Group the samples by proxy score,
best group first; at run time the reranker keeps the first of tied candidates, and the
samples arrive in random order, so the pick is uniform over the members of the best
group present in the subset. With h samples in better groups and c in group G:

    P(best group present is G) = [C(m - h, n) - C(m - h - c, n)] / C(m, n)

and y = sum over groups G of that probability x the mean, over G's samples s, of the
fraction of reference samples that s matches. ``brute_force_label`` enumerates every
ordered n-tuple instead and is used to validate this in the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from math import comb

import numpy as np


def _check(proxy_scores: Sequence[float], gt_scores: Sequence[float], reference_gt: Sequence[float], n: int) -> None:
    if len(proxy_scores) != len(gt_scores):
        raise ValueError(f"{len(proxy_scores)} proxy scores but {len(gt_scores)} ground-truth scores")
    if not reference_gt:
        raise ValueError("no reference samples to compare with")
    if not 1 <= n <= len(proxy_scores):
        raise ValueError(f"n={n} needs 1 <= n <= m={len(proxy_scores)} samples (labels draw without replacement)")
    for name, values in (("proxy", proxy_scores), ("ground-truth", gt_scores), ("reference", reference_gt)):
        if not np.all(np.isfinite(np.asarray(values, dtype=float))):
            raise ValueError(f"{name} scores contain NaN or infinity")


def match_rates(gt_scores: Sequence[float], reference_gt: Sequence[float], tolerance: float = 0.0) -> np.ndarray:
    """For each sample, the fraction of reference samples it matches (g >= g_ref - tolerance)."""
    sample = np.asarray(gt_scores, dtype=float)[:, None]
    reference = np.asarray(reference_gt, dtype=float)[None, :]
    return (sample >= reference - tolerance).mean(axis=1)


def match_label(
    proxy_scores: Sequence[float],
    gt_scores: Sequence[float],
    reference_gt: Sequence[float],
    n: int,
    tolerance: float = 0.0,
) -> float:
    """y[k, n] for one prompt and member, exactly (see the module docstring)."""
    _check(proxy_scores, gt_scores, reference_gt, n)
    return float(match_labels(proxy_scores, gt_scores, reference_gt, [n], tolerance)[0])


def best_of_n_expectation(proxy_scores: Sequence[float], values: Sequence[float], ns: Sequence[int]) -> np.ndarray:
    """E[value of the best-of-n pick by proxy score] for every n in ``ns``, exactly, over
    uniformly random n-subsets of the samples (without replacement; ties as documented).

    With ``values`` = match rates this is the label y[k, n]; with ``values`` = ground-truth
    scores it is the expected quality of best-of-n (used by the evaluation); with
    ``proxy_scores`` = the ground truth itself it is the oracle picker.
    """
    m = len(proxy_scores)
    proxy = np.asarray(proxy_scores, dtype=float)
    values = np.asarray(values, dtype=float)
    groups = [values[proxy == value] for value in sorted(set(proxy.tolist()), reverse=True)]
    results = []
    for n in ns:
        if not 1 <= n <= m:
            raise ValueError(f"n={n} needs 1 <= n <= m={m} samples (draws without replacement)")
        total, better = 0.0, 0
        for group in groups:
            size = len(group)
            p_group = (comb(m - better, n) - comb(m - better - size, n)) / comb(m, n)
            total += p_group * float(group.mean())
            better += size
        results.append(total)
    return np.asarray(results)


def match_labels(
    proxy_scores: Sequence[float],
    gt_scores: Sequence[float],
    reference_gt: Sequence[float],
    ns: Sequence[int],
    tolerance: float = 0.0,
) -> np.ndarray:
    """y[k, n] for every n in ``ns``."""
    for n in ns:
        _check(proxy_scores, gt_scores, reference_gt, n)
    return best_of_n_expectation(proxy_scores, match_rates(gt_scores, reference_gt, tolerance), ns)


def brute_force_label(
    proxy_scores: Sequence[float],
    gt_scores: Sequence[float],
    reference_gt: Sequence[float],
    n: int,
    tolerance: float = 0.0,
) -> float:
    """The same quantity by enumerating every ordered n-tuple of distinct samples and
    picking as the runtime does (highest proxy score, first one on ties). Small m only."""
    _check(proxy_scores, gt_scores, reference_gt, n)
    rates = match_rates(gt_scores, reference_gt, tolerance)
    wins, count = 0.0, 0
    for ordered in itertools.permutations(range(len(proxy_scores)), n):
        best = ordered[0]
        for index in ordered[1:]:
            if proxy_scores[index] > proxy_scores[best]:
                best = index
        wins += rates[best]
        count += 1
    return wins / count
