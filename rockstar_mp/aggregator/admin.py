"""Admin endpoints (``/optimize``, ``/control``) and the protection of every endpoint.

Admin endpoints always need a token, even when reading is open (``require_auth=False``): the
``admin_token``, or the ``auth_token`` when no admin token is set. Only ``admin_open=True`` opens them
without one. A token is only ever read from the ``Authorization`` header, never the query string (URLs
end up in logs).

Every endpoint is rate limited per token, else per address (a token bucket: ``rate_limit`` requests a second,
bursts of ``rate_limit_burst``; 429 with ``Retry-After``), request bodies are capped at
``max_request_bytes`` and must arrive within ``request_timeout`` seconds (``BodyDeadline``: a body
announced and never begun, on any endpoint; ``read_json_body``: one begun and left unfinished).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from collections import OrderedDict
from typing import Awaitable, Callable

import falcon
import falcon.asgi

from ..config import MonitoringConfig
from ..control import CONTROLLABLE, request_optimization, totals, write_overrides
from ..segment.layout import Header
from . import params
from .state import AggregatorState

TOKEN_PARAMS = ("token", "access_token", "auth_token", "bearer")
MAX_CLIENTS = 10_000
INTERVALS = ("optimization_interval",)  # the controllable settings in seconds
MIN_INTERVAL = 0.001  # seconds


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(req) -> str | None:
    scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time: both sides are hashed first, so the time does not depend on the length."""
    return bool(given is not None and expected and hmac.compare_digest(_digest(given), _digest(expected)))


def require_admin(req, config: MonitoringConfig) -> None:
    refuse_token_in_query(req)
    expected = config.admin_token or config.auth_token
    if config.admin_open and not expected:
        return
    if not expected:
        raise falcon.HTTPUnauthorized(
            title="401 Unauthorized", challenges=['Bearer realm="rockstar-mp admin"'],
            description="admin endpoints need a token: set admin_token (or auth_token), or admin_open=True")
    if not token_matches(bearer_token(req), expected):
        raise falcon.HTTPUnauthorized(title="401 Unauthorized",
                                      description="send the admin token as 'Authorization: Bearer <token>'",
                                      challenges=['Bearer realm="rockstar-mp admin"'])


def refuse_token_in_query(req) -> None:
    if any(name in req.params for name in TOKEN_PARAMS):
        raise falcon.HTTPBadRequest(title="400 Bad Request",
                                    description="a token is never accepted in the URL: send "
                                                "'Authorization: Bearer <token>'")


class RateLimit:
    """Falcon middleware: a token bucket per client, before the token check and any rendering.

    A request carrying a valid token (``auth_token`` or ``admin_token``) draws on that token's own
    bucket; any other (no token, a wrong one) on its address's. So an authenticated scraper keeps its
    budget whatever floods its address (127.0.0.1 shared with everything local), while token guesses
    are limited per address."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state
        self._buckets: OrderedDict[str, list] = OrderedDict()  # address -> [tokens, last time]
        self._token_buckets: dict[bytes, list] = {}  # digest of a valid token -> [tokens, last time]

    async def process_request(self, req, resp) -> None:
        config = self._state.config
        if config.rate_limit <= 0:
            return
        token = _valid_token(req, config)
        if token is not None:
            bucket = self._token_buckets.setdefault(token, [float(config.rate_limit_burst), time.monotonic()])
            client = "this token"
        else:
            client = req.remote_addr or "?"
            bucket = self._address_bucket(client, config)
        _take(bucket, config, client)

    def _address_bucket(self, client: str, config: MonitoringConfig) -> list:
        bucket = self._buckets.pop(client, None) or [float(config.rate_limit_burst), time.monotonic()]
        self._buckets[client] = bucket  # most recently seen last
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return bucket


def _valid_token(req, config: MonitoringConfig) -> bytes | None:
    """The digest of the request's bearer token if it is one of ours, else None."""
    given = bearer_token(req)
    if given is None:
        return None
    tokens = [t for t in (config.auth_token, config.admin_token) if t]
    matches = [t for t in tokens if token_matches(given, t)]  # every one compared: no short cut
    return _digest(matches[0]) if matches else None


def _take(bucket: list, config: MonitoringConfig, client: str) -> None:
    """Take one token from ``bucket`` (refilled at ``rate_limit`` a second), or raise 429."""
    now = time.monotonic()
    tokens = min(config.rate_limit_burst, bucket[0] + (now - bucket[1]) * config.rate_limit)
    bucket[1] = now
    if tokens < 1:
        bucket[0] = tokens
        retry = max(1, math.ceil((1 - tokens) / config.rate_limit))
        raise falcon.HTTPTooManyRequests(title="429 Too Many Requests", retry_after=retry,
                                         description=f"more than {config.rate_limit:g} requests a "
                                                     f"second from {client}; retry in {retry} s")
    bucket[0] = tokens - 1


ErrorBody = Callable[[str, str], tuple]  # (title, description) -> (content type, body bytes, extra headers)


def json_error_body(title: str, description: str) -> tuple:
    return falcon.MEDIA_JSON, json.dumps({"title": title, "description": description}).encode(), []


