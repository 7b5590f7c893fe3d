"""Serves generated requests through ``MetricsMiddleware(workload=True)`` by direct WSGI calls, in a process
attached to a fresh segment, and prints (JSON) what the server saw and what landed in the slab. The
property test (tests/test_request_paths_agree.py) runs it once with the C request path and once with the
Python one (``ROCKSTAR_PURE_PYTHON=1``) on the same cases, and compares.

    python -m tests.apps.request_cases <segment dir> <cases file>

The cases file holds ``repr`` of ``{"fill": bool, "cases": [case, ...]}``; a case is a dict: ``environ``
(the keys given, values of any kind), ``app`` (what the app does, ``APPS``), ``status``, ``chunks``,
``raise_at``, ``server`` (what the server does with the body, ``SERVERS``).
"""
import ast
import gc
import io
import json
import sys
from wsgiref.util import FileWrapper

from rockstar_mp import CatalogueFull, Counter
from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.aggregator.workload import RingDrain
from rockstar_mp.config import MonitoringConfig
from rockstar_mp.segment import Geometry, Segment
from rockstar_mp.segment.layout import Body
from rockstar_mp.worker.accelerator import hotpath
from rockstar_mp.worker.attach import attach_worker
from rockstar_mp.worker.wsgi import MetricsMiddleware

LIMITS = MonitoringConfig(max_routes=3, max_tenants=3)  # small, so that values overflow into "other"
FILLER = Counter("test.filler", "Declared until the catalogue is full", ["n"])


class AppError(Exception):
    pass


class ClosingIterator:
    """A response iterable with close() (as a file wrapper or a framework's streaming body)."""

    def __init__(self, chunks, fail_close=False):
        self._chunks = iter(chunks)
        self._fail_close = fail_close

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)

    def close(self):
        if self._fail_close:
            raise AppError("close() failed")


def _raising(chunks, at):
    yield from chunks[:at]
    raise AppError("the body failed while iterating")


def _lazy(start, status, chunks):
    start(status, [])  # start_response from inside the body, as WSGI allows before the first chunk
    yield from chunks


def _file(chunks) -> FileWrapper:
    return FileWrapper(io.BytesIO(b"".join(c for c in chunks if isinstance(c, bytes))), 3)


def _started(body):
    """An app that calls start_response, then returns ``body(case)``."""
    def app(start, case):
        start(case["status"], [])
        return body(case)
    return app


def _raise_before(start, case):
    raise AppError("before start_response")


def _raise_after(start, case):
    start(case["status"], [])
    raise AppError("after start_response")


def _twice(start, case):
    start("200 OK", [])
    start(case["status"], [], None)  # as after an error, with exc_info: the last status stands
    return list(case["chunks"])


APPS = {
    "list": _started(lambda case: list(case["chunks"])),
    "generator": _started(lambda case: (c for c in case["chunks"])),
    "closing": _started(lambda case: ClosingIterator(case["chunks"])),
    "close_fails": _started(lambda case: ClosingIterator(case["chunks"], fail_close=True)),
    "file": _started(lambda case: _file(case["chunks"])),
    "empty": _started(lambda case: []),
    "iter_raises": _started(lambda case: _raising(case["chunks"], case["raise_at"])),
    "lazy": lambda start, case: _lazy(start, case["status"], case["chunks"]),
    "no_start_response": lambda start, case: list(case["chunks"]),
    "raise_before": _raise_before,
    "raise_after": _raise_after,
    "twice": _twice,
}
CURRENT: dict = {}


def dispatch(environ, start_response):
    """The app under the middleware: does what the current case says."""
    case = CURRENT["case"]
    return APPS[case["app"]](start_response, case)


def _attempt(outcome: list, what: str, action):
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - what is raised is part of the outcome compared
        outcome.append(f"{what}: {type(exc).__name__}")
        return None


def _serve_body(body, server: str, outcome: list) -> None:
    if server == "drop":
        return
    if server in ("exhaust", "exhaust_only"):
        chunks = _attempt(outcome, "iterating", lambda: list(body))
        outcome.append(f"got {chunks!r}")
    elif server == "partial":
        outcome.append(f"got {_attempt(outcome, 'iterating', lambda: next(iter(body), None))!r}")
    if server != "exhaust_only" and hasattr(body, "close"):
        _attempt(outcome, "close", body.close)


