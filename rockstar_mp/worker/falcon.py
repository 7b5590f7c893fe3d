"""Falcon middleware recording one workload record per request, with Falcon's route templates.

Example::

    import falcon
    from rockstar_mp.worker.falcon import WorkloadMiddleware

    app = falcon.App(middleware=[WorkloadMiddleware(tenant_header="X-Tenant-ID")])

The route is the template (``/users/{id}``), never the raw path, so label cardinality stays bounded.
The request id comes from ``X-Request-ID`` or is generated, and is echoed in the response.
"""
from __future__ import annotations

import time
from typing import Callable

from .workload import RECORDER, template_path


class WorkloadMiddleware:
    """``tenant``: a callable ``(req) -> str`` overriding ``tenant_header``."""

    def __init__(self, tenant_header: str = "X-Tenant-ID", tenant: Callable | None = None,
                 request_id_header: str = "X-Request-ID") -> None:
        self._tenant_header = tenant_header
        self._tenant = tenant
        self._request_id_header = request_id_header

    def process_request(self, req, resp) -> None:
        req.context.rockstar_start = (time.time(), time.perf_counter())
        req.context.rockstar_id = req.get_header(self._request_id_header) or RECORDER.new_request_id()
        RECORDER.begin(req.method, req.path)

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        started = getattr(req.context, "rockstar_start", None)
        if started is None:
            return
        start, t0 = started
        seconds = time.perf_counter() - t0
        route = req.uri_template or (template_path(req.path) if resource is not None else "(unrouted)")
        tenant = self._tenant(req) if self._tenant else req.get_header(self._tenant_header)
        resp.set_header(self._request_id_header, req.context.rockstar_id)
        RECORDER.end()
        RECORDER.record(req.method, route, int(resp.status_code), seconds, start, _length(resp),
                        req.context.rockstar_id, tenant or "")


def _length(resp) -> int:
    if resp.content_length is not None:
        return int(resp.content_length)
    if resp.stream is not None:
        return 0  # unknown until streamed
    body = resp.render_body()  # Falcon caches the rendered media, so it is not serialised twice
    return len(body) if body else 0
