"""Processes a gunicorn worker forks count too: a real gunicorn (sync and gthread workers) serving an app
that forks a helper per request (``tests/apps/forking.py``), both sides counting; the totals read from the
aggregator's ``/metrics`` JSON. The three servers start and stop together (they cost most of the time)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import Gunicorn, load, poll, requests_with

APP = "tests.apps.forking:app"
N = 1000  # increments per side and request
SIDE = 'test.forked{side="%s"}'
SERVERS = {"sync": dict(workers=2, args=("--worker-class", "sync")),
           "gthread": dict(workers=2, args=("--worker-class", "gthread", "--threads", "4")),
           "one slab": dict(workers=1, env={"ROCKSTAR_MAX_WORKERS": "1"})}  # taken by its one worker
# Every other way a helper may be made or end, 3 requests each: (how, helper processes per request).
OTHER_WAYS = (("kill", 1), ("nested", 2), ("atexit", 1), ("mp", 1), ("locked", 1), ("request", 1))
EACH = 3


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    made = {name: Gunicorn(tmp_path_factory.mktemp(name.replace(" ", "_")), app=APP, **kwargs)
            for name, kwargs in SERVERS.items()}
    with ThreadPoolExecutor(len(made)) as pool:
        try:
            list(pool.map(Gunicorn.start, made.values()))
            yield made
        finally:
            list(pool.map(Gunicorn.stop, made.values()))
    for server in made.values():  # no exception in a master, worker, helper or aggregator
        log = server.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


STATUS_299 = 'http.requests{status="299"}'  # summed over the other labels (method, route)


def counters(server) -> dict:
    found = server.metrics()["counters"]
    found[STATUS_299] = requests_with(found, 'status="299"') or None
    return found


def wait_counts(server, expected: dict) -> dict:
    def reached():
        seen = counters(server)
        return seen if all(seen.get(k, 0) == v for k, v in expected.items()) else None
    try:
        return poll(reached, timeout=10, message=f"counts {expected}")
    except AssertionError:
        seen = counters(server)
        raise AssertionError(f"expected {expected}, got {({k: seen.get(k) for k in expected})}") from None


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_helpers_forked_per_request_count_in_slabs_of_their_own(servers, worker_class):
    server = servers[worker_class]
    assert load(server.port, 100, f"/?how=fork&n={N}", concurrency=4) == {200: 100}
    wait_counts(server, {SIDE % "worker": 100 * N, SIDE % "helper": 100 * N})

    for how, _ in OTHER_WAYS:  # SIGKILLed, grandchildren, atexit, multiprocessing, a held lock, requests
        assert load(server.port, EACH, f"/?how={how}&n={N}", concurrency=EACH) == {200: EACH}, how
    ways = len(OTHER_WAYS)
    wait_counts(server, {
        SIDE % "worker": (100 + ways * EACH) * N,
        SIDE % "helper": (100 + (ways - 1) * EACH) * N,  # a "request" helper counts requests instead
        SIDE % "grandchild": EACH * N,
        STATUS_299: EACH * 2 * N,  # the C and the Python request path
    })
    helpers = 100 + sum(processes for _, processes in OTHER_WAYS) * EACH
    system = poll(lambda: (s := server.metrics()["system"])["workers_folded"] == helpers and s,
                  message=f"{helpers} helpers folded")
    assert system["workers_live"] == 2 and system["unattached_updates"] == 0, system


def test_updates_of_helpers_that_find_no_slab_are_counted(servers):
    """One slab, taken by the one worker: its helpers run unattached, and their updates show."""
    server = servers["one slab"]
    assert load(server.port, 5, "/?how=fork&n=200", concurrency=1) == {200: 5}
    poll(lambda: (s := server.metrics()["system"])["unattached_updates"] == 5 * 200 and s["claim_failures"] >= 5,
         message="5 x 200 unattached updates, after 5 claims that found no slab")
    seen = counters(server)
    assert seen[SIDE % "worker"] == 5 * 200 and SIDE % "helper" not in seen, seen
