"""The agent's view: one immutable ``View`` of every served OID, built from ``AggregatorState``.

A ``View`` is rebuilt at most every ``snapshot_max_age`` seconds, and only when a request comes; a
request reads it with bisect and dict look-ups and no other work. Values stay plain Python until a
response needs them (``encode``), so a rebuild costs a few milliseconds even with 1,000 records.

Lexicographic order: nodes are sorted by prefix and never overlap; a table's OIDs go column by column,
then by index, and its rows are sorted by index tuple, which is the OID order of the instances.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import time
from bisect import bisect_right
from collections.abc import Callable
from datetime import datetime, timezone

from ... import __version__
from ...series import COUNTER, GAUGE, HIDDEN_PREFIX
from ..exposition import merge_gauge
from ..state import AggregatorState
from ..views import workers_json, workload_json
from . import mibdef

# Type codes of the values (encoded by ber.py).
INT, UINT, GAUGE32, COUNTER32, COUNTER64, TICKS, STRING, OID = range(8)
_KIND = {"Integer32": INT, "INTEGER": INT, "Unsigned32": UINT, "Gauge32": GAUGE32, "Counter32": COUNTER32,
         "Counter64": COUNTER64, "TimeTicks": TICKS, "DisplayString": STRING, "DateAndTime": STRING}
SYSTEM = (1, 3, 6, 1, 2, 1, 1)
STATE_CODES = {"free": 1, "live": 2, "retired": 3}
U32 = 2 ** 32 - 1
I32 = 2 ** 31 - 1


def kind_of(syntax: str) -> int:
    return _KIND[syntax.split(" ")[0]]


def text(value, limit: int = 255) -> bytes:
    """A DisplayString: UTF-8, cut at ``limit`` bytes without splitting a character."""
    raw = ("" if value is None else str(value)).encode("utf-8", "replace")
    if len(raw) > limit:
        raw = raw[:limit].decode("utf-8", "ignore").encode()
    return raw


def date_and_time(when: float | None) -> bytes:
    """SNMPv2-TC DateAndTime, 11 octets, UTC."""
    if not when or not math.isfinite(when):
        when = 0.0
    t = datetime.fromtimestamp(when, timezone.utc)
    return struct.pack(">HBBBBBBcBB", t.year, t.month, t.day, t.hour, t.minute, t.second,
                       t.microsecond // 100000, b"+", 0, 0)


def u32(value) -> int:
    if value is None or value != value:
        return 0
    return max(0, min(U32, int(value)))


def i32(value) -> int:
    if value is None or value != value or math.isinf(value):
        return 0
    return max(-I32 - 1, min(I32, int(round(value))))


def u64(value) -> int:
    if value is None or value != value or math.isinf(value):
        return 0
    return max(0, min(2 ** 64 - 1, int(value)))


def us(ms) -> int:
    """Milliseconds (float or None) to whole microseconds for a Gauge32."""
    return 0 if ms is None else u32(round(ms * 1000))


def kib(nbytes) -> int:
    return 0 if nbytes is None else u32(nbytes // 1024)


class Scalars:
    """Scalars under one prefix: ``{sub: (kind, value)}``, instances ``prefix.sub.0``."""

    def __init__(self, prefix: tuple, values: dict) -> None:
        self.prefix = prefix
        self.values = values
        self.subs = sorted(values)
        self.keys = [(s, 0) for s in self.subs]

    def get(self, rel: tuple):
        if len(rel) == 2 and rel[1] == 0:
            return self.values.get(rel[0])
        return None

    def exists(self, rel: tuple) -> bool:  # the object (not necessarily the instance) exists
        return bool(rel) and rel[0] in self.values

    def next(self, rel: tuple):
        i = bisect_right(self.keys, rel)
        if i < len(self.keys):
            sub = self.subs[i]
            return self.prefix + (sub, 0), self.values[sub]
        return None

    def after(self, rel: tuple):
        """Every instance after ``rel``, in order."""
        for sub in self.subs[bisect_right(self.keys, rel):]:
            yield self.prefix + (sub, 0), self.values[sub]


class Table:
    """A conceptual table: ``prefix`` is the entry OID; columns ``[(sub, kind)]``; rows sorted by index."""

    def __init__(self, prefix: tuple, columns: list, rows: list) -> None:
        self.prefix = prefix
        self.cols = [sub for sub, _ in columns]
        self.kinds = [kind for _, kind in columns]
        rows.sort(key=lambda r: r[0])
        self.keys = [r[0] for r in rows]
        self.rows = [r[1] for r in rows]  # values by column position
        self._pos: dict[tuple, int] | None = None  # row position by index, built on first use

    def get(self, rel: tuple):
        if len(rel) < 2:
            return None
        try:
            c = self.cols.index(rel[0])
        except ValueError:
            return None
        if self._pos is None:
            self._pos = {k: i for i, k in enumerate(self.keys)}
        i = self._pos.get(rel[1:])
        return None if i is None else (self.kinds[c], self.rows[i][c])

    def exists(self, rel: tuple) -> bool:
        return bool(rel) and rel[0] in self.cols

    def next(self, rel: tuple):
        if not self.keys:
            return None
        first = rel[0] if rel else -1
        for c, col in enumerate(self.cols):
            if col < first:
                continue
            i = bisect_right(self.keys, rel[1:]) if col == first else 0
            if i < len(self.keys):
                return self.prefix + (col,) + self.keys[i], (self.kinds[c], self.rows[i][c])
        return None

    def after(self, rel: tuple):
        """Every instance after ``rel``, in order (column by column, rows by index)."""
        if not self.keys:
            return
        first = rel[0] if rel else -1
        keys, rows = self.keys, self.rows
        for c, col in enumerate(self.cols):
            if col < first:
                continue
            prefix, kind = self.prefix + (col,), self.kinds[c]
            for i in range(bisect_right(keys, rel[1:]) if col == first else 0, len(keys)):
                yield prefix + keys[i], (kind, rows[i][c])


class View:
    """Every served OID. ``get(oid)`` -> (kind, value) | None; ``next(oid)`` -> (oid, (kind, value)) | None;
    ``exists(oid)``: is there an object (for noSuchObject vs noSuchInstance)."""

    def __init__(self, nodes: list, built: float, snapshot=None) -> None:
        self.snapshot = snapshot  # the merge it was built from
        nodes.sort(key=lambda n: n.prefix)
        self.nodes = nodes
        self.prefixes = [n.prefix for n in nodes]
        self.built = built

    def _node(self, oid: tuple):
        for node in self.nodes:
            n = len(node.prefix)
            if oid[:n] == node.prefix:
                return node, oid[n:]
        return None, None

    def get(self, oid: tuple):
        node, rel = self._node(oid)
        return None if node is None else node.get(rel)

    def exists(self, oid: tuple) -> bool:
        node, rel = self._node(oid)
        return node is not None and node.exists(rel)

    def next(self, oid: tuple):
        for node in self.nodes:
            prefix = node.prefix
            if oid < prefix:
                found = node.next(())
            elif oid[:len(prefix)] == prefix:
                found = node.next(oid[len(prefix):])
            else:
                continue  # the whole node is before oid
            if found is not None:
                return found
        return None


    def after(self, oid: tuple):
        """Every OID after ``oid`` with its value, in order (GETBULK with one repeater walks this)."""
        for node in self.nodes:
            prefix = node.prefix
            if oid < prefix:
                yield from node.after(())
            elif oid[:len(prefix)] == prefix:
                yield from node.after(oid[len(prefix):])


class Sequencer:
    """Stable, growing sequence numbers for the records in an append-only bounded deque."""

    def __init__(self) -> None:
        self.count = 0  # records seen so far
        self.rows: dict[int, tuple] = {}  # sequence number -> row, for the records served now
        self._last = None

    def numbered(self, items) -> list:
        """``[(sequence number, item)]`` for the deque's items, oldest first."""
        items = list(items)
        if items:
            new = len(items)
            if self._last is not None:
                for back, item in enumerate(reversed(items)):
                    if item is self._last:
                        new = back
                        break
            self.count += new
            self._last = items[-1]
        first = self.count - len(items) + 1
        return [(first + i, item) for i, item in enumerate(items)]


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
                                kib(w.memory_before), kib(w.memory_after), kib(w.memory_freed)))
                    for w in workers if 0 < w.pid <= I32]
        except Exception:  # a shape we do not know: serve the table empty rather than fail the view
            return []

    def _table(self, table: mibdef.Table, rows: list) -> Table:
        return Table(self.base + (mibdef.OBJECTS, table.sub, 1), _columns(table), rows)

    def build(self) -> View:
        state = self.state
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
                i32(w["slab"]), u32(w["in_flight"]))))
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

        rows = self._cached(self.records, state.rings.records, _record_row)
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

        rows = self._cached(self.logs, state.rings.logs, _log_row)
        nodes.append(self._table(mibdef.LOGS, rows))
        nodes.append(self._table(mibdef.OPTIMIZATION, self._optimization_rows()))
        return View(nodes, time.monotonic(), snap)
