"""Workload records, the latency sketch, logs, and the JSON views over them."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rockstar_mp import MonitoringConfig
from rockstar_mp.aggregator.state import LONGEST_TICK, RING_SHARE, AggregatorState
from rockstar_mp.aggregator.workload import RingDrain
from rockstar_mp.segment import Geometry, RingWriter, Segment, log_ring, record_ring
from rockstar_mp.segment.layout import LOG_MESSAGE_BYTES, SLOT_SEQ
from rockstar_mp.sketch import RELATIVE_ERROR, bucket_index, quantile
from rockstar_mp.worker.logs import SlabLogHandler
from tests.helpers import http_get, limit, poll, raw_get

SMALL = Geometry(n_slabs=2, slab_max_series=64, slab_heap_bytes=8192, slab_max_values=1024,
                 retired_max_series=64, retired_heap_bytes=8192, retired_max_values=1024,
                 record_slots=16, log_slots=8)


def _exact_quantile(samples: list, q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1e4, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]), st.integers(min_value=1, max_value=4))
def test_sketch_quantiles_are_within_the_documented_error(samples, q, workers):
    """Samples spread over several workers' sketches, merged by adding counts, give every quantile
    within RELATIVE_ERROR of the exact nearest-rank quantile of all samples."""
    sketches: list[dict[int, float]] = [{} for _ in range(workers)]
    for i, value in enumerate(samples):  # round robin over the workers
        sketch = sketches[i % workers]
        sketch[bucket_index(value)] = sketch.get(bucket_index(value), 0) + 1
    merged: dict[int, float] = {}
    for sketch in sketches:  # merging is adding bucket counts
        for index, count in sketch.items():
            merged[index] = merged.get(index, 0) + count
    exact = _exact_quantile(samples, q)
    assert abs(quantile(merged, q) - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)


def _segment(tmp_path) -> tuple[Segment, int]:
    segment = Segment.create(str(tmp_path), SMALL)
    slab, _ = segment.claim_slab()
    return segment, slab


def test_ring_overflow_reports_exactly_the_drops(tmp_path):
    segment, slab = _segment(tmp_path)
    base = segment.geometry.slab_offset(slab)
    writer = RingWriter(segment.buf, base, record_ring(segment.geometry.slab))
    drain = RingDrain(segment, recent_records=10_000, recent_logs=10)
    for i in range(5):
        writer.append(float(i), 0.001, 10, 1, 200, b"GET", b"/", f"r{i}".encode(), b"t")
    drain.drain()
    assert len(drain.records) == 5 and drain.records_dropped == 0
    for i in range(5, 105):  # 100 more than the 16 slots can hold before the next drain
        writer.append(float(i), 0.001, 10, 1, 200, b"GET", b"/", f"r{i}".encode(), b"t")
    drain.drain()
    assert drain.records_dropped == 100 - 16
    assert [r.request_id for r in drain.records] == [f"r{i}" for i in range(5)] + [
        f"r{i}" for i in range(105 - 16, 105)]
    segment.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20), st.booleans()), min_size=1, max_size=12),
       st.integers(0, 30))
def test_records_read_late_are_those_read_at_every_drain(tmp_path_factory, drains, keep):
    """Unpacked only when read, the records are what reading after every drain would give: each drain's
    records sorted by start, appended, the newest ``recent_records`` kept (batches let go unread included)."""
    segment = Segment.create(str(tmp_path_factory.mktemp("seg")), SMALL)
    writers = []
    for _ in range(2):
        slab, _ = segment.claim_slab()
        writers.append(RingWriter(segment.buf, segment.geometry.slab_offset(slab), record_ring(segment.geometry.slab)))
    lazy, eager = RingDrain(segment, keep, 10), RingDrain(segment, keep, 10)
    clock = 0.0
    for first, second, read in drains:
        for writer, n in zip(writers, (first, second), strict=True):
            for _ in range(min(n, 16)):  # within the 16 slots: nothing dropped, the two drains see the same
                clock += 1.0
                writer.append(clock if writer is writers[0] else 1000 - clock, 0.001, 10, 1, 200, b"GET", b"/",
                              f"r{clock:g}".encode(), b"t")
        lazy.drain()
        eager.drain()
        eager.records  # noqa: B018 - read at every drain
        if read:
            assert [r.request_id for r in lazy.records] == [r.request_id for r in eager.records]
    assert [r.request_id for r in lazy.records] == [r.request_id for r in eager.records]
    segment.close()


def test_a_slot_being_rewritten_is_dropped_not_torn(tmp_path):
    segment, slab = _segment(tmp_path)
    layout, base = segment.geometry.slab, segment.geometry.slab_offset(slab)
    writer = RingWriter(segment.buf, base, record_ring(layout))
    for i in range(3):
        writer.append(float(i), 0.001, 10, 1, 200, b"GET", b"/", b"id", b"t")
    SLOT_SEQ.set(segment.buf, 0, base + layout.record_slot(1))  # as if a killed writer left it half done
    drain = RingDrain(segment, 100, 10)
    drain.drain()
    assert [r.start for r in drain.records] == [0.0, 2.0]
    assert drain.records_dropped == 1
    segment.close()


def test_log_messages_are_cut_on_a_character_boundary(tmp_path):
    segment, slab = _segment(tmp_path)
    base = segment.geometry.slab_offset(slab)
    SlabLogHandler.ring = RingWriter(segment.buf, base, log_ring(segment.geometry.slab))
    try:
        logger = logging.getLogger("rockstar.test.cut")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(SlabLogHandler(logging.INFO))
        logger.warning("é" * 1000)  # 2000 bytes of UTF-8, two bytes a character
        logger.info("short %s", "message")
        logger.debug("below the handler's level")
    finally:
        SlabLogHandler.ring = None
    drain = RingDrain(segment, 10, 10)
    drain.drain()
    long, short = drain.logs
    assert long.message == "é" * (LOG_MESSAGE_BYTES // 2) and long.logger == "rockstar.test.cut"
    assert long.level == logging.WARNING and long.pid == os.getpid()
    assert short.message == "short message"
    segment.close()


# -- a real gunicorn -------------------------------------------------------------------------------
def _timed_get(port: int, path: str, tenant: str) -> tuple[int, float]:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\nX-Tenant-ID: {tenant}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split()[1]), time.perf_counter() - start


@pytest.mark.alone
def test_workload_counts_and_latency_match_what_clients_saw(gunicorn_factory):
    server = gunicorn_factory(workers=2, env={"ROCKSTAR_RECENT_RECORDS": "5000"})
    mixed = ([("/", "acme")] * 40 + [("/work?ms=2", "acme")] * 20 + [("/sleep?ms=50", "globex")] * 30
             + [("/error", "globex")] * 10 + [("/users/7", "acme")] * 10)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: _timed_get(server.port, *p), mixed))
    assert [status for status, _ in results].count(500) == 10
    # Then sleeps one at a time, so the clients' clock measures no queueing, only service and transport.
    sleeps_only = [("/sleep?ms=50", "globex")] * 30
    client = [_timed_get(server.port, *p)[1] * 1000 for p in sleeps_only]
    plan = mixed + sleeps_only

    def workload():
        status, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/workload")
        data = json.loads(body)
        return data if data["total_requests"] == len(plan) else None

    data = poll(workload, timeout=10, message="every request recorded")
    routes = {route: v["requests"] for route, v in data["by_route"].items()}
    assert routes == {"/": 40, "/work": 20, "/sleep": 60, "/error": 10, "/users/{name}": 10}
    assert {k: v["requests"] for k, v in data["by_status"].items()} == {"2xx": 130, "5xx": 10}
    assert {k: v["requests"] for k, v in data["by_tenant"].items()} == {"acme": 70, "globex": 70}
    assert data["records_dropped"] == 0

    # The sketch against the exact durations the server measured (each record carries its own).
    records = poll(lambda: len(r := json.loads(http_get(
        f"http://127.0.0.1:{server.metrics_port}/snmp?limit=5000", {"X-SNMP-Community": "public"})[2])
        ["workload_metrics"]) == len(plan) and r, message="every record drained")
    sleeps = [r["duration_ms"] for r in records if r["route"] == "/sleep"]
    server_p95 = data["by_route"]["/sleep"]["p95_ms"]
    assert abs(server_p95 - _exact_quantile(sleeps, 0.95)) <= RELATIVE_ERROR * server_p95 + 0.001
    # And against the clients' own clock: the server's time is inside the client's, which adds its
    # connection and HTTP overhead (documented as at most 5 ms on loopback).
    client_p95 = _exact_quantile(client, 0.95)
    transport_ms = limit(0.005) * 1000  # loopback transport and scheduling; $ROCKSTAR_TEST_SLACK on slow machines
    assert client_p95 * (1 - RELATIVE_ERROR) - transport_ms <= server_p95 <= client_p95 * (1 + RELATIVE_ERROR)

    window = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload?window=60")[2])
    assert window["total_requests"] <= len(plan) and window["window_seconds"] == 60
    tenant = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload?tenant=globex")[2])
    assert tenant["total_requests"] == 70


def test_snmp_view_checks_the_community(gunicorn_factory):
    server = gunicorn_factory(workers=1)
    url = f"http://127.0.0.1:{server.metrics_port}/snmp"
    for headers in ({}, {"X-SNMP-Community": "wrong"}):
        status, response_headers, body = http_get(url, headers)
        assert status == 403 and json.loads(body)["title"] == "403 Forbidden"
    _timed_get(server.port, "/users/1", "acme")
    data = poll(lambda: (d := json.loads(http_get(url, {"X-SNMP-Community": "public"})[2]))
                ["workload_metrics"] and d, message="a record")
    assert set(data) == {"timestamp", "system_info", "workload_metrics", "aggregated_metrics"}
    assert data["timestamp"].endswith("Z")
    [record] = data["workload_metrics"]
    assert record["route"] == "/users/{name}" and record["tenant_id"] == "acme"
    assert record["status_code"] == 200 and record["pid"] in server.worker_pids()
    assert data["aggregated_metrics"]["total_requests"] == 1


def test_records_dropped_under_overflow_add_up_to_the_requests(gunicorn_factory):
    """Rings of 8 slots and a burst far faster than the aggregator's 0.25 s drain: every request is
    either kept or counted as dropped, exactly."""
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_RECORD_SLOTS": "8",
                                              "ROCKSTAR_RECENT_RECORDS": "10000"})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _timed_get(server.port, "/", "t"), range(400)))
    url = f"http://127.0.0.1:{server.metrics_port}"

    def settled():
        kept = json.loads(http_get(f"{url}/snmp?limit=10000", {"X-SNMP-Community": "public"})[2])
        dropped = json.loads(http_get(f"{url}/workload")[2])["records_dropped"]
        return len(kept["workload_metrics"]) + dropped == 400 and (kept, dropped)

    kept, dropped = poll(settled, timeout=10, message="kept + dropped == 400")
    assert dropped > 0


def test_logs_endpoint_filters(gunicorn_factory):
    server = gunicorn_factory(workers=1)
    url = f"http://127.0.0.1:{server.metrics_port}/logs"
    _timed_get(server.port, "/error", "t")
    logs = poll(lambda: json.loads(http_get(url + "?level=warning")[2])["logs"], message="a warning")
    assert logs[-1]["message"] == "the /error route was called (it always fails)"
    assert logs[-1]["level"] == "WARNING" and logs[-1]["pid"] in server.worker_pids()
    assert json.loads(http_get(url + "?level=error")[2])["logs"] == []
    assert json.loads(http_get(url + f"?since={time.time() + 60}")[2])["logs"] == []
    assert len(json.loads(http_get(url + "?limit=1")[2])["logs"]) == 1
    for bad in ("?level=loud", "?limit=0", "?since=soon", "?x=1"):
        status, _, body = http_get(url + bad)
        assert status == 400 and json.loads(body)["description"]


def test_workers_view_shows_in_flight_requests(gunicorn_factory):
    server = gunicorn_factory(workers=1)
    url = f"http://127.0.0.1:{server.metrics_port}/workers"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_timed_get, server.port, "/sleep?ms=1500", "t")
        worker = poll(lambda: (w := json.loads(http_get(url)[2])["workers"][0])["in_flight_request"] and w,
                      message="the request in flight")
        assert worker["in_flight_request"]["path"] == "/sleep"
        assert worker["in_flight_request"]["seconds"] >= 0
        assert slow.result()[0] == 200
    worker = poll(lambda: (w := json.loads(http_get(url)[2])["workers"][0])["requests"] == 1 and w,
                  message="the request done")
    assert worker["in_flight"] == 0 and worker["pid"] == server.worker_pids()[0]
    for key in ("rss", "uss", "cpu_percent", "threads", "open_fds", "heartbeat"):
        assert worker[key] is not None, key


def test_the_tick_interval_follows_the_slot_table_and_the_busiest_ring(tmp_path):
    """``next_tick``: ``tick_interval`` while the slot table moves, ``LONGEST_TICK`` while nothing is
    written, and in between the time the busiest ring takes to fill ``RING_SHARE`` at its last rate."""
    segment, slab = _segment(tmp_path)
    state = AggregatorState(segment, MonitoringConfig())
    short = state.config.tick_interval
    try:
        state.tick()
        assert state.next_tick() == short  # the table was new
        state.tick()
        assert state.next_tick() == LONGEST_TICK  # nothing moved, nothing written
        writer = RingWriter(segment.buf, segment.geometry.slab_offset(slab), record_ring(segment.geometry.slab))
        for i in range(4):  # a quarter of the 16 slots
            writer.append(float(i), 0.001, 10, 1, 200, b"GET", b"/", b"", b"t")
        state.tick()
        since = state._since_drain
        assert state.next_tick() == pytest.approx(min(LONGEST_TICK, max(short, since * RING_SHARE / 0.25)))
        for i in range(16):  # the whole ring since the last drain: as often as allowed
            writer.append(float(i), 0.001, 10, 1, 200, b"GET", b"/", b"", b"t")
        state.tick()
        assert state.next_tick() == short
        segment.claim_slab()
        state.tick()
        assert state.next_tick() == short  # a worker came
    finally:
        segment.close()


def test_sketch_totals_follow_series_met_after_the_first_call(tmp_path):
    """``sketch_totals`` looks only at the series the merger met since its last call; an older snapshot
    (its totals shorter than the series list it shares) gives what it holds, the newer ones all of them."""
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.aggregator.workload import BUCKET_SERIES, sketch_totals
    from rockstar_mp.segment import CatalogueWriter
    from rockstar_mp.series import SeriesKey

    segment, slab = _segment(tmp_path)
    writer = CatalogueWriter(segment.buf, segment.geometry.slab, segment.geometry.slab_offset(slab))

    def bucket(index: int, count: float) -> None:
        key = SeriesKey("counter", BUCKET_SERIES, "", ("dimension", "value", "bucket"), ("route", "/", str(index)), ())
        segment.doubles[writer.append(key.encode(), 1)] = count

    try:
        merger = Merger(segment)
        bucket(1, 3.0)
        old = merger.merge()
        assert sorted(sketch_totals(old).values()) == [3.0]
        bucket(2, 5.0)
        new = merger.merge()
        assert sorted(sketch_totals(new).values()) == [3.0, 5.0]
        assert sorted(sketch_totals(old).values()) == [3.0]
    finally:
        segment.close()


def test_a_bucket_series_is_a_block_of_buckets_from_its_label_on(tmp_path):
    """A worker's bucket series holds ``BUCKETS_PER_BLOCK`` buckets: cell ``k`` of the series labelled
    ``bucket="32"`` is bucket 32 + k; a bucket series of another shape is left out, not a failed page. A
    counter key claiming more cells than a block may hold
    one cell, so a slab's key cannot make the aggregator take memory for a billion."""
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.aggregator.workload import BUCKET_SERIES, aggregates, sketch_totals
    from rockstar_mp.segment import CatalogueWriter
    from rockstar_mp.series import MAX_COUNTER_BLOCK, SeriesKey
    from rockstar_mp.sketch import BUCKETS_PER_BLOCK

    segment, slab = _segment(tmp_path)
    writer = CatalogueWriter(segment.buf, segment.geometry.slab, segment.geometry.slab_offset(slab))
    block = SeriesKey("counter", BUCKET_SERIES, "", ("dim", "value", "bucket"), ("route", "/", "32"),
                      (BUCKETS_PER_BLOCK,))
    try:
        assert block.n_values == BUCKETS_PER_BLOCK
        first = writer.append(block.encode(), block.n_values)
        segment.doubles[first] = 2.0
        segment.doubles[first + 3] = 1.0
        segment.doubles[first + BUCKETS_PER_BLOCK - 1] = 4.0
        for labels in (("route", "/", "--5"), ("route", "/", "\u00b2"), ("route", "/")):  # none of our workers
            odd = SeriesKey("counter", BUCKET_SERIES, "", ("dim", "value", "bucket")[:len(labels)], labels, ())
            segment.doubles[writer.append(odd.encode(), 1)] = 7.0
        snap = Merger(segment).merge()
        sketch, _ = aggregates(snap, sketch_totals(snap), raw=True)["route"]["/"]
        assert sketch == {32: 2.0, 35: 1.0, 32 + BUCKETS_PER_BLOCK - 1: 4.0}
    finally:
        segment.close()
    for claimed in (10 ** 9, MAX_COUNTER_BLOCK + 1, 0, -3, "16", True, 2.0):
        assert SeriesKey("counter", "app.c", "", (), (), (claimed,)).n_values == 1, claimed
    assert SeriesKey("counter", "app.c", "", (), (), (MAX_COUNTER_BLOCK,)).n_values == MAX_COUNTER_BLOCK


def test_records_and_logs_are_read_fresh_between_ticks(gunicorn_factory):
    """A reader of the records (``/snmp``) or the logs (``/logs``) drains the rings itself: with ticks
    5 s apart, a request's record and the warning it logged are there at once."""
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_TICK_INTERVAL": "5"})
    poll(lambda: server.metrics()["system"]["workers_live"] == 1, timeout=10, message="the worker")
    assert raw_get(server.port, "/error", headers={"X-Request-ID": "fresh-1"}) == 500
    _, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/snmp?limit=10", {"X-SNMP-Community": "public"})
    assert "fresh-1" in [r["request_id"] for r in json.loads(body)["workload_metrics"]]
    _, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/logs?level=warning")
    assert any("/error route was called" in r["message"] for r in json.loads(body)["logs"])
