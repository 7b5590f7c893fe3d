"""rockstar-mp against prometheus_client's multiprocess mode, measured side by side in one run (figures
1-5), and rockstar-mp's cost per request against the same app without it (figures 6-7).

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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Micro benchmarks: min over REPEATS runs of NUMBER calls (nothing subtracted: loop overhead included).
REPEATS = 5
NUMBER = 200_000

# Figure 4: merge + render of WORKERS x SERIES counters.
WORKERS = 64
SERIES = 1_000
# Scrape figures are the min over runs, like the micro benchmarks (the machine may be shared), over
# SCRAPE_ROUNDS rounds of (theirs, ours) children.
SCRAPE_ROUNDS = 2
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

# Figure 6: one request through a minimal Falcon app, direct WSGI calls; min over interleaved repeats,
# in a process pinned to one CPU (a process moved between CPUs mid-run measures the move).
REQUEST_WARMUP = 2_000
REQUEST_REPEATS = 40
REQUEST_NUMBER = 2_000
REQUEST_TARGET = 3e-6  # (b) - (a), seconds per request

# Figure 7: wrk against real gunicorn (sync workers), rockstar-mp on vs off: both servers up at once,
# short wrk runs alternating off/on, medians compared (a slow spell of the machine hits both sides).
SERVER_WORKERS = 2
WRK_THREADS = 2
WRK_CONNECTIONS = 16
WRK_SECONDS = 2
WRK_WARMUP_SECONDS = 1
WRK_ROUNDS = 20  # of each: off, on, off, on, ...
THROUGHPUT_TARGET = 3.0  # loss in %: the median over the rounds of 1 - on/off (each pair 2 s apart)
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 35.0  # gunicorn's graceful_timeout is 30 s; idle sync workers stop at once

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
                "full": MetricsMiddleware(one_route([WorkloadMiddleware(wsgi_layer=True)]), workload=True),  # (b): examples/app.py
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



# ============================================================================ figure 7: gunicorn + wrk
def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while picked, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_group(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def _no_control_socket() -> list[str]:
    """gunicorn >= 27 opens a control socket, by default at ~/.gunicorn/gunicorn.ctl: one path for every
    gunicorn of the user, so a bench server and any other gunicorn running at the time would take it
    from each other. Ours go without (on and off alike)."""
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    return ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS
                                         if s.cli) else []


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def _plain_env() -> dict:
    """This environment without rockstar-mp's settings or GUNICORN_CMD_ARGS: a server gets only ours."""
    return {k: v for k, v in _env(None).items() if not k.startswith("ROCKSTAR_") and k != "GUNICORN_CMD_ARGS"}


