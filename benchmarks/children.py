"""The measuring children: each measurement runs in a fresh interpreter of its own,
``python -m benchmarks.children NAME [options]``, and prints one ``RESULT {json}`` line.

prometheus_client only switches to its multiprocess value class if ``PROMETHEUS_MULTIPROC_DIR`` is set
*before* it is imported, so its children get the variable (a fresh temporary directory) in their
environment, and ours never see it. Nothing but the standard library is imported at top level, so a
child imports only the side it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit

from .settings import (
    CHURN_COLD_RUNS,
    CHURN_LIVE,
    CHURN_SERIES,
    CHURN_STEADY_RUNS,
    COLD_RUNS,
    NUMBER,
    OUR_RESTARTS,
    PROM_SCRAPES,
    REPEATS,
    REQUEST_NUMBER,
    REQUEST_REPEATS,
    REQUEST_WARMUP,
    SERIES,
    STEADY_RUNS,
    WORKERS,
)

# -- ours ------------------------------------------------------------------------------------------
_START: float | None = None  # this process's create time, as a worker records it


def _our_worker(seg, name: str, labelnames, n: int):
    """A simulated worker: a fresh Registry with one labelled counter of ``n`` series, bound to a
    freshly claimed slab (declare, then bind, as ``attach_worker`` does), every series incremented."""
    from rockstar_mp.metrics import Counter, Registry
    from rockstar_mp.segment import process_start
    from rockstar_mp.worker.attach import SlabStore

    global _START
    if _START is None:
        _START = process_start(os.getpid())
    slab, gen = seg.claim_slab()
    seg.bind_slab(slab, os.getpid(), _START)  # every simulated worker is this (live) process
    reg = Registry()
    counter = Counter(name, "Benchmark series", labelnames, registry=reg)
    children = [counter.labels(str(i)) for i in range(n)]
    refused = reg.bind(SlabStore(seg, slab))
    if refused:
        raise RuntimeError(f"{len(refused)} series did not fit in the slab")
    for child in children:
        child.inc()
    return slab, gen


def _prom_totals(text: str, metric: str) -> tuple[int, float]:
    """(lines, sum of values) of the samples of ``metric`` in a text exposition."""
    lines, total = 0, 0.0
    prefix = metric + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            lines += 1
            total += float(line.rsplit(" ", 1)[1])
    return lines, total


def child_ours_micro(args) -> dict:
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.metrics import Counter, Histogram, Registry
    from rockstar_mp.segment import Geometry, Segment, process_start
    from rockstar_mp.worker.attach import SlabStore

    seg = Segment.create(args.dir, Geometry())
    try:
        slab, _ = seg.claim_slab()
        seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))
        reg = Registry()
        c = Counter("bench.c", "doc", registry=reg)
        lab = Counter("bench.l", "doc", ["method", "status"], registry=reg)
        lab.labels("GET", "200")  # the child exists before timing
        h = Histogram("bench.h", "doc", registry=reg)
        reg.bind(SlabStore(seg, slab))
        assert c._vals.obj is seg.doubles.obj, "counter is not in the slab"
        out = {}
        for key, stmt, ns in (("counter", "c.inc()", {"c": c}),
                              ("labels", "lab.labels('GET', '200').inc()", {"lab": lab}),
                              ("histogram", "h.observe(0.3)", {"h": h})):
            timer = timeit.Timer(stmt, globals=ns)
            timer.timeit(10_000)  # warm-up
            out[key] = min(timer.repeat(REPEATS, NUMBER)) / NUMBER
        # the updates landed in the slab: the aggregator sees them
        snap = Merger(seg).merge()
        counts = {info.key.name: snap.totals[info.cell] for info in snap.series if info.cell >= 0
                  and not info.key.labelvalues}
        expected = 10_000 + REPEATS * NUMBER
        out["check"] = counts.get("bench.c") == expected
        return out
    finally:
        seg.close()
        os.unlink(seg.path)


def child_ours_scrape(args) -> dict:
    from rockstar_mp.aggregator.exposition import render_prometheus
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.segment import Geometry, Segment

    seg = Segment.create(args.dir, Geometry(n_slabs=WORKERS))
    try:
        t0 = time.perf_counter()
        for _ in range(WORKERS):
            _our_worker(seg, "bench.c", ("i",), SERIES)
        setup = time.perf_counter() - t0

        def scrape(merger):
            t = time.perf_counter()
            snap = merger.merge()
            t_merge = time.perf_counter()
            text = render_prometheus(snap)
            t_render = time.perf_counter()
            return t_render - t, t_merge - t, t_render - t_merge, text

        first = scrape(Merger(seg))
        text = first[3]
        cold = [scrape(Merger(seg))[:3] for _ in range(COLD_RUNS)]
        merger = Merger(seg)
        scrape(merger)  # its first merge parses the catalogues: that is the cold figure
        steady = [scrape(merger)[0] for _ in range(STEADY_RUNS)]
        lines, total = _prom_totals(text, "bench_c_total")
        best = min(cold)
        return {"setup": setup, "first": first[0], "cold": best[0], "cold_merge": best[1],
                "cold_render": best[2], "cold_median": statistics.median(c[0] for c in cold),
                "steady": min(steady), "steady_median": statistics.median(steady),
                "lines": lines, "total": total, "bytes": len(text)}
    finally:
        seg.close()
        os.unlink(seg.path)


def child_ours_churn(args) -> dict:
    from rockstar_mp.aggregator.exposition import render_prometheus
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.segment import Geometry, Segment

    seg = Segment.create(args.dir, Geometry())
    try:
        for _ in range(CHURN_LIVE):
            _our_worker(seg, "bench.churn", ("i",), CHURN_SERIES)
        merger = Merger(seg)  # the aggregator's, used throughout
        merger.collect_dead()

        def scrapes():
            steady = []
            for _ in range(CHURN_STEADY_RUNS):
                t = time.perf_counter()
                text = render_prometheus(merger.merge())
                steady.append(time.perf_counter() - t)
            cold = []
            for _ in range(CHURN_COLD_RUNS):
                t = time.perf_counter()
                render_prometheus(Merger(seg).merge())
                cold.append(time.perf_counter() - t)
            return min(steady), min(cold), text

        size_before = os.path.getsize(seg.path)
        steady_before, cold_before, text_before = scrapes()
        t0 = time.perf_counter()
        for _ in range(OUR_RESTARTS):
            slab, gen = _our_worker(seg, "bench.churn", ("i",), CHURN_SERIES)
            if not seg.retire_slab(slab, gen):
                raise RuntimeError("retire_slab refused a live slab")
            merger.collect_dead()
        churn = time.perf_counter() - t0
        size_after = os.path.getsize(seg.path)
        steady_after, cold_after, text_after = scrapes()
        return {"size_before": size_before, "size_after": size_after,
                "steady_before": steady_before, "steady_after": steady_after,
                "cold_before": cold_before, "cold_after": cold_after,
                "churn_seconds": churn, "workers_folded": merger.workers_folded,
                "lines_before": _prom_totals(text_before, "bench_churn_total"),
                "lines_after": _prom_totals(text_after, "bench_churn_total")}
    finally:
        seg.close()
        os.unlink(seg.path)


def _wsgi_environ(path: str = "/") -> dict:
    """What gunicorn's sync worker hands the app for ``GET path`` from wrk (minus the socket)."""
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "RAW_URI": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000", "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
            "wsgi.run_once": False, "wsgi.file_wrapper": None}


