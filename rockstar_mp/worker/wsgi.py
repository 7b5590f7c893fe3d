"""WSGI middleware that counts every response in the worker's slab.

A response is counted when the server has taken its last body chunk (right after gunicorn wrote it),
so a worker killed mid-request does not count a response its client never got, and the window between
"sent" and "counted" is a few hundred nanoseconds.

Example::

    from rockstar_mp.worker.wsgi import MetricsMiddleware
    app = MetricsMiddleware(falcon_app)      # any WSGI app

It records ``http.requests`` (counter, labels ``method`` and ``status``) and ``http.request.duration``
(histogram, seconds, label ``method``).
"""
from __future__ import annotations

import time

from ..metrics import Counter, Histogram

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

REQUESTS = Counter("http.requests", "HTTP responses served", ["method", "status"])
DURATION = Histogram("http.request.duration", "Seconds from request to last body chunk", ["method"])


class _CountingBody:
    """Wraps a WSGI response iterable; counts once, when the last chunk was taken or on close()."""

    __slots__ = ("_body", "_method", "_status", "_start", "_counted")

    def __init__(self, body, method: str, status: list, start: float) -> None:
        self._body = body
        self._method = method
        self._status = status
        self._start = start
        self._counted = False

    def __iter__(self):
        yield from self._body
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
        REQUESTS.labels(self._method, status).inc()
        DURATION.labels(self._method).observe(time.perf_counter() - self._start)


class MetricsMiddleware:
    """Counts requests and their durations for any WSGI ``app``."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        start = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = "other"
        status: list = []

        def recording_start_response(status_line, headers, exc_info=None):
            status[:] = [status_line[:3]]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            _CountingBody((), method, ["500"], start)._count()
            raise
        return _CountingBody(body, method, status, start)
