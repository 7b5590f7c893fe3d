"""One WSGI app exercising every call of prometheus_client's metric classes, on the library named by
``PARITY_LIBRARY``: ``prometheus_client`` (its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` set, the
``child_exit`` hook of benchmarks/prom_gunicorn_conf.py, and ``GET /metrics`` served by the app through a
``MultiProcessCollector``) or ``rockstar_mp.prometheus`` (the aggregator serves the metrics).

Each ``GET /work`` makes the same updates, so the two expositions can be compared value for value where
the modes mean the same (tests/test_prometheus_parity.py).
"""
from __future__ import annotations

import importlib
import os
import time

LIBRARY = os.environ.get("PARITY_LIBRARY", "rockstar_mp.prometheus")
prom = importlib.import_module(LIBRARY)
Counter, Gauge, Histogram, Summary, Info, Enum = (prom.Counter, prom.Gauge, prom.Histogram, prom.Summary,
                                                  prom.Info, prom.Enum)

NS = "parity"
REQUESTS = Counter("requests_total", "Requests served", ["route", "method"], namespace=NS)
ERRORS = Counter("errors", "Exceptions raised", ["kind"], namespace=NS, subsystem="app")
REMOVED = Counter("removed", "Series removed then made again", ["item"], namespace=NS)
RESETS = Counter("resets", "A counter reset on each request", namespace=NS)
BYTES = Counter("sent", "Bytes sent", namespace=NS, unit="bytes")
GAUGES = {mode: Gauge(f"level_{mode}_mode", f"A gauge in mode {mode}", namespace=NS, multiprocess_mode=mode)
          for mode in ("all", "liveall", "sum", "livesum", "max", "livemax", "min", "livemin", "mostrecent",
                       "livemostrecent")}
DEFAULT_GAUGE = Gauge("level_default_mode", "A gauge in the default mode", ["shard"], namespace=NS)
IN_PROGRESS = Gauge("in_progress", "Requests in progress", namespace=NS, multiprocess_mode="livesum")
LAST_SEEN = Gauge("last_seen", "Time of the last request", namespace=NS, unit="seconds",
                  multiprocess_mode="livemax")
WORK_SECONDS = Gauge("work_duration", "Seconds the last work took", namespace=NS, unit="seconds",
                     multiprocess_mode="livemostrecent")
LATENCY = Histogram("latency", "Request latency", ["route"], namespace=NS, unit="seconds",
                    buckets=(0.1, 0.5, 1.0, 5.0))
SIZES = Histogram("size", "Request sizes", namespace=NS, buckets=[10, 100, 1000, float("inf")])
TIMED = Histogram("timed", "Timed blocks", namespace=NS, unit="seconds")
PAYLOAD = Summary("payload", "Payload bytes", ["route"], namespace=NS, unit="bytes")
TIMED_SUMMARY = Summary("timed_calls", "Timed calls", namespace=NS)
BUILD = Info("build", "Build of the app", namespace=NS)
# ours only: a summary with quantiles (prometheus_client's Summary has none)
QUANTILES = Summary("quantiles", "Summary with quantiles", ["route"], namespace=NS, unit="seconds",
                    quantiles=(0.5, 0.99)) if LIBRARY == "rockstar_mp.prometheus" else None
PHASE = Enum("phase", "Phase of the app", ["shard"], namespace=NS, states=["starting", "serving", "draining"])

BUILD.info({"version": "0.0.1"})
BUILD.info({"version": "1.2.3", "commit": "abc123"})  # replaces the first one


@TIMED.time()
def _timed_work(n: int) -> int:
    return sum(range(n))


@ERRORS.labels(kind="value").count_exceptions(ValueError)
def _failing() -> None:
    raise ValueError("counted")


@IN_PROGRESS.track_inprogress()
def _tracked() -> None:
    pass


def _work() -> None:
    REQUESTS.labels("/work", "GET").inc()
    REQUESTS.labels(route="/work", method="POST").inc(2)
    with ERRORS.labels("type").count_exceptions(TypeError):
        pass  # nothing raised: nothing counted
    try:
        _failing()
    except ValueError:
        pass
    REMOVED.labels("a").inc()
    REMOVED.labels("b").inc()
    REMOVED.remove("a")
    REMOVED.labels("a").inc()
    REMOVED.clear()
    RESETS.inc(5)
    RESETS.reset()
    RESETS.inc()
    BYTES.inc(100)
    for mode, gauge in GAUGES.items():
        gauge.set(7)
        if not mode.endswith("mostrecent"):  # inc and dec are refused there (RuntimeError)
            gauge.inc(2)
            gauge.dec(1)
    DEFAULT_GAUGE.labels("one").set(3)
    DEFAULT_GAUGE.labels(shard="two").set(4)
    DEFAULT_GAUGE.remove("two")
    _tracked()
    with IN_PROGRESS.track_inprogress():
        pass
    LAST_SEEN.set_to_current_time()
    with WORK_SECONDS.time():
        _timed_work(100)
    LATENCY.labels("/work").observe(0.3)
    LATENCY.labels(route="/other").observe(2)
    with LATENCY.labels("/timed").time():
        pass
    SIZES.observe(50)
    SIZES.observe(5000)
    _timed_work(10)
    PAYLOAD.labels("/work").observe(512)
    with TIMED_SUMMARY.time():
        pass
    TIMED_SUMMARY.time()(lambda: None)()
    PHASE.labels("one").state("serving")
    if QUANTILES is not None:
        QUANTILES.labels("/work").observe(0.25)


def _metrics_view() -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics" and LIBRARY == "prometheus_client":
        body = _metrics_view()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/work":
        _work()
    body = f"{os.getpid()} {time.time()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
