"""The /debug/pprof tree (issue 5), read by the real ``go tool pprof`` against a real gunicorn.

With ``CI=true`` a missing ``go`` fails these tests; elsewhere it skips the ones that need it.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from rockstar_mp import profiling
from rockstar_mp.config import MonitoringConfig
from rockstar_mp.profiling.channel import ask_sync, socket_path
from tests.helpers import Gunicorn, accepts, free_port, http_get, load, poll, profiling_cpu

APP = "tests.apps.pprof_app:app"
BURN = "examples.app.burn_cpu"
ALLOC = "tests.apps.pprof_app.allocation_site"
BLOCKED = "tests.apps.pprof_app.blocked_on_lock"
MAX_SECONDS = 20


def go_binary() -> str:
    found = shutil.which("go") or next((p for p in ("/usr/lib/go/bin/go", "/usr/local/go/bin/go")
                                        if os.path.exists(p)), None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("go is not installed, and CI=true: the pprof tests need go tool pprof")
    pytest.skip("go is not installed (go tool pprof reads the profiles)")


@pytest.fixture(scope="module")
def gotmp(tmp_path_factory):
    return tmp_path_factory.mktemp("go")


def pprof(gotmp, *args, timeout: float = 60) -> str:
    env = dict(os.environ, HOME=str(gotmp), GOCACHE=str(gotmp / "cache"), PPROF_TMPDIR=str(gotmp),
               GOFLAGS="", GOTOOLCHAIN="local")
    proc = subprocess.run([go_binary(), "tool", "pprof", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, f"go tool pprof {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def top_rows(output: str) -> list[tuple[float, float, str]]:
    """``(flat%, cum%, function)`` rows of ``-top`` output, in order."""
    rows = []
    for line in output.splitlines():
        m = re.match(r"\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+([\d.]+)%\s+(.+)$", line)
        if m:
            rows.append((float(m.group(1)), float(m.group(2)), m.group(3).strip()))
    return rows


class Server:
    def __init__(self, tmp, **env) -> None:
        self.pprof_port = free_port()
        self.g = Gunicorn(tmp, workers=2, app=APP,
                          env={"ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(self.pprof_port),
                               "ROCKSTAR_PPROF_MAX_SECONDS": str(MAX_SECONDS), **env})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.pprof_port}/debug/pprof{path}"

    def start(self) -> "Server":
        self.g.start()
        poll(lambda: http_get(self.url("/"))[0] in (200, 401), timeout=15, message="the pprof port")
        poll(lambda: all(os.path.exists(p) for p in self.sockets()), timeout=15,
             message="every worker's control socket")
        return self

    def run_dir(self) -> str:
        """The aggregator's ``--config`` file lives in the master's run directory."""
        cmdline = psutil.Process(self.g.aggregator_pids()[0]).cmdline()
        return os.path.dirname(cmdline[cmdline.index("--config") + 1])

    def sockets(self) -> list[str]:
        return [socket_path(self.run_dir(), pid) for pid in self.g.worker_pids()]

    def pids(self) -> list[int]:
        return sorted(self.g.worker_pids())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("pprof")).start()
    yield s
    s.g.stop()


def background_load(port: int, path: str, seconds: float, concurrency: int = 4) -> threading.Thread:
    """Load for ``seconds`` in a thread; returns once the workers have answered the first requests."""
    answered = threading.Event()

    def run():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            load(port, 8 * concurrency, path, concurrency=concurrency)
            answered.set()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    poll(answered.is_set, timeout=seconds, interval=0.02, message="the load under way")
    return thread


def saved_profile(output: str) -> str:
    return re.search(r"Saved profile in (\S+)", output).group(1)


# -- the CPU profile -----------------------------------------------------------------------------------
def test_cpu_profile_blames_the_burning_function(server, gotmp):
    go_binary()
    loader = background_load(server.g.port, "/work?ms=20", 4.5)
    out = pprof(gotmp, "-top", "-cum", "-nodecount=60", server.url("/profile?seconds=3"))
    loader.join()
    rows = {name: cum for _, cum, name in top_rows(out)}
    assert BURN in rows, out
    assert rows[BURN] >= 70.0, out
    tags = pprof(gotmp, "-tags", saved_profile(out))
    for pid in server.pids():
        assert str(pid) in tags, tags


# -- heap -----------------------------------------------------------------------------------------------
def test_heap_window_names_the_allocation_site_first(server, gotmp):
    go_binary()
    loader = background_load(server.g.port, "/alloc", 3.5)
    out = pprof(gotmp, "-top", "-sample_index=inuse_space", server.url("/heap?seconds=2"))
    loader.join()
    rows = top_rows(out)
    assert rows and rows[0][2] == ALLOC, out
    assert "inuse_space" in out


# -- threads --------------------------------------------------------------------------------------------
def test_goroutine_lists_every_thread_of_every_worker(server, gotmp):
    go_binary()
    tids = {pid: {t.id for t in psutil.Process(pid).threads()} for pid in server.pids()}
    status, headers, body = http_get(server.url("/goroutine?debug=2&internal=1"))  # our threads too
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    for pid, ids in tids.items():
        for tid in ids:
            assert re.search(rf"^goroutine {tid} \[(running|lock|io|sleep)\]: pid={pid} ", text, re.M), \
                (pid, tid, text)
    assert re.search(r'\[lock\]: pid=\d+ thread="pprof-test-blocked"', text)
    status, _, grouped = http_get(server.url("/goroutine?debug=1&internal=1"))
    grouped = grouped.decode()
    assert status == 200 and grouped.startswith("goroutine profile: total ")
    total = int(grouped.split()[3])
    assert total >= sum(len(ids) for ids in tids.values())
    for pid in tids:
        for name in ("MainThread", "pprof-test-blocked", "rockstar-control"):
            assert re.search(rf'"pid": "{pid}", "thread": "[^"]*{name}', grouped), (pid, name, grouped)
    out = pprof(gotmp, "-tags", server.url("/goroutine"))
    for pid in tids:
        assert str(pid) in out
    assert "pprof-test-blocked" in out and "MainThread" in out
    per_pid = pprof(gotmp, "-top", server.url(f"/goroutine?pid={server.pids()[0]}"))
    assert "goroutine" in per_pid


def test_threadcreate_block_and_mutex(server, gotmp):
    go_binary()
    out = pprof(gotmp, "-top", server.url("/threadcreate"))
    assert "control.ControlServer.start" in out or "rockstar_mp.worker.control" in out, out
    with ThreadPoolExecutor(2) as pool:
        block = pool.submit(pprof, gotmp, "-top", "-tagfocus=wait=lock", server.url("/block?seconds=1"))
        mutex = pool.submit(pprof, gotmp, "-top", server.url("/mutex?seconds=1"))
        block, mutex = block.result(), mutex.result()
    assert BLOCKED in [name for _, _, name in top_rows(block)], block
    assert BLOCKED in mutex, mutex
    tags = pprof(gotmp, "-tags", saved_profile(block))
    assert re.search(r"wait: Total", tags) and "lock" in tags, tags


def _trace_under_load(server) -> list:
    loader = background_load(server.g.port, "/work?ms=5", 1.5)
    status, headers, body = http_get(server.url("/trace?seconds=1"), timeout=20)
    loader.join()
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return json.loads(body)["traceEvents"]


def test_trace_is_trace_event_json_from_every_worker(server):
    for _ in range(3):  # a 1 s trace of a loaded server: the burn is in it, on a busy machine within 3 tries
        events = _trace_under_load(server)
        assert {e["pid"] for e in events} == set(server.pids())
        depth: dict = {}
        for e in events:
            assert e["ph"] in ("B", "E", "M") and isinstance(e["name"], str)
            if e["ph"] != "M":
                assert isinstance(e["ts"], int)
                key = (e["pid"], e["tid"])
                depth[key] = depth.get(key, 0) + (1 if e["ph"] == "B" else -1)
                assert depth[key] >= 0
        assert depth and all(v == 0 for v in depth.values())
        if any(e["ph"] == "B" and e["name"] == BURN for e in events):
            return
    raise AssertionError(f"{BURN} in none of 3 traces of a loaded server")


def test_wall_profile(server, gotmp):
    go_binary()
    out = pprof(gotmp, "-top", "-tagfocus=thread=pprof-test-blocked", server.url("/wall?seconds=1"))
    assert BLOCKED in out


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, status", [
    ("/profile?seconds=abc", 400), ("/profile?seconds=-1", 400), (f"/profile?seconds={MAX_SECONDS + 1}", 400),
    ("/profile?debug=1", 400), ("/goroutine?pid=x", 400), ("/goroutine?pid=1", 404), ("/nosuch", 404),
])
def test_errors_are_go_style(server, path, status):
    code, headers, body = http_get(server.url(path))
    assert code == status, body
    assert headers["X-Go-Pprof"] == "1"
    assert headers["Content-Type"].startswith("text/plain")
    assert body.strip()


def test_second_cpu_profile_gets_409(server):
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http_get, server.url("/profile?seconds=2"), None, 20)
        poll(lambda: profiling_cpu(server.pids()), timeout=10, message="the first profile running in every worker")
        started = time.monotonic()
        code, headers, body = http_get(server.url("/profile?seconds=1"))
        assert code == 409 and headers["X-Go-Pprof"] == "1", body
        code, _, _ = http_get(server.url(f"/profile?seconds=1&pid={server.pids()[0]}"))
        assert code == 409
        assert time.monotonic() - started < 1.0  # refused at once, not after the window
        assert first.result()[0] == 200


def test_index_lists_profiles_and_workers(server):
    code, headers, body = http_get(server.url("/"))
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    text = body.decode()
    for kind in profiling.KINDS:
        assert f'/debug/pprof/{kind}' in text
    for pid in server.pids():
        assert f"profile?pid={pid}" in text
    assert "Unlike Go" in text
    assert http_get(server.url(""))[0] == 200


# -- the control channel ---------------------------------------------------------------------------
def test_control_socket_is_private(server):
    for path in server.sockets():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        answer = ask_sync(path, {"cmd": "ping"}, timeout=5)
        assert answer["ok"] and str(answer["result"]["pid"]) in path
        bad = ask_sync(path, {"cmd": "profile", "kind": "nope"}, timeout=5)
        assert bad["status"] == 400


def test_cli_profile_fetches_a_profile(server, gotmp, tmp_path):
    go_binary()
    cli = str(Path(sys.executable).with_name("rockstar-mp"))
    out = tmp_path / "cpu.pb.gz"
    pid = server.pids()[0]
    loader = background_load(server.g.port, "/work?ms=10", 2.0)
    proc = subprocess.run([cli, "profile", "--seconds", "1", "--out", str(out), "--pid", str(pid),
                           "--pprof-url", server.url("")], capture_output=True, text=True, timeout=60)
    loader.join()
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    tags = pprof(gotmp, "-tags", str(out))
    assert str(pid) in tags
    bad = subprocess.run([cli, "profile", "--pid", "1", "--out", str(tmp_path / "x"),
                          "--pprof-url", server.url("")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "404" in bad.stderr


# -- a worker killed mid-profile (last: the server respawns a worker) -------------------------------
def test_worker_killed_mid_profile(server):
    victim, survivor = server.pids()
    loader = background_load(server.g.port, "/work?ms=5", 3.5)
    with ThreadPoolExecutor(2) as pool:
        merged = pool.submit(http_get, server.url("/profile?seconds=3"), None, 30)
        single = pool.submit(http_get, server.url(f"/wall?seconds=3&pid={victim}"), None, 30)
        poll(lambda: profiling_cpu((victim, survivor)), timeout=10, message="the profiles running in both workers")
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        code, headers, body = merged.result()
        assert code == 200, body
        assert headers["X-Rockstar-Missing-Workers"] == str(victim)
        code1, headers1, body1 = single.result()
        assert code1 == 503 and headers1["X-Go-Pprof"] == "1", body1
        assert time.monotonic() - started < 5.0
    loader.join()
    decoded = gzip.decompress(body)
    # the victim's pid is in the profile only in the comment that names it (test_pprof_tree.py)
    assert str(survivor).encode() in decoded and decoded.count(str(victim).encode()) == 1
    poll(lambda: len(server.g.worker_pids()) == 2 and all(os.path.exists(p) for p in server.sockets()),
         timeout=20, message="the replacement worker")


# -- auth ------------------------------------------------------------------------------------------
def test_every_pprof_path_needs_the_token(tmp_path):
    s = Server(tmp_path, ROCKSTAR_REQUIRE_AUTH="1", ROCKSTAR_AUTH_TOKEN="s3cret")
    _metrics_with_token(s.g, "s3cret")
    try:
        s.start()
        paths = ["", "/", "/nosuch"] + [f"/{k}" for k in profiling.KINDS] + ["/goroutine?debug=2",
                                                                           "/profile?seconds=1"]
        for path in paths:
            code, headers, _ = http_get(s.url(path))
            assert code == 401, path
            assert headers["X-Go-Pprof"] == "1"
        ok = {"Authorization": "Bearer s3cret"}
        assert http_get(s.url("/"), ok)[0] == 200
        assert http_get(s.url("/goroutine?debug=1"), ok)[0] == 200
        assert http_get(s.url("/"), {"Authorization": "Bearer wrong"})[0] == 401
    finally:
        s.g.stop()


def _metrics_with_token(g: Gunicorn, token: str) -> None:
    """Gunicorn.start polls the metrics endpoint: give it the token."""
    original_metrics = g.metrics
    g.metrics = lambda headers=None: original_metrics({"Authorization": f"Bearer {token}"})  # type: ignore


# -- the Python API, in this process ------------------------------------------------------------------
def test_python_api_writes_profiles(tmp_path, gotmp):
    go_binary()
    stop = threading.Event()

    def spin_here():
        while not stop.is_set():
            sum(i * i for i in range(300))

    spinner = threading.Thread(target=spin_here, name="spinner")
    spinner.start()
    try:
        cpu = profiling.write_profile(str(tmp_path / "cpu.pb.gz"), "profile", seconds=0.5)
        goroutine = profiling.write_profile(str(tmp_path / "g.txt"), "goroutine", debug=2)
        heap = profiling.write_profile(str(tmp_path / "heap.pb.gz"), "heap", seconds=0.2)
    finally:
        stop.set()
        spinner.join()
    assert "spin_here" in pprof(gotmp, "-top", cpu)
    assert "thread=\"spinner\"" in open(goroutine).read()
    pprof(gotmp, "-top", heap)
    with profiling.cpu_profile(str(tmp_path / "main.pb.gz")) as prof:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            sum(i * i for i in range(300))
    assert prof.raw["samples"]
    assert "test_python_api_writes_profiles" in pprof(gotmp, "-top", str(tmp_path / "main.pb.gz"))


def test_config_validates_pprof_fields():
    for bad in ({"pprof_max_seconds": 0}, {"pprof_hz": 0}, {"pprof_hz": 5000}, {"pprof_cpu_mode": "x"},
                {"pprof_heap_frames": 0}):
        with pytest.raises(ValueError):
            MonitoringConfig(**bad)
    assert MonitoringConfig().with_env({"ROCKSTAR_PPROF_MAX_SECONDS": "7"}).pprof_max_seconds == 7.0
    assert MonitoringConfig().with_env({"ROCKSTAR_HEAP_TRACEMALLOC_AT_BOOT": "1"}).heap_tracemalloc_at_boot


# -- gthread workers (CPU by the thread sampler) and tracemalloc at boot ----------------------------
def test_gthread_cpu_profile(tmp_path, gotmp):
    go_binary()
    s = Server(tmp_path)
    s.g.args = ("--worker-class", "gthread", "--threads", "4")
    try:
        s.start()
        loader = background_load(s.g.port, "/work?ms=20", 3.5)
        out = pprof(gotmp, "-top", "-cum", "-nodecount=80", s.url("/profile?seconds=2"))
        loader.join()
        assert "per-thread CPU time" in out, out  # the documented choice for threaded workers
        assert "each thread sampled in a SIGPROF handler" in out, out  # not the sampler thread
        rows = {name: cum for _, cum, name in top_rows(out)}
        assert rows.get(BURN, 0) >= 50.0, out
    finally:
        s.g.stop()


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_workers_leaving_mid_profile_exit_cleanly(tmp_path, worker_class):
    """A profile's timers still armed as workers exit gracefully (HUP: the master replaces them): the
    interpreter's exit gave SIGPROF its default action back, and they died of it ("was sent SIGPROF!")."""
    s = Server(tmp_path)
    s.g.args = ("--worker-class", worker_class, "--threads", "2")
    try:
        s.start()
        old = set(s.pids())
        loader = background_load(s.g.port, "/work?ms=5", 3.0)
        with ThreadPoolExecutor(1) as pool:
            profile = pool.submit(http_get, s.url("/profile?seconds=10"), None, 30)
            poll(lambda: profiling_cpu(old), timeout=10, message="the profile's timers armed")
            os.kill(s.g.pid, signal.SIGHUP)
            poll(lambda: not old & set(s.pids()) and len(s.pids()) == 2, timeout=30, message="the workers replaced")
            profile.result()
        loader.join()
        assert "was sent SIGPROF" not in s.g.log_text(), s.g.log_text()[-3000:]
    finally:
        s.g.stop()


