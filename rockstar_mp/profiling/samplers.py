"""The samplers: CPU by SIGPROF in the main thread, and a thread sampler for everything else.

Every sampler runs in a real thread and sleeps with the real ``time.sleep``, also where gevent patched
them (``native``). Clocks, said plainly:

* **CPU, signal mode** (``cpu_profile(mode="signal")``): a POSIX timer on the main thread's CPU clock
  delivers SIGPROF every 1/hz s of the main thread's CPU time (``setitimer(ITIMER_PROF)``, process CPU
  time, where that is unavailable: see ``_Timer``); Python runs the handler in the main thread, which
  records the main thread's stack, weighted by the timer expirations since its previous call
  (``SignalSamples``: a long C call, with or without the GIL, is one late call standing for all the
  expirations it held back). Accurate where the main thread does the work: gunicorn's sync workers,
  and gevent workers, whose greenlets all run in the main thread (the handler sees the frame of
  whichever greenlet is running; an idle hub burns no CPU, so draws none). The handler is installed
  once, in the main thread, when the worker attaches (a handler never called while no timer is armed
  costs nothing); the timer is then armed from the profiling thread. A CPU-clock timer fires on the
  scheduler tick, so above CONFIG_HZ the calls are fewer and weigh more. Cost: see
  ``benchmarks/pprof_cost.py`` (figure 15b: a few microseconds a call with a 20-frame stack).
* **CPU, thread mode** (gthread and other threaded workers, or when no handler could be installed): each
  sampled thread samples itself in a C SIGPROF handler where ``thread_signals.available()`` (that module
  says how); otherwise, and with ``mode="sampler"``, a sampler thread wakes after every 1/hz s of CPU time
  any sampled thread uses (``CpuPacer``: one timer per thread on its CPU clock, SIGPROF sent to the
  sampler thread alone and taken with ``sigtimedwait``; at least every 0.1 s of wall time; every 1/hz s of
  wall time if the timers cannot be made, as the profile's comment then says), reads each thread's CPU
  clock (``thread_cpu_ns``) and charges the increase to the last stack it was seen running at
  (``_charge_cpu`` says why): exact whenever the wakes come. A thread that used no CPU costs one clock
  read; rockstar-mp's own threads are not read. The wait and the tick run in C where the accelerator is
  built (``cpu_wake``, same rule; the sampler's CPU per wake is figure 15c), else in Python. Python frames
  can only be read when the sampler holds the GIL: a thread in a long C call that keeps the GIL is seen
  after it, at the call's line, with the call's CPU (as in signal mode).
* **Wall** (``/wall``): the thread sampler, every thread, the wall time since its previous tick.
* **Block / mutex**: the thread sampler; per thread and interval, off-CPU time = wall - thread CPU,
  charged to the stack when the thread is in a call we recognise as a wait (``frames.wait_kind``),
  with a ``wait`` label: lock, io or sleep. ``mutex`` keeps only ``wait=lock``.

rockstar-mp's own threads (control, monitor, profile) are left out of every profile unless
``internal`` (``?internal=1``).
"""
from __future__ import annotations

import atexit
import functools
import os
import signal
import sys
import threading
import time
import types
from typing import TYPE_CHECKING

from ..errors import ProfilerBusy
from . import frames as _frames
from . import native
from .proto import new_raw

if TYPE_CHECKING:
    import ctypes

MAX_HZ = 1000

# One CPU profile at a time per process (a second one gets "busy": HTTP 409). A real lock: profiles
# run in real threads even in gevent workers (``native``).
CPU_LOCK = native.allocate_lock()


Busy = ProfilerBusy  # the name the profiling modules raise and catch


