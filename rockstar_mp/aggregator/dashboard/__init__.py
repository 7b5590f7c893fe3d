"""The live dashboard: ``GET /dashboard`` on the metrics port, an operator's page over the JSON views.

The page and its two assets (``static/``, package data) hold no data, so they are served without a
token; everything they show comes from the endpoints the page then calls with
``Authorization: Bearer <token>`` (typed once into the page, kept in ``sessionStorage``): ``/workload``,
``/workers``, ``/logs``, ``/optimize/stats``, ``{metrics_path}`` and its ``/history``, the admin
``/optimize`` and ``/control``, and ``/dashboard/profile`` (below). The page loads nothing from
anywhere else, and says so in its Content-Security-Policy.

``GET /dashboard/profile?seconds=N``: a CPU profile of every live worker, merged, as JSON (the top
functions and a flame graph tree, ``profile_json``) with the profile.proto bytes for ``go tool pprof``
(``pprof_gz``, base64). Needs ``enable_pprof``, like the ``/debug/pprof`` tree.

Example::

    curl -H "Authorization: Bearer $TOKEN" 'http://127.0.0.1:9090/dashboard/profile?seconds=10'
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Protocol

import falcon
import falcon.asgi

from ...profiling.proto import encode, merge_raw
from .. import params
from ..state import AggregatorState
from .profile_json import profile_json

PATH = "/dashboard"
# the page, and what it loads: (file in static/, content type)
ASSETS = {PATH: ("dashboard.html", "text/html; charset=utf-8"),
          PATH + "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          PATH + "/app.css": ("app.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DEFAULT_PROFILE_SECONDS = 10.0
STATIC = Path(__file__).with_name("static")


class Profiler(Protocol):
    """What the profile endpoint needs of ``pprof.Pprof`` (kept apart: ``pprof`` imports ``http``)."""

    async def collect(self, kind: str, seconds: float | None, pids: list[int], single: bool = False,
                      gc: bool = False, internal: bool = False) -> tuple[list[dict], list[int], tuple[str, ...]]: ...

    def live_pids(self) -> list[int]: ...


def is_public(path: str, metrics_path: str) -> bool:
    """The paths served without a token: the page, its assets, and ``/`` (a redirect to the page)
    unless the metrics are served there."""
    return path in ASSETS or (path == "/" and metrics_path != "/")


def _security_headers(resp: falcon.asgi.Response) -> None:
    resp.set_header("Content-Security-Policy", CSP)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")
    resp.set_header("X-Frame-Options", "DENY")


def _read_static() -> dict[str, bytes]:
    return {filename: (STATIC / filename).read_bytes() for filename, _ in ASSETS.values()}


# read at import, while the aggregator still has the privileges it started with: after it drops them
# (aggregator_user) the package's files, and the stdlib modules importlib.resources would load, may be
# out of its reach
STATIC_FILES = _read_static()


class Asset:
    """One file of ``static/``; ``ETag`` and ``Cache-Control: no-cache`` so a reload costs a 304."""

    def __init__(self, filename: str, content_type: str) -> None:
        self._data = STATIC_FILES[filename]
        self._etag = '"' + hashlib.sha256(self._data).hexdigest()[:32] + '"'
        self._content_type = content_type

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        params.only(req, ())
        _security_headers(resp)
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("ETag", self._etag)
        if self._etag in (req.get_header("If-None-Match") or ""):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = self._content_type
        resp.data = self._data

    on_head = on_get


class ProfileResource:
    """``GET /dashboard/profile[?seconds=N]``: a merged CPU profile as JSON (see the module)."""

    def __init__(self, state: AggregatorState, profiler: Profiler | None) -> None:
        self._state = state
        self._profiler = profiler

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        config = self._state.config
        params.only(req, ("seconds",))
        if self._profiler is None or not config.enable_pprof:
            raise falcon.HTTPNotFound(title="404 Not Found",
                                      description="profiling is off: turn enable_pprof on (Control)")
        seconds = params.number(req, "seconds", min(DEFAULT_PROFILE_SECONDS, config.pprof_max_seconds),
                                above=0.0, maximum=config.pprof_max_seconds)
        pids = self._profiler.live_pids()
        if not pids:
            raise falcon.HTTPServiceUnavailable(title="503 Service Unavailable", description="no live workers")
        try:
            results, missing, _comments = await self._profiler.collect("profile", seconds, pids)
        except falcon.HTTPError as exc:  # the pprof tree's errors, as JSON here
            raise falcon.HTTPError(exc.status, title=str(exc.status), description=exc.description) from None
        body = await asyncio.to_thread(_render, [r["raw"] for r in results])
        body.update(seconds=seconds, workers=sorted(set(pids) - set(missing)), missing=missing)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(body)


def _render(raws: list[dict]) -> dict:
    merged = merge_raw(raws)
    body = profile_json(merged)
    body["pprof_gz"] = base64.b64encode(encode(merged)).decode()
    return body


def add_dashboard(app: falcon.asgi.App, state: AggregatorState, profiler: Profiler | None = None) -> None:
    """Route the page, its assets and the profile endpoint."""
    for path, (filename, content_type) in ASSETS.items():
        app.add_route(path, Asset(filename, content_type))
    app.add_route(PATH + "/profile", ProfileResource(state, profiler))
