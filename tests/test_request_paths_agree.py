"""Property: the C request path (rockstar_mp/_hotpath.c) and the Python one agree on every input.

Hypothesis generates batches of requests: environs with odd, missing or non-str methods, paths, tenants
and request ids (long, non-ASCII, lone surrogates), odd statuses, every kind of body (list, generator,
iterator with close(), file wrapper, empty, an app raising before or after start_response, a body
raising while iterated, a close() that raises) and of server (exhausting, closing only, taking one
chunk, dropping the body); sometimes with the slab's catalogue already full. Each batch runs through
``MetricsMiddleware(workload=True)`` in two fresh processes attached to fresh segments, one per request
path (tests/apps/request_cases.py), and what the server saw and what landed in the slab (series,
records, in-flight fields) must be the same. Both must also count exactly the responses a server
finished, and raise nothing of their own.
"""
from __future__ import annotations

import ast
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import require_hotpath, run_in_both_request_paths

MISSING = object()  # the environ has no such key

APPS = ["list", "generator", "closing", "close_fails", "file", "empty", "iter_raises", "lazy",
        "no_start_response", "raise_before", "raise_after", "twice"]  # tests/apps/request_cases.py
SERVERS = ["exhaust", "exhaust_only", "head", "partial", "drop"]
MAX_ROUTES = 3  # route labels a worker gives (tests/apps/request_cases.py LIMITS)

odd_values = st.one_of(st.none(), st.integers(), st.binary(max_size=6), st.lists(st.integers(), max_size=1))
texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="aé€😀", min_size=10, max_size=70),  # multi-byte characters across the cuts
    st.text(alphabet=st.characters(categories=["Cs", "Ll"]), max_size=6),  # lone surrogates
)
methods = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                     "CONNECT", "get", "BREW", "", "GET "]), st.just(MISSING), odd_values, texts)
paths = st.one_of(st.sampled_from(["/", "/users/42", "/users/43", "/missing/1", "/orders/0123456789abcdef0123",
                                   ""]), st.just(MISSING), odd_values, texts.map(lambda t: "/" + t))
statuses = st.one_of(st.sampled_from(["200 OK", "201 Created", "204 No Content", "404 Not Found",
                                      "500 Internal Server Error", "503 Unavailable", "999 Odd", "099 Low",
                                      "600 High", "abc", "", "20", "2000 X", "404", "1_0 X", " 200 OK",
                                      "\u0662\u0660\u0660 Arabic digits"]), odd_values, texts)
header_values = st.one_of(st.just(MISSING), st.sampled_from(["acme", "globex", "initech", "umbrella", "other", "-",
                                                             ""]), texts, odd_values)
chunks = st.lists(st.one_of(st.binary(max_size=12), st.text(max_size=4)), max_size=4)


@st.composite
def environs(draw) -> dict:
    environ = {}
    for key, values in (("REQUEST_METHOD", methods), ("PATH_INFO", paths), ("HTTP_X_TENANT_ID", header_values),
                        ("HTTP_X_REQUEST_ID", header_values), ("rockstar.route", header_values),
                        ("rockstar.tenant", header_values), ("rockstar.request_id", header_values),
                        ("gunicorn.socket", st.sampled_from([MISSING, None, "not a socket"]))):
        value = draw(values)
        if value is not MISSING:
            environ[key] = value
    return environ


cases = st.fixed_dictionaries({"environ": environs(), "app": st.sampled_from(APPS), "status": statuses,
                               "chunks": chunks, "raise_at": st.integers(0, 4), "server": st.sampled_from(SERVERS)})


def _counted(case: dict, outcome: list) -> bool:
    """Did the server finish the response (so it must be counted)? The app raised in the call, or the
    server closed the body, or it took the body to its end."""
    if any(line.startswith("call:") for line in outcome):
        return True
    if case["server"] in ("exhaust", "head", "partial"):
        return True
    return case["server"] == "exhaust_only" and not any(line.startswith("iterating:") for line in outcome)


@pytest.fixture(autouse=True)
def _the_extension():
    require_hotpath()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(cases, min_size=1, max_size=40), st.sampled_from([False, False, False, True]))
def test_both_request_paths_write_the_same_for_any_requests(batch, fill):
    c, pure = run_in_both_request_paths("tests.apps.request_cases", {"fill": fill, "cases": batch})
    assert c.pop("c") is True and pure.pop("c") is False
    assert c == pure

    for outcome in c["outcomes"]:  # only the app's own exceptions reach the server
        assert all(re.match(r"(status|got) ", line) or line.endswith(": AppError") for line in outcome), outcome
    counted = sum(_counted(case, outcome) for case, outcome in zip(batch, c["outcomes"], strict=True))
    series = c["series"]
    requests = sum(v for k, v in series.items() if k.startswith("http.requests["))
    durations = sum(v for k, v in series.items() if k.startswith("http.request.duration.seconds["))
    assert requests == durations == counted == len(c["records"])
    for dim in ("route", "status", "tenant"):  # every recorded request is in each dimension's sketch once
        assert sum(v for k, v in series.items() if k.startswith(f"workload['{dim}'")) == counted, dim
    assert c["inflight"] == 0 and c["dropped"] == 0
    counts = [(ast.literal_eval(k[len("http.requests"):]), v) for k, v in series.items()
              if k.startswith("http.requests[")]
    assert {method for (method, _, _), _ in counts} <= {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS",
                                                        "TRACE", "CONNECT", "other"}
    assert all(re.fullmatch(r"[1-5]\d\d|other", status) for (_, status, _), _ in counts)
    routes = {route for (_, _, route), _ in counts} - {"other"}
    assert len(routes) <= MAX_ROUTES
    recorded = {record[1] for record in c["records"]}  # repr of the bytes stored
    assert all(repr(route.encode().rstrip(b"\0")) in recorded for route in routes)  # a label is a record's route
    if not fill:  # a response whose route found no room is under route="other", and in the overflow
        named_other = sum(record[1] == repr(b"other") for record in c["records"])  # a route called "other"
        crowded_out = sum(v for (_, _, route), v in counts if route == "other") - named_other
        assert series.get("rockstar.workload.overflow['http_route']", 0) == crowded_out
