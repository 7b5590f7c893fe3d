"""Process optimization (GC), runtime control and the protection of the endpoints, on real servers."""
from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.helpers import ROOT, SLACK, free_port, http_get, limit, load, poll, raw_get
from tests.test_http import PreforkServer, prefork  # noqa: F401  (the fixture)

ADMIN = "admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}



def http_post(url: str, body: dict | None = None, headers: dict | None = None):
    """``(status, headers, parsed JSON body)`` of a POST."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("POST", "/" + rest, body=json.dumps(body or {}),
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read() or b"null")
    finally:
        conn.close()


def stats(server) -> dict:
    return json.loads(http_get(f"http://127.0.0.1:{server.metrics_port}/optimize/stats")[2])


def counts(server) -> dict:
    return {w["pid"]: w["optimization_count"] for w in stats(server)["workers"]}


def test_usr1_to_the_master_optimizes_every_worker_and_still_reopens_logs(gunicorn_factory, tmp_path):
    access_log = tmp_path / "access.log"
    server = gunicorn_factory(workers=4, args=("--access-logfile", str(access_log)))
    before = counts(server)
    assert set(before) == set(server.worker_pids()) and set(before.values()) == {0}
    served = server.serve_on_every_worker() + 20  # a worker still loading the app would miss the USR1
    load(server.port, 20)
    poll(lambda: access_log.exists() and access_log.read_text().count("GET /") >= served, message="access log")
    rotated = tmp_path / "access.log.1"
    access_log.rename(rotated)  # logrotate's move; gunicorn keeps writing the old file until USR1

    server.signal(signal.SIGUSR1)
    after = poll(lambda: (c := counts(server)) and all(c.get(pid) == 1 for pid in before) and c,
                 timeout=limit(5), interval=0.02, message="every worker optimized once")
    assert after == {pid: 1 for pid in before}

    # gunicorn's own USR1 work happened too: master and workers reopened their log files.
    poll(lambda: access_log.exists(), message="the log file reopened")
    load(server.port, 12)
    poll(lambda: access_log.read_text().count("GET /") == 12, message="new lines in the new file")
    assert rotated.read_text().count("GET /") == served
    for worker in stats(server)["workers"]:
        assert worker["last_optimization"] and worker["memory_before"] > 0 and worker["last_pause_ms"] >= 0
        assert len(worker["collected"]) == 3


def test_schedule_spreads_workers_and_keeps_serving(gunicorn_factory):
    server = gunicorn_factory(workers=4, env={"ROCKSTAR_ENABLE_OPTIMIZATION": "1",
                                              "ROCKSTAR_OPTIMIZATION_INTERVAL": "1"})
    poll(lambda: all(c >= 1 for c in counts(server).values()), timeout=limit(10), message="a first round")
    start_counts, started = counts(server), time.time()
    results: list[int] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            results.append(raw_get(server.port, "/"))

    thread = threading.Thread(target=traffic)
    thread.start()
    poll(lambda: time.time() - started >= 5.0, timeout=10, interval=0.1, message="5 seconds")
    stop.set()
    thread.join()
    end_counts = counts(server)

    done = {pid: end_counts[pid] - start_counts[pid] for pid in start_counts}
    # every 1 s for 5 s: 4 to 6 rounds each; a loaded machine (2 cores, the suite on both) delays a
    # round now and then, so 3 are accepted (fewer on a machine declared slow)
    assert all(3 // SLACK <= n <= 6 for n in done.values()), done
    assert results and set(results) == {200}
    events = sorted(e["time"] for e in stats(server)["recent"] if e["time"] >= started)
    gaps = [b - a for a, b in itertools.pairwise(events)]
    assert min(gaps) >= 0.1, f"two workers optimized {min(gaps) * 1000:.0f} ms apart"


def test_cyclic_garbage_is_freed_by_one_optimization(gunicorn_factory):
    server = gunicorn_factory(workers=1, app="tests.apps.leaky:app")
    [pid] = server.worker_pids()
    assert raw_get(server.port, "/leak?mb=50") == 200

    os.kill(pid, signal.SIGUSR1)  # kill -USR1 <worker> optimizes that worker
    worker = poll(lambda: (w := stats(server)["workers"][0])["optimization_count"] == 1 and w,
                  message="the optimization")
    assert worker["memory_freed"] >= 40 * 2 ** 20, worker
    assert stats(server)["total"]["memory_freed"] == worker["memory_freed"]


def _uss_after_full_collections(gunicorn_factory, freeze: bool) -> int:
    server = gunicorn_factory(workers=2, app="tests.apps.preloaded:app", args=("--preload",),
                              env={"ROCKSTAR_GC_FREEZE_BEFORE_FORK": "1" if freeze else "0"})
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGUSR1)  # a full collection in each worker
    poll(lambda: all(c == 1 for c in counts(server).values()), message="both optimized")
    uss = sum(psutil.Process(pid).memory_full_info().uss for pid in server.worker_pids())
    server.stop()
    return uss


def test_gc_freeze_before_fork_keeps_preloaded_pages_shared(gunicorn_factory):
    without = _uss_after_full_collections(gunicorn_factory, freeze=False)
    with_freeze = _uss_after_full_collections(gunicorn_factory, freeze=True)
    print(f"workers' USS after a full GC each: {without / 2**20:.1f} MiB without freeze, "
          f"{with_freeze / 2**20:.1f} MiB with gc_freeze_before_fork")
    assert with_freeze < without


# -- runtime control -----------------------------------------------------------------------------
def test_control_over_http_needs_a_token_even_when_reading_is_open(gunicorn_factory):
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_ADMIN_TOKEN": ADMIN})
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert http_get(server.url)[0] == 200  # reading is open
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, response_headers, body = http_post(f"{base}/control", {"enable_metrics": False}, headers)
        assert status == 401 and body["title"] == "401 Unauthorized"
        assert http_post(f"{base}/optimize", {}, headers)[0] == 401
    assert http_post(f"{base}/control?token={ADMIN}", {"enable_metrics": False})[0] == 400  # never in URLs
    assert http_get(server.url)[0] == 200  # nothing changed

    status, _, body = http_post(f"{base}/control", {"enable_metrics": False}, ADMIN_HEADERS)
    assert status == 200 and body["enable_metrics"] is False
    poll(lambda: http_get(server.url)[0] == 404, timeout=1, interval=0.02, message="metrics off")
    assert http_get(f"{base}/workload")[0] == 404

    status, _, body = http_post(f"{base}/control", {"enable_metrics": True, "metrics_path": "/stats"},
                                ADMIN_HEADERS)
    assert status == 200 and body["metrics_path"] == "/stats"
    poll(lambda: http_get(f"{base}/stats")[0] == 200, timeout=1, interval=0.02, message="metrics at /stats")
    assert http_get(server.url)[0] == 404

    for bad in ({"enable_metrics": "yes"}, {"metrics_path": "no-slash"}, {"auth_token": "x"}):
        status, _, body = http_post(f"{base}/control", bad, ADMIN_HEADERS)
        assert status == 400 and body["description"], bad

    # Kept in the segment: an aggregator restarted by the master serves by it.
    old = server.aggregator_pids()
    os.kill(old[0], signal.SIGKILL)
    poll(lambda: server.aggregator_pids() not in ([], old) and http_get(f"{base}/stats")[0] == 200,
         timeout=5, message="a new aggregator at /stats")
    assert http_get(server.url)[0] == 404


def test_control_from_python(prefork):  # noqa: F811
    server = prefork()
    server.manager.disable_metrics_endpoint()
    poll(lambda: server.get()[0] == 404, timeout=1, interval=0.02, message="off from Python")
    server.manager.enable_metrics_endpoint("/m2")
    poll(lambda: http_get(f"http://127.0.0.1:{server.port}/m2")[0] == 200, timeout=1, interval=0.02,
         message="on at /m2")
    server.manager.enable_optimization(interval=0.5)
    assert server.manager.runtime_config().enable_optimization
    server.manager.disable_optimization()
    assert not server.manager.runtime_config().optimization_interval == 300

    pid = server.fork_worker(hits=1, load=0, size=1)
    assert server.manager.optimize_now() == [pid]
    poll(lambda: server.manager.get_optimization_stats().optimization_count == 1, message="optimized")
    stats = server.manager.get_optimization_stats()
    assert stats.last_optimization and stats.memory_before > 0 and stats.memory_freed >= 0


def test_control_and_optimize_from_the_cli(gunicorn_factory):
    server = gunicorn_factory(workers=2, env={"ROCKSTAR_ADMIN_TOKEN": ADMIN})
    env = dict(os.environ, ROCKSTAR_URL=f"http://127.0.0.1:{server.metrics_port}", ROCKSTAR_ADMIN_TOKEN=ADMIN)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rockstar_mp.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)

    out = cli("control", "enable_metrics=false")
    assert out.returncode == 0 and "enable_metrics = false" in out.stdout, out.stderr
    poll(lambda: http_get(server.url)[0] == 404, timeout=1, interval=0.02, message="off from the CLI")
    assert cli("control", "enable_metrics=true").returncode == 0
    poll(lambda: http_get(server.url)[0] == 200, timeout=1, interval=0.02, message="on from the CLI")

    pid = server.worker_pids()[0]
    out = cli("optimize", "--pid", str(pid))
    assert out.returncode == 0 and str(pid) in out.stdout, out.stderr
    poll(lambda: counts(server)[pid] == 1, message="that worker optimized")
    out = cli("optimize")
    assert out.returncode == 0
    poll(lambda: sum(counts(server).values()) == 3, message="every worker optimized")

    out = subprocess.run([sys.executable, "-m", "rockstar_mp.cli", "optimize"], cwd=ROOT,
                         env=dict(env, ROCKSTAR_ADMIN_TOKEN="wrong"), capture_output=True, text=True)
    assert out.returncode == 1 and "401" in out.stderr


# -- protection ------------------------------------------------------------------------------------
def test_a_burst_from_one_client_is_rate_limited(gunicorn_factory):
    server = gunicorn_factory(workers=2, env={"ROCKSTAR_RATE_LIMIT": "50", "ROCKSTAR_RATE_LIMIT_BURST": "100"})
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
    statuses, retry_after = [], set()
    app_statuses = []
    started = time.monotonic()
    for i in range(1000):
        conn.request("GET", "/workers")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        if response.status == 429:
            retry_after.add(response.headers["Retry-After"])
        if i % 100 == 0:
            app_statuses.append(raw_get(server.port, "/"))  # the app port is not limited
    elapsed = time.monotonic() - started
    conn.close()
    ok = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert 100 <= ok <= 100 + 50 * elapsed + 1, (ok, elapsed)
    assert retry_after and all(int(v) >= 1 for v in retry_after)
    assert set(app_statuses) == {200}


def test_request_bodies_are_limited(gunicorn_factory):
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_ADMIN_TOKEN": ADMIN, "ROCKSTAR_MAX_REQUEST_BYTES": "100"})
    base = f"http://127.0.0.1:{server.metrics_port}"
    status, _, body = http_post(f"{base}/control", {"metrics_path": "/" + "x" * 200}, ADMIN_HEADERS)
    assert status == 413 and body["title"] == "413 Payload Too Large"
    assert http_get(server.url)[0] == 200


def _snmp_answers(port: int) -> bool:
    snmpget = shutil.which("snmpget")
    if snmpget is None:
        message = "snmpget is not installed (Debian: snmp)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([snmpget, "-v2c", "-c", "public", "-t", "0.5", "-r", "0", f"127.0.0.1:{port}",
                          "1.3.6.1.2.1.1.1.0"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and "rockstar-mp" in out.stdout


def test_snmp_and_pprof_switched_at_runtime(gunicorn_factory):
    snmp_port, pprof_port = free_port(), free_port()
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_ADMIN_TOKEN": ADMIN, "ROCKSTAR_PPROF_PORT": str(pprof_port)})
    base = f"http://127.0.0.1:{server.metrics_port}"
    pprof = f"http://127.0.0.1:{pprof_port}/debug/pprof/"
    assert not _snmp_answers(snmp_port)

    assert http_post(f"{base}/control", {"enable_snmp": True, "snmp_port": snmp_port}, ADMIN_HEADERS)[0] == 200
    poll(lambda: _snmp_answers(snmp_port), timeout=5, message="the SNMP agent switched on")
    assert http_post(f"{base}/control", {"enable_pprof": True}, ADMIN_HEADERS)[0] == 200
    poll(lambda: http_get(pprof)[0] == 200, timeout=5, message="pprof switched on")
    aggregator = server.aggregator_pids()

    assert http_post(f"{base}/control", {"enable_snmp": False, "enable_pprof": False}, ADMIN_HEADERS)[0] == 200
    poll(lambda: not _snmp_answers(snmp_port), timeout=2, message="the SNMP agent switched off")
    poll(lambda: http_get(pprof)[0] != 200, timeout=1, interval=0.02, message="pprof switched off")
    assert server.aggregator_pids() == aggregator  # nothing else was restarted
    assert http_get(server.url)[0] == 200


def test_every_feature_switched_from_python(prefork, tmp_path):  # noqa: F811
    snmp_port, pprof_port = free_port(), free_port()
    server = prefork(pprof_port=pprof_port)
    manager, pprof = server.manager, f"http://127.0.0.1:{pprof_port}/debug/pprof/"
    pid = server.fork_worker(hits=1, load=0, size=1)

    manager.enable_pprof()
    poll(lambda: http_get(pprof)[0] == 200, timeout=5, message="pprof on from Python")
    manager.enable_snmp(port=snmp_port)
    poll(lambda: _snmp_answers(snmp_port), timeout=5, message="SNMP on from Python")
    manager.enable_optimization(interval=0.5)
    poll(lambda: manager.get_optimization_stats().optimization_count >= 1, timeout=5,
         message="scheduled optimization on from Python")

    manager.disable_pprof()
    manager.disable_snmp()
    manager.disable_optimization()
    poll(lambda: http_get(pprof)[0] == 404, timeout=1, interval=0.02, message="pprof off from Python")
    poll(lambda: not _snmp_answers(snmp_port), timeout=2, message="SNMP off from Python")
    settled = manager.get_optimization_stats().optimization_count
    assert manager.runtime_config().enable_optimization is False
    assert [w.pid for w in manager.get_optimization_stats(per_worker=True)] == [pid]
    assert manager.get_optimization_stats().optimization_count <= settled + 1  # at most one in flight


def test_every_feature_switched_from_the_cli(gunicorn_factory):
    snmp_port, pprof_port = free_port(), free_port()
    server = gunicorn_factory(workers=1, env={"ROCKSTAR_ADMIN_TOKEN": ADMIN, "ROCKSTAR_PPROF_PORT": str(pprof_port)})
    env = dict(os.environ, ROCKSTAR_URL=f"http://127.0.0.1:{server.metrics_port}", ROCKSTAR_ADMIN_TOKEN=ADMIN)
    pprof = f"http://127.0.0.1:{pprof_port}/debug/pprof/"

    def control(*settings):
        out = subprocess.run([sys.executable, "-m", "rockstar_mp.cli", "control", *settings], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr

    control("enable_pprof=true", "enable_snmp=true", f"snmp_port={snmp_port}", "enable_optimization=true",
            "optimization_interval=0.5")
    poll(lambda: http_get(pprof)[0] == 200, timeout=5, message="pprof on from the CLI")
    poll(lambda: _snmp_answers(snmp_port), timeout=5, message="SNMP on from the CLI")
    poll(lambda: sum(counts(server).values()) >= 1, timeout=5, message="optimization on from the CLI")

    control("enable_pprof=false", "enable_snmp=false", "enable_optimization=false")
    poll(lambda: http_get(pprof)[0] == 404, timeout=1, interval=0.02, message="pprof off from the CLI")
    poll(lambda: not _snmp_answers(snmp_port), timeout=2, message="SNMP off from the CLI")
