"""Figures 11-12: what rockstar-mp costs a server in CPU time, read from /proc (``cpu.py``), not in req/s.

**11.** CPU seconds per request of the whole server (workers + master + aggregator), on against off, at
the same fixed request rate (``wrk -t1`` paced by ``pace.lua``; the client's CPU is not counted), for
each worker class of ``FLAVOURS``. Both servers of a class are up and driven at the same time in each
round, so a busy spell of the shared machine hits both; every round is printed, and the figure is the
median of the rounds' on/off ratios, with each side's median and the split by role. The rounds are spread
over ``COST_PAIRS`` pairs of servers, each started afresh: a pair keeps a bias of its own through its
rounds (sync's rounds read 1.013-1.054 in one run and 1.012-1.072 in another, medians +3.9 % and +1.6 %;
two identical "off" servers 0.99 and 1.01), which one pair would pass off as the figure. Beside the
median, the cost column prints the median's distribution-free interval (``median_interval``: with 12
rounds, the 3rd and 10th of the ordered ratios, 96.1 % coverage; with 24, the 7th and 18th, 97.7 %). The
ASGI rounds of 3 s spread over 0.87-1.24, against 0.98-1.04 for sync, so a median a point either side of
the target says little on its own: the ASGI classes run longer rounds (``KEEPALIVE_SECONDS``, 12 s: a
fifth of the spread), ``COST_ROUNDS_KEEPALIVE`` of them over ``COST_PAIRS_KEEPALIVE`` pairs.

The keep-alive classes (the two ASGI ones) are measured with one worker. With two, wrk's connections
split unevenly between them (an event loop accepts a burst of them at once), and how busy each worker is
changes its CPU per request: two identical bare gunicorn ``-k asgi`` servers read 0.90-1.18 of each other
round by round (0.92-1.11 with 64 connections), and 0.98-1.01 with one worker each. A sync worker takes
one connection per request, so the load splits evenly. They are driven at ``KEEPALIVE_RATE`` (800 req/s,
0.37 of a core for one FastAPI worker): at ``COST_RATE`` the two servers and their wrks kept both cores of
this machine nearly busy, and the rounds spread three times as wide. And they are pinned (``pinned``): both
servers on one CPU, the wrks on the others, so that where the scheduler puts a worker beside the clients
and the other server is the same for both sides (``server_and_client_cpus``).

**12.** The aggregator's idle cost: its CPU per second over ``IDLE_SECONDS`` with 2, 16 and 64 idle sync
workers (nothing requested but one ``/workers`` poll at start), and the workers' and master's beside it.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass

from .cpu import ROLES, server_cpu
from .servers import Server, http_get, parse_wrk, process_group
from .settings import (
    COST_CONNECTIONS,
    COST_PAIRS,
    COST_PAIRS_KEEPALIVE,
    COST_RATE,
    COST_ROUNDS,
    COST_ROUNDS_KEEPALIVE,
    COST_SECONDS,
    COST_SETTLE_SECONDS,
    COST_TARGET,
    COST_WARMUP_SECONDS,
    IDLE_SECONDS,
    IDLE_SETTLE_SECONDS,
    IDLE_TARGET,
    IDLE_WORKERS,
    KEEPALIVE_RATE,
    KEEPALIVE_SECONDS,
    ROOT,
    SERVER_WORKERS,
)

ASGI_ON_APP = "benchmarks.asgi_apps:ours()"
ASGI_OFF_APP = "benchmarks.asgi_apps:bare()"


@dataclass(frozen=True)
class Flavour:
    """One worker class measured by figure 11: gunicorn's arguments naming it, and the app each side
    serves ("on": under ``gunicorn_conf.py``, hooks and aggregator; "off": plain gunicorn)."""

    name: str
    worker_args: tuple[str, ...]
    on_app: str = "examples.app:app"  # MetricsMiddleware(workload=True) around the Falcon app
    off_app: str = "benchmarks.bare_app:app"  # the same routes, no middleware
    target: float | None = None  # the cost's limit in %, None: information
    workers: int = SERVER_WORKERS  # one for the keep-alive classes (see the module's docstring)
    rounds: int = COST_ROUNDS
    pairs: int = COST_PAIRS
    seconds: float = COST_SECONDS  # a round's length
    rate: int = COST_RATE  # requests per second to each server
    pinned: bool = False  # both servers on one CPU, the wrks on the others (``server_and_client_cpus``)


FLAVOURS = (
    Flavour("sync", ("-k", "sync"), target=COST_TARGET),
    Flavour("gthread", ("-k", "gthread", "--threads", "4")),
    # ASGI: the FastAPI app of benchmarks/asgi_apps.py, bare against wrapped in our ASGI MetricsMiddleware
    Flavour("asgi uvicorn", ("-k", "uvicorn.workers.UvicornWorker"), ASGI_ON_APP, ASGI_OFF_APP, target=COST_TARGET,
            workers=1, rounds=COST_ROUNDS_KEEPALIVE, pairs=COST_PAIRS_KEEPALIVE, seconds=KEEPALIVE_SECONDS,
            rate=KEEPALIVE_RATE, pinned=True),
    Flavour("asgi gunicorn", ("-k", "asgi"), ASGI_ON_APP, ASGI_OFF_APP, target=COST_TARGET, workers=1,
            rounds=COST_ROUNDS_KEEPALIVE, pairs=COST_PAIRS_KEEPALIVE, seconds=KEEPALIVE_SECONDS, rate=KEEPALIVE_RATE,
            pinned=True),
)


# -- the paced client -------------------------------------------------------------------------------
PACE_SCRIPT = os.path.join(ROOT, "benchmarks", "pace.lua")


def start_paced_wrk(url: str, seconds: float, rate: int = COST_RATE,
                    cpus: set[int] | None = None) -> subprocess.Popen:
    """``wrk`` sending ``rate`` requests per second to ``url`` for ``seconds`` (``pace.lua``), on ``cpus``
    if given (set before it starts its thread, which inherits them)."""
    cmd = ["wrk", "-t1", f"-c{COST_CONNECTIONS}", f"-d{seconds:g}s", "-s", PACE_SCRIPT, url]
    return subprocess.Popen(cmd, env=dict(os.environ, PACE_RATE=str(rate)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def server_and_client_cpus() -> tuple[set[int], set[int]] | None:
    """For a pinned flavour: (the CPU both servers run on, the CPUs of their wrks), or None on a machine
    with one CPU. One keep-alive worker's CPU per request moves with how the scheduler places it beside
    its own wrk and the other server: unpinned, a pair of uvicorn servers kept a bias of its own of up to
    +-3 % (rounds 0.977-1.066 over 4 pairs, 8 rounds of 12 s), and pinned the same 8 rounds read
    1.034-1.044. Both servers get the same place, so the comparison stays fair."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


