"""The metrics history: the SQLite writer/reader on a temporary file, and ``GET /metrics/history`` end to
end with the generic pre-fork parent of ``test_http``."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import sqlite3
import stat
import tempfile
from urllib.parse import quote

import pytest

from rockstar_mp import MonitoringConfig, attach_worker
from rockstar_mp.aggregator import history
from rockstar_mp.aggregator.history import HISTORY_FILE, HistoryWriter, flatten
from tests.helpers import http_get, poll
from tests.test_http import HITS, TOKEN, PreforkServer, prefork  # noqa: F401  (prefork is a fixture)

NOBODY = 65534


def rows(**values) -> dict:
    return {name: ("gauge", float(value)) for name, value in values.items()}


def read(writer: HistoryWriter, name: str, since: float = 0.0, until: float = 1e12, step=None):
    return asyncio.run(writer.query(name, since, until, step))


@pytest.fixture
def writers(tmp_path):
    made: list[HistoryWriter] = []

    def make(interval: float = 10.0, retention: float = 86400.0, path=None, **kwargs) -> HistoryWriter:
        writer = HistoryWriter(str(path or tmp_path / HISTORY_FILE), interval, retention, **kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


# -- the writer and the reader ------------------------------------------------------------------------
def test_round_trip_and_private_file_modes(writers, tmp_path):
    path = tmp_path / HISTORY_FILE
    writer = writers()
    old = os.umask(0)  # SQLite's own default would be 0644 (0666 & ~umask)
    try:
        assert writer.submit(100.0, rows(a=1, b=2.5)).result() is True
    finally:
        os.umask(old)
    assert writer.submit(101.0, rows(a=2)).result() is True
    assert read(writer, "a") == [[100.0, 1], [101.0, 2]]
    assert read(writer, "b") == [[100.0, 2.5]]
    assert read(writer, "a", since=100.5) == [[101.0, 2]]
    assert read(writer, "a", until=100.5) == [[100.0, 1]]
    assert read(writer, "a", since=200) == []  # known name, nothing in range
    assert read(writer, "c") is None  # never recorded
    assert writer.errors == 0 and writer.writes == 2 and writer.stats() == {"history_errors": 0}
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_existing_file_is_made_private(writers, tmp_path):
    path = tmp_path / HISTORY_FILE
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    assert writers().submit(1.0, rows(a=1)).result() is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_retention_deletes_old_points_and_forgets_empty_series(writers, tmp_path):
    writer = writers(retention=100.0, sweep_interval=0.0)
    assert writer.submit(1000.0, rows(a=1, b=1)).result()
    assert writer.submit(1050.0, rows(a=2)).result()
    assert read(writer, "b") == [[1000.0, 1]]
    assert writer.submit(1101.0, rows(a=3)).result()  # everything before 1001 goes
    assert read(writer, "a") == [[1050.0, 2], [1101.0, 3]]
    assert read(writer, "b") is None  # no point left: the series is forgotten too
    with sqlite3.connect(tmp_path / HISTORY_FILE) as db:
        assert db.execute("SELECT count(*) FROM points").fetchone()[0] == 2
        assert [r[0] for r in db.execute("SELECT name FROM series")] == ["a"]
    assert writer.submit(1102.0, rows(a=4, b=5)).result()  # b comes back under a new id
    assert read(writer, "b") == [[1102.0, 5]]
    assert read(writer, "a") == [[1050.0, 2], [1101.0, 3], [1102.0, 4]]


def test_step_keeps_the_last_point_of_each_bucket(writers):
    writer = writers()
    for i in range(10):
        assert writer.submit(100.0 + i, rows(a=i)).result()
    assert read(writer, "a", step=5) == [[104.0, 4], [109.0, 9]]
    assert read(writer, "a", step=3) == [[101.0, 1], [104.0, 4], [107.0, 7], [109.0, 9]]
    assert read(writer, "a", since=102, until=108, step=3) == [[104.0, 4], [107.0, 7], [108.0, 8]]
    assert read(writer, "a", step=1e9) == [[109.0, 9]]
    assert read(writer, "a", step=0.5) == read(writer, "a")
    for tiny in (1e-12, 1e-320):  # tiny steps neither saturate nor overflow
        assert read(writer, "a", step=tiny) == read(writer, "a")


def test_a_locked_database_is_counted_once_logged_and_recovered_from(writers, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rockstar_mp.aggregator")
    writer = writers(busy_timeout=0.05)
    assert writer.submit(100.0, rows(a=1)).result() is True
    other = sqlite3.connect(tmp_path / HISTORY_FILE, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        for ts in (101.0, 102.0):
            future = writer.submit(ts, rows(a=ts))
            assert future.result() is False and future.exception() is None
        assert writer.errors == 2 and writer.stats() == {"history_errors": 2}
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert writer.submit(103.0, rows(a=3)).result() is True
    assert writer.errors == 2
    assert read(writer, "a") == [[100.0, 1], [103.0, 3]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "database is locked" in warnings[0]  # once per distinct error
    assert any("work again" in r.getMessage() for r in caplog.records)


def run_unprivileged(fn):
    """``fn()`` here, or, as root (whom directory modes do not stop), in a forked child that became
    nobody; ``fn`` returns something JSON can carry."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = {"ok": fn()}
        except BaseException as exc:  # noqa: B902 -- report anything to the parent
            result = {"raised": repr(exc)}
        finally:
            try:
                os.write(w, json.dumps(result).encode())
            finally:
                os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert "raised" not in result, result["raised"]
    return result["ok"]


