"""JSON views beside the metrics: ``/workload``, ``/workers``, ``/logs`` and the spec's ``/snmp``.

All are served on the metrics port, behind the same bearer auth, from the state the tick already
computed (the rings are drained on the tick, not on a request).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import falcon
import falcon.asgi

from ..segment import STATE_NAMES, text
from ..segment.layout import Body, Header
from ..sketch import RELATIVE_ERROR
from . import params
from .exposition import ExtraFamily, standard_families
from .state import AggregatorState
from .workload import (
    BUCKET_SERIES,
    DIMENSIONS,
    LEVELS,
    aggregates,
    latency_families,
    sketch_cell,
    sketch_totals,
    summarize,
)

MAX_LIMIT = 10_000


def _only(req, allowed: tuple, state: AggregatorState | None = None) -> None:
    """Refuse unknown or repeated parameters; with ``state``, 404 while the metrics endpoint (and with
    it every view on its port) is switched off."""
    if state is not None and not state.config.enable_metrics:
        raise falcon.HTTPNotFound(title="404 Not Found", description="the metrics endpoint is off")
    params.only(req, allowed)


def _send(resp, body: dict) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(body)


class WorkloadResource:
    """``GET /workload[?window=S][&route=R][&tenant=T][&status=2xx]``: totals, average and p50/p95/p99
    latency overall and by route, status class and tenant, over the lifetime or the last S seconds."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        _only(req, ("window", "route", "tenant", "status"), self._state)
        state = self._state
        window = params.number(req, "window", minimum=1.0, maximum=state.config.window_seconds)
        filters = {dim: value for dim in DIMENSIONS if (value := params.text(req, dim)) is not None}
        _send(resp, workload_json(state, window, filters))

    on_head = on_get


def workload_json(state: AggregatorState, window: float | None = None, filters: dict | None = None) -> dict:
    snap = state.snapshot()
    totals = sketch_totals(snap)
    baseline, since = None, None
    if window is not None:
        since, baseline = state.window.baseline(time.time(), window)
    by = aggregates(snap, totals, baseline, value_filter=filters or None)
    overall = summarize(*_overall_sketch(snap, totals, baseline, filters or {}))
    return {"timestamp": snap.taken, "window_seconds": window,
            "since": since if window is not None else None,
            **{k.replace("requests", "total_requests"): v for k, v in overall.items()},
            "by_route": by["route"], "by_status": by["status"], "by_tenant": by["tenant"],
            "relative_error": RELATIVE_ERROR, "records_dropped": state.rings.records_dropped}


def _overall_sketch(snap, totals: dict, baseline: dict | None, filters: dict) -> tuple[dict, float]:
    """The whole server's sketch: the status-class sketches (each request has exactly one) merged,
    or, with a filter, the sketches of the filtered value."""
    dim, value = next(iter(filters.items()), ("status", None))
    merged: dict[int, float] = {}
    seconds = 0.0
    baseline = baseline or {}
    for key, total in totals.items():
        key_dim, key_value, bucket = sketch_cell(snap, key)
        if key_dim != dim or (value is not None and key_value != value):
            continue
        amount = total - baseline.get(key, 0.0)
        if bucket is not None:
            merged[bucket] = merged.get(bucket, 0.0) + amount
        else:
            seconds += amount
    return {k: v for k, v in merged.items() if v > 0}, seconds


