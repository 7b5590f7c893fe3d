"""The aggregator process: ``python -m rockstar_mp.aggregator --segment PATH --config FILE --parent PID``
(optionally ``--status-fd N --bind-retry SECONDS``).

One asyncio loop runs uvicorn serving the Falcon app and the tick (fold dead workers, heartbeat,
process figures). It dies with its master (``PR_SET_PDEATHSIG`` plus a parent-pid check on every tick)
and holds an exclusive lock on the segment itself, so a second aggregator for the same segment (gunicorn's
USR2 starts a second master) waits in standby until the first is gone. It maps the segment through the
descriptor the master passes (``--segment-fd``), so a deleted segment path does not stop it.

With ``--status-fd`` it tells its master, in one line on that fd, ``serving <url>`` once the metrics
socket is bound and served, or ``fatal: <cause>`` when it cannot start (a segment it cannot read, a port
still taken after the bind retry, a config it cannot read, privileges it cannot drop); it then exits with
status 1, no traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

import uvicorn

from .._linux import set_parent_death_signal
from ..config import MonitoringConfig
from ..privileges import drop_to
from ..segment import RockstarError, Segment
from ..segment.layout import Header
from . import net
from .dashboard.traffic import traffic_rows
from .history import HistoryWriter
from .http import create_app
from .net import listen_tcp
from .optimize import run_schedule
from .pprof import Pprof, run_pprof_server
from .snmp.agent import RCVBUF as SNMP_RCVBUF
from .snmp.agent import preload as preload_snmp
from .snmp.runtime import run_snmp
from .state import AggregatorState

if TYPE_CHECKING:
    from .remote_write import RemoteWriter

PROCESS_REFRESH = 1.0  # USS/PSS and open fds: a few workers a refresh (state.ProcessStats)
BIND_RETRY_SECONDS = 10.0

log = logging.getLogger("rockstar_mp.aggregator")


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when the parent dies; exit now if it is already gone."""
    set_parent_death_signal(signal.SIGKILL)  # elsewhere, the tick's parent check ends us
    if os.getppid() != parent:
        sys.exit(0)


def wait_for_lock(segment: Segment, parent: int) -> None:
    """Take the one-aggregator-per-segment lock, waiting in standby while another aggregator holds it."""
    while not segment.try_aggregator_lock():
        if os.getppid() != parent:
            sys.exit(0)
        time.sleep(0.1)


class StartupError(RockstarError):
    """A reason the aggregator cannot start: reported in one line, without a traceback."""


