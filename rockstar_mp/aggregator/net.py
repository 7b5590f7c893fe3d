"""Listening sockets the aggregator binds itself, and the connections it accepts on them.

Sockets bound before the aggregator drops root (``prebind``) are kept here: a server that asks for
the same address later gets a duplicate, so a privileged port (SNMP's 161) can be served, stopped and
served again at runtime by a process that could no longer bind it.

Every HTTP port (metrics, pprof) accepts through ``Connections``, which holds the connection limits
(``ConnectionLimits``, from the config) that uvicorn lacks:

- a request's line and headers must arrive within ``header_timeout`` (from the connect, or from the
  first byte after a keep-alive pause), or the connection is closed (408 if part of it came);
- at most ``max_header_count`` headers and ``max_header_bytes`` bytes of head: 431, closed;
- at most ``max_connections`` open: beyond, the connection waiting longest for a request (idle,
  or still sending its head) is closed for the new one, and when every connection has a request in
  progress the new one gets 503 and is closed, without a protocol or a task;
- out of descriptors (EMFILE) at accept, the longest-waiting connections are closed and accepting
  pauses briefly, instead of asyncio's loop of one logged traceback per failed accept;
- repeated errors are logged once per interval, with their count (``RepeatFilter``).

Keep-alive connections idle for ``keepalive_timeout`` are closed by uvicorn (``timeout_keep_alive``).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import resource
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import RockstarError

log = logging.getLogger("rockstar_mp.aggregator.net")

_PREBOUND: dict[tuple[str, str, int], socket.socket] = {}


def url_of(sock: socket.socket, path: str, scheme: str = "http") -> str:
    """The address a bound socket serves, as a URL (``scheme://host:port/path``)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"


def prebind(kind: str, host: str, port: int, rcvbuf: int = 0) -> None:
    """Bind ``kind`` ("tcp" or "udp") ``host:port`` now, while privileged, for a later ``prebound``."""
    key = (kind, host, port)
    if key not in _PREBOUND:
        hold(kind, host, port, listen_tcp(host, port) if kind == "tcp" else bind_udp(host, port, rcvbuf))


def hold(kind: str, host: str, port: int, sock: socket.socket) -> None:
    """Keep ``sock``, already bound to ``host:port``, for a later ``prebound``."""
    _PREBOUND[(kind, host, port)] = sock


def prebound(kind: str, host: str, port: int) -> socket.socket | None:
    """A duplicate of the socket ``prebind`` bound for this address, or None."""
    sock = _PREBOUND.get((kind, host, port))
    return sock.dup() if sock is not None else None


def bind_udp(host: str, port: int, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking UDP socket on ``host:port`` (a pre-bound one if there is); raises OSError."""
    held = prebound("udp", host, port)
    if held is not None:
        return held
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port``; raises OSError when it cannot bind.

    ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on sockets that say so; without it Nagle and
    delayed ACKs stalled every keep-alive request by 40 ms.
    """
    held = prebound("tcp", host, port)
    if held is not None:
        return held
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# -- connection limits -----------------------------------------------------------------------------
LISTEN_BACKLOG = 2048  # what uvicorn asks of the sockets it serves
ACCEPT_BATCH = 64  # connections accepted per wake-up, so that requests in progress get their turn
ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of descriptors
EVICT_ON_EMFILE = 16  # waiting connections closed to get descriptors back
EVICT_ON_EMFILE_AGE = 1.0  # seconds a connection must have waited for that: new ones get their chance
LINGER_SECONDS = 2.0  # at most, reading what a refused client still sends before closing on it
REPEAT_INTERVAL = 10.0  # seconds: a repeated log message is written once per interval, with a count
FD_RESERVE = 64  # descriptors the aggregator needs beside its connections
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of every connection to one HTTP port (``MonitoringConfig`` fields of the same names)."""

    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_header_count: int = 100
    max_header_bytes: int = 16384

    @classmethod
    def from_config(cls, config) -> "ConnectionLimits":
        return cls(config.max_connections, config.header_timeout, config.keepalive_timeout,
                   config.max_header_count, config.max_header_bytes)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (as Go programs do); the soft
    limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # an infinite hard limit is above the kernel's nr_open: keep the soft one
    return soft


def check_fd_limit(max_connections: int, ports: int) -> int:
    """Raise the open-file limit to the hard one (``raise_fd_limit``); say once if it stays below what
    ``ports`` HTTP ports with ``max_connections`` each need. The limit in force."""
    limit = raise_fd_limit()
    if limit < ports * max_connections + FD_RESERVE:
        log.warning("rockstar-mp aggregator: the open-file limit (%d) is below max_connections=%d on %d "
                    "port(s) plus %d: past it, connections waiting for a request are closed for new ones "
                    "(raise LimitNOFILE / ulimit -n, or lower max_connections)", limit, max_connections, ports,
                    FD_RESERVE)
    return limit


FLOOD_PRONE_LOGGERS = (log.name, "uvicorn.error", "asyncio")  # every message of theirs may repeat per request


def quiet_repeats(interval: float = REPEAT_INTERVAL) -> "RepeatFilter":
    """A ``RepeatFilter`` for one line per interval, with a count, of a message that repeats (a flood of
    bad requests, a descriptor shortage): every message of ``FLOOD_PRONE_LOGGERS``, and those of the
    aggregator's logger logged with ``extra=REPEATED``."""
    repeats = RepeatFilter(interval, FLOOD_PRONE_LOGGERS)
    for name in ("rockstar_mp.aggregator", *FLOOD_PRONE_LOGGERS):
        logging.getLogger(name).addFilter(repeats)
    return repeats


REPEATED = {"repeated": True}  # ``extra`` of a log call whose message may repeat on every tick


class RepeatFilter(logging.Filter):
    """Lets a message (a logger, a level and a format string) through once per ``interval``; its repeats
    are counted, and reported by the first line after the interval or by ``flush`` (called on the
    aggregator's tick). It acts on every message of the ``loggers`` named, and on the others' messages
    logged with ``extra=REPEATED`` (a message naming a different thing each time is left alone)."""

    def __init__(self, interval: float = REPEAT_INTERVAL, loggers: tuple = ()) -> None:
        super().__init__()
        self.interval = interval
        self._every = frozenset(loggers)
        self._windows: dict[tuple, list] = {}  # key -> [end of the window, repeats, last repeat]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False):
            return True
        if record.name not in self._every and not getattr(record, "repeated", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        window = self._windows.get(key)
        if window is not None and now >= window[0]:
            del self._windows[key]
            if window[1]:  # this line carries the count of the window that ended
                record.msg, record.args = self._counted(record.getMessage(), window[1]), None
            window = None
        if window is None:
            self._windows[key] = [now + self.interval, 0, None]
            return True
        window[1] += 1
        window[2] = record
        return False

    def flush(self) -> None:
        """Report the repeats of every window that ended without a new line to carry them."""
        now = time.monotonic()
        for key, (end, repeats, last) in list(self._windows.items()):
            if now >= end:
                del self._windows[key]
                if repeats:
                    logging.getLogger(key[0]).log(key[1], "%s", self._counted(last.getMessage(), repeats),
                                                  extra={"repeat_summary": True})

    def _counted(self, message: str, repeats: int) -> str:
        return f"{message} ({repeats} more like this in the last {self.interval:g} s)"


def error_response(status: int, reason: str, description: str, plain: bool = False,
                   headers: tuple = ()) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection: a JSON body like the metrics
    port's errors, or ``plain`` text like the pprof port's."""
    title = f"{status} {reason}"
    if plain:
        content_type, body = "text/plain; charset=utf-8", (description + "\n").encode()
    else:
        content_type, body = "application/json", json.dumps({"title": title, "description": description}).encode()
    head = [f"HTTP/1.1 {title}", f"content-type: {content_type}", f"content-length: {len(body)}",
            "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class HeadTooLarge(RockstarError):
    """A request's head went past ``max_header_bytes`` or ``max_header_count``."""


class HeadScanner:
    """Follows a request's head (its line and headers) as it arrives, without keeping it: its size, its
    line count, and where it ends (the first empty line; empty lines before the request line are
    skipped, as RFC 9112 allows)."""

    def __init__(self, max_bytes: int, max_fields: int) -> None:
        self.max_bytes = max_bytes
        self.max_fields = max_fields
        self.reset()

    def reset(self) -> None:
        self.size = 0  # bytes of head so far
        self.newlines = 0
        self.begun = False  # a byte of the request line came
        self._tail = b""  # the last bytes seen, for an end split across two reads

    def feed(self, data: bytes) -> int:
        """The offset in ``data`` just past the head's end, or -1 while the head goes on; raises
        ``HeadTooLarge``."""
        skipped = 0
        if not self.begun:
            rest = data.lstrip(b"\r\n")
            skipped, data = len(data) - len(rest), rest
            self.size += skipped
            if not data:
                self._check(False)
                return -1
            self.begun = True
        window = self._tail + data
        end = _empty_line_end(window)
        used = len(data) if end < 0 else end - len(self._tail)
        self.size += used
        self.newlines += data.count(b"\n", 0, used)
        self._check(end >= 0)
        self._tail = window[-3:]
        return -1 if end < 0 else skipped + used

    def _check(self, complete: bool) -> None:
        fields = self.newlines - 1 - (1 if complete else 0)  # less the request line and the empty line
        if self.size > self.max_bytes:
            raise HeadTooLarge(f"the request line and headers take more than {self.max_bytes} bytes")
        if fields > self.max_fields:
            raise HeadTooLarge(f"more than {self.max_fields} request headers")


def _empty_line_end(data: bytes) -> int:
    """The offset just past the first empty line ("\\n\\n" or "\\n\\r\\n") in ``data``, or -1."""
    ends = [i + len(marker) for marker in (b"\n\r\n", b"\n\n") if (i := data.find(marker)) >= 0]
    return min(ends) if ends else -1


# The phases of a guarded connection.
HEAD = "head"  # waiting for a request's head, or receiving it (the header timer runs)
BUSY = "busy"  # a request in progress
IDLE = "idle"  # between requests (uvicorn's keep-alive timer runs)
CLOSING = "closing"  # refused: reading and dropping what still comes, until the client closes


if TYPE_CHECKING:
    _ProtocolBase = Any  # at run time ``guarded`` mixes this into uvicorn's h11 or httptools protocol
else:
    _ProtocolBase = object


class ConnectionGuard(_ProtocolBase):
    """Mixed into uvicorn's HTTP protocol class (``guarded``): the per-connection limits.

    It sees the bytes before uvicorn does, while a request's head arrives: a head past the limits is
    answered 431 here and never reaches the parser; one that does not arrive within
    ``header_timeout`` is closed. Everything else goes through unchanged."""

    accepted_by: "Connections"  # set on the class ``guarded`` makes (uvicorn's protocols use "connections")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        limits = self.accepted_by.limits
        self._phase = HEAD
        self._scanner = HeadScanner(limits.max_header_bytes, limits.max_header_count)
        self._timer: asyncio.TimerHandle | None = None
        self._evicted = False  # before its transport existed
        self._admitted = False  # counted in accepted_by.open, until closed

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self._evicted:
            transport.abort()
            return
        self._start_timer(self.accepted_by.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        self.accepted_by.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == CLOSING:
            return
        if self._phase == IDLE:  # the first bytes of the next request
            self._phase = HEAD
            self._scanner.reset()
            if not self._head_received(data):
                return
            if self._phase == HEAD:  # the timer only for a head that does not come whole
                self.accepted_by.waiting(self)
                self._start_timer(self.accepted_by.limits.header_timeout, self._head_timed_out)
        elif self._phase == HEAD and not self._head_received(data):
            return
        super().data_received(data)

    def _head_received(self, data: bytes) -> bool:
        """Follow the head in ``data``: BUSY once it ended; False when it was refused (431)."""
        try:
            end = self._scanner.feed(data)
        except HeadTooLarge as exc:
            self._refuse(431, "Request Header Fields Too Large", str(exc))
            return False
        if end >= 0:
            self._stop_timer()
            self._phase = BUSY
            self.accepted_by.busy(self)
        return True

    def eof_received(self):
        if self._phase == CLOSING:
            self.transport.close()
            return None
        return super().eof_received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase != BUSY or self.transport.is_closing() or self._request_in_progress():
            return  # a pipelined request started
        self._phase = IDLE
        self.accepted_by.waiting(self)

    def timeout_keep_alive_handler(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the client does not read: close() would wait for it for ever
        else:
            super().timeout_keep_alive_handler()

    def evict(self) -> None:
        """Close at once (or as soon as it has a transport): a new connection needs the place or the
        descriptor."""
        self._stop_timer()
        self._evicted = True
        if self.transport is not None:
            self.transport.abort()

    def _request_in_progress(self) -> bool:
        cycle = self.cycle
        return (cycle is not None and not cycle.response_complete) or bool(getattr(self, "pipeline", None))

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._phase != HEAD or self.transport.is_closing():
            return
        if not self._scanner.size:
            self.transport.close()  # nothing came: nothing to answer
            return
        timeout = self.accepted_by.limits.header_timeout
        self._refuse(408, "Request Timeout", f"the request line and headers must arrive within {timeout:g} s")

    def _refuse(self, status: int, reason: str, description: str) -> None:
        """Answer ``status`` and close: half-close at once, then read and drop what the client still
        sends (closing on unread data would reset the connection and could lose the answer)."""
        self._phase = CLOSING
        self.accepted_by.waiting(self)
        self.accepted_by.refused(status)
        transport = self.transport
        transport.write(error_response(status, reason, description, self.accepted_by.plain_errors))
        if transport.can_write_eof():
            transport.write_eof()
        self._start_timer(min(LINGER_SECONDS, self.accepted_by.limits.header_timeout), transport.abort)

    def _start_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._stop_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def guarded(protocol_class: type, connections: "Connections") -> type:
    """A subclass of uvicorn's ``protocol_class`` (h11 or httptools) with ``ConnectionGuard``."""
    return type(f"Guarded{protocol_class.__name__}", (ConnectionGuard, protocol_class),
                {"accepted_by": connections})


class Connections:
    """Accepts the connections of one listening socket within ``limits``, in place of asyncio's
    ``create_server``; ``make_protocol()`` makes the (guarded) protocol of an admitted connection."""

    def __init__(self, sock: socket.socket, limits: ConnectionLimits, plain_errors: bool = False) -> None:
        self.sock = sock
        self.limits = limits
        self.plain_errors = plain_errors
        self.make_protocol: Callable[[], ConnectionGuard] | None = None
        self.open = 0  # admitted connections not closed yet
        # connections with no request in progress -> when they began to wait; oldest first
        self._waiting: OrderedDict[ConnectionGuard, float] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._where = "%s:%s" % sock.getsockname()[:2]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self.sock.listen(LISTEN_BACKLOG)
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def stop(self) -> None:
        """Stop accepting and close the listening socket (the open connections are uvicorn's to end)."""
        if self._resume is not None:
            self._resume.cancel()
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    # -- accepting -----------------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        if self.open >= self.limits.max_connections and not self._evict(1):
            self._refuse_busy(conn)
            return
        assert self.make_protocol is not None, "the server sets make_protocol before accepting starts"
        protocol = self.make_protocol()
        protocol._admitted = True
        self.open += 1
        self.waiting(protocol)  # evictable at once: in a burst, the oldest may not be made yet
        loop = self._running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: protocol, conn))
        task.add_done_callback(functools.partial(self._connected, protocol, conn))

    def _connected(self, protocol: ConnectionGuard, conn: socket.socket, task: asyncio.Task) -> None:
        failure = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if failure is not None and protocol.transport is None:  # it never got its transport
            self.closed(protocol)
            conn.close()
            log.warning("rockstar-mp aggregator: a connection to %s failed at its start: %s", self._where, failure)

    def _refuse_busy(self, conn: socket.socket) -> None:
        """503 without a protocol or a task: what the client sent is read first, so that the close
        is not a reset that would lose the answer."""
        try:
            conn.setblocking(False)
            try:
                conn.recv(65536)
            except OSError:
                pass
            conn.send(error_response(503, "Service Unavailable",
                                     f"{self.limits.max_connections} connections (max_connections), "
                                     "each with a request in progress; retry later",
                                     self.plain_errors, ("retry-after: 1",)))
        except OSError:
            pass
        finally:
            conn.close()
        self.refused(503)

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno not in OUT_OF_DESCRIPTORS:
            log.error("rockstar-mp aggregator: accepting a connection on %s failed: %s", self._where, exc)
            self._pause()
            return
        closed = self._evict(EVICT_ON_EMFILE, EVICT_ON_EMFILE_AGE)
        log.warning("rockstar-mp aggregator: out of file descriptors accepting on %s (%s; limit %d): closed "
                    "%d waiting connections, accepting again in %.1f s", self._where, exc.strerror,
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0], closed, ACCEPT_PAUSE)
        self._pause()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "accepting starts in start(), on the running loop"
        return self._loop

    def _pause(self) -> None:
        loop = self._running_loop()
        loop.remove_reader(self.sock.fileno())
        self._resume = loop.call_later(ACCEPT_PAUSE, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self.sock.fileno() >= 0:
            self._running_loop().add_reader(self.sock.fileno(), self._accept)

    def _evict(self, count: int, min_age: float = 0.0) -> int:
        """Close up to ``count`` connections that have waited longest, at least ``min_age`` seconds,
        without a request in progress."""
        evicted = 0
        now = time.monotonic()
        while evicted < count and self._waiting:
            protocol, since = next(iter(self._waiting.items()))
            if now - since < min_age:
                break
            del self._waiting[protocol]
            protocol.evict()
            evicted += 1
        if evicted:
            log.warning("rockstar-mp aggregator: %s: closed the connection waiting longest for a request "
                        "(max_connections=%d, or out of descriptors)", self._where, self.limits.max_connections)
        return evicted

    # -- what the guarded protocols report -------------------------------------------------------------
    def closed(self, protocol: ConnectionGuard) -> None:
        if protocol._admitted:
            protocol._admitted = False
            self.open -= 1
        self._waiting.pop(protocol, None)

    def waiting(self, protocol: ConnectionGuard) -> None:
        self._waiting.pop(protocol, None)
        self._waiting[protocol] = time.monotonic()

    def busy(self, protocol: ConnectionGuard) -> None:
        self._waiting.pop(protocol, None)

    def refused(self, status: int) -> None:
        log.warning("rockstar-mp aggregator: %s: answered %d and closed a connection", self._where, status)


class HeaderLimit:
    """ASGI wrapper: a request over the header limits that reached the app anyway (pipelined behind
    another, so its head was parsed before the guard could see it) gets 431, and its connection is
    closed."""

    def __init__(self, app, limits: ConnectionLimits, plain_errors: bool = False) -> None:
        self.app = app
        self._limits = limits
        self._plain = plain_errors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            limits = self._limits
            if len(headers) > limits.max_header_count or \
                    sum(len(k) + len(v) + 4 for k, v in headers) > limits.max_header_bytes:
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send) -> None:
        head, _, body = error_response(431, "Request Header Fields Too Large",
                                       f"at most {self._limits.max_header_count} request headers and "
                                       f"{self._limits.max_header_bytes} bytes of them", self._plain
                                       ).partition(b"\r\n\r\n")
        headers = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:]]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})
