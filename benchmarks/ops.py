"""Figures 8-10: operations on a real gunicorn (SNMP agent, GC optimization, rate limit).

    .venv/bin/python -m benchmarks.run --only 8,9,10      (just these; ``make bench`` runs them last)

Every server is a real gunicorn under ``gunicorn_conf.py`` in its own session, started and stopped by
``benchmarks.servers.Server`` (SIGTERM, wait, check the process group). The machine may be shared, so the
timings are best-of-N (said per figure). These are reports, not assertions.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .servers import Server, child_env, free_ports, http_once
from .settings import ROOT

BASE = "1.3.6.1.4.1.8072.9999.9999"  # mibdef.DEFAULT_BASE
RECORDS_TABLE = BASE + ".1.5"  # rsmpRecordTable (its entry, rsmpRecordEntry, is .1.5.1)
SCALAR = BASE + ".1.1.4.0"  # rsmpTotalRequests.0
RECORDS = 1_000
WALK_RUNS = 5
WALK_TARGET = 0.3  # s
GET_SECONDS = 2.0
GET_RUNS = 3
GET_TARGET = 2_000  # /s
HTTP_REQUESTS = 200
HTTP_ROUNDS = 3
HTTP_MAX_TARGET = 50.0  # ms
V3_USER = ("bench", "bench-auth-key-1", "bench-priv-key-1")  # SHA / AES
V3_WALK_RUNS = 3
V3_TARGET = 0.5  # our values/s over snmpd's
SNMPD_VIEW = (".1.3.6.1.2.1.1", ".1.3.6.1.2.1.2", ".1.3.6.1.2.1.25", ".1.3.6.1.2.1.31")
GC_WORKERS = 4
USS_RUNS = 10  # figure 9c: fresh servers per mode
USS_LOAD = 400  # requests before the first optimization
USS_MARGIN = 256 * 1024  # bytes: a worker's USS after an optimization at most this above before
USS_ROUNDS = ("post", "usr1", "post")  # POST /optimize, USR1 to the master, POST again
FRAGMENT_MB = 200
RESPAWNS = 20  # figure 9e: worker forks under --max-requests 1
RATE_REQUESTS = 300
RATE_BURST = 1_000
RATE_ROUNDS = 3
RATE_TARGET = 1.10  # loaded p50 / unloaded p50


class OpsServer(Server):
    """``Server`` ("on" mode: stop and wait_ready inherited) with a chosen app, worker count, extra
    gunicorn arguments and ROCKSTAR_* settings."""

    def __init__(self, tmp: str, name: str, env_extra: dict, app: str = "examples.app:app",
                 workers: int = 2, args: tuple = ()) -> None:
        self.mode = "on"
        self.port, self.metrics_port = free_ports(2)
        self._launch(["-c", "gunicorn_conf.py", *args, app], dict(self._monitored_env(tmp, workers), **env_extra),
                     tmp, name)

    def mget(self, path: str, headers: dict | None = None, timeout: float = 10.0):
        req = urllib.request.Request(f"http://127.0.0.1:{self.metrics_port}{path}", headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))]


# ---------------------------------------------------------------- a minimal SNMPv2c GET (raw BER)
def _tlv(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return bytes([tag, n]) + payload
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + payload


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.strip(".").split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for n in parts[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def v2c_get(community: str, oid: str, request_id: int = 7) -> bytes:
    varbind = _tlv(0x30, _oid(oid) + b"\x05\x00")
    pdu = _tlv(0xA0, _tlv(0x02, bytes([request_id])) + b"\x02\x01\x00\x02\x01\x00" + _tlv(0x30, varbind))
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, community.encode()) + pdu)


def get_rate(port: int, community: str = "public") -> tuple[float, bytes]:
    """GETs of one scalar, one outstanding at a time (same request, fixed id), for GET_SECONDS."""
    req = v2c_get(community, SCALAR)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.connect(("127.0.0.1", port))
    try:
        s.send(req)
        first = s.recv(4096)  # warm-up, and a response to check
        n = 0
        t = time.perf_counter()
        while time.perf_counter() - t < GET_SECONDS:
            s.send(req)
            s.recv(4096)
            n += 1
        return n / (time.perf_counter() - t), first
    finally:
        s.close()


def bulkwalk(port: int, oid: str, community: str = "public") -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run(["snmpbulkwalk", "-v2c", "-c", community, "-Cr50", "-On",
                           f"127.0.0.1:{port}", oid], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    return elapsed, proc.stdout.count("\n"), proc.stderr.strip()


# ---------------------------------------------------------------- figure 8: SNMP
def fig8(tmp: str, rows: list, notes: list) -> None:
    snmp_port = free_udp_port()
    server = OpsServer(tmp, "snmp", {"ROCKSTAR_ENABLE_SNMP": "1", "ROCKSTAR_SNMP_PORT": str(snmp_port),
                                     "ROCKSTAR_RECENT_RECORDS": str(RECORDS),
                                     "ROCKSTAR_SNMP_USERS": "{}:SHA:{}:AES:{}".format(*V3_USER)})
    try:
        server.wait_ready()
        # load: 1,000+ requests, until /snmp holds 1,000 records
        deadline = time.monotonic() + 60
        have = 0
        while time.monotonic() < deadline:
            subprocess.run(["wrk", "-t1", "-c4", "-d1s", server.url], capture_output=True, timeout=30)
            body = server.mget(f"/snmp?limit={RECORDS}", {"X-SNMP-Community": "public"})
            have = len(body["workload_metrics"])
            if have >= RECORDS:
                break
        if have < RECORDS:
            notes.append(f"fig 8: /snmp held only {have} records after 60 s of load")
        # wait for the agent to answer
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, lines, err = bulkwalk(snmp_port, BASE + ".1.1")
            if lines:
                break
            time.sleep(0.2)
        # (a) walk of the records table
        walks = [bulkwalk(snmp_port, RECORDS_TABLE) for _ in range(WALK_RUNS)]
        best = min(w[0] for w in walks)
        varbinds = walks[-1][1]
        if varbinds < RECORDS:
            notes.append(f"fig 8a: the walk returned {varbinds} varbinds ({walks[-1][2][:200]})")
        rows.append(("8a. snmpbulkwalk -Cr50 records table", f"{best:.3f} s",
                     f"<= {WALK_TARGET} s", "PASS" if best <= WALK_TARGET else "FAIL",
                     f"{varbinds:,} varbinds ({varbinds // 9 if varbinds else 0} rows x 9 cols); best of "
                     f"{WALK_RUNS}, median {statistics.median(w[0] for w in walks):.3f} s"))
        # (b) GETs per second
        rates = []
        for _ in range(GET_RUNS):
            rate, first = get_rate(snmp_port)
            rates.append(rate)
        oid = _oid(SCALAR)
        value = first[first.find(oid) + len(oid):] if oid in first else b""  # the value's TLV
        ok = (b"\xa2" in first and b"\x02\x01\x07\x02\x01\x00\x02\x01\x00" in first
              and value[:1] not in (b"", b"\x05", b"\x80", b"\x81", b"\x82"))
        if not ok:
            notes.append(f"fig 8b: the GET answer is not a Response-PDU with a value: {first.hex()}")
        rows.append(("8b. v2c GET of one scalar, sequential", f"{max(rates):,.0f}/s",
                     f">= {GET_TARGET:,}/s", "PASS" if max(rates) >= GET_TARGET else "FAIL",
                     f"raw UDP, 1 outstanding, {GET_SECONDS:g} s runs; best of {GET_RUNS}: "
                     + " / ".join(f"{r:,.0f}" for r in rates)))
        # (c) /metrics latency while walks of the whole agent run in a loop
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        idle = [http_once(url)[0] * 1000 for _ in range(50)]
        stop = threading.Event()
        walks_done = [0]

        def walker():
            while not stop.is_set():
                bulkwalk(snmp_port, ".1")
                walks_done[0] += 1

        th = threading.Thread(target=walker, daemon=True)
        th.start()
        time.sleep(0.2)
        rounds = []  # HTTP_ROUNDS x HTTP_REQUESTS, the walks looping throughout
        for _ in range(HTTP_ROUNDS):
            busy = []
            for _ in range(HTTP_REQUESTS):
                busy.append(http_once(url)[0] * 1000)
                time.sleep(0.005)
            rounds.append(busy)
        stop.set()
        th.join(60)
        busy = min(rounds, key=max)  # the round with the lowest max
        mx = max(busy)
        rows.append(("8c. GET /metrics during whole-agent walks", f"max {mx:.1f} ms",
                     f"max < {HTTP_MAX_TARGET:g} ms", "PASS" if mx < HTTP_MAX_TARGET else "FAIL",
                     f"best of {HTTP_ROUNDS} rounds of {HTTP_REQUESTS} (new connection each): p50 "
                     f"{pct(busy, .5):.1f} / p99 {pct(busy, .99):.1f} ms; max of each round "
                     + " / ".join(f"{max(r):.1f}" for r in rounds) + f"; {walks_done[0]} walks meanwhile; "
                     f"idle p50 {pct(idle, .5):.1f} max {max(idle):.1f} ms"))
        fig8d(tmp, snmp_port, rows, notes)
    finally:
        notes.extend(server.stop())


def v3_walk(port: int) -> tuple[float, int]:
    """(seconds, values) of an SNMPv3 authPriv snmpbulkwalk of everything the agent at ``port`` serves."""
    user, auth, priv = V3_USER
    t = time.perf_counter()
    proc = subprocess.run(["snmpbulkwalk", "-v3", "-l", "authPriv", "-u", user, "-a", "SHA", "-A", auth, "-x", "AES",
                           "-X", priv, "-m", "", "-On", f"udp:127.0.0.1:{port}", ".1"],
                          capture_output=True, text=True, timeout=120)
    return time.perf_counter() - t, proc.stdout.count("\n")


def start_snmpd(tmp: str) -> tuple[subprocess.Popen, int] | None:
    """net-snmp's snmpd on a free loopback port: its own MIB-II (the tables that hold still during a
    walk) and the same v3 user. None if snmpd is not installed (Debian package snmpd)."""
    snmpd = next((p for p in ("/usr/sbin/snmpd", "/usr/bin/snmpd") if os.access(p, os.X_OK)), None)
    if snmpd is None:
        return None
    port = free_udp_port()
    conf = os.path.join(tmp, "snmpd.conf")
    user, auth, priv = V3_USER
    with open(conf, "w") as f:
        f.write(f"agentaddress udp:127.0.0.1:{port}\n" + "".join(f"view mib2 included {v}\n" for v in SNMPD_VIEW)
                + f"createUser {user} SHA {auth} AES {priv}\nrouser {user} priv -V mib2\n")
    persist = os.path.join(tmp, "snmpd-persist")
    os.makedirs(persist, exist_ok=True)
    proc = subprocess.Popen([snmpd, "-f", "-Lf", os.path.join(tmp, "snmpd.log"), "-C", "-c", conf, "-m", ""],
                            env=dict(os.environ, SNMP_PERSISTENT_DIR=persist),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and v3_walk(port)[1] == 0:
        time.sleep(0.2)
    return proc, port


def fig8d(tmp: str, snmp_port: int, rows: list, notes: list) -> None:
    """(d) the same SNMPv3 authPriv bulkwalk of the whole tree, ours against snmpd, interleaved."""
    started = start_snmpd(tmp)
    if started is None:
        notes.append("fig 8d: snmpd is not installed (Debian: apt-get install snmpd)")
        return
    proc, snmpd_port = started
    try:
        rates, sizes = {"ours": [], "snmpd": []}, {}
        for _ in range(V3_WALK_RUNS):
            for name, port in (("snmpd", snmpd_port), ("ours", snmp_port)):
                elapsed, count = v3_walk(port)
                rates[name].append(count / elapsed)
                sizes[name] = count
    finally:
        proc.terminate()
        proc.wait(10)
    ours, theirs = max(rates["ours"]), max(rates["snmpd"])
    ratio = ours / theirs if theirs else 0.0
    rows.append(("8d. v3 authPriv snmpbulkwalk, ours vs snmpd", f"{ours:,.0f} vs {theirs:,.0f} values/s",
                 f">= {V3_TARGET:g} x snmpd", "PASS" if ratio >= V3_TARGET else "FAIL",
                 f"x{ratio:.2f}; SHA/AES, default -Cr10, {sizes['ours']:,} vs {sizes['snmpd']:,} values; best of "
                 f"{V3_WALK_RUNS} interleaved: ours " + " / ".join(f"{r:,.0f}" for r in rates["ours"])
                 + ", snmpd " + " / ".join(f"{r:,.0f}" for r in rates["snmpd"])))


# ---------------------------------------------------------------- figure 9: GC
def _optimize_all(server: OpsServer, pids: list[int], timeout: float = 60.0) -> dict:
    """Poll /optimize/stats until every pid in ``pids`` has optimization_count == 1."""
    deadline = time.monotonic() + timeout
    while True:
        stats = {w["pid"]: w for w in server.mget("/optimize/stats")["workers"]}
        if all(stats.get(p, {}).get("optimization_count", 0) >= 1 for p in pids):
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"optimization not seen for every worker: {stats}")
        time.sleep(0.1)


def _workers(server: OpsServer, n: int, timeout: float = 60.0) -> list[int]:
    """The pids of ``n`` workers of the master, each of which has served a request.

    A worker is in ``/workers`` from ``post_fork`` on, but it installs its SIGUSR1 handler only in
    ``post_worker_init``, once it has loaded the app: a USR1 that comes before that (a slow start on a
    loaded machine) is gunicorn's alone (log files reopened, no collection), and that worker never
    optimizes. A worker that has served a request is past ``post_worker_init``."""
    import psutil

    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(2 * n) as pool:
        while True:
            list(pool.map(lambda _: http_once(server.url), range(2 * n)))  # concurrent: idle workers take them
            master_children = {c.pid for c in psutil.Process(server.proc.pid).children()}
            served = [w["pid"] for w in server.mget("/workers")["workers"]
                      if w["pid"] in master_children and w["requests"] >= 1]
            if len(served) >= n:
                return served
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(served)} workers served a request after {timeout:.0f} s, expected {n}")
            time.sleep(0.1)


def fig9(tmp: str, rows: list, notes: list) -> None:
    import psutil

    uss = {}
    for freeze in ("0", "1"):
        server = OpsServer(tmp, f"gc-freeze-{freeze}", {"ROCKSTAR_GC_FREEZE_BEFORE_FORK": freeze},
                           app="tests.apps.preloaded:app", workers=2, args=("--preload",))
        try:
            server.wait_ready()
            pids = _workers(server, 2)
            for pid in pids:
                os.kill(pid, signal.SIGUSR1)
            _optimize_all(server, pids)
            time.sleep(0.2)
            uss[freeze] = sum(psutil.Process(p).memory_full_info().uss for p in pids)
        finally:
            notes.extend(server.stop())
    off, on = uss["0"], uss["1"]
    saved = off - on
    mib = 1024 * 1024
    rows.append(("9a. gc_freeze_before_fork: workers' USS", f"on {on / mib:.1f} / off {off / mib:.1f} MiB",
                 "saving > 0", "PASS" if saved > 0 else "FAIL",
                 f"saving {saved / mib:.1f} MiB ({saved / off * 100:.1f}%); tests/apps/preloaded.py "
                 "--preload, 2 workers, after a USR1 full GC in each (one run each)"))

    server = OpsServer(tmp, "gc-pause", {}, workers=GC_WORKERS)
    try:
        server.wait_ready()
        pids = _workers(server, GC_WORKERS)
        os.kill(server.proc.pid, signal.SIGUSR1)
        stats = _optimize_all(server, pids)
        pauses = {p: stats[p]["last_pause_ms"] for p in pids}
        freed = {p: stats[p]["memory_freed"] for p in pids}
        uss_freed = {p: stats[p].get("uss_freed", 0) for p in pids}
        rows.append((f"9b. GC pause per worker ({GC_WORKERS} workers)", f"max {max(pauses.values()):.1f} ms",
                     "(info)", "",
                     "pause ms " + " / ".join(f"{pauses[p]:.1f}" for p in pids) + "; RSS freed KiB "
                     + " / ".join(f"{freed[p] // 1024}" for p in pids) + "; USS freed KiB "
                     + " / ".join(f"{uss_freed[p] // 1024}" for p in pids)
                     + "; USR1 to the master (one run)"))
    finally:
        notes.extend(server.stop())
    for part in (fig9c, fig9d, fig9e):
        part(tmp, rows, notes)


def _optimize_round(server: OpsServer, how: str) -> list[dict]:
    """One optimization of every worker (``POST /optimize`` or USR1 to the master); their figures."""
    before = {w["pid"]: w["optimization_count"] for w in server.mget("/optimize/stats")["workers"]}
    if how == "post":
        req = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/optimize", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
    else:
        os.kill(server.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while True:
        workers = server.mget("/optimize/stats")["workers"]
        if all(w["optimization_count"] > before.get(w["pid"], 0) for w in workers):
            return workers
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every worker optimized ({how}): {workers}")
        time.sleep(0.05)


def _uss_growth_run(tmp: str, name: str, args: tuple, notes: list) -> list[int]:
    """A fresh 4-worker example app, USS_LOAD requests, then USS_ROUNDS: the worst USS growth (bytes)
    over the workers in each round."""
    server = OpsServer(tmp, name, {"ROCKSTAR_ADMIN_OPEN": "1"}, workers=GC_WORKERS, args=args)
    try:
        server.wait_ready()
        _workers(server, GC_WORKERS)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: http_once(server.url), range(USS_LOAD)))
        return [max(w["uss_after"] - w["uss_before"] for w in _optimize_round(server, how)) for how in USS_ROUNDS]
    finally:
        notes.extend(server.stop())


def fig9c(tmp: str, rows: list, notes: list) -> None:
    for label, args in (("without preload", ()), ("with --preload", ("--preload",))):
        runs = [_uss_growth_run(tmp, f"uss-{i}-{bool(args)}", args, notes) for i in range(USS_RUNS)]
        good = sum(all(g <= USS_MARGIN for g in run) for run in runs)
        worst = max(max(run) for run in runs)
        rows.append((f"9c. optimization never raises USS, {label}",
                     f"{good}/{USS_RUNS} runs, worst {worst // 1024:+d} KiB",
                     f"{USS_RUNS}/{USS_RUNS} runs <= +256 KiB", "PASS" if good == USS_RUNS else "FAIL",
                     f"{GC_WORKERS} workers of examples.app after {USS_LOAD} requests; per run, the worst worker's "
                     "USS after - before (KiB) in rounds POST /optimize / USR1 to the master / POST: "
                     + "; ".join(" / ".join(f"{g // 1024:+d}" for g in run) for run in runs)))


def fig9d(tmp: str, rows: list, notes: list) -> None:
    figures = {}
    for trim in ("1", "0"):
        server = OpsServer(tmp, f"fragment-{trim}", {"ROCKSTAR_ADMIN_OPEN": "1", "ROCKSTAR_OPTIMIZATION_TRIM": trim},
                           app="tests.apps.memory:app", workers=1)
        try:
            server.wait_ready()
            http_once(f"{server.url}fragment?mb={FRAGMENT_MB}", timeout=120)
            [figures[trim]] = _optimize_round(server, "post")
        finally:
            notes.extend(server.stop())
    on, off = figures["1"], figures["0"]
    drop = 1 - on["rss_after"] / on["rss_before"]
    mib = 1024 * 1024
    rows.append(("9d. fragmented heap given back (malloc_trim)", f"RSS -{drop * 100:.0f}% with trim",
                 ">= 50% lower", "PASS" if drop >= 0.5 else "FAIL",
                 f"tests/apps/memory.py /fragment?mb={FRAGMENT_MB}, 1 worker, POST /optimize: with trim "
                 f"{on['rss_before'] / mib:.1f} -> {on['rss_after'] / mib:.1f} MiB, without "
                 f"{off['rss_before'] / mib:.1f} -> {off['rss_after'] / mib:.1f} MiB (one run each)"))


def _master_figures(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and USS of a process."""
    import psutil

    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return times.user + times.system, proc.memory_full_info().uss


