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

prometheus_client's standard families are added too (``standard_families``): ``process_*`` for every live
worker, the master and the aggregator (``role`` and ``pid`` labels), ``python_gc_*`` per generation (the
workers' counts since they attached, from the ``rockstar.gc.*`` series their monitor thread writes each
second, and the aggregator's own) and ``python_info``.

Families declared through ``rockstar_mp.prometheus`` may carry what a series key cannot say, in the
``rockstar.metadata{family,type,unit}`` series (never served): a unit, given in OpenMetrics as ``# UNIT``,
and the info type, whose 0-valued series (an ``info()`` replaced by a later one) are left out. A histogram
without finite buckets is that module's ``Summary`` and is served as a summary (``_count``, ``_sum``).

No ``_created`` samples: a merged counter has no single creation time (each worker's began at its attach,
and the retired totals go back to the segment's creation); prometheus_client's multiprocess mode serves none
either, and Prometheus before 2.50 would store each as one more series.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import resource
from typing import Callable, NamedTuple

import psutil

from ..series import (
    COUNTER,
    GAUGE,
    HIDDEN_PREFIX,
    HISTOGRAM,
    INFO_LABEL,
    METADATA_SERIES,
    SUMMARY,
    SUMMARY_SKETCH,
    SeriesKey,
    prometheus_name,
)
from ..sketch import quantile as sketch_quantile
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


def _expand_info(info):
    """An info series with its JSON pairs (``INFO_LABEL``) made labels."""
    key = info.key
    try:
        pairs = [(str(k), str(v)) for k, v in json.loads(key.labelvalues[-1])]
    except (ValueError, TypeError, IndexError):
        pairs = []  # a malformed key loses its info, not the page
    expanded = SeriesKey(key.kind, key.name, key.documentation, key.labelnames[:-1] + tuple(k for k, _ in pairs),
                         key.labelvalues[:-1] + tuple(v for _, v in pairs), key.extra)
    return dataclasses.replace(info, key=expanded)


def _add_sketch_bucket(sketches: dict[tuple, dict[int, float]], key: SeriesKey, count: float) -> None:
    """One bucket of a summary's quantile sketch: ``sketches[(family, labels JSON)][bucket] += count``."""
    try:
        family, labels, bucket = key.labelvalues
        index = int(bucket)
    except ValueError:
        return  # a malformed key loses its bucket, not the page
    buckets = sketches.setdefault((family, labels), {})
    buckets[index] = buckets.get(index, 0.0) + count


def _quantile_targets(meta: "FamilyMeta | None") -> tuple[float, ...]:
    if meta is None or not meta.type.startswith("quantiles="):
        return ()
    try:
        return tuple(float(q) for q in meta.type[len("quantiles="):].split(","))
    except ValueError:
        return ()


def _quantile_lines(base: str, key: SeriesKey, targets: tuple[float, ...], sketches: dict) -> str:
    buckets = sketches.get((base, json.dumps(list(key.labelvalues), separators=(",", ":"))), {})
    lines = []
    for q in targets:
        value = sketch_quantile(buckets, q)
        labels = _braces(key.labelnames + ("quantile",), key.labelvalues + (_go_float(q),))
        lines.append(f"{base}{labels} {_go_float(math.nan if value is None else value)}\n")
    return "".join(lines)


class FamilyMeta(NamedTuple):
    """What ``rockstar_mp.prometheus`` declared about a family beyond its keys."""

    type: str  # "info", or "" when only a unit was declared
    unit: str


def _series_values(snap: Snapshot, pid: int | None, metadata: dict[str, FamilyMeta] | None = None,
                   sketches: dict[tuple, dict[int, float]] | None = None):
    """``(info, values, gauge readings)`` per series: merged totals, or one worker's values when ``pid``
    is set. The workload sketches are left out (they are served as aggregates), and so is the metadata
    series, read into ``metadata`` (Prometheus family name -> ``FamilyMeta``) when given. Keys that differ
    only in documentation, buckets or mode (old and new code side by side after a HUP) are one series:
    counters add up, gauge readings join, a histogram keeps the first bucket layout seen."""
    merged: dict[tuple, list] = {}
    for info, values, readings in _raw_series_values(snap, pid):
        key = info.key
        if key.name.startswith(HIDDEN_PREFIX):
            continue
        if key.name == METADATA_SERIES:
            if metadata is not None and readings and len(key.labelvalues) == 3:
                family, typ, unit = key.labelvalues
                known = metadata.get(family, FamilyMeta("", ""))
                metadata[family] = FamilyMeta(typ or known.type, unit or known.unit)
            continue
        if key.name == SUMMARY_SKETCH:
            if sketches is not None and values is not None:
                _add_sketch_bucket(sketches, key, values[0])
            continue
        if key.labelnames and key.labelnames[-1] == INFO_LABEL:
            info = _expand_info(info)
            key = info.key
            if metadata is not None:
                metadata[prometheus_name(key.name)] = FamilyMeta("info", "")
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
    units: bool  # says ``# UNIT``


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


PROMETHEUS = _TextFormat(_prometheus_counter, _help, lambda bounds, total: True, "", False)
OPENMETRICS = _TextFormat(_openmetrics_counter, _openmetrics_help, _openmetrics_sum, "# EOF\n", True)


def render_prometheus(snap: Snapshot, pid: int | None = None, extra: tuple = ()) -> str:
    """The Prometheus text exposition format 0.0.4, one family per metric name, then ``extra``."""
    return _render_text(snap, pid, PROMETHEUS, extra)


def render_openmetrics(snap: Snapshot, pid: int | None = None, extra: tuple = ()) -> str:
    """OpenMetrics 1.0 text: as ``render_prometheus`` but a counter family is named without ``_total``
    (its samples keep it), HELP also escapes ``"``, and the text ends with ``# EOF``."""
    return _render_text(snap, pid, OPENMETRICS, extra)


def _header(family: str, kind: str, documentation: str, fmt: _TextFormat, meta: FamilyMeta | None) -> str:
    unit = f"# UNIT {family} {meta.unit}\n" if fmt.units and meta is not None and meta.unit else ""
    return f"# HELP {family} {fmt.help(documentation)}\n# TYPE {family} {kind}\n{unit}"


def _render_text(snap: Snapshot, pid: int | None, fmt: _TextFormat, extra: tuple = ()) -> str:
    families: dict[str, list] = {}
    metadata: dict[str, FamilyMeta] = {}
    sketches: dict[tuple, dict[int, float]] = {}
    for info, values, readings in _series_values(snap, pid, metadata, sketches):
        families.setdefault(info.key.name, []).append((info.key, values, readings))
    out: list[str] = []
    for name, members in families.items():
        key0 = members[0][0]
        members = [m for m in members if m[0].kind == key0.kind]  # one kind per family
        base = prometheus_name(name)
        if key0.kind == COUNTER:
            family, sample = fmt.counter_names(base)
            out.append(_header(family, "counter", key0.documentation, fmt, metadata.get(family)))
            for key, values, _ in members:
                out.append(f"{sample}{_braces(key.labelnames, key.labelvalues)} {_go_float(values[0])}\n")
        elif key0.kind == GAUGE:
            meta = metadata.get(base)
            out.append(_header(base, "gauge", key0.documentation, fmt, meta))
            only_set = meta is not None and meta.type == "info"  # an info's replaced series are 0
            for key, _, readings in members:
                for extra_values, value in merge_gauge(key.extra[0], readings):
                    if only_set and not value:
                        continue
                    names = key.labelnames + (("pid",) if extra_values else ())
                    out.append(f"{base}{_braces(names, key.labelvalues + extra_values)} {_go_float(value)}\n")
        elif key0.kind == HISTOGRAM and not key0.extra:  # rockstar_mp.prometheus's Summary
            out.append(_header(base, SUMMARY, key0.documentation, fmt, metadata.get(base)))
            targets = _quantile_targets(metadata.get(base))
            for key, values, _ in members:
                if key.extra:
                    continue  # a histogram's key beside the summary's of the same name: not this family's
                if targets:
                    out.append(_quantile_lines(base, key, targets, sketches))
                plain = _braces(key.labelnames, key.labelvalues)
                out.append(f"{base}_count{plain} {_go_float(values[0])}\n{base}_sum{plain} {_go_float(values[-1])}\n")
        elif key0.kind == HISTOGRAM:
            out.append(_header(base, "histogram", key0.documentation, fmt, metadata.get(base)))
            for key, values, _ in members:
                if len(values) < 3:
                    continue  # a summary's key beside a histogram's of the same name: not this family's
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


# -- prometheus_client's standard families: ProcessCollector, GCCollector, PlatformCollector ---------------

GC_SERIES = {"rockstar.gc.collections": "python_gc_collections",
             "rockstar.gc.collected": "python_gc_objects_collected",
             "rockstar.gc.uncollectable": "python_gc_objects_uncollectable"}
_GC_HELP = {"python_gc_collections": "Number of times this generation was collected",
            "python_gc_objects_collected": "Objects collected during gc",
            "python_gc_objects_uncollectable": "Uncollectable objects found during GC"}
_PROCESS_FAMILIES = (  # (name, kind, help, figure)
    ("process_cpu_seconds", COUNTER, "Total user and system CPU time spent in seconds.", "cpu_seconds"),
    ("process_resident_memory_bytes", GAUGE, "Resident memory size in bytes.", "rss"),
    ("process_virtual_memory_bytes", GAUGE, "Virtual memory size in bytes.", "vms"),
    ("process_open_fds", GAUGE, "Number of open file descriptors.", "open_fds"),
    ("process_max_fds", GAUGE, "Maximum number of open file descriptors.", "max_fds"),
    ("process_start_time_seconds", GAUGE, "Start time of the process since unix epoch in seconds.", "start"),
)
_MAX_FDS: dict[tuple[int, float], int | None] = {}  # (pid, start) -> its RLIMIT_NOFILE, read once per process
_GC_CELLS: dict[int, tuple[tuple, list]] = {}  # id(a parsed catalogue) -> (it, [(local offset, family, generation)])


def _max_fds(pid: int, start: float) -> int | None:
    """A worker's soft RLIMIT_NOFILE: read at its first scrape only (it is not on the per-second path)."""
    key = (pid, start)
    if key not in _MAX_FDS:
        if len(_MAX_FDS) > 4096:
            _MAX_FDS.clear()
        try:
            _MAX_FDS[key] = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)[0]
        except (psutil.Error, OSError, AttributeError):
            _MAX_FDS[key] = None
    return _MAX_FDS[key]


def _process_figures(pid: int) -> dict:
    """The master's or the aggregator's figures, read at the scrape (two processes, a few reads)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            memory, cpu = proc.memory_info(), proc.cpu_times()
            figures = {"rss": memory.rss, "vms": memory.vms, "cpu_seconds": cpu.user + cpu.system,
                       "start": proc.create_time()}
            try:
                figures["open_fds"] = proc.num_fds()
                figures["max_fds"] = proc.rlimit(psutil.RLIMIT_NOFILE)[0] if pid != os.getpid() \
                    else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            except (psutil.Error, OSError):
                pass  # another user's master after a privilege drop: no fds
            return figures
    except psutil.Error:
        return {}


def _worker_gc(snap: Snapshot, worker) -> list:
    """``(family, generation, value)`` of one worker's ``rockstar.gc.*`` series. Which of its entries
    those are is found once per parsed catalogue (workers of the same code share one)."""
    entries = worker.cache.series
    found = _GC_CELLS.get(id(entries))
    if found is None or found[0] is not entries:
        cells = []
        for sid, local in entries:
            key = snap.series[sid].key
            if key.name in GC_SERIES and key.labelvalues and key.kind == COUNTER:
                cells.append((local, GC_SERIES[key.name], key.labelvalues[0]))
        if len(_GC_CELLS) > 256:
            _GC_CELLS.clear()
        found = _GC_CELLS[id(entries)] = (entries, cells)
    return [(family, generation, worker.values[local]) for local, family, generation in found[1]]


def standard_families(snap: Snapshot, procs: dict[int, dict]) -> list[ExtraFamily]:
    """prometheus_client's ``process_*`` (each live worker, from the figures the aggregator refreshes each
    second, ``procs``; the master and the aggregator read now), ``python_gc_*`` (the workers' since attach,
    the aggregator's own) and ``python_info``, labelled ``role`` and ``pid``."""
    rows = []  # (role, pid, figures)
    for worker in snap.workers:
        pid, start = worker.slot.pid, worker.slot.proc_start
        rows.append(("worker", pid, {**procs.get(pid, {}), "start": start, "max_fds": _max_fds(pid, start)}))
    master = os.getppid()
    if master > 1:
        rows.append(("master", master, _process_figures(master)))
    rows.append(("aggregator", os.getpid(), _process_figures(os.getpid())))
    families = [ExtraFamily(name, kind, help_text,
                            [("", ("role", "pid"), (role, str(pid)), figures[field])
                             for role, pid, figures in rows if figures.get(field) is not None])
                for name, kind, help_text, field in _PROCESS_FAMILIES]
    gc_samples: dict[str, list] = {name: [] for name in _GC_HELP}
    for worker in snap.workers:
        for family, generation, value in _worker_gc(snap, worker):
            gc_samples[family].append(("", ("generation", "role", "pid"),
                                       (generation, "worker", str(worker.slot.pid)), value))
    own = str(os.getpid())
    for generation, stats in enumerate(gc.get_stats()):
        for family, field in (("python_gc_collections", "collections"),
                              ("python_gc_objects_collected", "collected"),
                              ("python_gc_objects_uncollectable", "uncollectable")):
            gc_samples[family].append(("", ("generation", "role", "pid"),
                                       (str(generation), "aggregator", own), stats[field]))
    families += [ExtraFamily(name, COUNTER, _GC_HELP[name], samples) for name, samples in gc_samples.items()]
    major, minor, patch = platform.python_version_tuple()
    families.append(ExtraFamily("python_info", GAUGE, "Python platform information", [
        ("", ("implementation", "major", "minor", "patchlevel", "version"),
         (platform.python_implementation(), major, minor, patch, platform.python_version()), 1.0)]))
    return families
