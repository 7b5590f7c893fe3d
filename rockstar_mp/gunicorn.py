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

import dataclasses
import functools
import gc
import logging
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from .config import MonitoringConfig
from .environment import RUN_DIR_ENV, SEGMENT_ENV, SEGMENT_FD_ENV
from .master.manager import MonitoringManager
from .segment import NoFreeSlab, NoSpace
from .segment.layout import Header
from .worker import hold
from .worker.attach import attach_worker, current
from .worker.optimize import install_usr1, optimizing

__all__ = ["configure", "on_starting", "on_reload", "pre_fork", "post_fork", "post_worker_init",
           "child_exit", "pre_exec", "on_exit"]

_config: MonitoringConfig | None = None
_manager: MonitoringManager | None = None
_logged_failures: set[tuple[str, str]] = set()
log = logging.getLogger("rockstar_mp.gunicorn")

# gunicorn ships no types: its arbiter (``server``) and workers are whatever it passes
Arbiter = Any
Worker = Any
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(hook: Callable[_P, _R]) -> Callable[_P, _R | None]:
    """Monitoring never takes the server down: a hook of ours that raises is logged once (per hook
    and kind of error, per process), counted in the segment's ``hook_failures``, and returns."""
    @functools.wraps(hook)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return hook(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever it is, gunicorn must go on
            _hook_failed(hook.__name__, exc, args)
            return None
    return run


def _hook_failed(name: str, exc: Exception, args: tuple[Any, ...]) -> None:
    segment = _manager.segment if _manager is not None else None
    if segment is not None:
        try:
            with segment.locked():
                Header.hook_failures.set(segment.buf, Header.hook_failures.get(segment.buf) + 1)
        except Exception:  # noqa: BLE001 - counting is best effort, the log line below is not
            pass
    kind = (name, type(exc).__name__)
    if kind in _logged_failures:
        return
    _logged_failures.add(kind)
    logger = next((a.log for a in args if hasattr(a, "log")), log)
    logger.error("rockstar-mp: the %s hook failed and was skipped (%s: %s); the server goes on%s "
                 "(logged once)", name, type(exc).__name__, exc,
                 ", unmonitored" if name == "on_starting" else "")
    log.debug("rockstar-mp: %s hook failure", name, exc_info=exc)


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

    def __init__(self, server: Arbiter) -> None:
        super().__init__()
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        error_log = self.server.log.error_log
        if error_log.isEnabledFor(record.levelno):
            error_log.handle(record)


def _log_master_to_gunicorn(server: Arbiter) -> None:
    master_log = logging.getLogger("rockstar_mp.master")
    if not any(isinstance(h, _ToGunicornLog) for h in master_log.handlers):
        master_log.addHandler(_ToGunicornLog(server))
        master_log.setLevel(logging.DEBUG)  # the handler filters by gunicorn's level
        master_log.propagate = False


@_guarded
def on_starting(server: Arbiter) -> None:
    global _manager
    _log_master_to_gunicorn(server)
    _manager = MonitoringManager(_with_server_user(_config or MonitoringConfig(), server)).start()
    segment = _manager.segment
    assert segment is not None  # start() opened it
    room = segment.room_for_slabs()
    if room < server.cfg.workers:
        server.log.warning("rockstar-mp: %s has room for %d more slabs and %d workers will start: the "
                           "others run unmonitored; point segment_dir at a larger tmpfs, or lower "
                           "slab_max_series or max_workers", _manager.config.segment_dir, room,
                           server.cfg.workers)
    # The metrics URL is logged once the aggregator says it serves it (master/supervisor.py).
    server.log.info("rockstar-mp: segment %s", segment.path)


def _with_server_user(config: MonitoringConfig, server: Arbiter) -> MonitoringConfig:
    """A root master running its workers as gunicorn's ``user``/``group`` runs the aggregator as them too."""
    if config.aggregator_user or os.geteuid() != 0 or server.cfg.uid == os.geteuid():
        return config
    return dataclasses.replace(config, aggregator_user=str(server.cfg.uid), aggregator_group=str(server.cfg.gid))


@_guarded
def on_reload(server: Arbiter) -> None:
    if _manager is not None and _config is not None:
        config = _with_server_user(_config, server)
        if config.with_env() != _manager.config:
            _manager.reload(config)


@_guarded
def pre_fork(server: Arbiter, worker: Worker) -> None:
    if _manager is None:
        return
    if _manager.config.gc_freeze_before_fork:
        # every object the master holds (what the app preloaded, gunicorn, us) moves to the permanent
        # generation: the child's collections skip them, so they never copy the pages they share. The
        # master keeps collecting what it allocates later (it never disables its GC).
        gc.freeze()
        # With every object frozen this collection walks nothing, but a full one empties the
        # interpreter's free lists: here, before the fork, rather than in each child's first full
        # collection, which would write (and copy) every shared page holding one of their blocks.
        gc.collect()
    try:
        worker.rockstar_slab = _manager.assign_slab(age=worker.age)
    except NoFreeSlab as exc:  # never stop the arbiter: this worker just goes unmonitored (counted)
        kind = ("pre_fork", type(exc).__name__)
        report = server.log.debug if kind in _logged_failures else server.log.error
        _logged_failures.add(kind)
        hint = "" if isinstance(exc, NoSpace) else (" (during a HUP old and new workers live at once: set "
                                                    "max_workers >= 2 x workers)")
        report("rockstar-mp: worker age %s is not monitored: %s%s; counted in claim_failures/space_failures, "
               "logged once", worker.age, exc, hint)


@_guarded
def post_fork(server: Arbiter, worker: Worker) -> None:
    slab: tuple[int, int] | None = getattr(worker, "rockstar_slab", None)  # pre_fork's assign_slab
    if _manager is not None and slab is not None:
        config = _manager.config
        state = attach_worker(_manager.segment, *slab, die_with_parent=True,
                              capture_logs=config.log_level if config.capture_logs else None, config=config)
        # gunicorn's init_signals, right after this hook, installs ``worker.handle_usr1``: an instance
        # attribute wrapping it is what it installs, so a USR1 that comes while the app still loads
        # (seconds, for some apps) optimizes too, instead of only reopening the logs
        handler = getattr(worker, "handle_usr1", None)
        if callable(handler):
            worker.handle_usr1 = optimizing(state.optimizer, handler)
        hold.hold_listeners(worker)


@_guarded
def post_worker_init(worker: Worker) -> None:
    """After gunicorn installed the worker's signal handlers: SIGUSR1 also optimizes (chained; already so
    when ``post_fork`` wrapped ``worker.handle_usr1``, installed before the app loads). A memory recycle
    (``max_worker_memory``) is told in gunicorn's error log, and done by SIGTERM to the worker itself:
    gunicorn's graceful stop (the request in progress is answered, then the arbiter replaces it)."""
    state = current()
    if state is not None:
        install_usr1(state.optimizer)
        state.optimizer.log = worker.log


def _release_listeners(server: Arbiter) -> None:
    hold.release_listeners(getattr(server, "LISTENERS", None) or ())


@_guarded
def pre_exec(server: Arbiter) -> None:
    """USR2: gunicorn re-executes the master with the environment it started with; add the segment,
    so the new master carries the totals on (its aggregator waits until the old one is gone)."""
    _release_listeners(server)
    for name in (SEGMENT_ENV, RUN_DIR_ENV):
        if name in os.environ:
            server.cfg.env_orig[name] = os.environ[name]
    if _manager is not None and _manager.segment is not None:  # carried even if the path was deleted
        fd = _manager.segment.fileno()
        st = os.fstat(fd)
        os.set_inheritable(fd, True)  # this is the child about to exec the new master
        server.cfg.env_orig[SEGMENT_FD_ENV] = f"{fd}:{st.st_dev}:{st.st_ino}"


@_guarded
def child_exit(server: Arbiter, worker: Worker) -> None:
    slab: tuple[int, int] | None = getattr(worker, "rockstar_slab", None)
    if _manager is not None and slab is not None:
        _manager.retire_slab(*slab)


@_guarded
def on_exit(server: Arbiter) -> None:
    _release_listeners(server)
    if _manager is not None:
        _manager.stop()
