"""The aggregator process: ``python -m rockstar_mp.aggregator --segment PATH --config FILE --parent PID``.

One asyncio loop runs uvicorn serving the Falcon app and the tick (fold dead workers, heartbeat,
process figures). It dies with its master (``PR_SET_PDEATHSIG`` plus a parent-pid check on every tick)
and holds an exclusive lock on the segment itself, so a second aggregator for the same segment (gunicorn's
USR2 starts a second master) waits in standby until the first is gone. It maps the segment through the
descriptor the master passes (``--segment-fd``), so a deleted segment path does not stop it.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import time

import uvicorn

from .._linux import set_parent_death_signal
from ..config import MonitoringConfig
from ..segment import Segment
from ..segment.layout import Header
from .history import HistoryWriter
from .http import create_app
from . import net
from .net import listen_tcp
from .snmp.agent import RCVBUF as SNMP_RCVBUF
from .snmp.agent import preload as preload_snmp
from ..privileges import drop_to
from .pprof import run_pprof_server
from .optimize import run_schedule
from .snmp.runtime import run_snmp
from .state import AggregatorState

PROCESS_REFRESH = 1.0
PROCESS_DETAIL_EVERY = 5  # USS/PSS and open fds on every 5th process refresh
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


def bind(host: str, port: int) -> socket.socket:
    """The metrics port's socket, retried for a while (the aggregator before us may still hold it)."""
    deadline = time.monotonic() + BIND_RETRY_SECONDS
    while True:
        try:
            return listen_tcp(host, port)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"rockstar-mp aggregator: cannot listen on {host}:{port}: {exc}")
            time.sleep(0.2)


def bind_then_drop(config: MonitoringConfig, uid: int, gid: int) -> None:
    """Bind every port the config serves now (privileged ports need root), then run as ``uid``/``gid``.
    A port enabled only later, at runtime, is bound then, as that user."""
    net.hold("tcp", config.host, config.metrics_port, bind(config.host, config.metrics_port))
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
    """One uvicorn server on a socket we bound, driven from our loop."""

    def __init__(self, app, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)

    async def run(self) -> None:
        await self.server.startup(sockets=[self.sock])
        await self.server.main_loop()
        await self.server.shutdown(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True


async def serve(state: AggregatorState, parent: int, run_dir: str | None = None) -> None:
    config = state.config
    loop = asyncio.get_running_loop()
    history = HistoryWriter.from_config(config, run_dir)  # None when history_interval=0
    state.history = history  # read by the history endpoint (and system_json's history_errors)
    servers = [HttpServer(create_app(state), bind(config.host, config.metrics_port))]
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    tasks = [asyncio.create_task(s.run()) for s in servers]
    if run_dir:  # the /debug/pprof tree, served once enable_pprof is on (aggregator/pprof.py)
        tasks.append(asyncio.create_task(run_pprof_server(state, run_dir, HttpServer, stopping)))
    tasks.append(asyncio.create_task(run_schedule(state, stopping)))
    tasks.append(asyncio.create_task(run_snmp(state, stopping)))  # follows runtime control
    next_refresh = 0.0
    refreshes = 0
    while not stopping.is_set():
        if os.getppid() != parent:
            break
        try:
            state.tick()
            if time.monotonic() >= next_refresh:
                state.refresh_processes(full=refreshes % PROCESS_DETAIL_EVERY == 0)
                refreshes += 1
                next_refresh = time.monotonic() + PROCESS_REFRESH
        except Exception:  # never let one bad tick stop serving
            log.exception("rockstar-mp aggregator: tick failed")
        if history is not None:
            try:
                history.maybe_write(state)  # renders on the loop, writes in the history thread
            except Exception:
                log.exception("rockstar-mp aggregator: history snapshot failed")
        try:
            await asyncio.wait_for(stopping.wait(), timeout=config.tick_interval)
        except asyncio.TimeoutError:
            pass
    for s in servers:
        s.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    if history is not None:
        await history.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rockstar_mp.aggregator")
    parser.add_argument("--segment", required=True)
    parser.add_argument("--segment-fd", type=int, default=None, help="the master's open segment (inherited)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--user", type=int, default=None, help="uid to run as once the ports are bound")
    parser.add_argument("--group", type=int, default=None, help="gid to run as once the ports are bound")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    die_with_parent(args.parent)
    with open(args.config) as f:
        config = MonitoringConfig.from_json(f.read())
    segment = Segment.attach(args.segment, fd=args.segment_fd)
    wait_for_lock(segment, args.parent)
    if args.user is not None and os.geteuid() == 0 and args.user != 0:
        bind_then_drop(config, args.user, args.group if args.group is not None else args.user)
        die_with_parent(args.parent)  # a change of credentials clears the parent-death signal
    Header.aggregator_pid.set(segment.buf, os.getpid())
    Header.aggregator_starts.set(segment.buf, Header.aggregator_starts.get(segment.buf) + 1)
    state = AggregatorState(segment, config)
    asyncio.run(serve(state, args.parent, os.path.dirname(os.path.abspath(args.config))))  # the run dir
    return 0


if __name__ == "__main__":
    sys.exit(main())