class WorkersResource:
    """``GET /workers``: one entry per live worker, with its in-flight request, process figures and
    optimizations (``workers``), and the workers that exited and were folded in, with when (``folded``,
    the last ``merge.RECENT_FOLDS``)."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        _only(req, (), self._state)
        state = self._state
        _send(resp, {"workers": workers_json(state),
                     "memory_recycles": Header.memory_recycles.get(state.segment.buf),
                     "folded": list(state.merger.recently_folded)})

    on_head = on_get


def workers_json(state: AggregatorState) -> list[dict]:
    snap = state.snapshot()
    buf, geometry = state.segment.buf, state.segment.geometry
    now = time.time()
    slopes = state.trends.slopes()
    out = []
    for worker in snap.workers:
        slot = worker.slot
        body = geometry.slab_offset(slot.slab)
        proc = state.procs.stats.get(slot.pid, {})
        started = Body.inflight_started.get(buf, body)
        in_flight = Body.inflight_count.get(buf, body)
        out.append({
            "pid": slot.pid, "age": slot.age, "slab": slot.slab, "state": STATE_NAMES[slot.state],
            "started": slot.proc_start, "requests": _worker_requests(snap, worker),
            "in_flight": in_flight,
            "in_flight_request": {"method": text(Body.inflight_method.get(buf, body)),
                                  "path": text(Body.inflight_path.get(buf, body)),
                                  "seconds": round(max(0.0, now - started), 3)} if in_flight and started else None,
            "rss": proc.get("rss"), "uss": proc.get("uss"), "pss": proc.get("pss"),
            "cpu_percent": proc.get("cpu_percent"), "cpu_seconds": proc.get("cpu_seconds"),
            "threads": proc.get("threads"), "open_fds": proc.get("open_fds"),
            "optimizations": Body.optimize_count.get(buf, body),
            "last_optimization": Body.optimize_last.get(buf, body) or None,
            "heartbeat": worker.heartbeat, "heartbeat_age": round(now - worker.heartbeat, 3),
            "stuck": slot.pid in state.liveness.stuck,
            "recycling": Body.recycle_memory.get(buf, body) or None,  # bytes over max_worker_memory
            "memory_slope_mib_per_hour": _rounded(slopes.get(slot.pid)),
            "series": worker.cache.parsed, "catalogue_full": worker.catalogue_full})
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _worker_requests(snap, worker) -> int:
    """Requests this worker recorded (its status-class sketches), else the responses it counted."""
    recorded = counted = 0.0
    for sid, local in worker.cache.series:
        info = snap.series[sid]
        key = info.key
        if key.name == BUCKET_SERIES and key.labelvalues[0] == "status":
            recorded += sum(worker.values[local:local + info.n])
        elif key.name == "http.requests":
            counted += worker.values[local]
    return int(recorded or counted)


class LogsResource:
    """``GET /logs[?level=warning][&since=UNIX][&limit=N]``: recent log records of every worker,
    merged by time, oldest first."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        _only(req, ("level", "since", "limit"), self._state)
        level = _level(req)
        since = params.number(req, "since", 0.0, minimum=0.0)
        limit = params.integer(req, "limit", 100, minimum=1, maximum=MAX_LIMIT)
        rings = self._state.fresh_rings()
        matching = [r for r in rings.logs if r.level >= level and r.time >= since]
        _send(resp, {"logs": [r.to_json() for r in matching[-limit:]], "dropped": rings.logs_dropped})

    on_head = on_get


def _level(req) -> int:
    """``?level=``: a level name (``warning``) or number (``30``); debug when absent."""
    raw = params.text(req, "level") or "debug"
    level = LEVELS.get(raw.lower(), params.parse_integer(raw))
    if level is None:
        raise params.bad_request(f"level must be one of {list(LEVELS)} or an integer "
                                 f"0..{params.INT32_MAX}, got {params.shown(raw)}")
    return level


class SnmpViewResource:
    """The spec's ``GET /snmp`` (HTTP, not SNMP): needs ``X-SNMP-Community: <snmp_community>``.

    ``timestamp``, ``system_info``, ``workload_metrics`` (recent records, newest first, ``?limit=``)
    and ``aggregated_metrics``.
    """

    def __init__(self, state: AggregatorState) -> None:
        self._state = state

    async def on_get(self, req, resp) -> None:
        _only(req, ("limit",), self._state)
        given = (req.get_header("X-SNMP-Community") or "").encode()
        expected = self._state.config.snmp_community.encode()  # runtime control may change it
        if not hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()):
            raise falcon.HTTPForbidden(title="403 Forbidden",
                                       description="send the community as 'X-SNMP-Community: <community>'")
        limit = params.integer(req, "limit", 100, minimum=1, maximum=MAX_LIMIT)
        state = self._state
        records = list(state.fresh_rings().records)[-limit:][::-1]  # before the snapshot (fresh_rings)
        snap = state.snapshot()
        system = state.system_json(snap)
        workload = workload_json(state)
        _send(resp, {
            "timestamp": datetime.fromtimestamp(snap.taken, timezone.utc).isoformat().replace("+00:00", "Z"),
            "system_info": {k: system[k] for k in ("num_cpu", "num_goroutine", "memory_alloc")},
            "workload_metrics": [r.to_json() for r in records],
            "aggregated_metrics": {
                "total_requests": workload["total_requests"],
                "avg_duration_ms": workload["avg_duration_ms"],
                "p50_duration_ms": workload["p50_ms"], "p95_duration_ms": workload["p95_ms"],
                "p99_duration_ms": workload["p99_ms"],
                "error_requests": workload["by_status"].get("5xx", {}).get("requests", 0),
                "records_dropped": workload["records_dropped"]}})

    on_head = on_get


