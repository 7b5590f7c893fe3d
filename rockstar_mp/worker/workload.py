"""Workload recording in the worker: one record per request, and latency sketches by route, status
class and tenant.

The sketches are counters in the slab (``rockstar.workload.bucket{dim,value,bucket}`` and
``rockstar.workload.seconds{dim,value}``), so they are exact, merge across workers and survive a worker's
death like any counter. The records go to the slab's ring (the aggregator keeps the most recent ones);
a ring that overflows before the aggregator drains it loses its oldest records, counted as dropped.

Front ends: ``rockstar_mp.worker.falcon.WorkloadMiddleware`` (Falcon, with route templates) and
``rockstar_mp.worker.wsgi.MetricsMiddleware(app, workload=True)`` (any WSGI app).
"""
from __future__ import annotations

import itertools
import os
import re
import time

from ..metrics import Counter
from ..segment import CatalogueFull, RingWriter, fit
from ..segment.layout import Body
from ..sketch import bucket_index

MAX_VALUES_PER_DIMENSION = 200  # distinct routes (or tenants) per worker; more become "other"
OTHER = "other"
STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}

BUCKETS = Counter("rockstar.workload.bucket", "Requests by latency sketch bucket",
                  ["dim", "value", "bucket"])
SECONDS = Counter("rockstar.workload.seconds", "Seconds spent serving requests", ["dim", "value"])

_ID_SEGMENT = re.compile(r"/(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|[0-9a-fA-F]{16,})(?=/|$)")


def template_path(path: str) -> str:
    """A route template for a raw path when the framework gives none: ids become ``{id}``."""
    return _ID_SEGMENT.sub("/{id}", path) or "/"


class _Combination:
    """The cells one (route, status class, tenant) writes: a sum per dimension, and per latency bucket
    the three bucket counters. Cached, so a request writes its six cells without a lookup by label."""

    __slots__ = ("sums", "buckets", "values")

    def __init__(self, values: tuple) -> None:
        self.values = values  # ((dim, value), ...) for route, status and tenant
        self.sums = [_cell(SECONDS.labels(dim, value)) for dim, value in values]
        self.buckets: dict[int, list] = {}

    def bucket(self, index: int) -> list:
        cells = self.buckets.get(index)
        if cells is None:
            cells = self.buckets[index] = [_cell(BUCKETS.labels(dim, value, index)) for dim, value in self.values]
        return cells


def _cell(series) -> tuple:
    return series._vals, series._idx


class WorkloadRecorder:
    """Records requests of this process (``RECORDER`` below is the one every middleware uses).

    On the request path: everything that can be is cached (the six cells of a route/status/tenant
    combination, the encoded strings, the pid), so a record is a few stores and one ring append.
    """

    def __init__(self) -> None:
        self.on_idle = None  # called when the last in-flight request is done (pending optimization)
        self._seen: dict[str, set] = {"route": set(), "status": set(), "tenant": set()}
        self.bind(None)

    def bind(self, ring: RingWriter | None, buf=None, base: int = 0) -> None:
        """Called by ``attach_worker``: records go to this ring (and cells to this slab) from now on."""
        self._ring = ring
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self._prefix = f"{self._pid:x}-"
        self._combinations: dict[tuple, _Combination] = {}
        self._encoded: dict[int, dict[str, bytes]] = {8: {}, 32: {}, 64: {}}  # field size -> text -> bytes
        self._inflight = None
        if buf is not None:
            doubles, quads = buf.cast("d"), buf.cast("Q")
            self._inflight = (doubles, (base + Body.inflight_started.offset) // 8, quads,
                              (base + Body.inflight_count.offset) // 8, buf,
                              base + Body.inflight_method.offset, base + Body.inflight_path.offset)

    def new_request_id(self) -> str:
        return f"{self._prefix}{next(self._ids):x}"

    def _bounded(self, dim: str, value: str) -> str:
        seen = self._seen[dim]
        if value in seen:
            return value
        if len(seen) >= MAX_VALUES_PER_DIMENSION:
            return OTHER
        seen.add(value)
        return value

    def _combination(self, route: str, status_class: str, tenant: str) -> _Combination | None:
        key = (route, status_class, tenant)
        combination = self._combinations.get(key)
        if combination is None:
            try:
                combination = _Combination((("route", self._bounded("route", route)), ("status", status_class),
                                            ("tenant", self._bounded("tenant", tenant))))
            except CatalogueFull:
                return None  # counted in the slab (system.catalogue_full); a request never fails for it
            if len(self._combinations) < MAX_VALUES_PER_DIMENSION ** 2:
                self._combinations[key] = combination
        return combination

    def _fit(self, text: str, size: int) -> bytes:
        """``fit(text, size)``, cached for the bounded strings (methods, routes, tenants)."""
        cache = self._encoded[size]
        raw = cache.get(text)
        if raw is None:
            raw = fit(text, size).ljust(size, b"\0")
            if len(cache) < 4 * MAX_VALUES_PER_DIMENSION:
                cache[text] = raw
        return raw

    def record(self, method: str, route: str, status: int, seconds: float, start: float,
               response_bytes: int, request_id: str, tenant: str) -> None:
        """One finished request."""
        combination = self._combination(route, STATUS_CLASSES.get(status // 100, "other"), tenant or "-")
        if combination is not None:
            try:
                cells = combination.buckets.get(bucket_index(seconds)) or combination.bucket(bucket_index(seconds))
            except CatalogueFull:
                cells = ()
            for vals, idx in cells:
                vals[idx] += 1.0
            for vals, idx in combination.sums:
                vals[idx] += seconds
        ring = self._ring
        if ring is not None:
            ring.append(start, seconds, response_bytes, self._pid, status, self._fit(method, 8),
                        self._fit(route, 64), request_id.encode()[:40], self._fit(tenant or "", 32))

    def begin(self, method: str, path: str) -> None:
        """A request started (shown as in flight, with its age, in ``/workers``). Lock-free: the count
        is one GIL-atomic update; method, path and start are display fields (the latest request's)."""
        inflight = self._inflight
        if inflight is None:
            return
        doubles, started_at, quads, count_at, buf, method_at, path_at = inflight
        buf[method_at:method_at + 8] = self._fit(method, 8)
        raw = path.encode("utf-8", "replace")[:64]
        buf[path_at:path_at + 64] = raw if len(raw) == 64 else raw.ljust(64, b"\0")
        doubles[started_at] = time.time()
        quads[count_at] += 1  # last: a reader that sees the count sees the request's fields

    def end(self) -> None:
        inflight = self._inflight
        if inflight is None:
            return
        doubles, started_at, quads, count_at = inflight[:4]
        try:
            quads[count_at] -= 1  # one GIL-atomic update, paired with begin()'s
        except ValueError:
            quads[count_at] = 0  # an end() without its begin(): never below zero
        if not quads[count_at]:
            doubles[started_at] = 0.0
            if self.on_idle is not None:
                self.on_idle()


RECORDER = WorkloadRecorder()
