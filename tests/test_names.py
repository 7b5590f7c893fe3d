"""Metric names that cannot break a scrape: collisions refused at declaration, reserved names kept for
rockstar-mp, and workers declaring one name two ways reconciled by the aggregator (the first declaration
seen is exposed, the others are counted in ``name_conflicts`` and logged once).

Cross-worker cases use simulated workers (a claimed slab and a ``Registry`` bound to it, as in
test_segment); tests/test_names_gunicorn.py runs them in real gunicorn workers."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from rockstar_mp import RockstarError
from rockstar_mp.aggregator.exposition import ExtraFamily, render_json, render_openmetrics, render_prometheus
from rockstar_mp.aggregator.merge import Merger, Snapshot
from rockstar_mp.metrics import Counter, Gauge, Histogram, Registry
from rockstar_mp.segment import Geometry, Segment, process_start
from rockstar_mp.segment.errors import MetricNameConflict
from rockstar_mp.segment.layout import Slot
from rockstar_mp.series import COUNTER, GAUGE, OWN_FAMILIES, SeriesKey
from rockstar_mp.worker.attach import SlabStore
from tests.helpers import ROOT
from tests.test_exposition import promtool, run

KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
SMALL = Geometry(n_slabs=6, slab_max_series=64, slab_heap_bytes=8192, slab_max_values=1024,
                 retired_max_series=256, retired_heap_bytes=32768, retired_max_values=4096)


def declare(registry: Registry, spec: tuple):
    """``spec``: ``(kind, name)`` or ``(kind, name, label names)``."""
    kind, name, *labels = spec
    return KINDS[kind](name, f"Help of {name}", labels[0] if labels else (), registry=registry)


def update(metric, amount: float = 1.0) -> None:
    series = metric.labels(*["v"] * len(metric.labelnames)) if metric.labelnames else metric
    if hasattr(series, "observe"):
        series.observe(amount)
    elif hasattr(series, "set"):
        series.set(amount)
    else:
        series.inc(amount)


# -- one process: refused at declaration -------------------------------------------------------------
# (first, second, the Prometheus name the message shows as shared)
COLLISIONS = [
    (("counter", "dup"), ("counter", "dup_total"), "dup_total"),
    (("counter", "dup_total"), ("counter", "dup"), "dup_total"),
    (("counter", "clash.a"), ("counter", "clash_a"), "clash_a_total"),
    (("counter", "clash.a"), ("gauge", "clash_a"), "clash_a"),
    (("gauge", "clash_a"), ("counter", "clash.a"), "clash_a"),
    (("gauge", "x"), ("counter", "x_total"), "x"),
    (("counter", "x"), ("gauge", "x_total"), "x_total"),
    (("counter", "x"), ("gauge", "x_created"), "x_created"),
    (("histogram", "lat"), ("gauge", "lat_bucket"), "lat_bucket"),
    (("histogram", "lat"), ("gauge", "lat_count"), "lat_count"),
    (("histogram", "lat"), ("counter", "lat_sum"), "lat_sum"),
    (("histogram", "lat"), ("gauge", "lat.created"), "lat_created"),
    (("gauge", "lat_count"), ("histogram", "lat"), "lat_count"),
    (("counter", "a"), ("histogram", "a.created"), "a_created"),
]


@pytest.mark.parametrize("first,second,shared", COLLISIONS, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_a_collision_is_refused_at_declaration_with_what_to_rename(first, second, shared):
    registry = Registry()
    kept = declare(registry, first)
    with pytest.raises(MetricNameConflict) as info:
        declare(registry, second)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RockstarError)
    message = str(info.value)
    assert f"conflicts with {first[1]!r} ({first[0]})" in message
    assert f"exposed as {shared!r}" in message
    assert message.endswith(f"Rename {second[1]!r}")
    assert [f.name for f in registry.families()] == [first[1]]  # refused whole
    update(kept)  # the first one is untouched
    declare(registry, (second[0], "renamed." + second[1]))  # and the rename is accepted


@pytest.mark.parametrize("second", [("gauge", "two"), ("counter", "two", ["other"]), ("counter", "two")])
def test_one_name_twice_is_refused_whatever_its_type_or_labels(second):
    registry = Registry()
    declare(registry, ("counter", "two", ["label"]))
    with pytest.raises(MetricNameConflict, match="'two' is already declared in this process"):
        declare(registry, second)


def test_names_that_only_look_alike_are_accepted_and_render_clean(tmp_path):
    """No false alarm: these share no Prometheus name, so all are declared, and the scrape is clean.
    (promtool also lints style the registry leaves to the user, e.g. a gauge named ..._total.)"""
    seg = Segment.create(str(tmp_path), SMALL)
    try:
        registry = _worker(seg)
        specs = [("gauge", "queue.depth"), ("gauge", "queue.depth.peak"), ("counter", "jobs.done"),
                 ("counter", "jobs.done.created.seconds"), ("histogram", "lat.seconds"),
                 ("gauge", "lat.seconds.max"), ("gauge", "rockstarish.items"), ("gauge", "http.latency.seconds"),
                 ("counter", "http.requests.retried")]
        for spec in specs:
            update(declare(registry, spec))
        snap = Merger(seg).merge()
        assert snap.name_conflicts == 0
        assert_clean_scrape(snap, 9)
    finally:
        seg.close()


# -- reserved names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,shown", [
    (("counter", "rockstar.worker.threads"), "rockstar_worker_threads_total"),
    (("gauge", "rockstar.worker.threads"), "rockstar_worker_threads"),
    (("gauge", "rockstar_workers_live"), "rockstar_workers_live"),
    (("gauge", "rockstar.workload.route.duration.seconds"), "rockstar_workload_route_duration_seconds"),
    (("gauge", "rockstar.threads"), "rockstar_threads"),
    (("counter", "rockstar"), "rockstar_total"),
])
def test_the_rockstar_namespace_is_refused_to_user_code(spec, shown):
    with pytest.raises(MetricNameConflict) as info:
        declare(Registry(), spec)
    message = str(info.value)
    assert f"exposed as {shown!r}" in message
    assert "names starting with 'rockstar_' are reserved for rockstar-mp's own metrics" in message
    assert f"Rename {spec[1]!r}, e.g. to 'app." in message


@pytest.mark.parametrize("spec,owner", [
    (("counter", "http.requests"), "'http.requests' (counter)"),
    (("counter", "http.requests", ["method"]), "'http.requests' (counter)"),
    (("gauge", "http_requests_total"), "'http.requests' (counter)"),
    (("gauge", "http.requests"), "'http.requests' (counter)"),
    (("histogram", "http.request.duration.seconds"), "'http.request.duration.seconds' (histogram)"),
    (("gauge", "http.request.duration.seconds.bucket"), "'http.request.duration.seconds' (histogram)"),
])
def test_our_http_families_are_refused_to_user_code(spec, owner):
    with pytest.raises(MetricNameConflict) as info:
        declare(Registry(), spec)
    assert f"belongs to rockstar-mp's own metric {owner}" in str(info.value)
    assert f"Rename {spec[1]!r}, e.g. to 'app.{spec[1]}'" in str(info.value)


def test_our_own_declarations_still_work_and_are_the_reserved_table():
    """A fresh interpreter imports every module of ours that declares metrics: nothing is refused, and
    what they declare is exactly ``OWN_FAMILIES`` (the table the reservation is built from)."""
    code = ("import json, rockstar_mp.worker.wsgi, rockstar_mp.worker.attach, rockstar_mp.worker.workload\n"
            "import rockstar_mp.prometheus\n"
            "from rockstar_mp.metrics import REGISTRY\n"
            "print(json.dumps(sorted([f.name, f.kind] for f in REGISTRY.families())))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(map(tuple, json.loads(done.stdout))) == sorted(OWN_FAMILIES)


def test_a_refused_or_unregistered_family_frees_its_names():
    registry = Registry()
    first = declare(registry, ("counter", "dup"))
    registry.unregister(first)
    declare(registry, ("gauge", "dup_total"))  # 'dup' no longer holds dup_total
    with pytest.raises(MetricNameConflict):
        declare(registry, ("counter", "dup"))
    declare(registry, ("counter", "dup.other"))


# -- across workers: reconciled by the aggregator ------------------------------------------------------
def _worker(seg: Segment, pid: int | None = None) -> Registry:
    """A simulated worker named ``pid`` (a live process: this one by default)."""
    pid = pid or os.getpid()
    slab, _ = seg.claim_slab()
    seg.bind_slab(slab, pid, process_start(pid))
    registry = Registry()
    assert registry.bind(SlabStore(seg, slab)) == []
    registry.slab = slab  # for the tests: which slab this worker writes
    return registry


def _stamped(text: str) -> str:
    stamp = int(time.time())
    return "".join(line if line.startswith("#") else f"{line.rstrip()} {stamp}\n"
                   for line in text.splitlines(keepends=True))


def assert_clean_scrape(snap: Snapshot, families: int, pid: int | None = None, extra: tuple = ()) -> None:
    """``assert_clean_text`` of both renderings of ``snap``."""
    assert_clean_text(render_prometheus(snap, pid, extra), render_openmetrics(snap, pid, extra), families)


def assert_clean_text(text: str, om: str, families: int | None = None) -> None:
    """Both text formats: ``families`` families (if given), each name once, and promtool and
    prometheus_client's parsers accept them (promtool's 0.0.4 reading of OpenMetrics only complains of
    its artefacts). Returns nothing; raises on the first problem."""
    tool = promtool()
    parsed = list(parse_prometheus(text))
    assert len({f.name for f in parsed}) == len(parsed) == (families if families is not None else len(parsed)), text
    assert run([tool, "check", "metrics"], text) == (0, ""), text
    parsed = list(parse_openmetrics(om))
    assert len({f.name for f in parsed}) == len(parsed) == (families if families is not None else len(parsed)), om
    code, output = run([tool, "check", "metrics"], om)
    counters = {line.split()[2] for line in om.splitlines() if line.endswith(" counter")}
    assert set(output.splitlines()) <= {f"{name}_total no help text" for name in counters}, output
    assert code in (0, 3), output  # 3: those lint artefacts; 1 would be a parse error
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "metrics.om")
        with open(path, "w") as f:
            f.write(_stamped(om))
        code, output = run([tool, "tsdb", "create-blocks-from", "openmetrics", path, os.path.join(tmp, "b")])
        assert code == 0, output


def _json_names(snap: Snapshot, pid: int | None = None) -> dict:
    out = render_json(snap, pid)
    return {section: sorted(out[section]) for section in out if out[section]}


# (first worker's declaration, second's, what JSON shows afterwards: the first one only)
CROSS = {
    "dup-then-dup_total": (("counter", "dup"), ("counter", "dup_total"), {"counters": ["dup"]}),
    "dup_total-then-dup": (("counter", "dup_total"), ("counter", "dup"), {"counters": ["dup_total"]}),
    "clash.a-counter-clash_a-gauge": (("counter", "clash.a"), ("gauge", "clash_a"), {"counters": ["clash.a"]}),
    "clash_a-gauge-clash.a-counter": (("gauge", "clash_a"), ("counter", "clash.a"), {"gauges": ["clash_a"]}),
    "clash.a-clash_a-both-counters": (("counter", "clash.a"), ("counter", "clash_a"), {"counters": ["clash.a"]}),
    "one-name-two-types": (("counter", "two"), ("gauge", "two"), {"counters": ["two"]}),
    "one-name-gauge-then-histogram": (("gauge", "two"), ("histogram", "two"), {"gauges": ["two"]}),
    "one-name-two-label-sets": (("counter", "lab", ["a"]), ("counter", "lab", ["b"]),
                                {"counters": ["lab", 'lab{a="v"}']}),
    "histogram-then-gauge_count": (("histogram", "lat"), ("gauge", "lat_count"), {"histograms": ["lat"]}),
    "histogram-then-counter_sum": (("histogram", "lat"), ("counter", "lat.sum"), {"histograms": ["lat"]}),
    "counter-then-gauge_created": (("counter", "x"), ("gauge", "x_created"), {"counters": ["x"]}),
}


@pytest.fixture
def seg(tmp_path):
    segment = Segment.create(str(tmp_path), SMALL)
    yield segment
    segment.close()


@pytest.mark.parametrize("case", list(CROSS))
def test_workers_declaring_a_name_two_ways_expose_it_once(seg, case, caplog):
    first, second, shown = CROSS[case]
    merger = Merger(seg)
    older = _worker(seg)
    update(declare(older, first), 3)
    assert merger.merge().name_conflicts == 0
    younger = _worker(seg, os.getppid())  # another pid, for the per-worker views
    loser = declare(younger, second)
    update(loser, 5)
    with caplog.at_level(logging.WARNING, "rockstar_mp.aggregator"):
        snap = merger.merge()
        assert snap.name_conflicts == 1
        assert _json_names(snap) == shown
        assert_clean_scrape(snap, 1)
        if loser.labelnames:  # more series of the losing family: still one conflict, still hidden
            loser.labels("w").inc()
        snap = merger.merge()
    assert snap.name_conflicts == 1 and _json_names(snap) == shown
    warnings = [r.getMessage() for r in caplog.records if "is not exposed" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once
    assert f"metric {second[1]!r} ({second[0]}" in warnings[0] and f"of {first[1]!r} ({first[0]}" in warnings[0]
    assert _json_names(snap, os.getpid()) == shown
    assert _json_names(snap, os.getppid()) == {}  # the losing worker's own view hides it too


def test_the_loser_stays_hidden_when_its_worker_is_folded_and_after_a_restart(seg):
    merger = Merger(seg)
    update(declare(_worker(seg), ("counter", "dup")), 2)
    young = _worker(seg)
    update(declare(young, ("counter", "dup_total")), 7)
    merger.merge()
    gen = seg.slot(young.slab).generation
    seg.retire_slab(young.slab, gen)
    assert merger.collect_dead() == 1  # the loser's count is in the retired totals now
    snap = merger.merge()
    assert render_json(snap)["counters"] == {"dup": 2} and snap.name_conflicts == 1
    update(declare(_worker(seg), ("counter", "dup_total")), 1)  # a new worker of the losing code
    snap = merger.merge()
    assert render_json(snap)["counters"] == {"dup": 2} and snap.name_conflicts == 1
    assert_clean_scrape(snap, 1)

    restarted = Merger(seg)  # a new aggregator: live workers' names first, oldest first, then retired
    snap = restarted.merge()
    assert render_json(snap)["counters"] == {"dup": 2} and snap.name_conflicts == 1
    assert_clean_scrape(snap, 1)


def test_a_starting_aggregator_meets_live_workers_oldest_first(seg):
    """The older worker's declaration wins, and again after a restart, even when it has a later slab."""
    slab0 = _worker(seg)  # slab 0 ...
    slab1 = _worker(seg)  # ... slab 1
    Slot.age.set(seg.buf, 7, seg.geometry.table_entry(slab0.slab))  # slab 0's worker is the younger
    Slot.age.set(seg.buf, 3, seg.geometry.table_entry(slab1.slab))
    update(declare(slab0, ("gauge", "two")), 1)
    update(declare(slab1, ("counter", "two")), 1)
    for _ in range(2):  # two aggregators, one after the other
        snap = Merger(seg).merge()
        assert _json_names(snap) == {"counters": ["two"]} and snap.name_conflicts == 1


