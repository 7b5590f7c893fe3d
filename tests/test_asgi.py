"""The ASGI MetricsMiddleware (``rockstar_mp.worker.asgi``) on real gunicorn masters running the FastAPI
example under gunicorn's own ``-k asgi`` worker and under ``-k uvicorn.workers.UvicornWorker``."""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import falcon
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from rockstar_mp.worker import asgi, wsgi
from tests.helpers import Gunicorn, free_port, http_get, poll, raw_get

ROCKSTAR = str(Path(sys.executable).with_name("rockstar-mp"))
APP = "examples.fastapi_app:app"
WORKER_CLASSES = ("asgi", "uvicorn.workers.UvicornWorker")
TEMPLATES = {"/", "/items/{item_id}", "/v1/users/{name}", "/fail", "/stream", "<unmatched>"}
TENANTS = ("acme", "globex")
FAILURE = "examples.fastapi_app.RouteFailed: this route always fails"
ADMIN = "admin-token"


def mixed_requests(n: int) -> list[tuple[str, str]]:
    """``n`` (path, tenant): path parameters, 404s, 500s (a raising route), 422s, streams, two tenants."""
    paths = ["/items/{i}", "/v1/users/u{i}", "/nope/{i}", "/fail", "/items/abc", "/stream?chunks=3", "/"]
    return [(paths[i % len(paths)].format(i=i), TENANTS[i % 2]) for i in range(n)]


def get(port: int, path: str, tenant: str = "", timeout: float = 10.0, tail: bytes = b"") -> int:
    """``raw_get`` with a tenant and a request id: the status of a complete response (one that ends with
    ``tail``, for a stream), else 0."""
    return raw_get(port, path, timeout, {"X-Tenant-ID": tenant, "X-Request-ID": f"r-{path}"}, tail)


def requests_by(server: Gunicorn, label: str) -> dict[str, float]:
    """Merged ``http.requests`` by the value of one label (``status``, ``route``)."""
    out: dict[str, float] = {}
    for key, value in server.metrics()["counters"].items():
        found = re.fullmatch(r'http\.requests\{method="[A-Z]+",status="\d+",route="[^"]*"\}', key)
        if found:
            value_of = re.search(f'{label}="([^"]*)"', key).group(1)  # type: ignore[union-attr]
            out[value_of] = out.get(value_of, 0) + value
    return out


def statuses(server: Gunicorn) -> dict[int, float]:
    """Merged ``http.requests`` by status."""
    return {int(status): value for status, value in requests_by(server, "status").items()}


def settled_200s(server: Gunicorn) -> float:
    """The merged 200s, once two reads more than ``snapshot_max_age`` (0.1 s) apart agree: a read may show
    a merge that old, from before the last responses a client of the previous test got."""
    seen: list[float] = []

    def settled() -> tuple[float] | None:
        seen.append(statuses(server).get(200, 0))
        return (seen[-1],) if len(seen) >= 2 and seen[-1] == seen[-2] else None

    return poll(settled, interval=0.15, message="the 200s settled")[0]


def aggregator_json(server: Gunicorn, path: str) -> dict:
    status, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}{path}")
    assert status == 200, body
    return json.loads(body)


