"""Property: the ASGI middleware's C path (``_hotpath.AsgiMiddleware``) and its Python one write the same, and
count what each request must count.

Hypothesis generates batches of HTTP requests and WebSocket sessions: odd methods, paths, header lists
(repeated, non-ASCII, of odd shapes), what a router puts in the scope (a route, FastAPI's effective route, a
Mount, a mounted prefix, no match), statuses (odd ones too), streaming chunks, and apps that complete, stream
until the client is gone (``http.disconnect``, or a server ``send`` that raises), raise before or after their
response, send a body after the last, are cancelled by the server (499), or wait after their response's start
while the server closes its coroutine or drops theirs (counted as failed). Each batch runs on a real event
loop in two fresh processes attached to fresh segments (tests/apps/asgi_cases.py), one per path; the slabs
(series, records, in-flight fields) and what the server saw must be the same, and ``http.requests`` must hold
exactly the status each request must be counted with.
"""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rockstar_mp.worker.wsgi import KNOWN_METHODS, status_label
from tests.apps.asgi_cases import ROUTES
from tests.helpers import require_hotpath, run_in_both_request_paths

HTTP_APPS = ["complete", "complete", "disconnect", "raise_before", "raise_after", "no_response", "twice",
             "cancel_before", "cancel_after", "close_after", "drop_after"]
WEBSOCKET_APPS = ["ws_accept", "ws_deny", "ws_raise"]

texts = st.one_of(st.text(max_size=12), st.text(alphabet="aé€😀", min_size=10, max_size=70))
header_values = st.one_of(st.sampled_from([b"acme", b"globex", b"initech", b"", b"caf\xe9"]), st.binary(max_size=70))
header_names = st.sampled_from([b"x-tenant-id", b"x-request-id", b"host", b"x-tenant-idx"])
headers = st.one_of(st.lists(st.tuples(header_names, header_values), max_size=5),
                    st.lists(st.lists(st.sampled_from([b"x-tenant-id", b"acme"]), min_size=2, max_size=2), max_size=2))
scopes = st.fixed_dictionaries({}, optional={
    "method": st.one_of(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "BREW", "get", ""]), st.none()),
    "path": st.one_of(st.sampled_from(["/", "/items/42", "/items/43", "/orders/0123456789abcdef0123", ""]),
                      texts.map(lambda t: "/" + t), st.none()),
    "headers": headers,
    "root_path": st.sampled_from(["", "/api"]),
})
statuses = st.one_of(st.sampled_from([200, 201, 204, 301, 404, 422, 500, 503]), st.sampled_from([0, 99, 600, 999, None,
                                                                                                 "200", True]))
http_cases = st.fixed_dictionaries({
    "type": st.just("http"), "scope": scopes, "route": st.sampled_from(ROUTES), "app": st.sampled_from(HTTP_APPS),
    "status": statuses, "chunks": st.lists(st.binary(max_size=9), max_size=3),
    "fail_at": st.sampled_from([-1] * 4 + [0, 1, 2])})
websocket_cases = st.fixed_dictionaries({
    "type": st.just("websocket"), "scope": st.just({"path": "/ws"}), "route": st.just("none"),
    "app": st.sampled_from(WEBSOCKET_APPS), "status": st.just(0), "chunks": st.just([]), "fail_at": st.just(-1)})


def _http(app: str, route: str = "route", status=200, fail_at: int = -1, **scope) -> dict:
    scope = {"method": "GET", "path": "/items/42", "root_path": "", **scope}
    return {"type": "http", "scope": scope, "route": route, "app": app, "status": status, "chunks": [b"ab", b"c"],
            "fail_at": fail_at}


def _websocket(app: str) -> dict:
    return {"type": "websocket", "scope": {"path": "/ws"}, "route": "none", "app": app, "status": 0, "chunks": [],
            "fail_at": -1}


