"""A test app whose first request declares series of its own until its worker's catalogue is full; every
request then answers the status its query asks for (``/?status=418``), through
``MetricsMiddleware(workload=True)``: the request path must count every response all the same."""
from urllib.parse import parse_qs

from rockstar_mp import CatalogueFull, Counter
from rockstar_mp.worker.wsgi import MetricsMiddleware

FILLER = Counter("test.filler", "Declared until the catalogue is full", ["n"])
MAX_FILL = 100_000  # far more than any test's slab holds: a catalogue that never refuses is a failure
_filled = []


def _fill_catalogue() -> None:
    if _filled:
        return
    _filled.append(True)
    for n in range(MAX_FILL):
        try:
            FILLER.labels(str(n))
        except CatalogueFull:
            return  # the app's own metric is refused, as it should be


def _app(environ, start_response):
    _fill_catalogue()
    status = int(parse_qs(environ.get("QUERY_STRING", "")).get("status", ["200"])[0])
    start_response(f"{status} Status {status}", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


app = MetricsMiddleware(_app, workload=True)
