"""rockstar-mp: expvar- and pprof-style monitoring for pre-fork Python servers (gunicorn first).

Workers update metrics in a shared memory segment; an aggregator process merges every worker, live and
retired, and serves them. The public API::

    from rockstar_mp import Counter, Gauge, Histogram, MonitoringConfig, MonitoringManager, attach_worker
"""
from .config import MonitoringConfig
from .control import OptimizationStats
from .master.manager import MonitoringManager
from .metrics import Counter, Gauge, Histogram, Registry
from .segment import CatalogueFull, LayoutMismatch, NoFreeSlab, NoSpace, RockstarError, UntrustedFile
from .worker.attach import attach_worker

__version__ = "0.1.0"

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "MonitoringConfig", "MonitoringManager",
           "OptimizationStats",
           "attach_worker", "CatalogueFull", "LayoutMismatch", "NoFreeSlab", "NoSpace", "RockstarError",
           "UntrustedFile",
           "__version__"]