def pin(server: Server, cpus: set[int]) -> None:
    """Every thread of every process of ``server`` (master, workers, aggregator) onto ``cpus``; the
    processes and threads they start later inherit it."""
    for pid in process_group(server.proc.pid):
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone
        for tid in threads:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # gone


def paced_round(servers: dict[str, Server], seconds: float, first: str, rate: int = COST_RATE,
                client_cpus: set[int] | None = None) -> dict[str, dict]:
    """Every server driven at ``rate`` at the same time (``first``'s wrk started first), so a busy
    spell of the shared machine hits all. Returns, by server, wrk's figures plus the server's CPU
    seconds by role from just before the wrks start to ``COST_SETTLE_SECONDS`` after they end (so the
    aggregator's drain of the last records is in)."""
    order = (first, *(mode for mode in servers if mode != first))
    before = {mode: server_cpu(servers[mode].proc.pid) for mode in order}
    started = time.monotonic()
    procs = {mode: start_paced_wrk(servers[mode].url, seconds, rate, client_cpus) for mode in order}
    outputs = {mode: proc.communicate(timeout=seconds + 60) for mode, proc in procs.items()}
    time.sleep(COST_SETTLE_SECONDS)  # a measured interval (see above), not a synchronisation
    results = {}
    for mode in order:
        spent = server_cpu(servers[mode].proc.pid).since(before[mode])
        if procs[mode].returncode != 0:
            raise RuntimeError(f"wrk failed ({procs[mode].returncode}): {outputs[mode][1]}")
        results[mode] = dict(parse_wrk(outputs[mode][0]), cpu=spent, window=time.monotonic() - started)
    return results


def check_recorded(server: Server, sent: int, who: str) -> list[str]:
    """A note unless the "on" ``server``'s aggregator merged at least ``sent`` (the responses wrk got)
    ``http.requests`` and workload records: the middleware really recorded what was measured."""
    requests, records = server.recorded()
    if requests >= sent and records >= sent:
        return []
    return [f"{who}: merged http.requests {requests:.0f} and workload records {records:.0f}, but wrk got "
            f"{sent} responses from it"]


def per_request(run: dict, role: str | None = None) -> float:
    """CPU seconds per answered request of a run, of the whole server or of one role."""
    spent = sum(run["cpu"].values()) if role is None else run["cpu"][role]
    return spent / max(run["requests"], 1)


