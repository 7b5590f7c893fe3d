"""A Falcon app for ``gunicorn -k gevent`` (tests/test_gevent.py): ``/hot?ms=N`` burns CPU in one
plain loop (``hot_loop``: the flat top of a CPU profile), ``/park?ms=N`` parks its greenlet in a
cooperative sleep (``parked``: time.sleep is gevent's in the worker), ``/alloc`` retains 32 KiB at
``allocation_site``, ``/`` says hello."""
import collections
import time

import falcon

from rockstar_mp.worker.falcon import WorkloadMiddleware
from rockstar_mp.worker.wsgi import MetricsMiddleware

RETAINED: collections.deque = collections.deque(maxlen=200)


def hot_loop(ms: int) -> int:
    """Spin for ``ms`` ms of CPU time without calling anything that takes time itself."""
    deadline = time.process_time() + ms / 1000.0
    n = 0
    while n % 1000 or time.process_time() < deadline:
        n += 1
    return n


def parked(ms: int) -> None:
    time.sleep(ms / 1000.0)


def allocation_site(size: int) -> None:
    RETAINED.append(bytearray(size))


def _ms(req: falcon.Request) -> int:
    return req.get_param_as_int("ms", default=10, min_value=0, max_value=10_000)


class Hot:
    def on_get(self, req, resp):
        resp.media = {"loops": hot_loop(_ms(req))}


class Park:
    def on_get(self, req, resp):
        parked(_ms(req))
        resp.media = {"parked_ms": _ms(req)}


class Alloc:
    def on_get(self, req, resp):
        allocation_site(32 * 1024)
        resp.media = {"retained": len(RETAINED)}


class Hello:
    def on_get(self, req, resp):
        resp.media = {"hello": "gevent"}


api = falcon.App(middleware=[WorkloadMiddleware(wsgi_layer=True)])
api.add_route("/", Hello())
api.add_route("/hot", Hot())
api.add_route("/park", Park())
api.add_route("/alloc", Alloc())
app = MetricsMiddleware(api, workload=True)
