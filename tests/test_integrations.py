"""The framework integrations as ``docs/integrations.md`` gives them: every command line of it runs (Falcon,
Flask and Django under sync, gthread and gevent workers; FastAPI under gunicorn's asgi and uvicorn's
workers), every line of app code it shows is in the example
it names, and a mixed load (path parameters, 404s, 405s, 500s from a raising view, two tenants) is counted
exactly and recorded under route templates only: 1,000 requests under sync workers, 300 under the other
classes (the same code paths, more workers' start-up in the file's time budget; tests/test_asgi.py sends
1,000 to each ASGI worker class). ``ROCKSTAR_TEST_MIXED_REQUESTS=1000`` sends that many to every recipe."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import pytest

from rockstar_mp.worker.keys import UNMATCHED
from tests.helpers import ROOT, Gunicorn, http_get, poll

DOC = ROOT / "docs" / "integrations.md"
DELIBERATE_FAILURES = ("RuntimeError: this view always fails (by design)",
                       "RouteFailed: this route always fails (by design)")  # the views that raise on purpose
WSGI_CLASSES = ("sync", "gthread", "gevent")
ASGI_CLASSES = ("asgi", "uvicorn.workers.UvicornWorker")
REQUESTS = {"sync": 1000, "gthread": 300, "gevent": 300, "asgi": 300,
            "uvicorn.workers.UvicornWorker": 300}  # per recipe, by worker class (the time budget)
if os.environ.get("ROCKSTAR_TEST_MIXED_REQUESTS"):  # e.g. 1000 for every class, beyond the suite's time budget
    REQUESTS = dict.fromkeys(REQUESTS, int(os.environ["ROCKSTAR_TEST_MIXED_REQUESTS"]))
WORKERS = 2
STARTING_AT_ONCE = 3  # all 9 at once took over 20 s each on 2 busy cores


class Case(NamedTuple):
    method: str
    path: str
    route: str  # what /workload must show
    status: int


def falcon_cases(i: int) -> list[Case]:
    return [Case("GET", f"/users/user-{i}", "/users/{name}", 200), Case("GET", f"/users/{i}", "/users/{name}", 200),
            Case("GET", "/", "/", 200), Case("GET", f"/orders/fr{i}", UNMATCHED, 404),
            Case("GET", "/error", "/error", 500), Case("POST", f"/users/u{i}", "/users/{name}", 405)]


def flask_cases(i: int) -> list[Case]:
    return [Case("GET", f"/users/user-{i}", "/users/<name>", 200), Case("GET", f"/users/{i}", "/users/<name>", 200),
            Case("GET", f"/orders/{i}", "/orders/<int:order_id>", 200), Case("GET", "/", "/", 200),
            Case("GET", f"/orders/fr{i}", UNMATCHED, 404), Case("GET", "/error", "/error", 500),
            Case("POST", f"/users/u{i}", "/users/<name>", 405)]


def django_cases(i: int) -> list[Case]:
    return [Case("GET", f"/users/user-{i}/", "/users/<slug:name>/", 200),
            Case("GET", f"/users/{i}/", "/users/<slug:name>/", 200),
            Case("GET", f"/orders/{i}/", "/orders/<int:order_id>/", 200), Case("GET", "/", "/", 200),
            Case("GET", f"/orders/fr{i}/", UNMATCHED, 404), Case("GET", f"/users/u{i}", UNMATCHED, 301),
            Case("GET", "/error/", "/error/", 500), Case("POST", f"/users/u{i}/", "/users/<slug:name>/", 405)]


def fastapi_cases(i: int) -> list[Case]:
    return [Case("GET", f"/items/{i}", "/items/{item_id}", 200), Case("GET", f"/items/x{i}", "/items/{item_id}", 422),
            Case("GET", f"/v1/users/user-{i}", "/v1/users/{name}", 200), Case("GET", "/", "/", 200),
            Case("GET", f"/orders/fr{i}", UNMATCHED, 404), Case("GET", "/fail", "/fail", 500),
            Case("POST", f"/items/{i}", "/items/{item_id}", 405)]


CASES = {"examples.app:app": falcon_cases, "examples.flask_app:app": flask_cases,
         "examples.django_site.wsgi:application": django_cases}
ASGI_CASES = {"examples.fastapi_app:app": fastapi_cases}


def plan(app: str, n: int) -> list[tuple[Case, str]]:
    """``n`` requests, each with parameter values of its own, and its tenant."""
    cases = {**CASES, **ASGI_CASES}[app]
    return [(cases(i)[i % len(cases(i))], "globex" if i % 3 == 0 else "acme") for i in range(n)]


# -- the recipes of docs/integrations.md ---------------------------------------------------------------
def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.S | re.M)


def recipes() -> list[tuple[str, tuple[str, ...], str]]:
    """``(worker class, gunicorn arguments, app)`` of every command line of the doc."""
    found = []
    for block in code_blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line)
            assert words[:3] == ["gunicorn", "-c", "gunicorn_conf.py"], line
            args = tuple(words[3:-1])
            worker_class = args[args.index("--worker-class") + 1] if "--worker-class" in args else "sync"
            found.append((worker_class, args, words[-1]))
    return found


def test_the_recipes_cover_every_worker_class_and_framework():
    assert sorted((w, app) for w, _, app in recipes()) == sorted(
        [(w, app) for w in WSGI_CLASSES for app in CASES] + [(w, app) for w in ASGI_CLASSES for app in ASGI_CASES])


def test_every_line_of_app_code_in_the_recipes_is_in_its_example():
    blocks = code_blocks("python")
    assert len(blocks) >= 3
    for block in blocks:
        first, *lines = block.splitlines()
        assert first.startswith("# examples/"), first
        source = iter((ROOT / first[2:]).read_text().splitlines())
        for line in filter(None, lines):  # in the file's order
            assert any(line == candidate for candidate in source), f"{first[2:]}: {line!r} (or not in order)"


# -- serving a mixed load ----------------------------------------------------------------------------
def send(port: int, method: str, path: str, tenant: str) -> int:
    """One HTTP/1.0 request; its status (0 if no complete status line came)."""
    head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Tenant-ID: {tenant}\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.") else b"0"
    return int(status)


def counted_by_method_and_status(server: Gunicorn) -> Counter:
    found: Counter = Counter()
    for key, value in server.metrics()["counters"].items():
        labels = re.fullmatch(r'http\.requests\{method="(\w+)",status="(\w+)",route="[^"]*"\}', key)
        if labels:
            found[labels[1], labels[2]] += int(value)
    return found


def prometheus_routes(server: Gunicorn) -> Counter:
    """``http_requests_total`` of the Prometheus text by its ``route`` label."""
    status, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics",
                               headers={"Accept": "text/plain; version=0.0.4"})
    assert status == 200
    found: Counter = Counter()
    for line in body.decode().splitlines():
        if line.startswith("http_requests_total{"):
            route = re.search(r'route="([^"]*)"', line)
            assert route, line
            found[route[1]] += int(float(line.rsplit(" ", 1)[1]))
    return +found  # without the fallback series declared at start (route="other", 0)


def recipe_id(worker_class: str, app: str) -> str:
    return f"{app.split('.')[1].split(':')[0]}-{worker_class.split('.')[0]}"


def traceback_of_ours(server: Gunicorn) -> str:
    """A traceback in the log but the raising views' (the frameworks log theirs), or ""."""
    log = server.log_text()
    blocks = log.split("Traceback (most recent call last):")[1:]
    ours = [block for block in blocks if not any(failure in block for failure in DELIBERATE_FAILURES)]
    return ours[0][:4000] if ours else ""


