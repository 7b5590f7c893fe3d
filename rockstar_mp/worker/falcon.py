"""Falcon's route templates for the workload records: from Falcon's router, or from a Falcon middleware.

``MetricsMiddleware(app, workload=True)`` around a ``falcon.App`` needs nothing more: it has the app's
router note each request's template (``capture_routes``), the cheapest way (about 200 instructions a
request, against some 2,800 for a Falcon middleware)::

    import falcon
    from rockstar_mp.worker.wsgi import MetricsMiddleware

    app = MetricsMiddleware(falcon.App(), workload=True)   # routes named /users/{id}, 404s <unmatched>

``WorkloadMiddleware`` is for the rest: a Falcon app that is not wrapped (it then records on its own), a
tenant taken by a callable, or headers other than the default ones. Example::

    import falcon
    from rockstar_mp.worker.falcon import WorkloadMiddleware

    app = falcon.App(middleware=[WorkloadMiddleware(tenant_header="X-Tenant-ID")])

The route is the template (``/users/{id}``), never the raw path, so label cardinality stays bounded.
The request id comes from ``X-Request-ID`` or is generated.

Wrapped in ``MetricsMiddleware(app, workload=True)`` (as ``examples/app.py`` is), this middleware only
hands its route template (and a tenant or request id from non-default headers) to the WSGI layer,
which makes the one record after the response is sent, with the exact bytes sent; on its own it
records in ``process_response``. Say ``wsgi_layer=True`` when it is wrapped: it then has no
``process_request`` hook for Falcon to call (about 1 us less per request)::

    app = MetricsMiddleware(falcon.App(middleware=[WorkloadMiddleware(wsgi_layer=True)]), workload=True)
"""
from __future__ import annotations

import time
from typing import Callable

from .accelerator import hotpath
from .keys import DEFAULT_REQUEST_ID_KEY, DEFAULT_TENANT_KEY, REQUEST_ID_KEY, ROUTE_KEY, TENANT_KEY, UNMATCHED, WSGI_KEY
from .workload import RECORDER, template_path

UNROUTED = UNMATCHED  # the route of a request Falcon routed nowhere (a 404): one value however many paths


class WorkloadMiddleware:
    """``tenant``: a callable ``(req) -> str`` overriding ``tenant_header``. ``wsgi_layer``: the app is
    wrapped in ``MetricsMiddleware(app, workload=True)``, which records (see the module's docstring)."""

    def __init__(self, tenant_header: str = "X-Tenant-ID", tenant: Callable | None = None,
                 request_id_header: str = "X-Request-ID", wsgi_layer: bool = False) -> None:
        self._tenant_key = _environ_key(tenant_header)
        self._tenant = tenant
        self._request_id_key = _environ_key(request_id_header)
        if wsgi_layer:
            # the type of a method cannot say "absent on this instance"
            self.process_request = None  # type: ignore[method-assign,assignment]  # Falcon skips a hook that is None; the WSGI layer times the request

    def process_request(self, req, resp) -> None:
        env = req.env
        if WSGI_KEY not in env:
            env["rockstar.start"] = (time.time(), time.perf_counter())
            RECORDER.begin(req.method, req.path)

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        env = req.env
        route = req.uri_template or (template_path(req.path) if resource is not None else UNROUTED)
        if WSGI_KEY in env:
            env[ROUTE_KEY] = route
            if self._tenant is not None:
                env[TENANT_KEY] = self._tenant(req)
            elif self._tenant_key != DEFAULT_TENANT_KEY:
                env[TENANT_KEY] = env.get(self._tenant_key, "")
            if self._request_id_key != DEFAULT_REQUEST_ID_KEY:
                env[REQUEST_ID_KEY] = env.get(self._request_id_key, "")
            return
        started = env.get("rockstar.start")
        if started is None:
            return
        start, t0 = started
        seconds = time.perf_counter() - t0
        tenant = self._tenant(req) if self._tenant else env.get(self._tenant_key, "")
        request_id = env.get(self._request_id_key, "")
        RECORDER.record(req.method, route, _status(resp.status), seconds, start, _length(resp),
                        request_id if isinstance(request_id, str) else "", tenant if isinstance(tenant, str) else "")
        RECORDER.end()


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _status(status) -> int:
    return status if isinstance(status, int) else int(str(status)[:3])


def _length(resp) -> int:
    if resp.content_length is not None:
        return int(resp.content_length)
    if resp.stream is not None:
        return 0  # unknown until streamed
    body = resp.render_body()  # Falcon caches the rendered media, so it is not serialised twice
    return len(body) if body else 0


class RouteCapture:
    """Stands in for a Falcon app's router search (``App._router_search``, called as ``find(path, req=req)``
    once a request): returns what the router found, having put the matched route's template in the
    environ (``ROUTE_KEY``), or ``<unmatched>`` when no route matched. The C accelerator has the same
    type (``_hotpath.RouteCapture``), used when it is built."""

    __slots__ = ("find",)

    def __init__(self, find: Callable) -> None:
        self.find = find

    def __call__(self, path, req=None):
        route = self.find(path, req=req)
        if req is not None:
            template = UNMATCHED if route is None else (route[3] if len(route) >= 4 else None)
            env = getattr(req, "env", None)
            if isinstance(template, str) and template and isinstance(env, dict):
                env[ROUTE_KEY] = template
        return route


_CAPTURES: tuple[type, ...] = (RouteCapture,) + ((hotpath.RouteCapture,) if hotpath is not None else ())


def is_falcon_app(app) -> bool:
    """Is ``app`` a Falcon WSGI app (``falcon.App`` or a subclass)? Falcon itself is not imported."""
    return any(cls.__module__ == "falcon.app" and cls.__name__ == "App" for cls in type(app).__mro__)


def capture_routes(app) -> bool:
    """Have the Falcon ``app``'s router name every request's route template in the environ, where
    ``MetricsMiddleware(app, workload=True)`` (which calls this) reads it; True if it does (again).

    Example::

        capture_routes(falcon_app)   # then a request to /users/7 is recorded as /users/{id}
    """
    search = getattr(app, "_router_search", None)
    if not callable(search):
        return False
    if not isinstance(search, _CAPTURES):
        app._router_search = (hotpath.RouteCapture if hotpath is not None else RouteCapture)(search)
    return True
