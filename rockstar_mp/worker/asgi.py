"""ASGI middleware that counts every request in the worker's slab, for any ASGI 3 app.

Example::

    from rockstar_mp.worker.asgi import MetricsMiddleware
    app = MetricsMiddleware(fastapi_app)      # any ASGI 3 app: FastAPI, Starlette, Falcon's asgi.App...

It writes what the WSGI ``MetricsMiddleware`` writes (``rockstar_mp.worker.wsgi``; the families are
declared there, once): ``http.requests{method,status,route}`` and
``http.request.duration.seconds{method,route}`` (the route below, bounded as for WSGI: beyond
``max_routes`` a worker, ``route="other"``), and with ``workload=True`` (the default here) one
workload record per request (``RECORDER``: route template, tenant from ``X-Tenant-ID``, request id
from ``X-Request-ID``) and the in-flight fields that ``/workers``, ``rockstar-mp top`` and the
optimizer read.

When a request is counted, exactly once:

* A response is counted when the app sends its last body message (``http.response.body`` without
  ``more_body``), with its status, just before that message goes to the server. Counting before the
  last bytes reach the socket is what keeps "no client sees a response that was not counted" true
  without a cork (the ASGI server owns its transport): a worker SIGKILLed after the count but before
  the write over-counts that one response, never under-counts one a client received.
* An app that raised before its response was complete: the status it started, else 500 (the server
  answers 500); the exception is re-raised. Starlette's ``ServerErrorMiddleware`` sends its 500 before
  re-raising, so that 500 is counted as a response like any other.
* An app that returned without completing its response (a streaming response the client left: it saw
  ``http.disconnect``, or a ``send`` that raised because the client was gone): the status it started,
  as the WSGI middleware counts a body the server closed early; with no response started, 500 (what
  the server answers).
* An app cancelled by the server (the client went away and the server's grace period ended): the
  status it started, else ``499`` ("client closed request", nginx's code), since nobody got an answer.

Routes: FastAPI's and Starlette's routers put the matched route in ``scope["route"]``; its template
(``/items/{item_id}``) is the route, with FastAPI's included-router prefixes and a ``Mount``'s prefix
(its path parameters named) in front. A request the router matched to no route is ``<unmatched>``
whatever its status (a 404, a slash redirect). Other ASGI apps (no router in the scope): a template
of the path as for WSGI (ids become ``{id}``), ``<unmatched>`` for a 404.

WebSockets are counted as their own kind: ``http.requests{method="WEBSOCKET",status,route}`` when the
session ends, status ``101`` once the app accepted it, ``403`` if it closed it before accepting, 500 if
it raised before; the duration histogram gets the session's length. They are not "in flight" (a
session lasting hours would keep the optimizer from ever finding the worker idle) and write no
workload record. ``lifespan`` (and any other scope type) goes to the app untouched.

Cost: with the C accelerator built, ``__call__`` is C (``_hotpath.AsgiMiddleware``): the send the app gets
is a C object doing the per-message work, the counting, the route, the headers and the record, and the
awaitable the server gets is the app's, driven by a C object that ends the request when the app returned
or raised; no Python frame of ours runs per request (``python -m benchmarks.asgi_overhead``).
``PythonMetricsMiddleware`` is the Python path, the reference (tests/test_asgi_paths_agree.py) and what
runs without the accelerator.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from ..metrics import REGISTRY
from .accelerator import hotpath
from .keys import UNMATCHED
from .workload import OTHER, RECORDER, add_cells, template_path
from .wsgi import (
    KNOWN_METHODS,
    MAX_PATHS,
    is_asgi_app,
    response_cells,
    status_label,
)
from .wsgi import (
    _Shared as _WsgiShared,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEBSOCKET = "WEBSOCKET"  # the method label of a WebSocket session
CLIENT_CLOSED = 499  # the status of a request cancelled before any response started
MAX_CELLS = 1000  # cached (method, status) -> cells
FASTAPI_SCOPE_KEY = "fastapi"  # FastAPI's own scope dict; its effective route has the included prefixes
FASTAPI_ROUTE_KEY = "effective_route_context"
_record = hotpath.record if hotpath is not None else RECORDER.record  # what RECORDER.record runs, one call less


def _is_wsgi_app(app: object) -> bool:
    """Is ``app`` clearly a WSGI app: a plain callable of exactly (environ, start_response)?"""
    if isinstance(app, _WsgiShared):  # ours, whose C __call__ has no signature to read
        return True
    if is_asgi_app(app) or not callable(app):
        return False
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return False  # no signature to read: nothing says it is WSGI
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(positional) == 2 and len(required) == 2 and not any(
        p.kind == p.VAR_POSITIONAL for p in parameters)


def _header_name(header: str) -> bytes:
    return header.lower().encode("latin-1")


def status_code(status: Any) -> int:
    """The status code a record stores, and a route is found with, of an ASGI ``status``: itself if it
    is an int, else ``status_label``'s of its text (0 for none)."""
    return status if type(status) is int else status_label(str(status))[1]


