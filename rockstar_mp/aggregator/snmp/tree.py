"""The OID tree the agent serves: one immutable ``View`` of every served OID, and the value encoders.

A ``View`` holds ``Scalars`` and ``Table`` nodes; a request reads it with bisect and dict look-ups and no
other work. Values stay plain Python until a response needs them (``encode``), so building one is cheap
(``build.py`` makes them from the aggregator's state).

Lexicographic order: nodes are sorted by prefix and never overlap; a table's OIDs go column by column,
then by index, and its rows are sorted by index tuple, which is the OID order of the instances.
"""
from __future__ import annotations

import math
import struct
from bisect import bisect_right
from datetime import datetime, timezone

# Type codes of the values (encoded by ber.py).
INT, UINT, GAUGE32, COUNTER32, COUNTER64, TICKS, STRING, OID = range(8)
_KIND = {"Integer32": INT, "INTEGER": INT, "Unsigned32": UINT, "Gauge32": GAUGE32, "Counter32": COUNTER32,
         "Counter64": COUNTER64, "TimeTicks": TICKS, "DisplayString": STRING, "DateAndTime": STRING}
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
