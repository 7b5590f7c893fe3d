"""The metrics API's edges: histogram bounds, keyword arguments on a free-threaded build, the timer and
in-progress decorators, and the public type of what ``labels()`` returns. Each metric is bound to a slab
of a real segment and read back through the aggregator's merge, as a scrape would."""
from __future__ import annotations

import math
import subprocess
import sys
import time
import typing

import pytest

import rockstar_mp
from rockstar_mp import metrics
from rockstar_mp.aggregator.exposition import render_json, render_prometheus
from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.metrics import Counter, CounterSeries, Gauge, GaugeSeries, Histogram, HistogramSeries
from tests.helpers import ROOT
from tests.test_segment import seg, start_worker  # noqa: F401 (seg: the fixture, used by name)


def merged(segment) -> dict:
    return render_json(Merger(segment).merge())


# -- histogram bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize("inf", ["+Inf", "inf", "Infinity", math.inf])
def test_infinity_among_the_buckets_is_the_implied_one_not_a_second(seg, inf):  # noqa: F811
    _, _, registry = start_worker(seg)
    latency = Histogram("latency", buckets=(1, inf), registry=registry)
    latency.observe(0.5)
    latency.observe(5)
    text = render_prometheus(Merger(seg).merge())
    assert [line for line in text.splitlines() if line.startswith("latency_bucket")] == [
        'latency_bucket{le="1.0"} 1.0', 'latency_bucket{le="+Inf"} 2.0']  # one +Inf bucket, not two


@pytest.mark.parametrize("buckets", [(math.nan, 1), (-math.inf, 1), (1, 1), (), ("+Inf",)])
def test_buckets_that_are_not_distinct_finite_numbers_are_refused(buckets):
    with pytest.raises(ValueError, match="distinct finite numbers"):
        Histogram("refused", buckets=buckets, registry=metrics.Registry())


# -- updates by keyword, free-threaded ------------------------------------------------------------------
FREE_THREADED_UPDATES = """
import sys
sys._is_gil_enabled = lambda: False  # what a free-threaded build answers: every update takes a lock
from rockstar_mp import metrics
assert metrics._LOCKED and metrics.CounterSeries.inc.__wrapped__, "the update methods are not wrapped"
registry = metrics.Registry()
counter = metrics.Counter("c", "", ["k"], registry=registry)
counter.labels("a").inc(amount=2)
gauge = metrics.Gauge("g", registry=registry)
gauge.set(value=5)
gauge.inc(amount=2)
gauge.dec(amount=1)
last = metrics.Gauge("l", mode="last", registry=registry)
last.set(value=4)
last.dec(amount=1)
histogram = metrics.Histogram("h", buckets=(1,), registry=registry)
histogram.observe(amount=0.5)
print(counter.labels("a").get(), gauge.get(), last.get(), histogram._values())
"""


def test_updates_take_keyword_arguments_where_every_update_is_locked():
    done = subprocess.run([sys.executable, "-c", FREE_THREADED_UPDATES], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.0", "6.0", "3.0", "[1.0,", "0.0,", "0.5]"]


def test_updates_take_keyword_arguments(seg):  # noqa: F811
    _, _, registry = start_worker(seg)
    Counter("c", registry=registry).inc(amount=2)
    Gauge("g", registry=registry).set(value=3)
    Histogram("h", buckets=(1,), registry=registry).observe(amount=0.5)
    out = merged(seg)
    assert (out["counters"]["c"], out["gauges"]["g"], out["histograms"]["h"]["sum"]) == (2, 3, 0.5)


# -- time() and track_inprogress() --------------------------------------------------------------------------
def test_a_timed_function_observes_each_call_even_nested(seg):  # noqa: F811
    _, _, registry = start_worker(seg)
    seconds = Histogram("job.seconds", buckets=(0.04,), registry=registry)

    @seconds.time()
    def job(depth: int) -> int:
        if depth:
            time.sleep(0.05)  # the outer call lasts at least this long; the inner one does not
            return job(depth - 1) + 1
        return 0

    assert job(1) == 1
    result = merged(seg)["histograms"]["job.seconds"]
    assert result["count"] == 2
    assert result["buckets"] == {"0.04": 1, "+Inf": 2}  # one quick call, one of 0.05 s or more
    assert result["sum"] >= 0.05


def test_a_timer_used_as_a_block_observes_the_block(seg):  # noqa: F811
    _, _, registry = start_worker(seg)
    seconds = Histogram("block.seconds", buckets=(1,), registry=registry)
    with seconds.time():
        pass
    assert merged(seg)["histograms"]["block.seconds"]["count"] == 1


def test_track_inprogress_counts_each_running_call_and_block(seg):  # noqa: F811
    _, _, registry = start_worker(seg)
    running = Gauge("running", registry=registry)
    seen = []

    @running.track_inprogress()
    def task(depth: int) -> None:
        seen.append(running.get())
        if depth:
            task(depth - 1)

    task(1)
    with running.track_inprogress():
        seen.append(running.get())
    assert seen == [1, 2, 1]
    assert merged(seg)["gauges"]["running"] == 0


# -- what labels() returns --------------------------------------------------------------------------------
def test_labels_returns_the_public_series_type_of_its_metric():
    registry = metrics.Registry()
    families = {CounterSeries: Counter("c", "", ["k"], registry=registry),
                GaugeSeries: Gauge("g", "", ["k"], mode="last", registry=registry),
                HistogramSeries: Histogram("h", "", ["k"], registry=registry)}
    for series_type, family in families.items():
        child = family.labels("x")
        assert isinstance(child, series_type) and not isinstance(child, metrics._Family)
        assert family.labels(k="x") is child
        assert series_type.__name__ in rockstar_mp.__all__
    # and for type checkers: labels() returns the series type each metric class is parameterised with
    assert typing.get_type_hints(metrics._Family.labels)["return"] is metrics.S
    for family_type, series_type in ((Counter, CounterSeries), (Gauge, GaugeSeries), (Histogram, HistogramSeries)):
        assert typing.get_args(family_type.__orig_bases__[0]) == (series_type,)
