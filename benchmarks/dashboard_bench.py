"""Figure 16 (issue 17): the aggregator's CPU per second with no dashboard open and with one open
(headless Chromium, the page's 1 s refresh), on the same server under the same paced load, alternated
round by round in one run. CPU time from /proc (``cpu.py``); every round is printed.

    .venv/bin/python -m benchmarks.dashboard_bench [--rounds 3] [--seconds 20]
    .venv/bin/python -m benchmarks.run --only 16          (the same, inside ``make bench``)
    .venv/bin/python -m benchmarks.dashboard_bench --rounds 0 --soak-minutes 60   (the page's memory over an hour)

Target: one open dashboard adds at most 1 % of one core to the aggregator.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cost import start_paced_wrk  # noqa: E402
from benchmarks.cpu import server_cpu  # noqa: E402
from tests.browser import headless_chromium  # noqa: E402
from tests.helpers import Gunicorn, poll  # noqa: E402

FIGURES = ("16",)
ROUNDS = 3
SECONDS = 20.0  # each measurement
SETTLE = 3.0  # after opening or closing the page, before measuring
RATE = 200  # requests per second from wrk, the whole run
WORKERS = 4
TARGET = 1.0  # % of one core added by one open dashboard


def aggregator_cpu_per_second(master: int, seconds: float) -> float:
    """The aggregator's CPU seconds per wall second over the next ``seconds``."""
    before, started = server_cpu(master).by_role["aggregator"], time.monotonic()
    time.sleep(seconds)
    return (server_cpu(master).by_role["aggregator"] - before) / (time.monotonic() - started)


def open_dashboard(driver, metrics_port: int) -> None:
    driver.get(f"http://127.0.0.1:{metrics_port}/dashboard")
    poll(lambda: driver.execute_script("return document.querySelectorAll('#workers-table tbody tr').length")
         == WORKERS, timeout=20, message="the dashboard showing the workers")


def measure(rounds: int, seconds: float) -> list[tuple[float, float]]:
    """``[(cpu % with 0 dashboards, cpu % with 1), ...]``, one pair a round, printed as they come."""
    results = []
    with tempfile.TemporaryDirectory(prefix="rockstar-dashboard-bench-") as tmp:
        server = Gunicorn(Path(tmp), workers=WORKERS).start()
        wrk: subprocess.Popen | None = None
        try:
            wrk = start_paced_wrk(f"http://127.0.0.1:{server.port}/", rounds * 2 * (seconds + SETTLE + 25), RATE)
            with headless_chromium() as driver:
                for i in range(rounds):
                    driver.get("about:blank")
                    time.sleep(SETTLE)
                    closed = 100 * aggregator_cpu_per_second(server.pid, seconds)
                    open_dashboard(driver, server.metrics_port)
                    time.sleep(SETTLE)
                    opened = 100 * aggregator_cpu_per_second(server.pid, seconds)
                    results.append((closed, opened))
                    print(f"  round {i + 1}: aggregator CPU {closed:.2f} % of a core with 0 dashboards, "
                          f"{opened:.2f} % with 1 open ({opened - closed:+.2f}); load average "
                          f"{'/'.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        finally:
            if wrk is not None:
                wrk.kill()
                wrk.wait()
            server.stop()
    return results


def page_memory(driver) -> dict[str, float]:
    """The page's JS heap in use after a full GC, its DOM nodes and event listeners (DevTools)."""
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    metrics = {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
    return {"heap": metrics["JSHeapUsedSize"], "nodes": metrics["Nodes"], "listeners": metrics["JSEventListeners"]}


def soak(minutes: float, every: float = 300.0) -> list[dict]:
    """One dashboard left open ``minutes`` on a server under the paced load: its memory read every
    ``every`` seconds (the live charts' rings fill in the first 5 minutes, then stay that size)."""
    readings = []
    with tempfile.TemporaryDirectory(prefix="rockstar-dashboard-soak-") as tmp:
        server = Gunicorn(Path(tmp), workers=WORKERS).start()
        wrk = start_paced_wrk(f"http://127.0.0.1:{server.port}/", minutes * 60 + 60, RATE)
        try:
            with headless_chromium() as driver:
                driver.execute_cdp_cmd("Performance.enable", {})
                open_dashboard(driver, server.metrics_port)
                started = time.monotonic()
                while True:
                    elapsed = time.monotonic() - started
                    reading = {"minute": round(elapsed / 60, 1), **page_memory(driver)}
                    readings.append(reading)
                    print(f"  soak {reading['minute']:5.1f} min: JS heap {reading['heap'] / 1e6:.2f} MB, "
                          f"{reading['nodes']:.0f} DOM nodes, {reading['listeners']:.0f} listeners", flush=True)
                    if elapsed >= minutes * 60:
                        break
                    time.sleep(min(every, minutes * 60 - elapsed))
        finally:
            wrk.kill()
            wrk.wait()
            server.stop()
    return readings


def report(results: list[tuple[float, float]], notes: list[str]) -> None:
    closed = statistics.median(r[0] for r in results)
    opened = statistics.median(r[1] for r in results)
    added = statistics.median(r[1] - r[0] for r in results)
    ok = added <= TARGET
    print(f"17. aggregator CPU, 0 vs 1 open dashboard (1 s refresh, {WORKERS} sync workers, {RATE} req/s): "
          f"median {closed:.2f} % -> {opened:.2f} % of a core, added {added:+.2f} % "
          f"(target <= {TARGET:g} %): {'PASS' if ok else 'FAIL'}")
    if not ok:
        notes.append(f"figure 16: one open dashboard added {added:.2f} % of a core to the aggregator")


def run_figure(notes: list[str], rounds: int = ROUNDS, seconds: float = SECONDS) -> None:
    """What ``benchmarks.run`` calls for figure 16."""
    print(f"[17] dashboard CPU ({rounds} rounds of {seconds:g} s each side) ...", flush=True)
    report(measure(rounds, seconds), notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--soak-minutes", type=float, default=0.0,
                        help="then leave one dashboard open this long, printing its memory every 5 minutes")
    args = parser.parse_args(argv)
    notes: list[str] = []
    if args.rounds:
        run_figure(notes, args.rounds, args.seconds)
    if args.soak_minutes:
        soak(args.soak_minutes)
    for note in notes:
        print(f"NOTE: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
