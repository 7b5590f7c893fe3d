"""Unit tests of the segment file, the slab table, the catalogue, the metrics API and the rendering."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from rockstar_mp.aggregator.exposition import render_json, render_prometheus
from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.metrics import Counter, Gauge, Histogram, Registry
from rockstar_mp.segment import (
    FREE,
    LIVE,
    RETIRED,
    CatalogueFull,
    CatalogueWriter,
    Geometry,
    LayoutMismatch,
    NoFreeSlab,
    Segment,
    process_start,
)
from rockstar_mp.segment.layout import LAYOUT_VERSION, Body, Header, Slot
from rockstar_mp.worker.attach import FORK_CLAIM_WAIT, SlabStore, _claim_for_fork

SMALL = Geometry(n_slabs=4, slab_max_series=64, slab_heap_bytes=8192, slab_max_values=1024,
                 retired_max_series=256, retired_heap_bytes=32768, retired_max_values=4096)


@pytest.fixture
def seg(tmp_path):
    segment = Segment.create(str(tmp_path), SMALL)
    yield segment
    segment.close()
    if os.path.exists(segment.path):
        os.unlink(segment.path)


def start_worker(seg: Segment) -> tuple[int, int, Registry]:
    """A simulated worker: a claimed slab and a registry bound to it."""
    slab, generation = seg.claim_slab()
    seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))  # as attach_worker names itself
    registry = Registry()
    assert registry.bind(SlabStore(seg, slab)) == []
    return slab, generation, registry


def counters(merger: Merger) -> dict:
    return render_json(merger.merge())["counters"]


# -- attaching: the header is checked -------------------------------------------------------------
def test_attach_reads_the_geometry(seg):
    other = Segment.attach(seg.path)
    try:
        assert other.geometry == SMALL
        assert Header.version.get(other.buf) == LAYOUT_VERSION
    finally:
        other.close()


def test_attach_refuses_another_layout_version(seg):
    Header.version.set(seg.buf, 999)
    with pytest.raises(LayoutMismatch) as info:
        Segment.attach(seg.path)
    message = str(info.value)
    assert "version 999" in message
    assert f"reads version {LAYOUT_VERSION}" in message
    assert "restart the master" in message


def test_attach_refuses_wrong_magic(seg):
    Header.magic.set(seg.buf, b"NOTOURS\x00")
    with pytest.raises(LayoutMismatch, match="not a rockstar-mp segment"):
        Segment.attach(seg.path)


def test_attach_refuses_a_file_shorter_than_the_header(tmp_path):
    path = tmp_path / "short.seg"
    path.write_bytes(b"RSTARMP\x00" + bytes(100))
    with pytest.raises(LayoutMismatch, match="too small to be a segment"):
        Segment.attach(str(path))


def test_attach_refuses_a_truncated_segment(seg):
    os.truncate(seg.path, SMALL.total_size - 4096)
    with pytest.raises(LayoutMismatch, match=f"its header says {SMALL.total_size}"):
        Segment.attach(seg.path)


def test_attach_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.seg"
    path.write_bytes(b"")
    with pytest.raises(LayoutMismatch):
        Segment.attach(str(path))


def test_attach_leaks_no_descriptor_when_refusing(seg):
    Header.version.set(seg.buf, 999)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(LayoutMismatch):
            Segment.attach(seg.path)
    assert len(os.listdir("/proc/self/fd")) == before


# -- the catalogue: full is refused, counted, and changes nothing else ----------------------------
def _full_case(seg, limit: str):
    """A slab filled up to one limit, and a key that would overflow it; returns (writer, key, n)."""
    slab, _ = seg.claim_slab()
    base = SMALL.slab_offset(slab)
    writer = CatalogueWriter(seg.buf, SMALL.slab, base)
    if limit == "series":
        for i in range(SMALL.slab_max_series):
            writer.append(b"k%d" % i, 1)
        return slab, writer, b"one more", 1
    if limit == "values":
        writer.append(b"big", SMALL.slab_max_values - 3)
        return slab, writer, b"four values", 4
    writer.append(b"x" * (SMALL.slab_heap_bytes - 10), 1)
    return slab, writer, b"y" * 11, 1


@pytest.mark.parametrize("limit", ["series", "values", "heap"])
def test_catalogue_full_is_raised_counted_and_changes_nothing_else(seg, limit):
    slab, writer, key, n = _full_case(seg, limit)
    base = SMALL.slab_offset(slab)
    body = slice(base, base + SMALL.slab.size)
    before = bytearray(seg.buf[body])
    table_before = bytes(seg.buf[SMALL.table_offset:SMALL.retired_offset])
    count_before = writer.series_count
    for attempt in (1, 2):
        with pytest.raises(CatalogueFull, match="catalogue full"):
            writer.append(key, n)
        assert Body.catalogue_full.get(seg.buf, base) == attempt
    assert writer.series_count == count_before
    after = bytearray(seg.buf[body])
    field = slice(Body.catalogue_full.offset, Body.catalogue_full.offset + 8)
    after[field] = before[field] = bytes(8)  # the refusal count is the only change
    assert after == before
    assert bytes(seg.buf[SMALL.table_offset:SMALL.retired_offset]) == table_before
    # a key that fits still goes in after a refusal (series limit aside)
    if limit != "series":
        writer.append(b"s", 1)
        assert writer.series_count == count_before + 1


def test_catalogue_full_at_bind_keeps_the_series_private_and_reports_them(tmp_path):
    geometry = Geometry(n_slabs=2, slab_max_series=2, slab_heap_bytes=8192, slab_max_values=64,
                        retired_max_series=16, retired_heap_bytes=4096, retired_max_values=256)
    seg = Segment.create(str(tmp_path), geometry)
    try:
        registry = Registry()
        a = Counter("a", registry=registry)
        b = Counter("b", registry=registry)
        c = Counter("c", registry=registry)
        slab, _ = seg.claim_slab()
        seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))
        refused = registry.bind(SlabStore(seg, slab))
        assert len(refused) == 1 and '"c"' not in refused[0] and "c" in refused[0]
        assert Body.catalogue_full.get(seg.buf, geometry.slab_offset(slab)) == 1
        for counter in (a, b, c):
            counter.inc(3)  # the refused one still works, in private memory
        assert c.get() == 3
        snap = Merger(seg).merge()
        assert render_json(snap)["counters"] == {"a": 3, "b": 3}
        assert snap.workers[0].catalogue_full == 1
    finally:
        seg.close()


def test_declaration_refused_by_a_full_slab_is_not_half_done(tmp_path):
    geometry = Geometry(n_slabs=2, slab_max_series=1, slab_heap_bytes=8192, slab_max_values=64,
                        retired_max_series=16, retired_heap_bytes=4096, retired_max_values=256)
    seg = Segment.create(str(tmp_path), geometry)
    try:
        slab, _ = seg.claim_slab()
        registry = Registry()
        registry.bind(SlabStore(seg, slab))
        Counter("first", registry=registry)
        try:
            late = Counter("late", registry=registry)
        except CatalogueFull:
            # refused: then it must not be declared at all
            assert [f.name for f in registry.families()] == ["first"]
        else:
            # accepted (kept in private memory): then it must work
            late.inc()
            assert late.get() == 1
        assert Body.catalogue_full.get(seg.buf, geometry.slab_offset(slab)) == 1
    finally:
        seg.close()


# -- the slab table ---------------------------------------------------------------------------------
def test_a_fork_waits_for_a_slab_of_a_gone_process_and_otherwise_fails_at_once(seg):
    """A fork's claim (``_claim_for_fork``) on a full table: with every holder alive it fails at once, one
    failure counted; with a slab held by a process that has exited, it wakes the aggregator (SIGURG, here
    to this process, whose handler lets a thread do the aggregator's fold) and gets that slab."""
    claimed = [seg.claim_slab() for _ in range(SMALL.n_slabs)]
    for slab, _ in claimed:
        seg.bind_slab(slab, os.getpid(), 0.0)
    started = time.monotonic()
    with pytest.raises(NoFreeSlab):
        _claim_for_fork(seg)
    assert time.monotonic() - started < FORK_CLAIM_WAIT and Header.claim_failures.get(seg.buf) == 1

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    seg.bind_slab(claimed[0][0], gone.pid, 0.0)
    Header.aggregator_pid.set(seg.buf, os.getpid())
    woken = threading.Event()
    previous = signal.signal(signal.SIGURG, lambda *_: woken.set())
    aggregator = threading.Thread(target=lambda: woken.wait(10) and Merger(seg).collect_dead(check_processes=True))
    aggregator.start()
    try:
        slab, generation = _claim_for_fork(seg)
    finally:
        aggregator.join()
        signal.signal(signal.SIGURG, previous)
    assert woken.is_set() and (slab, generation) == (claimed[0][0], claimed[0][1] + 1)
    assert Header.claim_failures.get(seg.buf) == 1


def test_no_free_slab_when_every_slab_is_live(seg):
    claimed = [seg.claim_slab() for _ in range(SMALL.n_slabs)]
    assert sorted(s for s, _ in claimed) == list(range(SMALL.n_slabs))
    before = bytes(seg.buf[SMALL.table_offset:SMALL.retired_offset])
    with pytest.raises(NoFreeSlab, match=f"all {SMALL.n_slabs} slabs are in use"):
        seg.claim_slab()
    with pytest.raises(NoFreeSlab):
        seg.claim_slab()
    assert Header.claim_failures.get(seg.buf) == 2
    assert bytes(seg.buf[SMALL.table_offset:SMALL.retired_offset]) == before
    # a retired (not yet folded) slab is not free either
    assert seg.retire_slab(*claimed[0])
    with pytest.raises(NoFreeSlab):
        seg.claim_slab()
    # once folded (freed), it is claimed again, with a new generation
    Merger(seg).collect_dead()
    slab, generation = seg.claim_slab()
    assert (slab, generation) == (claimed[0][0], claimed[0][1] + 1)


def test_transitions_refuse_a_stale_generation(seg):
    slab, gen = seg.claim_slab()
    assert seg.slot(slab).state == LIVE
    assert not seg.free_slab(slab, gen)  # live -> free is not a transition
    assert not seg.retire_slab(slab, gen + 1)
    assert not seg.retire_slab(slab, gen - 1)
    assert seg.slot(slab).state == LIVE
    assert seg.retire_slab(slab, gen)
    assert not seg.retire_slab(slab, gen)  # already retired
    assert not seg.free_slab(slab, gen + 1)
    assert seg.slot(slab).state == RETIRED
    assert seg.free_slab(slab, gen)
    assert not seg.free_slab(slab, gen)
    assert seg.slot(slab).state == FREE
    slab2, gen2 = seg.claim_slab()
    assert (slab2, gen2) == (slab, gen + 1)
    # the old tenancy can no longer touch the new one
    assert not seg.retire_slab(slab, gen)
    assert seg.slot(slab).state == LIVE
    assert seg.retire_slab(slab, gen2)
    assert not seg.free_slab(slab, gen)
    assert seg.slot(slab).state == RETIRED


def test_claim_resets_the_previous_tenancy(seg):
    slab, gen, registry = start_worker(seg)
    Counter("c", registry=registry).inc(7)
    Body.catalogue_full.set(seg.buf, 3, SMALL.slab_offset(slab))
    seg.retire_slab(slab, gen)
    with seg.locked():  # freed without folding (as if by hand): the next claim must start empty
        Slot.state.set(seg.buf, FREE, SMALL.table_entry(slab))
    slab2, gen2 = seg.claim_slab()
    assert (slab2, gen2) == (slab, gen + 1)
    base = SMALL.slab_offset(slab)
    assert Body.n_series.get(seg.buf, base) == 0
    assert Body.values_used.get(seg.buf, base) == 0
    assert Body.catalogue_full.get(seg.buf, base) == 0


# -- folding dead workers -------------------------------------------------------------------------
def test_fold_moves_a_dead_workers_counts_into_the_retired_totals(seg):
    slab, gen, registry = start_worker(seg)
    Counter("c", registry=registry).inc(5)
    h = Histogram("h", buckets=(1, 2), registry=registry)
    h.observe(0.5)
    h.observe(3)
    Gauge("g", registry=registry).set(9)
    merger = Merger(seg)
    assert render_json(merger.merge())["gauges"] == {"g": 9}
    assert seg.retire_slab(slab, gen)
    # retired but not folded: counters still count, the gauge is gone
    out = render_json(merger.merge())
    assert out["counters"] == {"c": 5}
    assert out["gauges"] == {}
    assert merger.collect_dead() == 1
    assert seg.slot(slab).state == FREE
    out = render_json(merger.merge())
    assert out["counters"] == {"c": 5}
    assert out["histograms"]["h"] == {"count": 2, "sum": 3.5,
                                      "buckets": {"1.0": 1, "2.0": 1, "+Inf": 2}}
    assert merger.merge().workers_folded == 1
    assert merger.collect_dead() == 0


def test_the_retired_totals_survive_a_new_merger(seg):
    merger = Merger(seg)
    for amount in (5, 7):
        slab, gen, registry = start_worker(seg)
        Counter("c", "", ["k"], registry=registry).labels("x").inc(amount)
        Histogram("h", buckets=(1,), registry=registry).observe(amount)
        seg.retire_slab(slab, gen)
        assert merger.collect_dead() == 1
    expected = render_json(merger.merge())
    assert expected["counters"] == {'c{k="x"}': 12, "c": 12}
    restarted = Merger(seg)
    assert render_json(restarted.merge()) == expected
    assert restarted.merge().workers_folded == 2
    # and it keeps folding on top of them, for a third aggregator too
    slab, gen, registry = start_worker(seg)
    Counter("c", "", ["k"], registry=registry).labels("x").inc(1)
    seg.retire_slab(slab, gen)
    assert restarted.collect_dead() == 1
    assert counters(Merger(seg)) == {'c{k="x"}': 13, "c": 13}


def test_a_fold_interrupted_after_the_flip_is_not_counted_twice(seg):
    """Fold normally, then put the slab back to RETIRED with the same generation (as if the
    aggregator died after the flip but before freeing it): a new Merger must not fold it again."""
    slab, gen, registry = start_worker(seg)
    Counter("c", registry=registry).inc(5)
    seg.retire_slab(slab, gen)
    merger = Merger(seg)
    assert merger.collect_dead() == 1
    assert counters(merger) == {"c": 5}
    with seg.locked():
        base = SMALL.table_entry(slab)
        assert Slot.generation.get(seg.buf, base) == gen
        Slot.state.set(seg.buf, RETIRED, base)
    restarted = Merger(seg)
    assert counters(restarted) == {"c": 5}
    restarted.collect_dead()  # finishes the fold (if the new Merger has not already): frees the slab...
    assert seg.slot(slab).state == FREE
    assert counters(restarted) == {"c": 5}  # ...without counting it again
    assert restarted.merge().workers_folded == 1
    assert counters(Merger(seg)) == {"c": 5}


def _fold_crashing_after_the_flip(seg):
    """Fold one slab, then restore its body and RETIRED state: the segment as an aggregator killed
    right after the flip (before reset_body and free_slab) leaves it."""
    slab, gen, registry = start_worker(seg)
    Counter("c", registry=registry).inc(5)
    seg.retire_slab(slab, gen)
    body = slice(SMALL.slab_offset(slab), SMALL.slab_offset(slab) + SMALL.slab.size)
    saved = bytes(seg.buf[body])
    assert Merger(seg).collect_dead() == 1
    with seg.locked():
        seg.buf[body] = saved
        Slot.state.set(seg.buf, RETIRED, SMALL.table_entry(slab))
    return slab


def test_a_fold_crashing_after_the_flip_is_finished_once(seg):
    slab = _fold_crashing_after_the_flip(seg)
    merger = Merger(seg)
    assert merger.collect_dead() in (0, 1)  # 0 if the new Merger finished the fold itself
    assert seg.slot(slab).state == FREE
    assert counters(merger) == {"c": 5}
    assert merger.merge().workers_folded == 1


def test_a_fold_crashing_after_the_flip_is_not_counted_twice_before_the_next_fold(seg):
    """A new Merger's merge() before its first collect_dead() must skip the slab its retired copy
    names as folded (the committed cb4b838 merge() summed it again: c == 10)."""
    _fold_crashing_after_the_flip(seg)
    assert counters(Merger(seg)) == {"c": 5}


def test_a_fold_crashing_after_the_flip_is_not_counted_twice_when_another_worker_dies_first(seg):
    low_slab, low_gen, registry = start_worker(seg)  # slab 0: lower than the crashed fold's
    Counter("c", registry=registry).inc(1)
    crashed = _fold_crashing_after_the_flip(seg)  # slab 1, c += 5, folded up to the flip
    assert crashed > low_slab
    assert seg.retire_slab(low_slab, low_gen)  # exits while no aggregator runs
    merger = Merger(seg)
    assert counters(merger) == {"c": 6}
    assert merger.collect_dead() in (1, 2)
    assert seg.slot(low_slab).state == seg.slot(crashed).state == FREE
    assert counters(merger) == {"c": 6}
    assert counters(Merger(seg)) == {"c": 6}


def test_a_fold_crashing_before_the_flip_is_not_lost(seg):
    slab, gen, registry = start_worker(seg)
    Counter("c", registry=registry).inc(5)
    seg.retire_slab(slab, gen)
    body = slice(SMALL.slab_offset(slab), SMALL.slab_offset(slab) + SMALL.slab.size)
    saved = bytes(seg.buf[body])
    active = Header.retired_active.get(seg.buf)
    assert Merger(seg).collect_dead() == 1
    with seg.locked():  # the inactive copy was written, but the flip never happened
        Header.retired_active.set(seg.buf, active)
        seg.buf[body] = saved
        Slot.state.set(seg.buf, RETIRED, SMALL.table_entry(slab))
    merger = Merger(seg)
    assert counters(merger) == {"c": 5}
    assert merger.collect_dead() == 1
    assert counters(merger) == {"c": 5}
    assert counters(Merger(seg)) == {"c": 5}


# -- the metrics API --------------------------------------------------------------------------------
def test_local_store_before_attach_then_attach_moves_series_to_the_slab(seg):
    registry = Registry()
    c = Counter("c", "", registry=registry)
    lab = Counter("lab", "", ["k"], registry=registry)
    g = Gauge("g", registry=registry)
    h = Histogram("h", buckets=(1,), registry=registry)
    c.inc(5)
    lab.labels("x").inc(2)
    g.set(4)
    h.observe(0.5)
    assert (c.get(), lab.labels("x").get(), g.get()) == (5, 2, 4)
    slab, _ = seg.claim_slab()
    seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))
    merger = Merger(seg)
    assert counters(merger) == {}  # private memory: nothing in the segment yet
    assert registry.bind(SlabStore(seg, slab)) == []
    assert Body.n_series.get(seg.buf, SMALL.slab_offset(slab)) == 4
    # values start at zero in the slab
    assert (c.get(), lab.labels("x").get(), g.get()) == (0, 0, 0)
    out = render_json(merger.merge())
    assert out["counters"] == {"c": 0, 'lab{k="x"}': 0, "lab": 0}
    assert out["histograms"]["h"]["count"] == 0
    c.inc(3)
    lab.labels("x").inc(1)
    lab.labels("y").inc(1)  # a child created after attach goes straight to the slab
    g.set(8)
    h.observe(2)
    out = render_json(merger.merge())
    assert out["counters"] == {"c": 3, 'lab{k="x"}': 1, 'lab{k="y"}': 1, "lab": 2}
    assert out["gauges"] == {"g": 8}
    assert out["histograms"]["h"] == {"count": 1, "sum": 2, "buckets": {"1.0": 0, "+Inf": 1}}


