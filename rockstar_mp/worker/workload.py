"""Workload recording in the worker: one record per request, and latency sketches by route, status
class and tenant.

The sketches are counters in the slab (``rockstar.workload.bucket{dim,value,bucket}`` and
``rockstar.workload.seconds{dim,value}``), so they are exact, merge across workers and survive a worker's
death like any counter. A bucket series is a block of ``BUCKETS_PER_BLOCK`` consecutive latency buckets
from its label's index on (``sketch.block_first``): a request finds its bucket as an offset into a block
its combination already holds, so a new series (and the slow path that declares it) is needed only when
a latency leaves every block seen, not at every new bucket. (Spread over a few hundred buckets, a series
per bucket had a fresh worker declaring new ones for minutes, at some 200 us each.) The records go to the
slab's ring (the aggregator keeps the most recent ones); a ring that overflows before the aggregator
drains it loses its oldest records, counted as dropped.

Bounded dimensions: every value takes a cell for its seconds and a block per range of latency it
touches, so a worker keeps at most ``max_routes`` routes and ``max_tenants`` tenants, and the sketches at
most ``max_cells`` cells of the slab (``WorkloadLimits``, from ``MonitoringConfig``): a third for each
dimension, so that a flood of tenants never crowds out the routes (``_DimensionBudget``). A value beyond
them is recorded under ``other``; a value whose next block finds no room left has that request counted in
its nearest bucket instead.
Either way the request is counted, once per dimension, and the overflow in
``rockstar.workload.overflow{dimension}`` (the aggregator's ``system.dimension_overflow``). What these
fall back on (``other`` of each dimension and each status class, with one block each, and the overflow
counters) is declared when this module is imported, so it is in the slab from the attach on. Label values
are cut to ``LABEL_BYTES`` of UTF-8; request ids never become series (they are in the records only).

Front ends: ``rockstar_mp.worker.falcon.WorkloadMiddleware`` (Falcon, with route templates) and
``rockstar_mp.worker.wsgi.MetricsMiddleware(app, workload=True)`` (any WSGI app).
"""
from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_left, insort
from operator import itemgetter
from typing import Any, NamedTuple

from ..metrics import Counter, _Family
from ..segment import CatalogueFull, RingWriter, fit
from ..segment.layout import RECORD_WIDTH, Body
from ..sketch import BUCKET_SCALE, BUCKETS_PER_BLOCK, MIN_SECONDS, block_first, bucket_index
from .accelerator import hotpath

MAX_VALUES_PER_DIMENSION = 200  # the default of max_routes and max_tenants; also bounds the small caches
DEFAULT_MAX_CELLS = 16384  # the default of workload_max_cells
CELLS_PER_SERIES = 8  # the sketches' cells per catalogue entry at worst (a seconds cell and a block: 17 for 2)
OTHER = "other"
STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
LABEL_BYTES = 64  # route and tenant label values are cut to this (UTF-8, on a character boundary)
DIMENSIONS = ("route", "status", "tenant")  # each has a third of the cell budget
NAMED_SHARE = 0.75  # of a dimension's cells, what its named values may take (the rest: its fallbacks')
MIN_FAIR_BLOCKS = 2  # a value's fair share of blocks is never smaller
VALUE_CELLS = 1 + BUCKETS_PER_BLOCK  # a value's cells at least: its seconds and one block
HTTP_ROUTE = "http_route"  # the overflow of the route label of http.requests (worker/wsgi.py)
OVERFLOW_DIMENSIONS = ("route", "tenant", "status", "bucket", HTTP_ROUTE)
ANCHOR_BLOCK = block_first(bucket_index(0.01))  # the block each fallback value is declared with
MAX_COMBINATIONS = MAX_VALUES_PER_DIMENSION ** 2  # cached (route, status class, tenant) as requests give them
CACHED_KEY_CHARS = 256  # longer route + tenant strings are not cached (the cache would keep them alive)
INFLIGHT_METHOD_BYTES = Body.inflight_method.struct.size
INFLIGHT_TEXT_BYTES = INFLIGHT_METHOD_BYTES + Body.inflight_path.struct.size