def test_a_read_only_directory_counts_errors_and_raises_nothing():
    directory = tempfile.mkdtemp(prefix="rockstar-history-ro-")  # in /tmp, which nobody can traverse
    os.chmod(directory, 0o555)

    def attempt():
        writer = HistoryWriter(os.path.join(directory, HISTORY_FILE), 10.0, 3600.0)
        try:
            results = [writer.submit(100.0 + i, rows(a=i)).result() for i in range(3)]
            return {"results": results, "errors": writer.errors, "stats": writer.stats()}
        finally:
            writer.close()

    try:
        got = run_unprivileged(attempt)
    finally:
        os.chmod(directory, 0o700)
        shutil.rmtree(directory)
    assert got == {"results": [False, False, False], "errors": 3, "stats": {"history_errors": 3}}


def test_snapshots_are_written_at_once_then_every_interval(writers, monkeypatch):
    class Snap:
        taken = 1234.5

    class State:
        def snapshot(self):
            return Snap()

    monkeypatch.setattr(history, "render_json",
                        lambda snap: {"counters": {"c": 1}, "gauges": {}, "histograms": {}})
    writer = writers(interval=3600.0)
    first = writer.maybe_write(State())
    assert first is not None and first.result() is True
    assert writer.maybe_write(State()) is None  # the next one is an hour away
    assert read(writer, "c") == [[1234.5, 1]]


def test_flatten_names_kinds_and_non_finite_values():
    body = {"counters": {"http.requests": 3, 'http.requests{method="GET"}': 3},
            "gauges": {"load": 0.5, "bad": "nan", "worse": "inf"},
            "histograms": {'t.sizes{route="/"}': {"count": 2, "sum": 7.5, "buckets": {}},
                           "odd": {"count": 1, "sum": "nan", "buckets": {}}}}
    flat = flatten(body)
    assert dict(flat) == {"http.requests": ("counter", 3.0),
                          'http.requests{method="GET"}': ("counter", 3.0),
                          "load": ("gauge", 0.5),
                          't.sizes.count{route="/"}': ("histogram.count", 2.0),
                          't.sizes.sum{route="/"}': ("histogram.sum", 7.5),
                          "odd.count": ("histogram.count", 1.0)}
    with pytest.raises(TypeError):
        flat["x"] = ("gauge", 1.0)  # handed to another thread: read-only


