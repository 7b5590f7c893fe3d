"""Metrics history: the aggregator's periodic snapshots in SQLite (``history_view`` serves them over HTTP).

Every ``history_interval`` seconds (the first at once) the tick loop renders the merged counters, gauges
and histogram count/sum into an immutable ``{name: (kind, value)}`` mapping and hands it to one
background thread, which writes it to SQLite (WAL, ``synchronous=NORMAL``, file mode 0600) and deletes
points older than ``history_retention``. Neither the writes nor the reads of the history endpoint
(``history_view.HistoryResource``, through ``HistoryWriter.query``) run on the event loop. A failing
database (full disk, read-only, locked, corrupt) is logged once per distinct error and counted
(``HistoryWriter.errors``, ``history_errors`` in the JSON ``system`` section); the metrics are served
whatever happens to it.

Names are the keys of the JSON ``/metrics`` (``http.requests``, ``http.requests{method="GET"}``); a
histogram contributes ``<name>.count`` and ``<name>.sum`` (labels kept: ``t.sizes.count{route="/"}``).
Beside them (``optimize.memory_rows``, through ``extra_rows``): each live worker's memory,
``rockstar.worker.memory.{rss,uss,pss}{pid="N"}``, also fed to the leak hints (``AggregatorState.trends``),
and the optimization's RSS, USS and PSS before and after summed over the live workers,
``rockstar.optimization.{rss,uss,pss}_{before,after}``.

Schema (``PRAGMA user_version = 1``)::

    series(id INTEGER PRIMARY KEY, name TEXT UNIQUE, kind TEXT)   -- kind: counter, gauge,
                                                                  -- histogram.count, histogram.sum
    points(series_id, ts REAL, value REAL, PRIMARY KEY (series_id, ts)) WITHOUT ROWID
    points_ts ON points(ts)                                       -- for the retention delete
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from .. import safefs
from ..config import MonitoringConfig
from .exposition import json_number, render_json

log = logging.getLogger("rockstar_mp.aggregator")

HISTORY_FILE = "history.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 1.0  # seconds a write waits for a lock held by someone else before it counts as failed
SWEEP_INTERVAL = 600.0  # at most this often, series left without points are forgotten
JOURNAL_SIZE_LIMIT = 4 << 20  # the WAL file is truncated back to this after a checkpoint
MAX_LOGGED = 64  # distinct error messages remembered (each is logged once)
SIDE_FILES = ("-wal", "-shm")  # SQLite's in WAL mode, beside the database

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_ts ON points (ts);
"""

Rows = Mapping[str, tuple]  # name -> (kind, value)


def _suffixed(key: str, suffix: str) -> str:
    """``t.sizes{route="/"}`` + ``.count`` -> ``t.sizes.count{route="/"}`` (metric names have no ``{``)."""
    name, brace, labels = key.partition("{")
    return name + suffix + brace + labels


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def flatten(body: Mapping) -> Rows:
    """The rows one snapshot writes, from ``render_json``'s ``{"counters", "gauges", "histograms"}``.

    NaN and infinite values (rendered as strings) are left out: SQLite and JSON have no place for them.
    """
    rows: dict = {}
    for section, kind in (("counters", "counter"), ("gauges", "gauge")):
        for key, value in body.get(section, {}).items():
            if _finite(value):
                rows[key] = (kind, float(value))
    for key, hist in body.get("histograms", {}).items():
        for part in ("count", "sum"):
            if _finite(hist.get(part)):
                rows[_suffixed(key, "." + part)] = ("histogram." + part, float(hist[part]))
    return MappingProxyType(rows)


def _claim_files(path: str) -> tuple[int, int]:
    """Make the database file and its -wal and -shm ours before SQLite opens them; their identity
    ``(st_dev, st_ino)``. Raises ``safefs.UnsafePath`` if any name is taken by a symlink or a file that
    is not ours, before anything is created (SQLite itself would follow the link or use the file)."""
    for suffix in SIDE_FILES + ("-journal",):
        safefs.check_own_file(path + suffix)
    fd, created = safefs.claim_file(path)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    for suffix in SIDE_FILES:
        if created:  # a WAL left by a deleted database would be replayed into the new one
            safefs.remove_own_file(path + suffix)
        os.close(safefs.claim_file(path + suffix)[0])  # SQLite opens them without O_EXCL: be there first
    return info.st_dev, info.st_ino


