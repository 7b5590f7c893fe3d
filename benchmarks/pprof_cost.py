"""Figure 15: what a running CPU profile costs (issue 15), CPU time from /proc, not req/s.

**15a.** CPU seconds per request of the workers, at a fixed request rate (``wrk -t1`` paced by
``pace.lua``, as figure 11), with a 100 Hz CPU profile running (``/debug/pprof/profile`` over the whole
round) against none, on one "on" server per worker class (sync: SIGPROF; gthread: the thread sampler).
Rounds alternate profiled and not (ABBA), every round is printed, and the figure is the median of the
profiled rounds' CPU per request over the median of the others'.

**15b.** The SIGPROF handler's cost per sample with a 20-frame stack, in a fresh interpreter: (i) the
Python handler called directly (CPU per call: capture, the clock read, the count), for a stack seen
before and for a new one; (ii) delivered for real: a CPU-bound loop under a 1,000 Hz timer against
none, the extra CPU of the fastest run of each side divided by the handler calls (kernel delivery,
CPython's trip, the handler). A CPU-clock timer fires on the scheduler tick, so at 1 kHz the handler
runs at most CONFIG_HZ times a second, each call weighted by the expirations it stands for.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

from .cost import paced_round, per_request
from .servers import Server, free_ports, http_get
from .settings import COST_RATE, COST_SECONDS, COST_WARMUP_SECONDS, ROOT

PROFILE_ROUNDS = 8  # of each: profiled, not profiled (ABBA)
PROFILE_HZ = 100
PPROF_TARGET = 2.0  # % more CPU per request with a profile running
FLAVOURS = (("sync", ("-k", "sync")), ("gthread", ("-k", "gthread", "--threads", "4")))
FIGURES = ("15",)


# -- 15a ------------------------------------------------------------------------------------------------
def profiled_round(server: Server, pprof_port: int, seconds: float, profiled: bool) -> dict:
    """One paced round, with a CPU profile of every worker covering it when ``profiled``."""
    fetched: dict = {}
    fetcher = None
    if profiled:
        url = (f"http://127.0.0.1:{pprof_port}/debug/pprof/profile?seconds={seconds + 1:g}")
        fetcher = threading.Thread(target=lambda: fetched.update(r=http_get(url, timeout=seconds + 60)))
        fetcher.start()
        time.sleep(0.3)  # a measured offset, not a synchronisation: the workers' samplers are running
    result = paced_round({"on": server}, seconds, "on")["on"]
    if fetcher is not None:
        fetcher.join()
        if fetched.get("r", (0,))[0] != 200:
            raise RuntimeError(f"the CPU profile failed: {fetched.get('r')}")
    return result


def profile_cost(tmp: str, name: str, worker_args: tuple, notes: list[str]) -> dict:
    """Every round of one worker class: ``{"off": [...], "on": [...]}`` (on: profiled)."""
    pprof_port = free_ports(1)[0]
    env = {"ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(pprof_port),
           "ROCKSTAR_PPROF_HZ": str(PROFILE_HZ)}
    server = Server("on", tmp, len(os.listdir(tmp)), worker_args=worker_args, env=env)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        server.wait_ready()
        paced_round({"on": server}, COST_WARMUP_SECONDS, "on")
        for number in range(PROFILE_ROUNDS * 2):
            profiled = (number % 4) in (1, 2)  # off on on off off on on off ...
            result = profiled_round(server, pprof_port, COST_SECONDS, profiled)
            if result["errors"] or result["non2xx"]:
                notes.append(f"fig 15 {name} round {number + 1}: wrk saw {result['errors']} socket errors, "
                             f"{result['non2xx']} non-2xx responses")
            runs["on" if profiled else "off"].append(result)
    finally:
        notes.extend(server.stop())
    return runs


# -- 15b ------------------------------------------------------------------------------------------------
HANDLER_CHILD = r"""
import json, signal, sys, time
from rockstar_mp.profiling import samplers

CALLS = 20000

def direct(frame, fresh):
    sink = samplers.SignalSamples(time.thread_time_ns, 10_000_000)
    samplers._SINK = sink
    try:
        start = time.thread_time_ns()
        for _ in range(CALLS):
            if fresh:
                sink.cells.clear()
            samplers._on_sigprof(signal.SIGPROF, frame)
        return (time.thread_time_ns() - start) / CALLS / 1000
    finally:
        samplers._SINK = None

