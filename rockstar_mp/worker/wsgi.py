"""WSGI middleware that counts every response in the worker's slab.

A response is counted when the server has taken its last body chunk (right after gunicorn wrote it),
so a worker killed mid-request does not count a response its client never got. With gunicorn the
response stays corked in the kernel until the count is stored, and a worker killed before that resets
the connection (``hold.hold``), so a client never sees a response that was not counted. In a gunicorn sync
worker the C path sets that hold once on the listening sockets, which accepted connections inherit
(``hold.hold_listeners``): a request then costs two system calls for it instead of four.

Example::

    from rockstar_mp.worker.wsgi import MetricsMiddleware
    app = MetricsMiddleware(falcon_app)      # any WSGI app

It records ``http.requests`` (counter, labels ``method``, ``status`` and ``route``) and
``http.request.duration.seconds`` (histogram, labels ``method`` and ``route``). The route is the one a
workload record gets (``request_route``): the template a framework named in ``environ["rockstar.route"]``
(Falcon's ``WorkloadMiddleware`` sets it), else ``<unmatched>`` for a 404, else a template of the path
(ids become ``{id}``). The label is there with or without ``workload=True``. With ``workload=True`` the
middleware also records one workload record per response (see ``rockstar_mp.worker.workload``).

Bounded labels, so that no client can make a request go uncounted: ``method`` is one of
``KNOWN_METHODS`` or ``other`` (an unknown, missing or non-str ``REQUEST_METHOD``); ``status`` is the
status line's code when it is one of 100-599, else ``other``; ``route`` is cut to 64 bytes of UTF-8, and a
worker gives at most ``max_routes`` (``MonitoringConfig``, the bound of the workload sketches) distinct
route labels: any other route is counted under ``route="other"``, and in
``rockstar.workload.overflow{dimension="http_route"}`` (``system.dimension_overflow.http_route``).
Whatever the catalogue holds, a request is counted:
``http.requests{method="other",status="other",route="other"}`` and
``http.request.duration.seconds{method="other",route="other"}`` are declared when this module is imported
(so they are in the slab from the attach on, before the app's own series fill it), and a (method, status,
route) the catalogue cannot take is counted there instead, and in
``rockstar.workload.overflow{dimension="status"}``.

Other front ends (an ASGI middleware) count the same way with ``request_route`` and ``count_response``.
"""
from __future__ import annotations

import inspect
import re
import socket
import threading
import time
from bisect import bisect_left
from time import perf_counter
from typing import Any

from ..metrics import REGISTRY, Counter, Histogram
from . import falcon as falcon_routes
from .accelerator import hotpath
from .hold import CORK, release
from .hold import hold as hold_socket
from .keys import DEFAULT_REQUEST_ID_KEY, REQUEST_ID_KEY, ROUTE_KEY, TENANT_KEY, UNMATCHED, WSGI_KEY
from .workload import HTTP_ROUTE, OTHER, RECORDER, add_cells, declared, label, reserved, template_path

MAX_RESPONSE_KINDS = 4096  # cached (method, status line, route) -> cells
MAX_PATHS = 1000  # cached raw path -> route template (apps that name no route)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

REQUESTS = Counter("http.requests", "HTTP responses served", ["method", "status", "route"])
DURATION = Histogram("http.request.duration.seconds", "Seconds from request to last body chunk",
                     ["method", "route"])
# What a (method, status, route) the catalogue refuses is counted under (see the module's docstring).
FALLBACK_COUNTER = reserved(REQUESTS, OTHER, OTHER, OTHER)
FALLBACK_DURATION = reserved(DURATION, OTHER, OTHER, bounds=DURATION._bounds)

# (method, status line, route) -> what a response writes (``response_cells``), shared by every middleware
# of the process and the C path; emptied when the metrics move (attach, fork)
_CELLS = REGISTRY.cell_cache()
_TEMPLATES: dict[str, str] = {}  # raw path -> route template, for apps that name no route


_STATUS_CODE = re.compile(r"[0-9]{3}")  # ASCII digits only (str.isdigit takes "²" and "٢٠٠")


