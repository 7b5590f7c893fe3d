"""rockstar-mp against prometheus_client's multiprocess mode, measured side by side in one run (figures
1-5), rockstar-mp's cost per request against the same app without it (figures 6-7), and operations on
a real gunicorn (figures 8-10, ``ops.py``), CPU time from /proc (figures 11-12, ``cost.py``) and rockstar-mp's
ASGI middleware against prometheus-fastapi-instrumentator and starlette-exporter (figure 13, ``compare.py``),
rockstar_mp.prometheus against the native API (figure 14, ``prometheus_shim.py``), what a running CPU
profile costs (figure 15, ``pprof_cost.py``), and the aggregator's CPU with 0 and 1 open dashboard
(figure 16, ``dashboard_bench.py``).

    .venv/bin/python -m benchmarks.run                  (what ``make bench`` calls: every figure)
    .venv/bin/python -m benchmarks.run --only 1,2,3     (just these; 1, 2 and 3 are measured together)
    .venv/bin/python -m benchmarks.run --only 11,13     (the whole-server CPU figures, ASGI included)

Every measurement runs in its own fresh interpreter (``children.py``), ours and theirs alike; this
process starts them, collects their ``RESULT {json}`` lines and prints the report (``report.py``). The
servers of figures 7-10 are in ``servers.py``. The figures are reports, not assertions: the exit status
is 0 whatever PASS/FAIL says.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import compare, cost, dashboard_bench, ops, pprof_cost, prometheus_shim
from .report import (
    fmt_delta,
    fmt_time,
    print_churn_footnotes,
    print_micro_footnotes,
    print_ops_table,
    print_request_footnotes,
    print_scrape_footnotes,
    print_table,
    print_tables,
    verdict,
)
from .servers import Server, child_env, run_wrk
from .settings import (
    CHURN_LIVE,
    CHURN_NOISE,
    CHURN_SERIES,
    NUMBER,
    OUR_RESTARTS,
    PARALLEL,
    PROM_RESTARTS,
    PROM_SCRAPES,
    REPEATS,
    REQUEST_NUMBER,
    REQUEST_REPEATS,
    REQUEST_TARGET,
    ROOT,
    SCRAPE_ROUNDS,
    SERIES,
    SERVER_WORKERS,
    TARGETS,
    THROUGHPUT_TARGET,
    WORKERS,
    WRK_CONNECTIONS,
    WRK_ROUNDS,
    WRK_SECONDS,
    WRK_THREADS,
    WRK_WARMUP_SECONDS,
)

MICRO = ("1", "2", "3")  # one child measures the three
REQUEST = ("6", "7")
FIGURES = (MICRO + ("4", "5") + REQUEST + tuple(ops.FIGURES) + cost.FIGURES + compare.FIGURES
           + (prometheus_shim.FIGURE,) + pprof_cost.FIGURES + dashboard_bench.FIGURES)


@dataclass
class Session:
    """One run's scratch directory (removed at the end), and the notes printed under the report."""

    tmp: str
    notes: list[str] = field(default_factory=list)

    @property
    def ours_dir(self) -> str:
        path = os.path.join(self.tmp, "ours")
        os.makedirs(path, exist_ok=True)
        return path

    def fresh_prom_dir(self, name: str) -> str:
        path = os.path.join(self.tmp, name)
        os.makedirs(path)
        return path


