"""WSGI middleware that counts every response in the worker's slab.

A response is counted when the server has taken its last body chunk (right after gunicorn wrote it),
so a worker killed mid-request does not count a response its client never got, and the window between
"sent" and "counted" is a few hundred nanoseconds.

Example::

    from rockstar_mp.worker.wsgi import MetricsMiddleware
    app = MetricsMiddleware(falcon_app)      # any WSGI app

It records ``http.requests`` (counter, labels ``method`` and ``status``) and
``http.request.duration.seconds`` (histogram, label ``method``). With ``workload=True`` it also records one
workload record per response (see ``rockstar_mp.worker.workload``), taking the route from
``environ["rockstar.route"]`` when a framework set it, else a template of the path (ids become ``{id}``).
"""
from __future__ import annotations

import socket
import struct
import time

from ..metrics import Counter, Histogram
from .falcon import ROUTE_KEY, WSGI_KEY
from .workload import RECORDER, template_path

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

REQUESTS = Counter("http.requests", "HTTP responses served", ["method", "status"])
DURATION = Histogram("http.request.duration.seconds", "Seconds from request to last body chunk",
                     ["method"])


_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
_CORK = getattr(socket, "TCP_CORK", None)


def _hold(sock) -> bool:
    """Until the count is stored, the response stays in the kernel (TCP_CORK) and the socket resets
    if the process dies (SO_LINGER 0 discards what was not sent): a worker SIGKILLed before counting
    sends nothing complete, one killed after counting has its response flushed by the kernel. Without
    it, a send wakes the client and the scheduler may run the client (and a killer) before the worker
    stores its count, a window of milliseconds on a busy machine."""
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


class _CountingBody:
    """Wraps a WSGI response iterable; counts once, when the last chunk was taken or on close()."""

    __slots__ = ("_body", "_middleware", "_method", "_status", "_start", "_counted", "_environ",
                 "_wall_start", "_bytes", "_sock")

    def __init__(self, body, middleware: "MetricsMiddleware", method: str, status: list, start: float,
                 environ: dict | None, wall_start: float, sock=None) -> None:
        self._body = body
        self._middleware = middleware
        self._method = method
        self._status = status
        self._start = start
        self._counted = False
        self._environ = environ  # set when recording workload
        self._wall_start = wall_start
        self._bytes = 0
        self._sock = sock  # corked and set to reset on death until the count is stored (``_hold``)

    def __iter__(self):
        if self._environ is None:
            yield from self._body
        else:
            for chunk in self._body:
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

    def _count(self) -> None:
        if self._counted:
            return
        self._counted = True
        # First thing after the last chunk went out: a worker killed after this counted what its
        # client received, and the window before it is a few hundred nanoseconds.
        if self._status:
            self._status[1].inc()
        else:
            self._middleware.requests(self._method, "500").inc()
        if self._sock is not None:
            _release(self._sock)
        seconds = time.perf_counter() - self._start
        status = self._status[0] if self._status else "500"
        self._middleware.observe(self._method, seconds)
        environ = self._environ
        if environ is not None:
            RECORDER.end()
            RECORDER.record(self._method, environ.get(ROUTE_KEY) or template_path(environ.get("PATH_INFO") or "/"),
                            int(status), seconds, self._wall_start, self._bytes,
                            environ.get("HTTP_X_REQUEST_ID") or RECORDER.new_request_id(),
                            environ.get("rockstar.tenant") or environ.get(self._middleware.tenant_key, ""))


class MetricsMiddleware:
    """Counts requests and their durations for any WSGI ``app`` (and records workload if asked)."""

    def __init__(self, app, workload: bool = False, tenant_header: str = "X-Tenant-ID",
                 hold: bool = True) -> None:
        self.app = app
        self.workload = workload
        self.hold = hold and _CORK is not None  # see _hold(); gunicorn passes its socket in the environ
        self.tenant_key = "HTTP_" + tenant_header.upper().replace("-", "_")
        self._requests: dict[tuple, object] = {}  # (method, status) -> counter child
        self._durations: dict[str, object] = {}  # method -> histogram child

    def requests(self, method: str, status: str):
        """The ``http.requests`` child for this method and status."""
        requests = self._requests.get((method, status))
        if requests is None:
            requests = self._requests[(method, status)] = REQUESTS.labels(method, status)
        return requests

    def observe(self, method: str, seconds: float) -> None:
        duration = self._durations.get(method)
        if duration is None:
            duration = self._durations[method] = DURATION.labels(method)
        duration.observe(seconds)

    def __call__(self, environ, start_response):
        start = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = "other"
        status: list = []
        recording = None
        wall_start = 0.0
        if self.workload:
            environ[WSGI_KEY] = True
            recording = environ
            wall_start = time.time()
            RECORDER.begin(method, environ.get("PATH_INFO") or "/")

        def recording_start_response(status_line, headers, exc_info=None):
            status[:] = [status_line[:3], self.requests(method, status_line[:3])]
            return start_response(status_line, headers, exc_info)

        sock = environ.get("gunicorn.socket") if self.hold else None
        if sock is not None and not _hold(sock):
            sock = None
        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            _CountingBody((), self, method, [], start, recording, wall_start, sock)._count()
            raise
        return _CountingBody(body, self, method, status, start, recording, wall_start, sock)
