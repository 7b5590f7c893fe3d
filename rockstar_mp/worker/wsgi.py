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

import time

from ..metrics import Counter, Histogram
from .workload import RECORDER, template_path

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

REQUESTS = Counter("http.requests", "HTTP responses served", ["method", "status"])
DURATION = Histogram("http.request.duration.seconds", "Seconds from request to last body chunk",
                     ["method"])


class _CountingBody:
    """Wraps a WSGI response iterable; counts once, when the last chunk was taken or on close()."""

    __slots__ = ("_body", "_method", "_status", "_start", "_counted", "_workload", "_bytes")

    def __init__(self, body, method: str, status: list, start: float, workload=None) -> None:
        self._body = body
        self._method = method
        self._status = status
        self._start = start
        self._counted = False
        self._workload = workload  # (environ, wall-clock start, tenant header key) or None
        self._bytes = 0

    def __iter__(self):
        if self._workload is None:
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
        status = self._status[0] if self._status else "500"
        seconds = time.perf_counter() - self._start
        REQUESTS.labels(self._method, status).inc()
        DURATION.labels(self._method).observe(seconds)
        if self._workload is not None:
            environ, wall_start, tenant_key = self._workload
            RECORDER.end()
            route = environ.get("rockstar.route") or template_path(environ.get("PATH_INFO") or "/")
            RECORDER.record(self._method, route, int(status), seconds, wall_start, self._bytes,
                            environ.get("rockstar.request_id", ""), environ.get(tenant_key, ""))


class MetricsMiddleware:
    """Counts requests and their durations for any WSGI ``app`` (and records workload if asked)."""

    def __init__(self, app, workload: bool = False, tenant_header: str = "X-Tenant-ID") -> None:
        self.app = app
        self.workload = workload
        self._tenant_key = "HTTP_" + tenant_header.upper().replace("-", "_")

    def __call__(self, environ, start_response):
        start = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = "other"
        status: list = []
        workload = None
        if self.workload:
            environ.setdefault("rockstar.request_id",
                               environ.get("HTTP_X_REQUEST_ID") or RECORDER.new_request_id())
            workload = (environ, time.time(), self._tenant_key)
            RECORDER.begin(method, environ.get("PATH_INFO") or "/")

        def recording_start_response(status_line, headers, exc_info=None):
            status[:] = [status_line[:3]]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            _CountingBody((), method, ["500"], start, workload)._count()
            raise
        return _CountingBody(body, method, status, start, workload)
