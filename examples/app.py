"""The example app: a Falcon WSGI app with monitoring on (used by the README and the tests).

    gunicorn -c gunicorn_conf.py examples.app:app

Routes: ``/`` hello, ``/work?ms=N`` burns N ms of CPU, ``/sleep?ms=N`` sleeps, ``/error`` answers 500,
``/users/{name}`` greets (a route template). The WSGI ``MetricsMiddleware`` around the Falcon app counts
``http.requests`` once the response has been handed to gunicorn and records one workload record per
request (the route template, which Falcon's router names; the tenant from ``X-Tenant-ID``).
"""
import logging
import time

import falcon

from rockstar_mp.worker.wsgi import MetricsMiddleware

MAX_MS = 10_000
log = logging.getLogger("examples.app")


def _ms(req: falcon.Request) -> int:
    return req.get_param_as_int("ms", default=10, min_value=0, max_value=MAX_MS)


def burn_cpu(ms: int) -> int:
    """Spin for ``ms`` milliseconds of CPU time (the profiling tests look for this function)."""
    deadline = time.process_time() + ms / 1000.0
    n = 0
    while time.process_time() < deadline:
        n += sum(i * i for i in range(200))
    return n


class Hello:
    def on_get(self, req, resp):
        resp.media = {"hello": "rockstar-mp"}


class User:
    def on_get(self, req, resp, name):
        resp.media = {"hello": name}


class Work:
    def on_get(self, req, resp):
        ms = _ms(req)
        burn_cpu(ms)
        resp.media = {"worked_ms": ms}


class Sleep:
    def on_get(self, req, resp):
        ms = _ms(req)
        time.sleep(ms / 1000.0)
        resp.media = {"slept_ms": ms}


class Error:
    def on_get(self, req, resp):
        log.warning("the /error route was called (it always fails)")
        raise falcon.HTTPInternalServerError(title="500 Internal Server Error",
                                             description="this route always fails (by design)")


def create_app() -> falcon.App:
    """The routes, in a plain Falcon app (the benchmarks' "off" serves one as it is)."""
    api = falcon.App()
    api.add_route("/", Hello())
    api.add_route("/users/{name}", User())
    api.add_route("/work", Work())
    api.add_route("/sleep", Sleep())
    api.add_route("/error", Error())
    return api


app = MetricsMiddleware(create_app(), workload=True)
