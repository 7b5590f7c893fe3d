"""gunicorn hooks: ``from rockstar_mp.gunicorn import *`` in a gunicorn config file turns monitoring on.

Example ``gunicorn_conf.py``::

    from rockstar_mp import MonitoringConfig
    from rockstar_mp.gunicorn import *  # on_starting, pre_fork, post_fork, child_exit, on_exit, ...
    configure(MonitoringConfig(metrics_port=9090))

Hooks of your own can call ours: ``rockstar_mp.gunicorn.post_fork(server, worker)``.
The state lives in this module, not in the config file, so it survives gunicorn's HUP (which re-executes
the config file); a USR2 master re-attaches the segment its parent exported.
"""
from __future__ import annotations

import gc
import logging
import os

from .config import MonitoringConfig
from .master.manager import MonitoringManager
from .master.manager import RUN_DIR_ENV
from .segment import NoFreeSlab
from .worker.attach import SEGMENT_ENV, attach_worker, current
from .worker.optimize import install_usr1

__all__ = ["configure", "on_starting", "on_reload", "pre_fork", "post_fork", "post_worker_init",
           "child_exit", "pre_exec", "on_exit"]

_config: MonitoringConfig | None = None
_manager: MonitoringManager | None = None


def configure(config: MonitoringConfig) -> None:
    """Set the config the hooks use (call it in the gunicorn config file; defaults otherwise)."""
    global _config
    _config = config


def manager() -> MonitoringManager | None:
    """The master's manager (None in a worker or before ``on_starting``)."""
    return _manager


class _ToGunicornLog(logging.Handler):
    """Hands the master's rockstar-mp records (the aggregator's causes, the metrics URL once it is
    served) to gunicorn's error log: its format, its file, its level, which a HUP may change."""

    def __init__(self, server) -> None:
        super().__init__()
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        error_log = self.server.log.error_log
        if error_log.isEnabledFor(record.levelno):
            error_log.handle(record)


def _log_master_to_gunicorn(server) -> None:
    master_log = logging.getLogger("rockstar_mp.master")
    if not any(isinstance(h, _ToGunicornLog) for h in master_log.handlers):
        master_log.addHandler(_ToGunicornLog(server))
        master_log.setLevel(logging.DEBUG)  # the handler filters by gunicorn's level
        master_log.propagate = False


def on_starting(server) -> None:
    global _manager
    _log_master_to_gunicorn(server)
    _manager = MonitoringManager(_config).start()
    if _manager.config.gc_freeze_before_fork:
        gc.disable()  # Python's advice: no collections in the parent (holes), freeze before fork
    # The metrics URL is logged once the aggregator says it serves it (master/supervisor.py).
    server.log.info("rockstar-mp: segment %s", _manager.segment.path)


def on_reload(server) -> None:
    if _manager is not None and _config is not None and _config.with_env() != _manager.config:
        _manager.reload(_config)


def pre_fork(server, worker) -> None:
    if _manager is None:
        return
    if _manager.config.gc_freeze_before_fork:
        gc.freeze()  # what the app preloaded moves to the permanent generation: the child's GC skips it
    try:
        worker.rockstar_slab = _manager.assign_slab(age=worker.age)
    except NoFreeSlab as exc:  # never stop the arbiter: this worker just goes unmonitored
        server.log.error("rockstar-mp: worker age %s is not monitored: %s (during a HUP old and new "
                         "workers live at once: set max_workers >= 2 x workers)", worker.age, exc)


def post_fork(server, worker) -> None:
    slab = getattr(worker, "rockstar_slab", None)
    if _manager is not None and _manager.config.gc_freeze_before_fork:
        gc.enable()
    if _manager is not None and slab is not None:
        config = _manager.config
        attach_worker(_manager.segment, *slab, die_with_parent=True,
                      capture_logs=config.log_level if config.capture_logs else None)


def post_worker_init(worker) -> None:
    """After gunicorn installed the worker's signal handlers: SIGUSR1 also optimizes (chained)."""
    state = current()
    if state is not None:
        install_usr1(state.optimizer)


def pre_exec(server) -> None:
    """USR2: gunicorn re-executes the master with the environment it started with; add the segment,
    so the new master carries the totals on (its aggregator waits until the old one is gone)."""
    for name in (SEGMENT_ENV, RUN_DIR_ENV):
        if name in os.environ:
            server.cfg.env_orig[name] = os.environ[name]


def child_exit(server, worker) -> None:
    slab = getattr(worker, "rockstar_slab", None)
    if _manager is not None and slab is not None:
        _manager.retire_slab(*slab)


def on_exit(server) -> None:
    if _manager is not None:
        _manager.stop()
