"""Builds the agent's ``View`` (``tree.py``) from ``AggregatorState``.

A ``View`` is rebuilt at most every ``snapshot_max_age`` seconds, and only when a request comes; a rebuild
costs a few milliseconds even with 1,000 records. Record and log rows keep stable, growing sequence numbers.
"""
from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable

from ... import __version__
from ...series import COUNTER, GAUGE, HIDDEN_PREFIX
from ..exposition import merge_gauge
from ..state import AggregatorState
from ..views import workers_json, workload_json
from . import mibdef
from .tree import (
    COUNTER32,
    COUNTER64,
    GAUGE32,
    I32,
    INT,
    OID,
    STRING,
    TICKS,
    U32,
    UINT,
    Scalars,
    Sequencer,
    Table,
    View,
    date_and_time,
    i32,
    kib,
    kind_of,
    text,
    u32,
    u64,
    us,
)

SYSTEM = (1, 3, 6, 1, 2, 1, 1)
STATE_CODES = {"free": 1, "live": 2, "retired": 3}


def _labels(key) -> str:
    # not strict: keys are decoded from what workers wrote, unchecked; a malformed one loses labels, not the walk
    return ",".join(f'{n}="{v}"' for n, v in zip(key.labelnames, key.labelvalues, strict=False))


def _number_text(value: float) -> str:
    return str(int(value)) if value == value and not math.isinf(value) and value.is_integer() else repr(value)


def _columns(table: mibdef.Table) -> list:
    return [(c.sub, kind_of(c.syntax)) for c in table.columns if c.access != "not-accessible"]


def _record_row(r) -> tuple:
    return (date_and_time(r.start), u32(round(r.duration * 1e6)), i32(r.pid), text(r.method), text(r.route),
            i32(r.status), text(r.tenant), text(r.request_id), u32(r.response_bytes))


def _log_row(r) -> tuple:
    return date_and_time(r.time), i32(r.level), i32(r.pid), text(r.logger), text(r.message)


