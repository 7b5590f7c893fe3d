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
GAUGE_MODES = ("sum", "max", "min", "last", "all")

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:.]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = frozenset({"pid", "le", "quantile"})
HIDDEN_PREFIX = "rockstar.workload."  # the workload sketches: served as aggregates, not as series


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

    counter: the count. gauge: the value and the time it was last set (for the ``last`` mode).
    histogram: one count per bucket (not cumulative), the +Inf bucket, then the sum.
    """
    if kind == HISTOGRAM:
        return len(extra) + 2
    return 2 if kind == GAUGE else 1


def prometheus_name(name: str) -> str:
    """The Prometheus name of a metric: the spec's dotted names become underscores (``http.requests``
    becomes ``http_requests``). This is the only place the two are related."""
    return name.replace(".", "_")


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
