"""The --stats latency histogram against the exact nearest-rank percentiles."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usniff.outputs.histogram import Histogram, bucket, bucket_middle


def exact(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@given(st.lists(st.integers(-(10**6), 10**12), min_size=1, max_size=200))
def test_buckets_keep_the_order_and_hold_their_values(values: list[int]) -> None:
    for ns in values:
        key = bucket(ns)
        assert abs(bucket_middle(key) - ns) <= max(0.5, abs(ns) / 2048)
    for a, b in zip(sorted(values), sorted(values)[1:], strict=False):
        assert bucket(a) <= bucket(b)


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_within_half_a_permille_of_the_exact_ones(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-9, 1.5) for _ in range(20_000)]  # ~0.1 ms, long tail
    values += [rng.random() * 2e-6 for _ in range(500)]  # below 2 us: counted exactly
    hist = Histogram()
    for v in values:
        hist.add(v)
    assert hist.total == len(values)
    assert hist.percentile(100) == max(values)
    for p in (1, 50, 90, 95, 99, 99.9):
        want = exact(values, p)
        assert hist.percentile(p) == pytest.approx(want, rel=5e-4, abs=1e-9)


def test_empty_histogram_has_no_percentile() -> None:
    with pytest.raises(ValueError):
        Histogram().percentile(50)
