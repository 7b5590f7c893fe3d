"""Falcon's route templates from its own router (``rockstar_mp.worker.falcon.capture_routes``), in C and in
Python: what a request records as its route, through a real ``falcon.App`` wrapped in ``MetricsMiddleware``."""
from __future__ import annotations

import io
import sys

import falcon
import pytest

from rockstar_mp.worker import falcon as falcon_routes
from rockstar_mp.worker.accelerator import hotpath
from rockstar_mp.worker.keys import ROUTE_KEY, UNMATCHED
from rockstar_mp.worker.wsgi import MetricsMiddleware

CAPTURES = [falcon_routes.RouteCapture] + ([hotpath.RouteCapture] if hotpath is not None else [])


class Hello:
    def on_get(self, req, resp, **params):
        resp.media = params


def sink(req, resp, **kwargs):
    resp.text = "sunk"


def environ(path: str) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "x",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}


def served_route(app, path: str) -> tuple[str, str | None]:
    env = environ(path)
    statuses = []
    body = app(env, lambda status, headers, exc_info=None: statuses.append(status))
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return statuses[0], env.get(ROUTE_KEY)


@pytest.mark.parametrize("capture", CAPTURES)
def test_the_router_names_each_route_as_falcon_writes_it(capture):
    app = falcon.App()
    app.add_route("/users/{name}", Hello())
    app.add_route("/orders/{oid:int}/items", Hello())
    app.add_sink(sink, "/sink")
    app._router_search = capture(app._router_search)
    assert served_route(app, "/users/alice") == ("200 OK", "/users/{name}")
    assert served_route(app, "/orders/7/items") == ("200 OK", "/orders/{oid:int}/items")
    assert served_route(app, "/scanner/wp-login.php") == ("404 Not Found", UNMATCHED)
    assert served_route(app, "/sink/anything") == ("200 OK", UNMATCHED)  # no route: one value for every path


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_router_without_templates_or_a_call_without_req_is_passed_through(capture):
    found = (Hello(), {}, {})  # an old router's 3-tuple: nothing to name
    calls = []

    def find(path, req=None):
        calls.append((path, req))
        return found

    class Req:
        env: dict = {}

    search = capture(find)
    assert search("/x", req=Req()) is found and Req.env == {}
    assert search("/y") is found and calls[-1] == ("/y", None)


def test_metrics_middleware_captures_a_falcon_apps_routes_once_and_no_other_apps():
    app = falcon.App()
    app.add_route("/users/{name}", Hello())
    MetricsMiddleware(app, workload=True)
    first = app._router_search
    MetricsMiddleware(app, workload=True)  # wrapped again: not captured twice
    assert app._router_search is first and isinstance(first, falcon_routes._CAPTURES)
    plain = falcon.App()
    MetricsMiddleware(plain, workload=False)  # no records, nothing to name
    assert not isinstance(plain._router_search, falcon_routes._CAPTURES)
    assert not falcon_routes.is_falcon_app(lambda environ, start_response: [])
