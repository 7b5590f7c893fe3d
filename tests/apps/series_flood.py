"""A test app: a worker's requests declare new series until its catalogue refuses one, so its first
request fills the catalogue whatever share of the requests it gets, and answers ``<pid> <monitored>``
(``monitored`` is 1 when the worker writes into a slab, 0 when it runs unmonitored)."""
import os

from rockstar_mp import CatalogueFull, Counter
from rockstar_mp.worker.attach import current
from rockstar_mp.worker.wsgi import MetricsMiddleware

FLOOD = Counter("test.flood", "New series on every request, until the catalogue is full", ["n"])
MOST_SERIES = 4096  # twice what the test's catalogue holds; bounds an unmonitored worker's private series
_declared = 0


def _flood() -> None:
    global _declared
    while _declared < MOST_SERIES:
        _declared += 1
        try:
            FLOOD.labels(str(_declared)).inc()
        except CatalogueFull:
            return  # a user's metric that does not fit is refused; the request itself is still counted


def _app(environ, start_response):
    _flood()
    body = f"{os.getpid()} {int(current() is not None)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = MetricsMiddleware(_app)
