"""Attaching a worker process to its slab, and the worker's heartbeat.

Example, any pre-fork server (gunicorn's hooks do this for you)::

    manager = MonitoringManager(MonitoringConfig())
    manager.start()                       # in the parent, before forking
    if os.fork() == 0:
        rockstar_mp.attach_worker()       # first thing in the child
        serve()
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import threading
import time

from .._linux import set_parent_death_signal
from ..config import HEARTBEAT_SECONDS, MonitoringConfig
from ..environment import SEGMENT_ENV
from ..errors import NoSegment
from ..metrics import REGISTRY, Counter, Gauge, LocalStore
from ..profiling import native
from ..segment import CatalogueWriter, RingWriter, Segment, log_ring, process_start, record_ring
from ..segment.layout import Body
from .control import start_control
from .logs import SlabLogHandler
from .logs import install as install_log_handler
from .optimize import Optimizer, install_usr1
from .workload import RECORDER, WorkloadLimits

POLL_SECONDS = 0.1  # how soon a requested optimization is noticed

log = logging.getLogger("rockstar_mp.worker")

# The runtime's own series, reported like any other (the aggregator sums them into ``system``).
GC_COLLECTIONS = Counter("rockstar.gc.collections", "Garbage collections, by generation", ["generation"])
THREADS = Gauge("rockstar.threads", "Threads in the worker processes")


class SlabStore:
    """Cells in this worker's slab: appends under a lock (declarations are rare), updates lock-free."""

    def __init__(self, segment: Segment, slab: int) -> None:
        self._writer = CatalogueWriter(segment.buf, segment.geometry.slab, segment.geometry.slab_offset(slab))
        self._doubles = segment.doubles
        self._lock = threading.Lock()

    def register(self, key: bytes, n_values: int):
        with self._lock:
            return self._doubles, self._writer.append(key, n_values)


class WorkerState:
    """What this process attached to: the segment, its slab and the generation of its tenancy."""

    def __init__(self, segment: Segment, slab: int, generation: int) -> None:
        self.segment = segment
        self.slab = slab
        self.generation = generation
        self.pid = os.getpid()
        self._stop = native.Event()  # native: real even if gevent patched threading
        self.optimizer = Optimizer(segment.buf, segment.geometry.slab_offset(slab))
        self._gc_at_attach = [s["collections"] for s in gc.get_stats()]  # the master's, inherited

    def start_heartbeat(self) -> None:
        self.beat()
        RECORDER.on_idle = self.optimizer.on_idle
        native.start_thread(self._monitor_loop, "rockstar-monitor")

    def beat(self) -> None:
        """Record liveness and the runtime figures the aggregator sums into ``system``."""
        for generation, stats in enumerate(gc.get_stats()):
            since_attach = stats["collections"] - self._gc_at_attach[generation]
            GC_COLLECTIONS.labels(generation)._set_total(since_attach)
        THREADS.set(threading.active_count())
        Body.heartbeat.set(self.segment.buf, time.time(), self.segment.geometry.slab_offset(self.slab))

    def _monitor_loop(self) -> None:
        """Every 0.1 s: optimization requests; every second: the heartbeat."""
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stop.is_set():
            self.optimizer.wake.wait(POLL_SECONDS)
            self.optimizer.wake.clear()
            if os.getpid() != self.pid:
                return  # a fork of the worker: not ours to report
            try:
                self.optimizer.poll()
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
            except Exception:  # the monitor must outlive any one failure
                log.exception("rockstar-mp: worker monitor")

    def detach(self) -> None:
        """Retire the slab (the worker is exiting); the aggregator folds its counts."""
        self._stop.set()
        if os.getpid() == self.pid:
            try:
                self.segment.retire_slab(self.slab, self.generation)
            except Exception:  # noqa: BLE001 - never a traceback at exit: the aggregator retires it anyway
                log.debug("rockstar-mp: slab %d not retired at exit", self.slab, exc_info=True)


def _forget_slab_in_child() -> None:
    """A process forked from an attached worker must not write its parent's slab (one writer per
    slab): its metrics go back to private memory until it attaches a slab of its own."""
    if _STATE is not None and _STATE.pid != os.getpid():
        REGISTRY.bind(LocalStore())
        RECORDER.bind(None)
        SlabLogHandler.ring = None


