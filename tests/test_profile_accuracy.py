"""Profiles a performance engineer can trust (issue 15): our profiles of apps whose true profile is known by
construction (``tests/apps/split_app.py``), read with the real ``go tool pprof``, against the app's own
clocks and against py-spy recording the same worker at the same time; sync and gthread workers.

For each route, a function's share is the part of the route's samples whose stack holds the function.
Every one must be within ``POINTS`` of the app's own clock (its totals since the worker started: the mix
is steady), and within ``POINTS`` of py-spy's, recording the same worker over the same window, or else
no further from the app's clock than py-spy's is, give or take ``RESOLUTION`` (both estimates wobble by
that much under a loaded CI run: ours read digest 2.8 points over the truth where py-spy read 2.3
under, 5.1 apart). Why the "or else": (1) both are sampled estimates: over 8
sync runs py-spy read ``spin`` at 29.8-38.1 % (ours 31.5-37.5 %, the app's clock 34.1-34.9 %), so a
5-point band between the two failed once in 8 where each was within 5 points of the truth; (2) py-spy
counts a thread as active while the kernel has it runnable, on a core or waiting for one (state R in
``/proc``), not by its CPU time. In a gthread worker serving ``/pure`` and ``/chash`` in parallel on
2 cores, ``digest``'s sha256 (GIL released) runs beside the other route's Python and waits longer for
a core per CPU second than ``spin`` (GIL held, so it never runs beside Python): 2.6 s against 1.9 s of
run-queue wait per CPU second in ``/proc/thread-self/schedstat``, so py-spy read ``spin`` at 27-30 %
against 33-34 % by its thread clock (CPU + run-queue wait predicts 28.5 %); with ``/chash`` alone the
waits were even (1.74 and 1.73 s/s) and py-spy read 32.5 % against 33.7 %. ``--gil`` does not help:
it drops every thread without the GIL, so sha256 (0.4 %). So the gthread test loads the CPU routes in
turn (``compare_in_a_window``'s ``in_turn``), ``waits`` beside them. The app's spins are Python arithmetic that
read the thread's clock (a system call) only every ``SPIN_STEP`` iterations.

Sampling error: periodic samples miss at most one per call boundary, so a share's error shrinks with
the time spent per call (the functions run 20-150 ms a call) and with the calls in the window, which
is made long enough for the worker to use ``NEEDED_CPU`` s whatever the machine's load (8 s with a
core to spare: py-spy samples at 500 Hz of wall time); the issue's gaps were 10-30 points. With 4 s of
CPU a loaded CI run read sync ``spin`` at 30.3 % (ours), 37.3 % (py-spy) and 34.3 % (the app's clock):
each within 5 points of the truth, 7 apart, py-spy the nearer; 8 s halve the variance of both estimates.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import Gunicorn, free_port, http_get, poll, raw_get
from tests.test_pprof import go_binary

APP = "tests.apps.split_app:app"
PREFIX = "tests.apps.split_app."
# Ours: CONFIG_HZ (250 here), the most a timer on a thread's CPU clock fires, against 100 by default. A share's
# sampling error shrinks with the samples: at 100 Hz (a sample every 3 ticks, 12 ms) a CI run read spin at
# 30.6 % against 34.1 % true, py-spy 36.6; 2.5 times the samples take our error from ~2.6 points to ~1.6.
HZ = 250
SPY_HZ = 500  # one py-spy at a time: it keeps up here (stopped with SIGINT at the window's end if behind)
WINDOW = 8  # seconds of the profiles (and py-spy recordings) compared, at least (py-spy samples wall time)
NEEDED_CPU = 8.0  # seconds of the worker's CPU the window should hold (see the module's docstring)
MAX_WINDOW = 40
POINTS = 5.0
RESOLUTION = 1.0  # points: where ours and py-spy's are POINTS apart, ours may be this much further from the truth
ROUTES = {"pure": ("hot", "cold"), "chash": ("spin", "digest"), "waits": ("nap", "poll_nothing", "stuck")}
CPU_ROUTES = ("pure", "chash")
ROOT = Path(__file__).resolve().parent.parent


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(found):
        pytest.fail("py-spy is not installed: it is in .[dev] (make install)")
    return found


# -- reading profiles: ours through go tool pprof -raw, py-spy's raw collapsed stacks ----------------
def pprof_raw(gotmp: Path, path: Path, sample_index: int) -> list[tuple[list[str], int]]:
    """``[(functions root first, value), ...]`` of a profile, read by ``go tool pprof -raw``."""
    env = dict(os.environ, HOME=str(gotmp), GOCACHE=str(gotmp / "cache"), PPROF_TMPDIR=str(gotmp),
               GOFLAGS="", GOTOOLCHAIN="local")
    proc = subprocess.run([go_binary(), "tool", "pprof", "-raw", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    samples_part, _, locations_part = proc.stdout.partition("\nLocations\n")
    functions: dict[str, str] = {}
    for line in locations_part.splitlines():
        m = re.match(r"\s*(\d+): 0x[0-9a-f]+ (?:M=\d+ )?(\S+) ", line)
        if m:
            functions[m.group(1)] = m.group(2)
    out = []
    for line in samples_part.splitlines():
        m = re.match(r"\s*((?:\d+\s+)+)\d*:?\s*$", line)
        m = re.match(r"\s*([\d ]+?):\s+([\d ]+?)\s*$", line)
        if m:
            values = [int(v) for v in m.group(1).split()]
            stack = [functions[i] for i in m.group(2).split()]
            out.append((list(reversed(stack)), values[sample_index]))
    return out


def spy_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's ``--format raw`` (collapsed stacks, root first): ``[(functions, count), ...]`` with
    the app's functions named as ours are."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        names = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            names.append(PREFIX + name if "split_app.py" in where else name)
        out.append((names, int(count)))
    return out


def shares(samples: list[tuple[list[str], int]], routes: tuple[str, ...] = tuple(ROUTES)) -> dict[str, float]:
    """Each route's functions' shares of the route (``route/function``), in %. (Not the routes' shares
    of the whole: on a starved machine py-spy's "active" counts the time a thread waits for a core.)"""
    totals: dict[str, float] = {}
    for stack, value in samples:
        names = set(stack)
        for route in routes:
            if PREFIX + route in names:
                totals[route] = totals.get(route, 0) + value
                for function in ROUTES[route]:
                    if PREFIX + function in names:
                        totals[f"{route}/{function}"] = totals.get(f"{route}/{function}", 0) + value
    out = {}
    for route in routes:
        for function in ROUTES[route]:
            out[f"{route}/{function}"] = 100.0 * totals.get(f"{route}/{function}", 0) / (totals.get(route) or 1)
    return out


def truth_shares(truth: dict, clock: str, routes: tuple[str, ...]) -> dict[str, float]:
    """The functions' shares of their routes by the app's own clock (``cpu`` or ``wall``)."""
    samples = [([PREFIX + route, PREFIX + function], truth[clock].get(function, 0.0))
               for route in routes for function in ROUTES[route]]
    return shares(samples, routes)


def assert_close(ours: dict, reference: dict, who: str, context: str) -> None:
    far = {k: (round(ours[k], 1), round(reference[k], 1)) for k in reference if abs(ours[k] - reference[k]) > POINTS}
    print(f"{context}: (ours, {who}):", {k: (round(ours[k], 1), round(reference[k], 1)) for k in reference})
    assert not far, f"{context}: shares (ours, {who}) more than {POINTS} points apart: {far}"


def assert_close_or_nearer_truth(ours: dict, peer: dict, truth: dict, who: str, context: str) -> None:
    """Within ``POINTS`` of ``peer``, or, where not, no further from the truth than ``peer`` is, give or
    take ``RESOLUTION`` (the module's docstring says why)."""
    far = {k: (round(ours[k], 1), round(peer[k], 1), round(truth[k], 1)) for k in peer
           if abs(ours[k] - peer[k]) > POINTS and abs(ours[k] - truth[k]) > abs(peer[k] - truth[k]) + RESOLUTION}
    print(f"{context}: (ours, {who}, truth):", {k: (round(ours[k], 1), round(peer[k], 1), round(truth[k], 1))
                                              for k in peer})
    assert not far, f"{context}: shares (ours, {who}, truth) apart, and {who} nearer the truth: {far}"


# -- the server ------------------------------------------------------------------------------------
class SplitServer:
    """One gunicorn worker serving ``split_app``, pprof on at ``HZ``, loaded by one client per route."""

    def __init__(self, tmp: Path, args: tuple = ()) -> None:
        self.tmp = tmp
        self.pprof_port = free_port()
        self.g = Gunicorn(tmp, workers=1, app=APP, args=args,
                          env={"ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(self.pprof_port),
                               "ROCKSTAR_PPROF_HZ": str(HZ)})
        self._stop = threading.Event()
        self._clients: list[threading.Thread] = []
        self.answered: dict[str, int] = {}

    def __enter__(self) -> "SplitServer":
        self.g.start()
        poll(lambda: http_get(self.url("/"))[0] == 200, timeout=30, message="the pprof port")
        self.pid = self.g.worker_pids()[0]
        return self

    def __exit__(self, *exc) -> None:
        self.drive(())
        self.g.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.pprof_port}/debug/pprof{path}"

    def drive(self, routes: tuple[str, ...]) -> None:
        """One client looping on each of ``routes`` (the previous clients stopped); returns once each
        route has been answered twice (warm: the interpreter has specialised the code)."""
        self._stop.set()
        for client in self._clients:
            client.join()
        self._stop = threading.Event()
        self.answered = dict.fromkeys(routes, 0)
        self._clients = [threading.Thread(target=self._loop, args=(route, self._stop), daemon=True)
                         for route in routes]
        for client in self._clients:
            client.start()
        poll(lambda: all(n >= 2 for n in self.answered.values()), timeout=20, message="every route answering")

    def _loop(self, route: str, stop: threading.Event) -> None:
        while not stop.is_set():
            assert raw_get(self.g.port, f"/{route}", timeout=20) == 200
            self.answered[route] += 1

    def truth(self) -> dict:
        return json.loads(http_get(f"http://127.0.0.1:{self.g.port}/truth", timeout=10)[2])

    def profiles(self, kinds: tuple[str, ...], seconds: float) -> dict[str, Path]:
        """``kinds`` fetched at once over the same window, saved under ``tmp``."""
        def fetch(kind: str) -> Path:
            status, _, body = http_get(self.url(f"/{kind}?seconds={seconds:g}"), timeout=seconds + 30)
            assert status == 200, body
            path = self.tmp / f"{kind}.pb.gz"
            path.write_bytes(body)
            return path
        with ThreadPoolExecutor(len(kinds)) as pool:
            return dict(zip(kinds, pool.map(fetch, kinds), strict=True))

    def record_with_py_spy(self, seconds: float, idle: bool, window: int) -> tuple[subprocess.Popen, Path]:
        out = self.tmp / f"spy-{'idle' if idle else 'cpu'}-{window}.txt"
        cmd = [py_spy(), "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(SPY_HZ),
               "--duration", str(int(seconds) + 1), "--nonblocking", "--output", str(out)]
        cmd += ["--idle"] if idle else []
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out