# -- figure 11 ----------------------------------------------------------------------------------------
def cpu_per_request(tmp: str, flavour: Flavour, notes: list[str]) -> dict:
    """Figure 11 for one worker class: every run of each side, in order, over the flavour's ``pairs``
    pairs of servers started afresh (its ``rounds`` rounds in all)."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    rounds = [flavour.rounds // flavour.pairs + (pair < flavour.rounds % flavour.pairs)
              for pair in range(flavour.pairs)]
    for count in rounds:
        pair_runs = pair_of_servers(tmp, flavour, count, notes)
        for mode in runs:
            runs[mode] += pair_runs[mode]
    return runs


def pair_of_servers(tmp: str, flavour: Flavour, rounds: int, notes: list[str]) -> dict:
    """One "off" and one "on" server of ``flavour``, warmed up, then ``rounds`` paced rounds."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    servers: dict[str, Server] = {}
    cpus = server_and_client_cpus() if flavour.pinned else None
    client_cpus = cpus[1] if cpus else None
    try:
        for mode in ("off", "on"):
            app = flavour.on_app if mode == "on" else flavour.off_app
            servers[mode] = Server(mode, tmp, len(os.listdir(tmp)), app=app, worker_args=flavour.worker_args,
                                   workers=flavour.workers)
            servers[mode].wait_ready()
            if cpus:
                pin(servers[mode], cpus[0])
        sent_on = paced_round(servers, COST_WARMUP_SECONDS, "off", flavour.rate, client_cpus)["on"]["requests"]
        for number in range(rounds):
            results = paced_round(servers, flavour.seconds, ("off", "on")[number % 2], flavour.rate, client_cpus)
            for mode, result in results.items():
                if result["errors"] or result["non2xx"]:
                    notes.append(f"fig 11 {flavour.name} {mode} round {number + 1}: wrk saw {result['errors']} "
                                 f"socket errors, {result['non2xx']} non-2xx responses")
                runs[mode].append(result)
            sent_on += results["on"]["requests"]
        notes.extend(check_recorded(servers["on"], sent_on, f"fig 11 {flavour.name} on"))
    finally:
        for server in servers.values():
            notes.extend(server.stop())
    return runs


def summarize(runs: dict) -> dict:
    """Medians of each side (whole server and by role, per request) and the median of the rounds'
    on/off ratios."""
    out: dict = {}
    for mode in ("off", "on"):
        out[mode] = statistics.median(per_request(r) for r in runs[mode])
        out[f"{mode}_roles"] = {role: statistics.median(per_request(r, role) for r in runs[mode])
                                for role in ROLES}
    ratios = [per_request(on) / per_request(off) for on, off in zip(runs["on"], runs["off"], strict=True)]
    out["ratio"] = statistics.median(ratios)
    out["interval"] = median_interval(ratios)
    return out


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: ``(low, high, coverage)``, the order
    statistics that hold the true median with probability at least ``confidence`` (the chance that too
    few values fall below it, or above it, is at most ``(1 - confidence) / 2`` each), or the extremes when
    there are too few values for that (``coverage`` then says how sure they are).

    >>> median_interval([float(v) for v in range(1, 13)])  # 12 rounds: the 3rd and the 10th
    (3.0, 10.0, 0.961)
    """
    ordered = sorted(values)
    n = len(ordered)
    below = [math.comb(n, i) / 2 ** n for i in range(n + 1)]  # P(i of the n values are below the median)
    j = 1  # the interval is the j-th smallest to the j-th largest: it misses when fewer than j are below
    while j + 1 <= n - j and 2 * sum(below[:j + 1]) <= 1 - confidence:
        j += 1
    return ordered[j - 1], ordered[n - j], round(1 - 2 * sum(below[:j]), 3)


def request_cost_figure(tmp: str, notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figure 11 for every flavour: ``(table rows, detail lines)``."""
    rows: list[tuple] = []
    details: list[str] = []
    for flavour in FLAVOURS:
        print(f"[11] {flavour.name}: CPU per request at {flavour.rate:,} req/s, {flavour.workers} worker(s), "
              f"{flavour.rounds} rounds of {flavour.seconds:g} s off/on over {flavour.pairs} pairs of servers ...",
              flush=True)
        try:
            runs = cpu_per_request(tmp, flavour, notes)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            notes.append(f"fig 11 {flavour.name} failed: {exc}")
            continue
        s = summarize(runs)
        cost = (s["ratio"] - 1) * 100
        low, high, _coverage = s["interval"]
        target = flavour.target
        rows.append((f"11. CPU/request, {flavour.name}: on vs off", f"{s['on'] * 1e6:.1f} us",
                     f"{s['off'] * 1e6:.1f} us", f"{cost:+.1f}% ({(low - 1) * 100:+.1f}..{(high - 1) * 100:+.1f})",
                     f"<= +{target:g}%" if target is not None else "(info)",
                     ("PASS" if cost <= target else "FAIL") if target is not None else ""))
        details += cost_details(flavour.name, runs, s)
    return rows, details


