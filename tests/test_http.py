"""The aggregator's HTTP endpoint with a generic pre-fork parent (os.fork, no gunicorn)."""
from __future__ import annotations

import email.utils
import json
import os
import signal
import time

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rockstar_mp import Counter, Gauge, Histogram, MonitoringConfig, MonitoringManager, attach_worker
from tests.helpers import free_port, http_get, poll

HITS = Counter("t.hits", "Hits by route", ["route"])
LOAD = Gauge("t.load", "A per-worker figure", mode="max")
SIZES = Histogram("t.sizes", "Sizes", buckets=(1, 10, 100))

TOKEN = "s3cret-token"


class PreforkServer:
    """A parent with a MonitoringManager and forked children that attach and update metrics."""

    def __init__(self, tmp_path, **config) -> None:
        self.port = free_port()
        self.config = MonitoringConfig(metrics_port=self.port, segment_dir=str(tmp_path), **config)
        self.manager = MonitoringManager(self.config).start()
        self.children: dict[int, int] = {}  # pid -> write end of its stop pipe

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def fork_worker(self, hits: int, load: float, size: float) -> int:
        """A worker that counts ``hits``, sets the gauge to ``load`` and observes ``size``."""
        def update() -> None:
            for _ in range(hits):
                HITS.labels("/").inc()
            LOAD.set(load)
            SIZES.observe(size)
        return self.fork_with(update)

    def fork_with(self, update) -> int:
        """Fork a worker that attaches, runs ``update()``, and lives until ``stop_worker``."""
        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        slab = self.manager.assign_slab()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                for fd in (ready_r, stop_w, *self.children.values()):  # siblings' pipes too
                    os.close(fd)
                attach_worker(self.manager.segment, *slab)
                update()
                os.write(ready_w, b"x")
                os.read(stop_r, 1)  # until the parent closes the pipe
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(stop_r)
        assert os.read(ready_r, 1) == b"x"
        os.close(ready_r)
        self.children[pid] = stop_w
        return pid

    def stop_worker(self, pid: int) -> None:
        os.close(self.children.pop(pid))
        os.waitpid(pid, 0)

    def get(self, query: str = "", headers: dict | None = None):
        headers = headers if headers is not None else (
            {"Authorization": f"Bearer {TOKEN}"} if self.config.require_auth else {})
        return http_get(self.url + query, headers)

    def metrics(self) -> dict:
        status, _, body = self.get()
        assert status == 200, body
        return json.loads(body)

    def close(self) -> None:
        for pid in list(self.children):
            os.kill(pid, signal.SIGKILL)
            self.stop_worker(pid)
        self.manager.stop()


@pytest.fixture
def prefork(tmp_path):
    servers = []

    def make(**config) -> PreforkServer:
        server = PreforkServer(tmp_path, **config)
        servers.append(server)
        poll(lambda: server.get()[0] in (200, 401, 404), timeout=15, message="aggregator up")
        return server

    yield make
    for server in servers:
        server.close()


def test_children_merge_and_survive_their_exit(prefork):
    server = prefork()
    pids = [server.fork_worker(hits=10 * (i + 1), load=i, size=5) for i in range(3)]
    data = poll(lambda: (d := server.metrics())["system"]["workers_live"] == 3 and d, message="3 workers")
    assert data["counters"]["t.hits"] == 60
    assert data["counters"]['t.hits{route="/"}'] == 60
    assert data["gauges"]["t.load"] == 2  # mode=max
    assert data["histograms"]["t.sizes"] == {"count": 3, "sum": 15,
                                             "buckets": {"1.0": 0, "10.0": 3, "100.0": 3, "+Inf": 3}}
    assert sorted(w["pid"] for w in data["workers"]) == sorted(pids)
    assert data["system"]["num_cpu"] == os.cpu_count()
    assert data["system"]["num_goroutine"] >= 3  # every worker runs a heartbeat thread too

    for pid in pids:  # no master hook tells the aggregator: it finds the dead pids itself
        server.stop_worker(pid)
    data = poll(lambda: (d := server.metrics())["system"]["workers_folded"] == 3 and d, message="folds")
    assert data["counters"]["t.hits"] == 60  # counters outlive their workers
    assert data["histograms"]["t.sizes"]["count"] == 3
    assert "t.load" not in data["gauges"]  # gauges do not
    assert data["workers"] == []


