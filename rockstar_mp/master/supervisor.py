"""Starting the aggregator process and keeping it alive, from the master.

The aggregator is ``python -m rockstar_mp.aggregator``, not a fork of the master (a fork would inherit
the arbiter's signal handlers and listening sockets). A pre-fork master reaps unknown children itself
(gunicorn's ``waitpid(-1)``), so liveness is judged by pid and create time, not by wait status. The
aggregator kills itself when its parent dies (``PR_SET_PDEATHSIG`` and a parent-pid check), and a
master thread notices that it died and starts it again after a delay that doubles with each start that
failed in a row (``Backoff``). The thread sleeps until there is news: it waits in ``select`` on the
aggregator's pidfd (readable once it exits, reaped or not), its status pipe and a wake-up pipe, so an
idle master spends no CPU on it; without pidfds (Linux < 5.3) it looks every ``RESPAWN_CHECK`` seconds.

Each aggregator gets the write end of a status pipe (``--status-fd``). It writes one line:
``serving <url>`` once its metrics socket is bound and served, or ``fatal: <cause>`` before exiting
when it cannot start; later ``serving-pprof <url>`` / ``serving-snmp <url>`` whenever those start serving.
The master logs a cause when it differs from the last one it logged, and the URL
when it differs from the last one it announced.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from ..segment import process_alive, process_start

RESPAWN_CHECK = 0.2  # how often the aggregator's liveness is checked where there is no pidfd
STOP_GRACE = 3.0
BACKOFF_BASE = 0.2  # the delay before the first restart
BACKOFF_MAX = 30.0  # MonitoringConfig.aggregator_restart_max_delay's default
STABLE_AFTER = 30.0  # an aggregator up this long was a success: the next restart waits BACKOFF_BASE again
REMIND_EVERY = 300.0  # the same cause again is logged at debug level, with a warning at most this often

log = logging.getLogger("rockstar_mp.master")


class Backoff:
    """Delays that double from ``base`` up to ``cap`` with each failure in a row."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class StatusChannel:
    """The read end of one aggregator's status pipe: complete lines, read without blocking."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.ended = False  # end of file seen: nothing more to wait for
        self._partial = b""

    def lines(self) -> list[str]:
        """The lines written since the last call (a worker forked meanwhile may hold the write end too,
        so end of file is not awaited: the aggregator's own lines are in the pipe before it exits)."""
        data = b""
        while self.fd >= 0:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                self.ended = True
                break
            data += chunk
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode(errors="replace").strip() for line in complete if line.strip()]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def exit_description(returncode: int | None) -> str:
    """Why a process that reported no cause ended, as far as its wait status tells (0 may also mean
    that the arbiter reaped it before us)."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode:
        return f"exited with status {returncode} without reporting a cause"
    return "exited without reporting a cause"


class AggregatorSupervisor:
    """Spawns the aggregator for ``segment_path`` and respawns it, with backoff, when it dies."""

    def __init__(self, segment_path: str, config_path: str, segment_fd: int | None = None,
                 run_as: tuple[int, int] | None = None, max_delay: float = BACKOFF_MAX) -> None:
        self.segment_path = segment_path
        self.segment_fd = segment_fd
        self.run_as = run_as  # (uid, gid) the aggregator drops to once its ports are bound
        self.config_path = config_path
        self.owner = os.getpid()
        self.pid = 0
        self.starts = 0
        self.url = ""  # what the aggregator last said it serves
        self.backoff = Backoff(cap=max_delay)
        self._proc: subprocess.Popen | None = None
        self._start_time = 0.0
        self._spawned_at = 0.0
        self._status: StatusChannel | None = None
        self._fatal = ""  # the cause the running aggregator reported, if any
        self._also: dict[str, str] = {}  # pprof and SNMP addresses announced, by kind
        self._respawn_at: float | None = None  # set while the aggregator is down
        self._logged_cause = ""
        self._logged_at = 0.0
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe()  # stop() wakes the watching thread through it
        os.set_blocking(self._wake_write, False)
        self._pidfd = -1  # the running aggregator's pidfd, -1 if none (or no pidfds here)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="rockstar-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self.pid = 0
        self._spawned_at = time.monotonic()
        status_read, status_write = os.pipe()
        pass_fds: tuple[int, ...] = (status_write,)
        cmd = [sys.executable, "-m", "rockstar_mp.aggregator", "--segment", self.segment_path,
               "--config", self.config_path, "--parent", str(os.getpid()), "--status-fd", str(status_write)]
        if self.segment_fd is not None:  # the aggregator maps the open file: a deleted path is no matter
            cmd += ["--segment-fd", str(self.segment_fd)]
            pass_fds += (self.segment_fd,)
        if self.run_as is not None:
            cmd += ["--user", str(self.run_as[0]), "--group", str(self.run_as[1])]
        if self.starts:
            # The bind retry waits for a predecessor to let the port go. A restart follows our own
            # aggregator's death, whose sockets are closed: a taken port waits out the backoff instead.
            cmd += ["--bind-retry", "0"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True, pass_fds=pass_fds)
        except OSError:
            os.close(status_read)
            raise
        finally:
            os.close(status_write)
        self._status = StatusChannel(status_read)
        self._fatal = ""
        self.pid = self._proc.pid
        self._start_time = process_start(self.pid)
        self._pidfd = open_pidfd(self.pid)
        self.starts += 1
        if self.starts > 1:
            log.debug("rockstar-mp: aggregator restarted (pid %d, start #%d)", self.pid, self.starts)

    def alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            return False  # reaped by us, or (ECHILD) already reaped by the arbiter
        return process_alive(self.pid, self._start_time)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wait_for_news()
            if os.getpid() != self.owner or self._stop.is_set():
                return
            self._read_status()
            if self._stop.is_set():
                return
            if self._respawn_at is None:
                if not self.alive():
                    self._read_status()  # what it wrote before exiting
                    self._failed(self._fatal or exit_description(self._proc.returncode if self._proc else None))
            elif time.monotonic() >= self._respawn_at:
                self._respawn_at = None
                try:
                    self._spawn()
                except OSError as exc:
                    self._failed(f"cannot start: {exc}")

    def _wait_for_news(self) -> None:
        """Sleep until the aggregator wrote a status line or exited, ``stop`` was called, or a
        respawn is due (every ``RESPAWN_CHECK`` s where there is no pidfd to wait on)."""
        waits = [self._wake_read]
        if self._status is not None and not self._status.ended:
            waits.append(self._status.fd)
        timeout: float | None = None
        if self._respawn_at is not None:
            timeout = max(0.0, self._respawn_at - time.monotonic())
        elif self._pidfd >= 0:
            waits.append(self._pidfd)
        else:
            timeout = RESPAWN_CHECK
        with contextlib.suppress(InterruptedError, OSError, ValueError):
            select.select(waits, [], [], timeout)

    def _read_status(self) -> None:
        if self._status is None:
            return
        for line in self._status.lines():
            if line.startswith("fatal: "):
                self._fatal = line[len("fatal: "):]
            elif line.startswith("serving "):
                self._serving(line[len("serving "):])
            elif line.startswith(("serving-pprof ", "serving-snmp ")):
                kind, url = line.split(" ", 1)
                self._serving_also(kind[len("serving-"):], url)

    def _serving(self, url: str) -> None:
        if self._logged_cause:
            log.info("rockstar-mp: aggregator serving again (pid %d, start #%d)", self.pid, self.starts)
            self._logged_cause = ""  # the same failure later is news again
        if url != self.url:
            log.info("rockstar-mp: metrics on %s", url)
            self.url = url

    def _serving_also(self, kind: str, url: str) -> None:
        """pprof or SNMP now serves (at start, or enabled at runtime): said once per address."""
        if self._also.get(kind) != url:
            log.info("rockstar-mp: %s on %s", "pprof" if kind == "pprof" else "SNMP", url)
            self._also[kind] = url

    def _failed(self, cause: str) -> None:
        """The aggregator stopped (or could not be started): schedule the next start and say why."""
        if self._status is not None:
            self._status.close()
            self._status = None
        self._close_pidfd()
        if time.monotonic() - self._spawned_at >= STABLE_AFTER:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self._respawn_at = time.monotonic() + delay
        self._log_cause(cause, delay)

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            os.close(pidfd)

    def _log_cause(self, cause: str, delay: float) -> None:
        now = time.monotonic()
        who = f"aggregator (pid {self.pid})" if self.pid else "aggregator"
        if cause != self._logged_cause:
            log.error("rockstar-mp: %s stopped: %s; restarting in %.1f s", who, cause, delay)
            self._logged_cause, self._logged_at = cause, now
        elif now - self._logged_at >= REMIND_EVERY:
            log.warning("rockstar-mp: aggregator still failing (%d failed starts in a row): %s; "
                        "restarting in %.1f s", self.backoff.failures, cause, delay)
            self._logged_at = now
        else:
            log.debug("rockstar-mp: %s stopped again: %s; restarting in %.1f s", who, cause, delay)

    def stop(self) -> None:
        """Stop watching, then SIGTERM the aggregator and wait (SIGKILL after ``STOP_GRACE`` s)."""
        self._stop.set()
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is already pending
            os.write(self._wake_write, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * RESPAWN_CHECK + 1)
        if self.pid and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        if self._status is not None:
            self._status.close()
            self._status = None
        self._close_pidfd()


def open_pidfd(pid: int) -> int:
    """A pidfd of ``pid`` (readable once it exits), or -1 where Linux or Python has none, or it is gone."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return -1
    try:
        return pidfd_open(pid)
    except OSError:
        return -1