EVERY_KIND = [  # each app, route, odd status and header list at least once, whatever hypothesis draws
    *(_http(app, route) for app in HTTP_APPS for route in ROUTES[:2]),
    *(_http("complete", route) for route in ROUTES),
    *(_http("complete", status=status) for status in (0, None, "200", True, 600, 404)),
    *(_http("complete", fail_at=k) for k in (0, 1, 2, 3)), _http("disconnect", fail_at=1),
    _http("complete", headers=[(b"x-tenant-id", b"acme"), (b"x-request-id", b"r-1"), (b"x-tenant-id", b"globex")]),
    _http("complete", headers=[(b"x-tenant-id", b"caf\xe9"), (b"x-request-id", "\u20ac".encode() * 30)]),
    _http("complete", headers=[[b"x-tenant-id", b"initech"]]), _http("complete", method="BREW", path=None),
    *(_websocket(app) for app in WEBSOCKET_APPS),
]


def must_count(case: dict, outcome: list) -> tuple[str, str]:
    """The (method, status) labels ``http.requests`` must count ``case`` under, from the ASGI rules (the
    module's docstring of rockstar_mp.worker.asgi)."""
    if case["type"] == "websocket":
        return "WEBSOCKET", {"ws_accept": "101", "ws_deny": "403", "ws_raise": "500"}[case["app"]]
    method = case["scope"].get("method")
    method = method if method in KNOWN_METHODS else "other"
    started = "http.response.start" in outcome or case["fail_at"] == 0 and case["app"] not in (
        "raise_before", "no_response", "cancel_before")
    status = case["status"] if started and case["status"] else None
    if status is None:
        status = 499 if case["app"].startswith("cancel") else 500
    return method, status_label(str(status))[0]


@pytest.fixture(autouse=True)
def _the_extension():
    require_hotpath()


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(http_cases, http_cases, http_cases, websocket_cases), min_size=1, max_size=50),
       st.sampled_from([False, False, False, True]))
@example(EVERY_KIND, False)
def test_both_asgi_paths_write_the_same_and_count_what_they_must(batch, fill):
    c, pure = run_in_both_request_paths("tests.apps.asgi_cases", {"fill": fill, "cases": batch})
    assert c.pop("c") is True and pure.pop("c") is False
    assert c == pure

    expected = Counter(must_count(case, outcome) for case, outcome in zip(batch, c["outcomes"], strict=True))
    counted: Counter = Counter()
    for key, value in c["series"].items():
        if key.startswith("http.requests["):
            method, status, _ = key[len("http.requests["):-1].replace("'", "").split(", ", 2)
            counted[(method, status)] += int(value)
    if not fill:  # with the catalogue full, series go to the fallback ("other", "other")
        assert counted == expected
    assert sum(counted.values()) == len(batch)
    http = sum(case["type"] == "http" for case in batch)
    assert len(c["records"]) == http and c["inflight"] == 0 and c["dropped"] == 0


def test_the_c_base_refuses_misuse_as_the_python_path_does():
    """Made without __init__, given no dict scope, a send called wrongly: exceptions, never a crash; a
    message without a type raises KeyError in both paths."""
    from rockstar_mp.worker.accelerator import hotpath
    from rockstar_mp.worker.asgi import MetricsMiddleware, PythonMetricsMiddleware

    assert hotpath is not None
    with pytest.raises(TypeError, match="never initialised"):
        hotpath.AsgiMiddleware.__new__(hotpath.AsgiMiddleware)._begin({}, print)

    async def app(scope, receive, send):
        await send({"body": b"no type"})

    async def server_send(message):
        pass

    for middleware in (MetricsMiddleware(app, workload=False), PythonMetricsMiddleware(app, workload=False)):
        with pytest.raises(KeyError, match="type"):
            asyncio.run(middleware({"type": "http", "method": "GET", "path": "/"}, None, server_send))
    c = MetricsMiddleware(app, workload=False)
    with pytest.raises(TypeError, match="dict"):
        c._begin([("type", "http")], server_send)
    send = c._begin({"type": "http"}, server_send)
    with pytest.raises(TypeError, match="one message"):
        send()
    with pytest.raises(TypeError, match="one message"):
        send({}, {})
    send.done(500)
    send.done(500)  # a second done() does nothing
