"""prometheus_client's metric classes on rockstar-mp's shared segment: a drop-in for its multiprocess mode.

``Counter``, ``Gauge``, ``Histogram``, ``Summary``, ``Info`` and ``Enum`` take prometheus_client's
constructor arguments (``name, documentation, labelnames=(), namespace='', subsystem='', unit='',
registry=REGISTRY``, and ``multiprocess_mode=``, ``buckets=``, ``states=``) and have its methods. They are
rockstar-mp's native metrics (``rockstar_mp.metrics``) underneath: an update is one store into the worker's
slab, and the aggregator merges every worker, so migrating an app is changing its imports and deleting the
``PROMETHEUS_MULTIPROC_DIR`` set-up, its ``child_exit`` hook and its metrics view
(docs/migrating-from-prometheus-client.md).

Example::

    from rockstar_mp.prometheus import Counter, Gauge, Histogram

    REQUESTS = Counter("app_requests", "Requests served", ["method"])
    IN_FLIGHT = Gauge("app_in_flight", "Requests being served", multiprocess_mode="livesum")
    LATENCY = Histogram("app_latency", "Seconds per request", unit="seconds")

    REQUESTS.labels(method="GET").inc()
    with IN_FLIGHT.track_inprogress(), LATENCY.time():
        handle()

What differs from prometheus_client, in short: metrics declared with the default registry are merged
across workers by the aggregator; with ``registry=None`` or a registry of your own they stay in the process
(``collect()`` and ``CollectorRegistry.get_sample_value`` read them, nothing merges them), as
prometheus_client without multiprocess mode. Gauges of dead workers are dropped in every mode. ``remove``
and ``clear`` forget series in this process only; the merged series stay, as prometheus_client's files keep
them. Exemplars are checked and dropped.
"""
from __future__ import annotations

import inspect
import json
import os
import threading
import time as _time
import types
import weakref
from bisect import bisect_left
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence, TypeVar

from . import metrics as native
from .series import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    INFO_LABEL,
    METADATA_SERIES,
    SUMMARY_SKETCH,
    SeriesKey,
    check_labelnames,
)
from .sketch import bucket_index
from .sketch import quantile as sketch_quantile

__all__ = ["Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "CollectorRegistry", "REGISTRY",
           "MULTIPROCESS_MODES"]

INF = float("inf")
# prometheus_client's default buckets, +Inf included
DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0, INF)
# prometheus_client's gauge modes and ours: the ``live`` ones mean the same; the others keep a dead
# process's value in prometheus_client (its file stays) and drop it here (a dead worker's gauge has no meaning)
MULTIPROCESS_MODES = {
    "all": "all", "liveall": "all",
    "sum": "sum", "livesum": "sum",
    "max": "max", "livemax": "max",
    "min": "min", "livemin": "min",
    "mostrecent": "last", "livemostrecent": "last",
}
EXEMPLAR_MAX_CHARS = 128  # OpenMetrics' limit on an exemplar's label names and values together

F = TypeVar("F", bound=Callable[..., Any])


# -- registries -------------------------------------------------------------------------------------------

