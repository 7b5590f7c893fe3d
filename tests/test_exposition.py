"""OpenMetrics rendering and content negotiation: unit tests, then a real aggregator with forked workers
whose output is read by prometheus_client's two parsers and by ``promtool``."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from rockstar_mp import Counter, Gauge, Histogram
from rockstar_mp.aggregator.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_CONTENT_TYPE,
    render_openmetrics,
    render_prometheus,
)
from rockstar_mp.aggregator.merge import SeriesInfo, Snapshot
from rockstar_mp.aggregator.negotiation import FORMATS, choose_format
from rockstar_mp.series import COUNTER, GAUGE, HISTOGRAM, SeriesKey
from tests.helpers import poll
from tests.test_http import PreforkServer, prefork  # noqa: F401 (prefork: the fixture, used by name)

# Label values that need every escape: quotes, backslashes, newlines (and some non-ASCII).
TRICKY = ('say "hi"', "C:\\temp\\", "two\nlines", '\\"\n\\n ünï')

# Every family is labelled, so none appears in an exposition until a forked worker makes a child: the
# other test modules' aggregators never see these, and each test chooses what its workers expose.
# The names pass promtool's lint (counters get _total in the text, the histogram has a unit suffix).
JOBS = Counter("xt.jobs", "Jobs finished, by queue", ["queue"])
QUOTED = Counter("xt.quoted.events", 'Events with "quotes", a back\\slash and a\nnewline in the help', ["queue"])
DEPTH = Gauge("xt.queue.depth", "Items waiting, by queue", ["queue"])  # mode sum
HELD = Gauge("xt.held.items", "Items held, by queue and worker", ["queue"], mode="all")
DURATION = Histogram("xt.job.duration.seconds", "Seconds per job, by queue", ["queue"], buckets=(0.01, 0.1, 1))

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"
PROMETHEUS_SCRAPER = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                      "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_TEXT_ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"


# -- choose_format ----------------------------------------------------------------------------------
@pytest.mark.parametrize("accept,expected", [
    (None, "json"),
    ("", "json"),
    ("*/*", "json"),  # curl
    ("application/json", "json"),
    ("application/*", "json"),  # ties between wildcard matches go to the default
    (PROMETHEUS_SCRAPER, "openmetrics"),  # Prometheus 2.x
    ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;"
     "version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;"
     "q=0.2,*/*;q=0.1", "openmetrics"),  # Prometheus 3.x
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,"
     "text/plain;version=0.0.4;q=0.3,*/*;q=0.1", "prometheus"),  # protobuf first: not offered
    ("application/openmetrics-text", "openmetrics"),
    ("application/openmetrics-text; version=0.0.1", "openmetrics"),  # any version
    (PROMETHEUS_TEXT_ACCEPT, "prometheus"),
    ("text/plain", "prometheus"),
    ("text/plain; charset=utf-8", "prometheus"),
    ('TEXT/Plain; Version="0.0.4"', "prometheus"),  # case-insensitive, quoted parameter
    ("text/*", "prometheus"),
    ("text/plain;version=1.0.0", "json"),  # a version not served matches nothing: the default
    ("text/plain;version=1.0.0, text/*;q=0.2", "prometheus"),
    ("application/json;q=0.5, text/plain;q=0.8", "prometheus"),  # highest q wins
    ("text/plain;q=0.8, application/json;q=0.9", "json"),
    ("application/json, application/openmetrics-text", "openmetrics"),  # named tie: openmetrics first
    ("application/json, text/plain", "prometheus"),
    ("application/json, */*", "json"),
    ("*/*;q=0.9, application/json;q=0.5", "prometheus"),  # JSON is liked less than anything else
    ("*/*;q=0.9, application/json;q=0.5, text/plain;q=0.1", "openmetrics"),  # ... and so is text/plain
    ("application/openmetrics-text;q=0, */*", "json"),  # q=0: not acceptable
    ("application/json;q=0, */*", "prometheus"),  # json refused; wildcard tie: prometheus next
    ("application/openmetrics-text;q=0", "json"),  # nothing acceptable: the default, never a 406
    ("image/png", "json"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "json"),  # a browser
    ("text/plain;q=abc, application/json;q=0.1", "json"),  # a malformed range is ignored
    ("text/plain;q=2, application/json;q=0.1", "json"),
    ('text/plain;foo="a,b;c";version=0.0.4;q=0.6, application/json;q=0.5', "prometheus"),
    ("text/plain;q=0.5;version=1.0.0, application/json;q=0.4", "prometheus"),  # after q: an extension
    ("application/openmetrics-text;version=1.0.0;q=0.2, application/openmetrics-text;q=0.9", "openmetrics"),
    ("application/openmetrics-text;q=0.9, application/openmetrics-text;version=1.0.0;q=0.1, "
     "text/plain;q=0.5", "prometheus"),  # the more specific range sets openmetrics' q
    (",, ;, garbage, /, */plain", "json"),
])
def test_choose_format_from_accept(accept, expected):
    assert choose_format(accept, None) == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_parameter_overrides_accept(fmt):
    assert FORMATS == ("json", "prometheus", "openmetrics")
    for accept in (None, "*/*", PROMETHEUS_SCRAPER, PROMETHEUS_TEXT_ACCEPT, "application/json"):
        assert choose_format(accept, fmt) == fmt


@pytest.mark.parametrize("bad", ["xml", "", "JSON", "open-metrics", "prometheus "])
def test_unknown_format_parameter_is_an_error_naming_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        choose_format("*/*", bad)
    assert all(f"'{fmt}'" in str(info.value) for fmt in FORMATS) and repr(bad) in str(info.value)


# -- rendering a synthetic snapshot ------------------------------------------------------------------
def _snapshot(entries) -> Snapshot:
    """A ``Snapshot`` of ``[(SeriesKey, values)]``: counters/histograms take their cells' values,
    gauges a list of ``(pid, value, stamp)`` readings."""
    series, totals, gauges = [], [], {}
    for key, data in entries:
        cell = -1
        if key.kind == GAUGE:
            gauges[len(series)] = data
        else:
            cell = len(totals)
            totals.extend(data)
        series.append(SeriesInfo(key.encode(), key, cell, key.n_values))
    return Snapshot(0.0, series, totals, gauges, [], 0, 0, 0)


def _key(kind, name, doc, labels=None, extra=()):
    labels = labels or {}
    return SeriesKey(kind, name, doc, tuple(labels), tuple(labels.values()), tuple(extra))


SYNTHETIC = _snapshot([
    (_key(COUNTER, "c.plain", "Plain"), [3.0]),
    (_key(COUNTER, "c.lab", 'Help "q" \\ and\nnewline', {"path": "/"}), [1.0]),
    (_key(COUNTER, "c.lab", 'Help "q" \\ and\nnewline', {"path": 'a "q" \\b\nc'}), [2.5]),
    (_key(COUNTER, "c.done_total", "Declared with _total"), [7.0]),
    (_key(GAUGE, "g.held", "All", {"k": "v"}, ("all",)), [(11, -1.0, 0.0), (12, math.nan, 0.0)]),
    (_key(HISTOGRAM, "h.lat.seconds", "Latency", {"m": 'x"\\'}, (0.1, 1.0)), [1.0, 2.0, 1.0, 4.25]),
    (_key(HISTOGRAM, "h.neg", "Negative bounds", {}, (-1.0, 1.0)), [1.0, 1.0, 0.0, 0.5]),
    (_key(HISTOGRAM, "h.negsum", "Negative sum", {}, (1.0,)), [1.0, 0.0, -5.0]),
])

PROMETHEUS_GOLDEN = r'''# HELP c_plain_total Plain
# TYPE c_plain_total counter
c_plain_total 3.0
# HELP c_lab_total Help "q" \\ and\nnewline
# TYPE c_lab_total counter
c_lab_total{path="/"} 1.0
c_lab_total{path="a \"q\" \\b\nc"} 2.5
# HELP c_done_total Declared with _total
# TYPE c_done_total counter
c_done_total 7.0
# HELP g_held All
# TYPE g_held gauge
g_held{k="v",pid="11"} -1.0
g_held{k="v",pid="12"} NaN
# HELP h_lat_seconds Latency
# TYPE h_lat_seconds histogram
h_lat_seconds_bucket{m="x\"\\",le="0.1"} 1.0
h_lat_seconds_bucket{m="x\"\\",le="1.0"} 3.0
h_lat_seconds_bucket{m="x\"\\",le="+Inf"} 4.0
h_lat_seconds_sum{m="x\"\\"} 4.25
h_lat_seconds_count{m="x\"\\"} 4.0
# HELP h_neg Negative bounds
# TYPE h_neg histogram
h_neg_bucket{le="-1.0"} 1.0
h_neg_bucket{le="1.0"} 2.0
h_neg_bucket{le="+Inf"} 2.0
h_neg_sum 0.5
h_neg_count 2.0
# HELP h_negsum Negative sum
# TYPE h_negsum histogram
h_negsum_bucket{le="1.0"} 1.0
h_negsum_bucket{le="+Inf"} 1.0
h_negsum_sum -5.0
h_negsum_count 1.0
'''

OPENMETRICS_GOLDEN = r'''# HELP c_plain Plain
# TYPE c_plain counter
c_plain_total 3.0
# HELP c_lab Help \"q\" \\ and\nnewline
# TYPE c_lab counter
c_lab_total{path="/"} 1.0
c_lab_total{path="a \"q\" \\b\nc"} 2.5
# HELP c_done Declared with _total
# TYPE c_done counter
c_done_total 7.0
# HELP g_held All
# TYPE g_held gauge
g_held{k="v",pid="11"} -1.0
g_held{k="v",pid="12"} NaN
# HELP h_lat_seconds Latency
# TYPE h_lat_seconds histogram
h_lat_seconds_bucket{m="x\"\\",le="0.1"} 1.0
h_lat_seconds_bucket{m="x\"\\",le="1.0"} 3.0
h_lat_seconds_bucket{m="x\"\\",le="+Inf"} 4.0
h_lat_seconds_sum{m="x\"\\"} 4.25
h_lat_seconds_count{m="x\"\\"} 4.0
# HELP h_neg Negative bounds
# TYPE h_neg histogram
h_neg_bucket{le="-1.0"} 1.0
h_neg_bucket{le="1.0"} 2.0
h_neg_bucket{le="+Inf"} 2.0
# HELP h_negsum Negative sum
# TYPE h_negsum histogram
h_negsum_bucket{le="1.0"} 1.0
h_negsum_bucket{le="+Inf"} 1.0
# EOF
'''


def test_prometheus_text_is_unchanged():
    assert render_prometheus(SYNTHETIC) == PROMETHEUS_GOLDEN


def test_openmetrics_text():
    """Counter families lose ``_total`` (samples keep it), HELP escapes quotes, ``# EOF`` ends it, and
    a histogram with a negative bound or sum has no ``_sum``/``_count`` (OpenMetrics: they are counters)."""
    text = render_openmetrics(SYNTHETIC)
    assert text == OPENMETRICS_GOLDEN
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["c_lab"].documentation == 'Help "q" \\ and\nnewline'
    assert [(s.name, s.labels, s.value) for s in families["c_lab"].samples] == [
        ("c_lab_total", {"path": "/"}, 1.0), ("c_lab_total", {"path": 'a "q" \\b\nc'}, 2.5)]
    assert families["c_done"].type == "counter"
    assert families["h_lat_seconds"].samples[0].labels == {"m": 'x"\\', "le": "0.1"}
    assert render_openmetrics(_snapshot([])) == "# EOF\n"


# -- a real aggregator --------------------------------------------------------------------------------
def first_worker(quoted_help: bool = True) -> None:
    for queue in TRICKY:
        JOBS.labels(queue).inc(3)
        DEPTH.labels(queue).set(2)
        HELD.labels(queue).set(1.5)
        DURATION.labels(queue).observe(0.05)
        DURATION.labels(queue).observe(5)
    if quoted_help:
        QUOTED.labels(TRICKY[2]).inc()


def second_worker() -> None:
    JOBS.labels(TRICKY[0]).inc(4)
    DEPTH.labels(TRICKY[0]).set(5)
    HELD.labels(TRICKY[0]).set(0.5)
    DURATION.labels(TRICKY[0]).observe(0.005)


def start(prefork, quoted_help: bool = True):  # noqa: F811 (the fixture)
    server = prefork()
    pids = [server.fork_with(lambda: first_worker(quoted_help)), server.fork_with(second_worker)]
    poll(lambda: server.metrics()["counters"].get("xt.jobs") == 16, message="both workers merged")
    return server, pids


def get(server: PreforkServer, accept: str | None, query: str = ""):
    status, headers, body = server.get(query, {"Accept": accept} if accept is not None else {})
    assert status == 200, body
    assert headers["Vary"] == "Accept"
    return headers["Content-Type"], body.decode()


def families_by_name(families) -> dict:
    return {f.name: f for f in families}


def samples(family, name: str) -> dict:
    """``{labels without pid/le as a tuple: value}`` for the samples called ``name``."""
    return {tuple(v for k, v in sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


def check_values(families: dict, pids: list) -> None:
    """The merged values the two workers wrote, whichever text format they were parsed from."""
    assert families["xt_jobs"].type == "counter"
    assert families["xt_jobs"].documentation == "Jobs finished, by queue"
    assert samples(families["xt_jobs"], "xt_jobs_total") == {
        (TRICKY[0],): 7, (TRICKY[1],): 3, (TRICKY[2],): 3, (TRICKY[3],): 3}
    assert families["xt_queue_depth"].type == "gauge"
    assert samples(families["xt_queue_depth"], "xt_queue_depth") == {
        (TRICKY[0],): 7, (TRICKY[1],): 2, (TRICKY[2],): 2, (TRICKY[3],): 2}
    held = {(s.labels["queue"], int(s.labels["pid"])): s.value for s in families["xt_held_items"].samples}
    assert held == {**{(q, pids[0]): 1.5 for q in TRICKY}, (TRICKY[0], pids[1]): 0.5}
    duration = families["xt_job_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {(s.labels["queue"], s.labels["le"]): s.value
               for s in duration.samples if s.name == "xt_job_duration_seconds_bucket"}
    assert {le: v for (q, le), v in buckets.items() if q == TRICKY[0]} == {
        "0.01": 1, "0.1": 2, "1.0": 2, "+Inf": 3}
    assert {le: v for (q, le), v in buckets.items() if q == TRICKY[3]} == {
        "0.01": 0, "0.1": 1, "1.0": 1, "+Inf": 2}
    assert samples(duration, "xt_job_duration_seconds_count")[(TRICKY[0],)] == 3
    assert samples(duration, "xt_job_duration_seconds_sum")[(TRICKY[0],)] == pytest.approx(5.055)


def test_curl_gets_json_and_scrapers_get_text(prefork):  # noqa: F811
    server, pids = start(prefork)

    for accept in (None, "*/*", "application/json", "text/html,*/*;q=0.8"):
        content_type, body = get(server, accept)
        assert content_type == "application/json"
        data = json.loads(body)
        assert data["counters"]["xt.jobs"] == 16
        assert data["counters"][r'xt.jobs{queue="two\nlines"}'] == 3  # the JSON key escapes too
        assert data["counters"][r'xt.jobs{queue="say \"hi\""}'] == 7

    for accept in (OPENMETRICS_ACCEPT, PROMETHEUS_SCRAPER, "application/openmetrics-text"):
        content_type, text = get(server, accept)
        assert content_type == OPENMETRICS_CONTENT_TYPE
        assert text.endswith("\n# EOF\n") and text.count("# EOF") == 1
        families = families_by_name(parse_openmetrics(text))
        check_values(families, pids)
        quoted = families["xt_quoted_events"]
        assert quoted.type == "counter"
        assert quoted.documentation == QUOTED.documentation
        assert samples(quoted, "xt_quoted_events_total") == {(TRICKY[2],): 1}
        assert "# TYPE xt_jobs counter\n" in text and "# TYPE xt_jobs_total" not in text

    for accept in (PROMETHEUS_TEXT_ACCEPT, "text/plain"):
        content_type, text = get(server, accept)
        assert content_type == PROMETHEUS_CONTENT_TYPE
        assert "# EOF" not in text
        families = families_by_name(parse_prometheus(text))
        check_values(families, pids)
        assert families["xt_quoted_events"].documentation == QUOTED.documentation
        assert "# TYPE xt_jobs_total counter\n" in text


def test_format_parameter_wins_and_is_checked(prefork):  # noqa: F811
    server, pids = start(prefork)
    assert get(server, "application/json", "?format=openmetrics")[0] == OPENMETRICS_CONTENT_TYPE
    assert get(server, PROMETHEUS_SCRAPER, "?format=prometheus")[0] == PROMETHEUS_CONTENT_TYPE
    assert get(server, PROMETHEUS_SCRAPER, "?format=json")[0] == "application/json"

    content_type, text = get(server, "*/*", f"?format=openmetrics&pid={pids[1]}")  # one worker's view
    families = families_by_name(parse_openmetrics(text))
    assert samples(families["xt_jobs"], "xt_jobs_total") == {(TRICKY[0],): 4}
    assert "xt_quoted_events" not in families  # only the first worker has that series
    assert {int(s.labels["pid"]) for s in families["xt_held_items"].samples} == {pids[1]}

    status, headers, body = server.get("?format=text", {"Accept": OPENMETRICS_ACCEPT})
    assert status == 400 and headers["Content-Type"] == "application/json"
    description = json.loads(body)["description"]
    assert "['json', 'prometheus', 'openmetrics']" in description and "'text'" in description


# -- promtool ---------------------------------------------------------------------------------------
def promtool() -> str:
    """The real Prometheus tool: required in CI (a missing one fails), skipped elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian/Ubuntu: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; it is required when CI=true")
        pytest.skip(message)
    return path


