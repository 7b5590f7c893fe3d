"""The statistics figure 11 prints beside its medians (``benchmarks.cost.median_interval``)."""
from __future__ import annotations

import random
import statistics

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.cost import median_interval


def test_the_median_interval_is_the_order_statistics_of_the_binomial_table():
    rounds = [float(v) for v in range(1, 13)]
    assert median_interval(rounds) == (3.0, 10.0, 0.961)  # 12 rounds: the 3rd and 10th, 96.1 %
    assert median_interval([float(v) for v in range(24, 0, -1)]) == (7.0, 18.0, 0.977)


def test_the_interval_holds_the_true_median_as_often_as_it_says():
    draw = random.Random(11)
    trials, held = 4000, 0
    for _ in range(trials):
        low, high, _ = median_interval([draw.expovariate(1.0) for _ in range(12)])
        held += low <= 0.6931471805599453 <= high  # the exponential's median, ln 2
    assert held / trials >= 0.95


# bounded so that the sample median (the mean of two middle values) is finite: two values near the
# largest float average to inf in statistics.median (hypothesis found [8.99e307, 8.99e307])
@given(st.lists(st.floats(min_value=-1e300, max_value=1e300), min_size=1, max_size=40))
def test_the_interval_holds_the_sample_median(values):
    low, high, coverage = median_interval(values)
    assert low <= statistics.median(values) <= high
    assert 0.0 <= coverage < 1.0
