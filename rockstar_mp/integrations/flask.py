"""Request monitoring for a Flask app, with Flask's route templates (``/users/<int:uid>``).

Example::

    from flask import Flask
    from rockstar_mp.integrations.flask import instrument

    app = Flask(__name__)

    @app.get("/users/<int:uid>")
    def user(uid):
        ...

    instrument(app)      # then: gunicorn -c gunicorn_conf.py module:app

``instrument`` wraps ``app.wsgi_app`` in ``rockstar_mp.worker.wsgi.MetricsMiddleware`` (``http.requests``,
durations, and with ``workload=True`` one workload record per response), and names each request's route
with the rule Flask's router matched: a view that raises (500) keeps its route, a path no rule matches
(404, or a redirect Flask's router gives, such as the one adding a trailing slash) is ``<unmatched>``,
and a 405 gets the rule of its path. The raw path never becomes a route.

The hook is Flask's ``request_started`` signal: it is sent once routing is done and before any
``before_request`` function, so a ``before_request`` that answers early (a 401) cannot skip it; it costs
what a ``before_request`` function does (about 1.5 us), where ``url_value_preprocessor`` costs more (Flask
computes the endpoint and view arguments to call it). ``got_request_exception`` names the rare request that
failed before routing (the session could not be opened).
"""
from __future__ import annotations

from typing import Any

import flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..worker.keys import ROUTE_KEY, UNMATCHED
from ..worker.wsgi import MetricsMiddleware

__all__ = ["instrument"]


def instrument(app: flask.Flask, workload: bool = True, tenant_header: str = "X-Tenant-ID") -> flask.Flask:
    """Monitor ``app``'s requests (see the module's docstring); returns ``app``. ``tenant_header``: the
    request header whose value is the tenant of a workload record."""
    flask.request_started.connect(_name_route, app, weak=False)
    flask.got_request_exception.connect(_name_unrouted, app, weak=False)
    app.wsgi_app = MetricsMiddleware(app.wsgi_app, workload=workload,  # type: ignore[method-assign]
                                     tenant_header=tenant_header)
    return app


def _name_route(app: flask.Flask, **_: Any) -> None:
    request = flask.request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not one per use
    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else _unrouted(app, request)


def _name_unrouted(app: flask.Flask, **_: Any) -> None:
    request = flask.request._get_current_object()  # type: ignore[attr-defined]
    if ROUTE_KEY not in request.environ:  # failed before request_started was sent
        request.environ[ROUTE_KEY] = UNMATCHED


def _unrouted(app: flask.Flask, request: flask.Request) -> str:
    """The route of a request Flask's router matched to no rule: the rule of its path for a 405 (the
    router only said which methods the path takes), else ``<unmatched>``."""
    refused = request.routing_exception
    allowed = list(refused.valid_methods or ()) if isinstance(refused, MethodNotAllowed) else []
    adapter = app.create_url_adapter(request) if allowed else None
    if adapter is not None:
        try:
            rule, _ = adapter.match(method=allowed[0], return_rule=True)
            return rule.rule
        except HTTPException:
            pass
    return UNMATCHED
