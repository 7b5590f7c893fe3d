"""The ``route`` label of the request metrics, and the workload quantiles over the sliding window, on a real
gunicorn running the Falcon example app (examples/app.py).

One server, one worker (so that which routes find room is the order of the requests), at most 3 routes a
worker and a 2-second window: path parameters and 404s give templates only, the routes beyond the bound
are counted under ``route="other"`` and in the overflow, every response is counted, promtool accepts the
text, and the window's quantiles follow new slow requests while the lifetime ones keep the history.
"""
from __future__ import annotations

from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from tests.helpers import http_get, poll, raw_get
from tests.test_exposition import promtool, run

MAX_ROUTES = 3
WINDOW = "2s"
SETTINGS = {"ROCKSTAR_MAX_ROUTES": str(MAX_ROUTES), "ROCKSTAR_WINDOW_SECONDS": "2",
            "ROCKSTAR_SNMP_THRESHOLD_WINDOW": "1"}
FIRST = ["/users/alice", "/sleep?ms=0", "/no/such/0"]  # in this order: the routes that find room
REST = ([f"/users/u{i}" for i in range(12)] + ["/sleep?ms=0"] * 7 + [f"/no/such/{i}" for i in range(1, 7)]
        + ["/", "/", "/work?ms=0", "/work?ms=0", "/error"])  # the last five: routes beyond the bound
ROUTES = {"/users/{name}": 13, "/sleep": 8, "<unmatched>": 7, "other": 5}
SLOW_MS = 250


def prometheus_text(server) -> str:
    status, _, body = http_get(f"{server.url}?format=prometheus")
    assert status == 200, body
    return body.decode()


def families(text: str) -> dict:
    return {family.name: family for family in parse_prometheus(text)}


def sleep_quantiles(text: str) -> dict:
    """``{window label or "": {quantile: seconds}}`` of the /sleep route's latency summary."""
    out: dict = {}
    for sample in families(text)["rockstar_workload_route_duration_seconds"].samples:
        if sample.labels.get("route") == "/sleep" and "quantile" in sample.labels:
            out.setdefault(sample.labels.get("window", ""), {})[sample.labels["quantile"]] = sample.value
    return out


def test_routes_are_templates_bounded_per_worker_and_window_quantiles_follow_new_requests(gunicorn_factory):
    server = gunicorn_factory(workers=1, env=SETTINGS)
    received = Tally(raw_get(server.port, path) for path in FIRST)
    with ThreadPoolExecutor(8) as pool:
        received.update(pool.map(lambda path: raw_get(server.port, path), REST))
    assert received == {200: 25, 404: 7, 500: 1}, received
    server.wait_total(len(FIRST) + len(REST))

    text = prometheus_text(server)
    requests = [s for s in families(text)["http_requests"].samples if s.value]
    assert {s.labels["method"] for s in requests} == {"GET"}
    by_status, by_route = Tally(), Tally()
    for sample in requests:
        by_status[int(sample.labels["status"])] += sample.value
        by_route[sample.labels["route"]] += sample.value
    assert by_status == received  # every response, under its status
    assert by_route == ROUTES  # templates only (no /users/alice, no /no/such/3), the rest under "other"
    durations = Tally({s.labels["route"]: s.value for s in families(text)["http_request_duration_seconds"].samples
                       if s.name.endswith("_count") and s.value})
    assert durations == ROUTES
    assert server.metrics()["system"]["dimension_overflow"]["http_route"] == ROUTES["other"]
    assert run([promtool(), "check", "metrics"], text) == (0, "")  # parses, and no lint problem at all

    before = sleep_quantiles(text)
    assert before[WINDOW]["0.5"] < SLOW_MS / 2000 and before[""]["0.5"] < SLOW_MS / 2000
    poll(lambda: WINDOW not in sleep_quantiles(prometheus_text(server)), timeout=10,
         message="the fast /sleep requests leaving the window")
    assert [raw_get(server.port, f"/sleep?ms={SLOW_MS}") for _ in range(2)] == [200, 200]

    after = poll(lambda: (q := sleep_quantiles(prometheus_text(server))).get(WINDOW, {}).get("0.5", 0)
                 >= SLOW_MS / 1000 * 0.95 and q, timeout=10, message="the window's p50 of /sleep being slow")
    assert after[""]["0.5"] < SLOW_MS / 2000  # the lifetime keeps the 8 fast ones: its median is fast still
    assert after[""]["0.99"] >= SLOW_MS / 1000 * 0.95