class CollectorRegistry:
    """prometheus_client's ``CollectorRegistry``, enough of it for metrics and tests: ``register``,
    ``unregister``, ``collect`` and ``get_sample_value`` (which read this process's values).

    Metrics of the default ``REGISTRY`` live in the worker's slab and are merged by the aggregator; those of
    another ``CollectorRegistry`` (or of prometheus_client's) stay in this process.

    >>> registry = CollectorRegistry()
    >>> c = Counter("jobs", "Jobs run", registry=registry)
    >>> c.inc()
    >>> registry.get_sample_value("jobs_total")
    1.0
    """

    def __init__(self, auto_describe: bool = False, target_info: dict[str, str] | None = None) -> None:
        self._collectors: dict[Any, list[str]] = {}
        self._names: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._native = native.Registry()  # where the cells of metrics registered here live

    def register(self, collector: Any) -> None:
        """Add a collector; ``ValueError`` if one of its names is taken."""
        names = _collector_names(collector)
        with self._lock:
            taken = sorted(set(names) & set(self._names))
            if taken:
                raise ValueError(f"Duplicated timeseries in CollectorRegistry: {taken}")
            self._collectors[collector] = names
            self._names.update(dict.fromkeys(names, collector))

    def unregister(self, collector: Any) -> None:
        with self._lock:
            for name in self._collectors.pop(collector, []):
                self._names.pop(name, None)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample in this process, or None (for tests, as prometheus_client's)."""
        wanted = labels or {}
        for metric in self.collect():
            for sample in metric.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return None


REGISTRY = CollectorRegistry()
REGISTRY._native = native.REGISTRY  # the default registry's metrics are the segment's

_FOREIGN: weakref.WeakKeyDictionary[Any, native.Registry] = weakref.WeakKeyDictionary()


def _native_registry(registry: Any) -> native.Registry:
    """Where a metric's cells live: the segment for the default registry, private memory otherwise."""
    if registry is None:
        return native.Registry()
    if isinstance(registry, CollectorRegistry):
        return registry._native
    found = _FOREIGN.get(registry)
    if found is None:
        found = _FOREIGN[registry] = native.Registry()
    return found


_SUFFIXES = {"counter": ("_total", "_created"), "summary": ("_sum", "_count", "_created"),
             "histogram": ("_bucket", "_sum", "_count", "_created"), "info": ("_info",)}


def _collector_names(collector: Any) -> list[str]:
    describe = getattr(collector, "describe", None)
    if describe is None:
        return []
    names = []
    for metric in describe():
        names.append(metric.name)
        names.extend(metric.name + suffix for suffix in _SUFFIXES.get(metric.type, ()))
    return names


# -- what collect() returns ------------------------------------------------------------------------------

def _new_metric(name: str, documentation: str, typ: str, unit: str) -> Any:
    """A prometheus_client ``Metric`` (``collect()`` feeds prometheus_client's registries and exposition)."""
    try:
        from prometheus_client.metrics_core import Metric
    except ImportError:  # pragma: no cover - the aggregator serves the merged metrics without it
        raise ImportError("collect() returns prometheus_client objects: pip install prometheus_client "
                          "(the aggregator's /metrics needs no collect())") from None
    return Metric(name, documentation, typ, unit)


def _use_created() -> bool:
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


# -- names and checks -------------------------------------------------------------------------------------

def _full_name(kind: str, name: str, namespace: str, subsystem: str, unit: str) -> str:
    """prometheus_client's naming: namespace_subsystem_name, a counter's ``_total`` dropped, then ``_unit``."""
    if not name:
        raise ValueError("Metric name should not be empty")
    full = "_".join(part for part in (namespace, subsystem, name) if part)
    if kind == "counter" and full.endswith("_total"):
        full = full[:-len("_total")]
    if unit and not full.endswith("_" + unit):
        full += "_" + unit
    if unit and kind in ("info", "stateset"):
        raise ValueError(f"Metric name is of a type that cannot have a unit: {full}")
    return full


def _check_exemplar(exemplar: dict[str, str]) -> None:
    chars = sum(len(k) + len(v) for k, v in exemplar.items())
    if chars > EXEMPLAR_MAX_CHARS:
        raise ValueError(f"Exemplar labels have {chars} UTF-8 characters, exceeding the limit of "
                         f"{EXEMPLAR_MAX_CHARS}")


class _MissingLabels(native._Unbound):
    """The cells of a labelled parent: an update says what is missing, as prometheus_client does."""

    def __init__(self, kind: str) -> None:  # only the message differs from the base class
        self._message = f"{kind} metric is missing label values: call .labels(...) and update the result"

    def __getitem__(self, _key: int) -> NoReturn:
        raise ValueError(self._message)

    def __setitem__(self, _key: int, _value: float) -> NoReturn:
        raise ValueError(self._message)


# -- decorators that keep the decorated function's signature ------------------------------------------

class _Placeholder:
    """Stands for a default value in generated source: its repr is the name the value is bound to."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_STARS: dict[Any, str] = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}


def _decorate(func: F, context: Callable[[], Any]) -> F:
    """``func`` run inside ``context()`` at each call, with ``func``'s own signature (tools that read
    signatures, and prometheus_client's tests, see the original arguments)."""
    signature = inspect.signature(func)
    namespace: dict[str, Any] = {"__rockstar_func": func, "__rockstar_context": context}
    params, call = [], []
    for i, param in enumerate(signature.parameters.values()):
        if param.default is not inspect.Parameter.empty:
            namespace[f"__rockstar_d{i}"] = param.default
            param = param.replace(default=_Placeholder(f"__rockstar_d{i}"))
        params.append(param.replace(annotation=inspect.Parameter.empty))
        prefix = _STARS.get(param.kind, "")
        keyword = f"{param.name}=" if param.kind is inspect.Parameter.KEYWORD_ONLY else ""
        call.append(f"{keyword}{prefix}{param.name}")
    text = str(signature.replace(parameters=params, return_annotation=inspect.Signature.empty))
    asynchronous = inspect.iscoroutinefunction(func)
    source = (f"{'async ' if asynchronous else ''}def __rockstar_wrapper{text}:\n"
              f"    with __rockstar_context():\n"
              f"        return {'await ' if asynchronous else ''}__rockstar_func({', '.join(call)})\n")
    exec(compile(source, f"<rockstar_mp.prometheus wrapper of {func.__qualname__}>", "exec"), namespace)
    wrapper = namespace["__rockstar_wrapper"]
    wrapper.__wrapped__ = func
    for attribute in ("__name__", "__doc__", "__module__", "__qualname__", "__dict__"):
        if hasattr(func, attribute):
            value = getattr(func, attribute)
            if attribute == "__dict__":
                wrapper.__dict__.update(value)
            else:
                setattr(wrapper, attribute, value)
    return wrapper


class Timer:
    """``metric.time()``: a context manager (``as t``: ``t.duration`` after the block, ``t.labels(...)``
    inside it for a labelled metric) and a decorator."""

    def __init__(self, metric: Any, callback: str) -> None:
        self._metric = metric
        self._callback = callback
        self._start = 0.0
        self.duration: float | None = None

    def labels(self, *values: object, **kwvalues: object) -> None:
        """Time into this child of the labelled metric (call it inside the ``with`` block)."""
        self._metric = self._metric.labels(*values, **kwvalues)

    def __enter__(self) -> "Timer":
        self._start = _time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.duration = max(_time.perf_counter() - self._start, 0.0)
        getattr(self._metric, self._callback)(self.duration)

    def __call__(self, func: F) -> F:
        return _decorate(func, lambda: Timer(self._metric, self._callback))


class _ExceptionCounter:
    def __init__(self, counter: "CounterChild", exception: type[BaseException] | tuple) -> None:
        self._counter = counter
        self._exception = exception

    def __enter__(self) -> None:
        pass

    def __exit__(self, typ: Any, value: Any, traceback: Any) -> None:
        if isinstance(value, self._exception):
            self._counter.inc()

    def __call__(self, func: F) -> F:
        return _decorate(func, lambda: self)


class _InprogressTracker:
    def __init__(self, gauge: "GaugeChild") -> None:
        self._gauge = gauge

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(self, *exc: object) -> None:
        self._gauge.dec()

    def __call__(self, func: F) -> F:
        return _decorate(func, lambda: self)


# -- the series -------------------------------------------------------------------------------------------

class _Child:
    """What every series of ours adds to a native one: its label values, its creation time, and
    ``labels()`` refused (a child has its values)."""

    _labelvalues: tuple[str, ...] = ()
    _created = 0.0

    def _init_child(self) -> None:
        self._created = _time.time()

    def _init_series(self, key: SeriesKey, registry: native.Registry) -> None:
        self._labelvalues = tuple(key.labelvalues)
        native._Series._init_series(self, key, registry)  # type: ignore[arg-type]

    def labels(self, *values: object, **kwvalues: object) -> Any:
        raise ValueError("this series already has its label values: call labels() on the metric")

    def _raise_if_not_observable(self) -> None:
        if isinstance(getattr(self, "_vals", None), _MissingLabels):
            raise ValueError(f"{self._kind_name} metric is missing label values")  # type: ignore[attr-defined]


class CounterChild(_Child, native.CounterSeries):
    """A ``Counter`` without labels, or what ``Counter.labels()`` returns."""

    _kind_name = "counter"

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0); an ``exemplar`` is checked and dropped."""
        if exemplar is None and amount >= 0:  # the usual call: one test more than the native inc
            self._vals[self._idx] += amount
            return
        if exemplar is not None:
            _check_exemplar(exemplar)
        if not amount >= 0:  # also refuses NaN
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._vals[self._idx] += amount

    def reset(self) -> None:
        """Back to 0 (in this worker), with a new ``_created``."""
        self._vals[self._idx] = 0.0
        self._created = _time.time()

    def count_exceptions(self, exception: type[BaseException] | tuple = Exception) -> _ExceptionCounter:
        """Context manager and decorator: +1 for each exception of this type raised through it."""
        self._raise_if_not_observable()
        return _ExceptionCounter(self, exception)

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        out = [(name + "_total", labels, self._vals[self._idx])]
        if created:
            out.append((name + "_created", labels, self._created))
        return out


class GaugeChild(_Child, native.GaugeSeries):
    """A ``Gauge`` without labels, or what ``Gauge.labels()`` returns."""

    _kind_name = "gauge"
    _stamped = False  # mode ``last`` (prometheus_client's mostrecent): set() also stores its time
    _function: Callable[[], float] | None = None

    def inc(self, amount: float = 1) -> None:
        if self._stamped:
            raise RuntimeError("inc must not be used with the mostrecent mode: use set()")
        self._vals[self._idx] += amount

    def dec(self, amount: float = 1) -> None:
        if self._stamped:
            raise RuntimeError("dec must not be used with the mostrecent mode: use set()")
        self._vals[self._idx] -= amount

    def set(self, value: float) -> None:
        self._vals[self._idx] = float(value)
        if self._stamped:
            self._vals[self._idx + 1] = _time.time()

    def set_to_current_time(self) -> None:
        self.set(_time.time())

    def track_inprogress(self) -> _InprogressTracker:  # type: ignore[override]
        """Context manager and decorator: +1 while the block (or call) runs."""
        self._raise_if_not_observable()
        return _InprogressTracker(self)

    def time(self) -> Timer:
        """Context manager and decorator: set the gauge to the seconds the block took."""
        return Timer(self, "set")

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function`` when collected in this process (not merged: the aggregator
        cannot call into a worker)."""
        self._raise_if_not_observable()
        self._function = function

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        value = self._function() if self._function is not None else self._vals[self._idx]
        return [(name, labels, value)]


