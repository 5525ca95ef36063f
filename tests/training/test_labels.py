"""Exact labels against brute-force enumeration, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.labels import brute_force_label, match_label, match_labels, match_rates


def test_matches_brute_force_on_random_small_cases() -> None:
    rng = np.random.default_rng(0)
    for case in range(60):
        m = int(rng.integers(1, 7))
        # few distinct values so ties in both scores are common
        proxy = rng.integers(0, 3 if case % 2 else 100, size=m).astype(float).tolist()
        gt = rng.integers(0, 4, size=m).astype(float).tolist()
        reference = rng.integers(0, 4, size=int(rng.integers(1, 5))).astype(float).tolist()
        tolerance = float(rng.choice([0.0, 0.5, 1.0]))
        for n in range(1, m + 1):
            exact = match_label(proxy, gt, reference, n, tolerance)
            assert exact == pytest.approx(brute_force_label(proxy, gt, reference, n, tolerance), abs=1e-12), (
                proxy, gt, reference, n, tolerance
            )


def test_hand_computed_example() -> None:
    # Proxy ranks samples b > a > c. Ground truth: only c matches the reference (g=1 vs 1).
    proxy, gt, reference = [0.5, 0.9, 0.1], [0.0, 0.0, 1.0], [1.0]
    # n=1: c picked with prob 1/3. n=2: c picked only if the pair is... never (c is always outranked).
    assert match_label(proxy, gt, reference, 1) == pytest.approx(1 / 3)
    assert match_label(proxy, gt, reference, 2) == 0.0
    assert match_label(proxy, gt, reference, 3) == 0.0


def test_perfect_proxy_gives_best_of_n_curve() -> None:
    # Proxy equals ground truth: best-of-n succeeds iff the subset holds a success.
    gt = [1.0, 0.0, 0.0, 0.0]
    labels = match_labels(gt, gt, [1.0], [1, 2, 3, 4])
    expected = [1 - math.comb(3, n) / math.comb(4, n) for n in (1, 2, 3, 4)]
    assert labels == pytest.approx(expected)
    assert list(labels) == sorted(labels)  # more samples never hurt with a perfect picker


def test_ties_in_proxy_average_over_the_tied_group() -> None:
    # All proxy scores equal: the pick is uniform, whatever n.
    for n in (1, 2, 3):
        assert match_label([0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0], n) == pytest.approx(1 / 3)


def test_reference_samples_are_averaged_and_tolerance_applies() -> None:
    assert match_rates([0.8], [0.7, 0.8, 0.9]).tolist() == pytest.approx([2 / 3])
    assert match_rates([0.8], [0.7, 0.8, 0.9], tolerance=0.1).tolist() == pytest.approx([1.0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0], [1.0], [1.0], 2), "n=2 needs"),
        (([1.0], [1.0], [], 1), "no reference"),
        (([1.0, 2.0], [1.0], [1.0], 1), "proxy scores but"),
        (([float("nan")], [1.0], [1.0], 1), "NaN"),
    ],
)
def test_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        match_label(*args)