def test_heap_with_tracemalloc_at_boot(tmp_path, gotmp):
    go_binary()
    s = Server(tmp_path, ROCKSTAR_HEAP_TRACEMALLOC_AT_BOOT="1")
    try:
        s.start()
        # the workers attach (and count as live) before they import the app: wait until both serve
        poll(lambda: load(s.g.port, 8, "/", concurrency=4) == {200: 8}, timeout=30, message="serving")
        snapshot = pprof(gotmp, "-top", s.url("/heap"))
        assert "tracemalloc running since boot" in snapshot
        loader = background_load(s.g.port, "/alloc", 2.5)
        delta = pprof(gotmp, "-top", s.url("/heap?seconds=1"))
        loader.join()
        assert "delta over 1 s" in delta
        assert top_rows(delta)[0][2] == ALLOC, delta
    finally:
        s.g.stop()


# -- runtime control: pprof turned on, then off, while everything runs ------------------------------
def test_pprof_enabled_and_disabled_at_runtime(tmp_path):
    from rockstar_mp.control import write_overrides
    from rockstar_mp.segment import Segment
    s = Server(tmp_path, ROCKSTAR_ENABLE_PPROF="0")
    try:
        s.g.start()
        assert not accepts(s.pprof_port)  # off: the port is not even open
        segment = Segment.attach(str(s.g.segment_files()[0]))
        try:
            write_overrides(segment, MonitoringConfig(), {"enable_pprof": True})
            poll(lambda: http_get(s.url("/"))[0] == 200, timeout=10, message="pprof on")
            code, _, body = http_get(s.url("/goroutine?debug=1"))
            assert code == 200
            for pid in s.pids():
                assert f'"pid": "{pid}"' in body.decode()
            write_overrides(segment, MonitoringConfig(), {"pprof_path": "/pp"})
            poll(lambda: http_get(f"http://127.0.0.1:{s.pprof_port}/pp/goroutine?debug=1")[0] == 200,
                 timeout=10, message="the new path")
            assert http_get(s.url("/"))[0] == 404
            write_overrides(segment, MonitoringConfig(), {"enable_pprof": False})
            poll(lambda: http_get(f"http://127.0.0.1:{s.pprof_port}/pp/")[0] == 404, timeout=10,
                 message="pprof off")
        finally:
            segment.close()
    finally:
        s.g.stop()