class _Cells:
    """What one (method, status, route) writes: cached cells of the request counter and the duration
    histogram (``wsgi.response_cells``'s, with the route admitted to the ``route`` label), the status code
    a record stores, and the overflow cells when the catalogue had no room."""

    def __init__(self) -> None:
        self.cache = REGISTRY.cell_cache()  # (method, status, route) -> cells; emptied when the metrics move

    def get(self, method: str, status: Any, route: str) -> tuple:
        """``(counter view, index, histogram view, index, bounds, sum offset, code, overflow or None)``
        (the C path's status entry)."""
        key = (method, status, route)
        try:
            cells = self.cache.get(key)
        except TypeError:  # an unhashable "status" from an app the server will refuse anyway
            return self._declare(method, status, route)
        if cells is None:
            cells = self._declare(method, status, route)
            if len(self.cache) < MAX_CELLS:
                self.cache[key] = cells
        return cells

    @staticmethod
    def _declare(method: str, status: Any, route: str) -> tuple:
        cells = response_cells(method, str(status), route)
        return cells[:6] + (status_code(status),) + cells[7:]


class _Routes:
    """Route templates from the router's matched route in the scope (FastAPI, Starlette), else from
    the path."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}  # raw path -> route (read by the C path too)
        self._templates: dict[Any, str] = {}  # (template, raw mount prefix) -> route

    def of(self, scope: Scope, root_path: str, status: int) -> str:
        """The route of a request whose scope the app has run with (``root_path``: the scope's as the
        request came in, before a ``Mount`` added its prefix)."""
        route = scope.get("route")
        if route is None:
            if "router" in scope or status == 404:
                return UNMATCHED
            return self._from_path(scope.get("path"))
        template = self._template(scope, route)
        if template is None:
            return UNMATCHED
        mounted = scope.get("root_path")
        if (mounted is not root_path and mounted != root_path and isinstance(mounted, str)
                and mounted.startswith(root_path)):
            return self._mounted(mounted[len(root_path):], template, scope.get("path_params"))
        return template

    @staticmethod
    def _template(scope: Scope, route: Any) -> str | None:
        if hasattr(route, "routes"):  # a Mount whose app is no router: what it matched is its prefix
            return "/{path}"
        fastapi = scope.get(FASTAPI_SCOPE_KEY)
        if isinstance(fastapi, dict):
            effective = getattr(fastapi.get(FASTAPI_ROUTE_KEY), "path_format", None)
            if isinstance(effective, str) and effective:
                return effective
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        return template if isinstance(template, str) and template else None

    def _mounted(self, prefix: str, template: str, params: object) -> str:
        """``template`` under a ``Mount``'s prefix, whose path parameters (``/orgs/acme``) are named
        (``/orgs/{org}``) from the scope's ``path_params``; ids left unnamed become ``{id}``."""
        key = (template, prefix)
        route = self._templates.get(key)
        if route is None:
            named = {}
            if isinstance(params, dict):
                named = {str(v): k for k, v in params.items() if "{" + str(k) not in template}
            segments = ("{%s}" % named[s] if s in named else s for s in prefix.split("/"))
            route = template_path("/".join(segments)).rstrip("/") + template
            if len(self._templates) < MAX_PATHS:
                self._templates[key] = route
        return route

    def _from_path(self, path: object) -> str:
        path = path if isinstance(path, str) and path else "/"
        route = self.paths.get(path)
        if route is None:
            route = template_path(path)
            if len(self.paths) < MAX_PATHS:
                self.paths[path] = route
        return route