def fig9e(tmp: str, rows: list, notes: list) -> None:
    """What gc.freeze() before each fork costs the master: its CPU and USS over RESPAWNS forks."""
    figures = {}
    for freeze in ("0", "1"):
        server = OpsServer(tmp, f"respawn-{freeze}", {"ROCKSTAR_GC_FREEZE_BEFORE_FORK": freeze},
                           app="tests.apps.preloaded:app", workers=2, args=("--preload", "--max-requests", "1"))
        try:
            server.wait_ready()
            time.sleep(0.5)
            cpu0, uss0 = _master_figures(server.proc.pid)
            for _ in range(RESPAWNS):  # each request ends its worker: the master forks another
                http_once(server.url, timeout=30)
            time.sleep(0.5)
            cpu1, uss1 = _master_figures(server.proc.pid)
            figures[freeze] = (cpu1 - cpu0, uss0, uss1)
        finally:
            notes.extend(server.stop())
    (cpu_off, *uss_off), (cpu_on, *uss_on) = figures["0"], figures["1"]
    mib = 1024 * 1024
    per_fork = (cpu_on - cpu_off) / RESPAWNS * 1000
    rows.append(("9e. gc.freeze() before each fork: cost to the master", f"{per_fork:+.2f} ms CPU a fork",
                 "(info)", "",
                 f"tests/apps/preloaded.py --preload --max-requests 1, {RESPAWNS} forks: master CPU "
                 f"{cpu_on * 1000:.0f} ms with freeze, {cpu_off * 1000:.0f} ms without (from /proc); master USS "
                 f"{uss_on[0] / mib:.1f} -> {uss_on[1] / mib:.1f} MiB with, {uss_off[0] / mib:.1f} -> "
                 f"{uss_off[1] / mib:.1f} MiB without"))