def worker_cpu(pid: int) -> float:
    """CPU seconds the process has used (every thread), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_rate(pid: int, spent: float = 0.3) -> float:
    """The worker's CPU seconds per second now: the wall time it takes to use ``spent`` s (polled)."""
    start_cpu, start = worker_cpu(pid), time.monotonic()
    poll(lambda: worker_cpu(pid) - start_cpu >= spent, timeout=60, interval=0.05, message="the worker busy")
    return (worker_cpu(pid) - start_cpu) / (time.monotonic() - start)


def profile_beside_py_spy(server: SplitServer, kind: str, idle: bool, window: int, gotmp: Path) -> tuple[list, list]:
    """Our ``kind`` profile and py-spy's recording of the same worker over one ``window``: both samples."""
    spy, out = server.record_with_py_spy(window, idle, 0)
    path = server.profiles((kind,), window)[kind]
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # behind on a busy machine: it stops and writes what it has
    output = spy.communicate(timeout=60)[0]
    assert spy.returncode == 0, output
    return pprof_raw(gotmp, path, 1), spy_raw(out)


def compare_in_a_window(server: SplitServer, gotmp: Path,
                        in_turn: bool = False) -> Iterator[tuple[str, dict, dict, dict, tuple]]:
    """Our CPU profile beside py-spy's (active threads) over one window, then our wall profile beside
    py-spy's (every thread, ``--idle``) over another, while every route is loaded, and the app's own
    clocks: ``(what, ours, truth, py-spy's, (the truth's name, py-spy's))``. A window is long enough for
    the worker to use ``NEEDED_CPU`` s at the rate it gets now (``WINDOW`` s with a core to spare, up to
    ``MAX_WINDOW`` when it is starved). One profile at a time: a wall sampler taking the GIL 100 times a
    second keeps the main thread off CPU at scheduler ticks, which delays SIGPROF past the end of a Python
    spin into the C call after it (2-4 points of the spin, seen only with both profiles running).

    ``in_turn``: the CPU routes are loaded one after the other over the CPU window (half its CPU each,
    ``waits`` throughout), as a sync worker serves them, so py-spy's reading is not skewed by the two
    running in parallel (the module's docstring); the shares are per route, so the split costs nothing."""
    server.drive(("pure", "waits") if in_turn else tuple(ROUTES))
    rate = cpu_rate(server.pid)
    window = int(min(max(NEEDED_CPU / rate, WINDOW), MAX_WINDOW))
    print(f"window {window} s, load {os.getloadavg()}")
    if in_turn:
        halfway = worker_cpu(server.pid) + rate * window / 2
        with ThreadPoolExecutor(1) as pool:
            profiled = pool.submit(profile_beside_py_spy, server, "profile", False, window, gotmp)
            poll(lambda: worker_cpu(server.pid) >= halfway or profiled.done(), timeout=MAX_WINDOW,
                 interval=0.05, message="half the window's CPU used")
            server.drive(("chash", "waits"))
            cpu, spied_cpu = profiled.result()
        server.drive(tuple(ROUTES))
    else:
        cpu, spied_cpu = profile_beside_py_spy(server, "profile", False, window, gotmp)
    wall, spied_wall = profile_beside_py_spy(server, "wall", True, window, gotmp)
    truth = server.truth()
    yield ("cpu", shares(cpu, CPU_ROUTES), truth_shares(truth, "cpu", CPU_ROUTES), shares(spied_cpu, CPU_ROUTES),
           ("app's thread_time", "py-spy"))
    yield ("wall", shares(wall, ("waits",)), truth_shares(truth, "wall", ("waits",)),
           shares(spied_wall, ("waits",)), ("app's perf_counter", "py-spy --idle"))