def test_declarations_differing_only_in_help_buckets_or_mode_are_one_family(seg):
    """Old and new code side by side after a HUP: not a conflict (the first bucket layout is served)."""
    a, b = _worker(seg), _worker(seg)
    Histogram("lat.seconds", "Old help", buckets=(1, 2), registry=a).observe(1)
    Histogram("lat.seconds", "New help", buckets=(1, 5), registry=b).observe(1)
    Gauge("depth", "Depth", mode="max", registry=a).set(4)
    Gauge("depth", "Depth", mode="sum", registry=b).set(5)
    Counter("jobs", "Old", registry=a).inc(1)
    Counter("jobs", "New", registry=b).inc(2)
    snap = Merger(seg).merge()
    assert snap.name_conflicts == 0
    assert render_json(snap)["counters"] == {"jobs": 3}
    assert_clean_scrape(snap, 3)


def test_reserved_names_from_a_worker_of_another_version_are_not_exposed(seg, caplog):
    """A worker that did not refuse a reserved name (another rockstar-mp: its keys are written straight
    into its slab here) cannot duplicate the aggregator's own families or take our http names; our own
    declarations of them are exposed as usual."""
    registry = _worker(seg)
    store = SlabStore(seg, registry.slab)
    for key in (SeriesKey(GAUGE, "rockstar.worker.threads", "Squatted", (), (), ("sum",)),
                SeriesKey(COUNTER, "rockstar.workers.folded", "Squatted", (), (), ()),
                SeriesKey(GAUGE, "http.requests", "Squatted", (), (), ("sum",))):
        view, index = store.register(key.encode(), key.n_values)
        view[index] = 99.0
    own = SeriesKey(COUNTER, "http.requests", "HTTP responses served", ("method", "status"), ("GET", "200"), ())
    view, index = store.register(own.encode(), own.n_values)
    view[index] = 5.0
    with caplog.at_level(logging.WARNING, "rockstar_mp.aggregator"):
        snap = Merger(seg).merge()
    assert snap.name_conflicts == 3
    assert sum("reserved for rockstar-mp's own metrics" in r.getMessage() for r in caplog.records) == 3
    assert render_json(snap) == {"counters": {'http.requests{method="GET",status="200"}': 5, "http.requests": 5},
                                 "gauges": {}, "histograms": {}}
    extra = (ExtraFamily("rockstar_worker_threads", "gauge", "Threads in each worker",
                         [("", ("pid",), ("1",), 4)]),
             ExtraFamily("rockstar_workers_folded", "counter", "Workers folded", [("", (), (), 2)]))
    text = render_prometheus(snap, None, extra)
    assert "99" not in text and "Squatted" not in text
    assert_clean_scrape(snap, 3, extra=extra)