# ---------------------------------------------------------------- figure 10: rate limit
def fig10(tmp: str, rows: list, notes: list) -> None:
    server = OpsServer(tmp, "ratelimit", {"ROCKSTAR_RATE_LIMIT": "50", "ROCKSTAR_RATE_LIMIT_BURST": "100"})
    try:
        server.wait_ready()
        app_url = server.url
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        for _ in range(50):
            http_once(app_url)
        unloaded, loaded, counts = [], [], []
        for _ in range(RATE_ROUNDS):
            lat = [http_once(app_url)[0] * 1000 for _ in range(RATE_REQUESTS)]
            unloaded.append(statistics.median(lat))
            time.sleep(2.5)  # let the bucket refill (burst 100 at 50/s)
            # the burst runs in its own process, so it does not share this one's GIL with the timing
            burst = subprocess.Popen([sys.executable, "-m", "benchmarks.children", "burst", "--url", metrics_url,
                                      "--n", str(RATE_BURST)], cwd=ROOT, env=child_env(None),
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(0.1)
            lat, overlapped = [], 0
            for _ in range(RATE_REQUESTS):
                lat.append(http_once(app_url)[0] * 1000)
                overlapped += burst.poll() is None
            out, _ = burst.communicate(timeout=120)
            got = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
            loaded.append(statistics.median(lat))
            counts.append((got, overlapped))
            time.sleep(2.5)
        best_unloaded, best_loaded = min(unloaded), min(loaded)
        ratio = best_loaded / best_unloaded
        got, overlapped = counts[loaded.index(best_loaded)]
        rows.append(("10. app GET / p50: metrics burst vs none",
                     f"{best_loaded:.2f} vs {best_unloaded:.2f} ms (x{ratio:.2f})",
                     f"x <= {RATE_TARGET:.2f}", "PASS" if ratio <= RATE_TARGET else "FAIL",
                     f"best p50 of {RATE_ROUNDS} rounds x {RATE_REQUESTS} (new connection each); "
                     f"rounds unloaded " + " / ".join(f"{x:.2f}" for x in unloaded) + ", loaded "
                     + " / ".join(f"{x:.2f}" for x in loaded) + f"; burst of {RATE_BURST} to /metrics: "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(got.items(), key=str))
                     + f"; {overlapped}/{RATE_REQUESTS} app requests during the burst"))
    finally:
        notes.extend(server.stop())


FIGURES = {"8": fig8, "9": fig9, "10": fig10}


def run_figures(tmp: str, figs: list[str], notes: list) -> list:
    rows: list = []
    for fig in figs:
        print(f"[{fig}] {FIGURES[fig].__name__} ...", flush=True)
        try:
            FIGURES[fig](tmp, rows, notes)
        except Exception as exc:  # noqa: BLE001  (a report: one figure failing leaves the others)
            notes.append(f"fig {fig} failed: {type(exc).__name__}: {exc}")
    return rows
