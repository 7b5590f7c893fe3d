"""WSGI middleware that counts every response in the worker's slab.

A response is counted when the server has taken its last body chunk (right after gunicorn wrote it),
so a worker killed mid-request does not count a response its client never got. With gunicorn the
response stays corked in the kernel until the count is stored, and a worker killed before that resets
the connection (``_hold``), so a client never sees a response that was not counted.

Example::

    from rockstar_mp.worker.wsgi import MetricsMiddleware
    app = MetricsMiddleware(falcon_app)      # any WSGI app

It records ``http.requests`` (counter, labels ``method`` and ``status``) and
``http.request.duration.seconds`` (histogram, label ``method``). With ``workload=True`` it also records one
workload record per response (see ``rockstar_mp.worker.workload``), taking the route from
``environ["rockstar.route"]`` when a framework set it, else a template of the path (ids become ``{id}``),
or ``<unmatched>`` for a 404.

Bounded labels, so that no client can make a request go uncounted: ``method`` is one of
``KNOWN_METHODS`` or ``other`` (an unknown, missing or non-str ``REQUEST_METHOD``); ``status`` is the
status line's code when it is one of 100-599, else ``other``. Whatever the catalogue holds, a request is
counted: ``http.requests{method="other",status="other"}`` and ``http.request.duration.seconds{method="other"}``
are declared when this module is imported (so they are in the slab from the attach on, before the app's
own series fill it), and a (method, status) the catalogue cannot take is counted there instead, and in
``rockstar.workload.overflow{dimension="status"}`` (``system.dimension_overflow``).
"""
from __future__ import annotations

import inspect
import socket
import struct
import time
from bisect import bisect_left
from time import perf_counter
from typing import Any

from ..metrics import REGISTRY, Counter, Histogram
from .accelerator import hotpath
from .keys import DEFAULT_REQUEST_ID_KEY, REQUEST_ID_KEY, ROUTE_KEY, TENANT_KEY, UNMATCHED, WSGI_KEY
from .workload import OTHER, RECORDER, add_cells, declared, reserved, template_path

MAX_STATUS_LINES = 1000  # cached (method, status line) pairs
MAX_PATHS = 1000  # cached raw path -> route template (apps that name no route)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

REQUESTS = Counter("http.requests", "HTTP responses served", ["method", "status"])
DURATION = Histogram("http.request.duration.seconds", "Seconds from request to last body chunk",
                     ["method"])
# What a (method, status) the catalogue refuses is counted under (see the module's docstring).
FALLBACK_COUNTER = reserved(REQUESTS, OTHER, OTHER)
FALLBACK_DURATION = reserved(DURATION, OTHER, bounds=DURATION._bounds)


def status_label(status_line) -> tuple[str, int]:
    """The ``status`` label of a status line and the code a record stores: ``("404", 404)``; a code
    outside 100-599 is ``"other"`` (with its number if it has three digits), anything else
    ``("other", 0)``."""
    code = status_line[:3] if isinstance(status_line, str) else ""
    if len(code) == 3 and code.isascii() and code.isdigit():
        number = int(code)
        return (code if 100 <= number <= 599 else OTHER), number
    return OTHER, 0


def _text(environ: dict, key: str, fallback_key: str = "") -> str:
    """The environ's value at ``key``, else at ``fallback_key``, if it is a non-empty str (the C path
    reads only those); "" if neither is."""
    value = environ.get(key)
    if value and isinstance(value, str):
        return value
    value = environ.get(fallback_key) if fallback_key else None
    return value if value and isinstance(value, str) else ""


def _path(environ: dict) -> str:
    path = environ.get("PATH_INFO")
    return path if path and isinstance(path, str) else "/"


_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
_CORK = getattr(socket, "TCP_CORK", None)