# -- children -----------------------------------------------------------------------------------------
def run_child(name: str, *args: str, prom_dir: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.children", name, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(prom_dir), capture_output=True, text=True)
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


def prom_version() -> str:
    """prometheus_client's version, without importing it here."""
    try:
        from importlib.metadata import version
        return version("prometheus_client")
    except Exception:
        return "?"


# -- figures 1-5: ours against prometheus_client ----------------------------------------------------------
def micro_figures(session: Session) -> tuple[list[tuple], str]:
    """Figures 1-3, the hot path: ``(rows, prometheus_client's version)``."""
    print(f"[1-3] update cost: min of {REPEATS} x {NUMBER:,} calls each ...", flush=True)
    ours = run_child("ours-micro", "--dir", session.ours_dir)
    theirs = run_child("prom-micro", prom_dir=session.fresh_prom_dir("micro"))
    if not ours.pop("check"):
        session.notes.append("ours-micro: the merged counter did not equal the number of inc() calls")
    rows = []
    for key, label in (("counter", "1. Counter.inc()"),
                       ("labels", "2. .labels(a, b).inc()"),
                       ("histogram", "3. Histogram.observe()")):
        ratio = ours[key] / theirs[key]
        rows.append((label, fmt_time(ours[key]), fmt_time(theirs[key]), f"{ratio:.3f}",
                     f"<= 1/{round(1 / TARGETS[key])}", verdict(ratio <= TARGETS[key])))
    return rows, theirs.get("version", "?")


def scrape_figure(session: Session) -> tuple[list[tuple], tuple]:
    """Figure 4, merge + render: ``(rows, what its footnotes print)``."""
    print(f"[4] scrape of {WORKERS} workers x {SERIES:,} series: {WORKERS} prometheus_client "
          f"writer processes, {PARALLEL} at a time ...", flush=True)
    scrape_dir = session.fresh_prom_dir("scrape")
    writers_seconds = prom_writers(scrape_dir, WORKERS, SERIES, "bench_c")
    files4, bytes4 = dir_usage(scrape_dir)
    # two rounds, theirs then ours, each side's best kept: a slow spell of the machine hits both
    rounds4 = [(run_child("prom-scrape", "--runs", str(PROM_SCRAPES), "--metric", "bench_c",
                          prom_dir=scrape_dir), run_child("ours-scrape", "--dir", session.ours_dir))
               for _ in range(SCRAPE_ROUNDS)]
    theirs4 = min((t for t, _ in rounds4), key=lambda r: r["min"])
    ours4 = min((o for _, o in rounds4), key=lambda r: r["cold"])
    ours4["steady"] = min(o["steady"] for _, o in rounds4)
    ratio4 = ours4["cold"] / theirs4["min"]
    rows = [(f"4. scrape {WORKERS}x{SERIES:,} (cold)", fmt_time(ours4["cold"]),
             fmt_time(theirs4["min"]), f"{ratio4:.3f}", "<= 1/10", verdict(ratio4 <= TARGETS["scrape"])),
            ("   scrape, steady (reused Merger)", fmt_time(ours4["steady"]),
             fmt_time(theirs4["min"]), f"{ours4['steady'] / theirs4['min']:.3f}", "(info)", ""),
            ("   scrape, first in process", fmt_time(ours4["first"]), fmt_time(theirs4["first"]),
             f"{ours4['first'] / theirs4['first']:.3f}", "(info)", "")]
    expected = (SERIES, float(WORKERS * SERIES))
    for who, res in (("ours", ours4), ("prometheus_client", theirs4)):
        if (res["lines"], res["total"]) != expected:
            session.notes.append(f"fig 4 {who}: rendered {res['lines']} series summing to {res['total']}, "
                                 f"expected {expected[0]} summing to {expected[1]}")
    return rows, (ours4, theirs4, files4, bytes4, writers_seconds)


def churn_figure(session: Session) -> tuple[list[tuple], tuple]:
    """Figure 5, churn: ``(rows, what its footnotes print)``."""
    print(f"[5] churn: ours {OUR_RESTARTS:,} restarts, prometheus_client {PROM_RESTARTS} "
          f"writer processes ...", flush=True)
    ours5 = run_child("ours-churn", "--dir", session.ours_dir)
    churn_dir = session.fresh_prom_dir("churn")
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
    rows = [("5. scrape after churn", fmt_time(ours5["steady_after"]), fmt_time(theirs5_after["min"]),
             f"{ours5['steady_after'] / theirs5_after['min']:.3f}",
             f"size same, time x<={CHURN_NOISE}", verdict(size_same and our_growth <= CHURN_NOISE)),
            ("   scrape growth after/before", f"x{our_growth:.2f}", f"x{their_growth:.2f}", "", "(info)", "")]
    expected_before = (CHURN_SERIES, float(CHURN_LIVE * CHURN_SERIES))
    expected_ours = (CHURN_SERIES, float((CHURN_LIVE + OUR_RESTARTS) * CHURN_SERIES))
    expected_theirs = (CHURN_SERIES, float((CHURN_LIVE + PROM_RESTARTS) * CHURN_SERIES))
    checks = (("ours before", tuple(ours5["lines_before"]), expected_before),
              ("ours after", tuple(ours5["lines_after"]), expected_ours),
              ("prometheus_client before", (theirs5_before["lines"], theirs5_before["total"]), expected_before),
              ("prometheus_client after", (theirs5_after["lines"], theirs5_after["total"]), expected_theirs))
    for who, got, want in checks:
        if got != want:
            session.notes.append(f"fig 5 {who}: rendered {got[0]} series summing to {got[1]}, "
                                 f"expected {want[0]} summing to {want[1]}")
    if ours5["workers_folded"] != OUR_RESTARTS:
        session.notes.append(f"fig 5 ours: {ours5['workers_folded']} workers folded, expected {OUR_RESTARTS}")
    return rows, (ours5, (theirs5_before, theirs5_after), (files_before, files_after),
                  (bytes_before, bytes_after), churn_seconds)


# -- figures 6-7: rockstar-mp on against off ---------------------------------------------------------------
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


def request_figures(session: Session, figs: tuple = REQUEST):
    """Figures 6 and 7 (rockstar-mp on against off): ``(rows, figure 6 results, figure 7 runs)``."""
    notes = session.notes
    rows2: list[tuple] = []
    ours6 = runs7 = None
    if "6" in figs:
        # -- 6: one request with and without our middlewares ---------------------------------------
        print(f"[6] one request through Falcon, bare and with our middlewares: min of {REQUEST_REPEATS} "
              f"x {REQUEST_NUMBER:,} direct WSGI calls each ...", flush=True)
        ours6 = run_child("ours-request", "--dir", session.ours_dir)
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
                runs7 = throughput(session.tmp, notes)  # every server it started is stopped, even on errors
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                notes.append(f"fig 7 failed (figures 1-6 stand): {exc}")
    if runs7 is not None:
        median_off = statistics.median(r["rps"] for r in runs7["off"])
        median_on = statistics.median(r["rps"] for r in runs7["on"])
        rounds = zip(runs7["on"], runs7["off"], strict=True)
        loss7 = (1 - statistics.median(on["rps"] / off["rps"] for on, off in rounds)) * 100
        rows2.append((f"7. req/s, wrk, {SERVER_WORKERS} workers: on vs off", f"{median_on:,.0f}",
                      f"{median_off:,.0f}", f"{-loss7:+.1f}%", f"loss <= {THROUGHPUT_TARGET:g}%",
                      verdict(loss7 <= THROUGHPUT_TARGET)))
        rows2.append(("   medians of each side compared", "", "", f"{(median_on / median_off - 1) * 100:+.1f}%",
                      "(info)", ""))
    return rows2, ours6, runs7


# -- figures 8-10 -------------------------------------------------------------------------------------------
def run_ops(notes: list[str], figs: list[str]) -> None:
    """Figures 8-10 (benchmarks/ops.py): real gunicorn servers, their own table."""
    tmp = tempfile.mkdtemp(prefix="rockstar-bench-ops-")
    try:
        rows = ops.run_figures(tmp, figs, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("operations on a real gunicorn (figures 8-10; best-of-N where said: the machine may be shared)")
    if rows:
        print_ops_table(rows)


# -- figures 11-13: CPU time from /proc ---------------------------------------------------------------------
def run_cpu_figures(module, figs: list[str], notes: list[str], title: str, print_rows) -> None:
    """Figures 11-12 (benchmarks/cost.py) or 13 (benchmarks/compare.py): ``module.run_figures`` in a
    temporary directory, then its table under ``title`` (with the load average before and after) and its
    detail lines."""
    tmp = tempfile.mkdtemp(prefix="rockstar-bench-cpu-")
    load_before = load_average()
    try:
        rows, details = module.run_figures(tmp, figs, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"{title}; load average {load_before} before, {load_average()} after")
    if rows:
        print_rows(rows)
    for line in details:
        print(line)


def run_cost(notes: list[str], figs: list[str]) -> None:
    run_cpu_figures(cost, figs, notes, "CPU cost from /proc (figures 11-12; every run printed, medians compared)",
                    lambda rows: print_tables([], rows, ""))


def run_compare(notes: list[str], figs: list[str]) -> None:
    run_cpu_figures(compare, figs, notes, "FastAPI: added CPU per request over the bare app, rockstar-mp against "
                    "prometheus_client-based instrumentation (figure 13; every round printed, medians compared)",
                    lambda rows: print_table(compare.HEADER, rows))


def run_pprof_cost(notes: list[str], figs: list[str]) -> None:
    run_cpu_figures(pprof_cost, figs, notes, "What a running CPU profile costs (figure 15; workers' CPU from /proc, "
                    "every round printed, medians compared)", lambda rows: print_tables([], rows, ""))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine is shared, so the report says how busy it was."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# -- the run ------------------------------------------------------------------------------------------------
def run(figs: tuple[str, ...]) -> int:
    """Measure ``figs`` (every figure by default) and print the report."""
    started = time.perf_counter()
    session = Session(tempfile.mkdtemp(prefix="rockstar-bench-"))
    rows: list[tuple] = []
    footnotes = []
    version = None
    rows2: list[tuple] = []
    ours6 = runs7 = None
    try:
        if set(MICRO) & set(figs):
            micro_rows, version = micro_figures(session)
            rows += micro_rows
            footnotes.append(print_micro_footnotes)
        if "4" in figs:
            scrape_rows, details4 = scrape_figure(session)
            rows += scrape_rows
            footnotes.append(lambda: print_scrape_footnotes(*details4))
        if "5" in figs:
            churn_rows, details5 = churn_figure(session)
            rows += churn_rows
            footnotes.append(lambda: print_churn_footnotes(*details5))
        request_figs = tuple(f for f in REQUEST if f in figs)
        if request_figs:
            rows2, ours6, runs7 = request_figures(session, request_figs)
    finally:
        shutil.rmtree(session.tmp, ignore_errors=True)
    if rows or rows2:
        print_tables(rows, rows2, version or prom_version())
    for footnote in footnotes:
        footnote()
    print_request_footnotes(ours6, runs7)
    ops_figs = [f for f in ops.FIGURES if f in figs]
    if ops_figs:
        run_ops(session.notes, ops_figs)
    cost_figs = [f for f in cost.FIGURES if f in figs]
    if cost_figs:
        run_cost(session.notes, cost_figs)
    if "13" in figs:
        run_compare(session.notes, ["13"])
    if prometheus_shim.FIGURE in figs:
        prometheus_shim.run_figure(session.notes)
    if "15" in figs:
        run_pprof_cost(session.notes, ["15"])
    if "16" in figs:  # issue 17: the aggregator's CPU with 0 and 1 open dashboard
        dashboard_bench.run_figure(session.notes)
    for note in session.notes:
        print(f"NOTE: {note}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def figure_list(text: str) -> tuple[str, ...]:
    """``--only``'s argument: figure numbers, comma-separated."""
    figs = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in figs if f not in FIGURES]
    if unknown or not figs:
        raise argparse.ArgumentTypeError(f"unknown figures {unknown}; choose among {', '.join(FIGURES)}")
    return figs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description="rockstar-mp's benchmark figures (a report: exit status 0).")
    parser.add_argument("--only", type=figure_list, default=FIGURES, metavar="N,M,...",
                        help=f"just these figures ({', '.join(FIGURES)}); default: all")
    return run(parser.parse_args(argv).only)


if __name__ == "__main__":
    sys.exit(main())