class HistoryStore:
    """The SQLite file. Not thread-safe: use it from one thread (``HistoryWriter``'s)."""

    def __init__(self, path: str, retention: float, busy_timeout: float = BUSY_TIMEOUT,
                 sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.path = path
        self.retention = retention
        self.busy_timeout = busy_timeout
        self.sweep_interval = sweep_interval
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file _conn has open
        self._ids: dict[str, int] = {}  # name -> series id, only ids of committed rows
        self._last_sweep = time.monotonic()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        identity = _claim_files(self.path)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            if self._identity_of_path() != identity:
                raise safefs.UnsafePath(f"{self.path} was replaced while being opened")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = identity
        self._ids.clear()
        return conn

    def _identity_of_path(self) -> tuple[int, int] | None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def lost_file(self) -> str | None:
        """``"deleted"`` or ``"replaced"`` if the open database is no longer the file at ``path`` (its
        writes would go nowhere anyone reads); None if it is, or none is open."""
        if self._conn is None:
            return None
        found = self._identity_of_path()
        if found == self._identity:
            return None
        return "deleted" if found is None else "replaced"

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._identity = None
        self._ids.clear()
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def write(self, ts: float, rows: Rows) -> int:
        """One snapshot at ``ts`` (unix seconds), then the retention delete; one transaction.

        Returns the number of points written; raises ``sqlite3.Error``/``OSError`` (nothing is written).
        """
        conn = self._connection()
        new: dict[str, int] = {}
        sweep = False
        conn.execute("BEGIN IMMEDIATE")
        try:
            points = []
            for name, (kind, value) in rows.items():
                sid = self._ids.get(name) or new.get(name)
                if sid is None:
                    conn.execute("INSERT OR IGNORE INTO series (name, kind) VALUES (?, ?)", (name, kind))
                    sid = new[name] = conn.execute("SELECT id FROM series WHERE name = ?",
                                                   (name,)).fetchone()[0]
                points.append((sid, ts, value))
            conn.executemany("INSERT OR REPLACE INTO points (series_id, ts, value) VALUES (?, ?, ?)",
                             points)
            deleted = conn.execute("DELETE FROM points WHERE ts < ?", (ts - self.retention,)).rowcount
            if deleted and time.monotonic() - self._last_sweep >= self.sweep_interval:
                conn.execute("DELETE FROM series WHERE NOT EXISTS "
                             "(SELECT 1 FROM points WHERE points.series_id = series.id)")
                sweep = True
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        if sweep:
            self._last_sweep = time.monotonic()
            self._ids.clear()  # some ids are gone; the rest are looked up again
        else:
            self._ids.update(new)
        return len(points)

    def query(self, name: str, since: float, until: float,
              step: Optional[float] = None) -> Optional[list]:
        """``[[ts, value], ...]`` of ``name`` with ``since <= ts <= until`` in time order, or None for a
        name never recorded (or forgotten). With ``step``, one point per ``step``-second bucket (buckets
        are aligned to multiples of ``step`` since the epoch): the bucket's last point, with its own ts.
        """
        conn = self._connection()
        row = conn.execute("SELECT id FROM series WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        cursor = conn.execute("SELECT ts, value FROM points WHERE series_id = ? AND ts BETWEEN ? AND ? "
                              "ORDER BY ts", (row[0], since, until))
        if step is None:
            return [[ts, json_number(value)] for ts, value in cursor]
        points: list = []
        last_bucket = None
        for ts, value in cursor:  # in Python: SQLite's CAST to INTEGER saturates for a tiny step
            bucket = ts // step
            if math.isinf(bucket):  # a step so small that every point is a bucket of its own
                bucket = ts
            if bucket == last_bucket:
                points[-1] = [ts, json_number(value)]
            else:
                points.append([ts, json_number(value)])
                last_bucket = bucket
        return points


class HistoryWriter:
    """Schedules the snapshots (``maybe_write`` on every tick) and owns the one thread that touches the
    database (writes and the endpoint's reads)."""

    def __init__(self, path: str, interval: float, retention: float, *,
                 busy_timeout: float = BUSY_TIMEOUT, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.store = HistoryStore(path, retention, busy_timeout, sweep_interval)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rockstar-history")
        self.errors = 0  # failed writes
        self.writes = 0  # successful writes
        self._pending: Future | None = None
        self._next_due = 0.0  # monotonic; 0: the first snapshot is written at once
        self._logged: set[str] = set()
        self._failing = False
        self._lock = threading.Lock()  # errors/writes are bumped in the thread, read by the loop
        # more rows for every snapshot, each from a callable given the aggregator's state (the workers'
        # memory, ``AggregatorState.memory_rows``; the dashboard's traffic, ``dashboard.traffic.traffic_rows``)
        self.extra_rows: list[Callable[[Any], Mapping[str, tuple]]] = []

    @classmethod
    def from_config(cls, config: MonitoringConfig, run_dir: Optional[str]) -> Optional["HistoryWriter"]:
        """The writer for the aggregator, or None with ``history_interval=0`` (history off)."""
        if not config.history_interval:
            return None
        path = config.history_path or (os.path.join(run_dir, HISTORY_FILE) if run_dir else None)
        if path is None:
            log.warning("rockstar-mp aggregator: no run directory and no history_path: history is off")
            return None
        return cls(path, config.history_interval, config.history_retention)

    # -- on the loop ---------------------------------------------------------------------------
    def maybe_write(self, state) -> Optional[Future]:
        """Call on every tick: when a snapshot is due, render it and hand it to the thread.

        A snapshot is not handed over while the previous one is still being written (a slow or locked
        database): it is taken on the first tick after that write ends.
        """
        now = time.monotonic()
        if now < self._next_due or (self._pending is not None and not self._pending.done()):
            return None
        self._next_due += self.interval
        if self._next_due <= now:
            self._next_due = now + self.interval
        snap = state.snapshot()
        rows = flatten(render_json(snap))
        if self.extra_rows:
            rows = MappingProxyType({**rows, **{k: v for more in self.extra_rows for k, v in more(state).items()}})
        return self.submit(snap.taken, rows)

    def submit(self, ts: float, rows: Rows) -> Future:
        """Write ``rows`` at ``ts`` in the thread; the future's result is True on success."""
        self._pending = self.executor.submit(self._write, ts, rows)
        return self._pending

    async def query(self, name: str, since: float, until: float, step: Optional[float] = None):
        """``HistoryStore.query`` in the thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.store.query, name, since, until, step)

    def stats(self) -> dict:
        """For the JSON ``system`` section."""
        return {"history_errors": self.errors}

    def close(self) -> None:
        """Finish the pending write, close the database and end the thread."""
        try:
            self.executor.submit(self.store.close)
        except RuntimeError:  # already shut down
            return
        self.executor.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # -- in the thread -------------------------------------------------------------------------
    def _write(self, ts: float, rows: Rows) -> bool:
        lost = self.store.lost_file()
        if lost:  # what was written since it was opened went with it: start a new file at the path
            self._count()
            log.warning("rockstar-mp aggregator: the history file %s was %s while open; writing to a new "
                        "file at that path from now on (counted in history_errors)", self.path, lost)
            self.store.close()
        try:
            self.store.write(ts, rows)
        except Exception as exc:  # sqlite3.Error, OSError; anything else is counted too
            if not isinstance(exc, sqlite3.OperationalError):
                self.store.close()  # e.g. a corrupt or replaced file: open it afresh next time
            self._failing = True
            self._count()
            self._log_once(f"{type(exc).__name__}: {exc}")
            return False
        with self._lock:
            self.writes += 1
        if self._failing:
            self._failing = False
            log.info("rockstar-mp aggregator: history writes to %s work again", self.path)
        return True

    def _count(self) -> None:
        with self._lock:
            self.errors += 1

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            if len(self._logged) < MAX_LOGGED:
                self._logged.add(message)
            log.warning("rockstar-mp aggregator: history write to %s failed (%s); metrics are still "
                        "served; each distinct error is logged once, all are counted in history_errors",
                        self.path, message)