# -- SIGPROF ------------------------------------------------------------------------------------------
class SignalSamples:
    """What the SIGPROF handler records: stacks of the main thread, each weighted by the timer
    expirations since the previous sample.

    Why not one per handler call: CPython's C handler only flags the signal; the Python handler runs
    at the next bytecode boundary, so every expiry during a long C call (a 38 ms ``sha256``: four at
    100 Hz) collapses into one call, after the C call returns. Counting the expirations from the
    timer's own clock (``clock``: the main thread's CPU time, or the process's for ``setitimer``)
    restores them, and they land on the stack the handler sees: the frame that made the call. Why
    not the raw CPU time since the previous sample: the Python time before the call (half a period on
    average) would be charged to the call too.
    """

    __slots__ = ("clock", "period", "origin", "ticks", "cells", "codes")

    def __init__(self, clock, period: int) -> None:
        self.clock = clock
        self.period = period
        self.origin = clock()
        self.ticks = 0
        self.cells: dict[tuple, list[int]] = {}  # stack key -> [handler calls, expirations]
        self.codes: dict[tuple, tuple] = {}  # stack key -> its code objects (see frames.capture_key)

    def take(self, frame: types.FrameType) -> None:
        ticks = (self.clock() - self.origin) // self.period
        weight = ticks - self.ticks
        if weight < 1:  # the first expiry came just before the origin was read: count it
            weight, ticks = 1, self.ticks + 1
        self.ticks = ticks
        key = _frames.capture_key(frame)
        cell = self.cells.get(key)
        if cell is None:
            self.codes[key] = _frames.capture_codes(frame)
            self.cells[key] = [1, weight]
        else:
            cell[0] += 1
            cell[1] += weight

    def raw(self, duration_ns: int, comment: str, labels: dict) -> dict:
        """The raw profile: samples/count and cpu/nanoseconds, both from the expirations."""
        raw = new_raw([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), self.period,
                      duration_ns, [comment])
        table = _frames.FrameTable(raw["frames"])
        for key, (_calls, weight) in _settled(self.cells):
            stack = _frames.resolve(key, self.codes[key])
            raw["samples"].append([table.stack(stack), [weight, weight * self.period], labels])
        return raw


_SINK: SignalSamples | None = None


def _on_sigprof(signum, frame) -> None:
    sink = _SINK
    if sink is not None and frame is not None:
        sink.take(frame)


class SignalProfile:
    """SIGPROF sampling of the main thread between ``start`` and ``stop`` (the handler must be
    installed, ``install_signal_handler``; the caller holds ``CPU_LOCK``)."""

    def __init__(self, hz: int) -> None:
        self.hz = max(1, min(int(hz), MAX_HZ))
        self.period = 1_000_000_000 // self.hz
        self._timer: _Timer | None = None

    def start(self) -> None:
        self._started = time.monotonic_ns()
        self._timer = _Timer(self.hz, self._begin)

    def _begin(self, clock) -> None:
        """Called by the timer just before it is armed, with the clock it counts."""
        global _SINK
        self.samples = SignalSamples(clock, self.period)
        _SINK = self.samples

    def stop(self) -> dict:
        global _SINK
        assert self._timer is not None
        self._timer.disarm()
        _SINK = None
        labels = _labels(os.getpid(), {"thread": threading.main_thread().name})
        comment = (f"clock: {self._timer.clock}, SIGPROF at {self.hz} Hz, main thread stacks, each "
                   "weighted by the timer expirations since the previous one")
        return self.samples.raw(time.monotonic_ns() - self._started, comment, labels)


def install_signal_handler() -> bool:
    """Install the SIGPROF handler (main thread only). True if it is (now) ours."""
    if signal_handler_installed():
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        previous = signal.getsignal(signal.SIGPROF)
        if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return False  # someone else profiles with SIGPROF: leave theirs alone
        signal.signal(signal.SIGPROF, _on_sigprof)
        atexit.register(_ignore_sigprof_at_exit)
        return True
    except (ValueError, OSError, AttributeError):
        return False


def _ignore_sigprof_at_exit() -> None:
    """At interpreter exit, ignore SIGPROF. The finalizing interpreter gives every signal that has a Python
    handler back its default action, and SIGPROF's kills: a worker that exited gracefully (HUP,
    max_requests) while a profile's timers were armed died of SIGPROF instead ("was sent SIGPROF!")."""
    if signal_handler_installed() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPROF, signal.SIG_IGN)


def signal_handler_installed() -> bool:
    try:
        return signal.getsignal(signal.SIGPROF) is _on_sigprof
    except (ValueError, AttributeError):
        return False


def threaded_server() -> bool:
    """Do request threads other than the main one do the work (gunicorn gthread, or similar)?
    gevent's greenlets all run in the main thread: SIGPROF on its CPU clock samples whichever
    greenlet is running, exactly, so a gevent worker is not a threaded server here."""
    return "gunicorn.workers.gthread" in sys.modules


