"""What a series is, shared by the worker (which writes keys) and the aggregator (which reads them).

A series key is msgpack of ``[kind, name, documentation, labelnames, labelvalues, extra]``; the same
declaration gives the same bytes in every worker, so the aggregator merges by the raw bytes. ``extra``
holds the bucket bounds of a histogram and the merge mode of a gauge.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import msgpack

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
SUMMARY, INFO = "summary", "info"  # only the aggregator's own families are summaries; nothing is an info
GAUGE_MODES = ("sum", "max", "min", "last", "all")
MAX_COUNTER_BLOCK = 64  # the most counts one counter series may hold (a block: extra = (n,))

# prometheus_client's rule (``CollectorRegistry._get_names``): the sample names a family of each type
# takes besides its own name, so two families clash when these sets meet.
CLAIMED_SUFFIXES = {
    COUNTER: ("_total", "_created"),
    GAUGE: (),
    HISTOGRAM: ("_bucket", "_sum", "_count", "_created"),
    SUMMARY: ("_sum", "_count", "_created"),
    INFO: ("_info",),
}
# Names only rockstar-mp's own code may declare: every Prometheus name starting ``rockstar_`` (the
# workers' ``rockstar.*`` families and the aggregator's ``rockstar_worker_*``, ``rockstar_workers_*`` and
# ``rockstar_workload_*``), and the names of the families below.
RESERVED_PREFIX = "rockstar_"
OWN_FAMILIES = frozenset({
    ("http.requests", COUNTER),  # worker/wsgi.py
    ("http.request.duration.seconds", HISTOGRAM),  # worker/wsgi.py
    ("rockstar.gc.collections", COUNTER),  # worker/attach.py
    ("rockstar.gc.collected", COUNTER),  # worker/attach.py
    ("rockstar.gc.uncollectable", COUNTER),  # worker/attach.py
    ("rockstar.metadata", GAUGE),  # prometheus.py: units of its families, never served
    ("rockstar.summary.bucket", COUNTER),  # prometheus.py: summaries' quantile sketches, served as quantiles
    ("rockstar.threads", GAUGE),  # worker/attach.py
    ("rockstar.workload.bucket", COUNTER),  # worker/workload.py
    ("rockstar.workload.seconds", COUNTER),  # worker/workload.py
    ("rockstar.workload.overflow", COUNTER),  # worker/workload.py: series refused by the budgets
})

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:.]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = frozenset({"pid", "le", "quantile"})
HIDDEN_PREFIX = "rockstar.workload."  # the workload sketches: served as aggregates, not as series
# what rockstar_mp.prometheus declares about its families (unit, info type) for the aggregator: not served
METADATA_SERIES = "rockstar.metadata"
# the label of an info series (rockstar_mp.prometheus.Info) holding its info as JSON pairs, so that its label
# names stay fixed whatever info() is given; the aggregator serves the pairs as labels
INFO_LABEL = "__info"
# the latency-sketch buckets of rockstar_mp.prometheus summaries declared with quantiles= (counters labelled
# family, labels (the series' label values as JSON) and bucket); the aggregator serves them as quantiles
SUMMARY_SKETCH = "rockstar.summary.bucket"


class SeriesKey(NamedTuple):
    kind: str
    name: str
    documentation: str
    labelnames: tuple
    labelvalues: tuple
    extra: tuple

    def encode(self) -> bytes:
        return msgpack.packb(list(self), use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> "SeriesKey":
        kind, name, doc, names, values, extra = msgpack.unpackb(raw, raw=False)
        return cls(kind, name, doc, tuple(names), tuple(values), tuple(extra))

    @property
    def n_values(self) -> int:
        return value_count(self.kind, self.extra)


def value_count(kind: str, extra: tuple) -> int:
    """How many float64 values a series of this kind holds.

    counter: the count; with ``extra`` ``(n,)``, a block of ``n`` counts (at most ``MAX_COUNTER_BLOCK``:
    a key claiming more holds one). gauge: the value and the time it was last set (for the ``last`` mode).
    histogram: one count per bucket (not cumulative), the +Inf bucket, then the sum.
    """
    if kind == HISTOGRAM:
        return len(extra) + 2
    if kind == COUNTER and extra:  # a block of counts (the workload sketches' buckets)
        cells = extra[0]
        return cells if type(cells) is int and 1 <= cells <= MAX_COUNTER_BLOCK else 1
    return 2 if kind == GAUGE else 1


def prometheus_name(name: str) -> str:
    """The Prometheus name of a metric: the spec's dotted names become underscores (``http.requests``
    becomes ``http_requests``). This is the only place the two are related."""
    return name.replace(".", "_")


def family_name(kind: str, name: str) -> str:
    """The name of a family in the OpenMetrics text: the Prometheus name, and for a counter without
    ``_total`` (its samples get it back), so ``dup`` and ``dup_total`` are the same counter family."""
    base = prometheus_name(name)
    if kind == COUNTER and base.endswith("_total") and len(base) > len("_total"):
        return base[:-len("_total")]
    return base


def exposed_names(kind: str, name: str) -> frozenset:
    """Every Prometheus name a family takes: its family name and the suffixed names of its type."""
    family = family_name(kind, name)
    return frozenset((family, *(family + suffix for suffix in CLAIMED_SUFFIXES.get(kind, ()))))


def main_name(kind: str, name: str) -> str:
    """The name a family shows in the Prometheus text format (0.0.4): a counter's ends in ``_total``."""
    family = family_name(kind, name)
    return family + "_total" if kind == COUNTER else family


RESERVED_NAMES = frozenset().union(*(exposed_names(kind, name) for name, kind in OWN_FAMILIES))


def is_reserved(name: str) -> bool:
    """Is this Prometheus name reserved for rockstar-mp's own metrics?"""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX)


def check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"invalid metric name {name!r}: use letters, digits, '_', ':' and '.'")


def check_labelnames(labelnames: tuple, kind: str) -> None:
    for label in labelnames:
        if not LABEL_RE.match(label) or label.startswith("__"):
            raise ValueError(f"invalid label name {label!r}: use letters, digits and '_'")
        if label in RESERVED_LABELS:
            raise ValueError(f"label name {label!r} is reserved by rockstar-mp; choose another")
    if len(set(labelnames)) != len(labelnames):
        raise ValueError(f"duplicate label names in {labelnames!r}")
