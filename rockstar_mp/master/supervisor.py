"""Starting the aggregator process and keeping it alive, from the master.

The aggregator is ``python -m rockstar_mp.aggregator``, not a fork of the master (a fork would inherit
the arbiter's signal handlers and listening sockets). A pre-fork master reaps unknown children itself
(gunicorn's ``waitpid(-1)``), so liveness is judged by pid and create time, not by wait status. The
aggregator kills itself when its parent dies (``PR_SET_PDEATHSIG`` and a parent-pid check), and a
master thread respawns it within ``RESPAWN_CHECK`` seconds if it dies.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from ..segment import process_alive, process_start

RESPAWN_CHECK = 0.2
STOP_GRACE = 3.0

log = logging.getLogger("rockstar_mp.master")


class AggregatorSupervisor:
    """Spawns the aggregator for ``segment_path`` and respawns it when it dies."""

    def __init__(self, segment_path: str, config_path: str, segment_fd: int | None = None,
                 run_as: tuple[int, int] | None = None) -> None:
        self.segment_path = segment_path
        self.segment_fd = segment_fd
        self.run_as = run_as  # (uid, gid) the aggregator drops to once its ports are bound
        self.config_path = config_path
        self.owner = os.getpid()
        self.pid = 0
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        self._start_time = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="rockstar-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "rockstar_mp.aggregator", "--segment", self.segment_path,
               "--config", self.config_path, "--parent", str(os.getpid())]
        pass_fds: tuple[int, ...] = ()
        if self.segment_fd is not None:  # the aggregator maps the open file: a deleted path is no matter
            cmd += ["--segment-fd", str(self.segment_fd)]
            pass_fds += (self.segment_fd,)
        if self.run_as is not None:
            cmd += ["--user", str(self.run_as[0]), "--group", str(self.run_as[1])]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True, pass_fds=pass_fds)
        self.pid = self._proc.pid
        self._start_time = process_start(self.pid)
        self.starts += 1
        if self.starts > 1:
            log.warning("rockstar-mp: aggregator restarted (pid %d, start #%d)", self.pid, self.starts)

    def alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            return False  # reaped by us, or (ECHILD) already reaped by the arbiter
        return process_alive(self.pid, self._start_time)

    def _watch(self) -> None:
        while not self._stop.wait(RESPAWN_CHECK):
            if os.getpid() != self.owner:
                return
            if not self.alive() and not self._stop.is_set():
                try:
                    self._spawn()
                except OSError as exc:
                    log.error("rockstar-mp: cannot start the aggregator: %s", exc)

    def stop(self) -> None:
        """Stop watching, then SIGTERM the aggregator and wait (SIGKILL after ``STOP_GRACE`` s)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * RESPAWN_CHECK + 1)
        if not self.pid or not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
