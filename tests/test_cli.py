"""``rockstar-mp`` (the console script) against real gunicorn servers; ``top`` under a real pseudo-terminal."""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from rockstar_mp import cli
from tests.helpers import Gunicorn, free_port, http_get, load, poll, raw_get

ROCKSTAR = str(Path(sys.executable).with_name("rockstar-mp"))
TOKEN = "tok"
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_env(**extra) -> dict:
    """The environment without our settings, nor COLUMNS/LINES (set by pytest-xdist's workers), which
    would override the size of the terminal a test gives ``top``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ROCKSTAR_URL", "ROCKSTAR_AUTH_TOKEN", "ROCKSTAR_METRICS_PATH", "COLUMNS", "LINES")}
    return {**env, **extra}


def base(server) -> str:
    return f"http://127.0.0.1:{server.metrics_port}"


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ROCKSTAR, *args], capture_output=True, text=True, timeout=30,
                          env=env or clean_env())


class PtyTop:
    """``rockstar-mp top`` with a pseudo-terminal as its stdin, stdout and stderr; reads its frames."""

    def __init__(self, *args, rows: int = 40, cols: int = 160) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([ROCKSTAR, "top", *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=clean_env(), start_new_session=True)
        os.close(slave)
        self.raw = b""
        self.eof = False

    def _read(self, timeout: float) -> None:
        if self.eof or not select.select([self.master], [], [], timeout)[0]:
            return
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave end is closed
            chunk = b""
        self.eof = not chunk
        self.raw += chunk

    def frames(self) -> list[str]:
        """Every complete frame drawn so far (home ... erase-below), escapes removed."""
        text = self.raw.decode(errors="replace")
        found = re.findall(r"\x1b\[H(.*?)\x1b\[J", text, re.S)
        return [ESCAPE.sub("", f).replace("\r\n", "\n") for f in found]

    def wait_frame(self, check, timeout: float = 10.0, message: str = "a frame") -> str:
        """Read until the newest complete frame satisfies ``check``; that frame."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.frames()
            if frames and check(frames[-1]):
                return frames[-1]
            if time.monotonic() > deadline or self.eof:
                raise AssertionError(f"timed out waiting for {message}; last frame:\n"
                                     f"{frames[-1] if frames else self.raw[-2000:]!r}")
            self._read(0.1)

    def finish(self, timeout: float = 10.0) -> int:
        """Read to the end (so the child never blocks on a full terminal) and reap it."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(0.1)
        try:
            return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        finally:
            os.close(self.master)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def header_rate(frame: str) -> float | None:
    match = re.search(r"requests \d+ \(([-\d.]+)/s\)", frame)
    return None if match is None or match.group(1) == "-" else float(match.group(1))


def test_top_on_a_terminal_shows_every_worker_and_quits_on_sigint(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    assert load(server.port, 40, "/users/ann") == {200: 40}
    pids = server.worker_pids()
    top = PtyTop("--url", base(server), "--interval", "0.25")
    slow = threading.Thread(target=raw_get, args=(server.port, "/sleep?ms=1500"))
    try:
        frame = top.wait_frame(lambda f: all(re.search(rf"^\s*{pid}\s", f, re.M) for pid in pids)
                               and "requests 40 " in f, message=f"every worker pid {pids} and 40 requests")
        assert "workers 2 live" in frame
        for column in ("PID", "AGE", "REQ/S", "RSS MiB", "USS MiB", "CPU%", "THREADS", "FDS", "HB",
                       "IN-FLIGHT", "ROUTE", "/users/{name}"):
            assert column in frame

        slow.start()  # a request in flight shows in its worker's row
        top.wait_frame(lambda f: re.search(r"GET /sleep\S* \d+\.\d\ds", f), message="the in-flight request")

        def busy(frame: str) -> bool:  # traffic between two refreshes shows as rates
            load(server.port, 20)
            rates = [row[3] for row in map(str.split, frame.splitlines()) if row and row[0] in map(str, pids)]
            return (header_rate(frame) or 0) > 0 and any(r != "-" and float(r) > 0 for r in rates)

        top.wait_frame(busy, message="a positive requests/s")

        top.proc.send_signal(signal.SIGINT)
        assert top.finish() == 0
        assert top.raw.endswith(cli.LEAVE.encode())  # the cursor and the normal screen are back
        assert b"Traceback" not in top.raw
    finally:
        top.kill()
        if slow.ident:
            slow.join(10)


def test_top_keeps_retrying_an_unreachable_server_and_q_quits():
    top = PtyTop("--url", f"127.0.0.1:{free_port()}", "--interval", "0.1")
    try:
        frame = top.wait_frame(lambda f: "failed refreshes in a row: 3" in f, message="three failed refreshes")
        assert "ERROR: cannot reach http://127.0.0.1:" in frame and "Connection refused" in frame
        assert top.proc.poll() is None
        os.write(top.master, b"q")
        assert top.finish() == 0
        assert top.raw.endswith(cli.LEAVE.encode())
    finally:
        top.kill()


def test_metrics_workers_and_piped_top_match_the_server(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    assert load(server.port, 30, "/") == {200: 30}
    server.wait_total(30)
    workers_url = base(server) + "/workers"
    poll(lambda: sum(w["requests"] for w in json.loads(http_get(workers_url)[2])["workers"]) == 30,
         message="/workers counting every request")

    def stable(counters: dict) -> dict:  # the workers' own gc counts may move between two reads
        return {k: v for k, v in counters.items() if not k.startswith("rockstar.gc.")}

    expected = server.metrics()
    for args, env in ((("--url", base(server)), None),
                      (("--url", server.url), None),  # the old form: the full metrics URL
                      ((), clean_env(ROCKSTAR_URL=f"127.0.0.1:{server.metrics_port}"))):
        result = run("metrics", "--json", *args, env=env)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert stable(got["counters"]) == stable(expected["counters"])
        assert got["counters"]["http.requests"] == 30
        assert got["histograms"].keys() == expected["histograms"].keys()
        assert sorted(w["pid"] for w in got["workers"]) == sorted(server.worker_pids())

    result = run("workers", "--json", "--url", base(server))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    direct = json.loads(http_get(workers_url)[2])["workers"]
    keys = ("pid", "age", "slab", "state", "started", "requests")
    assert [{k: w[k] for k in keys} for w in got] == [{k: w[k] for k in keys} for w in direct]
    assert sorted(w["pid"] for w in got) == sorted(server.worker_pids())
    assert sum(w["requests"] for w in got) == 30

    table = run("workers", "--url", base(server))
    assert table.returncode == 0 and table.stdout.split()[0] == "PID"
    for pid in server.worker_pids():
        assert re.search(rf"^\s*{pid}\s", table.stdout, re.M)

    piped = run("top", "--url", base(server), "--interval", "0.2", "--iterations", "2")
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout  # no escapes when stdout is not a terminal
    frames = [f for f in re.split(r"(?m)^(?=rockstar-mp top )", piped.stdout) if f.strip()]
    assert len(frames) == 2
    assert "requests 30 (-/s)" in frames[0] and "requests 30 (0.0/s)" in frames[1]
    for pid in server.worker_pids():
        assert str(pid) in frames[1]


class AuthGunicorn(Gunicorn):
    """The fixture's server with require_auth on; its own readiness checks send the token."""

    def metrics(self, headers: dict | None = None) -> dict:
        return super().metrics(headers if headers is not None else {"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def auth_server(tmp_path):
    server = AuthGunicorn(tmp_path, workers=1,
                          env={"ROCKSTAR_REQUIRE_AUTH": "1", "ROCKSTAR_AUTH_TOKEN": TOKEN})
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_wrong_token_is_an_http_401_error(auth_server):
    url = base(auth_server)
    for args in (("metrics", "--token", "wrong"), ("workers", "--json", "--token", "wrong"), ("metrics",)):
        result = run(*args, "--url", url)
        assert result.returncode == 1, result
        assert "HTTP 401" in result.stderr and "Bearer" in result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr

    result = run("top", "--url", url, "--token", "wrong", "--iterations", "1")
    assert result.returncode == 1 and "ERROR: " in result.stdout and "HTTP 401" in result.stdout

    result = run("workers", "--json", "--url", url, env=clean_env(ROCKSTAR_AUTH_TOKEN=TOKEN))
    assert result.returncode == 0, result.stderr
    assert [w["pid"] for w in json.loads(result.stdout)] == auth_server.worker_pids()


# -- no server: the URL scheme and the frame layout ----------------------------------------------
def test_url_resolution(monkeypatch):
    monkeypatch.delenv("ROCKSTAR_METRICS_PATH", raising=False)
    assert cli.resolve("http://127.0.0.1:9090") == ("http://127.0.0.1:9090", "/metrics")
    assert cli.resolve("http://127.0.0.1:9090/") == ("http://127.0.0.1:9090", "/metrics")
    assert cli.resolve("http://127.0.0.1:9090/metrics") == ("http://127.0.0.1:9090", "/metrics")
    assert cli.resolve("localhost:9191/stats?pid=3") == ("http://localhost:9191", "/stats?pid=3")
    assert cli.resolve("https://h:1/stats", "m") == ("https://h:1", "/m")
    monkeypatch.setenv("ROCKSTAR_METRICS_PATH", "/stats")
    assert cli.resolve("http://h:9090") == ("http://h:9090", "/stats")
    with pytest.raises(ValueError):
        cli.resolve("ftp://h:21")
    result = run("metrics", "--url", "ftp://h")
    assert result.returncode == 2 and "--url must look like" in result.stderr


def _sample(t: float, total: int, per_worker: dict, in_flight: dict | None = None) -> cli.Sample:
    workers = [{"pid": pid, "age": i, "requests": n, "rss": 50 * cli.MiB, "uss": None, "cpu_percent": 1.5,
                "threads": 3, "open_fds": 9, "heartbeat_age": 0.25, "in_flight": 1 if pid == 11 else 0,
                "in_flight_request": in_flight if pid == 11 else None}
               for i, (pid, n) in enumerate(per_worker.items())]
    routes = {f"/r{i}": {"requests": i, "avg_duration_ms": 0.1234 * i, "p95_ms": 12.345 * i}
              for i in range(1, 13)}
    return cli.Sample({"total_requests": total, "p50_ms": 0.5, "p95_ms": 2.0, "p99_ms": 150.0,
                       "records_dropped": 4, "by_route": routes}, workers,
                      {"system": {"workers_live": len(workers), "uptime_seconds": 90061}}, t, t)


def test_top_frame_rates_and_fitting_the_terminal():
    first = _sample(100.0, 100, {11: 40, 12: 60})
    second = _sample(102.0, 130, {11: 60, 12: 70, 13: 5},
                     in_flight={"method": "POST", "path": "/upload", "seconds": 1.5})
    lines = cli.render_top(second, first, "http://x:1", 1.0)
    text = "\n".join(lines)
    assert "workers 3 live   requests 130 (15.0/s)   p50 0.500 ms  p95 2.00 ms  p99 150 ms" in text
    assert "dropped 4" in text and "uptime 1d 1:01:01" in text
    rows = {int(line.split()[0]): line.split() for line in lines if re.match(r"\s*\d+ ", line)}
    assert rows[11][3] == "10.0" and rows[12][3] == "5.0" and rows[13][3] == "-"  # REQ/S
    assert rows[11][4] == "50.0" and rows[11][5] == "-"  # RSS MiB, USS MiB (unknown)
    assert rows[11][-3:] == ["POST", "/upload", "1.50s"] and rows[12][-1] == "-"
    route_rows = [line for line in lines if line.startswith("/r")]
    assert len(route_rows) == cli.TOP_ROUTES and route_rows[0].split() == ["/r12", "12", "1.48", "148"]

    assert cli.render_top(first, None)[1].startswith("workers 2 live   requests 100 (-/s)")
    fitted = cli.render_top(second, first, height=8)  # 3 header lines, the table header, 3 workers
    assert len(fitted) == 7 and not any(line.startswith("/r") for line in fitted)
    squeezed = cli.render_top(second, first, height=6)
    assert len(squeezed) == 6 and squeezed[-1] == "... and 2 more workers"