def status_label(status_line) -> tuple[str, int]:
    """The ``status`` label of a status line and the code a record stores: ``("404", 404)``; a code
    outside 100-599 is ``"other"`` (with its number if it has three digits), anything else
    ``("other", 0)``."""
    code = status_line[:3] if isinstance(status_line, str) else ""
    if _STATUS_CODE.fullmatch(code):
        number = int(code)
        return (code if 100 <= number <= 599 else OTHER), number
    return OTHER, 0


def request_method(method: object) -> str:
    """The ``method`` label of a request method: one of ``KNOWN_METHODS``, else ``other`` (also for a
    missing or non-str one)."""
    try:
        known = method in KNOWN_METHODS
    except TypeError:  # unhashable
        known = False
    return method if known else OTHER  # type: ignore[return-value]  # known: it is one of the strs


def path_template(path: object) -> str:
    """The route of a path no framework named: ids become ``{id}`` (``template_path``), cached; a
    missing, empty or non-str path is ``/``."""
    if not (path and isinstance(path, str)):
        path = "/"
    route = _TEMPLATES.get(path)
    if route is None:
        route = template_path(path)
        if len(_TEMPLATES) < MAX_PATHS:
            _TEMPLATES[path] = route
    return route


def request_route(named: object, status_line: object, path: object) -> str:
    """The route of a response, as its workload record and its ``route`` label get it: ``named`` (the
    template a framework gave) if it is a non-empty str, else ``<unmatched>`` for a 404 (one value
    however many paths clients try), else ``path_template(path)``."""
    if named and isinstance(named, str):
        return named
    if isinstance(status_line, str) and status_line[:3] == "404":  # status_label()'s code 404
        return UNMATCHED
    return path_template(path)


