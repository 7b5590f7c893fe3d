"""Attaching a worker process to its slab, and the worker's heartbeat.

Example, any pre-fork server (gunicorn's hooks do this for you)::

    manager = MonitoringManager(MonitoringConfig())
    manager.start()                       # in the parent, before forking
    if os.fork() == 0:
        rockstar_mp.attach_worker()       # first thing in the child
        serve()

**Processes an attached worker forks** (``os.fork()``, ``multiprocessing`` with the fork start method, and
their own forks in turn) count too, in a slab of their own, claimed on first use:

- At the fork (``os.register_at_fork``), the child's series leave the parent's slab at once (one writer
  per slab: two processes adding to one cell would lose counts) for private memory, and the child is
  *pending*: the slots ``_vals`` and ``_idx`` of every series are read through ``_ClaimOnFirstUse``.
- The first read of any series' cells in the child (an ``inc()``, ``observe()``, ``set()``, ``get()``, or
  the request path, C or Python, building its cell caches) claims a free slab under the segment's flock
  (``claim_slab(master_pid=<the parent>)``, the age taken from ``next_age``), moves every series into it,
  binds the workload and log rings, and starts the heartbeat; the slots are then restored, so the child
  updates with plain stores like any worker. A child that never touches a metric claims nothing.
- The claim cannot deadlock on a lock a thread of the parent held at the fork: the child takes its own
  description of the segment for the flock, and new thread locks (``Segment.open_lock``, the registry's
  and ours are made anew after a fork); a flock the parent holds is released by the parent.
- At exit its slab is retired however it exits: ``atexit`` (a normal exit), else the aggregator, which
  retires any live slab whose pid is gone, a zombie or another process (``os._exit``, SIGKILL,
  ``multiprocessing``'s exit), and folds its counts into the retired totals.
- A table full of slabs that exited processes hold (helpers forked one a request exit faster than the
  aggregator's ticks free their slabs): the child wakes the aggregator and waits for one, up to
  ``FORK_CLAIM_WAIT`` seconds (``_claim_for_fork``).
- No slab to be had (the table full, ``segment_dir`` full, the segment's lock not openable): the child's
  series stay in private memory, the claim is retried at most every ``CLAIM_RETRY_SECONDS``, and every
  update meanwhile (a read of a series' cells: one per ``inc``/``observe``/``set``, two for a gauge of
  mode ``last``; the request path, whose cells are cached, once per cached method and status) is
  counted in the segment header's ``unattached_updates`` (``system.unattached_updates`` in the
  aggregator's JSON) under the flock, so lost updates show. Each failed claim also counts in
  ``claim_failures`` (or ``space_failures``).
- A child is not profiled (it serves no control socket) and never gets ``die_with_parent``; it is listed
  in ``/workers`` like a worker, with its parent as ``master_pid``. Calling ``attach_worker()`` in the child
  attaches it at once instead (with a control socket).
- Children started by ``spawn`` or ``forkserver`` (and ``exec``) are new interpreters, not forks: they are
  counted only if they call ``attach_worker()`` themselves (``$ROCKSTAR_SEGMENT`` names the segment).
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from typing import Iterator

from .._linux import set_parent_death_signal
from ..config import HEARTBEAT_SECONDS, MonitoringConfig
from ..environment import SEGMENT_ENV
from ..errors import NoFreeSlab, NoSegment, NoSpace
from ..metrics import REGISTRY, Counter, Gauge, LocalStore, _Series
from ..profiling import native
from ..segment import CatalogueWriter, RingWriter, Segment, log_ring, no_such_process, process_start, record_ring
from ..segment.layout import LIVE, RETIRED, Body, Header
from .control import start_control
from .logs import SlabLogHandler
from .logs import install as install_log_handler
from .optimize import MemoryLimit, Optimizer, install_usr1
from .workload import RECORDER, WorkloadLimits

# How soon a requested optimization is noticed (USR1 wakes the monitor at once), and a worker's memory is
# compared with max_worker_memory: every 0.1 s while the optimization schedule is on at start (it asks one
# worker at a time, so its rounds wait for each notice) or a memory limit is set, else every second. Each
# wake-up of a worker's monitor costs about 0.1 ms of CPU (a GIL hand-over while a request runs): at 0.1 s
# it was 1.4 ms of CPU a second per worker, a third of rockstar-mp's whole-server cost at 1,500 req/s. A
# schedule switched on at runtime, or an "optimize now", is noticed within a second.
POLL_SECONDS = 1.0
SCHEDULED_POLL_SECONDS = 0.1
CLAIM_RETRY_SECONDS = 1.0  # how often a fork that found no slab tries again

log = logging.getLogger("rockstar_mp.worker")

# The runtime's own series, reported like any other (the aggregator sums them into ``system``).
GC_COLLECTIONS = Counter("rockstar.gc.collections", "Garbage collections, by generation", ["generation"])
# what gc.get_stats() counts besides collections: the aggregator serves all three per worker as python_gc_*
GC_COLLECTED = Counter("rockstar.gc.collected", "Objects collected by the garbage collector, by generation",
                       ["generation"])
GC_UNCOLLECTABLE = Counter("rockstar.gc.uncollectable",
                           "Uncollectable objects found by the garbage collector, by generation", ["generation"])
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

    def __init__(self, segment: Segment, slab: int, generation: int,
                 config: MonitoringConfig | None = None) -> None:
        self.segment = segment
        self.slab = slab
        self.generation = generation
        self.config = config or MonitoringConfig().with_env()  # its forks' slabs get the same limits
        self.pid = os.getpid()
        self._stop = native.Event()  # native: real even if gevent patched threading
        self.optimizer = Optimizer(segment.buf, segment.geometry.slab_offset(slab), segment,
                                   MemoryLimit(self.config.max_worker_memory, self.config.max_worker_memory_kind),
                                   trim=self.config.optimization_trim)
        self._gc_at_attach = gc.get_stats()  # the master's, inherited

    def start_heartbeat(self) -> None:
        self.beat()
        self.optimizer.idle_hook = _set_idle_callback
        _set_idle_callback(self.optimizer.on_idle if self.optimizer.pending else None)
        native.start_thread(self._monitor_loop, "rockstar-monitor")

    def beat(self) -> None:
        """Record liveness and the runtime figures the aggregator sums into ``system``."""
        for generation, stats in enumerate(gc.get_stats()):
            before = self._gc_at_attach[generation]
            GC_COLLECTIONS.labels(generation)._set_total(stats["collections"] - before["collections"])
            GC_COLLECTED.labels(generation)._set_total(stats["collected"] - before["collected"])
            GC_UNCOLLECTABLE.labels(generation)._set_total(stats["uncollectable"] - before["uncollectable"])
        THREADS.set(threading.active_count())
        Body.heartbeat.set(self.segment.buf, time.time(), self.segment.geometry.slab_offset(self.slab))

    def _monitor_loop(self) -> None:
        """Every ``POLL_SECONDS`` (``SCHEDULED_POLL_SECONDS`` with the schedule on or a memory limit):
        optimization requests and the memory limit; every ``HEARTBEAT_SECONDS``: the heartbeat."""
        watched = self.config.enable_optimization or self.config.max_worker_memory
        poll = SCHEDULED_POLL_SECONDS if watched else POLL_SECONDS
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stop.is_set():
            self.optimizer.wake.wait(max(0.0, min(poll, next_beat - time.monotonic())))
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


def _set_idle_callback(callback) -> None:
    """What the request path calls once no request is in flight (``Optimizer.idle_hook``)."""
    RECORDER.on_idle = callback


class _ClaimOnFirstUse:
    """Stands in for a slot of every series (``_vals``, the cells' view, or ``_idx``) in a pending fork:
    reading it claims the process's slab first (``_Pending.first_use``), then reads the slot. Writing
    (binding the series somewhere) goes straight to the slot."""

    __slots__ = ("_slot", "_counts")

    def __init__(self, slot, counts: bool) -> None:
        self._slot = slot  # the member descriptor of _Series.__slots__
        self._counts = counts  # one of the two slots is read once per update: that one counts

    def __get__(self, series, owner=None):
        if series is None:
            return self
        _PENDING.first_use(self._counts)
        return self._slot.__get__(series, owner)

    def __set__(self, series, value) -> None:
        self._slot.__set__(series, value)


_CELL_SLOTS = {name: _Series.__dict__[name] for name in ("_vals", "_idx")}


class _Pending:
    """A fork of an attached (or pending) process, not attached yet: it claims a slab of ``segment``
    on its first use of a metric (see the module's docstring)."""

    def __init__(self) -> None:
        self.segment: Segment | None = None
        self.config: MonitoringConfig | None = None
        self._lock = threading.RLock()
        self._busy = False  # attaching: the attach's own reads of cells must not claim again
        self._unattached = False  # a claim failed: updates are counted in unattached_updates
        self._retry_at = 0.0
        self._counting = True

    def arm(self, segment: Segment, config: MonitoringConfig | None) -> None:
        """In a fresh fork (single-threaded): claim on first use from now on."""
        self._lock = threading.RLock()  # one a thread of the parent held is not ours
        self.segment, self.config = segment, config
        self._busy = self._unattached = False
        self._retry_at, self._counting = 0.0, True
        for name, slot in _CELL_SLOTS.items():
            setattr(_Series, name, _ClaimOnFirstUse(slot, counts=name == "_vals"))

    def disarm(self) -> None:
        """Attached: series are read with the plain slots again."""
        for name, slot in _CELL_SLOTS.items():
            setattr(_Series, name, slot)
        self.segment = None

    @contextlib.contextmanager
    def attaching(self) -> Iterator[None]:
        """Held while this process attaches: other threads wait, this one reads its cells as they are."""
        with self._lock:
            busy, self._busy = self._busy, True
            try:
                yield
            finally:
                self._busy = busy

    def first_use(self, counts: bool) -> None:
        with self._lock:
            segment = self.segment
            if segment is None or self._busy:
                return  # attached meanwhile, or this is the attach reading its own cells
            if not self._unattached or time.monotonic() >= self._retry_at:
                self._claim(segment)
            if self._unattached and counts:
                self._count_unattached(segment)

    def _claim(self, segment: Segment) -> None:
        try:
            with self.attaching():
                _attach_fork(segment, self.config)
        except (NoFreeSlab, OSError) as exc:  # NoSpace is a NoFreeSlab
            if not self._unattached:
                log.debug("rockstar-mp: process %d (a fork) got no slab: %s", os.getpid(), exc)
        except Exception:  # noqa: BLE001 - a metric update must never raise for monitoring's sake
            log.warning("rockstar-mp: process %d (a fork) could not attach", os.getpid(), exc_info=True)
        else:
            return
        self._unattached = True
        self._retry_at = time.monotonic() + CLAIM_RETRY_SECONDS

    def _count_unattached(self, segment: Segment) -> None:
        if not self._counting:
            return
        try:
            with segment.locked():
                Header.unattached_updates.set(segment.buf, Header.unattached_updates.get(segment.buf) + 1)
        except OSError:
            self._counting = False  # no lock to be had in this process: nothing to count with


_STATE: WorkerState | None = None
_PENDING = _Pending()


def _after_fork_in_child() -> None:
    """A process forked from an attached (or pending) one must not write its parent's slab (one writer
    per slab): its metrics go to private memory, and it claims a slab of its own on first use."""
    config: MonitoringConfig | None
    if _STATE is not None and _STATE.pid != os.getpid():
        segment, config = _STATE.segment, _STATE.config
    elif _PENDING.segment is not None:
        segment, config = _PENDING.segment, _PENDING.config
    else:
        return
    _PENDING.arm(segment, config)
    with _PENDING.attaching():
        REGISTRY.bind(LocalStore())
        RECORDER.bind(None)
        SlabLogHandler.ring = None


os.register_at_fork(after_in_child=_after_fork_in_child)


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
    RECORDER.configure(WorkloadLimits.for_slab(config, layout.max_series, layout.max_values))
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
    workload limits ``max_routes``, ``max_tenants``, ``workload_max_cells``); by default
    ``MonitoringConfig()`` with the ``ROCKSTAR_*`` environment.
    """
    state = current()
    if state is not None:
        return state
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
    with _PENDING.attaching():
        if slab is None or generation is None:
            slab, generation = segment.claim_slab(age=age, master_pid=os.getppid())
        state = _attach(segment, slab, generation, config or MonitoringConfig().with_env(),
                        die_with_parent=die_with_parent, capture_logs=capture_logs)
    start_control(segment.path)  # profiling's control socket, when pprof is on (worker/control.py)
    if optimize_on_usr1:
        install_usr1(state.optimizer)
    return state


def _attach_fork(segment: Segment, config: MonitoringConfig | None) -> WorkerState:
    """A fork of an attached worker claims and binds a slab of its own (on its first use of a metric)."""
    segment.open_lock()  # its own description of the file: raises OSError when it cannot have one
    slab, generation = _claim_for_fork(segment)
    hurry_aggregator(segment)
    return _attach(segment, slab, generation, config or MonitoringConfig().with_env())


def _claim_for_fork(segment: Segment) -> tuple[int, int]:
    """``claim_slab`` for a fork. A table full of slabs that processes gone hold (helpers forked one a
    request exit faster than ticks a quarter of a second apart free their slabs: 100 requests on 2
    workers met 20 full tables) is not a reason to run unattached: wake the aggregator, whose next tick
    frees them, and try again, for up to ``FORK_CLAIM_WAIT`` seconds. With no such slab, it fails at once."""
    deadline = None  # set at the first full table: until when to try again
    while True:
        final = deadline is not None and time.monotonic() >= deadline
        try:  # only the final try counts a failure (claim_slab's claim_failures): one, however many tries
            return segment.claim_slab(master_pid=os.getppid(), counted=final)
        except NoSpace:
            raise
        except NoFreeSlab:
            if final:
                raise
            if deadline is None:
                waiting = _slabs_of_gone_processes(segment)
                deadline = time.monotonic() + (FORK_CLAIM_WAIT if waiting else 0.0)
                if not waiting:
                    continue  # no slab about to be freed: the final try at once
        hurry_aggregator(segment, after=FORK_CLAIM_HURRY)
        time.sleep(FORK_CLAIM_POLL)  # a bounded wait for the aggregator's tick, in this fork only


def _slabs_of_gone_processes(segment: Segment) -> bool:
    """Does a slab wait for the aggregator's next tick to be freed: retired, or live with a process that
    no longer exists (the check each tick makes of a fork's slab)?"""
    return any(slot.state == RETIRED or slot.state == LIVE and slot.pid > 0 and no_such_process(slot.pid)
               for slot in segment.slots())


def hurry_aggregator(segment: Segment, after: float | None = None) -> None:
    """Wake the aggregator (SIGURG: ignored by default, so a signal that comes before its handler, or to
    a reused pid, does nothing) unless it ticked within ``after`` seconds (``AGGREGATOR_HURRY_AFTER``).
    An idle aggregator ticks once a second, and only a tick frees the slabs of helpers that exited:
    forked one a request, they filled the table within that second. Once woken it ticks every
    ``tick_interval`` while the slot table moves."""
    buf = segment.buf
    pid = Header.aggregator_pid.get(buf)
    after = AGGREGATOR_HURRY_AFTER if after is None else after
    if pid and time.time() - Header.aggregator_heartbeat.get(buf) > after:
        try:
            os.kill(pid, signal.SIGURG)
        except OSError:  # gone, or another user's (its own ticks then have to do)
            pass


AGGREGATOR_HURRY_AFTER = 0.2  # seconds since its last tick (see hurry_aggregator)
FORK_CLAIM_WAIT = 0.5  # seconds a fork waits for a slab the aggregator is about to free (_claim_for_fork)
FORK_CLAIM_POLL = 0.005  # seconds between its tries
FORK_CLAIM_HURRY = 0.02  # and it wakes the aggregator unless that ticked this recently (at most 50 ticks a second)


def _attach(segment: Segment, slab: int, generation: int, config: MonitoringConfig,
            die_with_parent: bool = False, capture_logs: int | str | None = None) -> WorkerState:
    """Bind the claimed ``slab``: move every series into it, point the rings at it, start the heartbeat."""
    global _STATE
    segment.bind_slab(slab, os.getpid(), process_start(os.getpid()))
    refused = REGISTRY.bind(SlabStore(segment, slab))
    if refused:
        log.warning("rockstar-mp: %d series did not fit in the slab and are not reported", len(refused))
    if die_with_parent:
        _terminate_with_parent(segment.slot(slab).master_pid or os.getppid())
    state = _STATE = WorkerState(segment, slab, generation, config)
    _bind_rings(segment, slab, capture_logs, config)
    _PENDING.disarm()
    state.start_heartbeat()
    atexit.register(state.detach)
    return state