class _Shared:
    """Configuration, the slow paths and WebSockets, shared by the C request path and the Python one."""

    def __init__(self, app: ASGIApp, workload: bool = True, tenant_header: str = "X-Tenant-ID",
                 request_id_header: str = "X-Request-ID") -> None:
        if _is_wsgi_app(app):
            raise TypeError(f"rockstar_mp.worker.asgi.MetricsMiddleware wraps ASGI apps, and {app!r} is a WSGI "
                            "app (environ, start_response): wrap it in rockstar_mp.worker.wsgi.MetricsMiddleware")
        self.app = app
        self.workload = workload
        self._tenant = _header_name(tenant_header)
        self._request_id = _header_name(request_id_header)
        self._cells = _Cells()
        self._routes = _Routes()
        if hotpath is not None and isinstance(self, hotpath.AsgiMiddleware):
            hotpath.AsgiMiddleware.__init__(self, self._cells.cache, self._routes.paths, KNOWN_METHODS,
                                            self._tenant, self._request_id, workload, CLIENT_CLOSED)

    # -- the slow paths (the C path asks them what its caches do not hold) --------------------------
    def _cells_of(self, method: str, status: Any, route: str) -> tuple:
        return self._cells.get(method, status, route)

    @staticmethod
    def _code_of(status: Any) -> int:
        return status_code(status)

    def _route_of(self, scope: Scope, root_path: str, status: int) -> str:
        return self._routes.of(scope, root_path, status)

    def _headers_of(self, scope: Scope) -> tuple[str, str]:
        """The tenant and request id headers' values ("" for none; the last one of a name stands)."""
        tenant = request_id = ""
        tenant_name, request_id_name = self._tenant, self._request_id
        for name, value in scope.get("headers") or ():
            if name == tenant_name:
                tenant = value.decode("latin-1")
            elif name == request_id_name:
                request_id = value.decode("latin-1")
        return tenant, request_id

    def _count(self, method: str, status: Any, route: str, started: float) -> float:
        """Count one response; its seconds."""
        seconds = perf_counter() - started
        vals, idx, hvals, hidx, bounds, sum_at, code, overflow = self._cells.get(method, status, route)
        vals[idx] += 1.0
        if overflow is not None:
            add_cells(overflow, 1.0)
        hvals[hidx + bisect_left(bounds, seconds)] += 1.0
        hvals[hidx + sum_at] += seconds
        return seconds

    def _unfinished(self, scope: Scope, root_path: str, method: str, status: Any, started: float,
                    sent: int) -> None:
        """Count (and record) a request whose response did not reach its last body message."""
        code = status_code(status)
        route = self._routes.of(scope, root_path, code)
        seconds = self._count(method, status, route, started)
        if self.workload:
            self._record(scope, method, route, code, seconds, sent)

    def _record(self, scope: Scope, method: str, route: str, code: int, seconds: float, sent: int) -> None:
        tenant, request_id = self._headers_of(scope)
        _record(method, route, code, seconds, time.time() - seconds, sent, request_id, tenant)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        return await self.app(scope, receive, send)  # lifespan and the rest: untouched

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        status = 0
        root_path = scope.get("root_path", "")

        def count(status: int) -> None:
            self._count(WEBSOCKET, status, self._routes.of(scope, root_path, status), started)

        async def watching_send(message: Message) -> None:
            nonlocal status
            if not status:
                kind = message["type"]
                if kind == "websocket.accept":
                    status = 101
                elif kind == "websocket.close" or kind == "websocket.http.response.start":
                    status = message.get("status", 403) if kind != "websocket.close" else 403
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except asyncio.CancelledError:
            count(status or CLIENT_CLOSED)
            raise
        except BaseException:
            count(status or 500)
            raise
        count(status or 500)


