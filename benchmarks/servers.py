"""The gunicorn servers the benchmarks run, and how they are driven: each in a session of its own (so
``stop`` finds every process it started), on free loopback ports, loaded by ``wrk``.

Standard library only at top level; used by figures 7 (``run.py``) and 8-10 (``ops.py``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from .settings import (
    PROM_ENV,
    ROOT,
    SERVER_START_TIMEOUT,
    SERVER_STOP_TIMEOUT,
    SERVER_WORKERS,
    WRK_CONNECTIONS,
    WRK_THREADS,
)


def child_env(prom_dir: str | None) -> dict:
    """This environment for a benchmark process: the repository importable, prometheus_client's
    multiprocess directory set to ``prom_dir`` only if given."""
    env = {k: v for k, v in os.environ.items() if k not in PROM_ENV}
    if prom_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while picked, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_group(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def no_control_socket() -> list[str]:
    """gunicorn >= 27 opens a control socket, by default at ~/.gunicorn/gunicorn.ctl: one path for every
    gunicorn of the user, so a bench server and any other gunicorn running at the time would take it
    from each other. Ours go without (on and off alike)."""
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    return ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS
                                         if s.cli) else []


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def http_once(url: str, timeout: float = 5.0) -> tuple[float, int]:
    """One GET on a new connection: (seconds, status)."""
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return time.perf_counter() - t, status


def segment_parent(tmp: str) -> str:
    """Where an "on" server's segment directory goes: where a user's goes by default
    (``MonitoringConfig.segment_dir``, /dev/shm; a file on a disk filesystem such as /tmp's ext4 is written
    back every few seconds, and each page the worker writes afterwards faults again), else ``tmp``."""
    from rockstar_mp.config import MonitoringConfig  # here: this module's top level is standard library only

    default = MonitoringConfig.segment_dir
    return default if os.path.isdir(default) and os.access(default, os.W_OK) else tmp


def plain_env() -> dict:
    """This environment without rockstar-mp's settings or GUNICORN_CMD_ARGS: a server gets only ours."""
    return {k: v for k, v in child_env(None).items() if not k.startswith("ROCKSTAR_") and k != "GUNICORN_CMD_ARGS"}


class Server:
    """One gunicorn master (and its workers, and for "on" its aggregator) in a session of its own, so
    ``stop`` can find every process it started: SIGTERM the master, wait, then check its group."""

    def __init__(self, mode: str, tmp: str, number: int, app: str | None = None,
                 worker_args: tuple[str, ...] = ("-k", "sync"), workers: int = SERVER_WORKERS,
                 env: dict | None = None, config: str | None = None) -> None:
        """``app``: the WSGI/ASGI app to serve (default: ``examples.app:app`` on,
        ``benchmarks.bare_app:app`` off); ``worker_args``: gunicorn's arguments naming the worker
        class; ``env``: more environment (``ROCKSTAR_*`` settings for "on"); ``config``: "off" only, a
        gunicorn config file instead of an empty one."""
        self.mode = mode
        self.segment_dir: str | None = None  # "on": removed by stop()
        self.port, self.metrics_port = free_ports(2)
        if mode == "on":  # the example app under the example config: hooks, aggregator, middlewares
            self._launch(["-c", "gunicorn_conf.py", *worker_args, app or "examples.app:app"],
                         dict(self._monitored_env(tmp, workers), **(env or {})), tmp, f"{mode}-{number}")
        else:  # plain gunicorn (an empty config file: not even ./gunicorn.conf.py) on the bare routes
            if config is None:
                config = os.path.join(tmp, "empty_gunicorn_conf.py")
                open(config, "w").close()
            self._launch(["-c", config, *worker_args, "-w", str(workers), "-b", f"127.0.0.1:{self.port}",
                          app or "benchmarks.bare_app:app"], dict(plain_env(), **(env or {})), tmp,
                         f"{mode}-{number}")

    def _monitored_env(self, tmp: str, workers: int) -> dict:
        """What gunicorn_conf.py reads: bind, workers, the metrics port, fresh segment (``segment_parent``)
        and run dirs."""
        self.segment_dir = tempfile.mkdtemp(prefix="rockstar-bench-segment-", dir=segment_parent(tmp))
        return dict(plain_env(), BIND=f"127.0.0.1:{self.port}", WORKERS=str(workers),
                    ROCKSTAR_METRICS_PORT=str(self.metrics_port),
                    ROCKSTAR_SEGMENT_DIR=self.segment_dir,
                    ROCKSTAR_RUN_DIR=tempfile.mkdtemp(prefix="run-", dir=tmp))

    def _launch(self, gunicorn_args: list, env: dict, tmp: str, name: str) -> None:
        """Start ``python -m gunicorn <args>`` in a session of its own, logging to a file of ``tmp``."""
        self.cmd = [sys.executable, "-m", "gunicorn"] + no_control_socket() + gunicorn_args
        self.stopped = False
        self.log_path = os.path.join(tmp, f"gunicorn-{name}.log")
        self.url = f"http://127.0.0.1:{self.port}/"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self) -> None:
        """Until the app answers 200 (and, for "on", the aggregator serves /metrics)."""
        urls = [self.url] + ([self.metrics_url()] if self.mode == "on" else [])
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        for url in urls:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gunicorn ({self.mode}) exited with {self.proc.returncode}:\n"
                                       + self.log_tail())
                try:
                    status, headers, _ = http_get(url)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn ({self.mode}): {url} not ready after "
                                       f"{SERVER_START_TIMEOUT:.0f} s:\n" + self.log_tail())
                time.sleep(0.05)
        # That "on" really recorded is checked after each run (``recorded()`` >= the responses).

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics?format=json"

    def recorded(self) -> tuple[float, float]:
        """("on") merged ``http.requests`` (from /metrics) and workload records (/workload's total)."""
        _, _, body = http_get(self.metrics_url(), timeout=10.0)
        counters = json.loads(body)["counters"]
        _, _, body = http_get(f"http://127.0.0.1:{self.metrics_port}/workload", timeout=10.0)
        return float(counters.get("http.requests", 0)), float(json.loads(body)["total_requests"])

    def stop(self) -> list[str]:
        """SIGTERM the master and wait; then every process of its group must be gone (else SIGKILL).
        Returns notes on anything that needed force."""
        if self.stopped:
            return []
        self.stopped = True
        notes = []
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                notes.append(f"gunicorn ({self.mode}) master {pgid} ignored SIGTERM for "
                             f"{SERVER_STOP_TIMEOUT:.0f} s: killed")
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10.0
        left = process_group(pgid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = process_group(pgid)
        if left:
            notes.append(f"gunicorn ({self.mode}): processes {left} outlived their master: killed")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.segment_dir:
            shutil.rmtree(self.segment_dir, ignore_errors=True)
        return notes


def run_wrk(url: str, seconds: int) -> dict:
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return parse_wrk(proc.stdout)


def parse_wrk(stdout: str) -> dict:
    """wrk's summary: req/s, responses, socket errors and non-2xx responses."""
    out = {"rps": 0.0, "requests": 0, "errors": 0, "non2xx": 0}
    for line in stdout.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(words[1])
        elif len(words) > 2 and words[1] == "requests" and words[2] == "in":
            out["requests"] = int(words[0])
        elif line.strip().startswith("Socket errors:"):
            out["errors"] = sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non2xx"] = int(words[-1])
    if not out["rps"]:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{stdout}")
    return out