class HistogramChild(_Child, native.HistogramSeries):
    """A ``Histogram`` without labels, or what ``Histogram.labels()`` returns."""

    _kind_name = "histogram"

    def _init_child(self) -> None:
        _Child._init_child(self)
        self._bounds = self._family._extra
        self._sum_at = len(self._bounds) + 1

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Count ``amount`` in its bucket (``le``) and add it to the sum; an ``exemplar`` is checked and
        dropped."""
        if exemplar is not None:
            _check_exemplar(exemplar)
        vals = self._vals
        idx = self._idx
        vals[idx + bisect_left(self._bounds, amount)] += 1.0
        vals[idx + self._sum_at] += amount

    def time(self) -> Timer:  # type: ignore[override]
        """Context manager and decorator: observe the seconds the block took."""
        return Timer(self, "observe")

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        out, cumulative = [], 0.0
        values = self._values()
        for bound, count in zip((*self._bounds, INF), values, strict=False):
            cumulative += count
            out.append((name + "_bucket", {**labels, "le": _go_float(bound)}, cumulative))
        out += [(name + "_count", labels, cumulative), (name + "_sum", labels, values[-1])]
        if created:
            out.append((name + "_created", labels, self._created))
        return out


class SummaryChild(_Child, native.HistogramSeries):
    """A ``Summary`` without labels, or what ``Summary.labels()`` returns: a count and a sum (a native
    histogram without finite buckets, which the aggregator serves as a summary)."""

    _kind_name = "summary"

    def observe(self, amount: float) -> None:
        """Count ``amount`` and add it to the sum."""
        vals = self._vals
        idx = self._idx
        vals[idx] += 1.0
        vals[idx + 1] += amount

    def time(self) -> Timer:  # type: ignore[override]
        """Context manager and decorator: observe the seconds the block took."""
        return Timer(self, "observe")

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        out = [(name + "_count", labels, self._vals[self._idx]), (name + "_sum", labels, self._vals[self._idx + 1])]
        if created:
            out.append((name + "_created", labels, self._created))
        return out


class _QuantileSummaryChild(SummaryChild):
    """A series of a ``Summary`` declared with ``quantiles=``: each observation also counts in a bucket of
    rockstar-mp's latency sketch (relative error 0.99 %), which merges across workers by addition."""

    _sketch: dict[int, native.CounterSeries]

    def _init_series(self, key: SeriesKey, registry: native.Registry) -> None:
        SummaryChild._init_series(self, key, registry)
        self._sketch = {}
        self._sketch_labels = json.dumps(list(key.labelvalues), separators=(",", ":"))

    def observe(self, amount: float) -> None:
        """Count ``amount``, add it to the sum and to the quantile sketch (values below 1e-6 count as 1e-6)."""
        vals = self._vals
        idx = self._idx
        vals[idx] += 1.0
        vals[idx + 1] += amount
        index = bucket_index(amount)
        bucket = self._sketch.get(index)
        if bucket is None:
            family: Any = self._family
            sketch = _SKETCH if family._shared else family._private_sketch
            bucket = self._sketch[index] = sketch.labels(family._name, self._sketch_labels, str(index))
        bucket.inc()

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        counts = {index: bucket.get() for index, bucket in self._sketch.items()}
        family: Any = self._family
        found = [(q, sketch_quantile(counts, q)) for q in family._quantiles]
        out = [(name, {**labels, "quantile": _go_float(q)}, float("nan") if v is None else v) for q, v in found]
        return out + SummaryChild._samples(self, name, labels, created)


