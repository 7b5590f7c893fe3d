"""Request monitoring for a Django project, with Django's route templates (``/users/<int:uid>/``).

Example: first in ``settings.MIDDLEWARE``::

    MIDDLEWARE = ["rockstar_mp.integrations.django.RockstarMiddleware", ...]

and in ``wsgi.py``::

    from django.core.wsgi import get_wsgi_application
    from rockstar_mp.integrations.django import instrument

    application = instrument(get_wsgi_application())   # gunicorn -c gunicorn_conf.py project.wsgi:application

``instrument`` wraps the WSGI application in ``rockstar_mp.worker.wsgi.MetricsMiddleware`` (``http.requests``,
durations, and with ``workload=True`` one workload record per response); ``RockstarMiddleware`` names each
request's route with the pattern Django's resolver matched (``request.resolver_match.route``). Django writes
it without the leading slash its root resolver strips (``users/<int:uid>/``, and ``""`` for the root URL);
the route keeps Django's syntax and gets that slash back (``/users/<int:uid>/``, ``/``), so that routes
start with ``/`` as the paths they stand for do, and as Falcon's and Flask's do. A ``re_path`` route is its
regular expression (``/^archive/(?P<year>[0-9]{4})/$``).

A view that raises (500) keeps its route; a path no pattern matches (``Resolver404``) is ``<unmatched>``,
also when a middleware turns its 404 into something else (``CommonMiddleware``'s redirect adding a slash).
A response a middleware gives before Django resolved the URL (a 403 of an access check) is named by
resolving its path once. The raw path never becomes a route.
"""
from __future__ import annotations

from typing import Callable

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponseBase  # type: ignore[import-untyped]
from django.urls import resolve  # type: ignore[import-untyped]

from ..worker.keys import ROUTE_KEY, UNMATCHED
from ..worker.wsgi import MetricsMiddleware

__all__ = ["RockstarMiddleware", "instrument", "MIDDLEWARE_PATH"]

MIDDLEWARE_PATH = "rockstar_mp.integrations.django.RockstarMiddleware"


def instrument(application: Callable, workload: bool = True, tenant_header: str = "X-Tenant-ID") -> MetricsMiddleware:
    """``application`` (``get_wsgi_application()``) in ``MetricsMiddleware``. Raises ``ImproperlyConfigured``
    when ``RockstarMiddleware`` is not in ``settings.MIDDLEWARE`` (every route would be a path's template)."""
    if MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        raise ImproperlyConfigured(f"rockstar-mp names Django's routes with a middleware: put {MIDDLEWARE_PATH!r} "
                                   "first in settings.MIDDLEWARE")
    return MetricsMiddleware(application, workload=workload, tenant_header=tenant_header)


class RockstarMiddleware:
    """Puts the route of each request in its WSGI environ, where ``MetricsMiddleware`` records it. First in
    ``MIDDLEWARE``, so that it sees every response, also those other middlewares answer."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None:
            route = "/" + match.route
        else:
            route = UNMATCHED if response.status_code == 404 else _resolved_route(request)
        request.META[ROUTE_KEY] = route
        return response


def _resolved_route(request: HttpRequest) -> str:
    """The route of a request answered before Django resolved its URL (an earlier middleware's answer, or
    a redirect replacing a 404)."""
    try:
        return "/" + resolve(request.path_info, getattr(request, "urlconf", None)).route
    except Exception:  # noqa: BLE001 - Resolver404, or a URLconf that failed the request: no reason to fail it again
        return UNMATCHED