class _RouteLabels:
    """The route label values of this worker's request metrics: at most ``max_routes``
    (``RECORDER.limits``, from ``MonitoringConfig``); any other route is labelled ``other``."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()  # gthread workers: the bound holds however requests interleave

    def admit(self, route: str) -> tuple[str, bool]:
        """The label of ``route`` (cut to 64 bytes), and whether it is ``other`` for want of room."""
        value = label(route)
        with self._lock:
            if value == OTHER or value in self._values:
                return value, False
            if len(self._values) < RECORDER.limits.max_routes:
                self._values.add(value)
                return value, False
        return OTHER, True


ROUTE_LABELS = _RouteLabels()


def response_cells(method: str, status_line: object, route: str) -> tuple:
    """What one response of ``method`` (a ``request_method``), ``status_line`` and ``route`` (a
    ``request_route``) writes: ``(http.requests view, index, duration view, index, bounds, sum offset,
    status code, overflow cells or None)``, cached. Never raises for want of room (``_declare_cells``)."""
    try:
        cells = _CELLS.get((method, status_line, route))
    except TypeError:  # a status "line" that cannot be a key: no cache
        cells = None
    return cells or _declare_cells(method, status_line, route)


def _declare_cells(method: str, status_line: object, route: str) -> tuple:
    """``response_cells`` the first time: a route beyond ``max_routes`` is labelled ``other`` (and
    counted in the ``http_route`` overflow), a series the catalogue refuses is counted under the
    fallback (and in the ``status`` overflow)."""
    code, number = status_label(status_line)
    route_label, crowded_out = ROUTE_LABELS.admit(route)
    counter, duration = declared(REQUESTS, method, code, route_label), declared(DURATION, method, route_label)
    overflow = RECORDER.overflow_cells(HTTP_ROUTE) if crowded_out else ()
    if counter is None or duration is None:
        overflow += RECORDER.overflow_cells("status")
    counter, duration = counter or FALLBACK_COUNTER, duration or FALLBACK_DURATION
    cells = (counter._vals, counter._idx, duration._vals, duration._idx,
             tuple(float(b) for b in duration._bounds), duration._sum_at, number, overflow or None)
    if isinstance(status_line, str) and len(_CELLS) < MAX_RESPONSE_KINDS:
        _CELLS[(method, status_line, route)] = cells
    return cells


def count_response(method: str, status_line: object, route: str, seconds: float,
                   sock: socket.socket | None = None, _cells=_CELLS) -> int:
    """Count one response in ``http.requests`` and observe ``seconds`` in
    ``http.request.duration.seconds``; returns the status code a workload record stores (0: none).
    ``method``: a ``request_method``; ``status_line``: WSGI's (``"404 Not Found"``; a front end with
    an int code passes ``str(code)``); ``route``: a ``request_route``. ``sock``: a socket held by
    ``hold.hold``, released right after the count is stored (so call this before the response may go)."""
    try:  # response_cells(), inlined: the request path's one lookup
        cells = _cells.get((method, status_line, route)) or _declare_cells(method, status_line, route)
    except TypeError:  # a status "line" that cannot be a key: no cache
        cells = _declare_cells(method, status_line, route)
    vals, idx, hvals, hidx, bounds, sum_at, status, overflow = cells
    vals[idx] += 1.0
    if overflow is not None:
        add_cells(overflow, 1.0)
    if sock is not None:
        release(sock)  # right after the count: a kill in between is the one window left
    hvals[hidx + bisect_left(bounds, seconds)] += 1.0
    hvals[hidx + sum_at] += seconds
    return status


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


def _route_of(environ: dict, status_line: object) -> str:
    """``request_route`` of a WSGI request (a framework's route read here first: no call); ``other``
    if the environ cannot be read (a key whose comparison raises), so that the response is still
    counted, as in the C path."""
    try:
        named = environ.get(ROUTE_KEY)
        if named and isinstance(named, str):
            return named
        return request_route(None, status_line, environ.get("PATH_INFO"))
    except Exception:  # noqa: BLE001 - whatever the app put in the environ, the response is counted
        return OTHER


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
        self.sock = sock  # held (corked, resets on death) until the count is stored (``hold.hold``)

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
    """Is ``app`` clearly an ASGI app: a coroutine function, or an object whose ``__call__`` is one (its
    type's, or one it names itself as the accelerated ASGI ``MetricsMiddleware`` does)?"""
    calls = (inspect.getattr_static(type(app), "__call__", None), inspect.getattr_static(app, "__call__", None))
    return inspect.iscoroutinefunction(app) or any(map(inspect.iscoroutinefunction, calls))


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
        if workload and falcon_routes.is_falcon_app(app):
            falcon_routes.capture_routes(app)  # Falcon's router names the route: no Falcon middleware needed
        self.hold = hold and CORK is not None  # see hold.hold(); gunicorn passes its socket in the environ
        self.tenant_key = "HTTP_" + tenant_header.upper().replace("-", "_")
        if hotpath is not None and isinstance(self, hotpath.Middleware):
            hotpath.Middleware.__init__(self, app, _CELLS, _TEMPLATES, KNOWN_METHODS, self.tenant_key,
                                        workload, self.hold)

    # the C path's slow paths: a (method, status line, route) or a path seen for the first time
    _status = staticmethod(_declare_cells)
    _route = staticmethod(path_template)


class _PythonPath(_Shared):
    """The request path in Python: the reference, and what runs without the C accelerator."""

    def _finish(self, request: _Request, response_bytes: int) -> None:
        """The server took the last byte: count, record, then let the response go (``hold.release``)."""
        seconds = perf_counter() - request.started
        method, environ = request.method, request.environ
        route = _route_of(environ, request.status)
        status = count_response(method, request.status, route, seconds, request.sock)
        if self.workload:
            RECORDER.record(method, route, status, seconds, time.time() - seconds, response_bytes,
                            _text(environ, REQUEST_ID_KEY, DEFAULT_REQUEST_ID_KEY),
                            _text(environ, TENANT_KEY, self.tenant_key))
            RECORDER.end()  # may run a pending optimization: after the response went

    def __call__(self, environ, start_response):
        started = perf_counter()
        method = request_method(environ.get("REQUEST_METHOD"))  # a missing one is not taken for a GET
        sock = environ.get("gunicorn.socket") if self.hold else None
        if sock is not None and not hold_socket(sock):
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
