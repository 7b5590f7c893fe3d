"""The routes the Flask and Django integrations name, in process, for the requests the served tests
(``tests/test_integrations.py``) do not make: answered early by a hook or a middleware, failed before
routing, redirected by the router, ``re_path`` patterns, and a project missing the middleware."""
from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder

from rockstar_mp.worker.keys import ROUTE_KEY, UNMATCHED
from tests.test_imports import modules_loaded_by


def test_the_integrations_package_imports_no_framework():
    loaded = modules_loaded_by("import rockstar_mp, rockstar_mp.integrations")
    assert not {"flask", "django", "werkzeug"} & {name.split(".")[0] for name in loaded}


def serve(app, method: str, path: str) -> tuple[int, str]:
    """``(status, route)`` of one request through the WSGI ``app``."""
    environ = EnvironBuilder(path=path, method=method, headers={"Host": "127.0.0.1"}).get_environ()
    started: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return int(started[0][:3]), environ.get(ROUTE_KEY)


# -- Flask --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flask_app():
    from flask import Flask, abort
    from flask.sessions import SecureCookieSessionInterface

    from rockstar_mp.integrations.flask import instrument

    class BrokenSessions(SecureCookieSessionInterface):
        def open_session(self, app, request):
            if request.path.startswith("/broken-session/"):
                raise OSError("the session store is down")
            return super().open_session(app, request)

    app = Flask(__name__)
    app.session_interface = BrokenSessions()
    app.logger.disabled = True  # the deliberate failures' tracebacks

    @app.before_request
    def private_needs_a_login():
        from flask import request
        if request.path.startswith("/private/"):
            abort(401)

    app.add_url_rule("/private/<int:pk>", "private", lambda pk: "secret")
    app.add_url_rule("/users/<name>/", "user", lambda name: name)
    return instrument(app)


@pytest.mark.parametrize(("method", "path", "status", "route"), [
    ("GET", "/private/7", 401, "/private/<int:pk>"),  # a before_request answered before the view
    ("GET", "/broken-session/7", 500, UNMATCHED),  # failed before routing
    ("GET", "/users/alice", 308, UNMATCHED),  # the router's redirect adding the slash
    ("DELETE", "/users/alice/", 405, "/users/<name>/"),
    ("GET", "/users/alice/", 200, "/users/<name>/"),
])
def test_flask_routes(flask_app, method, path, status, route):
    assert serve(flask_app, method, path) == (status, route)


# -- Django -------------------------------------------------------------------------------------------
class ForbidPrivate:
    """A middleware that answers before Django resolves the URL (an access check)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.http import HttpResponseForbidden
        return HttpResponseForbidden() if request.path.startswith("/private/") else self.get_response(request)


def _ok(request, **kwargs):
    from django.http import HttpResponse
    return HttpResponse("ok")


def _urlpatterns():
    from django.urls import path, re_path
    return [path("users/<slug:name>/", _ok), path("private/<int:pk>/", _ok),
            re_path(r"^archive/(?P<year>[0-9]{4})/$", _ok)]


@pytest.fixture(scope="module")
def django_application():
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    from rockstar_mp.integrations.django import MIDDLEWARE_PATH, instrument

    if not settings.configured:  # this process's only Django project
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__,
                           MIDDLEWARE=[MIDDLEWARE_PATH, f"{__name__}.ForbidPrivate",
                                       "django.middleware.common.CommonMiddleware"],
                           INSTALLED_APPS=[], DATABASES={})
        django.setup()
    return instrument(get_wsgi_application())


def __getattr__(name: str):  # ROOT_URLCONF: Django reads urlpatterns once, after setup
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


@pytest.mark.parametrize(("path", "status", "route"), [
    ("/users/alice/", 200, "/users/<slug:name>/"),
    ("/private/7/", 403, "/private/<int:pk>/"),  # answered by a middleware before Django resolved it
    ("/private/x/", 403, UNMATCHED),
    ("/users/alice", 301, UNMATCHED),  # CommonMiddleware's redirect adding the slash
    ("/nope/", 404, UNMATCHED),
    ("/archive/2024/", 200, "/^archive/(?P<year>[0-9]{4})/$"),
])
def test_django_routes(django_application, path, status, route):
    assert serve(django_application, "GET", path) == (status, route)


def test_django_instrument_refuses_a_project_without_the_middleware(django_application):
    from django.core.exceptions import ImproperlyConfigured
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    from rockstar_mp.integrations.django import instrument

    with override_settings(MIDDLEWARE=[]), pytest.raises(ImproperlyConfigured, match="RockstarMiddleware"):
        instrument(get_wsgi_application())