def add_views(app: falcon.asgi.App, state: AggregatorState) -> None:
    app.add_route("/workload", WorkloadResource(state))
    app.add_route("/workers", WorkersResource(state))
    app.add_route("/logs", LogsResource(state))
    app.add_route("/snmp", SnmpViewResource(state))


def exported_families(state: AggregatorState) -> tuple:
    """What the text formats add to the workers' own series: per-worker process figures (``pid``
    label), the server's figures, and the workload aggregates as summaries per route, status class and
    tenant, over the lifetime and the sliding window (``workload.latency_families``)."""
    snap = state.snapshot()
    pids = [w.slot.pid for w in snap.workers]
    procs = [state.procs.stats.get(pid, {}) for pid in pids]

    def per_worker(field: str) -> list:
        return [("", ("pid",), (str(pid),), p[field]) for pid, p in zip(pids, procs, strict=True)
                if p.get(field) is not None]

    system = state.system_json(snap)
    families = [
        ExtraFamily("rockstar_worker_resident_memory_bytes", "gauge", "Resident memory of each worker",
                    per_worker("rss")),
        ExtraFamily("rockstar_worker_unique_memory_bytes", "gauge", "USS of each worker (private pages)",
                    per_worker("uss")),
        ExtraFamily("rockstar_worker_cpu_seconds", "counter", "CPU seconds used by each worker",
                    per_worker("cpu_seconds")),
        ExtraFamily("rockstar_worker_threads", "gauge", "Threads in each worker", per_worker("threads")),
        ExtraFamily("rockstar_worker_open_fds", "gauge", "Open file descriptors of each worker",
                    per_worker("open_fds")),
        ExtraFamily("rockstar_workers_live", "gauge", "Live workers", [("", (), (), len(pids))]),
        ExtraFamily("rockstar_workers_folded", "counter", "Workers that exited and were folded in",
                    [("", (), (), snap.workers_folded)]),
        ExtraFamily("rockstar_workers_stuck", "gauge", "Live workers whose heartbeat is older than stuck_after",
                    [("", (), (), system["workers_stuck"])]),
        ExtraFamily("rockstar_workers_stuck_episodes", "counter",
                    "Times a worker became stuck (since the aggregator started)",
                    [("", (), (), system["workers_stuck_episodes"])]),
        ExtraFamily("rockstar_workload_records_dropped", "counter",
                    "Workload records lost to ring overflow", [("", (), (), system["records_dropped"])]),
    ]
    optimized = state.optimization.workers()
    families += [
        ExtraFamily("rockstar_worker_optimizations", "counter", "Garbage-collection optimizations run",
                    [("", ("pid",), (str(w.pid),), w.optimization_count) for w in optimized]),
        ExtraFamily("rockstar_worker_gc_pause_seconds", "gauge", "Duration of the last optimization",
                    [("", ("pid",), (str(w.pid),), w.seconds) for w in optimized if w.optimization_count]),
        ExtraFamily("rockstar_worker_memory_freed_bytes", "gauge", "RSS freed by the last optimization",
                    [("", ("pid",), (str(w.pid),), w.memory_freed) for w in optimized if w.optimization_count]),
    ]
    families += latency_families(snap, state.window)
    families += health_families(state, system)
    families += standard_families(snap, state.procs.stats)
    return tuple(families)


def health_families(state: AggregatorState, system: dict) -> list[ExtraFamily]:
    """What the alert rules and the dashboard watch beside the workers' series: aggregator restarts,
    requests recorded under ``other`` for want of room, the SNMP agent, and the remote write's counts."""
    one = ("", (), ())
    snmp = state.snmp
    families = [
        ExtraFamily("rockstar_aggregator_starts", "counter", "Aggregators started for this segment (restarts + 1)",
                    [(*one, system["aggregator_starts"])]),
        ExtraFamily("rockstar_dimension_overflow", "counter",
                    "Requests recorded under other (or a neighbouring latency bucket) for want of room",
                    [("", ("dimension",), (dim,), n) for dim, n in system["dimension_overflow"].items()]),
        ExtraFamily("rockstar_snmp_up", "gauge", "1 while the SNMP agent serves",
                    [(*one, 1 if snmp is not None and snmp.sock is not None else 0)]),
    ]
    if snmp is not None:
        families += [
            ExtraFamily("rockstar_snmp_requests", "counter", "SNMP requests answered",
                        [(*one, snmp.counts.requests)]),
            ExtraFamily("rockstar_snmp_refused", "counter", "SNMP messages refused, by reason",
                        [("", ("reason",), (reason,), n) for reason, n in snmp.bad_counts().items()]),
        ]
    if state.remote_write is not None:
        families += state.remote_write.families()
    return families
