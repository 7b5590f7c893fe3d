"""The worker's control channel: a Unix socket served by a small daemon thread (never a request thread).

``start_control(segment_path)`` is called once by ``attach_worker`` (in the worker's main thread, just
after fork). Whether or not pprof is enabled (it can be turned on at runtime: the aggregator decides
what it serves; the socket only answers this user), it:

* installs the SIGPROF handler (main thread only; it does nothing until a CPU profile arms the timer),
* records where threads are started (``threadcreate``), and starts tracemalloc if
  ``heap_tracemalloc_at_boot``,
* listens on ``<run_dir>/control/<pid>.sock`` (the master's private run dir, see ``safefs``; directory
  0700, socket 0600) and answers each connection from a same-user peer (SO_PEERCRED) in a short-lived
  daemon thread: profiles run there, never on a request thread.

None of it touches the request path: with no profile running the cost is one thread asleep in
``accept`` and an idle signal handler.

Under gevent (``gunicorn -k gevent`` patches the worker after ``post_fork``, a config file may patch
the master before) every thread, lock and socket here is a real one (``profiling.native``): a greenlet
started from the accept thread would never run, and one in the main thread would wait for the request
greenlets to yield.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import os
import socket
import struct
import tracemalloc

from .. import safefs
from ..config import MonitoringConfig
from ..environment import RUN_DIR_ENV
from ..profiling import KINDS, Busy, collect, install_signal_handler, install_threadcreate_hook, native
from ..profiling.channel import MAX_REQUEST, control_dir, socket_path

MAX_CONCURRENT = 8
REQUEST_TIMEOUT = 5.0

log = logging.getLogger("rockstar_mp.worker.control")

_SERVER: "ControlServer | None" = None


def _run_dir(segment_path: str | None) -> str | None:
    """The master's private run dir: what it exported, else the one its configured ``run_dir`` leads to
    (never the configured directory itself when others may write there)."""
    exported = os.environ.get(RUN_DIR_ENV)
    if exported:
        return exported
    configured = MonitoringConfig().with_env().run_dir
    found = safefs.effective_run_dir(configured, create=False) if configured else None
    return found.path if found else None


def load_config(run_dir: str | None, segment_path: str | None) -> MonitoringConfig:
    """The master's config, as it wrote it for the aggregator (code values and environment both)."""
    if run_dir and segment_path:
        name = os.path.basename(segment_path)
        candidates = [os.path.join(run_dir, f"aggregator-{os.getppid()}-{name}.json")]
        candidates += sorted(glob.glob(os.path.join(glob.escape(run_dir), f"aggregator-*-{glob.escape(name)}.json")))
        for path in candidates:
            try:
                with open(path) as f:
                    return MonitoringConfig.from_json(f.read())
            except (OSError, ValueError, TypeError):
                continue
    return MonitoringConfig().with_env()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    def __init__(self, path: str, config: MonitoringConfig) -> None:
        self.path = path
        self.config = config
        self.pid = os.getpid()
        self._slots = native.Slots(MAX_CONCURRENT)
        self._sock: socket.socket | None = None

    def start(self) -> None:
        safefs.private_dir(os.path.dirname(self.path))  # in the private run dir: only ours can be there
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a previous worker with our pid
        sock = native.socket_class()(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        native.start_thread(self._accept_loop, "rockstar-control")
        atexit.register(self.close)

    def close(self) -> None:
        if os.getpid() != self.pid:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = native.accept(self._sock)  # type: ignore[arg-type]
            except OSError:
                return  # closed
            if os.getpid() != self.pid:
                conn.close()
                return
            if not self._slots.take():
                self._answer(conn, {"ok": False, "status": 503, "error": "too many profile requests"})
                continue
            try:
                native.start_thread(self._serve, "rockstar-profile", (conn,))
            except RuntimeError:  # no thread to be had: answer rather than leave the client waiting
                self._slots.give_back()
                self._answer(conn, {"ok": False, "status": 503, "error": "cannot start a thread"})

    @staticmethod
    def _answer(conn: socket.socket, answer: dict) -> None:
        try:
            conn.settimeout(30.0)
            conn.sendall(json.dumps(answer, separators=(",", ":")).encode())
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                if _peer_uid(conn) not in (os.getuid(), 0):
                    self._answer(conn, {"ok": False, "status": 403, "error": "peer is another user"})
                    return
                conn.settimeout(REQUEST_TIMEOUT)
                data = b""
                while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
            except (OSError, ValueError) as exc:
                self._answer(conn, {"ok": False, "status": 400, "error": f"bad request: {exc}"})
                return
            self._answer(conn, self.handle(request))
        finally:
            self._slots.give_back()

    def handle(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True, "result": {"pid": os.getpid()}}
        if cmd != "profile":
            return {"ok": False, "status": 400, "error": f"unknown command {cmd!r}"}
        kind = request.get("kind")
        if kind not in KINDS:
            return {"ok": False, "status": 400, "error": f"unknown profile {kind!r}"}
        try:
            seconds = request.get("seconds")
            if seconds is not None:
                seconds = float(seconds)
                if not 0 <= seconds <= self.config.pprof_max_seconds:
                    raise ValueError(f"seconds must be 0..{self.config.pprof_max_seconds:g}")
            result = collect(kind, seconds, hz=int(request.get("hz") or self.config.pprof_hz),
                             gc=bool(request.get("gc")), mode=request.get("mode") or self.config.pprof_cpu_mode,
                             internal=bool(request.get("internal")))
            return {"ok": True, "result": result}
        except Busy as exc:
            return {"ok": False, "status": 409, "error": str(exc)}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "status": 400, "error": str(exc)}
        except Exception as exc:  # a profile failing must never take the worker down
            log.exception("rockstar-mp: profile %s failed", kind)
            return {"ok": False, "status": 500, "error": f"{type(exc).__name__}: {exc}"}


def start_control(segment_path: str | None = None) -> ControlServer | None:
    """Set up profiling and the control socket in this worker (see the module doc).
    Never raises: a worker that cannot be profiled still serves."""
    global _SERVER
    if _SERVER is not None and _SERVER.pid == os.getpid():
        return _SERVER
    try:
        run_dir = _run_dir(segment_path)
        config = load_config(run_dir, segment_path)
        native.remember_main_thread()
        install_signal_handler()
        install_threadcreate_hook()
        if config.heap_tracemalloc_at_boot and not tracemalloc.is_tracing():
            tracemalloc.start(config.pprof_heap_frames)
        if not run_dir:
            log.warning("rockstar-mp: no run directory known; this worker cannot be profiled remotely")
            return None
        _SERVER = ControlServer(socket_path(run_dir, os.getpid()), config)
        _SERVER.start()
        return _SERVER
    except Exception as exc:
        log.warning("rockstar-mp: the control channel did not start: %s", exc)
        return None


__all__ = ["ControlServer", "start_control", "load_config", "control_dir"]