@pytest.fixture(scope="module")
def gotmp(tmp_path_factory):
    return tmp_path_factory.mktemp("go")


# -- the tests -----------------------------------------------------------------------------------------
def test_sync_worker_profiles_match_truth_and_py_spy(tmp_path, gotmp):
    """Sync worker (CPU by SIGPROF): shares right, long C call included; then block/mutex of a
    contended lock are the app's lock; and our own threads stay out unless ``?internal=1``."""
    with SplitServer(tmp_path) as server:
        for what, ours, truth, spied, (clock, spy) in compare_in_a_window(server, gotmp):
            assert_close(ours, truth, clock, f"sync {what}")
            assert_close_or_nearer_truth(ours, spied, truth, spy, f"sync {what}")

        server.drive(("contend",))
        paths = server.profiles(("block", "mutex"), 3.0)
        for kind, path in paths.items():
            samples = pprof_raw(gotmp, path, 1)
            total = sum(v for _, v in samples)
            on_app_lock = sum(v for stack, v in samples
                              if {PREFIX + "wait_for_app_lock", PREFIX + "_hold"} & set(stack))
            # the rest of "block" is gunicorn's socket waits (accept, read, write, close_graceful): 9.7-11.7 %
            # of it in three runs on a machine whose requests are quick, so the app's lock is at least 80 %
            assert total > 0 and on_app_lock >= 0.8 * total, (kind, on_app_lock, total, samples)

        server.drive(())
        dumps = []

        def idle_main_thread_waits() -> bool:  # idle, it is in gunicorn's select (but wakes each second)
            dumps.append(http_get(server.url("/goroutine?debug=2"))[2])
            return re.search(rf"^goroutine {server.pid} \[io\]: ", dumps[-1].decode(), re.M) is not None
        poll(idle_main_thread_waits, timeout=10, interval=0.1, message="the idle worker shown waiting")
        assert b"rockstar-" not in dumps[-1], dumps[-1]
        status, _, dump = http_get(server.url("/goroutine?debug=2&internal=1"))
        assert b'thread="rockstar-control"' in dump and b'thread="rockstar-monitor"' in dump, dump


