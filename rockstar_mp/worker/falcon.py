"""Falcon middleware recording one workload record per request, with Falcon's route templates.

Example::

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