def serve(app, case: dict) -> list:
    """One request as a WSGI server makes it; what the server saw (statuses, chunks, exceptions)."""
    outcome: list = []

    def start_response(status, headers, exc_info=None):
        outcome.append(f"status {status!r}")

    CURRENT["case"] = case
    body = _attempt(outcome, "call", lambda: app(dict(case["environ"]), start_response))
    if body is not None:
        _serve_body(body, case["server"], outcome)
    del body
    gc.collect()  # a dropped body goes now (the C path ends it in flight on deallocation)
    return outcome


def _fill_catalogue() -> None:
    n = 0
    while True:
        try:
            FILLER.labels(str(n))
        except CatalogueFull:
            return
        n += 1


def slab_summary(segment: Segment, slab: int, pid: int, filled: bool) -> dict:
    snap = Merger(segment).merge()
    series: dict = {}
    for info in snap.series:
        key = info.key
        if info.cell < 0 or key.name == "test.filler" or key.name.startswith("rockstar.gc."):  # not the request path's
            continue
        value = snap.totals[info.cell]
        if key.name == "http.request.duration.seconds":  # the bucket a duration fell in varies: counts only
            value = sum(snap.totals[info.cell + i] for i in range(len(key.extra) + 1))
            name = f"{key.name}{list(key.labelvalues)}:count"
        elif key.name == "rockstar.workload.bucket":  # so does the bucket: counts per dimension value
            value = sum(snap.totals[info.cell:info.cell + info.n])  # a block of buckets
            name = f"workload{list(key.labelvalues[:2])}"
        elif key.name == "rockstar.workload.seconds":
            continue
        elif key.name == "rockstar.workload.overflow" and filled and key.labelvalues == ("bucket",):
            continue  # with the catalogue full, which requests find no bucket of their own varies too
        else:
            name = f"{key.name}{list(key.labelvalues)}"
        series[name] = series.get(name, 0) + value
    series = {k: v for k, v in sorted(series.items()) if v}
    drain = RingDrain(segment, 10_000, 10)
    drain.drain()
    # the record's text fields as stored (a reader drops a character cut in two: compare the bytes)
    records = [[repr(r[6].rstrip(b"\0")), repr(r[7].rstrip(b"\0")), r.status, r.response_bytes,
                repr(r[8].rstrip(b"\0")), repr(r[9].rstrip(b"\0")), r.pid == pid] for r in drain.records]
    base = segment.geometry.slab_offset(slab)
    shown = bytes(segment.buf[base + Body.inflight_method.offset:base + Body.inflight_path.offset
                              + Body.inflight_path.struct.size])
    return {"series": series, "records": records, "dropped": drain.records_dropped,
            "inflight": Body.inflight_count.get(segment.buf, base), "inflight_shown": shown.hex()}


def run_cases(serve_all) -> None:
    """The runner of a path-agreement test (``python -m tests.apps.<cases> <dir> <cases file>``): a
    worker attached to a fresh segment in ``<dir>`` (its catalogue filled if the batch says so), the
    batch's cases through ``serve_all(cases)``, then the outcomes and the slab's summary as JSON."""
    with open(sys.argv[2]) as f:
        given = ast.literal_eval(f.read())
    segment = Segment.create(sys.argv[1], Geometry(n_slabs=2, record_slots=1024))
    slab, generation = segment.claim_slab()
    state = attach_worker(segment, slab, generation, config=LIMITS)
    if given["fill"]:
        _fill_catalogue()
    outcomes = serve_all(given["cases"])
    print(json.dumps({"c": hotpath is not None, "outcomes": outcomes,
                      **slab_summary(segment, slab, state.pid, given["fill"])}))


def serve_all(cases: list) -> list:
    app = MetricsMiddleware(dispatch, workload=True)  # once the worker is attached, as an app's is
    return [serve(app, case) for case in cases]


def main() -> None:
    run_cases(serve_all)


if __name__ == "__main__":
    main()