def settled(workload: dict, requests: int) -> bool:
    """Whether every request is in ``workload`` by status, route and tenant alike. A worker adds a request
    to its three sketches one after the other, after the client has its response, so a read can fall
    between them (seen in CI: the total 1,000 and the routes 999)."""
    return workload["total_requests"] == requests and all(
        sum(v["requests"] for v in workload[by].values()) == requests for by in ("by_route", "by_tenant"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Every recipe's gunicorn, ``STARTING_AT_ONCE`` at a time (starting is mostly waiting: for the workers
    to import their framework, for the aggregator to see them): ``({recipe id: future of the started
    server}, stop)``; a server that did not start fails its own test only. ``stop(recipe id)`` stops a
    server in the background (stopping is waiting for its processes to exit) while other tests run."""
    started: dict[str, Future] = {}
    stopping: dict[str, Future] = {}
    with ThreadPoolExecutor(STARTING_AT_ONCE) as starter, ThreadPoolExecutor(len(recipes())) as stopper:
        for worker_class, args, app in recipes():
            name = recipe_id(worker_class, app)
            server = Gunicorn(tmp_path_factory.mktemp(name), workers=WORKERS, args=args, app=app)
            started[name] = starter.submit(server.start)

        def stop(name: str) -> None:
            if name not in stopping and not started[name].exception():
                stopping[name] = stopper.submit(started[name].result().stop)

        yield started, stop
        for name in started:
            stop(name)
        for stopped in stopping.values():
            stopped.result()
    broken = {name: traceback_of_ours(f.result()) for name, f in started.items() if not f.exception()}
    assert not any(broken.values()), broken


@pytest.mark.parametrize(("worker_class", "app"), [(w, app) for w, _, app in recipes()],
                         ids=[recipe_id(w, app) for w, _, app in recipes()])
def test_a_mixed_load_is_counted_exactly_under_route_templates(servers, worker_class, app):
    started, stop = servers
    name = recipe_id(worker_class, app)
    server = started[name].result()
    requests = plan(app, REQUESTS[worker_class])
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda r: send(server.port, r[0].method, r[0].path, r[1]), requests))
    assert statuses == [case.status for case, _ in requests]
    received = Counter((case.method, str(status)) for (case, _), status in zip(requests, statuses, strict=True))
    poll(lambda: counted_by_method_and_status(server) == received, timeout=10,
         message=f"http.requests == {dict(received)}")

    url = f"http://127.0.0.1:{server.metrics_port}/workload"
    workload = poll(lambda: settled(w := json.loads(http_get(url)[2]), len(requests)) and w,
                    timeout=10, message="every request in /workload, in every dimension")
    routes = {route: v["requests"] for route, v in workload["by_route"].items()}
    assert routes == Counter(case.route for case, _ in requests)  # templates only: no raw path
    assert prometheus_routes(server) == routes  # the same templates label http_requests_total
    tenants = {tenant: v["requests"] for tenant, v in workload["by_tenant"].items()}
    assert tenants == Counter(tenant for _, tenant in requests)
    assert not traceback_of_ours(server)
    stop(name)
