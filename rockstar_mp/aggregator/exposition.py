"""Rendering a ``Snapshot``: the spec's JSON, the Prometheus text format (0.0.4) and OpenMetrics 1.0 text.

JSON keys are the declared names (``http.requests``); a labelled series is ``name{a="x",b="y"}``, and a
labelled counter also has its plain name holding the sum over its label sets, so the spec's
``counters["http.requests"]`` is always the total.

A series whose family lost its Prometheus name to another declaration (``merge.FamilyNames``) is left out
of every rendering, so each name is exposed once.

The request metrics of the WSGI middleware (``worker/wsgi.py``) are the workers' own series:
``http_requests_total{method,status,route}`` and ``http_request_duration_seconds{method,route}`` (a
histogram), ``route`` being a template (``/users/{id}``), ``<unmatched>`` or ``other``. The text formats
then add the aggregator's families (``ExtraFamily``): per-worker process figures, and the workload
latency summaries ``rockstar_workload_{route,status,tenant}_duration_seconds``, whose quantiles are over
the lifetime (with ``_sum`` and ``_count``) and, with a ``window="60s"`` label, over the sliding window
(``aggregator.workload.latency_families``).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from ..series import COUNTER, GAUGE, HIDDEN_PREFIX, HISTOGRAM, prometheus_name
from .merge import Snapshot

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names, values) -> str:
    # not strict: keys are decoded from what workers wrote, unchecked; a malformed one loses labels, not the page
    return ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=False))


def _json_key(key, extra_names=(), extra_values=()) -> str:
    names, values = key.labelnames + tuple(extra_names), key.labelvalues + tuple(extra_values)
    return f"{key.name}{{{_label_text(names, values)}}}" if names else key.name


def json_number(value: float):
    """JSON has no NaN/Inf: they become strings; whole numbers become ints."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value


def merge_gauge(mode: str, readings: list) -> list:
    """``[(extra label values, value)]`` for one gauge series from ``[(pid, value, stamp)]``."""
    if not readings:
        return []
    values = [v for _, v, _ in readings]
    if mode == "all":
        return [((str(pid),), v) for pid, v, _ in readings]
    if mode == "max":
        return [((), max(values))]
    if mode == "min":
        return [((), min(values))]
    if mode == "last":
        return [((), max(readings, key=lambda r: r[2])[1])]
    return [((), math.fsum(values))]


def _raw_series_values(snap: Snapshot, pid: int | None):
    if pid is None:
        for sid, info in enumerate(snap.series):
            if not info.exposed:
                continue
            if info.cell >= 0:
                yield info, snap.totals[info.cell:info.cell + info.n], None
            elif info.key.kind == GAUGE and sid in snap.gauges:
                yield info, None, snap.gauges[sid]
        return
    worker = snap.worker(pid)
    if worker is None:
        return
    for sid, local in worker.cache.series:
        info = snap.series[sid]
        if not info.exposed:
            continue
        values = worker.values[local:local + info.n]
        if info.cell >= 0:
            yield info, values, None
        else:
            yield info, None, [(pid, values[0], values[1])]


def _series_values(snap: Snapshot, pid: int | None):
    """``(info, values, gauge readings)`` per series: merged totals, or one worker's values when ``pid``
    is set. The workload sketches are left out (they are served as aggregates). Keys that differ only
    in documentation, buckets or mode (old and new code side by side after a HUP) are one series:
    counters add up, gauge readings join, a histogram keeps the first bucket layout seen."""
    merged: dict[tuple, list] = {}
    for info, values, readings in _raw_series_values(snap, pid):
        key = info.key
        if key.name.startswith(HIDDEN_PREFIX):
            continue
        ident = (key.name, key.labelnames, key.labelvalues)
        seen = merged.get(ident)
        if seen is None:
            merged[ident] = [info, list(values) if values is not None else None,
                             list(readings) if readings is not None else None]
        elif seen[0].key.kind != key.kind or seen[0].key.extra != key.extra and key.kind == HISTOGRAM:
            continue  # a conflicting declaration: the first one seen is served
        elif values is not None:
            seen[1] = [a + b for a, b in zip(seen[1], values, strict=True)]
        else:
            seen[2].extend(readings)
    for info, values, readings in merged.values():
        yield info, values, readings


def _histogram_json(key, values) -> dict:
    bounds = key.extra
    cumulative, buckets = 0.0, {}
    for bound, count in zip(list(bounds) + [math.inf], values[:-1], strict=True):
        cumulative += count
        buckets["+Inf" if bound == math.inf else repr(float(bound))] = json_number(cumulative)
    return {"count": json_number(cumulative), "sum": json_number(values[-1]), "buckets": buckets}


def render_json(snap: Snapshot, pid: int | None = None) -> dict:
    """The spec's ``{"counters", "gauges", "histograms"}`` part of the JSON (system and workers are
    added by the caller)."""
    counters: dict = {}
    gauges: dict = {}
    histograms: dict = {}
    for info, values, readings in _series_values(snap, pid):
        key = info.key
        if key.kind == COUNTER:
            counters[_json_key(key)] = json_number(values[0])
            if key.labelnames:  # the plain name holds the sum over label sets
                counters[key.name] = json_number(counters.get(key.name, 0) + values[0])
        elif key.kind == HISTOGRAM:
            histograms[_json_key(key)] = _histogram_json(key, values)
        elif key.kind == GAUGE:
            for extra_values, value in merge_gauge(key.extra[0], readings):
                names = ("pid",) if extra_values else ()
                gauges[_json_key(key, names, extra_values)] = json_number(value)
    return {"counters": counters, "gauges": gauges, "histograms": histograms}


