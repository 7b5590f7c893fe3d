"""Serves a fixed mix of requests through ``MetricsMiddleware`` by direct WSGI calls in a process attached
to a fresh segment, and prints (JSON) what landed in the slab: the test compares the C request path with
the Python one (``ROCKSTAR_PURE_PYTHON=1``) through this script.

    python -m tests.apps.paths <segment dir> [falcon | moved]

``moved``: the requests are served again after the series moved to private memory (as in a forked
child, before it claims a slab): the slab must hold the first round only.
"""
import io
import json
import sys

import falcon

from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.aggregator.workload import RingDrain
from rockstar_mp.metrics import REGISTRY, LocalStore
from rockstar_mp.segment import Geometry, Segment
from rockstar_mp.worker.accelerator import hotpath
from rockstar_mp.worker.attach import attach_worker
from rockstar_mp.worker.falcon import WorkloadMiddleware
from rockstar_mp.worker.workload import RECORDER
from rockstar_mp.worker.wsgi import MetricsMiddleware


class Item:
    def on_get(self, req, resp, item_id):
        resp.media = {"item": item_id}


class Fail:
    def on_get(self, req, resp):
        raise RuntimeError("boom")  # an app error: falcon answers 500


def plain_app(environ, start_response):
    """A WSGI app with no framework: routes are templates of the path; a generator body; errors."""
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise ValueError("the app raised before start_response")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in (b"ab", b"cde", b""))
    status = "404 Not Found" if path.startswith("/missing") else "201 Created"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


def falcon_app():
    app = falcon.App(middleware=[WorkloadMiddleware()])
    app.add_route("/items/{item_id}", Item())
    app.add_route("/fail", Fail())
    return MetricsMiddleware(app, workload=True)


REQUESTS = [  # (method, path, headers)
    ("GET", "/users/42", {}), ("GET", "/users/43", {"HTTP_X_TENANT_ID": "acme"}),
    ("POST", "/missing/1", {"HTTP_X_REQUEST_ID": "req-" + "x" * 60}), ("HEAD", "/stream", {}),
    ("BREW", "/", {"HTTP_X_TENANT_ID": "é" * 40}), ("GET", "/raise", {}), ("GET", "/stream", {}),
    ("DELETE", "/orders/0123456789abcdef0123", {"HTTP_X_TENANT_ID": "globex"}),
]
FALCON_REQUESTS = [("GET", "/items/7", {}), ("GET", "/items/8", {"HTTP_X_TENANT_ID": "acme"}),
                   ("GET", "/fail", {}), ("GET", "/nowhere", {"HTTP_X_REQUEST_ID": "abc"})]


def serve(app, requests) -> list:
    statuses = []
    for method, path, headers in requests:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, **headers}
        try:
            body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
        except ValueError:
            statuses.append("raised")
            continue
        for _chunk in body:
            pass
        body.close()
    return statuses


def main() -> None:
    segment = Segment.create(sys.argv[1], Geometry(n_slabs=2))
    slab, generation = segment.claim_slab()
    state = attach_worker(segment, slab, generation)
    if sys.argv[2:] == ["falcon"]:
        statuses = serve(falcon_app(), FALCON_REQUESTS)
    else:
        app = MetricsMiddleware(plain_app, workload=True)
        statuses = serve(app, REQUESTS)
        if sys.argv[2:] == ["moved"]:  # what the C path resolved must not be written through any more
            REGISTRY.bind(LocalStore())  # as attach's _after_fork_in_child
            RECORDER.bind(None)
            statuses += serve(app, REQUESTS)
    snap = Merger(segment).merge()
    series = {}
    for info in snap.series:
        if info.cell < 0:
            continue
        key = info.key
        if key.name == "http.request.duration.seconds":  # the bucket a duration fell in varies: counts only
            total = sum(snap.totals[info.cell + i] for i in range(len(key.extra) + 1))
            series[f"{key.name}{list(key.labelvalues)}:count"] = total
        elif key.name == "rockstar.workload.bucket":  # the bucket varies too: counts per dimension value
            name = f"workload{list(key.labelvalues[:2])}"
            series[name] = series.get(name, 0) + sum(snap.totals[info.cell:info.cell + info.n])
        elif key.name == "http.requests":
            series[f"{key.name}{list(key.labelvalues)}"] = snap.totals[info.cell]
    drain = RingDrain(segment, 100, 10)
    drain.drain()
    records = [[r.method, r.route, r.status, r.response_bytes, r.request_id, r.tenant, r.pid == state.pid,
                r.duration > 0] for r in drain.records]
    from rockstar_mp.segment.layout import Body
    inflight = Body.inflight_count.get(segment.buf, segment.geometry.slab_offset(slab))
    print(json.dumps({"c": hotpath is not None, "statuses": statuses, "series": series, "records": records,
                      "inflight": inflight, "dropped": drain.records_dropped}))


if __name__ == "__main__":
    main()
