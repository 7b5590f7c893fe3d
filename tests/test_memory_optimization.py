"""Optimization never raises a worker's memory, and gives fragmented heap back (issue 16), on real gunicorns."""
from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import Gunicorn, http_get, load, poll
from tests.test_optimize import http_post

KiB, MiB = 1024, 1024 * 1024
USS_MARGIN = 256 * KiB  # the acceptance: USS after <= USS before + 256 KiB, every worker, every round


def stats(server) -> dict:
    return json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/optimize/stats")[2])


def optimize_every_worker(server, how: str) -> list[dict]:
    """One optimization of every worker (``POST /optimize`` or USR1 to the master); their figures."""
    before = {w["pid"]: w["optimization_count"] for w in stats(server)["workers"]}
    if how == "post":
        assert http_post(f"http://127.0.0.1:{server.metrics_port}/optimize")[0] == 202
    else:
        server.signal(signal.SIGUSR1)

    def done():
        workers = stats(server)["workers"]
        return all(w["optimization_count"] == before[w["pid"]] + 1 for w in workers) and workers
    return poll(done, timeout=10, message=f"every worker optimized ({how})")


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory):
    """The example app (with tests/apps/memory.py's two routes) preloaded in the master, 4 workers, trim on:
    for the USS rounds with --preload, then for trim's half of the fragmentation figure."""
    server = Gunicorn(tmp_path_factory.mktemp("preloaded"), workers=4, args=("--preload",),
                      app="tests.apps.memory:app", env={"ROCKSTAR_ADMIN_OPEN": "1"})
    try:
        yield server.start()
    finally:
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def no_round_raises_a_workers_uss(server, preload: bool) -> None:
    server.serve_on_every_worker()
    assert set(load(server.port, 400)) == {200}
    for round_, how in enumerate(("post", "usr1"), 1):
        workers = optimize_every_worker(server, how)
        grown = {w["pid"]: (w["uss_after"] - w["uss_before"]) // KiB for w in workers}
        print(f"preload={preload} round {round_} ({how}): USS after - before, KiB: {grown}")
        for w in workers:
            assert w["uss_before"] > 0 and w["pss_before"] > 0 and w["rss_before"] > 0, w
            assert w["uss_after"] <= w["uss_before"] + USS_MARGIN, (round_, w)
        assert len(workers) == 4
    total = stats(server)["total"]
    assert total["pss_before"] > 0 and total["pss_after"] > 0 and total["skipped"] >= 2  # idle since round 1


def test_no_round_raises_a_workers_uss_without_preload(gunicorn_factory):
    server = gunicorn_factory(workers=4, app="tests.apps.slow_boot:app", env={"ROCKSTAR_ADMIN_OPEN": "1"})
    # the workers are still loading the app (2 s): a USR1 now optimizes them as well
    assert stats(server)["total"]["optimization_count"] == 0
    server.signal(signal.SIGUSR1)
    poll(lambda: [w["optimization_count"] for w in stats(server)["workers"]] == [1] * 4, timeout=10,
         message="every worker optimized by a USR1 sent while it loaded the app")
    no_round_raises_a_workers_uss(server, preload=False)


def test_no_round_raises_a_workers_uss_with_preload(preloaded):
    no_round_raises_a_workers_uss(preloaded, preload=True)


def _fragmented_and_optimized(server) -> dict:
    """The figures of the worker that fragmented its heap, after an optimization of every worker."""
    assert load(server.port, 1, "/fragment?mb=200", concurrency=1) == {200: 1}
    return max(optimize_every_worker(server, "post"), key=lambda w: w["rss_before"])


def test_trim_gives_a_fragmented_heap_back(preloaded, gunicorn_factory):
    without_trim = gunicorn_factory(workers=1, app="tests.apps.memory:app",
                                    env={"ROCKSTAR_ADMIN_OPEN": "1", "ROCKSTAR_OPTIMIZATION_TRIM": "0"})
    with ThreadPoolExecutor(2) as pool:  # the same app with and without trim, side by side
        trimmed, untrimmed = pool.map(_fragmented_and_optimized, (preloaded, without_trim))
    for name, w in (("with trim", trimmed), ("without trim", untrimmed)):
        print(f"200 MB fragmented, {name}: RSS {w['rss_before'] / MiB:.1f} -> {w['rss_after'] / MiB:.1f} MiB, "
              f"trimmed {w['trimmed'] / MiB:.1f} MiB")
    assert untrimmed["rss_before"] > 150 * MiB and untrimmed["rss_after"] > 150 * MiB  # glibc keeps it alone
    assert trimmed["rss_after"] <= trimmed["rss_before"] * 0.5
    assert trimmed["trimmed"] >= 150 * MiB and untrimmed["trimmed"] == 0
