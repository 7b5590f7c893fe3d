"""The aggregator's Falcon ASGI app: ``GET {metrics_path}`` and the bearer-token check.

Every error is JSON (``{"title": ..., "description": ...}``), whatever the client accepts.
"""
from __future__ import annotations

import json
from typing import Callable

import falcon
import falcon.asgi

from ..config import MonitoringConfig
from ..control import totals
from . import params
from .admin import BodyDeadline, RateLimit, add_admin, bearer_token, refuse_token_in_query, token_matches
from .dashboard import PATH as DASHBOARD_PATH
from .dashboard import Profiler, add_dashboard, is_public
from .exposition import (
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_CONTENT_TYPE,
    render_json,
    render_openmetrics,
    render_prometheus,
)
from .history_view import HistoryResource, history_route
from .negotiation import FORMATS, choose_format  # noqa: F401 (FORMATS: the valid ?format= values)
from .state import AggregatorState
from .views import add_views, exported_families


class BearerAuth:
    """Falcon middleware: with ``require_auth``, every request needs ``Authorization: Bearer <token>``
    (the ``auth_token``, or the ``admin_token``, which may do everything the reading token may).

    Both sides are hashed first, so the comparison takes the same time whatever the token's length.
    """

    def __init__(self, config: MonitoringConfig, public: Callable[[str], bool] | None = None) -> None:
        self._required = config.require_auth
        self._tokens = [t for t in (config.auth_token, config.admin_token) if t]
        self._public = public  # paths that hold no data (the dashboard's page), served without a token

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self._required:
            return
        refuse_token_in_query(req)
        if self._public is not None and self._public(req.path):
            return
        token = bearer_token(req)
        if not any([token_matches(token, expected) for expected in self._tokens]):  # no short cut
            raise falcon.HTTPUnauthorized(
                title="401 Unauthorized",
                description="send the token as 'Authorization: Bearer <token>'",
                challenges=['Bearer realm="rockstar-mp"'])


def _pid_param(req: falcon.asgi.Request, state: AggregatorState) -> int | None:
    pid = params.integer(req, "pid", minimum=1)
    if pid is not None and state.snapshot().worker(pid) is None:
        raise falcon.HTTPNotFound(title="404 Not Found",
                                  description=f"no live worker with pid {pid}; see 'workers'")
    return pid


class MetricsResource:
    """``GET|HEAD {metrics_path}[?format=json|prometheus|openmetrics][&pid=N]``: the merged metrics.

    Without ``format`` the ``Accept`` header chooses (``negotiation.choose_format``): Prometheus's
    scraper gets OpenMetrics, ``text/plain`` the Prometheus text format, anything else (curl's ``*/*``)
    JSON. Every answer says ``Vary: Accept``.

    JSON: ``counters``, ``gauges``, ``histograms``, ``system`` (the server as a whole) and ``workers``.
    """

    _TEXT = {"prometheus": (PROMETHEUS_CONTENT_TYPE, render_prometheus),
             "openmetrics": (OPENMETRICS_CONTENT_TYPE, render_openmetrics)}

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.vary = ("Accept",)
        if not self._state.config.enable_metrics:
            raise falcon.HTTPNotFound(title="404 Not Found", description="the metrics endpoint is off")
        params.only(req, ("format", "pid"))
        try:
            fmt = choose_format(req.get_header("Accept"), params.text(req, "format"))
        except ValueError as exc:
            raise falcon.HTTPBadRequest(title="400 Bad Request", description=str(exc)) from None
        pid = _pid_param(req, self._state)
        snap = self._state.snapshot()
        if fmt in self._TEXT:
            resp.content_type, render = self._TEXT[fmt]
            resp.text = render(snap, pid, exported_families(self._state) if pid is None else ())
            return
        body = render_json(snap, pid)
        body["system"] = self._state.system_json(snap)
        body["optimization"] = totals(self._state.optimization.workers())
        body["workers"] = self._state.workers_json(snap)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(body)


def _json_errors(req, resp, exc: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(exc.to_dict())


class MetricsSink:
    """Serves ``MetricsResource`` at whatever ``metrics_path`` is in force (runtime control can move
    it), redirects ``/`` to the dashboard (unless the metrics are there); every other unrouted path is
    404."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state
        self._resource = MetricsResource(state)

    async def __call__(self, req, resp, **_) -> None:
        if req.path == "/" and self._state.config.metrics_path != "/":
            raise falcon.HTTPFound(DASHBOARD_PATH)
        if req.path != self._state.config.metrics_path:
            raise falcon.HTTPNotFound(title="404 Not Found", description=f"no such path {req.path!r}")
        if req.method not in ("GET", "HEAD"):
            raise falcon.HTTPMethodNotAllowed(["GET", "HEAD"], title="405 Method Not Allowed")
        await self._resource.on_get(req, resp)


def create_app(state: AggregatorState, profiler: Profiler | None = None) -> BodyDeadline:
    """The app served on ``metrics_port``: metrics, views, history, the admin endpoints and the
    dashboard (whose CPU profiles ``profiler``, the pprof tree's ``Pprof``, takes)."""
    def public(path: str) -> bool:
        return is_public(path, state.config.metrics_path)

    app = falcon.asgi.App(middleware=(RateLimit(state), BearerAuth(state.config, public)))
    app.set_error_serializer(_json_errors)
    app.add_route(history_route(state.config), HistoryResource(state))
    add_views(app, state)
    add_admin(app, state)
    add_dashboard(app, state, profiler)
    app.add_sink(MetricsSink(state), prefix="/")
    return BodyDeadline(app, state)
