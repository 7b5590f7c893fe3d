"""rockstar-mp against prometheus_client's multiprocess mode, measured side by side in one run.

    cd /work/main && .venv/bin/python -m benchmarks.run        (what ``make bench`` calls)

Every measurement runs in its own fresh interpreter (``python -m benchmarks.run --child NAME ...``), ours
and theirs alike: prometheus_client only switches to its multiprocess value class if
``PROMETHEUS_MULTIPROC_DIR`` is set *before* it is imported, so its children get the variable (a fresh
temporary directory) in their environment, and ours never see it. A child prints one ``RESULT {json}``
line; this process collects them and prints the table. The figures are reports, not assertions: the
exit status is 0 whatever PASS/FAIL says.

This module imports nothing but the standard library at top level, so a child imports only the side
it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Micro benchmarks: min over REPEATS runs of NUMBER calls (nothing subtracted: loop overhead included).
REPEATS = 5
NUMBER = 200_000

# Figure 4: merge + render of WORKERS x SERIES counters.
WORKERS = 64
SERIES = 1_000
# Scrape figures are the min over runs, like the micro benchmarks (the machine may be shared).
COLD_RUNS = 5  # fresh Merger each time (after the first, reported separately)
STEADY_RUNS = 20  # one Merger reused, as the aggregator does
PROM_SCRAPES = 5  # prometheus_client: every scrape reads every file, there is no warm state

# Figure 5: churn.
CHURN_LIVE = 8  # workers alive throughout
CHURN_SERIES = 100
OUR_RESTARTS = 1_000
PROM_RESTARTS = 200
CHURN_STEADY_RUNS = 50  # our scrapes here take well under a millisecond: min of many
CHURN_COLD_RUNS = 10
CHURN_NOISE = 1.3  # "unchanged": after/before scrape time (min of runs) at most this

PARALLEL = 8  # prometheus_client writer subprocesses run at once

# Figure 6: one request through a minimal Falcon app, direct WSGI calls; min over interleaved repeats.
REQUEST_WARMUP = 2_000
REQUEST_REPEATS = 5
REQUEST_NUMBER = 20_000
REQUEST_TARGET = 3e-6  # (b) - (a), seconds per request

TARGETS = {"counter": 1 / 4, "labels": 1 / 3, "histogram": 1 / 3, "scrape": 1 / 10}

PROM_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


# ============================================================================ children: ours
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
    from rockstar_mp.worker.attach import attach_worker
    from rockstar_mp.worker.falcon import WorkloadMiddleware
    from rockstar_mp.worker.workload import RECORDER
    from rockstar_mp.worker.wsgi import MetricsMiddleware

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
                "full": MetricsMiddleware(one_route([WorkloadMiddleware()])),  # (b): examples/app.py
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

        record = RECORDER.record
        now = time.time()
        timer = timeit.Timer(lambda: record("GET", "/", 200, 0.00012, now, 27, "1a2b-3c", ""))
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
                statuses += snap.totals[info.cell]
        records = 2 * served + 10_000 + REPEATS * (NUMBER // 4)
        out["check"] = [requests, 2 * served, statuses, records]
        return out
    finally:
        if state is not None:
            state.detach()
            atexit.unregister(state.detach)
        seg.close()
        os.unlink(seg.path)


# ============================================================================ children: prometheus_client
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


CHILDREN = {"ours-micro": child_ours_micro, "ours-scrape": child_ours_scrape,
            "ours-churn": child_ours_churn, "ours-request": child_ours_request, "prom-micro": child_prom_micro,
            "prom-writer": child_prom_writer, "prom-scrape": child_prom_scrape}


# ============================================================================ the parent
def _env(prom_dir: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROM_ENV}
    if prom_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(name: str, *args: str, prom_dir: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", name, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(prom_dir), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {name} failed ({proc.returncode}):\n{proc.stderr}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark child {name} printed no result:\n{proc.stdout}\n{proc.stderr}")


def prom_writers(prom_dir: str, count: int, n: int, metric: str) -> float:
    """``count`` prometheus_client processes (``PARALLEL`` at a time), each leaving its own pid file."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda _: run_child("prom-writer", "--n", str(n), "--metric", metric,
                                                    prom_dir=prom_dir), range(count)))
    if len({r["pid"] for r in results}) != count:
        raise RuntimeError("prometheus_client writers reused a pid: fewer files than processes")
    return time.perf_counter() - t0


