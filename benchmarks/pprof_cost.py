"""Figure 15: what a running CPU profile costs (issue 15), CPU time from /proc, not req/s.

**15a.** CPU seconds per request of the workers, at a fixed request rate (``wrk -t1`` paced by
``pace.lua``, as figure 11), with a 100 Hz CPU profile running (``/debug/pprof/profile`` over the whole
round, ending after its CPU is read: ``PROFILE_TAIL``) against none, for each worker class (sync: SIGPROF
in the main thread; gthread: each thread's own SIGPROF, ``profiling/thread_signals.py``). gthread servers
run one worker each, at 1,000 req/s (``GTHREAD_WORKERS``: how a round split the keep-alive connections
between two workers set its CPU per request).
Two identical "on" servers are driven at the same time in every round and one of them is profiled
(a, b, b, a, ...), so a busy spell of the shared machine hits both sides of a round (rounds in turn
on one server varied by +-15 % on this 2-core machine shared with other work, far more than the
2 % measured); every round is printed with its ratio, and the figure is the median of the rounds'
profiled/not ratios. A profile's end (the stop, the encoding, the reply) is a cost per profile: its row gives
the workers' CPU from the round's read until the profile is back, beyond the other server's over that time.

A third flavour, gthread with ``pprof_cpu_mode="sampler"`` (the CPU-paced sampler thread, as where
``_threadprof`` is not built), is for information. For both gthread flavours the profiles' comments
give what the profiler itself spent: the handlers' time and samples, the drain's or the sampler
thread's wakes and own CPU.

**15b.** The SIGPROF handler's cost per sample with a 20-frame stack, in a fresh interpreter: (i) the
Python handler called directly (CPU per call: capture, the clock read, the count), for a stack seen
before and for a new one; (ii) delivered for real: a CPU-bound loop under a 1,000 Hz timer against
none, the extra CPU of the fastest run of each side divided by the handler calls (kernel delivery,
CPython's trip, the handler). A CPU-clock timer fires on the scheduler tick, so at 1 kHz the handler
runs at most CONFIG_HZ times a second, each call weighted by the expirations it stands for.

The C handler of the threads that sample themselves (``thread_signals``) is timed by its own clock: its
time per sample is in 15a (in the workers) and 15c. Its kernel delivery is not measured apart: a timer on a
thread's CPU clock fires at most CONFIG_HZ times a second, too few for a loop's CPU to show the difference on
this machine, and a flood of ``kill`` from another process measured the cross-CPU interrupt instead (some
140 us a signal here, against 3.6 us in the handler).

**15c.** The threaded CPU profilers, in a fresh interpreter: two request threads, each
~1/3 busy (Python work, then a sleep), unprofiled, profiled by the sampler woken every 1/100 s of wall
time (its fallback), by the sampler woken after every 1/100 s of CPU of a sampled thread
(``CpuPacer``) with its tick in C (``hotpath.cpu_wake``) and in Python, and by the threads themselves
(``thread_signals``: samples, handler time, the drain's wakes), rounds of 2 s in rotating
order: the sampler's wakes a second and its own thread's CPU per wake (exact: its thread's CPU clock;
most of it is the kernel's: the wake from ``sigtimedwait`` and the wait for the GIL, two context
switches), and, in the details, the process's CPU per request against
the unprofiled run of the same round (median ratio; too noisy on a shared machine to resolve a few %).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

from .cost import median_interval, paced_round, per_request
from .cpu import server_cpu
from .servers import Server, free_ports, http_get
from .settings import COST_RATE, COST_SECONDS, COST_SETTLE_SECONDS, COST_WARMUP_SECONDS, ROOT, SERVER_WORKERS

PROFILE_ROUNDS = 8  # pairs of rounds: 16 rounds, each server profiled in half of them (ABBA)
# gthread's rounds spread wider than sync's (0.98-1.06 against 0.99-1.07 for two workers, with the GIL between
# four request threads; GTHREAD_WORKERS), so its median takes twice the rounds
GTHREAD_ROUNDS = 16
PROFILE_HZ = 100
PPROF_TARGET = 2.0  # % more CPU per request with a profile running
# s the profile runs past the round's wrk: it ends after the round's CPU is read (COST_SETTLE_SECONDS after
# wrk, the profile having started 0.3 s before it), so a round measures a running profile. Its end (the
# stop, the encoding of every stack, the reply) is a cost per profile, not per request, and is measured
# apart (3.6 ms of gthread's worker CPU a 5.5-s profile here, 6.2 ms for sync's two workers).
PROFILE_TAIL = 2.5
GTHREAD = ("-k", "gthread", "--threads", "4")
# gthread keeps wrk's 8 keep-alive connections where it accepted them, and a round's split of them between
# two workers set its CPU per request: rounds of the same pair spread 0.91-1.18 (2 workers at 1,500 req/s)
# against 0.98-1.06 with one worker each, driven at 1,000 req/s (0.6 of a core)
GTHREAD_WORKERS, GTHREAD_RATE = 1, 1000
# (name, gunicorn's worker arguments, more environment, pairs of rounds, workers, req/s): the last is the
# sampler thread that gthread workers used before their threads sampled themselves, and still use where
# _threadprof is not built
FLAVOURS = (("sync", ("-k", "sync"), {}, PROFILE_ROUNDS, SERVER_WORKERS, COST_RATE),
            ("gthread", GTHREAD, {}, GTHREAD_ROUNDS, GTHREAD_WORKERS, GTHREAD_RATE),
            ("gthread, sampler thread", GTHREAD, {"ROCKSTAR_PPROF_CPU_MODE": "sampler"}, PROFILE_ROUNDS,
             GTHREAD_WORKERS, GTHREAD_RATE))
FIGURES = ("15",)


# -- 15a ------------------------------------------------------------------------------------------------
def profiled_round(servers: dict[str, Server], ports: dict[str, int], profiled: str, first: str,
                   seconds: float, rate: int = COST_RATE) -> dict[str, dict]:
    """One paced round of both servers at once, a CPU profile of every worker of ``profiled`` covering it
    (still running when the round's CPU is read: ``PROFILE_TAIL``). Then, until the profile is back and
    ``COST_SETTLE_SECONDS`` after, each server's CPU by role as ``end_cpu``: the profile's end (its idle
    tail, the stop, the encoding, the reply) on the profiled one, the same idle time on the other."""
    url = f"http://127.0.0.1:{ports[profiled]}/debug/pprof/profile?seconds={seconds + PROFILE_TAIL:g}"
    fetched: dict = {}
    fetcher = threading.Thread(target=lambda: fetched.update(r=http_get(url, timeout=seconds + 60)))
    fetcher.start()
    time.sleep(0.3)  # a measured offset, not a synchronisation: the workers' samplers are running
    results = paced_round(servers, seconds, first, rate)
    ended = {side: server_cpu(server.proc.pid) for side, server in servers.items()}
    fetcher.join()
    time.sleep(COST_SETTLE_SECONDS)  # a measured interval, as in paced_round: the reply's last work is in
    for side, server in servers.items():
        results[side]["end_cpu"] = server_cpu(server.proc.pid).since(ended[side])
    if fetched.get("r", (0,))[0] != 200:
        raise RuntimeError(f"the CPU profile failed: {fetched.get('r')}")
    comments = profile_comments(fetched["r"][2])
    results[profiled]["sampler"] = sampler_cost(comments)
    results[profiled]["sampler_in_c"] = any("(its ticks in C)" in c for c in comments)
    return results


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def profile_comments(body: bytes) -> list[str]:
    """The ``comment`` strings of a (gzipped) pprof profile: fields 6 (string_table) and 13 (comment)."""
    data = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    strings: list[str] = []
    indices: list[int] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if field == 13:
                indices.append(value)
        elif wire == 2:
            length, pos = _varint(data, pos)
            chunk, pos = data[pos:pos + length], pos + length
            if field == 6:
                strings.append(chunk.decode("utf-8", "replace"))
            elif field == 13:  # packed indices
                at = 0
                while at < len(chunk):
                    value, at = _varint(chunk, at)
                    indices.append(value)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return [strings[i] for i in indices if i < len(strings)]


def ticked_in_c(rounds: list[dict]) -> bool:
    """Did the workers' thread samplers tick in C (``hotpath.cpu_wake``), by their profiles' comments?"""
    return any(r["on"].get("sampler_in_c") for r in rounds)


def sampler_cost(comments: list[str]) -> dict | None:
    """What the workers' threaded CPU profilers said they cost, summed over the workers' profile comments:
    ``{"wakes", "own_ms"}`` (the sampler or drain thread), and ``{"samples", "handler_ms"}`` where the
    threads sampled themselves; None for SIGPROF profiles of the main thread."""
    found = [re.search(r"the (?:sampler|drain): (\d+) wakes, ([\d.]+) ms of its own CPU", c) for c in comments]
    found = [m for m in found if m]
    if not found:
        return None
    handlers = [m for m in (re.search(r"(\d+) samples(?: \([^)]*\))?, their handlers ([\d.]+) ms in all", c)
                            for c in comments) if m]
    return {"wakes": sum(int(m.group(1)) for m in found), "own_ms": sum(float(m.group(2)) for m in found),
            "samples": sum(int(m.group(1)) for m in handlers), "handler_ms": sum(float(m.group(2)) for m in handlers)}


def profile_cost(tmp: str, name: str, worker_args: tuple, notes: list[str], more_env: dict | None = None,
                 pairs: int = PROFILE_ROUNDS, workers: int = SERVER_WORKERS, rate: int = COST_RATE) -> list[dict]:
    """Every round of one worker class: ``[{"on": run, "off": run, "profiled": "a" or "b"}, ...]``.
    Two identical servers are driven at the same time in every round, one of them profiled (a, b, b,
    a, ...): a busy spell of the shared machine hits both sides of a round, and each server is the
    profiled one in half the rounds."""
    servers: dict[str, Server] = {}
    ports: dict[str, int] = {}
    rounds: list[dict] = []
    try:
        for side in ("a", "b"):
            ports[side] = free_ports(1)[0]
            env = {**(more_env or {}), "ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(ports[side]),
                   "ROCKSTAR_PPROF_HZ": str(PROFILE_HZ)}
            servers[side] = Server("on", tmp, len(os.listdir(tmp)), worker_args=worker_args, workers=workers,
                                   env=env)
        for server in servers.values():
            server.wait_ready()
        paced_round(servers, COST_WARMUP_SECONDS, "a", rate)
        for number in range(pairs * 2):
            profiled = "a" if number % 4 in (0, 3) else "b"
            other = "b" if profiled == "a" else "a"
            results = profiled_round(servers, ports, profiled, ("a", "b")[number % 2], COST_SECONDS, rate)
            for side, result in results.items():
                if result["errors"] or result["non2xx"]:
                    notes.append(f"fig 15 {name} round {number + 1} server {side}: wrk saw {result['errors']} "
                                 f"socket errors, {result['non2xx']} non-2xx responses")
            rounds.append({"on": results[profiled], "off": results[other], "profiled": profiled})
    finally:
        for server in servers.values():
            notes.extend(server.stop())
    return rounds


def profiler_rows(name: str, own: list[tuple[dict, int, float]], in_c: bool, workers: int) -> list[tuple]:
    """15a's rows on what the threaded profilers said they cost: ``own`` is ``[(sampler_cost, requests,
    seconds), ...]`` of the profiled rounds."""
    per_request = statistics.median((c["own_ms"] + c["handler_ms"]) * 1000 / max(n, 1) for c, n, _ in own)
    rows = [(f"15a. {name}: the profiler's own CPU per request (profile comments)", f"{per_request:.1f} us", "",
             "handlers + drain" if own[0][0]["samples"] else "sampler thread", "(info)", "")]
    if own[0][0]["samples"]:
        rows.append((f"15a. {name}: per sample, the SIGPROF handler in the sampled thread",
                     f"{statistics.median(c['handler_ms'] * 1000 / max(c['samples'], 1) for c, _, _ in own):.1f} us",
                     "", f"{statistics.median(c['samples'] / t / workers for c, _, t in own):.0f} samples/s "
                     "a worker", "(info)", ""))
        per_wake = statistics.median(c["own_ms"] * 1000 / max(c["wakes"], 1) for c, _, _ in own)
        rows.append((f"15a. {name}: the drain thread, per wake", f"{per_wake:.0f} us",
                     "", f"{statistics.median(c['wakes'] / t / workers for c, _, t in own):.0f} wakes/s a "
                     "worker", "(info)", ""))
    else:
        rows.append((f"15a. {name}: the sampler thread's own CPU per sample (wake), in the workers",
                     f"{statistics.median(c['own_ms'] * 1000 / max(c['wakes'], 1) for c, _, _ in own):.0f} us", "",
                     f"{statistics.median(c['wakes'] / t / workers for c, _, t in own):.0f} wakes/s a worker, "
                     + ("in C" if in_c else "in Python"), "(info)", ""))
    return rows


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
    return child_result(HANDLER_CHILD, "handler")


SAMPLER_CHILD = r"""
import json, statistics, sys, threading, time
from rockstar_mp.profiling import samplers, thread_signals