class ViewBuilder:
    """Builds ``View``s from the aggregator's state; remembers the stable numbers it handed out."""

    def __init__(self, state: AggregatorState, base: tuple, counters: Callable[[], dict]) -> None:
        self.state = state
        self.base = base
        self.counters = counters  # () -> {server scalar sub: (kind, value)} from the agent (bad requests...)
        self.records = Sequencer()
        self.logs = Sequencer()
        self.routes: dict[str, int] = {}
        self.tenants: dict[str, int] = {}
        self.started = time.monotonic()
        self.hostname = socket.gethostname()

    def uptime_ticks(self) -> int:
        return int((time.monotonic() - self.started) * 100) % (U32 + 1)

    @staticmethod
    def _cached(sequencer: "Sequencer", items, make) -> list:
        """Rows of an append-only deque; a record's row is made once and kept while it is served."""
        cache = sequencer.rows
        rows = [(seq, cache.get(seq) or make(item)) for seq, item in sequencer.numbered(items)]
        sequencer.rows = dict(rows)
        return [((seq % (I32 + 1) or 1,), row) for seq, row in rows]

    def _optimization_rows(self) -> list:
        """Per-worker optimization figures (segment reads), when the optimization feature is present."""
        schedule = getattr(self.state, "optimization", None)
        try:
            workers = schedule.workers() if schedule is not None else []
            return [((w.pid,), (date_and_time(w.last_optimization), w.optimization_count % 2 ** 32,
                                kib(w.memory_before), kib(w.memory_after), kib(w.memory_freed),
                                kib(w.uss_before), kib(w.uss_after), kib(w.pss_before), kib(w.pss_after),
                                kib(w.trimmed)))
                    for w in workers if 0 < w.pid <= I32]
        except Exception:  # a shape we do not know: serve the table empty rather than fail the view
            return []

    def _table(self, table: mibdef.Table, rows: list) -> Table:
        return Table(self.base + (mibdef.OBJECTS, table.sub, 1), _columns(table), rows)

    def build(self) -> View:
        state = self.state
        rings = state.fresh_rings()  # before the snapshot (see fresh_rings)
        snap = state.snapshot()
        system = state.system_json(snap)
        workload = workload_json(state)
        workers = workers_json(state)
        objects = self.base + (mibdef.OBJECTS,)
        nodes: list[Scalars | Table] = [Scalars(SYSTEM, {
            1: (STRING, text(f"rockstar-mp {__version__} aggregator (pid {os.getpid()}): monitoring of a "
                             "pre-fork Python server")),
            2: (OID, self.base),
            3: (TICKS, self.uptime_ticks()),
            4: (STRING, text(state.config.snmp_contact)),
            5: (STRING, text(self.hostname)),
            6: (STRING, text(state.config.snmp_location)),
            7: (INT, 72),
        })]
        errors = workload["by_status"].get("5xx", {}).get("requests", 0)
        server = {
            1: (STRING, text(__version__)),
            2: (TICKS, u32(system["uptime_seconds"] * 100)),
            3: (GAUGE32, u32(system["workers_live"])),
            4: (COUNTER64, u64(workload["total_requests"])),
            5: (GAUGE32, us(workload["avg_duration_ms"])),
            6: (COUNTER64, u64(errors)),
            7: (COUNTER64, u64(system["records_dropped"])),
            8: (INT, i32(system["num_cpu"] or 0)),
            9: (GAUGE32, u32(system["num_goroutine"])),
            10: (GAUGE32, kib(system["memory_rss"])),
            11: (COUNTER64, u64(system["num_gc"])),
            12: (COUNTER64, u64(system["logs_dropped"])),
            13: (COUNTER64, u64(system["workers_folded"])),
            14: (UINT, u32(system["aggregator_starts"])),
            15: (GAUGE32, us(workload["p50_ms"])),
            16: (GAUGE32, us(workload["p95_ms"])),
            17: (GAUGE32, us(workload["p99_ms"])),
            23: (COUNTER32, system["memory_recycles"] % (U32 + 1)),
        }
        server.update(self.counters())
        nodes.append(Scalars(objects + (mibdef.SERVER_SUB,), server))

        rows: list[tuple[tuple, tuple]] = []  # (index, values by column)
        for w in workers:
            if not 0 < w["pid"] <= I32:
                continue
            rows.append(((w["pid"],), (
                u32(w["age"]), STATE_CODES.get(w["state"], 2), u64(w["requests"]), kib(w["rss"]),
                u32(round((w["cpu_percent"] or 0.0) * 100)), u64(round((w["cpu_seconds"] or 0.0) * 100)),
                u32(round(max(0.0, w["heartbeat_age"] or 0.0) * 1000)), u32(w["threads"]),
                i32(w["slab"]), u32(w["in_flight"]), i32(round((w["memory_slope_mib_per_hour"] or 0.0) * 1024)),
                kib(w["recycling"] or 0))))
        nodes.append(self._table(mibdef.WORKERS, rows))

        counters, gauges = [], []
        for sid, info in enumerate(snap.series):
            key = info.key
            if key.name.startswith(HIDDEN_PREFIX):
                continue
            if key.kind == COUNTER and info.cell >= 0:
                value = snap.totals[info.cell]
                counters.append(((sid + 1,), (text(key.name), text(_labels(key)), u64(value),
                                              text(_number_text(value)))))
            elif key.kind == GAUGE and sid in snap.gauges:
                for extra, value in merge_gauge(key.extra[0], snap.gauges[sid]):
                    pid = int(extra[0]) if extra else 0
                    gauges.append(((sid + 1, pid), (text(key.name), text(_labels(key)), i32(value),
                                                    text(_number_text(value)))))
        nodes.append(self._table(mibdef.COUNTERS, counters))
        nodes.append(self._table(mibdef.GAUGES, gauges))

        rows = self._cached(self.records, rings.records, _record_row)
        nodes.append(self._table(mibdef.RECORDS, rows))

        for table, values, ids in ((mibdef.ROUTES, workload["by_route"], self.routes),
                                   (mibdef.TENANTS, workload["by_tenant"], self.tenants)):
            rows = []
            for name, agg in values.items():
                index = ids.get(name)
                if index is None:
                    index = ids[name] = len(ids) + 1
                rows.append(((index,), (text(name), u64(agg["requests"]), us(agg["avg_duration_ms"]),
                                        us(agg["p50_ms"]), us(agg["p95_ms"]), us(agg["p99_ms"]))))
            nodes.append(self._table(table, rows))

        rows = self._cached(self.logs, rings.logs, _log_row)
        nodes.append(self._table(mibdef.LOGS, rows))
        nodes.append(self._table(mibdef.OPTIMIZATION, self._optimization_rows()))
        return View(nodes, time.monotonic(), snap)