def test_labels_with_the_wrong_arity_raise_value_error():
    registry = Registry()
    c = Counter("c", "", ["method", "status"], registry=registry)
    with pytest.raises(ValueError, match="takes 2 label values"):
        c.labels("GET")
    with pytest.raises(ValueError, match="takes 2 label values"):
        c.labels("GET", "200", "x")
    with pytest.raises(ValueError, match="takes labels"):
        c.labels(method="GET")
    with pytest.raises(ValueError, match="takes labels"):
        c.labels("GET", status="200")
    assert c.labels(method="GET", status="200") is c.labels("GET", "200")
    with pytest.raises(ValueError, match="has no labels"):
        Counter("plain", registry=registry).labels("x")


@pytest.mark.parametrize("make, update", [
    (lambda r: Counter("c", "", ["k"], registry=r), lambda m: m.inc()),
    (lambda r: Counter("c", "", ["k"], registry=r), lambda m: m.get()),
    (lambda r: Gauge("g", "", ["k"], registry=r), lambda m: m.inc()),
    (lambda r: Gauge("g", "", ["k"], registry=r), lambda m: m.dec()),
    (lambda r: Gauge("g", "", ["k"], mode="max", registry=r), lambda m: m.get()),
])
def test_a_labelled_parent_refuses_updates_with_a_helpful_message(make, update):
    metric = make(Registry())
    with pytest.raises(TypeError, match=r"has labels \('k',\): call \.labels\(\.\.\.\)"):
        update(metric)


