"""Bounded dimensions on the request path: however many tenants, paths and statuses clients send, every
response is counted (``http.requests`` and the workload sketches), the values beyond the limits go under
``other`` (counted in ``system.dimension_overflow``), and nothing of ours raises.

Real gunicorn (examples/app.py) with small slabs, on both request paths (C and pure Python).
"""
from __future__ import annotations

import json
import random
import socket
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor

import pytest

from rockstar_mp.worker.accelerator import PURE_PYTHON_ENV
from rockstar_mp.worker.wsgi import status_label
from tests.helpers import http_get

SMALL_SLABS = {"ROCKSTAR_SLAB_MAX_SERIES": "512", "ROCKSTAR_SLAB_MAX_VALUES": "4096",
               "ROCKSTAR_MAX_WORKERS": "8", "ROCKSTAR_RECORD_SLOTS": "64"}


def _get(port: int, path: str, tenant: str | None = None, method: str = "GET") -> int:
    """One HTTP/1.0 request; the status received, or 0 if no complete response came."""
    tenant_line = f"X-Tenant-ID: {tenant}\r\n" if tenant is not None else ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\n{tenant_line}\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0
    head = data.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) > 1 and head[0].startswith(b"HTTP/1.") else 0


def _requests_by_status(counters: dict) -> dict[str, int]:
    """The merged ``http.requests`` by status label (series at 0, such as the reserved fallback, left out)."""
    by_status: Tally = Tally()
    for name, value in counters.items():
        if name.startswith("http.requests{") and value:
            by_status[name.split('status="')[1].split('"')[0]] += value
    return dict(by_status)


@pytest.mark.parametrize("request_path", ["c", "python"])
def test_a_flood_of_tenants_and_paths_never_leaves_a_response_uncounted(gunicorn_factory, request_path):
    env = dict(SMALL_SLABS, **({PURE_PYTHON_ENV: "1"} if request_path == "python" else {PURE_PYTHON_ENV: ""}))
    server = gunicorn_factory(workers=2, env=env)
    rng = random.Random(11)
    flood = [(f"/sleep?ms={rng.randrange(0, 40)}", f"tenant-{i}") for i in range(600)]  # varied latency
    flood += [(f"/no/such/path/{i}-{rng.random()}", f"tenant-{i % 50}") for i in range(400)]
    mixed = [rng.choice(["/", "/error", "/users/ada", "/missing"]) for _ in range(200)]
    with ThreadPoolExecutor(16) as pool:
        received = Tally(pool.map(lambda req: _get(server.port, *req), flood))
        received.update(pool.map(lambda path: _get(server.port, path, "acme"), mixed))
    assert received[0] == 0 and sum(received.values()) == 1200, received
    assert received[404] >= 400 and received[500] > 0 and received[200] > 600

    server.wait_total(1200)
    metrics = server.metrics()
    assert _requests_by_status(metrics["counters"]) == {str(status): n for status, n in received.items()}
    system = metrics["system"]
    assert system["dimension_overflow"]["tenant"] > 0, system  # 600 tenants, at most 200 a worker
    workload = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload")[2])
    assert workload["total_requests"] == 1200  # every response is in the sketches too, once a dimension
    for dimension in ("by_route", "by_tenant"):
        assert sum(v["requests"] for v in workload[dimension].values()) == 1200, dimension
    by_class = Tally()
    for status, n in received.items():
        by_class[f"{status // 100}xx"] += n
    assert {k: v["requests"] for k, v in workload["by_status"].items()} == dict(by_class)
    assert "<unmatched>" in workload["by_route"] or "(unrouted)" in workload["by_route"]
    assert len(workload["by_tenant"]) <= 2 * 200 + 1
    log = server.log_text()
    assert "CatalogueFull" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("request_path", ["c", "python"])
def test_a_full_catalogue_never_leaves_a_response_uncounted(gunicorn_factory, request_path):
    """The app's first request fills its worker's catalogue with series of its own; then statuses and
    methods never seen before: each is counted under the fallback reserved at import."""
    env = dict(SMALL_SLABS, **{PURE_PYTHON_ENV: "1" if request_path == "python" else ""})
    server = gunicorn_factory(workers=1, env=env, app="tests.apps.full_catalogue:app")
    plan = [(method, f"/?status={status}", f"t{i % 7}") for i, (method, status) in enumerate(
        (m, s) for s in (200, 201, 204, 404, 418, 500, 503, 299) for m in ("GET", "POST", "DELETE", "BREW"))]
    with ThreadPoolExecutor(8) as pool:
        received = Tally(pool.map(lambda req: _get(server.port, req[1], req[2], req[0]), plan))
    assert received[0] == 0 and sum(received.values()) == len(plan), received

    server.wait_total(len(plan))
    metrics = server.metrics()
    assert metrics["system"]["catalogue_full"] > 0
    fallback = metrics["counters"].get('http.requests{method="other",status="other",route="other"}', 0)
    assert fallback == metrics["system"]["dimension_overflow"]["status"] > 0
    workload = json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workload")[2])
    assert workload["total_requests"] == len(plan)  # the sketches fall back on what was reserved too
    for dimension in ("by_route", "by_tenant"):
        assert sum(v["requests"] for v in workload[dimension].values()) == len(plan), dimension
    assert "CatalogueFull" not in server.log_text()


@pytest.mark.parametrize("line, label", [
    ("200 OK", ("200", 200)), ("404", ("404", 404)), ("599 Last", ("599", 599)), ("100 Continue", ("100", 100)),
    ("600 Past", ("other", 600)), ("099 Before", ("other", 99)), ("abc", ("other", 0)), ("", ("other", 0)),
    ("1_0 X", ("other", 0)), (" 200 OK", ("other", 0)), ("\u0662\u0660\u0660 digits", ("other", 0)),
    (b"200 OK", ("other", 0)), (200, ("other", 0)), (None, ("other", 0)), (["200"], ("other", 0)),
])
def test_the_status_label_is_a_code_of_100_to_599_or_other(line, label):
    assert status_label(line) == label