THREADS, WORK, NAP, SECONDS, ROUNDS = 2, 6000, 0.0005, 2.0, 7

class NoTimers:  # the thread sampler's fallback: woken every 1/hz s of wall time
    FALLBACK = samplers.CpuPacer.FALLBACK
    def __init__(self, hz):
        raise OSError("wall pacing asked for")

def request():
    x = 0
    for i in range(WORK):
        x += i

def serve(stop, done, k):
    while not stop.is_set():
        request()
        done[k] += 1
        time.sleep(NAP)

def load(mode):
    # THREADS request threads (each ~1/3 busy) for SECONDS, profiled by the thread sampler, by themselves, or not
    samplers.CpuPacer = NoTimers if mode == "wall" else PACER
    samplers.cpu_wake = (lambda: None) if mode == "cpu-python" else (lambda: WAKE)
    stop, done = threading.Event(), [0] * THREADS
    sampler = thread_signals.SignalThreadSampler(100) if mode == "signals" else samplers.ThreadSampler(100, cpu=True)
    threads = [threading.Thread(target=serve, args=(stop, done, k)) for k in range(THREADS)]
    own = [0]

    def sample():  # the sampler, and the CPU time of its own thread
        start = time.thread_time_ns()
        sampler.run(SECONDS * 10, stop)
        own[0] = time.thread_time_ns() - start
    if mode != "off":
        threads.append(threading.Thread(target=sample))
    start = time.process_time_ns()
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join()
    counts = getattr(sampler, "counts", {}) if mode != "off" else {}
    return ((time.process_time_ns() - start) / sum(done), sampler.wakes, own[0], counts.get("samples", 0),
            counts.get("handler_ns", 0))