def _serve(app, n: int) -> float:
    """``n`` direct WSGI calls of ``app`` as a server makes them: a fresh environ (and input) each,
    the body consumed, ``close()`` called. Returns the seconds taken."""
    import io

    template = _wsgi_environ()
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    t = time.perf_counter()
    for _ in range(n):
        environ = template.copy()
        environ["wsgi.input"] = io.BytesIO(b"")
        body = app(environ, start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    elapsed = time.perf_counter() - t
    if len(statuses) != n or statuses[-1] != "200 OK":
        raise RuntimeError(f"the app answered {statuses[-1]!r} ({len(statuses)} of {n} responses)")
    return elapsed


def child_ours_request(args) -> dict:
    """Figure 6: one request through a one-route Falcon app, bare and with our middlewares, in a
    process attached to a real slab (ring and recorder bound), as a gunicorn worker is."""
    import atexit

    import falcon

    from examples.app import Hello
    from rockstar_mp.aggregator.merge import Merger
    from rockstar_mp.segment import Geometry, Segment
    from rockstar_mp.worker.accelerator import hotpath
    from rockstar_mp.worker.attach import attach_worker
    from rockstar_mp.worker.falcon import WorkloadMiddleware
    from rockstar_mp.worker.workload import RECORDER
    from rockstar_mp.worker.wsgi import MetricsMiddleware

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    seg = Segment.create(args.dir, Geometry(n_slabs=2))
    state = None
    try:
        slab, generation = seg.claim_slab()
        state = attach_worker(seg, slab, generation)
        if RECORDER._ring is None:
            raise RuntimeError("attach_worker did not bind the workload ring")

        def one_route(middleware=()):
            app = falcon.App(middleware=list(middleware))
            app.add_route("/", Hello())
            return app

        apps = {"bare": one_route(),  # (a)
                # (b): examples/app.py (Falcon's router names the route: capture_routes)
                "full": MetricsMiddleware(one_route(), workload=True),
                "falcon_mw": one_route([WorkloadMiddleware()]),  # WorkloadMiddleware only
                "wsgi_mw": MetricsMiddleware(one_route())}  # MetricsMiddleware only
        times: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():
            _serve(app, REQUEST_WARMUP)
        for _ in range(REQUEST_REPEATS):  # interleaved, so a slow spell of the machine hits all apps
            for name, app in apps.items():
                times[name].append(_serve(app, REQUEST_NUMBER) / REQUEST_NUMBER)
        out = {name: min(ts) for name, ts in times.items()}
        out["medians"] = {name: statistics.median(ts) for name, ts in times.items()}
        out["accelerated"] = hotpath is not None

        record = RECORDER.record
        now = time.time()
        timer = timeit.Timer(lambda: record("GET", "/", 200, 0.00012, now, 27, "", ""))
        timer.timeit(10_000)
        out["record"] = min(timer.repeat(REPEATS, NUMBER // 4)) / (NUMBER // 4)

        # the recording landed in the slab: http.requests counted every request of the two apps
        # wrapped in MetricsMiddleware, the status-class sketch every workload record
        served = REQUEST_WARMUP + REQUEST_REPEATS * REQUEST_NUMBER
        snap = Merger(seg).merge()
        requests = statuses = 0.0
        for info in snap.series:
            if info.cell < 0:
                continue
            if info.key.name == "http.requests":
                requests += snap.totals[info.cell]
            elif info.key.name == "rockstar.workload.bucket" and info.key.labelvalues[0] == "status":
                statuses += sum(snap.totals[info.cell:info.cell + info.n])  # a block of buckets
        records = 2 * served + 10_000 + REPEATS * (NUMBER // 4)
        out["check"] = [requests, 2 * served, statuses, records]
        return out
    finally:
        if state is not None:
            state.detach()
            atexit.unregister(state.detach)
        seg.close()
        os.unlink(seg.path)


# -- prometheus_client -------------------------------------------------------------------------------
def _prom_import():
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported")
    import prometheus_client
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus_client is not in multiprocess mode")
    return prometheus_client


def child_prom_micro(args) -> dict:
    pc = _prom_import()
    c = pc.Counter("bench_c", "doc")
    lab = pc.Counter("bench_l", "doc", ["method", "status"])
    lab.labels("GET", "200")
    h = pc.Histogram("bench_h", "doc")  # default buckets
    out = {}
    for key, stmt, ns in (("counter", "c.inc()", {"c": c}),
                          ("labels", "lab.labels('GET', '200').inc()", {"lab": lab}),
                          ("histogram", "h.observe(0.3)", {"h": h})):
        timer = timeit.Timer(stmt, globals=ns)
        timer.timeit(10_000)
        out[key] = min(timer.repeat(REPEATS, NUMBER)) / NUMBER
    out["version"] = pc.__version__ if hasattr(pc, "__version__") else _prom_version()
    return out


def _prom_version() -> str:
    try:
        from importlib.metadata import version
        return version("prometheus_client")
    except Exception:
        return "?"


def child_prom_writer(args) -> dict:
    """One prometheus_client process: one labelled counter, ``args.n`` series, each incremented once."""
    pc = _prom_import()
    c = pc.Counter(args.metric, "Benchmark series", ["i"])
    for i in range(args.n):
        c.labels(str(i)).inc()
    return {"pid": os.getpid()}


def child_prom_scrape(args) -> dict:
    pc = _prom_import()
    from prometheus_client import multiprocess

    def scrape():
        t = time.perf_counter()
        registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = pc.generate_latest(registry)
        return time.perf_counter() - t, text

    first, text = scrape()
    times = [scrape()[0] for _ in range(args.runs)]
    lines, total = _prom_totals(text.decode(), args.metric + "_total")
    return {"first": first, "min": min(times), "median": statistics.median(times),
            "lines": lines, "total": total, "bytes": len(text)}


# -- load -------------------------------------------------------------------------------------------
def child_burst(args) -> dict:
    """``args.n`` GETs of ``args.url``, one after the other, each on a new connection: how many got each
    status (figure 10's burst, in a process of its own so it does not share the timing's GIL)."""
    from .servers import http_once

    got: dict = {}
    for _ in range(args.n):
        try:
            status = str(http_once(args.url)[1])
        except OSError:
            status = "error"
        got[status] = got.get(status, 0) + 1
    return got


CHILDREN = {"ours-micro": child_ours_micro, "ours-scrape": child_ours_scrape,
            "ours-churn": child_ours_churn, "ours-request": child_ours_request, "prom-micro": child_prom_micro,
            "prom-writer": child_prom_writer, "prom-scrape": child_prom_scrape, "burst": child_burst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.children",
                                     description="Run one measurement and print RESULT {json}.")
    parser.add_argument("name", choices=sorted(CHILDREN))
    parser.add_argument("--dir", help="where ours creates its segment")
    parser.add_argument("--n", type=int, default=0, help="series (prom-writer) or requests (burst)")
    parser.add_argument("--runs", type=int, default=PROM_SCRAPES, help="prom-scrape: scrapes timed")
    parser.add_argument("--metric", default="bench_c")
    parser.add_argument("--url", help="burst: the URL to GET")
    args = parser.parse_args(argv)
    print("RESULT " + json.dumps(CHILDREN[args.name](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