def _hold(sock) -> bool:
    """Until the count is stored, the response stays in the kernel (TCP_CORK) and the socket resets if
    the process dies (SO_LINGER 0 discards what was not sent). Without it, a send wakes the client, and
    on a busy machine the scheduler may run the client (and a killer) before the worker stores its
    count. With the cork alone, a worker preempted right after its last write (a system call's return
    is where that happens) and killed there had its corked response flushed at exit, uncounted: 2 runs
    of 45 of the kill test under load. With both, a worker killed before counting sends nothing."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        return True
    except (OSError, AttributeError, TypeError):
        return False


def _release(sock) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)  # flush
    except OSError:
        pass


class _Request:
    """What ``MetricsMiddleware`` keeps of one request until the server took its last byte."""

    __slots__ = ("middleware", "environ", "server_start_response", "method", "status", "started", "sock")

    def __init__(self, middleware: "MetricsMiddleware", environ: dict, server_start_response,
                 method: str, started: float, sock) -> None:
        self.middleware = middleware
        self.environ = environ
        self.server_start_response = server_start_response
        self.method = method
        self.status = "500"  # until the app calls start_response (an app that raised answers 500)
        self.started = started
        self.sock = sock  # held (corked, resets on death) until the count is stored (``_hold``)

    def start_response(self, status_line: str, headers, exc_info=None):
        self.status = status_line
        return self.server_start_response(status_line, headers, exc_info)


def _abandoned(request: "_Request | None") -> None:
    """A body dropped by a server that neither exhausted nor closed it: never counted, but no longer
    in flight either (as the C path does on deallocation)."""
    if request is not None and request.middleware.workload:
        RECORDER.end(notify=False)


class _ListBody(list):
    """A response body the app gave as a list (Falcon's, most frameworks'): iterated through a generator
    that counts once the last chunk was taken (the server wrote it); ``close()`` counts a response the
    server did not iterate to its end (HEAD, a client gone)."""

    __slots__ = ("_request",)
    _request: _Request | None

    def __iter__(self):
        yield from list.__iter__(self)
        self._count()  # the server wrote the last chunk (still corked): count now

    def close(self) -> None:
        self._count()

    def __del__(self) -> None:
        _abandoned(getattr(self, "_request", None))

    def _count(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            sent = 0
            for chunk in list.__iter__(self):
                if isinstance(chunk, bytes):  # what a server can send (and what the C path counts)
                    sent += len(chunk)
            request.middleware._finish(request, sent)


class _StreamingBody:
    """Any other response iterable: counted once the server took the last chunk, or on close()."""

    __slots__ = ("_body", "_request", "_bytes")

    def __init__(self, body, request: _Request) -> None:
        self._body = body
        self._request: _Request | None = request
        self._bytes = 0

    def __iter__(self):
        for chunk in self._body:
            if isinstance(chunk, bytes):  # what a server can send (and what the C path counts)
                self._bytes += len(chunk)
            yield chunk
        self._count()

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._count()

    def __del__(self) -> None:
        _abandoned(self._request)

    def _count(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            request.middleware._finish(request, self._bytes)


def is_asgi_app(app) -> bool:
    """Is ``app`` clearly an ASGI app: a coroutine function, or an object whose ``__call__`` is one?"""
    call = inspect.getattr_static(type(app), "__call__", None)
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def _refuse_asgi(app) -> None:
    if is_asgi_app(app):
        raise TypeError(f"rockstar_mp.worker.wsgi.MetricsMiddleware wraps WSGI apps, and {app!r} is an ASGI app "
                        "(async def __call__): wrap it in rockstar_mp.worker.asgi.MetricsMiddleware")


class _Shared:
    """Configuration and the slow paths, shared by the C request path and the Python one."""

    def __init__(self, app, workload: bool = False, tenant_header: str = "X-Tenant-ID",
                 hold: bool = True) -> None:
        _refuse_asgi(app)
        self.app = app
        self.workload = workload
        self.hold = hold and _CORK is not None  # see _hold(); gunicorn passes its socket in the environ
        self.tenant_key = "HTTP_" + tenant_header.upper().replace("-", "_")
        # (method, status line) -> what a response writes; emptied when the metrics move (attach, fork)
        self._statuses = REGISTRY.cell_cache()
        self._routes: dict[str, str] = {}  # raw path -> template, for apps that name no route
        if hotpath is not None and isinstance(self, hotpath.Middleware):
            hotpath.Middleware.__init__(self, app, self._statuses, self._routes, KNOWN_METHODS, self.tenant_key,
                                        workload, self.hold)

    def _status(self, method: str, status_line) -> tuple:
        """``(http.requests view, index, duration view, index, bounds, sum offset, status code,
        overflow cells or None)`` for a method and status line. Never raises for want of room: a
        series the catalogue refuses is counted under the fallback, and in the overflow counter."""
        code, number = status_label(status_line)
        counter, duration = declared(REQUESTS, method, code), declared(DURATION, method)
        overflow = None if counter is not None and duration is not None else RECORDER.overflow_cells("status")
        counter, duration = counter or FALLBACK_COUNTER, duration or FALLBACK_DURATION
        known = (counter._vals, counter._idx, duration._vals, duration._idx,
                 tuple(float(b) for b in duration._bounds), duration._sum_at, number, overflow)
        if isinstance(status_line, str) and len(self._statuses) < MAX_STATUS_LINES:
            self._statuses[(method, status_line)] = known
        return known

    def _route(self, environ: dict) -> str:
        """The route of a request no framework named: a template of its path, cached."""
        path = _path(environ)
        route = self._routes.get(path)
        if route is None:
            route = template_path(path)
            if len(self._routes) < MAX_PATHS:
                self._routes[path] = route
        return route



class _PythonPath(_Shared):
    """The request path in Python: the reference, and what runs without the C accelerator."""

    def _finish(self, request: _Request, response_bytes: int) -> None:
        """The server took the last byte: count, record, then let the response go (``_release``)."""
        seconds = perf_counter() - request.started
        method, status_line = request.method, request.status
        try:
            entry = self._statuses.get((method, status_line)) or self._status(method, status_line)
        except TypeError:  # a status "line" that cannot be a key: no cache
            entry = self._status(method, status_line)
        vals, idx, hvals, hidx, bounds, sum_at, status, overflow = entry
        vals[idx] += 1.0
        if overflow is not None:
            add_cells(overflow, 1.0)
        if request.sock is not None:
            _release(request.sock)  # right after the count: a kill in between is the one window left
        hvals[hidx + bisect_left(bounds, seconds)] += 1.0
        hvals[hidx + sum_at] += seconds
        if self.workload:
            environ = request.environ
            route = environ.get(ROUTE_KEY)
            if not (route and isinstance(route, str)):
                route = UNMATCHED if status == 404 else self._route(environ)
            RECORDER.record(method, route, status, seconds, time.time() - seconds, response_bytes,
                            _text(environ, REQUEST_ID_KEY, DEFAULT_REQUEST_ID_KEY),
                            _text(environ, TENANT_KEY, self.tenant_key))
            RECORDER.end()  # may run a pending optimization: after the response went

    def __call__(self, environ, start_response):
        started = perf_counter()
        method = environ.get("REQUEST_METHOD")
        try:
            known = method in KNOWN_METHODS
        except TypeError:  # unhashable
            known = False
        if not known:
            method = OTHER  # also a missing one: WSGI requires it, so it is not taken for a GET
        sock = environ.get("gunicorn.socket") if self.hold else None
        if sock is not None and not _hold(sock):
            sock = None
        request = _Request(self, environ, start_response, method, started, sock)
        if self.workload:
            environ[WSGI_KEY] = True
            RECORDER.begin(method, _path(environ))
        try:
            body = self.app(environ, request.start_response)
        except BaseException:
            request.status = "500"
            self._finish(request, 0)
            raise
        if type(body) is list:
            body = _ListBody(body)
            body._request = request
            return body
        return _StreamingBody(body, request)


if hotpath is not None:
    _CMiddleware: Any = hotpath.Middleware  # a C type, which no stub describes

    class MetricsMiddleware(_Shared, _CMiddleware):
        """Counts requests and their durations for any WSGI ``app`` (and records workload if asked).
        This build runs the request path in C (``rockstar_mp/_hotpath.c``)."""
else:
    class MetricsMiddleware(_PythonPath):  # type: ignore[no-redef]
        """Counts requests and their durations for any WSGI ``app`` (and records workload if asked)."""


class PythonMetricsMiddleware(_PythonPath):
    """``MetricsMiddleware`` with the Python request path even when the C one is built (for tests and
    comparisons)."""
