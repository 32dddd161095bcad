"""The hand-written two-sample KS test against brute force and known properties."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.experiments.throttling.stats import (
    _exact_pvalue,
    kolmogorov_sf,
    ks_2samp,
    ks_statistic,
    median,
    normalised_difference,
)


def brute_force_pvalue(a: list[float], b: list[float]) -> float:
    """P(D >= d_obs) by enumerating every way to split the pooled sample (permutation test)."""
    pooled = a + b
    n = len(a)
    d_obs = ks_statistic(a, b)
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), n):
        chosen = set(idx)
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        if ks_statistic(x, y) >= d_obs - 1e-12:
            hits += 1
    return hits / total


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),
        ([1.0, 5.0, 3.0, 7.0], [2.0, 4.0, 6.0]),
        ([0.1, 0.2, 0.9, 1.5, 2.0], [0.3, 0.35, 3.0, 4.0]),
        ([1.0, 2.0], [3.0, 4.0, 5.0, 6.0, 7.0]),
        ([5.0, 1.0, 2.0, 8.0, 9.0, 3.0], [4.0, 6.0, 7.0, 10.0]),
    ],
)
def test_exact_pvalue_matches_permutation_enumeration(a: list[float], b: list[float]) -> None:
    result = ks_2samp(a, b)
    assert result.method == "exact"
    assert result.pvalue == pytest.approx(brute_force_pvalue(a, b), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=6, unique=True),
    st.lists(st.integers(1001, 2000), min_size=1, max_size=6, unique=True),
    st.randoms(use_true_random=False),
)
def test_exact_pvalue_property(a: list[int], b: list[int], rnd: random.Random) -> None:
    pooled = [float(x) for x in a + b]
    rnd.shuffle(pooled)
    x, y = pooled[: len(a)], pooled[len(a) :]
    assert ks_2samp(x, y).pvalue == pytest.approx(brute_force_pvalue(x, y), abs=1e-12)


def test_statistic_handles_ties_exactly() -> None:
    # F_a jumps to 1 at 0, F_b is 0.5 at 0: D = 0.5 exactly, ties counted on both sides
    assert ks_statistic([0.0, 0.0], [0.0, 1.0]) == pytest.approx(0.5)
    assert ks_statistic([1.0, 2.0], [1.0, 2.0]) == 0.0


def test_identical_samples_give_p_one() -> None:
    r = ks_2samp([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r.statistic == 0.0 and r.pvalue == 1.0


def test_completely_separated_samples_exact_value() -> None:
    # D = 1 happens only for the two extreme splits: p = 2 / C(n+m, n)
    r = ks_2samp([1.0] * 0 + [1.0, 2.0, 3.0, 4.0], [10.0, 11.0, 12.0, 13.0, 14.0])
    assert r.statistic == 1.0
    assert r.pvalue == pytest.approx(2 / math.comb(9, 4))


def test_asymptotic_agrees_with_exact_on_large_samples() -> None:
    rnd = random.Random(7)
    a = [rnd.gauss(0, 1) for _ in range(110)]
    b = [rnd.gauss(0.6, 1) for _ in range(100)]
    d = ks_statistic(a, b)
    exact = _exact_pvalue(d, len(a), len(b))
    asym = ks_2samp(a, b)
    assert asym.method == "asymptotic"
    assert asym.pvalue == pytest.approx(exact, rel=0.15)


def test_kolmogorov_sf_known_points() -> None:
    # P(K > 1.358) = 0.05 and P(K > 1.628) = 0.01 are the classic critical values
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=5e-4)
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=2e-4)
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(10.0) == pytest.approx(0.0, abs=1e-30)


def test_same_distribution_is_rarely_rejected() -> None:
    rnd = random.Random(1)
    rejections = 0
    for _ in range(200):
        a = [rnd.expovariate(1.0) for _ in range(30)]
        b = [rnd.expovariate(1.0) for _ in range(40)]
        if ks_2samp(a, b).pvalue < 0.05:
            rejections += 1
    assert rejections <= 20  # about 5% expected; KS is conservative


def test_empty_sample_is_an_error() -> None:
    with pytest.raises(ValueError):
        ks_2samp([], [1.0])


def test_normalised_difference_and_median() -> None:
    assert normalised_difference(10.0, 1.0) == pytest.approx(0.9)
    assert normalised_difference(1.0, 10.0) == pytest.approx(-0.9)
    assert normalised_difference(0.0, 0.0) == 0.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        median([])