def dir_usage(path: str) -> tuple[int, int]:
    names = [n for n in os.listdir(path) if n.endswith(".db")]
    return len(names), sum(os.path.getsize(os.path.join(path, n)) for n in names)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    started = time.perf_counter()
    notes: list[str] = []
    rows: list[tuple] = []
    tmp = tempfile.mkdtemp(prefix="rockstar-bench-")
    try:
        ours_dir = os.path.join(tmp, "ours")
        os.makedirs(ours_dir)

        def fresh_prom_dir(name: str) -> str:
            path = os.path.join(tmp, name)
            os.makedirs(path)
            return path

        # -- 1-3: the hot path ------------------------------------------------------------------
        print(f"[1-3] update cost: min of {REPEATS} x {NUMBER:,} calls each ...", flush=True)
        ours = run_child("ours-micro", "--dir", ours_dir)
        theirs = run_child("prom-micro", prom_dir=fresh_prom_dir("micro"))
        if not ours.pop("check"):
            notes.append("ours-micro: the merged counter did not equal the number of inc() calls")
        for key, label in (("counter", "1. Counter.inc()"),
                           ("labels", "2. .labels(a, b).inc()"),
                           ("histogram", "3. Histogram.observe()")):
            ratio = ours[key] / theirs[key]
            rows.append((label, fmt_time(ours[key]), fmt_time(theirs[key]), f"{ratio:.3f}",
                         f"<= 1/{round(1 / TARGETS[key])}", verdict(ratio <= TARGETS[key])))

        # -- 4: merge + render ------------------------------------------------------------------
        print(f"[4] scrape of {WORKERS} workers x {SERIES:,} series: {WORKERS} prometheus_client "
              f"writer processes, {PARALLEL} at a time ...", flush=True)
        scrape_dir = fresh_prom_dir("scrape")
        writers_seconds = prom_writers(scrape_dir, WORKERS, SERIES, "bench_c")
        files4, bytes4 = dir_usage(scrape_dir)
        theirs4 = run_child("prom-scrape", "--runs", str(PROM_SCRAPES), "--metric", "bench_c",
                            prom_dir=scrape_dir)
        ours4 = run_child("ours-scrape", "--dir", ours_dir)
        ratio4 = ours4["cold"] / theirs4["min"]
        rows.append((f"4. scrape {WORKERS}x{SERIES:,} (cold)", fmt_time(ours4["cold"]),
                     fmt_time(theirs4["min"]), f"{ratio4:.3f}", "<= 1/10",
                     verdict(ratio4 <= TARGETS["scrape"])))
        rows.append(("   scrape, steady (reused Merger)", fmt_time(ours4["steady"]),
                     fmt_time(theirs4["min"]), f"{ours4['steady'] / theirs4['min']:.3f}",
                     "(info)", ""))
        rows.append(("   scrape, first in process", fmt_time(ours4["first"]), fmt_time(theirs4["first"]),
                     f"{ours4['first'] / theirs4['first']:.3f}", "(info)", ""))
        expected = (SERIES, float(WORKERS * SERIES))
        for who, res in (("ours", ours4), ("prometheus_client", theirs4)):
            if (res["lines"], res["total"]) != expected:
                notes.append(f"fig 4 {who}: rendered {res['lines']} series summing to {res['total']}, "
                             f"expected {expected[0]} summing to {expected[1]}")

        # -- 5: churn ---------------------------------------------------------------------------
        print(f"[5] churn: ours {OUR_RESTARTS:,} restarts, prometheus_client {PROM_RESTARTS} "
              f"writer processes ...", flush=True)
        ours5 = run_child("ours-churn", "--dir", ours_dir)
        churn_dir = fresh_prom_dir("churn")
        prom_writers(churn_dir, CHURN_LIVE, CHURN_SERIES, "bench_churn")
        files_before, bytes_before = dir_usage(churn_dir)
        theirs5_before = run_child("prom-scrape", "--runs", str(PROM_SCRAPES), "--metric", "bench_churn",
                                   prom_dir=churn_dir)
        churn_seconds = prom_writers(churn_dir, PROM_RESTARTS, CHURN_SERIES, "bench_churn")
        files_after, bytes_after = dir_usage(churn_dir)
        theirs5_after = run_child("prom-scrape", "--runs", str(PROM_SCRAPES), "--metric", "bench_churn",
                                  prom_dir=churn_dir)
        our_growth = ours5["steady_after"] / ours5["steady_before"]
        their_growth = theirs5_after["min"] / theirs5_before["min"]
        size_same = ours5["size_before"] == ours5["size_after"]
        rows.append(("5. scrape after churn", fmt_time(ours5["steady_after"]),
                     fmt_time(theirs5_after["min"]),
                     f"{ours5['steady_after'] / theirs5_after['min']:.3f}",
                     f"size same, time x<={CHURN_NOISE}", verdict(size_same and our_growth <= CHURN_NOISE)))
        rows.append(("   scrape growth after/before", f"x{our_growth:.2f}", f"x{their_growth:.2f}",
                     "", "(info)", ""))
        expected_before = (CHURN_SERIES, float(CHURN_LIVE * CHURN_SERIES))
        expected_ours = (CHURN_SERIES, float((CHURN_LIVE + OUR_RESTARTS) * CHURN_SERIES))
        expected_theirs = (CHURN_SERIES, float((CHURN_LIVE + PROM_RESTARTS) * CHURN_SERIES))
        checks = (("ours before", tuple(ours5["lines_before"]), expected_before),
                  ("ours after", tuple(ours5["lines_after"]), expected_ours),
                  ("prometheus_client before", (theirs5_before["lines"], theirs5_before["total"]),
                   expected_before),
                  ("prometheus_client after", (theirs5_after["lines"], theirs5_after["total"]),
                   expected_theirs))
        for who, got, want in checks:
            if got != want:
                notes.append(f"fig 5 {who}: rendered {got[0]} series summing to {got[1]}, "
                             f"expected {want[0]} summing to {want[1]}")
        if ours5["workers_folded"] != OUR_RESTARTS:
            notes.append(f"fig 5 ours: {ours5['workers_folded']} workers folded, expected {OUR_RESTARTS}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- the report ------------------------------------------------------------------------------
    header = ("figure", "rockstar-mp", "prometheus_client", "ours/theirs", "target", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print()
    print(f"rockstar-mp vs prometheus_client {theirs.get('version', '?')} (multiprocess mode), "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; both measured in this run")
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(line)
    print(f"1-3: per call, min of {REPEATS} repeats of {NUMBER:,} calls (loop overhead included, "
          "nothing subtracted); ours bound to a slab of a real segment.")
    print(f"4:   merge + render of {WORKERS} workers x {SERIES:,} counter series "
          f"({WORKERS * SERIES:,} per-worker values), min over runs.")
    print(f"     ours: {COLD_RUNS} scrapes on a fresh Merger each (cold: merge "
          f"{fmt_time(ours4['cold_merge'])} + render {fmt_time(ours4['cold_render'])}; median "
          f"{fmt_time(ours4['cold_median'])}), {STEADY_RUNS} on one reused Merger (steady; median "
          f"{fmt_time(ours4['steady_median'])}).")
    print(f"     theirs: {PROM_SCRAPES} x (CollectorRegistry + MultiProcessCollector + generate_latest; "
          f"no warm state; median {fmt_time(theirs4['median'])}) over {files4} files, "
          f"{fmt_bytes(bytes4)}, written by {WORKERS} processes in {writers_seconds:.1f} s.")
    print(f"5:   churn with {CHURN_LIVE} live workers x {CHURN_SERIES} series throughout.")
    print(f"     ours: {OUR_RESTARTS:,} restarts (claim slab, bind a fresh Registry, increment, retire, "
          f"collect_dead) in {ours5['churn_seconds']:.1f} s;")
    print(f"       segment file {ours5['size_before']:,} -> {ours5['size_after']:,} bytes; "
          f"scrape steady {fmt_time(ours5['steady_before'])} -> {fmt_time(ours5['steady_after'])} "
          f"(x{our_growth:.2f}; min of {CHURN_STEADY_RUNS}), cold {fmt_time(ours5['cold_before'])} -> {fmt_time(ours5['cold_after'])} "
          f"(x{ours5['cold_after'] / ours5['cold_before']:.2f}; min of {CHURN_COLD_RUNS}).")
    print(f"     prometheus_client: {PROM_RESTARTS} restarts = {PROM_RESTARTS} new writer processes, "
          f"each leaving its own counter_<pid>.db (counter files of dead pids must be kept), in "
          f"{churn_seconds:.1f} s;")
    print(f"       {files_before} files, {fmt_bytes(bytes_before)} -> {files_after} files, "
          f"{fmt_bytes(bytes_after)}; scrape {fmt_time(theirs5_before['min'])} -> "
          f"{fmt_time(theirs5_after['min'])} (x{their_growth:.2f}, grows with every restart).")
    for note in notes:
        print(f"NOTE: {note}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.run --child")
    parser.add_argument("name", choices=sorted(CHILDREN))
    parser.add_argument("--dir")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--runs", type=int, default=PROM_SCRAPES)
    parser.add_argument("--metric", default="bench_c")
    args = parser.parse_args(argv)
    print("RESULT " + json.dumps(CHILDREN[args.name](args)), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit(main())