def run(args: list, stdin: str = ""):
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_promtool_accepts_both_formats(prefork, tmp_path):  # noqa: F811
    tool = promtool()
    server, _ = start(prefork)

    _, text = get(server, PROMETHEUS_TEXT_ACCEPT)
    assert run([tool, "check", "metrics"], text) == (0, "")  # parses, and no lint problem at all

    # ``promtool check metrics`` reads only the 0.0.4 text format; promtool's OpenMetrics parser (the
    # one Prometheus scrapes with) is behind ``tsdb create-blocks-from openmetrics``, which wants a
    # timestamp on every sample: give them one (a sample line never holds a raw newline).
    _, text = get(server, OPENMETRICS_ACCEPT)
    stamp = int(time.time())
    stamped = "".join(line if line.startswith("#") else f"{line.rstrip()} {stamp}\n"
                      for line in text.splitlines(keepends=True))
    (tmp_path / "metrics.om").write_text(stamped)
    code, output = run([tool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "metrics.om"),
                        str(tmp_path / "blocks")])
    assert code == 0, output
    assert "NUM SAMPLES" in output


def test_promtool_check_metrics_reads_openmetrics(prefork):  # noqa: F811
    """``promtool check metrics`` (the 0.0.4 parser) on OpenMetrics text parses, and its only
    complaints are artefacts of reading the other format: a counter's HELP/TYPE name ``x`` and its
    samples ``x_total`` look like two metrics there, so ``x_total`` "has no help text". (It cannot
    read an escaped quote in HELP, ``\\"``, which OpenMetrics requires: these workers skip that one.)"""
    tool = promtool()
    server, _ = start(prefork, quoted_help=False)
    _, text = get(server, OPENMETRICS_ACCEPT)
    code, output = run([tool, "check", "metrics"], text)
    counters = [line.split()[2] for line in text.splitlines() if line.endswith(" counter")]
    assert "xt_jobs" in counters
    artefacts = {f"{name}_total no help text" for name in counters}
    problems = set(output.splitlines())
    assert problems <= artefacts, output
    assert code == (3 if problems else 0), output  # 3: lint problems; 1 would be a parse error