def test_single_worker_view_and_prometheus_format(prefork):
    server = prefork()
    first = server.fork_worker(hits=7, load=1, size=50)
    server.fork_worker(hits=5, load=3, size=500)
    poll(lambda: server.metrics()["counters"].get("t.hits") == 12, message="both workers")

    status, _, body = server.get(f"?pid={first}")
    assert status == 200
    assert json.loads(body)["counters"]["t.hits"] == 7

    status, headers, body = server.get("?format=prometheus")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    [hits] = [s for s in families["t_hits"].samples if s.name == "t_hits_total"]
    assert hits.value == 12 and hits.labels == {"route": "/"}
    buckets = {s.labels["le"]: s.value for s in families["t_sizes"].samples if s.name.endswith("_bucket")}
    assert buckets == {"1.0": 0, "10.0": 0, "100.0": 1, "+Inf": 2}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": "Basic " + TOKEN}])
def test_auth_refuses_missing_or_wrong_tokens(prefork, headers):
    server = prefork(require_auth=True, auth_token=TOKEN)
    for path in ("", "?format=prometheus", "/../nothing"):
        status, response_headers, body = server.get(path, headers)
        assert status == 401
        assert response_headers["Content-Type"] == "application/json"
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(body)["title"] == "401 Unauthorized"
    status, _, body = server.get("", {"Authorization": f"bearer {TOKEN}"})
    assert status == 200 and "counters" in json.loads(body)


@pytest.mark.parametrize("query,status", [("?format=xml", 400), ("?verbose=1", 400), ("?pid=abc", 400),
                                          ("?pid=-1", 400), ("?pid=999999999", 404)])
def test_bad_query_parameters_get_json_errors(prefork, query, status):
    server = prefork()
    got, headers, body = server.get(query)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["description"]


def test_disabled_metrics_and_unknown_paths_are_404(prefork):
    server = prefork(enable_metrics=False)
    status, _, body = server.get()
    assert status == 404 and json.loads(body)["title"] == "404 Not Found"
    status, _, body = http_get(f"http://127.0.0.1:{server.port}/nothing-here")
    assert status == 404 and json.loads(body)["title"]


def test_binds_loopback_by_default(prefork):
    server = prefork()
    pid = server.manager.aggregator_pid
    listening = [c.laddr for c in psutil.Process(pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", server.port)]


def test_the_date_header_moves_with_the_clock(prefork):
    """The aggregator's uvicorn refreshes its Date header on the aggregator's tick (it has no timer of its
    own): an idle aggregator's answers carry a Date that moves on, within a second or two of the clock."""
    server = prefork()

    def date() -> float:
        status, headers, _ = server.get()
        assert status == 200
        return email.utils.parsedate_to_datetime(headers["Date"]).timestamp()

    first = date()
    later = poll(lambda: (d := date()) > first and d, timeout=5, message="a later Date header")
    assert abs(later - time.time()) <= 2.0


def test_environment_overrides_the_config(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("ROCKSTAR_METRICS_PORT", str(port))
    monkeypatch.setenv("ROCKSTAR_METRICS_PATH", "/stats")
    monkeypatch.setenv("ROCKSTAR_SEGMENT_DIR", str(tmp_path / "seg"))
    manager = MonitoringManager(MonitoringConfig(metrics_port=1)).start()
    try:
        assert manager.segment.path.startswith(str(tmp_path / "seg"))
        status, _, body = poll(lambda: (r := http_get(f"http://127.0.0.1:{port}/stats"))[0] == 200 and r,
                               timeout=15, message="aggregator on the overridden port and path")
        assert "system" in json.loads(body)
    finally:
        manager.stop()
    assert not os.listdir(tmp_path / "seg")
