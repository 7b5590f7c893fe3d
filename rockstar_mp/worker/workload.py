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

import math
import os
import re
import time
from operator import itemgetter

from ..metrics import Counter
from ..segment import CatalogueFull, RingWriter, fit
from ..segment.layout import Body
from ..sketch import BUCKET_SCALE, MIN_SECONDS
from .accelerator import hotpath

MAX_VALUES_PER_DIMENSION = 200  # distinct routes (or tenants) per worker; more become "other"
OTHER = "other"
STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
INFLIGHT_METHOD_BYTES = Body.inflight_method.struct.size
INFLIGHT_TEXT_BYTES = INFLIGHT_METHOD_BYTES + Body.inflight_path.struct.size

BUCKETS = Counter("rockstar.workload.bucket", "Requests by latency sketch bucket",
                  ["dim", "value", "bucket"])
SECONDS = Counter("rockstar.workload.seconds", "Seconds spent serving requests", ["dim", "value"])

_ID_SEGMENT = re.compile(r"/(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|[0-9a-fA-F]{16,})(?=/|$)")


def template_path(path: str) -> str:
    """A route template for a raw path when the framework gives none: ids become ``{id}``."""
    return _ID_SEGMENT.sub("/{id}", path) or "/"


class _Combination(tuple):
    """What one (route, status class, tenant) writes, as a tuple (the C path reads it by position):
    the bucket cells by latency bucket (cached, so a request finds its cells without a lookup by
    label), the three sum cells, and the route and tenant as the ring stores them. Cells are
    ``(view, index, view, index, view, index)``: one per dimension."""

    __slots__ = ()
    buckets = property(itemgetter(0))  # {bucket index: cells}
    sums = property(itemgetter(1))
    route = property(itemgetter(2))
    tenant = property(itemgetter(3))
    values = property(itemgetter(4))  # ((dim, value), ...) for route, status and tenant

    @classmethod
    def make(cls, values: tuple, route: bytes, tenant: bytes) -> "_Combination":
        sums = _cells([SECONDS.labels(dim, value) for dim, value in values])
        return cls(({}, sums, route, tenant, values))

    def bucket(self, index: int) -> tuple:
        cells = self.buckets.get(index)
        if cells is None:
            cells = self.buckets[index] = _cells([BUCKETS.labels(dim, value, index) for dim, value in self.values])
        return cells


def _cells(series: list) -> tuple:
    """``(view, i, view, i, ...)`` of series with one cell each (in the slab, or private memory if the
    catalogue refused them)."""
    return tuple(x for one in series for x in (one._vals, one._idx))


def _add(cells: tuple, amount: float) -> None:
    v1, i1, v2, i2, v3, i3 = cells
    v1[i1] += amount
    v2[i2] += amount
    v3[i3] += amount