class Server:
    """One gunicorn master (and its workers, and for "on" its aggregator) in a session of its own, so
    ``stop`` can find every process it started: SIGTERM the master, wait, then check its group."""

    def __init__(self, mode: str, tmp: str, number: int) -> None:
        self.mode = mode
        self.port, self.metrics_port = free_ports(2)
        if mode == "on":  # the example app under the example config: hooks, aggregator, middlewares
            self._launch(["-c", "gunicorn_conf.py", "examples.app:app"],
                         self._monitored_env(tmp, SERVER_WORKERS), tmp, f"{mode}-{number}")
        else:  # plain gunicorn (an empty config file: not even ./gunicorn.conf.py) on the bare routes
            empty = os.path.join(tmp, "empty_gunicorn_conf.py")
            open(empty, "w").close()
            self._launch(["-c", empty, "-k", "sync", "-w", str(SERVER_WORKERS), "-b", f"127.0.0.1:{self.port}",
                          "benchmarks.bare_app:app"], _plain_env(), tmp, f"{mode}-{number}")

    def _monitored_env(self, tmp: str, workers: int) -> dict:
        """What gunicorn_conf.py reads: bind, workers, the metrics port, fresh segment and run dirs."""
        return dict(_plain_env(), BIND=f"127.0.0.1:{self.port}", WORKERS=str(workers),
                    ROCKSTAR_METRICS_PORT=str(self.metrics_port),
                    ROCKSTAR_SEGMENT_DIR=tempfile.mkdtemp(prefix="segment-", dir=tmp),
                    ROCKSTAR_RUN_DIR=tempfile.mkdtemp(prefix="run-", dir=tmp))

    def _launch(self, gunicorn_args: list, env: dict, tmp: str, name: str) -> None:
        """Start ``python -m gunicorn <args>`` in a session of its own, logging to a file of ``tmp``."""
        self.cmd = [sys.executable, "-m", "gunicorn"] + _no_control_socket() + gunicorn_args
        self.stopped = False
        self.log_path = os.path.join(tmp, f"gunicorn-{name}.log")
        self.url = f"http://127.0.0.1:{self.port}/"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self) -> None:
        """Until the app answers 200 (and, for "on", the aggregator serves /metrics)."""
        urls = [self.url] + ([self.metrics_url()] if self.mode == "on" else [])
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        for url in urls:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gunicorn ({self.mode}) exited with {self.proc.returncode}:\n"
                                       + self.log_tail())
                try:
                    status, headers, _ = _get(url)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn ({self.mode}): {url} not ready after "
                                       f"{SERVER_START_TIMEOUT:.0f} s:\n" + self.log_tail())
                time.sleep(0.05)
        # That "on" really recorded is checked after each run (``recorded()`` >= the responses).

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics?format=json"

    def recorded(self) -> tuple[float, float]:
        """("on") merged ``http.requests`` (from /metrics) and workload records (/workload's total)."""
        _, _, body = _get(self.metrics_url(), timeout=10.0)
        counters = json.loads(body)["counters"]
        _, _, body = _get(f"http://127.0.0.1:{self.metrics_port}/workload", timeout=10.0)
        return float(counters.get("http.requests", 0)), float(json.loads(body)["total_requests"])

    def stop(self) -> list[str]:
        """SIGTERM the master and wait; then every process of its group must be gone (else SIGKILL).
        Returns notes on anything that needed force."""
        if self.stopped:
            return []
        self.stopped = True
        notes = []
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                notes.append(f"gunicorn ({self.mode}) master {pgid} ignored SIGTERM for "
                             f"{SERVER_STOP_TIMEOUT:.0f} s: killed")
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10.0
        left = process_group(pgid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = process_group(pgid)
        if left:
            notes.append(f"gunicorn ({self.mode}): processes {left} outlived their master: killed")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return notes


def run_wrk(url: str, seconds: int) -> dict:
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = {"rps": 0.0, "requests": 0, "errors": 0, "non2xx": 0}
    for line in proc.stdout.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(words[1])
        elif len(words) > 2 and words[1] == "requests" and words[2] == "in":
            out["requests"] = int(words[0])
        elif line.strip().startswith("Socket errors:"):
            out["errors"] = sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non2xx"] = int(words[-1])
    if not out["rps"]:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{proc.stdout}")
    return out


def throughput(tmp: str, notes: list[str]) -> dict:
    """Figure 7: an "off" and an "on" server, both up; wrk runs alternating between them. Returns every
    run's figures by mode."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    servers: dict[str, Server] = {}
    sent_on = 0
    try:
        for number, mode in enumerate(("off", "on")):
            servers[mode] = Server(mode, tmp, number)
            servers[mode].wait_ready()
        for mode, server in servers.items():
            sent_on += run_wrk(server.url, WRK_WARMUP_SECONDS)["requests"] if mode == "on" else 0
        for number in range(WRK_ROUNDS):
            order = ("off", "on") if number % 2 == 0 else ("on", "off")  # ABBA: a steady drift cancels
            for mode in order:
                server = servers[mode]
                result = run_wrk(server.url, WRK_SECONDS)
                if result["errors"] or result["non2xx"]:
                    notes.append(f"fig 7 {mode} round {number + 1}: wrk saw {result['errors']} socket "
                                 f"errors, {result['non2xx']} non-2xx responses")
                sent_on += result["requests"] if mode == "on" else 0
                runs[mode].append(result)
        requests, records = servers["on"].recorded()
        if requests < sent_on or records < sent_on:
            notes.append(f"fig 7 on: merged http.requests {requests:.0f} and workload records {records:.0f}, "
                         f"but wrk got {sent_on} responses from it")
        runs["recorded"] = [{"requests": requests, "records": records, "sent": sent_on}]
    finally:
        for server in servers.values():
            notes.extend(server.stop())
    return runs


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


def fmt_delta(seconds: float) -> str:
    return ("+" if seconds >= 0 else "-") + fmt_time(abs(seconds))


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
        # two rounds, theirs then ours, each side's best kept: a slow spell of the machine hits both
        rounds4 = [(run_child("prom-scrape", "--runs", str(PROM_SCRAPES), "--metric", "bench_c",
                              prom_dir=scrape_dir), run_child("ours-scrape", "--dir", ours_dir))
                   for _ in range(SCRAPE_ROUNDS)]
        theirs4 = min((t for t, _ in rounds4), key=lambda r: r["min"])
        ours4 = min((o for _, o in rounds4), key=lambda r: r["cold"])
        ours4["steady"] = min(o["steady"] for _, o in rounds4)
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

        # -- 6-7: one request, and throughput, with and without rockstar-mp -------------------------
        rows2, ours6, runs7 = request_figures(tmp, ours_dir, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- the report ------------------------------------------------------------------------------
    header = ("figure", "rockstar-mp", "prometheus_client", "ours/theirs", "target", "result")
    header2 = ("figure", "rockstar-mp on", "off", "cost", "target", "result")
    # one set of column widths for both tables, so they read as one
    widths = [max(len(str(r[i])) for r in rows + rows2 + [header, header2]) for i in range(len(header))]
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
    if rows2:
        print("  ".join(h.ljust(w) for h, w in zip(header2, widths)))
        print(line)
        for r in rows2:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        print(line)
    print(f"1-3: per call, min of {REPEATS} repeats of {NUMBER:,} calls (loop overhead included, "
          "nothing subtracted); ours bound to a slab of a real segment.")
    print(f"4:   merge + render of {WORKERS} workers x {SERIES:,} counter series "
          f"({WORKERS * SERIES:,} per-worker values), min over runs, in {SCRAPE_ROUNDS} alternating rounds of "
          "theirs then ours (fresh processes each).")
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
    print_request_footnotes(ours6, runs7)
    run_ops(notes)
    for note in notes:
        print(f"NOTE: {note}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def request_figures(tmp: str, ours_dir: str, notes: list[str], figs: tuple = ("6", "7")):
    """Figures 6 and 7 (rockstar-mp on against off): ``(rows, figure 6 results, figure 7 runs)``."""
    rows2: list[tuple] = []
    ours6 = runs7 = None
    if "6" in figs:
        # -- 6: one request with and without our middlewares ---------------------------------------
        print(f"[6] one request through Falcon, bare and with our middlewares: min of {REQUEST_REPEATS} "
              f"x {REQUEST_NUMBER:,} direct WSGI calls each ...", flush=True)
        ours6 = run_child("ours-request", "--dir", ours_dir)
        requests6, want_requests6, records6, want_records6 = ours6.pop("check")
        if requests6 != want_requests6 or records6 != want_records6:
            notes.append(f"fig 6: the slab holds {requests6:.0f} http.requests (expected "
                         f"{want_requests6}) and {records6:.0f} workload records (expected {want_records6})")
        cost6 = ours6["full"] - ours6["bare"]
        rows2.append(("6. request: (b) with - (a) without", fmt_time(ours6["full"]), fmt_time(ours6["bare"]),
                      fmt_delta(cost6), f"<= {fmt_time(REQUEST_TARGET)}",
                      verdict(cost6 <= REQUEST_TARGET)))
        for key, label in (("falcon_mw", "   WorkloadMiddleware only"),
                           ("wsgi_mw", "   MetricsMiddleware only")):
            rows2.append((label, fmt_time(ours6[key]), fmt_time(ours6["bare"]),
                          fmt_delta(ours6[key] - ours6["bare"]), "(info)", ""))
        rows2.append(("   RECORDER.record() alone", fmt_time(ours6["record"]), "", "", "(info)", ""))

    if "7" in figs:
        # -- 7: throughput under wrk ----------------------------------------------------------------
        if shutil.which("wrk") is None:
            notes.append("fig 7 skipped: wrk is not installed")
        else:
            print(f"[7] wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s against gunicorn, "
                  f"{SERVER_WORKERS} sync workers, {WRK_ROUNDS} rounds of off then on, both servers up ...",
                  flush=True)
            try:
                runs7 = throughput(tmp, notes)  # every server it started is stopped, even on errors
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                notes.append(f"fig 7 failed (figures 1-6 stand): {exc}")
    if runs7 is not None:
        median_off = statistics.median(r["rps"] for r in runs7["off"])
        median_on = statistics.median(r["rps"] for r in runs7["on"])
        loss7 = (1 - statistics.median(on["rps"] / off["rps"] for on, off in zip(runs7["on"], runs7["off"]))) * 100
        rows2.append((f"7. req/s, wrk, {SERVER_WORKERS} workers: on vs off", f"{median_on:,.0f}",
                      f"{median_off:,.0f}", f"{-loss7:+.1f}%", f"loss <= {THROUGHPUT_TARGET:g}%",
                      verdict(loss7 <= THROUGHPUT_TARGET)))
        rows2.append(("   medians of each side compared", "", "", f"{(median_on / median_off - 1) * 100:+.1f}%",
                      "(info)", ""))
    return rows2, ours6, runs7


def print_request_footnotes(ours6: dict | None, runs7: dict | None) -> None:
    if ours6 is not None:
        m = ours6["medians"]
        print(f"6:   one GET / through a one-route falcon.App (the example's Hello), called as a server "
              f"would (fresh environ, body consumed, close()), in a process pinned to one CPU and attached "
              f"to a slab of a real segment; per request, min of {REQUEST_REPEATS} interleaved repeats of "
              f"{REQUEST_NUMBER:,} (medians: bare {fmt_time(m['bare'])}, with {fmt_time(m['full'])}); "
              f"request path in {'C (rockstar_mp._hotpath)' if ours6['accelerated'] else 'Python'}.")
        print("     (a) bare; (b) WorkloadMiddleware(wsgi_layer=True) in the App and MetricsMiddleware "
              "around it, as examples/app.py. record() alone: min of "
              f"{REPEATS} x {NUMBER // 4:,} calls (one route, status and tenant: every series exists).")
    if runs7 is not None:
        rec = runs7["recorded"][0]
        print(f"7:   real gunicorn on loopback, {SERVER_WORKERS} sync workers; an off and an on server up at "
              f"once, each warmed by wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_WARMUP_SECONDS}s, then "
              f"{WRK_ROUNDS} rounds of -d{WRK_SECONDS}s runs, off then on, then on then off, ...; req/s: the median of each "
              f"side; cost: the median of the {WRK_ROUNDS} rounds' on/off ratios.")
        print(f"     the on server counted {rec['requests']:,.0f} http.requests and {rec['records']:,.0f} workload "
              f"records for the {rec['sent']:,} responses wrk got from it.")
        print("     on: gunicorn -c gunicorn_conf.py examples.app:app (hooks, aggregator, both "
              "middlewares); off: plain gunicorn on benchmarks.bare_app:app (same routes, no middleware).")
        for mode in ("off", "on"):
            print(f"     {mode}, every run in order: " + " / ".join(f"{r['rps']:,.0f}" for r in runs7[mode]))
        print(f"     wrk and gunicorn share the machine's {os.cpu_count()} CPUs: the workers get what wrk "
              "leaves, so the loss is indicative, and noisy if anything else runs.")


def run_ops(notes: list[str], figs: list[str] | None = None) -> None:
    """Figures 8-10 (benchmarks/ops.py): real gunicorn servers, their own table."""
    from benchmarks import ops

    tmp = tempfile.mkdtemp(prefix="rockstar-bench-ops-")
    try:
        rows = ops.run_figures(tmp, figs or list(ops.FIGURES), notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("operations on a real gunicorn (figures 8-10; best-of-N where said: the machine may be shared)")
    if rows:
        ops.print_rows(rows)


def only_main(figs: list[str]) -> int:
    """``--only 6,7,8``: just those of figures 6-10."""
    from benchmarks import ops

    unknown = [f for f in figs if f not in ops.FIGURES and f not in ("6", "7")]
    if unknown:
        print(f"--only: unknown figures {unknown}; choose among 6, 7, {', '.join(ops.FIGURES)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    notes: list[str] = []
    request_figs = tuple(f for f in figs if f in ("6", "7"))
    if request_figs:
        tmp = tempfile.mkdtemp(prefix="rockstar-bench-")
        try:
            ours_dir = os.path.join(tmp, "ours")
            os.makedirs(ours_dir)
            rows2, ours6, runs7 = request_figures(tmp, ours_dir, notes, request_figs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        header2 = ("figure", "rockstar-mp on", "off", "cost", "target", "result")
        widths = [max(len(str(r[i])) for r in rows2 + [header2]) for i in range(len(header2))]
        for r in [header2] + rows2:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        print_request_footnotes(ours6, runs7)
    ops_figs = [f for f in figs if f in ops.FIGURES]
    if ops_figs:
        run_ops(notes, ops_figs)
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
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        sys.exit(only_main([f for f in sys.argv[2].split(",") if f]))
    sys.exit(main())
