"""The aggregator's Falcon ASGI app: ``GET {metrics_path}`` and the bearer-token check.

Every error is JSON (``{"title": ..., "description": ...}``), whatever the client accepts.
"""
from __future__ import annotations

import hashlib
import hmac
import json

import falcon
import falcon.asgi

from ..config import MonitoringConfig
from .exposition import (OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, render_json, render_openmetrics,
                         render_prometheus)
from .history import HistoryResource, history_route
from .negotiation import FORMATS, choose_format  # noqa: F401 (FORMATS: the valid ?format= values)
from .state import AggregatorState
from .views import add_views, exported_families


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class BearerAuth:
    """Falcon middleware: with ``require_auth``, every request needs ``Authorization: Bearer <token>``.

    Both sides are hashed first, so the comparison takes the same time whatever the token's length.
    """

    def __init__(self, config: MonitoringConfig) -> None:
        self._required = config.require_auth
        self._expected = _digest(config.auth_token or "")

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self._required:
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(token.strip()), self._expected):
            raise falcon.HTTPUnauthorized(
                title="401 Unauthorized",
                description="send the token as 'Authorization: Bearer <token>'",
                challenges=['Bearer realm="rockstar-mp"'])


def _only_params(req: falcon.asgi.Request, allowed: tuple) -> None:
    unknown = sorted(set(req.params) - set(allowed))
    if unknown:
        raise falcon.HTTPBadRequest(title="400 Bad Request",
                                    description=f"unknown query parameter(s) {unknown}; "
                                                f"this path takes {list(allowed)}")


def _pid_param(req: falcon.asgi.Request, state: AggregatorState):
    raw = req.get_param("pid")
    if raw is None:
        return None
    if not raw.isdigit():
        raise falcon.HTTPBadRequest(title="400 Bad Request",
                                    description=f"pid must be a positive integer, got {raw!r}")
    pid = int(raw)
    if state.snapshot().worker(pid) is None:
        raise falcon.HTTPNotFound(title="404 Not Found",
                                  description=f"no live worker with pid {pid}; see 'workers'")
    return pid


class MetricsResource:
    """``GET {metrics_path}[?format=json|prometheus|openmetrics][&pid=N]``: the merged metrics.

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
        _only_params(req, ("format", "pid"))
        try:
            fmt = choose_format(req.get_header("Accept"), req.get_param("format"))
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
        body["workers"] = self._state.workers_json(snap)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(body)


def _json_errors(req, resp, exc: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(exc.to_dict())


def create_app(state: AggregatorState) -> falcon.asgi.App:
    """The metrics app served on ``metrics_port``."""
    app = falcon.asgi.App(middleware=[BearerAuth(state.config)])
    app.set_error_serializer(_json_errors)
    app.add_route(state.config.metrics_path, MetricsResource(state))
    app.add_route(history_route(state.config), HistoryResource(state))
    add_views(app, state)
    return app
