"""The report ``make bench`` prints: the tables of figures 1-7 (ours against prometheus_client, then
rockstar-mp on against off) and the lines that say how each figure was measured."""
from __future__ import annotations

import os
import sys

from .settings import (
    CHURN_COLD_RUNS,
    CHURN_LIVE,
    CHURN_SERIES,
    CHURN_STEADY_RUNS,
    COLD_RUNS,
    NUMBER,
    OUR_RESTARTS,
    PROM_RESTARTS,
    PROM_SCRAPES,
    REPEATS,
    REQUEST_NUMBER,
    REQUEST_REPEATS,
    SCRAPE_ROUNDS,
    SERIES,
    SERVER_WORKERS,
    STEADY_RUNS,
    WORKERS,
    WRK_CONNECTIONS,
    WRK_ROUNDS,
    WRK_SECONDS,
    WRK_THREADS,
    WRK_WARMUP_SECONDS,
)

COMPARISON_HEADER = ("figure", "rockstar-mp", "prometheus_client", "ours/theirs", "target", "result")
COST_HEADER = ("figure", "rockstar-mp on", "off", "cost", "target", "result")


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


def print_tables(rows: list[tuple], rows2: list[tuple], prom_version: str) -> None:
    """Figures 1-5 (``rows``: ours against prometheus_client) and 6-7 (``rows2``: on against off), in
    one set of column widths so they read as one."""
    widths = [max(len(str(r[i])) for r in rows + rows2 + [COMPARISON_HEADER, COST_HEADER])
              for i in range(len(COMPARISON_HEADER))]
    line = "  ".join("-" * w for w in widths)
    print()
    if rows:
        print(f"rockstar-mp vs prometheus_client {prom_version} (multiprocess mode), "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; both measured in this run")
    print(line)
    for header, table in ((COMPARISON_HEADER, rows), (COST_HEADER, rows2)):
        if table:
            print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            print(line)
            for r in table:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
            print(line)


def print_table(header: tuple, rows: list[tuple]) -> None:
    """One table: ``header``, then ``rows``, columns as wide as their widest cell."""
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for row in (header, None, *rows):
        print(line if row is None else "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(line)


def print_micro_footnotes() -> None:
    print(f"1-3: per call, min of {REPEATS} repeats of {NUMBER:,} calls (loop overhead included, "
          "nothing subtracted); ours bound to a slab of a real segment.")


def print_scrape_footnotes(ours4: dict, theirs4: dict, files4: int, bytes4: int, writers_seconds: float) -> None:
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


def print_churn_footnotes(ours5: dict, theirs5: tuple[dict, dict], files: tuple[int, int],
                          sizes: tuple[int, int], churn_seconds: float) -> None:
    """``theirs5``, ``files`` and ``sizes``: prometheus_client's (before, after) the restarts."""
    our_growth = ours5["steady_after"] / ours5["steady_before"]
    their_growth = theirs5[1]["min"] / theirs5[0]["min"]
    print(f"5:   churn with {CHURN_LIVE} live workers x {CHURN_SERIES} series throughout.")
    print(f"     ours: {OUR_RESTARTS:,} restarts (claim slab, bind a fresh Registry, increment, retire, "
          f"collect_dead) in {ours5['churn_seconds']:.1f} s;")
    print(f"       segment file {ours5['size_before']:,} -> {ours5['size_after']:,} bytes; "
          f"scrape steady {fmt_time(ours5['steady_before'])} -> {fmt_time(ours5['steady_after'])} "
          f"(x{our_growth:.2f}; min of {CHURN_STEADY_RUNS}), "
          f"cold {fmt_time(ours5['cold_before'])} -> {fmt_time(ours5['cold_after'])} "
          f"(x{ours5['cold_after'] / ours5['cold_before']:.2f}; min of {CHURN_COLD_RUNS}).")
    print(f"     prometheus_client: {PROM_RESTARTS} restarts = {PROM_RESTARTS} new writer processes, "
          f"each leaving its own counter_<pid>.db (counter files of dead pids must be kept), in "
          f"{churn_seconds:.1f} s;")
    print(f"       {files[0]} files, {fmt_bytes(sizes[0])} -> {files[1]} files, "
          f"{fmt_bytes(sizes[1])}; scrape {fmt_time(theirs5[0]['min'])} -> "
          f"{fmt_time(theirs5[1]['min'])} (x{their_growth:.2f}, grows with every restart).")


def print_request_footnotes(ours6: dict | None, runs7: dict | None) -> None:
    if ours6 is not None:
        m = ours6["medians"]
        print(f"6:   one GET / through a one-route falcon.App (the example's Hello), called as a server "
              f"would (fresh environ, body consumed, close()), in a process pinned to one CPU and attached "
              f"to a slab of a real segment; per request, min of {REQUEST_REPEATS} interleaved repeats of "
              f"{REQUEST_NUMBER:,} (medians: bare {fmt_time(m['bare'])}, with {fmt_time(m['full'])}); "
              f"request path in {'C (rockstar_mp._hotpath)' if ours6['accelerated'] else 'Python'}.")
        print("     (a) bare; (b) MetricsMiddleware(workload=True) around the App (Falcon's router names the "
              "route), as examples/app.py. record() alone: min of "
              f"{REPEATS} x {NUMBER // 4:,} calls (one route, status and tenant: every series exists).")
    if runs7 is not None:
        rec = runs7["recorded"][0]
        print(f"7:   real gunicorn on loopback, {SERVER_WORKERS} sync workers; an off and an on server up at "
              f"once, each warmed by wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_WARMUP_SECONDS}s, then "
              f"{WRK_ROUNDS} rounds of -d{WRK_SECONDS}s runs, off then on, then on then off, ...; "
              f"req/s: the median of each side; cost: the median of the {WRK_ROUNDS} rounds' on/off ratios.")
        print(f"     the on server counted {rec['requests']:,.0f} http.requests and {rec['records']:,.0f} workload "
              f"records for the {rec['sent']:,} responses wrk got from it.")
        print("     on: gunicorn -c gunicorn_conf.py examples.app:app (hooks, aggregator, both "
              "middlewares); off: plain gunicorn on benchmarks.bare_app:app (same routes, no middleware).")
        for mode in ("off", "on"):
            print(f"     {mode}, every run in order: " + " / ".join(f"{r['rps']:,.0f}" for r in runs7[mode]))
        print(f"     wrk and gunicorn share the machine's {os.cpu_count()} CPUs: the workers get what wrk "
              "leaves, so the loss is indicative, and noisy if anything else runs.")


def print_ops_table(rows: list) -> None:
    """Figures 8-10: figure, value, target, result, and a detail line under each row."""
    header = ("figure", "value", "target", "result", "detail")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    line = "  ".join("-" * w for w in widths) + "  ------"
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header[:4], widths, strict=True)) + "  (detail below each row)")
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths, strict=True)))
        print(" " * 5 + r[4])
    print(line)
