"""A test app: every request declares 16 new series until its worker's catalogue is full, and answers
``<pid> <monitored>`` (``monitored`` is 1 when the worker writes into a slab, 0 when it runs unmonitored)."""
import itertools
import os

from rockstar_mp import CatalogueFull, Counter
from rockstar_mp.worker.attach import current
from rockstar_mp.worker.wsgi import MetricsMiddleware

FLOOD = Counter("test.flood", "One series per request, until the catalogue is full", ["n"])
_next = itertools.count()


def _app(environ, start_response):
    for _ in range(16):
        try:
            FLOOD.labels(str(next(_next))).inc()
        except CatalogueFull:
            pass  # a user's metric that does not fit is refused; the request itself is still counted
    body = f"{os.getpid()} {int(current() is not None)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = MetricsMiddleware(_app)