def choose_cpu_mode(mode: str = "auto") -> str:
    """``signal`` (SIGPROF, the main thread) or ``thread`` (the sampler thread, also for ``sampler``) for
    a CPU profile asked for in ``mode``, where the threads cannot sample themselves (``thread_signals``)."""
    if mode == "sampler":
        return "thread"
    if mode == "auto":
        return "signal" if signal_handler_installed() and not threaded_server() else "thread"
    if mode == "signal" and not signal_handler_installed():
        return "thread"
    return mode


def _labels(pid: int, extra: dict | None = None) -> dict:
    labels = {"pid": str(pid)}
    if extra:
        labels.update(extra)
    return labels


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        native.sleep(seconds)


def take_cpu_profile_slot() -> None:
    """Take the process's one CPU profile slot (``CPU_LOCK``: release it when done), or raise ``Busy``
    (HTTP 409) if a CPU profile is already running here."""
    if not CPU_LOCK.acquire(blocking=False):
        raise Busy("a CPU profile is already running in this process")


def cpu_profile(seconds: float, hz: int = 100, mode: str = "auto",
                stop: threading.Event | None = None, internal: bool = False) -> dict:
    """A CPU profile of this process over ``seconds`` (raw form): samples/count and cpu/nanoseconds."""
    hz = max(1, min(int(hz), MAX_HZ))
    take_cpu_profile_slot()
    try:
        mode = choose_cpu_mode(mode)
        if mode == "signal":
            return _signal_cpu(seconds, hz, stop)
        return ThreadSampler(hz, cpu=True, internal=internal).run(seconds, stop).cpu_raw()
    finally:
        CPU_LOCK.release()


