"""``GET {metrics_path}/history``: the HTTP view of the metrics history that ``history.py`` stores.

Kept apart from ``views.py``: those views answer from the state the tick already computed, while this one
reads SQLite through the history writer's thread; and ``views`` is imported by the SNMP agent, which has
no use for the history.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Optional

import falcon
import falcon.asgi

from ..config import MonitoringConfig
from . import params
from .history import HistoryWriter

PARAMS = ("name", "since", "until", "step")
DEFAULT_WINDOW = 3600.0  # the endpoint's default since = until - this


def history_route(config: MonitoringConfig) -> str:
    """``/metrics/history`` for the default ``metrics_path``."""
    return config.metrics_path.rstrip("/") + "/history"


class HistoryResource:
    """``GET {metrics_path}/history?name=N[&since=T][&until=T][&step=S]``: one series' recorded points.

    ``since``/``until`` are unix seconds (default: the hour before ``until``, and now); ``step`` (s)
    downsamples to the last point of every ``step``-second bucket. Answers
    ``{"name": N, "points": [[ts, value], ...]}`` in time order; 404 for a name never recorded.
    """

    def __init__(self, state) -> None:
        self._state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        config = self._state.config
        writer: Optional[HistoryWriter] = getattr(self._state, "history", None)
        if not config.enable_metrics:
            raise falcon.HTTPNotFound(title="404 Not Found", description="the metrics endpoint is off")
        if writer is None:
            raise falcon.HTTPNotFound(title="404 Not Found",
                                      description="the history is off (history_interval=0)")
        params.only(req, PARAMS)
        name = params.text(req, "name")
        if not name:
            raise params.bad_request("name is required: a key of the JSON metrics, e.g. 'http.requests' "
                                     "or 'http.requests{method=\"GET\",status=\"200\"}'")
        since, until = params.number(req, "since"), params.number(req, "until")
        step = params.number(req, "step", above=0.0)
        if until is None:
            until = time.time()
        if since is None:
            since = until - DEFAULT_WINDOW
        if since > until:
            raise params.bad_request(f"since ({since}) is after until ({until})")
        try:
            points = await writer.query(name, since, until, step)
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            raise falcon.HTTPServiceUnavailable(
                title="503 Service Unavailable",
                description=f"the history cannot be read: {type(exc).__name__}: {exc}") from exc
        if points is None:
            raise falcon.HTTPNotFound(title="404 Not Found",
                                      description=f"no history for {name!r}; names are the keys of the "
                                                  f"JSON metrics (a histogram has <name>.count and "
                                                  f"<name>.sum)")
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps({"name": name, "points": points})

    on_head = on_get