def _go_float(value: float) -> str:
    return "+Inf" if value == INF else repr(float(value))


# -- the families -----------------------------------------------------------------------------------------

class _PrometheusFamily:
    """prometheus_client's family methods on a native family: naming, registries, ``remove``, ``clear``,
    ``describe`` and ``collect``."""

    _type = ""
    _name: str
    _vals: memoryview[float] | native._Unbound
    _labelnames: tuple[str, ...]
    _registry: native.Registry
    _children: dict[tuple[object, ...], Any]
    _lock: threading.Lock
    labelnames: tuple[str, ...]

    def _set_up(self, name: str, documentation: str, labelnames: Iterable[str], namespace: str,
                subsystem: str, unit: str, registry: Any, extra: tuple[Any, ...]) -> None:
        self._name = _full_name(self._type, name, namespace, subsystem, unit)
        self._documentation = documentation
        self._unit = unit
        self._labelnames = tuple(labelnames)
        self._removed: dict[tuple[str, ...], Any] = {}
        self._shared = registry is REGISTRY  # in the segment: merged, and a removed child's cells are kept
        native._Family.__init__(self, self._name, documentation, self._labelnames, extra,  # type: ignore[arg-type]
                                _native_registry(registry))
        self._init_child()  # type: ignore[attr-defined]  # (a labelled parent's is never used)
        if self._labelnames:
            self._vals = _MissingLabels(self._type)
        self._declare()  # type: ignore[attr-defined]
        self._register(registry)

    def _register(self, registry: Any) -> None:
        try:
            if registry is not None:
                registry.register(self)
        except Exception:
            self._registry.unregister(self)  # type: ignore[arg-type]
            raise
        if self._shared and self._unit:
            _declare_metadata(self._exposed_family(), "", self._unit)

    def _exposed_family(self) -> str:
        return self._name

    def _new_child(self, values: tuple[object, ...]) -> Any:
        if self._removed:
            text = tuple(str(v) for v in values)
            child = self._removed.pop(text, None)
            if child is not None:  # the same cells again: a catalogue entry is never appended twice
                with self._lock:
                    self._children[text] = child
                    self._children[values] = child
                return child
        return native._Family._new_child(self, values)  # type: ignore[arg-type]

    def _forget(self, match: Callable[[tuple[str, ...]], bool]) -> None:
        with self._lock:
            for values, child in list(self._children.items()):
                if match(child._labelvalues):
                    del self._children[values]
                    if self._shared:
                        self._removed[child._labelvalues] = child

    def remove(self, *labelvalues: object) -> None:
        """Forget one child in this process (``labels()`` makes it again; the merged series stays)."""
        if len(labelvalues) != len(self._labelnames):
            raise ValueError(f"Incorrect label count (expected {len(self._labelnames)}, got {labelvalues})")
        text = tuple(str(v) for v in labelvalues)
        self._forget(lambda values: values == text)

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        """Forget every child whose label values include ``labels``."""
        unknown = set(labels) - set(self._labelnames)
        if unknown:
            raise ValueError(f"Unknown label names: {sorted(unknown)}; this metric has {self._labelnames}")
        if not labels:
            return
        wanted = [(self._labelnames.index(k), str(v)) for k, v in labels.items()]
        self._forget(lambda values: all(values[i] == v for i, v in wanted))

    def clear(self) -> None:
        """Forget every child in this process."""
        if self._labelnames:
            self._forget(lambda values: True)

    def _is_observable(self) -> bool:
        return not self._labelnames

    def _metric(self) -> Any:
        return _new_metric(self._name, self._documentation, self._type, self._unit)

    def describe(self) -> list[Any]:
        return [self._metric()]

    def _live_children(self) -> list[Any]:
        if not self._labelnames:
            return [self]
        with self._lock:
            return list({id(c): c for c in self._children.values()}.values())

    def collect(self) -> list[Any]:
        """This process's values, as prometheus_client ``Metric``s."""
        metric = self._metric()
        created = _use_created()
        for child in self._live_children():
            labels = dict(zip(self._labelnames, child._labelvalues, strict=True))
            for name, sample_labels, value in child._samples(self._name, labels, created):
                metric.add_sample(name, sample_labels, value)
        return [metric]

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self._name})"