class WorkloadRecorder:
    """Records requests of this process (``RECORDER`` below is the one every middleware uses).

    On the request path: everything that can be is cached (the six cells of a route/status/tenant
    combination, the encoded strings, the pid), so a record is six stores and one ring append. With
    the C accelerator (``rockstar_mp.worker.accelerator``) the ring and the in-flight fields are
    written by its ``Slab``, and ``record`` runs in C; these methods are its slow paths and fallback.
    """

    def __init__(self) -> None:
        self._on_idle = None
        self._seen: dict[str, set] = {"route": set(), "status": set(), "tenant": set()}
        self.bind(None)

    @property
    def on_idle(self):
        """Called when the last in-flight request is done (a pending optimization runs then)."""
        return self._on_idle

    @on_idle.setter
    def on_idle(self, callback) -> None:
        self._on_idle = callback
        self._bind_accelerator()

    def bind(self, ring: RingWriter | None, buf=None, base: int = 0) -> None:
        """Called by ``attach_worker``: records go to this ring (and cells to this slab) from now on."""
        self._ring = ring
        self._append = ring.append if ring is not None else None
        self._pid = os.getpid()
        self._combinations: dict[tuple, _Combination] = {}
        self._methods: dict[str, bytes] = {}
        self._inflight_texts: dict[tuple, bytes] = {}  # (method, path) -> the 72 display bytes
        self._inflight = None
        self._slab = None
        if buf is not None:
            if Body.inflight_path.offset != Body.inflight_method.offset + INFLIGHT_METHOD_BYTES:
                raise AssertionError("the in-flight method and path must be adjacent")
            if hotpath is not None and ring is not None:  # the C Slab writes the ring and the in-flight fields
                self._slab = hotpath.Slab(buf, *ring.geometry(), base + Body.inflight_started.offset,
                                          base + Body.inflight_count.offset, base + Body.inflight_method.offset,
                                          INFLIGHT_METHOD_BYTES, Body.inflight_path.struct.size, self._pid)
            else:
                self._inflight = (buf.cast("d"), buf.cast("Q"), Body.inflight_started.word(base),
                                  Body.inflight_count.word(base), buf, base + Body.inflight_method.offset)
        self._bind_accelerator()

    def _bind_accelerator(self) -> None:
        if hotpath is not None:
            hotpath.bind(self._slab, self._combinations, self, self._on_idle)

    def _bounded(self, dim: str, value: str) -> str:
        seen = self._seen[dim]
        if value in seen:
            return value
        if len(seen) >= MAX_VALUES_PER_DIMENSION:
            return OTHER
        seen.add(value)
        return value

    def _combination_tuple(self, route: str, status_class: int, tenant: str) -> _Combination | None:
        """The combination's cells, declared on first use (``None`` if the catalogue is full)."""
        key = (route, status_class, tenant)
        combination = self._combinations.get(key)
        if combination is not None:
            return combination
        values = (("route", self._bounded("route", route)),
                  ("status", STATUS_CLASSES.get(status_class, OTHER)),
                  ("tenant", self._bounded("tenant", tenant or "-")))
        try:
            combination = _Combination.make(values, fit(route, 64), fit(tenant, 32))
        except CatalogueFull:
            return None  # counted in the slab (system.catalogue_full); a request never fails for it
        if len(self._combinations) < MAX_VALUES_PER_DIMENSION ** 2:
            self._combinations[key] = combination
        return combination

    @staticmethod
    def _bucket_cells(combination: _Combination, index: int) -> tuple | None:
        try:
            return combination.bucket(index)
        except CatalogueFull:
            return None

    def record(self, method: str, route: str, status: int, seconds: float, start: float,
               response_bytes: int, request_id: str, tenant: str,
               _log=math.log, _ceil=math.ceil) -> None:
        """One finished request (``start``: its ``time.time()``; ``request_id``: "" for none, the
        aggregator then names it by pid and record number)."""
        if hotpath is not None:
            return hotpath.record(method, route, status, seconds, start, response_bytes, request_id, tenant)
        status_class = status // 100
        combination = (self._combinations.get((route, status_class, tenant))
                       or self._combination_tuple(route, status_class, tenant))
        if combination is not None:
            index = _ceil(_log(seconds if seconds > MIN_SECONDS else MIN_SECONDS) * BUCKET_SCALE - 1e-9)
            cells = combination.buckets.get(index) or self._bucket_cells(combination, index)
            if cells is not None:
                _add(cells, 1.0)
            _add(combination.sums, seconds)
            route_raw, tenant_raw = combination.route, combination.tenant
        else:
            route_raw, tenant_raw = fit(route, 64), fit(tenant, 32)
        append = self._append
        if append is not None:
            raw_method = self._methods.get(method) or self._method(method)
            append(start, seconds, response_bytes, self._pid, status, raw_method, route_raw,
                   fit(request_id, 40) if request_id else b"", tenant_raw)

    def _method(self, method: str) -> bytes:
        raw = fit(method, INFLIGHT_METHOD_BYTES)
        if len(self._methods) < MAX_VALUES_PER_DIMENSION:
            self._methods[method] = raw
        return raw

    def begin(self, method: str, path: str) -> None:
        """A request started (shown as in flight, with its age, in ``/workers``). Lock-free: the count
        is one GIL-atomic update; method, path and start are display fields (the latest request's)."""
        if self._slab is not None:
            return self._slab.begin(method, path)
        inflight = self._inflight
        if inflight is None:
            return
        doubles, words, started_at, count_at, buf, text_at = inflight
        shown = self._inflight_texts.get((method, path)) or self._inflight_text(method, path)
        buf[text_at:text_at + INFLIGHT_TEXT_BYTES] = shown
        doubles[started_at] = time.time()
        words[count_at] += 1  # last: a reader that sees the count sees the request's fields

    def _inflight_text(self, method: str, path: str) -> bytes:
        shown = (fit(method, INFLIGHT_METHOD_BYTES).ljust(INFLIGHT_METHOD_BYTES, b"\0")
                 + fit(path, INFLIGHT_TEXT_BYTES - INFLIGHT_METHOD_BYTES)).ljust(INFLIGHT_TEXT_BYTES, b"\0")
        if len(self._inflight_texts) < 4 * MAX_VALUES_PER_DIMENSION:
            self._inflight_texts[(method, path)] = shown
        return shown

    def end(self) -> None:
        if self._slab is not None:
            idle = self._slab.end()
        elif self._inflight is not None:
            doubles, words, started_at, count_at = self._inflight[:4]
            try:
                words[count_at] -= 1  # one GIL-atomic update, paired with begin()'s
            except (ValueError, OverflowError):
                words[count_at] = 0  # an end() without its begin(): never below zero
            idle = not words[count_at]
            if idle:
                doubles[started_at] = 0.0
        else:
            return
        if idle and self._on_idle is not None:
            self._on_idle()


RECORDER = WorkloadRecorder()