@pytest.mark.parametrize("mode", ["sum", "last"])
def test_a_labelled_gauge_parent_set_has_the_helpful_message(mode):
    gauge = Gauge("g", "", ["k"], mode=mode, registry=Registry())
    with pytest.raises(TypeError, match=r"call \.labels\(\.\.\.\)"):
        gauge.set(1)


def test_a_labelled_histogram_parent_observe_has_the_helpful_message():
    hist = Histogram("h", "", ["k"], buckets=(1,), registry=Registry())
    with pytest.raises(TypeError, match=r"call \.labels\(\.\.\.\)"):
        hist.observe(0.5)


def test_duplicate_declaration_in_one_registry_raises():
    registry = Registry()
    Counter("dup", registry=registry)
    with pytest.raises(ValueError, match="already declared"):
        Counter("dup", registry=registry)
    with pytest.raises(ValueError, match="already declared"):
        Gauge("dup", registry=registry)  # any kind: one name, one metric
    Counter("dup", registry=Registry())  # another process (registry) may declare it


def test_counter_refuses_a_negative_amount_and_gauge_an_unknown_mode():
    registry = Registry()
    with pytest.raises(ValueError, match="only goes up"):
        Counter("c", registry=registry).inc(-1)
    with pytest.raises(ValueError, match="gauge mode"):
        Gauge("g", mode="avg", registry=registry)