def test_gthread_worker_profiles_match_truth_and_py_spy(tmp_path, gotmp):
    """gthread worker (CPU by each thread's own SIGPROF handler); the CPU routes in turn, the waits beside."""
    with SplitServer(tmp_path, ("--worker-class", "gthread", "--threads", "4")) as server:
        for what, ours, truth, spied, (clock, spy) in compare_in_a_window(server, gotmp, in_turn=True):
            assert_close(ours, truth, clock, f"gthread {what}")
            assert_close_or_nearer_truth(ours, spied, truth, spy, f"gthread {what}")


PROBE = """
import sys, threading, time, select
sys.path.insert(0, sys.argv[1])
from rockstar_mp.profiling import frames  # the package's lazy __init__ loads nothing else
HELD = threading.Lock()
HELD.acquire()
def nap(t): time.sleep(t)
def wait_in_select(t): select.select([], [], [], t)
def wait_in_poll(t): select.poll().poll(t * 1000)
def wait_for_lock(t): HELD.acquire(timeout=t)
def wait_with_keywords(t): HELD.acquire(blocking=True, timeout=t)
def wait_in_with(t):
    with HELD if t else threading.Lock(): pass
kinds = {}
for fn in (nap, wait_in_select, wait_in_poll, wait_for_lock, wait_with_keywords, wait_in_with):
    for _ in range(100):  # warm: specialised (3.11 then leaves a blocked frame at PRECALL)
        fn(0)
    t = threading.Thread(target=fn, args=(0.3,), daemon=True)
    t.start()
    deadline = time.monotonic() + 0.25
    kind = None
    while kind is None and time.monotonic() < deadline:
        frame = sys._current_frames().get(t.ident)
        kind = frames.wait_kind(frame) if frame is not None and frame.f_code is fn.__code__ else None
        frame = None
        t.join(0.002)  # looked at again in 2 ms, or once the thread ended
    kinds[fn.__name__] = kind
print(kinds)
"""
EXPECTED_KINDS = {"nap": "sleep", "wait_in_select": "io", "wait_in_poll": "io", "wait_for_lock": "lock",
                  "wait_with_keywords": "lock", "wait_in_with": "lock"}


def interpreter(version: str) -> str:
    """A Python ``version`` interpreter: on PATH, or one pyenv installed."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    if os.environ.get("CI") == "true":
        pytest.fail(f"no Python {version} interpreter, and CI=true: the wait classifier is checked on 3.11-3.13")
    pytest.skip(f"no Python {version} interpreter")


def test_waits_recognised_in_warm_frames_of_python_3_11_to_3_13():
    """A warm frame blocked in sleep, select, poll or a lock wait is classified as waiting, whatever
    instruction the interpreter leaves it at (3.11's PRECALL, 3.12's CALL, 3.13's CALL/CALL_KW)."""
    procs = {version: subprocess.Popen([interpreter(version), "-c", PROBE, str(ROOT)], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
             for version in ("3.11", "3.12", "3.13")}
    for version, proc in procs.items():
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        assert eval(output.strip().splitlines()[-1]) == EXPECTED_KINDS, (version, output)  # noqa: S307
