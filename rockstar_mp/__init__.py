"""rockstar-mp: expvar- and pprof-style monitoring for pre-fork Python servers (gunicorn first).

Workers update metrics in a shared memory segment; an aggregator process merges every worker, live and
retired, and serves them. The public API::

    from rockstar_mp import Counter, Gauge, Histogram, MonitoringConfig, MonitoringManager, attach_worker

and the errors, every one a ``RockstarError`` (``rockstar_mp.errors``).

The names load on first use (PEP 562): each process imports only its own role's modules, so the
aggregator never loads the worker's request path nor declares the worker's metric families.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# The public names, and the module each one lives in.
_EXPORTS = {
    "Counter": "metrics", "Gauge": "metrics", "Histogram": "metrics", "Registry": "metrics",
    "CounterSeries": "metrics", "GaugeSeries": "metrics", "HistogramSeries": "metrics",
    "MonitoringConfig": "config",
    "MonitoringManager": "master.manager",
    "OptimizationStats": "control",
    "attach_worker": "worker.attach",
    **{name: "errors" for name in ("RockstarError", "CatalogueFull", "LayoutMismatch", "MetricNameConflict",
                                   "NoFreeSlab", "NoSpace", "UntrustedFile", "UnsafePath", "NoSegment",
                                   "FetchError", "ProfileFetchError", "WorkerUnavailable", "ProfilerBusy")},
}

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "CounterSeries", "GaugeSeries", "HistogramSeries",
           "MonitoringConfig", "MonitoringManager",
           "OptimizationStats",
           "attach_worker", "CatalogueFull", "LayoutMismatch", "NoFreeSlab", "NoSpace", "RockstarError",
           "MetricNameConflict", "UntrustedFile", "UnsafePath", "NoSegment", "FetchError", "ProfileFetchError",
           "WorkerUnavailable", "ProfilerBusy",
           "__version__"]

if TYPE_CHECKING:
    from .config import MonitoringConfig
    from .control import OptimizationStats
    from .errors import (
        CatalogueFull,
        FetchError,
        LayoutMismatch,
        MetricNameConflict,
        NoFreeSlab,
        NoSegment,
        NoSpace,
        ProfileFetchError,
        ProfilerBusy,
        RockstarError,
        UnsafePath,
        UntrustedFile,
        WorkerUnavailable,
    )
    from .master.manager import MonitoringManager
    from .metrics import Counter, CounterSeries, Gauge, GaugeSeries, Histogram, HistogramSeries, Registry
    from .worker.attach import attach_worker


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