def _go_float(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _openmetrics_help(text: str) -> str:
    return _help(text).replace('"', '\\"')


class _TextFormat(NamedTuple):
    """What differs between the two text formats; everything else is one walk (``_render_text``)."""

    counter_names: Callable[[str], tuple]  # base name -> (family name, sample name)
    help: Callable[[str], str]  # escapes HELP text
    histogram_sum: Callable[[tuple, float], bool]  # (bounds, sum) -> expose _sum and _count?
    trailer: str


def _prometheus_counter(base: str) -> tuple:
    sample = base if base.endswith("_total") else base + "_total"
    return sample, sample


def _openmetrics_counter(base: str) -> tuple:
    family = base[:-len("_total")] if base.endswith("_total") and len(base) > len("_total") else base
    return family, family + "_total"


def _openmetrics_sum(bounds: tuple, total: float) -> bool:
    """OpenMetrics: _sum is a counter, so it is left out (and _count with it, the two go together)
    when a bucket bound is negative or the sum is negative or NaN; the +Inf bucket still has the count."""
    return not (total < 0 or math.isnan(total) or any(bound < 0 for bound in bounds))


PROMETHEUS = _TextFormat(_prometheus_counter, _help, lambda bounds, total: True, "")
OPENMETRICS = _TextFormat(_openmetrics_counter, _openmetrics_help, _openmetrics_sum, "# EOF\n")


def render_prometheus(snap: Snapshot, pid: int | None = None, extra: tuple = ()) -> str:
    """The Prometheus text exposition format 0.0.4, one family per metric name, then ``extra``."""
    return _render_text(snap, pid, PROMETHEUS, extra)


def render_openmetrics(snap: Snapshot, pid: int | None = None, extra: tuple = ()) -> str:
    """OpenMetrics 1.0 text: as ``render_prometheus`` but a counter family is named without ``_total``
    (its samples keep it), HELP also escapes ``"``, and the text ends with ``# EOF``."""
    return _render_text(snap, pid, OPENMETRICS, extra)


def _render_text(snap: Snapshot, pid: int | None, fmt: _TextFormat, extra: tuple = ()) -> str:
    families: dict[str, list] = {}
    for info, values, readings in _series_values(snap, pid):
        families.setdefault(info.key.name, []).append((info.key, values, readings))
    out: list[str] = []
    for name, members in families.items():
        key0 = members[0][0]
        members = [m for m in members if m[0].kind == key0.kind]  # one kind per family
        base = prometheus_name(name)
        if key0.kind == COUNTER:
            family, sample = fmt.counter_names(base)
            out.append(f"# HELP {family} {fmt.help(key0.documentation)}\n# TYPE {family} counter\n")
            for key, values, _ in members:
                out.append(f"{sample}{_braces(key.labelnames, key.labelvalues)} {_go_float(values[0])}\n")
        elif key0.kind == GAUGE:
            out.append(f"# HELP {base} {fmt.help(key0.documentation)}\n# TYPE {base} gauge\n")
            for key, _, readings in members:
                for extra_values, value in merge_gauge(key.extra[0], readings):
                    names = key.labelnames + (("pid",) if extra_values else ())
                    out.append(f"{base}{_braces(names, key.labelvalues + extra_values)} {_go_float(value)}\n")
        elif key0.kind == HISTOGRAM:
            out.append(f"# HELP {base} {fmt.help(key0.documentation)}\n# TYPE {base} histogram\n")
            for key, values, _ in members:
                out.append(_histogram_lines(base, key, values, fmt.histogram_sum(key.extra, values[-1])))
    for family in extra:
        out.append(_extra_family(family, fmt))
    out.append(fmt.trailer)
    return "".join(out)


class ExtraFamily(NamedTuple):
    """A family computed by the aggregator rather than declared by workers (process figures, workload
    aggregates). ``samples``: ``(name suffix, label names, label values, value)``."""

    name: str  # the Prometheus name, without ``_total`` for counters
    kind: str  # counter, gauge or summary
    documentation: str
    samples: list


def _extra_family(family: ExtraFamily, fmt: _TextFormat) -> str:
    name, sample_base = family.name, family.name
    if family.kind == COUNTER:
        name, sample_base = fmt.counter_names(family.name)
    lines = [f"# HELP {name} {fmt.help(family.documentation)}\n# TYPE {name} {family.kind}\n"]
    for suffix, names, values, value in family.samples:
        sample = sample_base if family.kind == COUNTER else family.name + suffix
        lines.append(f"{sample}{_braces(names, values)} {_go_float(value)}\n")
    return "".join(lines)


def _braces(names, values) -> str:
    return "{" + _label_text(names, values) + "}" if names else ""


def _histogram_lines(base: str, key, values, with_sum: bool = True) -> str:
    lines, cumulative = [], 0.0
    for bound, count in zip(list(key.extra) + [math.inf], values[:-1], strict=True):
        cumulative += count
        labels = _braces(key.labelnames + ("le",), key.labelvalues + (_go_float(bound),))
        lines.append(f"{base}_bucket{labels} {_go_float(cumulative)}\n")
    if not with_sum:
        return "".join(lines)
    plain = _braces(key.labelnames, key.labelvalues)
    lines.append(f"{base}_sum{plain} {_go_float(values[-1])}\n{base}_count{plain} {_go_float(cumulative)}\n")
    return "".join(lines)