class _BucketBlocks(Counter):
    """A counter whose series are blocks of ``BUCKETS_PER_BLOCK`` counts (``series.value_count``)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        _Family.__init__(self, name, documentation, labelnames, (BUCKETS_PER_BLOCK,))
        self._declare()


BUCKETS = _BucketBlocks("rockstar.workload.bucket", "Requests by latency sketch bucket: a series counts "
                        "the buckets from its bucket label's index on", ["dim", "value", "bucket"])
SECONDS = Counter("rockstar.workload.seconds", "Seconds spent serving requests", ["dim", "value"])
OVERFLOW = Counter("rockstar.workload.overflow", "Requests recorded under 'other' (route, tenant, status), "
                   "in a neighbouring latency bucket (bucket) or counted under route=\"other\" in "
                   "http.requests (http_route) for want of room", ["dimension"])

_ID_SEGMENT = re.compile(r"/(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}|[0-9a-fA-F]{16,})(?=/|$)")


def template_path(path: str) -> str:
    """A route template for a raw path when the framework gives none: ids become ``{id}``."""
    return _ID_SEGMENT.sub("/{id}", path) or "/"


class WorkloadLimits(NamedTuple):
    """How much of a worker's slab the workload dimensions may take."""

    max_routes: int = MAX_VALUES_PER_DIMENSION
    max_tenants: int = MAX_VALUES_PER_DIMENSION
    max_cells: int = DEFAULT_MAX_CELLS

    @classmethod
    def for_slab(cls, config, slab_max_series: int, slab_max_values: int) -> "WorkloadLimits":
        """From a ``MonitoringConfig``: the sketches take at most half of the slab's cells and, as a
        value's cells come in a seconds cell and blocks (``CELLS_PER_SERIES`` a series at worst), half
        of its series, so the app's own metrics always keep the other halves."""
        return cls(max(0, config.max_routes), max(0, config.max_tenants),
                   max(0, min(config.workload_max_cells, slab_max_values // 2,
                              slab_max_series // 2 * CELLS_PER_SERIES)))


class PrivateSeries:
    """Stands in for a series of ours the catalogue refused: its cells live in private memory (never
    reported), so the code that writes them never has to ask."""

    __slots__ = ("_vals", "_idx", "_bounds", "_sum_at")

    def __init__(self, bounds: tuple = (), cells: int = 1) -> None:
        self._vals = memoryview(bytearray(8 * (len(bounds) + 2 if bounds else cells))).cast("d")
        self._idx = 0
        self._bounds = bounds
        self._sum_at = len(bounds) + 1


def declared(family, *values):
    """``family.labels(*values)``, or ``None`` when the catalogue refused it (counted in the slab's
    ``catalogue_full``)."""
    try:
        return family.labels(*values)
    except CatalogueFull:
        return None


def reserved(family, *values, bounds: tuple = (), cells: int = 1):
    """``family.labels(*values)``, or private cells when the catalogue refused it: for the series our
    request path falls back on, declared before any request."""
    series = declared(family, *values)
    return series if series is not None else PrivateSeries(bounds, cells)


def label(value: str) -> str:
    """A route or tenant as a label value: cut to ``LABEL_BYTES`` of UTF-8 (lone surrogates, which
    UTF-8 cannot carry, become ``?``, as in the records)."""
    if value.isascii() and len(value) <= LABEL_BYTES:
        return value
    return fit(value, LABEL_BYTES).decode("utf-8")


class _DimensionBudget:
    """The cells one dimension's sketches may take, ``max_cells``, in two pools: ``NAMED_SHARE`` of
    them for its named values (routes, tenants), the rest for its fallbacks (``other``; the status
    classes, which have the whole budget, as status has no named values), so that ``other`` always
    has room for blocks of its own. A value takes a cell for its seconds and ``BUCKETS_PER_BLOCK`` for
    each block.

    A named value is admitted while fewer than ``max_values`` are and its pool has room for its
    seconds and one block, held for its first. A block is declared while its pool has room (the named
    pool keeping that much for each value still to come, up to a quarter of it); once half a pool is
    taken, only for a value with fewer cells than its fair share of the pool, so that a value touching
    many blocks early does not leave the others a single one."""

    __slots__ = ("max_cells", "max_values", "cells", "named", "values", "fallbacks")

    def __init__(self) -> None:
        self.max_cells = self.max_values = 0
        self.cells = 0  # declared or held, fallbacks included
        self.named = 0  # of which for named values
        self.values = 0  # named values admitted
        self.fallbacks = 0  # fallback values

    @property
    def named_pool(self) -> int:
        return int(self.max_cells * NAMED_SHARE) if self.max_values else 0

    def can_admit(self) -> bool:
        return (self.values < self.max_values and self.named + VALUE_CELLS <= self.named_pool
                and self.cells + VALUE_CELLS <= self.max_cells)

    def can_grow(self, sketch: "_Sketch") -> bool:
        """Room for one more block of ``sketch``, a value of this dimension."""
        if self.cells + BUCKETS_PER_BLOCK > self.max_cells:
            return False
        if sketch.named:
            pool, used, sharing = self.named_pool, self.named, self.values
            kept = min(pool // 4, VALUE_CELLS * max(0, self.max_values - self.values))
        else:
            pool, used, sharing, kept = self.max_cells - self.named_pool, self.cells - self.named, self.fallbacks, 0
        if used + BUCKETS_PER_BLOCK > pool - kept:
            return False
        fair = max(MIN_FAIR_BLOCKS * BUCKETS_PER_BLOCK, pool // max(1, sharing))
        return used < pool // 2 or len(sketch.firsts) * BUCKETS_PER_BLOCK < fair

    def take(self, cells: int, named: bool) -> None:
        self.cells += cells
        if named:
            self.named += cells


class _Sketch:
    """One dimension value's series: its seconds, and its blocks by first index (sorted in ``firsts``)."""

    __slots__ = ("seconds", "blocks", "firsts", "holds_first", "named")

    def __init__(self, seconds, named: bool) -> None:
        self.seconds = seconds
        self.blocks: dict[int, Any] = {}  # first index -> its series (a CounterSeries, or PrivateSeries)
        self.firsts: list[int] = []
        self.holds_first = False  # the budget holds the cells of its first block
        self.named = named  # an admitted route or tenant (not a fallback)

    def add(self, first: int, series) -> None:
        self.blocks[first] = series
        insort(self.firsts, first)

    def nearest(self, index: int) -> tuple:
        """``(view, cell)`` of the bucket closest to ``index`` in the blocks held (the lower on a tie)."""
        at = bisect_left(self.firsts, index - BUCKETS_PER_BLOCK + 1)
        first = min(self.firsts[max(0, at - 1):at + 1],
                    key=lambda f: max(f - index, index - f - BUCKETS_PER_BLOCK + 1, 0))
        series = self.blocks[first]
        return series._vals, series._idx + min(max(index - first, 0), BUCKETS_PER_BLOCK - 1)


class _Shared:
    """What requests of one (route, status class, tenant) as recorded share, whatever their raw route
    and tenant: the bucket cells by block, the seconds cells, and the overflow cells they add."""

    __slots__ = ("values", "blocks", "moved", "sums", "extra")

    def __init__(self, values: tuple, sums: tuple, extra: tuple) -> None:
        self.values = values  # ((dim, value), ...) for route, status and tenant
        self.blocks: dict[int, tuple] = {}  # block number (index // BUCKETS_PER_BLOCK) -> its entry
        self.moved: dict[int, tuple] = {}  # bucket index -> its entry, when a dimension had no block for it
        self.sums = sums
        self.extra = extra  # overflow cells counted with every bucket (a route or tenant under "other")


class _Combination(tuple):
    """What one (route, status class, tenant), as the request gave them, writes, as a tuple (the C path
    reads it by position): the bucket entries by block number (cached, so a request finds its cells
    without a lookup by label), the three sum cells, and the route and tenant as the ring stores them.
    Cells are ``(view, index, view, index, ...)``. A bucket entry is ``(shifted, fixed)``: to the cells
    of ``shifted`` (the first bucket of a block, one per dimension) a request adds its bucket's offset in
    the block (``index % BUCKETS_PER_BLOCK``), the cells of ``fixed`` (a nearest bucket, overflow
    counters) it adds 1 to as they are."""

    __slots__ = ()
    blocks = property(itemgetter(0))  # {block number: (shifted, fixed)}
    sums = property(itemgetter(1))
    route = property(itemgetter(2))
    tenant = property(itemgetter(3))
    shared = property(itemgetter(4))


def _cells(series: list) -> tuple:
    """``(view, i, view, i, ...)`` of the first cells of series."""
    return tuple(x for one in series for x in (one._vals, one._idx))


def add_cells(cells: tuple, amount: float, offset: int = 0) -> None:
    """Add ``amount`` to every cell of ``(view, i, view, i, ...)``, each moved by ``offset`` (the C
    path's ``add_cells``)."""
    if len(cells) == 6:
        v1, i1, v2, i2, v3, i3 = cells
        v1[i1 + offset] += amount
        v2[i2 + offset] += amount
        v3[i3 + offset] += amount
        return
    for k in range(0, len(cells) - 1, 2):
        cells[k][cells[k + 1] + offset] += amount


class WorkloadRecorder:
    """Records requests of this process (``RECORDER`` below is the one every middleware uses).

    On the request path: everything that can be is cached (the cells of a route/status/tenant
    combination, the encoded strings, the pid), so a record is six stores and one ring append. With
    the C accelerator (``rockstar_mp.worker.accelerator``) the ring and the in-flight fields are
    written by its ``Slab``, and ``record`` runs in C; these methods are its slow paths and fallback.
    """

    def __init__(self) -> None:
        self._on_idle = None
        self._limits = WorkloadLimits()
        self._sketches: dict[tuple[str, str], _Sketch] = {}
        self._budgets = {dim: _DimensionBudget() for dim in DIMENSIONS}
        self.configure(self._limits)
        self._reserve()
        self.bind(None)

    def _reserve(self) -> None:
        """What the sketches fall back on: ``other`` in every dimension and each status class, with
        its seconds and one block; and the overflow counters."""
        fallbacks = [("route", OTHER), ("tenant", OTHER)] + [("status", v) for v in (*STATUS_CLASSES.values(), OTHER)]
        for dim, value in fallbacks:
            sketch = self._sketches[(dim, value)] = _Sketch(reserved(SECONDS, dim, value), named=False)
            sketch.add(ANCHOR_BLOCK, reserved(BUCKETS, dim, value, ANCHOR_BLOCK, cells=BUCKETS_PER_BLOCK))
            self._budgets[dim].take(VALUE_CELLS, named=False)
            self._budgets[dim].fallbacks += 1
        self._overflow = {dim: reserved(OVERFLOW, dim) for dim in OVERFLOW_DIMENSIONS}

    def configure(self, limits: WorkloadLimits) -> None:
        """Called by ``attach_worker`` with the config's limits (values already admitted stay)."""
        self._limits = limits
        values = {"route": limits.max_routes, "status": 0, "tenant": limits.max_tenants}
        for dim, budget in self._budgets.items():
            budget.max_cells, budget.max_values = limits.max_cells // len(DIMENSIONS), values[dim]

    @property
    def limits(self) -> WorkloadLimits:
        return self._limits

    def overflow_cells(self, dimension: str) -> tuple:
        """The cells of ``rockstar.workload.overflow{dimension}`` (the request counter's fallback counts there)."""
        return _cells([self._overflow[dimension]])

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
        self._shared: dict[tuple, _Shared] = {}  # cells cached from the series: rebuilt when they move
        self._methods: dict[str, bytes] = {}
        self._inflight_texts: dict[tuple, bytes] = {}  # (method, path) -> the in-flight display bytes
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

    # -- the slow paths: a combination or a block seen for the first time ------------------------
    def _admit(self, dim: str, raw: str) -> tuple[str, bool]:
        """The value ``raw`` is recorded under in ``dim`` (route or tenant), and whether that is
        ``other`` for want of room (``_DimensionBudget``)."""
        value = label(raw)
        if (dim, value) in self._sketches:
            return value, False
        budget = self._budgets[dim]
        if budget.can_admit():
            seconds = declared(SECONDS, dim, value)
            if seconds is not None:
                sketch = self._sketches[(dim, value)] = _Sketch(seconds, named=True)
                sketch.holds_first = True
                budget.take(VALUE_CELLS, named=True)
                budget.values += 1
                return value, False
        return OTHER, True

    def _shared_for(self, route: tuple, status: str, tenant: tuple) -> _Shared:
        """``route``/``tenant``: (value, overflowed)."""
        key = (route, status, tenant)
        shared = self._shared.get(key)
        if shared is None:
            values = (("route", route[0]), ("status", status), ("tenant", tenant[0]))
            extra = (self.overflow_cells("route") if route[1] else ()) + (
                self.overflow_cells("tenant") if tenant[1] else ())
            shared = _Shared(values, _cells([self._sketches[v].seconds for v in values]), extra)
            if len(self._shared) < MAX_COMBINATIONS:
                self._shared[key] = shared
        return shared

    def _combination_tuple(self, route: str, status_class: int, tenant: str) -> _Combination:
        """The combination's cells, declared on first use (a value without room is recorded as ``other``)."""
        key = (route, status_class, tenant)
        combination = self._combinations.get(key)
        if combination is not None:
            return combination
        shared = self._shared_for(self._admit("route", route), STATUS_CLASSES.get(status_class, OTHER),
                                  self._admit("tenant", tenant or "-"))
        combination = _Combination((shared.blocks, shared.sums, fit(route, RECORD_WIDTH["route"]),
                                    fit(tenant, RECORD_WIDTH["tenant"]), shared))
        if len(self._combinations) < MAX_COMBINATIONS and len(route) + len(tenant) <= CACHED_KEY_CHARS:
            self._combinations[key] = combination
        return combination

    def _block(self, dim: str, value: str, index: int):
        """The block series holding bucket ``index`` of a value, or ``None`` when the budget or the
        catalogue has no room for it."""
        sketch = self._sketches[(dim, value)]
        first = block_first(index)
        series = sketch.blocks.get(first)
        if series is not None:
            return series
        budget = self._budgets[dim]
        held, sketch.holds_first = sketch.holds_first, False
        if held or budget.can_grow(sketch):
            series = declared(BUCKETS, dim, value, first)
            if series is not None:
                budget.take(0 if held else BUCKETS_PER_BLOCK, sketch.named)
                sketch.add(first, series)
                return series
            budget.take(-BUCKETS_PER_BLOCK * held, sketch.named)  # the catalogue refused it: held cells go back
        return None

    def _nearest(self, dim: str, value: str, index: int) -> tuple:
        """``(view, cell)`` of the bucket nearest ``index`` that the value holds (of ``other`` if it
        holds none: its first block was refused by the catalogue)."""
        sketch = self._sketches[(dim, value)]
        return (sketch if sketch.firsts else self._sketches[(dim, OTHER)]).nearest(index)

    def _bucket_cells(self, combination: _Combination, index: int) -> tuple:
        """The entry ``(shifted, fixed)`` of a request of this combination in latency bucket ``index``
        (see ``_Combination``), cached by block; by bucket when a dimension had no block for it."""
        shared = combination.shared
        number = index // BUCKETS_PER_BLOCK
        entry = shared.blocks.get(number) or shared.moved.get(index)
        if entry is not None:
            return entry
        blocks = [(dim, value, self._block(dim, value, index)) for dim, value in shared.values]
        shifted = _cells([series for _, _, series in blocks if series is not None])
        if len(shifted) == 2 * len(blocks):
            entry = shared.blocks[number] = (shifted, shared.extra)
            return entry
        nearest = tuple(x for dim, value, series in blocks if series is None for x in self._nearest(dim, value, index))
        entry = (shifted, nearest + shared.extra + self.overflow_cells("bucket"))
        if len(shared.moved) < MAX_VALUES_PER_DIMENSION:
            shared.moved[index] = entry
        return entry

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
        index = _ceil(_log(seconds if seconds > MIN_SECONDS else MIN_SECONDS) * BUCKET_SCALE - 1e-9)
        shifted, fixed = (combination.blocks.get(index // BUCKETS_PER_BLOCK)
                          or self._bucket_cells(combination, index))
        add_cells(shifted, 1.0, index % BUCKETS_PER_BLOCK)
        add_cells(fixed, 1.0)
        add_cells(combination.sums, seconds)
        append = self._append
        if append is not None:
            raw_method = self._methods.get(method) or self._method(method)
            append(start, seconds, response_bytes, self._pid, status, raw_method, combination.route,
                   fit(request_id, RECORD_WIDTH["request_id"]) if request_id else b"", combination.tenant)

    def _method(self, method: str) -> bytes:
        raw = fit(method, RECORD_WIDTH["method"])
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

    def end(self, notify: bool = True) -> None:
        """A request ended; when none is in flight any more, ``on_idle`` runs (unless ``notify`` is false)."""
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
        if idle and notify and self._on_idle is not None:
            self._on_idle()


RECORDER = WorkloadRecorder()