def cost_details(name: str, runs: dict, s: dict) -> list[str]:
    lines = [f"11 {name}: by role, medians per request (on - off):"
             + ", ".join(f" {role} {s['on_roles'][role] * 1e6:.1f} - {s['off_roles'][role] * 1e6:.1f} = "
                         f"{(s['on_roles'][role] - s['off_roles'][role]) * 1e6:+.1f} us" for role in ROLES)]
    for mode in ("off", "on"):
        lines.append(f"   {mode}, every run in order (us/request; workers/master/aggregator; req/s got): "
                     + " | ".join(f"{per_request(r) * 1e6:.1f} ("
                                  + "/".join(f"{per_request(r, role) * 1e6:.1f}" for role in ROLES)
                                  + f"; {r['rps']:,.0f})" for r in runs[mode]))
    lines.append("   on/off per round: " + " ".join(f"{per_request(on) / per_request(off):.3f}"
                                                    for on, off in zip(runs["on"], runs["off"], strict=True)))
    low, high, coverage = s["interval"]
    lines.append(f"   the median's interval (order statistics, {coverage:.1%} coverage): {low:.3f} .. {high:.3f}; "
                 "the cost column shows it in % beside the median")
    return lines


# -- figure 12 ----------------------------------------------------------------------------------------
def wait_for_workers(server: Server, count: int, timeout: float = 120.0) -> None:
    """Until the aggregator lists ``count`` live workers."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.metrics_port}/workers"
    while True:
        try:
            _, _, body = http_get(url, timeout=10.0)
            if len(json.loads(body)["workers"]) >= count:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers not listed after {timeout:.0f} s:\n" + server.log_tail())
        time.sleep(0.5)


def idle_cost(tmp: str, workers: int, notes: list[str]) -> dict[str, float]:
    """CPU milliseconds per second of each role of an idle "on" server with ``workers`` sync workers."""
    server = Server("on", tmp, workers, workers=workers, env={"ROCKSTAR_MAX_WORKERS": str(max(64, workers))})
    try:
        server.wait_ready()
        wait_for_workers(server, workers)
        time.sleep(IDLE_SETTLE_SECONDS)  # a measured interval: start-up work (imports, first parses) done
        before = server_cpu(server.proc.pid)
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)
        spent = server_cpu(server.proc.pid).since(before)
        elapsed = time.monotonic() - started
    finally:
        notes.extend(server.stop())
    return {role: spent[role] / elapsed * 1000 for role in ROLES}


def idle_figure(tmp: str, notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figure 12 at each count of ``IDLE_WORKERS``: ``(table rows, detail lines)``."""
    rows: list[tuple] = []
    details: list[str] = []
    for workers in IDLE_WORKERS:
        print(f"[12] idle aggregator with {workers} sync workers: CPU over {IDLE_SECONDS:g} s ...", flush=True)
        try:
            ms = idle_cost(tmp, workers, notes)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            notes.append(f"fig 12 with {workers} workers failed: {exc}")
            continue
        rows.append((f"12. idle aggregator, {workers} workers", f"{ms['aggregator']:.1f} ms/s", "", "",
                     f"<= {IDLE_TARGET:g} ms/s", "PASS" if ms["aggregator"] <= IDLE_TARGET else "FAIL"))
        details.append(f"12 {workers} workers, CPU ms per second: aggregator {ms['aggregator']:.1f}, master "
                       f"{ms['master']:.1f}, workers {ms['workers']:.1f} ({ms['workers'] / workers:.2f} each)")
    return rows, details


def run_figures(tmp: str, figs: list[str], notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figures 11 and/or 12 (``figs``), their servers under ``tmp``."""
    rows: list[tuple] = []
    details: list[str] = []
    for fig, measure in (("11", request_cost_figure), ("12", idle_figure)):
        if fig in figs:
            more_rows, more_details = measure(tmp, notes)
            rows += more_rows
            details += more_details
    return rows, details


FIGURES = ("11", "12")