# -- rendering --------------------------------------------------------------------------------------
@pytest.fixture
def two_workers(seg):
    """Two live workers and one folded dead one, with every kind of metric."""
    def declare(registry):
        return (Counter("app.requests", "Requests served", ["method"], registry=registry),
                Counter("jobs", "Jobs done", registry=registry),
                Gauge("in_flight", "In flight", registry=registry),
                Gauge("peak", "Peak", ["pool"], mode="max", registry=registry),
                Histogram("latency", "Seconds", ["route"], buckets=(0.5, 1), registry=registry))

    merger = Merger(seg)
    slab, gen, reg_dead = start_worker(seg)
    req, jobs, *_ = declare(reg_dead)
    req.labels("GET").inc(4)
    jobs.inc(1)
    seg.retire_slab(slab, gen)
    assert merger.collect_dead() == 1
    for scale in (1, 2):
        _, _, registry = start_worker(seg)
        req, jobs, in_flight, peak, latency = declare(registry)
        req.labels("GET").inc(scale)
        req.labels('we"ird\\').inc(1)
        jobs.inc(10 * scale)
        in_flight.set(scale)
        peak.labels("db").set(3 * scale)
        latency.labels("/").observe(0.25 * scale)
        latency.labels("/").observe(2)
    return merger


def test_json_shape_and_values(two_workers):
    out = render_json(two_workers.merge())
    assert set(out) == {"counters", "gauges", "histograms"}
    json.dumps(out)  # JSON-serialisable
    assert out["counters"] == {'app.requests{method="GET"}': 7,
                               'app.requests{method="we\\"ird\\\\"}': 2,
                               "app.requests": 9, "jobs": 31}
    assert out["gauges"] == {"in_flight": 3, 'peak{pool="db"}': 6}
    assert out["histograms"] == {'latency{route="/"}': {
        "count": 4, "sum": 4.75, "buckets": {"0.5": 2, "1.0": 2, "+Inf": 4}}}