class Counter(_PrometheusFamily, native._Family[CounterChild], CounterChild):
    """prometheus_client's ``Counter``: a count that only goes up; summed across workers, a dead worker's
    count kept.

    >>> ERRORS = Counter("app_errors", "Errors", ["kind"])
    >>> ERRORS.labels(kind="timeout").inc()
    >>> with ERRORS.labels("parse").count_exceptions(ValueError):
    ...     parse()
    """

    kind = COUNTER
    _type = "counter"
    _child_class = CounterChild

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None) -> None:
        self._set_up(name, documentation, labelnames, namespace, subsystem, unit, registry, ())


class Gauge(_PrometheusFamily, native._Family[GaugeChild], GaugeChild):
    """prometheus_client's ``Gauge``. ``multiprocess_mode`` (default ``all``: one series per live worker,
    with a ``pid`` label) maps to ours (``MULTIPROCESS_MODES``); in every mode a dead worker's value is
    dropped.

    >>> IN_FLIGHT = Gauge("app_in_flight", "Requests being served", multiprocess_mode="livesum")
    >>> with IN_FLIGHT.track_inprogress():
    ...     handle()
    """

    kind = GAUGE
    _type = "gauge"
    _child_class = GaugeChild

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None, multiprocess_mode: str = "all") -> None:
        if multiprocess_mode not in MULTIPROCESS_MODES:
            raise ValueError(f"Invalid multiprocess mode: {multiprocess_mode!r}; "
                             f"use one of {sorted(MULTIPROCESS_MODES)}")
        self._multiprocess_mode = multiprocess_mode
        mode = MULTIPROCESS_MODES[multiprocess_mode]
        self._stamped = mode == "last"
        self._set_up(name, documentation, labelnames, namespace, subsystem, unit, registry, (mode,))

    def _new_child(self, values: tuple[object, ...]) -> Any:
        child = _PrometheusFamily._new_child(self, values)
        child._stamped = self._stamped
        return child