class StatusLine:
    """The one-line reports to the master on ``--status-fd`` (to the log when there is no such fd)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def report(self, line: str) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, (" ".join(line.split()) + "\n").encode())
                return
            except OSError:
                self.fd = None  # the master is gone: we are about to follow it
        log.info("rockstar-mp aggregator: %s", line)

    def fatal(self, cause: str) -> int:
        """Report a start-up failure; the exit status to return."""
        if self.fd is None:
            log.error("rockstar-mp aggregator: %s", cause)
        else:
            self.report(f"fatal: {cause}")
        return 1


def read_config(path: str) -> MonitoringConfig:
    try:
        with open(path) as f:
            return MonitoringConfig.from_json(f.read())
    except (OSError, ValueError, TypeError) as exc:
        raise StartupError(f"cannot read the config {path}: {exc}") from None


def attach_segment(path: str, fd: int | None = None) -> Segment:
    try:
        return Segment.attach(path, fd=fd)
    except (OSError, ValueError, RockstarError) as exc:
        raise StartupError(f"cannot attach the segment {path}: {exc}") from None


def bind(host: str, port: int, retry: float = BIND_RETRY_SECONDS) -> socket.socket:
    """The metrics port's socket, retried for ``retry`` seconds (the aggregator before us may still
    hold it during a handover)."""
    deadline = time.monotonic() + retry
    waiting = False
    while True:
        try:
            return listen_tcp(host, port)
        except OSError as exc:
            if time.monotonic() + 0.2 > deadline:
                raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
            if not waiting:
                log.info("rockstar-mp aggregator: %s:%d is not free yet; retrying for up to %.0f s",
                         host, port, retry)
                waiting = True
            time.sleep(0.2)


def bind_then_drop(config: MonitoringConfig, uid: int, gid: int,
                   bind_retry: float = BIND_RETRY_SECONDS) -> None:
    """Bind every port the config serves now (privileged ports need root), then run as ``uid``/``gid``.
    A port enabled only later, at runtime, is bound then, as that user."""
    net.hold("tcp", config.host, config.metrics_port, bind(config.host, config.metrics_port, bind_retry))
    wanted = [("tcp", config.pprof_port, config.enable_pprof), ("udp", config.snmp_port, config.enable_snmp)]
    for kind, port, enabled in wanted:
        if enabled:
            try:
                net.prebind(kind, config.host, port, SNMP_RCVBUF if kind == "udp" else 0)
            except OSError as exc:  # the server of that port retries, and reports, as usual
                log.error("rockstar-mp aggregator: cannot bind %s %s:%d before dropping privileges: %s",
                          kind, config.host, port, exc)
    if config.enable_snmp:
        preload_snmp()
    drop_to(uid, gid)
    log.info("rockstar-mp aggregator: running as uid %d gid %d", uid, gid)


class HttpServer:
    """One uvicorn server on a socket we bound, driven from our loop. Its connections are accepted and
    limited by ``net.Connections`` (``limits``); ``plain_errors`` for the pprof port's text errors."""

    def __init__(self, app, sock: socket.socket, on_started=None, limits: net.ConnectionLimits | None = None,
                 plain_errors: bool = False, driven: bool = False) -> None:
        self.sock = sock
        self.driven = driven  # the aggregator's tick calls beat(): no timer of its own (_main_loop)
        self._beat = asyncio.Event()
        self._dated = -1  # the second of the last Date header
        self.on_started = on_started  # called once uvicorn serves the socket
        limits = limits or net.ConnectionLimits()
        config = uvicorn.Config(net.HeaderLimit(app, limits, plain_errors), lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2, ws="none",
                                # uvicorn annotates int but uses it as seconds for call_later: a float works
                                timeout_keep_alive=limits.keepalive_timeout,  # type: ignore[arg-type]
                                h11_max_incomplete_event_size=limits.max_header_bytes)
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self.connections = net.Connections(sock, limits, plain_errors)
        self._stopping = asyncio.Event()
        protocol_class = net.guarded(config.http_protocol_class, self.connections)
        self.connections.make_protocol = lambda: protocol_class(
            config=config, server_state=self.server.server_state, app_state=self.server.lifespan.state)

    async def run(self) -> None:
        await self.server.startup(sockets=[])  # we accept (self.connections), not asyncio's server
        self.connections.start()
        if self.on_started is not None and self.server.started:
            self.on_started()
        await self._main_loop()
        self.connections.stop()
        await self.server.shutdown(sockets=[])

    async def _main_loop(self) -> None:
        """uvicorn's main loop: ``on_tick(0)`` refreshes the Date header, which has a resolution of one
        second, and says whether to exit; ``stop()`` wakes it at once. A ``driven`` server runs it on the
        aggregator's tick (``beat``, at least once a second while ``tick_interval`` is at most that): a
        timer of its own woke the idle process once more a second, 0.3 of the 1.0 ms of CPU a second an
        idle aggregator with one worker spent. Others wake once a second (uvicorn's own loop: ten)."""
        while True:
            second = int(time.time())
            if await self.server.on_tick(0 if second != self._dated else 1):  # 1: no new Date header
                return
            self._dated = second
            if self.driven:
                await self._beat.wait()
                self._beat.clear()
                continue
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

    def beat(self) -> None:
        """Run the main loop's step now (the tick's call, on a ``driven`` server)."""
        self._beat.set()

    def stop(self) -> None:
        self.server.should_exit = True
        self._stopping.set()
        self._beat.set()