def test_prometheus_text_parses_and_matches(two_workers):
    from prometheus_client.parser import text_string_to_metric_families

    text = render_prometheus(two_workers.merge())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"app_requests", "jobs", "in_flight", "peak", "latency"}
    assert families["app_requests"].type == "counter"
    assert families["app_requests"].documentation == "Requests served"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples == {
        ("app_requests_total", (("method", "GET"),)): 7,
        ("app_requests_total", (("method", 'we"ird\\'),)): 2,
        ("jobs_total", ()): 31,
        ("in_flight", ()): 3,
        ("peak", (("pool", "db"),)): 6,
        ("latency_bucket", (("le", "0.5"), ("route", "/"))): 2,
        ("latency_bucket", (("le", "1.0"), ("route", "/"))): 2,
        ("latency_bucket", (("le", "+Inf"), ("route", "/"))): 4,
        ("latency_sum", (("route", "/"),)): 4.75,
        ("latency_count", (("route", "/"),)): 4,
    }
    assert families["latency"].type == "histogram"
    assert families["in_flight"].type == "gauge"


def test_json_renders_non_finite_values_as_strings(seg):
    _, _, registry = start_worker(seg)
    Gauge("up", registry=registry).set(math.inf)
    Gauge("nan", mode="max", registry=registry).set(math.nan)
    out = render_json(Merger(seg).merge())
    assert out["gauges"] == {"up": "inf", "nan": "nan"}
    json.dumps(out, allow_nan=False)