def _histogram_bounds(buckets: Sequence[float | str]) -> list[float]:
    """prometheus_client's rules: sorted, +Inf appended when missing, at least two buckets."""
    bounds = [float(b) for b in buckets]
    if bounds != sorted(bounds):
        raise ValueError("Buckets not in sorted order")
    if bounds and bounds[-1] != INF:
        bounds.append(INF)
    if len(bounds) < 2:
        raise ValueError("Must have at least two buckets")
    return bounds


class Histogram(_PrometheusFamily, native._Family[HistogramChild], HistogramChild):
    """prometheus_client's ``Histogram``: observations in ``le`` buckets, summed across workers.

    >>> LATENCY = Histogram("app_latency", "Seconds per request", unit="seconds", buckets=(0.1, 1, 10))
    >>> LATENCY.observe(0.042)
    """

    kind = HISTOGRAM
    _type = "histogram"
    _child_class = HistogramChild

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None, buckets: Sequence[float | str] = DEFAULT_BUCKETS) -> None:
        if "le" in tuple(labelnames):
            raise ValueError("Invalid label metric name: le")
        self._upper_bounds = _histogram_bounds(buckets)
        extra = native._bucket_bounds(self._upper_bounds)
        self._set_up(name, documentation, labelnames, namespace, subsystem, unit, registry, extra)


class Summary(_PrometheusFamily, native._Family[SummaryChild], SummaryChild):
    """prometheus_client's ``Summary``: ``_count`` and ``_sum``, summed across workers. With
    ``quantiles=`` (ours, not prometheus_client's) it also serves those quantiles (``quantile`` label),
    from rockstar-mp's mergeable latency sketch: exact to 0.99 %, over every worker, live and exited, since
    the start, for observations of at least 1e-6.

    >>> PAYLOAD = Summary("app_payload", "Request bytes", unit="bytes")
    >>> PAYLOAD.observe(512)
    >>> LATENCY = Summary("app_latency", "Seconds per request", quantiles=(0.5, 0.99))
    """

    kind = HISTOGRAM  # a histogram without finite buckets: its cells are the count and the sum
    _type = "summary"
    _child_class = SummaryChild

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None, quantiles: Sequence[float] = ()) -> None:
        if "quantile" in tuple(labelnames):
            raise ValueError("Invalid label metric name: quantile")
        self._quantiles = tuple(float(q) for q in quantiles)
        if not all(0 < q <= 1 for q in self._quantiles):
            raise ValueError(f"quantiles must be in (0, 1], got {tuple(quantiles)!r}")
        if self._quantiles:
            self._child_class = _QuantileSummaryChild
            self._private_sketch = native.Counter(SUMMARY_SKETCH, "", ("family", "labels", "bucket"),
                                                  registry=native.Registry())
        self._set_up(name, documentation, labelnames, namespace, subsystem, unit, registry, ())
        if self._quantiles and not self._labelnames:  # the metric is its own series
            self._sketch: dict[int, native.CounterSeries] = {}
            self._sketch_labels = "[]"
            self.observe = types.MethodType(_QuantileSummaryChild.observe, self)  # type: ignore[method-assign]
            self._samples = types.MethodType(_QuantileSummaryChild._samples, self)  # type: ignore[method-assign]
        if self._quantiles and self._shared:
            _declare_metadata(self._name, "quantiles=" + ",".join(map(repr, self._quantiles)), self._unit)


# -- Info and Enum: gauges whose series this module makes itself -------------------------------------