def test_config_history_fields():
    config = MonitoringConfig()
    assert (config.history_interval, config.history_retention, config.history_path) == (10.0, 86400.0, None)
    assert MonitoringConfig(history_interval=0).history_interval == 0  # history off
    for bad in ({"history_interval": -1}, {"history_interval": math.nan}, {"history_interval": math.inf},
                {"history_retention": 0}, {"history_retention": -5}, {"history_retention": math.nan}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MonitoringConfig(**bad)
    env = MonitoringConfig().with_env({"ROCKSTAR_HISTORY_INTERVAL": "0.5",
                                       "ROCKSTAR_HISTORY_PATH": "/x/h.db"})
    assert env.history_interval == 0.5 and env.history_path == "/x/h.db"
    assert HistoryWriter.from_config(MonitoringConfig(history_interval=0), "/tmp") is None


# -- end to end -----------------------------------------------------------------------------------
def fork_stepping_worker(server: PreforkServer):
    """A worker that adds one to ``t.hits{route="/"}`` per byte read from its pipe and acks each."""
    cmd_r, cmd_w = os.pipe()
    ack_r, ack_w = os.pipe()
    slab = server.manager.assign_slab()
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (cmd_w, ack_r, *server.children.values()):
                os.close(fd)
            attach_worker(server.manager.segment, *slab)
            while data := os.read(cmd_r, 64):
                for _ in data:
                    HITS.labels("/").inc()
                os.write(ack_w, b"k" * len(data))
        finally:
            os._exit(0)
    os.close(cmd_r)
    os.close(ack_w)
    server.children[pid] = cmd_w  # server.close() kills and reaps it

    def hit(n: int) -> None:
        os.write(cmd_w, b"x" * n)
        acked = 0
        while acked < n:
            acked += len(os.read(ack_r, n - acked))

    return hit, ack_r


def history_of(server: PreforkServer, name: str, extra: str = ""):
    status, headers, body = server.get(f"/history?name={quote(name)}{extra}")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_history_records_every_interval_end_to_end(prefork):  # noqa: F811 (the imported fixture)
    server = prefork(history_interval=0.5)
    hit, ack_r = fork_stepping_worker(server)
    try:
        total = 0
        for n in (2, 3, 4):  # each total must show up in a snapshot of its own
            hit(n)
            total += n
            poll(lambda total=total: (r := history_of(server, "t.hits"))[0] == 200 and r[1]["points"]
                 and r[1]["points"][-1][1] == total, timeout=10, message=f"t.hits == {total} in the history")
    finally:
        os.close(ack_r)
    status, body = history_of(server, "t.hits")
    assert status == 200 and body["name"] == "t.hits"
    points = body["points"]
    assert len(points) >= 3
    times = [ts for ts, _ in points]
    values = [value for _, value in points]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert values == sorted(values)  # a counter never goes down
    assert {2, 5, 9} <= set(values) and values[-1] == 9

    status, body = history_of(server, 't.hits{route="/"}', "&step=1000000000")  # labelled, one bucket
    assert status == 200 and [value for _, value in body["points"]] == [9]
    status, body = history_of(server, "t.hits", f"&since={times[1]}&until={times[-1]}")
    assert status == 200 and body["points"] == points[1:]
    status, body = history_of(server, "t.hits", "&since=0&until=1")
    assert status == 200 and body["points"] == []

    path = os.path.join(server.manager.run_dir, HISTORY_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


BAD_QUERIES = ["", "?name=", "?since=1", "?name=t.hits&since=abc", "?name=t.hits&until=x",
               "?name=t.hits&since=nan", "?name=t.hits&until=inf", "?name=t.hits&since=10&until=5",
               "?name=t.hits&step=0", "?name=t.hits&step=-1", "?name=t.hits&step=abc",
               "?name=t.hits&verbose=1", "?name=t.hits&name=t.hits"]


def test_bad_history_parameters_get_400_json(prefork):  # noqa: F811 (the imported fixture)
    server = prefork(history_interval=0.5)
    for query in BAD_QUERIES:
        status, headers, body = server.get("/history" + query)
        assert status == 400, (query, status, body)
        assert headers["Content-Type"] == "application/json", query
        body = json.loads(body)
        assert body["title"] == "400 Bad Request" and body["description"], query


def test_unknown_names_are_404_and_auth_applies(prefork):  # noqa: F811 (the imported fixture)
    server = prefork(history_interval=0.5, require_auth=True, auth_token=TOKEN)
    status, headers, body = http_get(server.url + "/history?name=t.hits")
    assert status == 401 and json.loads(body)["title"] == "401 Unauthorized"
    status, body = history_of(server, "no.such.metric")
    assert status == 404 and body["title"] == "404 Not Found" and "no.such.metric" in body["description"]


def test_history_off_is_404_and_writes_nothing(prefork):  # noqa: F811 (the imported fixture)
    off = prefork(history_interval=0)
    status, body = history_of(off, "t.hits")
    assert status == 404 and "history" in body["description"]
    assert not os.path.exists(os.path.join(off.manager.run_dir, HISTORY_FILE))
