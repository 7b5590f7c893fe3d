"""A failing aggregator is restarted with backoff, its cause is logged once, and the metrics URL is
announced only once it is bound: real gunicorn masters, a really corrupted segment, a really taken port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rockstar_mp import MonitoringConfig
from tests.helpers import GUNICORN, ROOT, Gunicorn, accepts, free_port, poll, raw_get

MAX_DELAY = 5.0  # aggregator_restart_max_delay of the failing servers (default 30 s: the same doubling, longer)
WINDOW = 20.0  # how long the faults last: past the doubling (0.2 + 0.4 + ... + 3.2 s, plus the failed starts)
LAST = 4.0  # at most one restart attempt in the window's last LAST seconds (< MAX_DELAY)
RESTART_ENV = {"ROCKSTAR_AGGREGATOR_RESTART_MAX_DELAY": str(MAX_DELAY)}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class GunicornWithoutMetrics(Gunicorn):
    """A server whose aggregator is not expected to serve: start waits for the workers only."""

    def start(self) -> "GunicornWithoutMetrics":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([GUNICORN, "-c", str(ROOT / "gunicorn_conf.py"), self.app], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        poll(lambda: len(self.worker_pids()) == self.workers and accepts(self.port),
             timeout=20, message="gunicorn listening")
        return self


@pytest.fixture
def taken_port():
    """A port some other socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock


@pytest.fixture
def server_on_port(tmp_path):
    """Start a server whose metrics port is given (``start(port)``); stopped, and its log checked, after."""
    servers: list[Gunicorn] = []

    def start(port: int) -> GunicornWithoutMetrics:
        path = tmp_path / f"busy{len(servers)}"
        path.mkdir()
        server = GunicornWithoutMetrics(path, workers=1, env=RESTART_ENV)
        server.metrics_port = port
        server.env["ROCKSTAR_METRICS_PORT"] = str(port)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        log = server.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def aggregator_children(master: int) -> list[int]:
    """The master's live aggregator children."""
    out = []
    try:
        children = psutil.Process(master).children()
    except psutil.Error:
        return out
    for child in children:
        try:
            if "rockstar_mp.aggregator" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.Error:
            pass  # it exited while we looked
    return out


def _cpu_ticks(pid: int, fields: slice) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in stat[fields])


def aggregator_cpu_seconds(master: int) -> float:
    """CPU seconds of the master (itself plus its reaped children: the aggregators that died; its workers
    live throughout) plus its live aggregators: the difference over a window is what supervision cost."""
    ticks = _cpu_ticks(master, slice(11, 15))  # utime, stime, cutime, cstime
    for pid in aggregator_children(master):
        try:
            ticks += _cpu_ticks(pid, slice(11, 13))
        except (FileNotFoundError, ProcessLookupError):
            pass  # reaped meanwhile: counted in the master's cutime next time
    return ticks / CLOCK_TICKS


def corrupt_header(segment: Path) -> None:
    with open(segment, "r+b") as f:
        f.write(b"CORRUPT!")  # the magic


def test_failing_aggregators_back_off_and_log_their_cause_once(gunicorn_factory, server_on_port, taken_port):
    corrupted = gunicorn_factory(workers=1, env=RESTART_ENV)
    [segment] = corrupted.segment_files()
    busy = server_on_port(taken_port.getsockname()[1])
    servers = {"corrupted segment": corrupted, "port taken": busy}
    seen = {name: set(aggregator_children(s.pid)) for name, s in servers.items()}
    starts: dict[str, list[float]] = {name: [] for name in servers}  # when a new aggregator was first seen

    cpu_before = {name: aggregator_cpu_seconds(s.pid) for name, s in servers.items()}
    window_start = time.monotonic()
    corrupt_header(segment)
    for pid in seen["corrupted segment"]:
        os.kill(pid, signal.SIGKILL)
    while (now := time.monotonic()) < window_start + WINDOW:
        for name, server in servers.items():
            new = set(aggregator_children(server.pid)) - seen[name]
            seen[name] |= new
            starts[name] += [now - window_start] * len(new)
        time.sleep(0.05)  # sampling, not synchronisation: even a failing aggregator lives far longer
    cpu = {name: aggregator_cpu_seconds(s.pid) - cpu_before[name] for name, s in servers.items()}

    in_last = {name: [t for t in starts[name] if t >= WINDOW - LAST] for name in servers}
    for name in servers:
        at = ", ".join(f"{t:.1f}" for t in starts[name])
        print(f"\n{name}: {len(starts[name])} starts in {WINDOW:.0f} s (at {at}), "
              f"{len(in_last[name])} in the last {LAST:.0f} s; aggregator CPU {cpu[name]:.2f} s")
    for name, server in servers.items():
        assert raw_get(server.port, "/") == 200, name
    for name, cause in (("corrupted segment", "not a rockstar-mp segment"), ("port taken", "Address already in use")):
        log = servers[name].log_text()
        assert len(in_last[name]) <= 1, (name, starts[name], log)
        assert len([line for line in log.splitlines() if cause in line]) == 1, log
    assert "metrics on" not in busy.log_text()
    assert corrupted.log_text().count(f"rockstar-mp: metrics on {corrupted.url}") == 1


def test_metrics_url_is_announced_once_bound(server_on_port, taken_port):
    port = taken_port.getsockname()[1]
    server = server_on_port(port)  # the aggregator retries the bind: a predecessor may still hold the port
    poll(lambda: "is not free yet; retrying" in server.log_text(), timeout=15, message="the aggregator retrying")
    assert "metrics on" not in server.log_text()

    taken_port.close()
    poll(lambda: server.metrics()["system"]["workers_live"] == 1, timeout=15, message="metrics served")
    announced = f"rockstar-mp: metrics on {server.url}"
    poll(lambda: announced in server.log_text(), timeout=5, message="the URL announced")
    assert server.log_text().count(announced) == 1
    assert "[ERROR]" not in server.log_text()  # the retry bound it: no restart was needed
    assert server.log_text().count("segment " + str(server.segment_dir)) == 1


def _run_aggregator(tmp_path: Path, segment: Path, config: Path) -> tuple[int, str, str]:
    status_read, status_write = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "rockstar_mp.aggregator", "--segment", str(segment),
                               "--config", str(config), "--parent", str(os.getpid()),
                               "--status-fd", str(status_write)], pass_fds=(status_write,), cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    finally:
        os.close(status_write)
    with os.fdopen(status_read) as f:
        return proc.returncode, f.read(), proc.stderr


def test_fatal_start_up_errors_are_one_status_line_without_traceback(tmp_path):
    config = tmp_path / "aggregator.json"
    config.write_text(MonitoringConfig(metrics_port=free_port()).to_json())
    not_a_segment = tmp_path / "garbage.seg"
    not_a_segment.write_bytes(b"CORRUPT!" * 1024)

    code, status, stderr = _run_aggregator(tmp_path, not_a_segment, config)
    assert code != 0 and "Traceback" not in stderr, stderr
    assert status.startswith("fatal: ") and status.count("\n") == 1 and "not a rockstar-mp segment" in status

    code, status, stderr = _run_aggregator(tmp_path, not_a_segment, tmp_path / "missing.json")
    assert code != 0 and "Traceback" not in stderr, stderr
    assert status.startswith("fatal: ") and status.count("\n") == 1 and "missing.json" in status
