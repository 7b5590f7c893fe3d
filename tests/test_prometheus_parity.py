"""rockstar_mp.prometheus against prometheus_client's multiprocess mode, on one app under real gunicorn.

tests/apps/prom_parity.py exercises every call of the six metric classes. It runs twice with 4 workers,
one of which is restarted half-way: once on prometheus_client (``PROMETHEUS_MULTIPROC_DIR``, the
``child_exit`` hook, a ``MultiProcessCollector`` view) and once on rockstar_mp.prometheus (the aggregator
serves). Both expositions, parsed by prometheus_client's parser, must have the same families, types,
HELP, label names and sample names, and equal values where the modes mean the same, except the
differences docs/migrating-from-prometheus-client.md lists (``ONLY_OURS``, and dead workers' gauges).

The same server then shows the standard families (process_* for every live worker, the master and the
aggregator, python_gc_*, python_info; promtool clean), ``# UNIT`` in OpenMetrics, and ``HEAD``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from rockstar_mp.sketch import RELATIVE_ERROR

from .helpers import ROOT, Gunicorn, http_get, load, poll

APP = "tests.apps.prom_parity:app"
PREFIX = "parity_"
REQUESTS_PER_HALF = 12  # /work requests before and after the restart
# Info and Enum (none in prometheus_client's multiprocess mode), and a summary with quantiles (our extension)
ONLY_OURS = {"parity_build_info", "parity_phase", "parity_quantiles_seconds"}
# families whose values are the same updates merged the same way in both (live modes, counters, fixed
# observations); the others depend on which worker served what, or on time
SAME_VALUES = {"parity_requests", "parity_app_errors", "parity_removed", "parity_sent_bytes",
               "parity_level_livemax_mode", "parity_level_livemostrecent_mode", "parity_level_mostrecent_mode",
               "parity_in_progress", "parity_size", "parity_payload_bytes", "parity_latency_seconds"}
TIMED_LABELS = {("route", "/timed")}  # a timed block: its sum is a duration


def _restart_one_worker(server: Gunicorn) -> None:
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGTERM)
    poll(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == server.workers,
         timeout=20, message="a new worker in place of the stopped one")


def _exercise(server: Gunicorn) -> None:
    assert load(server.port, REQUESTS_PER_HALF, "/work", concurrency=4) == {200: REQUESTS_PER_HALF}
    _restart_one_worker(server)
    assert load(server.port, REQUESTS_PER_HALF, "/work", concurrency=4) == {200: REQUESTS_PER_HALF}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("parity")
    for name in ("theirs", "ours", "multiproc"):
        (base / name).mkdir()
    theirs = Gunicorn(base / "theirs", app=APP, monitored=False,
                      env={"PARITY_LIBRARY": "prometheus_client", "PROMETHEUS_MULTIPROC_DIR": str(base / "multiproc")})
    theirs.args = ("-c", str(ROOT / "benchmarks" / "prom_gunicorn_conf.py"), "--bind", f"127.0.0.1:{theirs.port}",
                   "--workers", "4")
    ours = Gunicorn(base / "ours", app=APP, env={"PARITY_LIBRARY": "rockstar_mp.prometheus"})
    started = [theirs, ours]
    try:
        with ThreadPoolExecutor(2) as pool:  # the two servers start and take their requests side by side
            list(pool.map(lambda server: _exercise(server.start()), started))
        yield theirs, ours
    finally:
        for server in started:  # both stop at once, quickly (SIGINT: gunicorn's quick shutdown)
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGINT)
        for server in started:
            server.stop()
    for server in started:
        log = server.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def _text(url: str, accept: str = "text/plain") -> str:
    status, _, body = http_get(url, {"Accept": accept})
    assert status == 200, body
    return body.decode()


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith(PREFIX)}


def _shape(family) -> tuple:
    return (family.type, family.documentation, sorted({tuple(sorted(s.labels)) for s in family.samples}),
            sorted({s.name for s in family.samples}))


def _values(family) -> dict:
    out = {}
    for sample in family.samples:
        labels = frozenset((k, v) for k, v in sample.labels.items() if k != "pid")
        if sample.name.endswith("_sum") and labels & TIMED_LABELS:
            continue
        out[(sample.name, labels)] = sample.value
    return out


def _served(families: dict) -> float:
    """The /work requests ``parity_requests`` counted (GET: one per request)."""
    family = families.get("parity_requests")
    return sum(s.value for s in family.samples if s.labels.get("method") == "GET") if family else 0.0


def _pids(family) -> set:
    return {s.labels["pid"] for s in family.samples}


def test_expositions_match_prometheus_client_multiprocess(servers) -> None:
    theirs, ours = servers
    their_families = _families(_text(f"http://127.0.0.1:{theirs.port}/metrics"))
    live = len(ours.worker_pids())  # the new worker declares its series once it has loaded the app
    # and a scrape within snapshot_max_age (0.1 s) of the last merge shows that merge: wait for one that
    # holds every request (the second half can end within 0.1 s of the restart's last look at /workers)
    our_families = poll(lambda: (lambda families: len(_pids(families["parity_level_liveall_mode"])) == live
                                 and _served(families) == 2 * REQUESTS_PER_HALF
                                 and families)(_families(_text(ours.url + "?format=prometheus"))),
                        message="every live worker's gauges and every request")

    assert set(our_families) - set(their_families) == ONLY_OURS
    assert set(their_families) - set(our_families) == set()
    shared = sorted(set(their_families) & set(our_families))
    assert len(shared) == 24
    for name in shared:
        assert _shape(our_families[name]) == _shape(their_families[name]), name
    for name in sorted(SAME_VALUES):
        assert _values(our_families[name]) == pytest.approx(_values(their_families[name]), rel=1e-12), name
    assert _values(our_families["parity_requests"])[("parity_requests_total",
                                                       frozenset({("route", "/work"), ("method", "GET")}))] \
        == 2 * REQUESTS_PER_HALF

    # the differences the migration doc lists: a dead worker's gauge stays in prometheus_client's "all"
    # mode (its file is kept) and is dropped here; the live modes agree
    assert len(_pids(their_families["parity_level_all_mode"])) == 5
    assert len(_pids(our_families["parity_level_all_mode"])) == 4
    assert len(_pids(their_families["parity_level_liveall_mode"])) == 4
    assert len(_pids(our_families["parity_level_liveall_mode"])) == 4
    # Info: only the latest info() is served
    assert [(s.labels, s.value) for s in our_families["parity_build_info"].samples] == \
        [({"version": "1.2.3", "commit": "abc123"}, 1.0)]


def test_standard_families_for_every_process(servers) -> None:
    _, ours = servers
    workers = set(map(str, ours.worker_pids()))
    aggregator = set(map(str, ours.aggregator_pids()))
    expected = {("worker", pid) for pid in workers} | {("master", str(ours.pid))} \
        | {("aggregator", pid) for pid in aggregator}
    text = ""

    def every_process_shown() -> bool:
        nonlocal text
        text = _text(ours.url + "?format=prometheus")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                     "process_open_fds", "process_max_fds", "process_start_time_seconds"):
            if {(s.labels["role"], s.labels["pid"]) for s in families[name].samples} != expected:
                return False
        for name in ("python_gc_collections", "python_gc_objects_collected", "python_gc_objects_uncollectable"):
            shown = {(s.labels["role"], s.labels["pid"], s.labels["generation"]) for s in families[name].samples}
            if shown != {(role, pid, str(g)) for role, pid in expected - {("master", str(ours.pid))}
                         for g in range(3)}:
                return False
        return [s.value for s in families["python_info"].samples] == [1.0]

    poll(every_process_shown, timeout=10, message="process_* and python_* for every process")
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian/Ubuntu: apt-get install prometheus)"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_openmetrics_units_and_head(servers) -> None:
    _, ours = servers
    text = _text(ours.url, "application/openmetrics-text; version=1.0.0")
    assert "# UNIT parity_latency_seconds seconds\n" in text
    assert "# UNIT parity_sent_bytes bytes\n" in text  # a counter's family is named without _total
    assert "# UNIT parity_payload_bytes bytes\n" in text
    assert "rockstar_metadata" not in text
    families = {f.name: f for f in parse_openmetrics(text)}  # the parser checks each unit against its name
    assert families["parity_latency_seconds"].unit == "seconds"
    quantiles = {s.labels["quantile"]: s.value for s in families["parity_quantiles_seconds"].samples
                 if s.name == "parity_quantiles_seconds"}  # every observation was 0.25 s
    assert set(quantiles) == {"0.5", "0.99"}
    assert all(abs(v - 0.25) <= 0.25 * RELATIVE_ERROR for v in quantiles.values()), quantiles
    assert families["parity_payload"].type == "summary" if "parity_payload" in families else \
        families["parity_payload_bytes"].type == "summary"

    request = urllib.request.Request(ours.url, method="HEAD", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert response.read() == b""