class BodyDeadline:
    """ASGI wrapper of an app: a request's body must begin within ``request_timeout`` seconds, or the
    client gets 408 and the connection is closed.

    Falcon waits for the first chunk of the body before it even routes a request, so without this a
    client announcing a body (``Content-Length: 10``) and never sending it would hold its request, and
    its connection, for ever, on every endpoint.
    """

    def __init__(self, app, state: AggregatorState, error_body: ErrorBody = json_error_body) -> None:
        self.app = app
        self._state = state
        self._error_body = error_body

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timeout = self._state.config.request_timeout
        try:
            first = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            await self._timed_out(send, timeout)
            return
        replayed = False

        async def receive_again() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, receive_again, send)

    async def _timed_out(self, send, timeout: float) -> None:
        content_type, body, headers = self._error_body(
            "408 Request Timeout", f"the body must arrive within {timeout:g} s")
        await send({"type": "http.response.start", "status": 408,
                    "headers": [(b"content-type", content_type.encode()), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode()),
                                *((k.encode(), v.encode()) for k, v in headers)]})
        await send({"type": "http.response.body", "body": body})


async def read_json_body(req, config: MonitoringConfig) -> dict:
    """The request's body as a JSON object: 413 past ``max_request_bytes``, 408 when it has not
    arrived within ``request_timeout``, 400 for anything but a UTF-8 JSON object (``NaN``,
    ``Infinity``, lone surrogates and nesting too deep to parse included)."""
    if req.content_length and req.content_length > config.max_request_bytes:
        raise falcon.HTTPPayloadTooLarge(title="413 Payload Too Large",
                                         description=f"at most {config.max_request_bytes} bytes")
    try:
        raw = await asyncio.wait_for(req.stream.read(config.max_request_bytes + 1), config.request_timeout)
    except asyncio.TimeoutError:
        # Falcon 4 has no class for 408; the connection is closed, as the rest of the body may yet come
        raise falcon.HTTPError(falcon.HTTP_408, title="408 Request Timeout", headers={"Connection": "close"},
                               description=f"the body must arrive within {config.request_timeout:g} s"
                               ) from None
    if len(raw) > config.max_request_bytes:
        raise falcon.HTTPPayloadTooLarge(title="413 Payload Too Large",
                                         description=f"at most {config.max_request_bytes} bytes")
    return _json_object(raw or b"{}")


def _json_object(raw: bytes) -> dict:
    """``raw`` parsed: a JSON object whose every string is valid UTF-8, else 400 saying why."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
        json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") cannot be encoded
    except RecursionError:
        raise _bad_body("nested too deeply") from None
    except ValueError as exc:  # UnicodeError included
        raise _bad_body(str(exc)) from None
    if not isinstance(data, dict):
        raise _bad_body(f"got {type(data).__name__}")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _bad_body(why: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="400 Bad Request",
                                 description=f"the body must be a JSON object: {why}")


def _check_control_values(changes: dict) -> None:
    """Numbers must be finite floats (``10**400`` and ``1e999`` are not), and an interval at least
    ``MIN_INTERVAL``, before the config sees them (it takes any positive interval, and the
    optimization schedule overflows on a denormal one)."""
    for name, value in changes.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # the config refuses a wrong type
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise falcon.HTTPBadRequest(title="400 Bad Request",
                                        description=f"{params.shown(str(name))} must be a finite number")
        if name in INTERVALS and number < MIN_INTERVAL:
            raise falcon.HTTPBadRequest(title="400 Bad Request",
                                        description=f"{name} must be at least {MIN_INTERVAL:g} s, got {value!r}")


def _send(resp, body: dict, status=falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(body)


class OptimizeResource:
    """``POST /optimize[?pid=N]``: every live worker (or one) collects garbage now. ``202`` with the pids
    asked; ``GET /optimize/stats`` shows the results."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_post(self, req, resp) -> None:
        require_admin(req, self._state.config)
        params.only(req, ("pid",))
        pid = params.integer(req, "pid", minimum=1)
        asked = request_optimization(self._state.segment, None if pid is None else {pid})
        if pid is not None and not asked:
            raise falcon.HTTPNotFound(title="404 Not Found", description=f"no live worker with pid {pid}")
        _send(resp, {"requested": asked}, falcon.HTTP_202)


class OptimizeStatsResource:
    """``GET /optimize/stats``: the spec's OptimizationStats per worker and summed (RSS, USS and PSS before
    and after), the recent events, the low-traffic deferral and the memory recycles."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        refuse_token_in_query(req)
        params.only(req, ())
        state = self._state
        workers = state.optimization.workers()
        _send(resp, {"workers": [w.to_json() for w in workers], "total": totals(workers),
                     "recent": list(state.optimization.events), "deferral": state.optimization.deferral.to_json(),
                     "memory_recycles": Header.memory_recycles.get(state.segment.buf)})

    on_head = on_get


class ControlResource:
    """``GET /control``: the controllable settings in force. ``POST /control`` with a JSON object of
    changes, e.g. ``{"enable_pprof": true, "pprof_path": "/debug/pprof"}``; kept in the segment."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        require_admin(req, self._state.config)
        params.only(req, ())
        _send(resp, {name: getattr(self._state.config, name) for name in CONTROLLABLE})

    on_head = on_get

    async def on_post(self, req, resp) -> None:
        state = self._state
        require_admin(req, state.config)
        params.only(req, ())
        changes = await read_json_body(req, state.config)
        _check_control_values(changes)
        try:
            config = write_overrides(state.segment, state.base_config, changes)
        except (ValueError, TypeError) as exc:
            raise falcon.HTTPBadRequest(title="400 Bad Request", description=str(exc)) from exc
        state.apply_control()  # at once, not on the next tick
        _send(resp, {name: getattr(config, name) for name in CONTROLLABLE})


def add_admin(app: falcon.asgi.App, state: AggregatorState) -> None:
    app.add_route("/optimize", OptimizeResource(state))
    app.add_route("/optimize/stats", OptimizeStatsResource(state))
    app.add_route("/control", ControlResource(state))