class PosixTimers:
    """``timer_create``/``timer_settime``/``timer_delete`` through ctypes, for timers on CPU clocks that
    send a signal: to the process (``SIGEV_SIGNAL``) or to one thread (``SIGEV_THREAD_ID``)."""

    SIGEV_SIGNAL = 0
    SIGEV_THREAD_ID = 4

    def __init__(self) -> None:
        import ctypes

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        class Sigevent(ctypes.Structure):  # sigval, signo, notify, then the union: its first int is the tid
            _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int),
                        ("sigev_notify", ctypes.c_int), ("thread_id", ctypes.c_int), ("_pad", ctypes.c_int * 11)]

        self.ctypes, self.Timespec, self.Itimerspec, self.Sigevent = ctypes, Timespec, Itimerspec, Sigevent
        self.libc = ctypes.CDLL(None, use_errno=True)

    @staticmethod
    @functools.cache
    def shared() -> "PosixTimers":
        """One instance per process (making the ctypes types costs ~0.3 ms of CPU, the first ~2 ms)."""
        return PosixTimers()

    def create(self, clock: int, signo: int, thread_id: int | None = None) -> ctypes.c_void_p:
        """A disarmed timer on ``clock`` sending ``signo`` (to the thread ``thread_id`` if given)."""
        ctypes = self.ctypes
        event = self.Sigevent(sigev_signo=signo, sigev_notify=self.SIGEV_SIGNAL)
        if thread_id is not None:
            event.sigev_notify, event.thread_id = self.SIGEV_THREAD_ID, thread_id
        timer = ctypes.c_void_p()
        if self.libc.timer_create(ctypes.c_int(clock), ctypes.byref(event), ctypes.byref(timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create")
        return timer

    def start(self, timer: ctypes.c_void_p, hz: int) -> None:
        """Arm ``timer`` every 1/hz s of its clock (deleted if that fails)."""
        period = self.Timespec(*divmod(1_000_000_000 // hz, 1_000_000_000))  # 1 Hz: 1 s, 0 ns
        if self.libc.timer_settime(timer, 0, self.ctypes.byref(self.Itimerspec(period, period)), None) != 0:
            errno = self.ctypes.get_errno()
            self.delete(timer)
            raise OSError(errno, "timer_settime")

    def delete(self, timer: ctypes.c_void_p) -> None:
        self.libc.timer_delete(timer)  # deleting disarms


class _Timer:
    """SIGPROF every 1/hz s of the *main thread's* CPU time: a POSIX timer (``timer_create``, through
    ctypes) on the main thread's CPU clock. Why not ``setitimer(ITIMER_PROF)``: while a process-wide
    CPU timer is armed, Linux serves ``CLOCK_PROCESS_CPUTIME_ID`` (``time.process_time()``) from a
    tick-granular cache, so code that measures itself with it sees a coarse clock (the example app's
    ``burn_cpu(10)`` took ~12 ms: -17% throughput). ``setitimer`` remains the fallback."""

    def __init__(self, hz: int, begin=None) -> None:
        """``begin(clock)`` is called just before the timer is armed, with the ``*_ns`` function of
        the clock it counts (the profiling thread runs this, the main thread's clock is read by pid)."""
        self.hz = hz
        self.clock = "process CPU time (setitimer ITIMER_PROF)"
        self._timer: ctypes.c_void_p | None = None
        self._begin = begin or (lambda clock: None)
        try:
            self._arm_posix()
            self.clock = "main-thread CPU time (timer_create)"
        except Exception:
            self._timer = None
            self._begin(time.process_time_ns)
            signal.setitimer(signal.ITIMER_PROF, 1.0 / hz, 1.0 / hz)

    def _arm_posix(self) -> None:
        main = native.main_ident()  # the real one (gevent renumbers main_thread().ident)
        assert main is not None  # the main thread is running: it has an ident
        clock = time.pthread_getcpuclockid(main)
        timers = PosixTimers.shared()
        timer = timers.create(clock, int(signal.SIGPROF))
        self._begin(functools.partial(time.clock_gettime_ns, clock))
        timers.start(timer, self.hz)
        self._libc, self._timer = timers.libc, timer

    def disarm(self) -> None:
        if self._timer is not None:
            self._libc.timer_delete(self._timer)  # deleting disarms
            self._timer = None
        else:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)


def _signal_cpu(seconds: float, hz: int, stop: threading.Event | None) -> dict:
    profile = SignalProfile(hz)
    profile.start()
    try:
        _sleep(seconds, stop)
    finally:
        raw = profile.stop()
    return raw


def _settled(counts: dict) -> list:
    """The counts' items, once a handler that was already running (in the main thread) is done."""
    for _ in range(100):
        try:
            return list(counts.items())
        except RuntimeError:  # changed size during iteration: the last handler is finishing
            native.sleep(0.001)
    return list(counts.items())


# -- the thread sampler -----------------------------------------------------------------------------
def thread_cpu_clock(tid: int) -> int:
    """The clock id of the thread ``tid``'s CPU clock, as Linux derives it from a tid (and
    ``pthread_getcpuclockid`` does): ``~tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED``."""
    return ((~tid) << 3) | 6


def thread_cpu_ns(tid: int | None) -> int | None:
    """On-CPU nanoseconds of the thread ``tid`` of this process, or None if it is gone: one
    ``clock_gettime`` on its CPU clock (``thread_cpu_clock``), which reads what
    ``/proc/self/task/<tid>/schedstat`` shows without formatting text."""
    if not tid:
        return None
    try:
        return time.clock_gettime_ns(thread_cpu_clock(tid))
    except OSError:
        return None


def native_ids() -> dict[int, tuple[int | None, str]]:
    """``{real ident: (native thread id, name)}`` of the threads (``native.thread_ids``)."""
    return native.thread_ids()


def internal_idents() -> set[int]:
    """The idents of rockstar-mp's own threads (control, monitor, profile: ``native.start_thread``
    starts them all), left out of profiles unless asked for (``?internal=1``)."""
    return set(native.raw_threads())


class CpuPacer:
    """Wakes the CPU-only thread sampler after every 1/hz s of CPU time a sampled thread uses, not
    every 1/hz s of wall time, as Go's SIGPROF profiler does: at 1,500 req/s over two gthread workers
    each is ~35 % busy, and wall-paced wakes mostly found nothing to charge, each costing a GIL
    hand-over.

    One POSIX timer per sampled thread on that thread's CPU clock (``timer_create``, through ctypes),
    period 1/hz, delivering SIGPROF to the sampler thread alone (``SIGEV_THREAD_ID``), which keeps
    SIGPROF blocked and collects it with ``sigtimedwait``: no Python handler runs, and a SIGPROF that
    ever leaked elsewhere would meet ``_on_sigprof``, which is harmless (a real-time signal's default
    action would kill the process). Why not one timer on the process's CPU clock: see ``_Timer``. A
    thread with no timer yet (gthread starts its pool's threads lazily) is still read at every wake,
    and the wait has a wall-time fallback (``FALLBACK``) so the thread list is refreshed. The
    accounting does not depend on when the wakes come: each wake charges every thread's CPU clock
    delta. Create the pacer and call ``close`` in the sampler thread; ``close`` deletes every timer
    before the signal is unblocked, then drains a pending one."""

    SIGNAL = signal.SIGPROF
    FALLBACK = 0.1  # seconds of wall time without a timer expiring before the sampler wakes anyway

    def __init__(self, hz: int) -> None:
        if not hasattr(signal, "sigtimedwait"):
            raise OSError("no sigtimedwait on this platform")
        self.hz = hz
        self._api = PosixTimers.shared()
        self._target = native.original("threading", "get_native_id")()  # this OS thread's, gevent or not
        self.timers: dict[int, ctypes.c_void_p] = {}  # tid -> its timer
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, {self.SIGNAL})

    def track(self, tids: set[int]) -> None:
        """Timers on exactly ``tids``' CPU clocks: new threads get one, ended ones lose theirs.
        Raises OSError if a live thread's timer cannot be made (the caller falls back to wall pacing)."""
        for tid in set(self.timers) - tids:
            self._api.delete(self.timers.pop(tid))
        for tid in tids - set(self.timers):
            try:
                timer = self._api.create(thread_cpu_clock(tid), int(self.SIGNAL), self._target)
            except OSError:
                if thread_cpu_ns(tid) is None:
                    continue  # the thread ended meanwhile
                raise
            self._api.start(timer, self.hz)
            self.timers[tid] = timer

    def wait(self, timeout: float) -> bool:
        """Until a sampled thread has used 1/hz s of CPU since its timer's previous expiry (True), or
        ``timeout`` s (False)."""
        return signal.sigtimedwait((self.SIGNAL,), max(timeout, 0.0)) is not None

    def close(self) -> None:
        """Delete every timer, drain a SIGPROF one sent before, and restore this thread's signal mask."""
        for timer in self.timers.values():
            self._api.delete(timer)
        self.timers.clear()
        while signal.sigtimedwait((self.SIGNAL,), 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)


def cpu_wake():
    """``hotpath.cpu_wake`` (the CPU thread sampler's wait and tick in C, ``_hotpath.c``), or None where
    the accelerator is not built or ``ROCKSTAR_PURE_PYTHON=1``: then ``ThreadSampler._cpu_tick`` runs."""
    from ..worker.accelerator import hotpath  # imported late: the worker package is loaded by then

    return getattr(hotpath, "cpu_wake", None)


class ThreadSampler:
    """Samples every other thread's Python stack every 1/hz s, in the calling thread (rockstar-mp's
    own threads only with ``internal``).

    Per thread and tick: CPU is the thread's CPU time since its previous tick (``thread_cpu_ns``),
    charged to the stack it is at, or, when it now waits, to the last stack it was seen running at
    (where that CPU was spent); a thread that used none costs one clock read. Wall is the time since
    the previous tick; block the part of it off CPU, when the thread waits (``frames.wait_kind``).
    A thread whose leaf frame and instruction are those of its previous tick has the same stack,
    which is then not walked again (idle threads, long calls).
    """

    def __init__(self, hz: int = 100, cpu: bool = False, wall: bool = False, block: bool = False,
                 trace: bool = False, internal: bool = False) -> None:
        self.hz = max(1, min(int(hz), MAX_HZ))
        self.want_cpu, self.want_wall, self.want_block, self.want_trace = cpu, wall, block, trace
        self.internal = internal
        self.cpu: dict = {}  # (ident, stack key) -> [samples, ns]
        self.wall: dict = {}
        self.block: dict = {}  # (ident, stack key, wait) -> [count, ns]
        self._trace: list = []  # (t_us, ident, stack key)
        self._codes: dict[tuple, tuple] = {}  # stack key -> its code objects (frames.capture_key)
        self.names: dict[int, tuple] = {}
        self.duration_ns = 0
        self.pacing = f"woken every 1/{self.hz} s of wall time"
        self.wakes = self.expirations = 0  # the CPU-only sampler's wakes, and those a CPU-clock timer made
        self.own_cpu_ns = 0  # the sampler thread's own CPU time
        self._kinds: dict[tuple, str | None] = {}  # stack key -> its leaf's wait kind (the C ticks)
        self.accelerated = False  # the CPU-only loop's wakes done by hotpath.cpu_wake

    @property
    def trace(self) -> list:
        """``[(t_us, ident, stack), ...]`` (stacks in ``frames.capture``'s form)."""
        resolved: dict[tuple, tuple] = {}
        out = []
        for ts, ident, key in self._trace:
            stack = resolved.get(key)
            if stack is None:
                stack = resolved[key] = _frames.resolve(key, self._codes[key])
            out.append((ts, ident, stack))
        return out

    def _look(self, ident: int, frame: types.FrameType, seen: dict) -> tuple:
        """``(stack key, wait kind)`` of the thread ``ident`` now at ``frame``."""
        lasti = frame.f_lasti
        previous = seen.get(ident)
        if previous is not None and previous[0] is frame and previous[1] == lasti:
            return previous[2], previous[3]
        key = _frames.capture_key(frame)
        if key not in self._codes:
            self._codes[key] = _frames.capture_codes(frame)
        kind = _frames.wait_kind(frame) if (self.want_block or self.want_cpu) else None
        seen[ident] = (frame, lasti, key, kind)  # the frame stays alive: its identity is the check
        return key, kind

    def _charge_cpu(self, ident: int, key: tuple, kind: str | None, cpu_ns: int, running: dict) -> None:
        """Charge the ``cpu_ns`` a thread used since its previous tick to the stack it was last seen
        running at, then remember where it runs now (unless it waits).

        Why the previous stack, not the current one: the sampler needs the GIL, and a thread hands it
        over as it enters a blocking call or a long C call that releases it, so the tick after a move
        mostly lands just as the new call starts, and the CPU since the previous tick was spent before
        it (charged to the new call, a 20 ms spin before a 38 ms sha256 put the hash at 72 % against 66 %).
        A thread seen at the same stack twice is charged there; a move at a random time costs a
        fraction of a tick either way."""
        cell = self.cpu.setdefault((ident, running.get(ident, key)), [0, 0])
        cell[0] += 1
        cell[1] += cpu_ns
        if kind is None:
            running[ident] = key

    def _charge_woken(self, stacks: list, running: dict) -> None:
        """Charge a tick of ``hotpath.cpu_wake`` (``_cpu_tick``'s rule): ``[(ident, cpu_ns, stack key, its
        leaf frame if the key is new), ...]``."""
        for ident, cpu_ns, key, leaf in stacks:
            if leaf is not None:
                self._codes[key] = _frames.capture_codes(leaf)
                self._kinds[key] = _frames.wait_kind(leaf)
            self._charge_cpu(ident, key, self._kinds.get(key), cpu_ns, running)

    def _cpu_tick(self, clocks: list, last_cpu: dict, running: dict, seen: dict) -> None:
        """A CPU-only tick: every thread's CPU clock, then the stacks of those that used some (at 100 Hz
        most threads of a server idle through most ticks: one clock read each)."""
        used = []
        for ident, clock in clocks:
            try:
                value = time.clock_gettime_ns(clock)
            except OSError:
                continue  # the thread is gone
            previous = last_cpu.get(ident, 0)  # a thread started during the profile: all its CPU is in it
            if value < previous:
                previous = 0  # a new thread under an ident that ended
            last_cpu[ident] = value
            if value > previous:
                used.append((ident, value - previous))
        if not used:
            return
        current: dict[int, types.FrameType] | None = sys._current_frames()
        assert current is not None
        for ident, cpu_ns in used:
            frame = current.get(ident)
            if frame is None:
                continue
            key, kind = self._look(ident, frame, seen)
            self._charge_cpu(ident, key, kind, cpu_ns, running)
        current = frame = None

    def run(self, seconds: float, stop: threading.Event | None = None) -> "ThreadSampler":
        started, own_start = time.monotonic(), time.thread_time_ns()
        self.names = native_ids()
        last_cpu: dict[int, int] = {}
        for ident, (tid, _) in self.names.items():
            value = thread_cpu_ns(tid)
            if value is not None:
                last_cpu[ident] = value
        try:
            if self.want_cpu and not (self.want_wall or self.want_block or self.want_trace):
                self._run_cpu(started + seconds, stop, last_cpu)
            else:
                self._run_wall(started, started + seconds, stop, last_cpu)
        finally:
            self.duration_ns = int((time.monotonic() - started) * 1e9)
            self.own_cpu_ns = time.thread_time_ns() - own_start
        return self

    def _sampled(self, me: int) -> list[tuple[int, int]]:
        """``[(ident, tid), ...]`` of the threads to sample now (``self.names`` refreshed)."""
        self.names = native_ids()
        hidden = set() if self.internal else internal_idents()
        return [(ident, tid) for ident, (tid, _) in self.names.items() if tid and ident != me and ident not in hidden]

    def _run_cpu(self, deadline: float, stop: threading.Event | None, last_cpu: dict[int, int]) -> None:
        """The CPU-only loop: a tick (``_cpu_tick``) each time a sampled thread has used 1/hz s of CPU
        (``CpuPacer``), or every 1/hz s of wall time if its timers cannot be made."""
        me = native.get_ident()
        pacer: CpuPacer | None = None
        try:
            pacer = CpuPacer(self.hz)
            self.pacing = f"woken after every 1/{self.hz} s of any sampled thread's CPU time (timer_create)"
        except (OSError, ValueError, AttributeError) as exc:
            self.pacing = f"woken every 1/{self.hz} s of wall time (no CPU-clock timers: {exc})"
        running: dict[int, tuple] = {}  # the last stack key each thread was seen running at
        seen: dict[int, tuple] = {}
        clocks: list[tuple[int, int]] = []
        refreshed = float("-inf")
        wake = cpu_wake()
        self.accelerated = pacer is not None and wake is not None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline or (stop is not None and stop.is_set()):
                    break
                if now - refreshed >= CpuPacer.FALLBACK:
                    refreshed = now
                    sampled = self._sampled(me)
                    clocks = [(ident, thread_cpu_clock(tid)) for ident, tid in sampled]
                    pacer = self._track(pacer, {tid for _, tid in sampled})
                self.wakes += 1
                if pacer is not None and wake is not None:
                    signalled, stacks = wake(int(pacer.SIGNAL), min(CpuPacer.FALLBACK, deadline - now), clocks,
                                             last_cpu, self._codes, _frames.MAX_DEPTH)
                    self.expirations += signalled
                    self._charge_woken(stacks, running)
                    stacks = None  # no frame outlives the tick
                    continue
                if pacer is None:
                    _sleep(min(1.0 / self.hz, deadline - now), stop)
                elif pacer.wait(min(CpuPacer.FALLBACK, deadline - now)):
                    self.expirations += 1
                self._cpu_tick(clocks, last_cpu, running, seen)
        finally:
            seen.clear()
            if pacer is not None:
                pacer.close()

    def _track(self, pacer: CpuPacer | None, tids: set[int]) -> CpuPacer | None:
        """The pacer with timers on ``tids``, or None (wall pacing from now on) if one cannot be made."""
        if pacer is None:
            return None
        try:
            pacer.track(tids)
            return pacer
        except OSError as exc:
            pacer.close()
            self.pacing = f"woken every 1/{self.hz} s of wall time (a CPU-clock timer failed: {exc})"
            return None

    def _run_wall(self, started: float, deadline: float, stop: threading.Event | None,
                  last_cpu: dict[int, int]) -> None:
        """Every thread every 1/hz s of wall time: wall, block (and CPU with them), trace."""
        me = native.get_ident()
        interval = 1.0 / self.hz
        last_t = started
        running: dict[int, tuple] = {}  # the last stack key each thread was seen running at
        seen: dict[int, tuple] = {}
        hidden: set[int] = set()
        clocked = self.want_cpu or self.want_block
        ticks = 0
        current: dict[int, types.FrameType] | None
        frame: types.FrameType | None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline or (stop is not None and stop.is_set()):
                    break
                _sleep(min(interval, deadline - now), stop)
                now = time.monotonic()
                dt_ns = int((now - last_t) * 1e9)
                last_t = now
                ticks += 1
                if ticks % 10 == 1:
                    self.names = native_ids()
                    hidden = set() if self.internal else internal_idents()
                current = sys._current_frames()
                if not current.keys() <= self.names.keys():
                    self.names = native_ids()
                wall_us = time.time_ns() // 1000 if self.want_trace else 0
                for ident, frame in current.items():
                    if ident == me or ident in hidden:
                        continue
                    cpu_ns = 0
                    if clocked:
                        value = thread_cpu_ns(self.names.get(ident, (None,))[0])
                        if value is not None:
                            previous = last_cpu.get(ident)
                            last_cpu[ident] = value
                            if previous is not None:
                                cpu_ns = max(0, value - previous)
                    key, kind = self._look(ident, frame, seen)
                    if cpu_ns and self.want_cpu:
                        self._charge_cpu(ident, key, kind, cpu_ns, running)
                    self._charge_wall(ident, key, kind, dt_ns, cpu_ns)
                    if self.want_trace:
                        self._trace.append((wall_us, ident, key))
                current = frame = None  # no frame outlives the tick but the last one of each thread
        finally:
            seen.clear()

    def _charge_wall(self, ident: int, key: tuple, kind: str | None, wall_ns: int, cpu_ns: int) -> None:
        """Charge the ``wall_ns`` since the thread's previous tick (``cpu_ns`` of it on CPU) to its stack:
        to the wall profile, and its off-CPU part to the block profile when it waits."""
        if self.want_wall:
            cell = self.wall.setdefault((ident, key), [0, 0])
            cell[0] += 1
            cell[1] += wall_ns
        if self.want_block and kind is not None and wall_ns > cpu_ns:
            cell = self.block.setdefault((ident, key, kind), [0, 0])
            cell[0] += 1
            cell[1] += wall_ns - cpu_ns

    # -- raw profiles ---------------------------------------------------------------------------------
    def _thread_labels(self, ident: int, extra: dict | None = None) -> dict:
        tid, name = self.names.get(ident, (None, f"thread-{ident}"))
        labels = _labels(os.getpid(), {"thread": name})
        if extra:
            labels.update(extra)
        return labels

    def _raw(self, cells: dict, types, period_type, comment: str, keep=None) -> dict:
        raw = new_raw(types, period_type, 1_000_000_000 // self.hz, self.duration_ns, [comment])
        table = _frames.FrameTable(raw["frames"])
        resolved: dict[tuple, list[int]] = {}
        for key, values in cells.items():
            if keep is not None and not keep(key):
                continue
            ident, stack_key = key[0], key[1]
            extra = {"wait": key[2]} if len(key) > 2 else None
            stack = resolved.get(stack_key)
            if stack is None:
                stack = resolved[stack_key] = table.stack(_frames.resolve(stack_key, self._codes[stack_key]))
            raw["samples"].append([stack, list(values), self._thread_labels(ident, extra)])
        return raw

    def cpu_raw(self) -> dict:
        return self._raw(self.cpu, [("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"),
                         f"clock: per-thread CPU time (clock_gettime), thread sampler {self.pacing}; "
                         "each thread's CPU since its previous sample charged to its stack (its last "
                         f"running one if it now waits); the sampler: {self.wakes} wakes, "
                         f"{self.own_cpu_ns / 1e6:.1f} ms of its own CPU"
                         + (" (its ticks in C)" if self.accelerated else ""))

    def wall_raw(self) -> dict:
        return self._raw(self.wall, [("samples", "count"), ("wall", "nanoseconds")],
                         ("wall", "nanoseconds"), f"clock: wall time, every thread, {self.hz} Hz")

    def block_raw(self, mutex: bool = False) -> dict:
        return self._raw(self.block, [("contentions", "count"), ("delay", "nanoseconds")],
                         ("contentions", "count"),
                         f"clock: off-CPU time (wall - thread CPU) in waits, {self.hz} Hz"
                         + ("; lock waits only" if mutex else ""),
                         keep=(lambda key: key[2] == "lock") if mutex else None)


def wall_profile(seconds: float, hz: int = 100, stop: threading.Event | None = None,
                 internal: bool = False) -> dict:
    return ThreadSampler(hz, wall=True, internal=internal).run(seconds, stop).wall_raw()


def block_profile(seconds: float, hz: int = 100, mutex: bool = False,
                  stop: threading.Event | None = None, internal: bool = False) -> dict:
    return ThreadSampler(hz, block=True, internal=internal).run(seconds, stop).block_raw(mutex)
