"""The metrics API used in workers: ``Counter``, ``Gauge``, ``Histogram``, with ``labels(...)``.

Every series owns a run of float64 cells. Until the process attaches to a slab (``attach_worker``), the
cells are private memory; attaching moves every declared series into the worker's slab, where the
aggregator reads it. An update is one ``memoryview`` store: no lock and no system call.

Names are checked once, when a metric is declared (never on an update): a name whose Prometheus names
(``.`` becomes ``_``, a counter's ``_total``, a histogram's ``_bucket``...) meet another metric's in this
process, or are reserved for rockstar-mp's own (``rockstar_*``, ``http.requests``...), raises
``MetricNameConflict``.

Why no lock: under the GIL, CPython switches threads only at its eval-breaker checks, and none falls
inside ``view[i] += x`` (load, add and store are one uninterrupted run of bytecodes), so updates from
many threads (gunicorn's gthread worker) are exact. On a free-threaded build, where that no longer holds,
every update takes a lock instead (one per series class, ``_LOCKED`` below).

Example::

    from rockstar_mp import Counter, Histogram

    REQUESTS = Counter("app.requests", "Requests served", ["method", "status"])
    LATENCY = Histogram("app.latency.seconds", "Seconds per request")

    REQUESTS.labels("GET", "200").inc()
    with LATENCY.time():
        handle()
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time as _time
import weakref
from bisect import bisect_left
from types import FrameType
from typing import Any, Callable, Generic, Iterable, NoReturn, Protocol, Sequence, TypeVar

from .segment import CatalogueFull
from .segment.errors import MetricNameConflict
from .series import (
    COUNTER,
    GAUGE,
    GAUGE_MODES,
    HISTOGRAM,
    OWN_FAMILIES,
    RESERVED_PREFIX,
    SeriesKey,
    check_labelnames,
    check_name,
    exposed_names,
    is_reserved,
    main_name,
)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_LOCKED = hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled()


class _Unbound:
    """Stands in for the cells of a labelled parent, so ``parent.inc()`` says what to do."""

    def __init__(self, name: str, labelnames: tuple[str, ...]) -> None:
        self._message = f"{name} has labels {labelnames}: call .labels(...) and update the result"

    def __getitem__(self, _key: int) -> NoReturn:
        raise TypeError(self._message)

    def __setitem__(self, _key: int, _value: float) -> NoReturn:
        raise TypeError(self._message)


class Store(Protocol):
    """Where series' cells live: ``register`` gives a key's ``n_values`` float64 cells (a ``"d"`` view
    and the index of the first)."""

    def register(self, key: bytes, n_values: int) -> tuple[memoryview[float], int]: ...


class LocalStore:
    """Cells in private memory: used before a process attaches to a slab (and in the master)."""

    def register(self, key: bytes, n_values: int) -> tuple[memoryview[float], int]:
        return memoryview(bytearray(8 * n_values)).cast("d"), 0


class CellCache(dict[Any, Any]):
    """A cache holding cells (``(view, index)``) of series: emptied whenever the series move (attach,
    fork), so nobody writes through a stale view. Get one from ``REGISTRY.cell_cache()``. What keeps
    its entries elsewhere (the C request path keeps their cells' addresses) forgets them in a callback
    of ``on_clear``, called at every ``clear``."""

    on_clear: list[Callable[[], None]] = []

    def clear(self) -> None:
        super().clear()
        for forget in CellCache.on_clear:
            forget()


class Registry:
    """All families declared in this process, and the store their cells live in."""

    def __init__(self) -> None:
        self._families: dict[str, _Family[Any]] = {}
        self._claims: dict[str, _Family[Any]] = {}  # every Prometheus name taken -> the family taking it
        self._lock = threading.RLock()
        self.store: Store = LocalStore()
        self._caches: list[weakref.ref[CellCache]] = []

    def cell_cache(self) -> CellCache:
        cache = CellCache()
        with self._lock:
            self._caches = [ref for ref in self._caches if ref() is not None] + [weakref.ref(cache)]
        return cache

    def register(self, family: _Family[Any]) -> None:
        """Add ``family``, unless one of its Prometheus names is taken (``MetricNameConflict``)."""
        names = exposed_names(family.kind, family.name)
        ours = _declared_by_rockstar_mp()
        with self._lock:
            self._refuse_conflict(family, names, ours)
            self._families[family.name] = family
            self._claims.update(dict.fromkeys(names, family))

    def _refuse_conflict(self, family: _Family[Any], names: frozenset[str], ours: bool) -> None:
        if family.name in self._families:
            raise MetricNameConflict(f"metric {family.name!r} is already declared in this process: "
                                     "declare each metric once, at module level, and import it")
        reserved = sorted(n for n in names if is_reserved(n)) if not ours else []
        if reserved:
            raise MetricNameConflict(_reserved_message(family, reserved))
        holder = next((self._claims[n] for n in sorted(names) if n in self._claims), None)
        if holder is not None:
            raise MetricNameConflict(_conflict_message(family, holder, names))

    def unregister(self, family: _Family[Any]) -> None:
        """Forget a family (its series keep their last values in the slab)."""
        with self._lock:
            if self._families.get(family.name) is family:
                del self._families[family.name]
                for name in exposed_names(family.kind, family.name):
                    if self._claims.get(name) is family:
                        del self._claims[name]

    def families(self) -> list[_Family[Any]]:
        with self._lock:
            return list(self._families.values())

    def bind(self, store: Store) -> list[str]:
        """Move every series to ``store`` (attach); returns the keys that did not fit."""
        with self._lock:
            self.store = store
            for ref in self._caches:
                cache = ref()
                if cache is not None:
                    cache.clear()
            refused: list[str] = []
            for family in self._families.values():
                for series in family._all_series():
                    try:
                        series._bind(store)
                    except CatalogueFull:
                        series._bind(LocalStore())
                        refused.append(series._key.decode("latin-1"))
            return refused

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        for family in self._families.values():
            family._lock = threading.Lock()


def _declared_by_rockstar_mp() -> bool:
    """Is the code declaring the metric (the first caller outside this module) rockstar-mp's own?
    The reserved names are granted by where the declaration comes from, so that no argument a user
    could pass opens them."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("rockstar_mp.")


_NAME_RULES = ("Prometheus turns '.' into '_', and gives a counter <name>_total and <name>_created, "
               "a histogram <name>_bucket, _sum, _count and _created")


def _conflict_message(family: _Family[Any], holder: _Family[Any], names: frozenset[str]) -> str:
    shared = names & exposed_names(holder.kind, holder.name)
    mains = {main_name(family.kind, family.name), main_name(holder.kind, holder.name)} & shared
    shown = min(mains or shared)
    return (f"metric {family.name!r} ({family.kind}) conflicts with {holder.name!r} ({holder.kind}), "
            f"declared before it in this process: both would be exposed as {shown!r} ({_NAME_RULES}). "
            f"Rename {family.name!r}")


def _reserved_message(family: _Family[Any], reserved: list[str]) -> str:
    main = main_name(family.kind, family.name)
    shown = main if main in reserved else reserved[0]
    stem = family.name
    for prefix in ("rockstar.", "rockstar_"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            stem = stem[len(prefix):]
    if shown.startswith(RESERVED_PREFIX):
        why = f"names starting with {RESERVED_PREFIX!r} are reserved for rockstar-mp's own metrics"
    else:
        owner = next(f"{name!r} ({kind})" for name, kind in sorted(OWN_FAMILIES)
                     if shown in exposed_names(kind, name))
        why = f"that name belongs to rockstar-mp's own metric {owner}"
    return (f"metric {family.name!r} ({family.kind}) would be exposed as {shown!r}, and {why}. "
            f"Rename {family.name!r}, e.g. to {'app.' + stem!r}")


REGISTRY = Registry()
os.register_at_fork(after_in_child=REGISTRY._after_fork)


class _Series:
    """One series: a key and its cells. Subclasses add the update methods."""

    __slots__ = ("_vals", "_idx", "_key", "_n")
    _vals: memoryview[float] | _Unbound  # a labelled parent's cells refuse updates
    _idx: int
    _key: bytes
    _n: int
    _family: _Family[Any]  # a slot of each subclass: the family a child belongs to

    def _init_child(self) -> None:
        """Set up a child series made by ``labels()``."""

    def _init_series(self, key: SeriesKey, registry: Registry) -> None:
        self._key = key.encode()
        self._n = key.n_values
        self._bind(registry.store)

    def _bind(self, store: Store) -> None:
        vals, idx = store.register(self._key, self._n)
        self._vals, self._idx = vals, idx

    def _values(self) -> list[float]:
        return [self._vals[self._idx + i] for i in range(self._n)]


S = TypeVar("S", bound=_Series)


class _Family(Generic[S]):
    """The shared part of a metric: its name, labels and children (series of type ``S``)."""

    kind = ""
    _child_class: type[S]
    _vals: memoryview[float] | _Unbound  # a labelled family is no series: its cells refuse updates

    def __init__(self, name: str, documentation: str = "", labelnames: Iterable[str] = (),
                 extra: tuple[Any, ...] = (), registry: Registry | None = None) -> None:
        check_name(name)
        labelnames = tuple(labelnames)
        check_labelnames(labelnames, self.kind)
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._extra = extra
        self._registry = registry or REGISTRY
        self._children: dict[tuple[object, ...], S] = {}
        self._lock = threading.Lock()
        if labelnames:
            self._vals, self._idx, self._key, self._n = _Unbound(name, labelnames), 0, b"", 0
        self._family = self

    def _series_key(self, values: tuple[str, ...]) -> SeriesKey:
        return SeriesKey(self.kind, self.name, self.documentation, self.labelnames, values, self._extra)

    def _all_series(self) -> list[_Series]:
        if not self.labelnames:
            return [self]  # type: ignore[list-item]
        with self._lock:
            return list({id(c): c for c in self._children.values()}.values())

    def labels(self, *values: object, **kwvalues: object) -> S:
        """The child series for these label values (positional, or all by name): a ``CounterSeries``,
        ``GaugeSeries`` or ``HistogramSeries``, made on first use and the same object afterwards.

        >>> REQUESTS.labels("GET", "200").inc()
        >>> REQUESTS.labels(method="GET", status="200").inc()
        """
        if kwvalues:
            if values or set(kwvalues) != set(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(kwvalues)}")
            values = tuple(kwvalues[n] for n in self.labelnames)
        try:
            return self._children[values]
        except KeyError:
            return self._new_child(values)
        except TypeError:
            raise ValueError(f"label values of {self.name} must be hashable (strings)") from None

    def _new_child(self, values: tuple[object, ...]) -> S:
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels; update it directly")
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values "
                             f"{self.labelnames}, got {len(values)}")
        text = tuple(str(v) for v in values)
        with self._registry._lock, self._lock:
            child = self._children.get(text)
            if child is None:
                child = self._child_class.__new__(self._child_class)
                child._family = self
                child._init_child()
                child._init_series(self._series_key(text), self._registry)
                self._children[text] = child
            self._children[values] = child
            return child

    def _declare(self) -> None:
        """Register in the registry; an unlabelled family is its own series."""
        assert isinstance(self, _Series)  # every family class is also its own series class
        with self._registry._lock:
            self._registry.register(self)
            if not self.labelnames:
                try:
                    self._init_series(self._series_key(()), self._registry)
                except CatalogueFull:
                    self._registry.unregister(self)  # refused whole: it may be declared again
                    raise


class CounterSeries(_Series):
    """One series of a ``Counter``: the counter itself when it has no labels, else what ``labels()``
    returns."""

    __slots__ = ("_family",)

    def _init_child(self) -> None:
        pass

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if not amount >= 0:  # also refuses NaN
            raise ValueError(f"a counter only goes up: inc() takes a number >= 0, got {amount!r}")
        self._vals[self._idx] += amount

    def get(self) -> float:
        """This worker's value (the aggregator merges every worker's)."""
        return self._vals[self._idx]

    def _set_total(self, value: float) -> None:
        """Runtime use: store an absolute count this process keeps elsewhere (gc collections)."""
        self._vals[self._idx] = value


class GaugeSeries(_Series):
    """One series of a ``Gauge``: the gauge itself when it has no labels, else what ``labels()`` returns."""

    __slots__ = ("_family",)

    def _init_child(self) -> None:
        pass

    def inc(self, amount: float = 1.0) -> None:
        self._vals[self._idx] += amount

    def dec(self, amount: float = 1.0) -> None:
        self._vals[self._idx] -= amount

    def set(self, value: float) -> None:
        self._vals[self._idx] = value

    def set_to_current_time(self) -> None:
        self.set(_time.time())

    def get(self) -> float:
        return self._vals[self._idx]

    def track_inprogress(self) -> "_InProgress":
        """Context manager (and decorator): +1 while the block runs."""
        return _InProgress(self)


class _LastGaugeSeries(GaugeSeries):
    """A gauge merged as ``last``: each update also stamps the time, the newest worker wins."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self._vals[self._idx] += amount
        self._vals[self._idx + 1] = _time.time()

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        self._vals[self._idx] = value
        self._vals[self._idx + 1] = _time.time()


class HistogramSeries(_Series):
    """One series of a ``Histogram``: the histogram itself when it has no labels, else what ``labels()``
    returns."""

    __slots__ = ("_family", "_bounds", "_sum_at")

    def _init_child(self) -> None:
        self._bounds = self._family._extra
        self._sum_at = len(self._bounds) + 1

    def observe(self, amount: float) -> None:
        """Count one observation in its bucket (``le`` bounds: v <= bound) and add it to the sum."""
        if amount != amount:
            raise ValueError("observe() takes a number, got NaN")
        vals = self._vals
        idx = self._idx
        vals[idx + bisect_left(self._bounds, amount)] += 1.0
        vals[idx + self._sum_at] += amount

    def time(self) -> "_Timer":
        """Context manager (and decorator) observing the seconds the block took."""
        return _Timer(self.observe)


class _Timer(contextlib.ContextDecorator):
    """``with histogram.time():`` observes the seconds the block took; as a decorator, each call."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._start = 0.0

    def _recreate_cm(self) -> "_Timer":
        return _Timer(self._observe)  # a decorated function's calls may nest or overlap: one timer each

    def __enter__(self) -> "_Timer":
        self._start = _time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observe(_time.perf_counter() - self._start)


class _InProgress(contextlib.ContextDecorator):
    """``with gauge.track_inprogress():`` adds 1 while the block runs; as a decorator, during each call."""

    def __init__(self, gauge: GaugeSeries) -> None:
        self._gauge = gauge

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(self, *exc: object) -> None:
        self._gauge.dec()


UPDATE_METHODS = ("inc", "dec", "set", "observe", "_set_total")


def _guarded(method: Callable[..., Any], lock: threading.RLock) -> Callable[..., Any]:
    @functools.wraps(method)
    def guarded(self: _Series, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(self, *args, **kwargs)
    return guarded


def _locked(cls: type) -> type:
    """Wrap every update method ``cls`` defines in one lock for the class (free-threaded builds)."""
    lock = threading.RLock()  # _LastGaugeSeries.dec calls inc
    for name in UPDATE_METHODS:
        method = cls.__dict__.get(name)
        if method is not None:
            setattr(cls, name, _guarded(method, lock))
    return cls


if _LOCKED:
    for _cls in (CounterSeries, GaugeSeries, _LastGaugeSeries, HistogramSeries):
        _locked(_cls)


class Counter(_Family[CounterSeries], CounterSeries):
    """A count that only goes up, summed across workers; a dead worker's count is kept.

    >>> REQUESTS = Counter("app.requests", "Requests served", ["method", "status"])
    >>> REQUESTS.labels("GET", "200").inc()
    """

    kind = COUNTER
    _child_class = CounterSeries

    def __init__(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                 *, registry: Registry | None = None) -> None:
        _Family.__init__(self, name, documentation, labelnames, (), registry)
        self._declare()


class Gauge(_Family[GaugeSeries], GaugeSeries):
    """A value that goes up and down. ``mode`` says how workers merge: ``sum`` (default), ``max``,
    ``min``, ``last`` (the most recently set) or ``all`` (one series per worker, with a ``pid`` label).
    Only live workers count: a dead worker's gauge is dropped.

    >>> IN_FLIGHT = Gauge("http.in_flight", "Requests being served")
    >>> with IN_FLIGHT.track_inprogress():
    ...     handle()
    """

    kind = GAUGE
    _child_class = GaugeSeries

    def __new__(cls, *args: Any, mode: str = "sum", **kwargs: Any) -> Gauge:
        return object.__new__(_LastGauge if mode == "last" else cls)

    def __init__(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                 *, mode: str = "sum", registry: Registry | None = None) -> None:
        if mode not in GAUGE_MODES:
            raise ValueError(f"gauge mode {mode!r} is not one of {GAUGE_MODES}")
        _Family.__init__(self, name, documentation, labelnames, (mode,), registry)
        self._declare()

    @property
    def mode(self) -> str:
        return str(self._extra[0])


class _LastGauge(Gauge, _LastGaugeSeries):
    _child_class = _LastGaugeSeries


class Histogram(_Family[HistogramSeries], HistogramSeries):
    """Observations counted in buckets (``le`` upper bounds; +Inf is added), summed across workers.

    >>> LATENCY = Histogram("http.latency", "Seconds per request", buckets=(0.01, 0.1, 1))
    >>> LATENCY.observe(0.042)
    >>> with LATENCY.time():
    ...     handle()
    """

    kind = HISTOGRAM
    _child_class = HistogramSeries

    def __init__(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                 *, buckets: Sequence[float] = DEFAULT_BUCKETS, registry: Registry | None = None) -> None:
        bounds = _bucket_bounds(buckets)
        _Family.__init__(self, name, documentation, labelnames, bounds, registry)
        self._init_child()
        self._declare()


def _bucket_bounds(buckets: Sequence[float | str]) -> tuple[float, ...]:
    """The finite upper bounds of ``buckets``, sorted; +Inf (a number or a string such as ``"+Inf"``) is
    dropped, as every histogram has it."""
    values = [float(b) for b in buckets]
    bounds = tuple(sorted(v for v in values if v != math.inf))
    if not bounds or len(set(bounds)) != len(bounds) or not all(math.isfinite(v) for v in bounds):
        raise ValueError("histogram buckets must be distinct finite numbers (+Inf is implied), "
                         f"got {tuple(buckets)!r}")
    return bounds