assert samplers.install_signal_handler()  # the threads' own sampling takes SIGPROF over from it
PACER, WAKE = samplers.CpuPacer, samplers.cpu_wake()  # (the accelerator imported here, not in a round)
MODES = ("off", "wall", "cpu", "cpu-python", "signals")
load("off")
rounds = []
for number in range(ROUNDS):
    modes = MODES[number % len(MODES):] + MODES[:number % len(MODES)]
    rounds.append({mode: load(mode) for mode in modes})
out = {mode: {"ratio": statistics.median(r[mode][0] / r["off"][0] for r in rounds),
              "wakes": statistics.median(r[mode][1] for r in rounds) / SECONDS,
              "own_us": statistics.median(r[mode][2] / max(r[mode][1], 1) for r in rounds) / 1000,
              "samples": statistics.median(r[mode][3] for r in rounds) / SECONDS,
              "handler_us": statistics.median(r[mode][4] / max(r[mode][3], 1) for r in rounds) / 1000}
       for mode in MODES[1:]}
out["accelerated"] = WAKE is not None
out["off_ns"] = statistics.median(r["off"][0] for r in rounds)
out["rounds"] = [{mode: [round(ns / 1000, 1), wakes, round(own / 1e6, 1)] for mode, (ns, wakes, own, _, _) in r.items()}
                 for r in rounds]