def delivered(profiled):
    # a fixed loop timed by this thread's CPU clock, under a 1 kHz timer or not: (ns, handler calls)
    sink = samplers.SignalSamples(time.thread_time_ns, 1_000_000)
    timer = None
    if profiled:
        samplers._SINK = sink
        timer = samplers._Timer(1000)
    start = time.thread_time_ns()
    x = 0
    for i in range(10_000_000):
        x += i
    spent = time.thread_time_ns() - start
    if timer is not None:
        timer.disarm()
        samplers._SINK = None
    return spent, sum(cell[0] for cell in sink.cells.values())

def at_depth(n, fn, *args):
    return at_depth(n - 1, fn, *args) if n > 1 else fn(sys._getframe(), *args)

assert samplers.install_signal_handler()
out = {"seen": min(at_depth(20, lambda frame: direct(frame, False)) for _ in range(5)),
       "new": min(at_depth(20, lambda frame: direct(frame, True)) for _ in range(5))}
delivered(False)
rounds = [(at_depth(20, lambda frame: delivered(False)), at_depth(20, lambda frame: delivered(True)))
          for _ in range(9)]
# the fastest run of each side: a busy machine only ever adds time
off, on = min(r[0] for r in rounds), min((r[1] for r in rounds), key=lambda run: run[0])
out["delivered"] = (on[0] - off[0]) / max(on[1], 1) / 1000
out["delivered_calls"] = on[1]
out["delivered_runs"] = [[round(a[0] / 1e6, 1), round(b[0] / 1e6, 1), b[1]] for a, b in rounds]
print("RESULT " + json.dumps(out))
"""


def handler_cost() -> dict:
    """15b's figures, from a fresh interpreter (see the module doc)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", HANDLER_CHILD], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the handler benchmark failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# -- the figure -------------------------------------------------------------------------------------------
def run_figures(tmp: str, figs: list[str], notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figure 15: ``(table rows, detail lines)``."""
    rows: list[tuple] = []
    details: list[str] = []
    if "15" not in figs:
        return rows, details
    for name, worker_args in FLAVOURS:
        print(f"[15] {name}: workers' CPU per request at {COST_RATE:,} req/s, {PROFILE_HZ} Hz CPU profile "
              f"running or not, {PROFILE_ROUNDS} rounds of {COST_SECONDS:g} s each ...", flush=True)
        try:
            runs = profile_cost(tmp, name, worker_args, notes)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            notes.append(f"fig 15 {name} failed: {exc}")
            continue
        off = statistics.median(per_request(r, "workers") for r in runs["off"])
        on = statistics.median(per_request(r, "workers") for r in runs["on"])
        cost = (on / off - 1) * 100
        rows.append((f"15a. workers' CPU/request, {name}: profiled vs not", f"{on * 1e6:.1f} us", f"{off * 1e6:.1f} us",
                     f"{cost:+.1f}%", f"<= +{PPROF_TARGET:g}%", "PASS" if cost <= PPROF_TARGET else "FAIL"))
        for mode in ("off", "on"):
            details.append(f"15 {name} {'profiled' if mode == 'on' else 'not profiled'}, every round "
                           "(workers us/request; whole server us/request; req/s got): "
                           + " | ".join(f"{per_request(r, 'workers') * 1e6:.1f}; {per_request(r) * 1e6:.1f}; "
                                        f"{r['rps']:,.0f}" for r in runs[mode]))
    print("[15] the SIGPROF handler's cost per sample, 20-frame stack ...", flush=True)
    try:
        cost_b = handler_cost()
        rows.append(("15b. SIGPROF handler, direct call, stack seen before", f"{cost_b['seen']:.2f} us", "", "",
                     "(info)", ""))
        rows.append(("15b. SIGPROF handler, direct call, new stack", f"{cost_b['new']:.2f} us", "", "", "(info)", ""))
        rows.append(("15b. SIGPROF delivered, per sample (1 kHz timer)", f"{cost_b['delivered']:.2f} us", "", "",
                     "(info)", ""))
        details.append(f"15b delivered: {cost_b['delivered_calls']} handler calls in the fastest profiled run; "
                       "every round (ms of CPU not profiled, profiled; handler calls): "
                       + " | ".join(f"{a}, {b}; {n}" for a, b, n in cost_b["delivered_runs"]))
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        notes.append(f"fig 15b failed: {exc}")
    return rows, details