def tracebacks_other_than(log: str, expected: str) -> list[str]:
    """Each traceback in ``log`` whose exception line is not ``expected`` (the route that raises on purpose)."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return [block[:3000] for block in blocks if expected not in block]


@pytest.fixture(scope="module", params=WORKER_CLASSES)
def server(request, tmp_path_factory):
    pprof_port = free_port()
    g = Gunicorn(tmp_path_factory.mktemp("asgi"), workers=2, app=APP, args=("-k", request.param),
                 env={"ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(pprof_port),
                      "ROCKSTAR_ADMIN_TOKEN": ADMIN})
    g.pprof_port = pprof_port  # type: ignore[attr-defined]
    g.start()
    yield g
    g.stop()
    unexpected = tracebacks_other_than(g.log_text(), FAILURE)
    assert not unexpected, unexpected[0]


def test_every_response_is_counted_once_by_status_and_recorded_by_template(server):
    requests = mixed_requests(1000)
    with ThreadPoolExecutor(8) as pool:
        received = list(pool.map(lambda r: get(server.port, *r), requests))
    tally = {status: received.count(status) for status in set(received)}
    assert set(tally) == {200, 404, 422, 500}, tally  # every request got a complete response
    poll(lambda: statuses(server) == tally, message=f"http.requests by status == {tally}")

    # /workload follows the merged view, which may be up to a tick behind the counters just polled, and a
    # merge may read a worker between a record's route and tenant cells: every dimension must reach 1,000
    def complete():
        w = aggregator_json(server, "/workload")
        done = w["total_requests"] == 1000 and all(
            sum(v["requests"] for v in w[dimension].values()) == 1000 for dimension in ("by_route", "by_tenant"))
        return done and w
    workload = poll(complete, message="1,000 requests in every dimension of /workload")
    assert set(workload["by_route"]) == TEMPLATES, workload["by_route"].keys()  # templates, no raw path
    assert workload["by_route"]["<unmatched>"]["requests"] == tally[404]
    assert workload["by_route"]["/fail"]["requests"] == tally[500]
    assert workload["by_route"]["/stream"]["requests"] == 1000 // 7 + (1000 % 7 > 5)
    assert {t: workload["by_tenant"][t]["requests"] for t in TENANTS} == {"acme": 500, "globex": 500}
    assert set(workload["by_tenant"]) == set(TENANTS)
    by_route = requests_by(server, "route")  # the route label: the same templates as the records
    assert by_route == {route: workload["by_route"][route]["requests"] for route in TEMPLATES}, by_route
    status, _, text = http_get(f"{server.url}?format=prometheus")
    assert status == 200, text
    samples = [s for family in parse_prometheus(text.decode()) if family.name == "http_requests"
               for s in family.samples if s.name == "http_requests_total" and s.value]
    assert {s.labels["route"] for s in samples} == TEMPLATES  # as the WSGI middleware labels them


def test_in_flight_request_is_shown_and_the_optimizer_waits_for_it(server):
    url = f"http://127.0.0.1:{server.metrics_port}/workers"
    with ThreadPoolExecutor(1) as pool:
        sent_at = time.time()
        slow = pool.submit(get, server.port, "/sleep?ms=1500", "acme")
        busy = poll(lambda: next((w for w in json.loads(http_get(url)[2])["workers"] if w["in_flight_request"]), None),
                    message="the request in flight")
        assert busy["in_flight_request"]["path"] == "/sleep"
        assert busy["in_flight"] == 1 and busy["in_flight_request"]["seconds"] >= 0
        # `rockstar-mp top` (piped: one plain frame) shows it on the busy worker's row
        top = subprocess.run([ROCKSTAR, "top", "--url", f"http://127.0.0.1:{server.metrics_port}", "--iterations", "1"],
                             capture_output=True, text=True, timeout=30)
        assert top.returncode == 0, top.stderr
        row = next((line for line in top.stdout.splitlines() if re.match(rf"\s*{busy['pid']}\s", line)), "")
        assert "GET /sleep" in row, top.stdout
        before = {w["pid"]: w["optimization_count"] for w in aggregator_json(server, "/optimize/stats")["workers"]}
        post = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/optimize", data=b"{}",
                                      headers={"Content-Type": "application/json",
                                               "Authorization": f"Bearer {ADMIN}"}, method="POST")
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status in (200, 202)
        assert slow.result() == 200

    def every_worker_optimized():
        workers = aggregator_json(server, "/optimize/stats")["workers"]
        return all(w["optimization_count"] > before[w["pid"]] for w in workers) and workers
    workers = poll(every_worker_optimized, message="every worker's optimization count raised")
    busy_worker = next(w for w in workers if w["pid"] == busy["pid"])
    assert busy_worker["last_optimization"] >= sent_at + 1.0, "collected while a request was in flight"


def test_cpu_profile_shows_the_async_handler_burning(server):
    done = threading.Event()

    def load():
        while not done.is_set():
            get(server.port, "/work?ms=20")
    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        status, _, body = http_get(f"http://127.0.0.1:{server.pprof_port}/debug/pprof/profile?seconds=1",
                                   timeout=30)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert status == 200, body[:500]
    assert b"examples.fastapi_app.burn_cpu" in gzip.decompress(body)  # the string table names the hot function


def test_sigkilled_worker_never_loses_a_response_its_client_received(server):
    """A worker SIGKILLed while streaming: every complete response a client got was counted (the count
    is stored before the last body message goes to the server, and survives the worker); a response
    cut by the kill may be counted too, never more responses than were asked."""
    before = settled_200s(server)  # the previous test's last responses in
    with ThreadPoolExecutor(16) as pool:
        streams = [pool.submit(get, server.port, f"/stream?chunks={n}&ms=50", tail=b"chunk %d\n" % (n - 1))
                   for n in [2, 4, 6, 8, 40, 40, 40, 40] * 2]
        poll(lambda: sum(f.done() for f in streams) >= 4, message="the short streams answered")
        victim = poll(lambda: next((w["pid"] for w in aggregator_json(server, "/workers")["workers"]
                                    if w["in_flight"]), None), message="a worker streaming")
        os.kill(victim, signal.SIGKILL)
        received = [f.result() for f in streams]
    poll(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), message="a new worker")
    complete = received.count(200)
    assert received.count(0) >= 1, received  # the kill cut some
    poll(lambda: statuses(server).get(200, 0) - before >= complete, message="every complete response counted")
    counted = statuses(server).get(200, 0) - before
    assert complete <= counted <= len(received), (complete, counted)


# -- wrap-time misuse -----------------------------------------------------------------------------------
def test_the_asgi_middleware_refuses_a_wsgi_app():
    with pytest.raises(TypeError, match=r"worker\.asgi\.MetricsMiddleware wraps ASGI apps.*worker\.wsgi"):
        asgi.MetricsMiddleware(falcon.App())
    with pytest.raises(TypeError, match="WSGI app"):
        asgi.MetricsMiddleware(wsgi.MetricsMiddleware(falcon.App()))
    with pytest.raises(TypeError, match="WSGI app"):
        asgi.MetricsMiddleware(lambda environ, start_response: [])


def test_the_wsgi_middleware_refuses_an_asgi_app():
    async def asgi_function(scope, receive, send):
        pass

    class Subclassed(FastAPI):
        pass
    for app in (FastAPI(), Subclassed(), asgi_function, asgi.MetricsMiddleware(FastAPI())):
        for middleware in (wsgi.MetricsMiddleware, wsgi.PythonMetricsMiddleware):
            with pytest.raises(TypeError, match=r"worker\.wsgi\.MetricsMiddleware wraps WSGI apps.*worker\.asgi"):
                middleware(app)