class _PythonPath(_Shared):
    """The request path in Python: the reference, and what runs without the C accelerator."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self._not_http(scope, receive, send)
        started = perf_counter()
        method = scope.get("method")
        if method not in KNOWN_METHODS:
            method = OTHER
        root_path = scope.get("root_path", "")
        status = 0  # no response started yet
        sent = 0
        seconds = -1.0  # counted once it is >= 0
        workload = self.workload
        cache = self._cells.cache
        if workload:
            path = scope.get("path")
            RECORDER.begin(method, path if path and isinstance(path, str) else "/")

        def counting_send(message: Message) -> Awaitable[None]:
            # A plain function returning the server's awaitable: no coroutine of ours per message.
            nonlocal status, sent, seconds
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    sent += len(body)
                if not message.get("more_body") and seconds < 0 and status:
                    # counted before the last bytes go (see the module's docstring)
                    seconds = perf_counter() - started
                    code = status if type(status) is int else status_code(status)
                    route = self._routes.of(scope, root_path, code)
                    try:
                        cells = cache.get((method, status, route)) or self._cells.get(method, status, route)
                    except TypeError:  # an unhashable "status": the server refuses it anyway
                        cells = self._cells.get(method, status, route)
                    vals, idx, hvals, hidx, bounds, sum_at, code, overflow = cells
                    vals[idx] += 1.0
                    hvals[hidx + bisect_left(bounds, seconds)] += 1.0
                    hvals[hidx + sum_at] += seconds
                    if overflow is not None:
                        add_cells(overflow, 1.0)
                    if workload:
                        self._record(scope, method, route, code, seconds, sent)
            elif kind == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, counting_send)
        except asyncio.CancelledError:
            if seconds < 0:
                self._unfinished(scope, root_path, method, status or CLIENT_CLOSED, started, sent)
            raise
        except BaseException:
            if seconds < 0:
                self._unfinished(scope, root_path, method, status or 500, started, sent)
            raise
        else:
            if seconds < 0:
                self._unfinished(scope, root_path, method, status or 500, started, sent)
        finally:
            if workload:
                RECORDER.end()  # may run a pending optimization: after the response went


if hotpath is not None:
    _CMiddleware: Any = hotpath.AsgiMiddleware  # a C type, which no stub describes

    class MetricsMiddleware(_Shared, _CMiddleware):
        """Counts requests and their durations for any ASGI 3 ``app``, and records workload unless
        ``workload=False`` (see the module's docstring for what is counted when). This build's
        ``__call__`` is C (``rockstar_mp/_hotpath.c``: ``asgi_call``): an HTTP request's awaitable is
        the app's, run through by a C object that ends the request when the app returned or raised, and
        the send the app gets is a C object too. No Python frame of ours runs per request."""

        def __init__(self, app: ASGIApp, workload: bool = True, tenant_header: str = "X-Tenant-ID",
                     request_id_header: str = "X-Request-ID") -> None:
            super().__init__(app, workload, tenant_header, request_id_header)
            # Servers tell an ASGI 3 app by its __call__ being a coroutine function (uvicorn's
            # interface="auto", asgiref's guarantee_single_callable); a C __call__ is none, so the
            # instance names one. Calls still go through the type's C __call__.
            self.__call__ = self._awaited_call

        async def _awaited_call(self, scope: Scope, receive: Receive, send: Send) -> None:
            """The C ``__call__``, awaited: what ``app.__call__(...)`` runs when called by name."""
            await _CMiddleware.__call__(self, scope, receive, send)
else:
    class MetricsMiddleware(_PythonPath):  # type: ignore[no-redef]
        """Counts requests and their durations for any ASGI 3 ``app``, and records workload unless
        ``workload=False`` (see the module's docstring for what is counted when)."""


class PythonMetricsMiddleware(_PythonPath):
    """``MetricsMiddleware`` with the Python request path even when the C one is built (for tests and
    comparisons)."""