class TickSleep:
    """The sleep between two ticks, which a stop ends at once (or skips, if it came during a tick):
    ``asyncio.sleep``'s own future and timer (``wait_for`` on the stop event cost more a tick), kept
    where the signal handler can wake it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: asyncio.Future | None = None
        self._woken = False

    async def sleep(self, seconds: float) -> None:
        if self._woken:
            return
        self._waiting = waiting = self.loop.create_future()
        timer = self.loop.call_later(seconds, self._end, waiting)
        try:
            await waiting
        finally:
            timer.cancel()
            self._waiting = None

    def wake(self) -> None:
        """End the sleep, and the ones after it (a stop)."""
        self._woken = True
        self.hurry()

    def hurry(self) -> None:
        """End this sleep only (a helper was forked: ``attach.hurry_aggregator``)."""
        if self._waiting is not None:
            self._end(self._waiting)

    @staticmethod
    def _end(waiting: asyncio.Future) -> None:
        if not waiting.done():
            waiting.set_result(None)


def _log_failure(what: str, exc: Exception) -> None:
    """Once per interval, with a count; OSError (out of descriptors: the environment) without a traceback."""
    if isinstance(exc, OSError):
        log.error("rockstar-mp aggregator: %s: %s", what, exc, extra=net.REPEATED)
    else:
        log.exception("rockstar-mp aggregator: %s", what, extra=net.REPEATED)


def start_remote_write(config: MonitoringConfig) -> RemoteWriter | None:
    """The fleet push when ``remote_write_url`` is set (its module is loaded only then); a missing extra is a
    start-up error naming it."""
    if not config.remote_write_url:
        return None
    from .remote_write import RemoteWriter, RemoteWriteUnavailable

    try:
        return RemoteWriter.from_config(config)
    except RemoteWriteUnavailable as exc:
        raise StartupError(str(exc)) from None


async def serve(state: AggregatorState, parent: int, sock: socket.socket, run_dir: str | None = None,
                status: StatusLine | None = None, remote_write: RemoteWriter | None = None) -> None:
    """Serve the metrics on ``sock`` (bound by the caller) and tick until SIGTERM or the parent's death."""
    config = state.config
    loop = asyncio.get_running_loop()
    history = HistoryWriter.from_config(config, run_dir)  # None when history_interval=0
    state.history = history  # read by the history endpoint (and system_json's history_errors)
    state.remote_write = remote_write  # its counts are in system_json and /metrics
    if history is not None:
        history.extra_rows.append(traffic_rows)  # the dashboard's hour and day charts
    state.announce = status.report if status is not None else None  # pprof and SNMP say once they serve
    net.check_fd_limit(config.max_connections, 2 if config.enable_pprof else 1)
    limits = net.ConnectionLimits.from_config(config)

    def announce() -> None:
        if status is not None:
            status.report(f"serving {net.url_of(sock, config.metrics_path)}")

    profiler = Pprof(state, run_dir) if run_dir else None  # the dashboard's CPU profile
    servers = [HttpServer(create_app(state, profiler), sock, on_started=announce, limits=limits, driven=True)]
    repeats = net.quiet_repeats()  # after uvicorn's logging config
    stopping = asyncio.Event()
    between_ticks = TickSleep(loop)

    def stop() -> None:
        stopping.set()
        between_ticks.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGURG, between_ticks.hurry)
    tasks = [asyncio.create_task(s.run()) for s in servers]
    if run_dir:  # the /debug/pprof tree, served once enable_pprof is on (aggregator/pprof.py)
        make_pprof_server = functools.partial(HttpServer, limits=limits, plain_errors=True)
        tasks.append(asyncio.create_task(run_pprof_server(state, run_dir, make_pprof_server, stopping)))
    tasks.append(asyncio.create_task(run_schedule(state, stopping)))
    tasks.append(asyncio.create_task(run_snmp(state, stopping)))  # follows runtime control
    next_refresh = 0.0
    while not stopping.is_set():
        if os.getppid() != parent:
            break
        try:
            state.tick()
            if time.monotonic() >= next_refresh:
                state.refresh_processes()
                next_refresh = time.monotonic() + PROCESS_REFRESH
        except Exception as exc:  # never let one bad tick stop serving
            _log_failure("tick failed", exc)
        if history is not None:
            try:
                history.maybe_write(state)  # renders on the loop, writes in the history thread
            except Exception as exc:
                _log_failure("history snapshot failed", exc)
        if remote_write is not None:
            try:
                remote_write.maybe_submit(state)  # renders on the loop, encodes and sends in its thread
            except Exception as exc:
                _log_failure("remote write batch failed", exc)
        repeats.flush()
        for s in servers:
            s.beat()
        await between_ticks.sleep(state.next_tick())
    for s in servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    if history is not None:
        await history.aclose()
    if remote_write is not None:
        await asyncio.to_thread(remote_write.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rockstar_mp.aggregator")
    parser.add_argument("--segment", required=True)
    parser.add_argument("--segment-fd", type=int, default=None, help="the master's open segment (inherited)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--user", type=int, default=None, help="uid to run as once the ports are bound")
    parser.add_argument("--group", type=int, default=None, help="gid to run as once the ports are bound")
    parser.add_argument("--status-fd", type=int, help="write 'serving <url>' or 'fatal: <cause>' there")
    parser.add_argument("--bind-retry", type=float, default=BIND_RETRY_SECONDS,
                        help="seconds to retry a taken metrics port (0: one attempt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    status = StatusLine(args.status_fd)
    die_with_parent(args.parent)
    try:
        config = read_config(args.config)
        segment = attach_segment(args.segment, args.segment_fd)
        wait_for_lock(segment, args.parent)
        if args.user is not None and os.geteuid() == 0 and args.user != 0:
            group = args.group if args.group is not None else args.user
            bind_then_drop(config, args.user, group, args.bind_retry)
            die_with_parent(args.parent)  # a change of credentials clears the parent-death signal
        sock = bind(config.host, config.metrics_port, args.bind_retry)  # after a drop: the held socket
        remote_write = start_remote_write(config)
    except (StartupError, OSError) as exc:
        return status.fatal(str(exc))
    Header.aggregator_pid.set(segment.buf, os.getpid())
    Header.aggregator_starts.set(segment.buf, Header.aggregator_starts.get(segment.buf) + 1)
    state = AggregatorState(segment, config)
    run_dir = os.path.dirname(os.path.abspath(args.config))
    try:
        asyncio.run(serve(state, args.parent, sock, run_dir, status, remote_write))
    except Exception as exc:  # a bug: the master learns the cause, the log keeps the traceback
        status.report(f"fatal: {type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