print("RESULT " + json.dumps(out))
"""


def child_result(code: str, what: str) -> dict:
    """The ``RESULT`` JSON a fresh interpreter running ``code`` prints."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the {what} benchmark failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# -- the figure -------------------------------------------------------------------------------------------
def run_figures(tmp: str, figs: list[str], notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figure 15: ``(table rows, detail lines)``."""
    rows: list[tuple] = []
    details: list[str] = []
    if "15" not in figs:
        return rows, details
    for name, worker_args, more_env, pairs, workers, rate in FLAVOURS:
        print(f"[15] {name}: workers' CPU per request at {rate:,} req/s to {workers} worker(s), {PROFILE_HZ} Hz CPU "
              f"profile running or not, two servers at once, one profiled, {pairs * 2} rounds of {COST_SECONDS:g} s "
              "each ...", flush=True)
        try:
            rounds = profile_cost(tmp, name, worker_args, notes, more_env, pairs, workers, rate)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            notes.append(f"fig 15 {name} failed: {exc}")
            continue
        on = statistics.median(per_request(r["on"], "workers") for r in rounds)
        off = statistics.median(per_request(r["off"], "workers") for r in rounds)
        ratios = [per_request(r["on"], "workers") / per_request(r["off"], "workers") for r in rounds]
        cost = (statistics.median(ratios) - 1) * 100
        low, high, coverage = median_interval(ratios)
        target, verdict = (f"<= +{PPROF_TARGET:g}%", "PASS" if cost <= PPROF_TARGET else "FAIL") if not more_env \
            else ("(info)", "")
        rows.append((f"15a. workers' CPU/request, {name}: profiled vs not", f"{on * 1e6:.1f} us", f"{off * 1e6:.1f} us",
                     f"{cost:+.1f}% ({(low - 1) * 100:+.1f}..{(high - 1) * 100:+.1f})", target, verdict))
        details.append(f"15 {name}: the median's interval, {coverage * 100:.1f} % coverage over {len(ratios)} rounds: "
                       f"{(low - 1) * 100:+.1f}..{(high - 1) * 100:+.1f} %")
        ends = [(r["on"]["end_cpu"]["workers"] - r["off"]["end_cpu"]["workers"]) * 1000 for r in rounds]
        rows.append((f"15a. {name}: a profile's end (stop, encoding, reply), workers' CPU",
                     f"{statistics.median(ends):.1f} ms", "", "a profile, beyond the idle server's", "(info)", ""))
        details.append(f"15 {name}, a profile's end, every round (ms of workers' CPU, profiled server minus the "
                       "other): " + ", ".join(f"{e:.1f}" for e in ends))
        own = [(r["on"]["sampler"], r["on"]["requests"], r["on"]["window"]) for r in rounds if r["on"].get("sampler")]
        if own:
            rows.extend(profiler_rows(name, own, ticked_in_c(rounds), workers))
            details.append(f"15 {name}, the profilers' own cost, every profiled round (samples, handlers' ms; wakes, "
                           "the sampler or drain thread's ms; requests): "
                           + " | ".join(f"{c['samples']}, {c['handler_ms']:.1f}; {c['wakes']}, {c['own_ms']:.1f}; {n}"
                                        for c, n, _ in own))
        details.append(f"15 {name}, every round (profiled server; workers us/request profiled, not; ratio; "
                       "req/s got profiled, not): "
                       + " | ".join(f"{r['profiled']}; {per_request(r['on'], 'workers') * 1e6:.1f}, "
                                    f"{per_request(r['off'], 'workers') * 1e6:.1f}; {ratio:.3f}; "
                                    f"{r['on']['rps']:,.0f}, {r['off']['rps']:,.0f}"
                                    for r, ratio in zip(rounds, ratios, strict=True)))
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
    print("[15] the thread sampler's cost, paced by wall or by CPU time ...", flush=True)
    try:
        cost_c = child_result(SAMPLER_CHILD, "thread sampler")
        for mode, what in (("wall", "every 1/100 s of wall time"),
                           ("cpu", "per 1/100 s of CPU (CpuPacer), ticks in C" if cost_c["accelerated"] else
                            "per 1/100 s of CPU (CpuPacer), no C accelerator: ticks in Python"),
                           ("cpu-python", "per 1/100 s of CPU (CpuPacer), ticks in Python")):
            c = cost_c[mode]
            rows.append((f"15c. thread sampler woken {what}", f"{c['wakes'] * c['own_us'] / 1000:.1f} ms/s own",
                         f"{c['wakes']:.0f} wakes/s", f"{c['own_us']:.1f} us own CPU/wake", "(info)", ""))
        c = cost_c["signals"]
        rows.append(("15c. threads sampling themselves (SIGPROF handler), 1/100 s of each one's CPU",
                     f"{(c['wakes'] * c['own_us'] + c['samples'] * c['handler_us']) / 1000:.1f} ms/s own",
                     f"{c['samples']:.0f} samples/s", f"{c['handler_us']:.1f} us a handler, drain "
                     f"{c['own_us']:.0f} us x {c['wakes']:.0f}/s", "(info)", ""))
        details.append("15c process CPU per request against unprofiled, median of the rounds (noisy: +-25 % "
                       f"round to round here): woken by wall time {cost_c['wall']['ratio'] * 100 - 100:+.1f}%, "
                       f"by CPU time {cost_c['cpu']['ratio'] * 100 - 100:+.1f}% (ticks in Python "
                       f"{cost_c['cpu-python']['ratio'] * 100 - 100:+.1f}%), sampled by the threads themselves "
                       f"{cost_c['signals']['ratio'] * 100 - 100:+.1f}%, unprofiled "
                       f"{cost_c['off_ns'] / 1000:.1f} us/request")
        details.append("15c every round (per mode: us of process CPU per request, sampler wakes, ms of the sampler "
                       "thread's own CPU): "
                       + " | ".join("; ".join(f"{mode} {' '.join(map(str, r[mode]))}"
                                              for mode in ("off", "wall", "cpu", "cpu-python", "signals"))
                                   for r in cost_c["rounds"]))
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        notes.append(f"fig 15c failed: {exc}")
    return rows, details