_STATE: WorkerState | None = None
os.register_at_fork(after_in_child=_forget_slab_in_child)


def _terminate_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG(SIGTERM): the kernel signals us when the parent process exits."""
    if set_parent_death_signal(signal.SIGTERM) and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took effect


def current() -> WorkerState | None:
    """The attachment of this process, if it attached (and is not a fork of an attached process)."""
    return _STATE if _STATE is not None and _STATE.pid == os.getpid() else None


def _bind_rings(segment: Segment, slab: int, capture_logs: int | str | None, config: MonitoringConfig) -> None:
    """Point the workload recorder and the log handlers at this slab's rings."""
    layout, base = segment.geometry.slab, segment.geometry.slab_offset(slab)
    RECORDER.configure(WorkloadLimits.for_slab(config, layout.max_series))
    RECORDER.bind(RingWriter(segment.buf, base, record_ring(layout)), segment.buf, base)
    SlabLogHandler.ring = RingWriter(segment.buf, base, log_ring(layout))
    if capture_logs is not None:
        install_log_handler(capture_logs)


def attach_worker(segment: Segment | str | None = None, slab: int | None = None,
                  generation: int | None = None, age: int | None = None,
                  die_with_parent: bool = False, capture_logs: int | str | None = None,
                  optimize_on_usr1: bool = False, config: MonitoringConfig | None = None) -> WorkerState:
    """Attach this (just forked) process to a slab of the segment; call it first thing in the child.

    ``segment`` is the master's ``Segment`` (inherited across fork) or its path; by default the path
    the master exported in ``$ROCKSTAR_SEGMENT``. ``slab``/``generation`` are what the master assigned
    before forking (gunicorn's ``pre_fork``); without them the worker claims a free slab itself.
    Every metric declared so far moves into the slab (its values start at zero in the worker).
    With ``die_with_parent``, the worker gets SIGTERM (a graceful stop) when its master dies, even
    by SIGKILL, instead of serving on as an orphan. ``capture_logs`` (a level) installs a
    ``SlabLogHandler`` on the root logger and gunicorn's error logger. ``optimize_on_usr1``: SIGUSR1
    runs a garbage collection, chained to the handler installed before (gunicorn's hooks install it
    later, in ``post_worker_init``, after gunicorn's own handlers). ``config``: the master's (for the
    workload limits ``max_routes``, ``max_tenants``, ``workload_max_series``); by default
    ``MonitoringConfig()`` with the ``ROCKSTAR_*`` environment.
    """
    global _STATE
    if current() is not None:
        return current()  # type: ignore[return-value]
    if not isinstance(segment, Segment):
        path = segment or os.environ.get(SEGMENT_ENV)
        if not path:
            raise NoSegment("no segment to attach to: call MonitoringManager(...).start() in the "
                               f"parent before forking, or set ${SEGMENT_ENV}")
        segment = Segment.inherited(path) or Segment.attach(path)
    try:
        segment.open_lock()  # now, while privileged: gunicorn's user= switch comes after post_fork
    except OSError as exc:
        log.warning("rockstar-mp: no lock on the segment in this worker (%s); the aggregator will retire "
                    "its slab", exc)
    if slab is None or generation is None:
        slab, generation = segment.claim_slab(age=age, master_pid=os.getppid())
    segment.bind_slab(slab, os.getpid(), process_start(os.getpid()))
    refused = REGISTRY.bind(SlabStore(segment, slab))
    if refused:
        log.warning("rockstar-mp: %d series did not fit in the slab and are not reported", len(refused))
    if die_with_parent:
        _terminate_with_parent(segment.slot(slab).master_pid or os.getppid())
    _STATE = WorkerState(segment, slab, generation)
    _bind_rings(segment, slab, capture_logs, config or MonitoringConfig().with_env())
    start_control(segment.path)  # profiling's control socket, when pprof is on (worker/control.py)
    _STATE.start_heartbeat()
    if optimize_on_usr1:
        install_usr1(_STATE.optimizer)
    atexit.register(_STATE.detach)
    return _STATE
