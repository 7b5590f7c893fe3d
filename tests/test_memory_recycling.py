"""Memory-based recycling, leak hints and low-traffic scheduling (issue 16), on real gunicorns."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import ROOT, Gunicorn, free_port, http_get, load, poll, raw_get
from tests.test_memory_optimization import stats
from tests.test_optimize import http_post
from tests.test_snmp import TRAP_COMMUNITY, TrapReceiver, column, v2c, value_of

LIMIT_MIB = 40  # a fresh worker of tests/apps/memory.py has some 14 MiB of USS
SLOPE_THRESHOLD = 600  # MiB an hour; the slow leak below grows a worker by thousands


def workers(server) -> dict:
    return json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/workers")[2])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn for both tests (recycling first, then the schedule switched on at runtime), with
    snmptrapd taking its notifications."""
    tmp = tmp_path_factory.mktemp("memory")
    snmp_port = free_port()
    traps = TrapReceiver(tmp, snmp_port)
    g = Gunicorn(tmp, workers=2, app="tests.apps.memory:app", env={
        "ROCKSTAR_ADMIN_OPEN": "1", "ROCKSTAR_MAX_WORKER_MEMORY": str(LIMIT_MIB), "ROCKSTAR_HISTORY_INTERVAL": "0.5",
        "ROCKSTAR_LEAK_SLOPE_THRESHOLD": str(SLOPE_THRESHOLD), "ROCKSTAR_ENABLE_SNMP": "1",
        "ROCKSTAR_SNMP_PORT": str(snmp_port), "ROCKSTAR_SNMP_COMMUNITY": "public",
        "ROCKSTAR_SNMP_TRAP_TARGETS": f"v2c:{TRAP_COMMUNITY}@127.0.0.1:{traps.port}"})
    try:
        g.start()
        g.traps, g.snmp_port = traps, snmp_port
        yield g
    finally:
        g.stop()
        traps.stop()
    log = g.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def test_a_leaking_app_is_recycled_by_memory_and_no_request_fails(server):
    traps = server.traps
    poll(lambda: traps.of("rsmpAggregatorStarted"), timeout=15, message="the notifications started")
    first = set(server.worker_pids())
    sent = 0

    def slow_leak() -> list:
        nonlocal sent
        assert raw_get(server.port, "/grow?kb=256") == 200
        sent += 1
        return traps.of("rsmpWorkerMemoryGrowing")

    growing = poll(slow_leak, timeout=20, interval=0.05, message="rsmpWorkerMemoryGrowing")
    slopes = {w["pid"]: w["memory_slope_mib_per_hour"] for w in workers(server)["workers"]}
    assert any(re.search(rf"= INTEGER: {pid}\b", growing[0]) for pid in first), growing
    assert max(s or 0 for s in slopes.values()) > SLOPE_THRESHOLD, slopes
    pid = max(slopes, key=lambda p: slopes[p] or 0)
    history = json.loads(http_get(f"{server.url}/history?name=rockstar.worker.memory.uss{{pid=%22{pid}%22}}")[2])
    assert len(history["points"]) >= 3 and history["points"][-1][1] > history["points"][0][1], history

    statuses: dict[int, int] = {}

    def fast_leak() -> bool:  # under load until workers crossed the limit and were replaced
        for status, n in load(server.port, 8, "/grow?kb=512", concurrency=4).items():
            statuses[status] = statuses.get(status, 0) + n
        return workers(server)["memory_recycles"] >= 2

    poll(fast_leak, timeout=30, interval=0.0, message="two recycles")
    for status, n in load(server.port, 40, "/grow?kb=64", concurrency=4).items():  # the replacements serve
        statuses[status] = statuses.get(status, 0) + n
    sent += sum(statuses.values())
    assert set(statuses) == {200}, statuses  # every request of a recycled worker was answered
    server.wait_total(sent)  # merged counts exact across the recycles
    recycles = workers(server)["memory_recycles"]
    gone = first - set(server.worker_pids())
    assert recycles >= 2 and gone, (recycles, gone)
    assert server.metrics()["system"]["memory_recycles"] == stats(server)["memory_recycles"] == recycles
    notified = poll(lambda: len(t := traps.of("rsmpWorkerRecycled")) >= recycles and t, timeout=5,
                    message="an rsmpWorkerRecycled per recycle")
    assert all(f"Gauge32: {LIMIT_MIB * 1024}" in t for t in notified)  # the threshold, in KiB
    assert any(re.search(rf"= INTEGER: {pid}\b", t) for t in notified for pid in gone), notified
    log = server.log_text()
    assert "over max_worker_memory" in log and "Autorestarting" not in log
    assert value_of(server.snmp_port, "rsmpMemoryRecycles", v2c("public")) >= recycles  # more may have come

    env = dict(os.environ, ROCKSTAR_URL=f"http://127.0.0.1:{server.metrics_port}")
    top = subprocess.run([sys.executable, "-m", "rockstar_mp.cli", "top", "--iterations", "1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=30)
    shown = re.search(r"recycled (\d+) \(memory\)", top.stdout)  # the replacements still leak: maybe more by now
    assert top.returncode == 0 and shown and int(shown.group(1)) >= recycles, top.stdout + top.stderr
    assert "MiB/h" in top.stdout


def test_a_scheduled_run_waits_for_low_traffic(server):
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert http_post(f"{base}/control", {"enable_optimization": True, "optimization_interval": 1,
                                         "optimization_defer_rate": 20, "optimization_max_deferral": 60})[0] == 200
    stop = threading.Event()
    failures: list[int] = []

    def traffic():  # well above 20 requests a second
        while not stop.is_set():
            if (status := raw_get(server.port, "/")) != 200:
                failures.append(status)

    def counts() -> dict:
        return {w["pid"]: w["optimization_count"] for w in stats(server)["workers"]}

    def run_traffic() -> threading.Thread:
        stop.clear()
        thread = threading.Thread(target=traffic)
        thread.start()
        return thread

    thread = run_traffic()
    try:
        poll(lambda: stats(server)["deferral"]["deferring"], timeout=10, message="a due run deferred")
        held, since = counts(), time.monotonic()
        poll(lambda: time.monotonic() - since >= 2, timeout=10, interval=0.1, message="2 s of traffic")
        assert counts() == held and stats(server)["deferral"]["deferring"]  # two intervals, no run
    finally:
        stop.set()
        thread.join()
    poll(lambda: all(c > held[pid] for pid, c in counts().items()), timeout=10, message="the run after the traffic")
    deferral = stats(server)["deferral"]
    assert not deferral["deferring"] and deferral["last_waited_seconds"] >= 2 and deferral["forced"] == 0

    assert http_post(f"{base}/control", {"optimization_max_deferral": 0.5})[0] == 200
    thread = run_traffic()
    try:
        poll(lambda: stats(server)["deferral"]["forced"] >= 1, timeout=10, message="a run forced by the maximum")
        assert thread.is_alive() and stats(server)["deferral"]["request_rate"] > 20
    finally:
        stop.set()
        thread.join()
    assert failures == []
    pss = column(server.snmp_port, "rsmpOptPssBefore", v2c("public"))  # KiB, one row per live worker
    assert set(pss) == set(server.worker_pids()) and all(int(v) > 0 for v in pss.values()), pss
    poll(lambda: http_get(f"{server.url}/history?name=rockstar.optimization.pss_after")[0] == 200, timeout=5,
         message="the optimization's PSS in the history")