class _StateSeries(native.GaugeSeries):
    """A 0/1 gauge series of an ``Info`` or ``Enum``, merged as ``last`` (the newest update wins). Its
    value is state, not a count: it survives the move into the slab at attach."""

    def _init_child(self) -> None:
        pass

    def _bind(self, store: native.Store) -> None:
        kept = self._values() if hasattr(self, "_vals") else None
        native._Series._bind(self, store)
        if kept:
            for i, value in enumerate(kept):
                self._vals[self._idx + i] = value

    def put(self, value: float) -> None:
        self._vals[self._idx] = value
        self._vals[self._idx + 1] = _time.time()


class _StateFamily(native._Family[_StateSeries]):
    """The native family behind an ``Info`` or ``Enum`` (and the metadata): series this module keys itself,
    all moved at attach."""

    kind = GAUGE
    _child_class = _StateSeries

    def __init__(self, name: str, documentation: str, registry: native.Registry, mode: str = "last") -> None:
        native._Family.__init__(self, name, documentation, ("_",), (mode,), registry)
        self.labelnames = ()
        self._made: dict[tuple[tuple[str, ...], tuple[str, ...]], _StateSeries] = {}
        self._registry.register(self)

    def series(self, labelnames: tuple[str, ...], labelvalues: tuple[str, ...]) -> _StateSeries:
        found = self._made.get((labelnames, labelvalues))
        if found is not None:
            return found
        with self._registry._lock, self._lock:
            found = self._made.get((labelnames, labelvalues))
            if found is None:
                found = _StateSeries.__new__(_StateSeries)
                found._family = self
                found._init_series(SeriesKey(self.kind, self.name, self.documentation, labelnames,
                                             labelvalues, self._extra), self._registry)
                self._made[(labelnames, labelvalues)] = found
            return found

    def _all_series(self) -> list[native._Series]:
        with self._lock:
            return list(self._made.values())


_METADATA = _StateFamily(METADATA_SERIES, "rockstar-mp: families' types and units", native.REGISTRY, mode="max")
_SKETCH = native.Counter(SUMMARY_SKETCH, "rockstar-mp: quantile sketches of summaries", ("family", "labels", "bucket"))


def _declare_metadata(family: str, typ: str, unit: str) -> None:
    """Tell the aggregator what the segment's keys cannot say: a family's unit (OpenMetrics ``# UNIT``)."""
    _METADATA.series(("family", "type", "unit"), (family, typ, unit)).put(1.0)


class _StateChild:
    """A child of an ``Info`` or ``Enum``: its label values and the state series it sets."""

    def __init__(self, family: "_StateMetric", labelvalues: tuple[str, ...]) -> None:
        self._family = family
        self._labelvalues = labelvalues
        self._lock = threading.Lock()

    def labels(self, *values: object, **kwvalues: object) -> Any:
        raise ValueError("this series already has its label values: call labels() on the metric")


