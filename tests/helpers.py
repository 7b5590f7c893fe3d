"""Test helpers: a real gunicorn master running an app with monitoring on, HTTP clients, polling."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _slack() -> float:
    raw = os.environ.get("ROCKSTAR_TEST_SLACK", "1")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"ROCKSTAR_TEST_SLACK must be a number > 0, got {raw!r}")
    return value


SLACK = _slack()
"""How much slower than a developer's machine this one may be: every timing limit a test asserts (and the
polls that precede it) is multiplied by ``$ROCKSTAR_TEST_SLACK`` (default 1). Raise it on a slow or
shared CI machine rather than widening one test's limit."""


def require_hotpath() -> None:
    """The C request path must be built: skipped without a compiler, a failure under CI=true."""
    from rockstar_mp.worker.accelerator import hotpath

    if hotpath is None:
        if os.environ.get("CI", "").lower() != "true":
            import pytest
            pytest.skip("rockstar_mp._hotpath is not built (no C compiler?)")
        raise AssertionError("CI must build rockstar_mp._hotpath (pip install compiles it)")


def run_in_both_request_paths(module: str, batch: dict) -> tuple[dict, dict]:
    """``python -m <module> <dir> <cases file>`` with the C request path and with the Python one
    (``ROCKSTAR_PURE_PYTHON=1``), each in a fresh process, both at once: their JSON outputs, C first."""
    from rockstar_mp.worker.accelerator import PURE_PYTHON_ENV

    with tempfile.TemporaryDirectory() as tmp:
        cases_file = os.path.join(tmp, "cases.repr")
        with open(cases_file, "w") as f:
            f.write(repr(batch))
        procs = []
        for pure in (False, True):
            directory = os.path.join(tmp, "pure" if pure else "c")
            os.mkdir(directory)
            env = dict(os.environ, **{PURE_PYTHON_ENV: "1" if pure else ""})
            procs.append(subprocess.Popen([sys.executable, "-m", module, directory, cases_file], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    return results[0], results[1]


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def limit(seconds: float) -> float:
    """A timing limit, in seconds, for this machine (``seconds`` times ``SLACK``)."""
    return seconds * SLACK


PORTS_PER_TEST_PROCESS = 4000
FIRST_PORT = 20000  # below Linux's ephemeral range (32768-60999), which the clients' own sockets draw from
_next_port = [0]


def _port_range() -> range:
    """The ports this test process hands out: its own block, so that the processes of ``pytest -n``
    (``PYTEST_XDIST_WORKER`` is ``gw0``, ``gw1``...) never pick the same one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    first = FIRST_PORT + (index % 3) * PORTS_PER_TEST_PROCESS
    return range(first, first + PORTS_PER_TEST_PROCESS)


def free_port() -> int:
    """A port on 127.0.0.1 free for both TCP and UDP (for an HTTP or an SNMP server). Ports come from
    this process's block in turn, so a port a test just released is not handed out again soon, and
    never one the kernel could meanwhile give a client socket."""
    ports = _port_range()
    if not _next_port[0]:
        _next_port[0] = ports.start + os.getpid() % len(ports)
    for _ in range(len(ports)):
        port = _next_port[0]
        _next_port[0] = port + 1 if port + 1 < ports.stop else ports.start
        if _bindable(port, socket.SOCK_STREAM) and _bindable(port, socket.SOCK_DGRAM):
            return port
    raise RuntimeError(f"no free port in {ports}")


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def poll(check, timeout: float = 10.0, interval: float = 0.05, message: str | Callable[[], str] = "condition"):
    """Call ``check`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError;
    ``message`` names what was awaited, or is called then to say what was seen)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            awaited = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {awaited}; last: {last!r}")
        time.sleep(interval)


def posix_timers(pid: int | str = "self") -> list[tuple[int, str, int]]:
    """``[(signal, notify, tid whose CPU clock it counts (or -1)), ...]`` of the POSIX timers of the process
    ``pid`` (``/proc/PID/timers``; none if the process is gone)."""
    try:
        with open(f"/proc/{pid}/timers") as f:
            text = f.read()
    except FileNotFoundError:
        if not os.path.exists("/proc/self/timers"):
            import pytest
            pytest.fail("/proc/PID/timers is missing (a kernel without CONFIG_CHECKPOINT_RESTORE)")
        return []
    out = []
    for signo, notify, clock in re.findall(r"signal: (\d+)/\S*\nnotify: (\S+)\nClockID: (-?\d+)", text):
        clock_id = int(clock)
        tid = ~((clock_id - 6) >> 3) if clock_id < 0 and clock_id & 7 == 6 else -1
        out.append((int(signo), notify, tid))
    return out


def profiling_cpu(pids) -> bool:
    """Does every process of ``pids`` have a timer sending SIGPROF (a CPU profile running in it)?"""
    return all(any(signo == int(signal.SIGPROF) for signo, _, _ in posix_timers(pid)) for pid in pids)


def http_get(url: str, headers: dict | None = None, timeout: float = 5.0):
    """``(status, headers (case-insensitive), body bytes)``, also for 4xx/5xx."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def accepts(port: int) -> bool:
    """Does the port accept a connection? (No request is sent, so nothing is counted.)"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def raw_get(port: int, path: str = "/", timeout: float = 10.0, headers: dict | None = None,
            tail: bytes = b"") -> int:
    """One HTTP/1.0 request on a fresh connection (with ``headers`` after ``Host``); the status, or 0 if
    no complete response came (one of its Content-Length, ending with ``tail``: for a stream, whose end is
    the connection's)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return 0
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return 0
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    if length is not None and len(body) != length or not body.endswith(tail):
        return 0
    return int(head.split()[1])


def requests_with(counters: dict, label: str) -> int:
    """``http.requests`` of the JSON metrics' ``counters``, summed over the series with ``label``
    (``'status="404"'``), whatever their other labels (method, route)."""
    return sum(int(value) for key, value in counters.items() if key.startswith("http.requests{") and label in key)


def load(port: int, n: int, path: str = "/", concurrency: int = 16) -> dict:
    """Send ``n`` requests from ``concurrency`` threads; count responses by status (0 = none)."""
    counts: dict[int, int] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for status in pool.map(lambda _: raw_get(port, path), range(n)):
            counts[status] = counts.get(status, 0) + 1
    return counts


class Gunicorn:
    """``gunicorn -c gunicorn_conf.py examples.app:app`` with its own ports and segment directory."""

    def __init__(self, tmp: Path, workers: int = 4, args: tuple = (), env: dict | None = None,
                 app: str = "examples.app:app", segment_dir: Path | None = None,
                 monitored: bool = True) -> None:
        self.app = app
        self.tmp = tmp
        self.port = free_port()
        self.metrics_port = free_port()
        self.segment_dir = segment_dir or tmp / "shm"
        self.segment_dir.mkdir(exist_ok=True)
        self.monitored = monitored  # start() waits for the aggregator to see every worker
        self.log_path = tmp / "gunicorn.log"
        self.env = dict(os.environ, BIND=f"127.0.0.1:{self.port}", WORKERS=str(workers),
                        ROCKSTAR_METRICS_PORT=str(self.metrics_port),
                        ROCKSTAR_SEGMENT_DIR=str(self.segment_dir))
        self.env.update(env or {})
        for name in ("ROCKSTAR_SEGMENT", "ROCKSTAR_PRIVATE_RUN_DIR"):
            self.env.pop(name, None)
        self.args = args
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "Gunicorn":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([GUNICORN, "-c", str(ROOT / "gunicorn_conf.py"), *self.args,
                                      self.app], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        poll(lambda: len(self.worker_pids()) == self.workers and accepts(self.port),
             timeout=20, message="gunicorn listening")
        if self.monitored:
            poll(lambda: self.metrics()["system"]["workers_live"] == self.workers, timeout=20,
                 message="the aggregator seeing every worker")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self, headers: dict | None = None) -> dict:
        if headers is None and self.env.get("ROCKSTAR_REQUIRE_AUTH", "").lower() in ("1", "true", "yes", "on"):
            headers = {"Authorization": f"Bearer {self.env['ROCKSTAR_AUTH_TOKEN']}"}
        status, _, body = http_get(self.url, headers)
        if status != 200:
            raise ValueError(f"metrics: HTTP {status}: {body!r}")
        return json.loads(body)

    def serve_on_every_worker(self, timeout: float = 20.0) -> int:
        """Send ``GET /`` until every worker has served one; returns how many were sent. A worker shows
        in the aggregator from ``post_fork`` on, but is past ``post_worker_init`` (where the hooks install
        its SIGUSR1 handler, after the app is loaded) only once it serves."""
        sent = 0

        def every_worker_served() -> bool:
            nonlocal sent
            load(self.port, 2 * self.workers, concurrency=2 * self.workers)  # idle workers take them
            sent += 2 * self.workers
            status, _, body = http_get(f"http://127.0.0.1:{self.metrics_port}/workers")
            served = {w["pid"] for w in json.loads(body)["workers"] if w["requests"] >= 1}
            return status == 200 and set(self.worker_pids()) <= served

        poll(every_worker_served, timeout=timeout, interval=0.1, message="every worker serving")
        return sent

    def total(self, name: str = "http.requests") -> int:
        return self.metrics()["counters"].get(name, 0)

    def wait_total(self, expected: int, name: str = "http.requests", timeout: float = 10.0) -> int:
        try:
            poll(lambda: self.total(name) == expected, timeout=timeout, message=f"{name} == {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (it is {self.total(name)})") from None
        return expected

    def children(self, pid: int | None = None) -> list[psutil.Process]:
        try:
            return psutil.Process(pid or self.pid).children()
        except psutil.Error:
            return []

    def aggregator_pids(self) -> list[int]:
        """Every aggregator process started for this server's segment directory."""
        out = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if "rockstar_mp.aggregator" in cmd and any(str(self.segment_dir) in c for c in cmd):
                out.append(proc.pid)
        return out

    def worker_pids(self, master: int | None = None) -> list[int]:
        pids = []
        for proc in self.children(master):
            try:
                if (proc.status() != psutil.STATUS_ZOMBIE
                        and "rockstar_mp.aggregator" not in proc.cmdline()):
                    pids.append(proc.pid)
            except psutil.Error:
                pass  # exited while we looked
        return pids

    def segment_files(self) -> list[Path]:
        return sorted(self.segment_dir.glob("rockstar-mp-*.seg"))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.aggregator_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
