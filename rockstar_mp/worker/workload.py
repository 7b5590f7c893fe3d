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
import threading
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


class WorkloadRecorder:
    """Records requests of this process (``RECORDER`` below is the one every middleware uses)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-"
        self._seen: dict[str, set] = {"route": set(), "status": set(), "tenant": set()}
        self._ring: RingWriter | None = None
        self._inflight = threading.Lock()
        self._body: tuple | None = None  # (buf, base) of the slab, for the in-flight fields
        self.on_idle = None  # called when the last in-flight request is done (pending optimization)

    def bind(self, ring: RingWriter | None, buf=None, base: int = 0) -> None:
        """Called by ``attach_worker``: records go to this ring from now on."""
        self._ring = ring
        self._body = (buf, base) if buf is not None else None
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-"

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

    def record(self, method: str, route: str, status: int, seconds: float, start: float,
               response_bytes: int, request_id: str, tenant: str) -> None:
        """One finished request."""
        bucket = bucket_index(seconds)
        buckets, sums = BUCKETS._children, SECONDS._children
        for dim, value in (("route", self._bounded("route", route)),
                           ("status", STATUS_CLASSES.get(status // 100, "other")),
                           ("tenant", self._bounded("tenant", tenant or "-"))):
            key = (dim, value, bucket)
            key2 = (dim, value)
            try:
                (buckets.get(key) or BUCKETS.labels(*key)).inc()
                (sums.get(key2) or SECONDS.labels(*key2)).inc(seconds)
            except CatalogueFull:
                pass  # counted in the slab (system.catalogue_full); a request never fails for it
        ring = self._ring
        if ring is not None:
            ring.append(start, seconds, response_bytes, os.getpid(), status, fit(method, 8), fit(route, 64),
                        fit(request_id, 40), fit(tenant or "", 32))

    def begin(self, method: str, path: str) -> None:
        """A request started (shown as in flight, with its age, in ``/workers``)."""
        if self._body is None:
            return
        buf, base = self._body
        with self._inflight:
            Body.inflight_count.set(buf, Body.inflight_count.get(buf, base) + 1, base)
            Body.inflight_method.set(buf, fit(method, 8), base)
            Body.inflight_path.set(buf, fit(path, 64), base)
            Body.inflight_started.set(buf, time.time(), base)

    def end(self) -> None:
        if self._body is None:
            return
        buf, base = self._body
        with self._inflight:
            count = max(0, Body.inflight_count.get(buf, base) - 1)
            Body.inflight_count.set(buf, count, base)
            if not count:
                Body.inflight_started.set(buf, 0.0, base)
        if not count and self.on_idle is not None:
            self.on_idle()


RECORDER = WorkloadRecorder()