class _StateMetric(_PrometheusFamily):
    """What ``Info`` and ``Enum`` share: label handling over a ``_StateFamily``."""

    _suffix = ""

    def _set_up_state(self, name: str, documentation: str, labelnames: Iterable[str], namespace: str,
                      subsystem: str, unit: str, registry: Any) -> None:
        self._name = _full_name(self._type, name, namespace, subsystem, unit)
        self._documentation = documentation
        self._unit = ""
        self._labelnames = self.labelnames = tuple(labelnames)
        check_labelnames(self._labelnames, GAUGE)
        self._shared = registry is REGISTRY
        self._removed = {}
        self._lock = threading.Lock()
        self._children = {}
        self._registry = _native_registry(registry)
        self._states = _StateFamily(self._name + self._suffix, documentation, self._registry)
        if not self._labelnames:
            self._self_child = self._make_child(())
        try:
            if registry is not None:
                registry.register(self)
        except Exception:
            self._registry.unregister(self._states)
            raise

    def _exposed_family(self) -> str:
        return self._name + self._suffix

    def _make_child(self, labelvalues: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def labels(self, *values: object, **kwvalues: object) -> Any:
        """The child for these label values (positional, or all by name)."""
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self!r}")
        if kwvalues:
            if values or set(kwvalues) != set(self._labelnames):
                raise ValueError(f"Incorrect label names: {self._name} takes {self._labelnames}")
            values = tuple(kwvalues[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"Incorrect label count: {self._name} takes {self._labelnames}")
        text = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(text) or self._removed.pop(text, None)
            if child is None:
                child = self._make_child(text)
            self._children[text] = child
            return child

    def _live_children(self) -> list[Any]:
        if not self._labelnames:
            return [self._self_child]
        with self._lock:
            return list(self._children.values())

    def _forget(self, match: Callable[[tuple[str, ...]], bool]) -> None:
        with self._lock:
            for values in [v for v in self._children if match(v)]:  # type: ignore[arg-type]  # str keys here
                child = self._children.pop(values)
                if self._shared:
                    self._removed[values] = child  # type: ignore[index]

    def _not_observable(self) -> ValueError:
        return ValueError(f"{self._type} metric is missing label values")


class InfoChild(_StateChild):
    """An ``Info`` without labels, or what ``Info.labels()`` returns."""

    def __init__(self, family: "_StateMetric", labelvalues: tuple[str, ...]) -> None:
        super().__init__(family, labelvalues)
        self._value: dict[str, str] = {}
        self._series = self._info_series({})
        self._series.put(1.0)

    def _info_series(self, val: dict[str, str]) -> _StateSeries:
        """The series of this info: the pairs go in one label, so the label names never change (the
        aggregator serves them as labels)."""
        pairs = json.dumps(sorted((str(k), str(v)) for k, v in val.items()), separators=(",", ":"))
        return self._family._states.series(self._family._labelnames + (INFO_LABEL,),
                                           self._labelvalues + (pairs,))

    def info(self, val: dict[str, str]) -> None:
        """Set the info: a dict of label names and values (served as one ``<name>_info`` series at 1)."""
        names = self._family._labelnames
        overlap = set(names) & set(val)
        if overlap:
            raise ValueError(f"Overlapping labels for Info metric, metric: {names} child: {sorted(val)}")
        if any(v is None for v in val.values()):
            raise ValueError("Label value cannot be None")
        series = self._info_series(val)
        with self._lock:
            if series is not self._series:
                self._series.put(0.0)
            series.put(1.0)
            self._series, self._value = series, dict(val)

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        return [(name + "_info", {**labels, **self._value}, 1.0)]


class Info(_StateMetric):
    """prometheus_client's ``Info``: one ``<name>_info`` series at 1 whose labels carry the info. Merged
    as ``mostrecent`` (prometheus_client has no Info in multiprocess mode).

    >>> BUILD = Info("app_build", "Build of the app")
    >>> BUILD.info({"version": "1.2.3", "commit": "abc123"})
    """

    _type = "info"
    _suffix = "_info"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None) -> None:
        self._set_up_state(name, documentation, labelnames, namespace, subsystem, unit, registry)

    def _make_child(self, labelvalues: tuple[str, ...]) -> InfoChild:
        return InfoChild(self, labelvalues)

    def info(self, val: dict[str, str]) -> None:
        """Set the info of an ``Info`` without labels."""
        if self._labelnames:
            raise self._not_observable()
        self._self_child.info(val)


class EnumChild(_StateChild):
    """An ``Enum`` without labels, or what ``Enum.labels()`` returns."""

    def __init__(self, family: "Enum", labelvalues: tuple[str, ...]) -> None:
        super().__init__(family, labelvalues)
        names = family._labelnames + (family._name,)
        self._series = [family._states.series(names, labelvalues + (s,)) for s in family._states_list]
        self._state = 0
        self._series[0].put(1.0)

    def state(self, state: str) -> None:
        """Set the current state (one of ``states``)."""
        try:
            index = self._family._states_list.index(state)  # type: ignore[attr-defined]
        except ValueError:
            raise ValueError(f"{state!r} is not one of the states {self._family._states_list}") from None  # type: ignore[attr-defined]
        with self._lock:
            for i, series in enumerate(self._series):
                series.put(1.0 if i == index else 0.0)
            self._state = index

    def _samples(self, name: str, labels: dict[str, str], created: bool) -> list[tuple]:
        return [(name, {**labels, name: s}, 1.0 if i == self._state else 0.0)
                for i, s in enumerate(self._family._states_list)]  # type: ignore[attr-defined]


class Enum(_StateMetric):
    """prometheus_client's ``Enum``: one series per state, 1 for the current one. Merged as
    ``mostrecent`` (prometheus_client has no Enum in multiprocess mode).

    >>> PHASE = Enum("app_phase", "Phase", states=["starting", "serving", "draining"])
    >>> PHASE.state("serving")
    """

    _type = "stateset"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), namespace: str = "",
                 subsystem: str = "", unit: str = "", registry: Any = REGISTRY,
                 _labelvalues: Sequence[str] | None = None, states: Sequence[str] | None = None) -> None:
        full = _full_name("stateset", name, namespace, subsystem, unit)
        if full in tuple(labelnames):
            raise ValueError(f"Overlapping labels for Enum metric: {full}")
        if not states:
            raise ValueError(f"No states provided for Enum metric: {full}")
        self._states_list = [str(s) for s in states]
        self._set_up_state(name, documentation, labelnames, namespace, subsystem, unit, registry)

    def _make_child(self, labelvalues: tuple[str, ...]) -> EnumChild:
        return EnumChild(self, labelvalues)

    def state(self, state: str) -> None:
        """Set the state of an ``Enum`` without labels."""
        if self._labelnames:
            raise self._not_observable()
        self._self_child.state(state)
