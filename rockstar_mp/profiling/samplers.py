"""The samplers: CPU by SIGPROF in the main thread, and a thread sampler for everything else.

Every sampler runs in a real thread and sleeps with the real ``time.sleep``, also where gevent patched
them (``native``). Clocks, said plainly:

* **CPU, signal mode** (``cpu_profile(mode="signal")``): a POSIX timer on the main thread's CPU clock
  delivers SIGPROF every 1/hz s of the main thread's CPU time (``setitimer(ITIMER_PROF)``, process CPU
  time, where that is unavailable: see ``_Timer``); Python runs the handler in the main thread, which
  records the main thread's stack (~2 us a sample). Accurate where the main thread does the work:
  gunicorn's sync workers, and gevent workers, whose greenlets all run in the main thread (the
  handler sees the frame of whichever greenlet is running; an idle hub burns no CPU, so draws none).
  The handler is installed once, in the main thread, when the worker attaches (a handler never
  called while no timer is armed costs nothing); the timer is then armed from the profiling thread.
* **CPU, thread mode** (gthread and other threaded workers, or when no handler could be installed):
  a sampler thread reads each thread's on-CPU time (``/proc/self/task/<tid>/schedstat``, ns) every
  1/hz s and charges the increase to the stack the thread is at. Python frames can only be read
  when the sampler holds the GIL, so stacks are biased toward the points where threads release it
  (I/O, locks): a documented approximation.
* **Wall** (``/wall``): the thread sampler, every thread, 1/hz s of wall time per sample.
* **Block / mutex**: the thread sampler; per thread and interval, off-CPU time = wall - thread CPU,
  charged to the stack when the thread is in a call we recognise as a wait (``frames.wait_kind``),
  with a ``wait`` label: lock, io or sleep. ``mutex`` keeps only ``wait=lock``.
"""
from __future__ import annotations

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
_SIG_COUNTS: dict | None = None


def _on_sigprof(signum, frame) -> None:
    counts = _SIG_COUNTS
    if counts is None or frame is None:
        return
    key = _frames.capture(frame)
    counts[key] = counts.get(key, 0) + 1


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
        return True
    except (ValueError, OSError, AttributeError):
        return False


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


def cpu_profile(seconds: float, hz: int = 100, mode: str = "auto",
                stop: threading.Event | None = None) -> dict:
    """A CPU profile of this process over ``seconds`` (raw form): samples/count and cpu/nanoseconds."""
    hz = max(1, min(int(hz), MAX_HZ))
    if not CPU_LOCK.acquire(blocking=False):
        raise Busy("a CPU profile is already running in this process")
    try:
        mode = choose_cpu_mode(mode)
        if mode == "signal":
            return _signal_cpu(seconds, hz, stop)
        return ThreadSampler(hz, cpu=True).run(seconds, stop).cpu_raw()
    finally:
        CPU_LOCK.release()


class _Timer:
    """SIGPROF every 1/hz s of the *main thread's* CPU time: a POSIX timer (``timer_create``, through
    ctypes) on the main thread's CPU clock. Why not ``setitimer(ITIMER_PROF)``: while a process-wide
    CPU timer is armed, Linux serves ``CLOCK_PROCESS_CPUTIME_ID`` (``time.process_time()``) from a
    tick-granular cache, so code that measures itself with it sees a coarse clock (the example app's
    ``burn_cpu(10)`` took ~12 ms: -17% throughput). ``setitimer`` remains the fallback."""

    def __init__(self, hz: int) -> None:
        self.hz = hz
        self.clock = "process CPU time (setitimer ITIMER_PROF)"
        self._timer: ctypes.c_void_p | None = None
        try:
            self._arm_posix()
            self.clock = "main-thread CPU time (timer_create)"
        except Exception:
            self._timer = None
            signal.setitimer(signal.ITIMER_PROF, 1.0 / hz, 1.0 / hz)

    def _arm_posix(self) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        class Sigevent(ctypes.Structure):  # sigval, signo, notify, then the union (padding)
            _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int),
                        ("sigev_notify", ctypes.c_int), ("_pad", ctypes.c_int * 12)]

        main = native.main_ident()  # the real one (gevent renumbers main_thread().ident)
        assert main is not None  # the main thread is running: it has an ident
        clock = time.pthread_getcpuclockid(main)
        event = Sigevent(sigev_signo=int(signal.SIGPROF), sigev_notify=0)  # SIGEV_SIGNAL
        timer = ctypes.c_void_p()
        if libc.timer_create(ctypes.c_int(clock), ctypes.byref(event), ctypes.byref(timer)) != 0:
            raise OSError(ctypes.get_errno(), "timer_create")
        period = Timespec(0, 1_000_000_000 // self.hz)
        if libc.timer_settime(timer, 0, ctypes.byref(Itimerspec(period, period)), None) != 0:
            libc.timer_delete(timer)
            raise OSError(ctypes.get_errno(), "timer_settime")
        self._libc, self._timer = libc, timer

    def disarm(self) -> None:
        if self._timer is not None:
            self._libc.timer_delete(self._timer)  # deleting disarms
            self._timer = None
        else:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)


def _signal_cpu(seconds: float, hz: int, stop: threading.Event | None) -> dict:
    global _SIG_COUNTS
    period = 1_000_000_000 // hz
    counts: dict = {}
    started = time.monotonic_ns()
    _SIG_COUNTS = counts
    timer = _Timer(hz)
    try:
        _sleep(seconds, stop)
    finally:
        timer.disarm()
        _SIG_COUNTS = None
    raw = new_raw([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), period,
                  time.monotonic_ns() - started,
                  [f"clock: {timer.clock}, SIGPROF at {hz} Hz, main thread stacks"])
    table = _frames.FrameTable(raw["frames"])
    labels = _labels(os.getpid(), {"thread": threading.main_thread().name})
    for stack, n in _settled(counts):
        raw["samples"].append([table.stack(stack), [n, n * period], labels])
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
class _ThreadCpu:
    """On-CPU nanoseconds of each thread, from /proc/self/task/<tid>/schedstat (kept open)."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def read(self, tid: int | None) -> int | None:
        if tid is None:
            return None
        fd = self._fds.get(tid)
        try:
            if fd is None:
                fd = self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
            return int(os.pread(fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            if fd is not None:
                self._fds.pop(tid, None)
                os.close(fd)
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def native_ids() -> dict[int, tuple[int | None, str]]:
    """``{real ident: (native thread id, name)}`` of the threads (``native.thread_ids``)."""
    return native.thread_ids()


class ThreadSampler:
    """Samples every other thread's Python stack every 1/hz s, in the calling thread."""

    def __init__(self, hz: int = 100, cpu: bool = False, wall: bool = False, block: bool = False,
                 trace: bool = False) -> None:
        self.hz = max(1, min(int(hz), MAX_HZ))
        self.want_cpu, self.want_wall, self.want_block, self.want_trace = cpu, wall, block, trace
        self.cpu: dict = {}  # (ident, stack) -> [samples, ns]
        self.wall: dict = {}
        self.block: dict = {}  # (ident, stack, wait) -> [count, ns]
        self.trace: list = []  # (t_us, ident, stack)
        self.names: dict[int, tuple] = {}
        self.duration_ns = 0

    def run(self, seconds: float, stop: threading.Event | None = None) -> "ThreadSampler":
        me = native.get_ident()
        interval = 1.0 / self.hz
        clock = _ThreadCpu()
        started = time.monotonic()
        deadline = started + seconds
        last_t = started
        last_cpu: dict[int, int] = {}
        last_stack: dict[int, tuple] = {}  # the last running stack of each thread (thread-mode CPU)
        self.names = native_ids()
        for ident, (tid, _) in self.names.items():
            value = clock.read(tid)
            if value is not None:
                last_cpu[ident] = value
        ticks = 0
        current: dict[int, types.FrameType] | None
        frame: types.FrameType | None
        try:
            while True:
                now = time.monotonic()
                if now >= deadline or (stop is not None and stop.is_set()):
                    break
                wait = min(interval, deadline - now)
                if stop is not None:
                    stop.wait(wait)
                else:
                    native.sleep(wait)
                now = time.monotonic()
                dt_ns = int((now - last_t) * 1e9)
                last_t = now
                ticks += 1
                if ticks % 10 == 1:
                    self.names.update(native_ids())
                current = sys._current_frames()
                wall_us = time.time_ns() // 1000
                for ident, frame in current.items():
                    if ident == me:
                        continue
                    tid = self.names.get(ident, (None, ""))[0]
                    cpu_ns = None
                    if self.want_cpu or self.want_block:
                        value = clock.read(tid)
                        if value is not None:
                            previous = last_cpu.get(ident)
                            last_cpu[ident] = value
                            if previous is not None:
                                cpu_ns = max(0, value - previous)
                    stack = _frames.capture(frame)
                    kind = _frames.wait_kind(frame) if (self.want_block or self.want_cpu) else None
                    if self.want_cpu:
                        charged = stack
                        if kind is not None:  # waiting now: the CPU was spent before it blocked
                            charged = last_stack.get(ident, stack)
                        else:
                            last_stack[ident] = stack
                        if cpu_ns:
                            cell = self.cpu.setdefault((ident, charged), [0, 0])
                            cell[0] += 1
                            cell[1] += cpu_ns
                    if self.want_wall:
                        cell = self.wall.setdefault((ident, stack), [0, 0])
                        cell[0] += 1
                        cell[1] += dt_ns
                    if self.want_block:
                        off = dt_ns - (cpu_ns or 0)
                        if kind is not None and off > 0:
                            cell = self.block.setdefault((ident, stack, kind), [0, 0])
                            cell[0] += 1
                            cell[1] += off
                    if self.want_trace:
                        self.trace.append((wall_us, ident, stack))
                current = frame = None  # no frame outlives the tick
        finally:
            clock.close()
            self.duration_ns = int((time.monotonic() - started) * 1e9)
        return self

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
        for key, values in cells.items():
            ident, stack = key[0], key[1]
            extra = {"wait": key[2]} if len(key) > 2 else None
            if keep is not None and not keep(key):
                continue
            raw["samples"].append([table.stack(stack), list(values), self._thread_labels(ident, extra)])
        return raw

    def cpu_raw(self) -> dict:
        return self._raw(self.cpu, [("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"),
                         f"clock: per-thread CPU time (schedstat), thread sampler at {self.hz} Hz; "
                         "stacks biased toward GIL release points")

    def wall_raw(self) -> dict:
        return self._raw(self.wall, [("samples", "count"), ("wall", "nanoseconds")],
                         ("wall", "nanoseconds"), f"clock: wall time, every thread, {self.hz} Hz")

    def block_raw(self, mutex: bool = False) -> dict:
        return self._raw(self.block, [("contentions", "count"), ("delay", "nanoseconds")],
                         ("contentions", "count"),
                         f"clock: off-CPU time (wall - thread CPU) in waits, {self.hz} Hz"
                         + ("; lock waits only" if mutex else ""),
                         keep=(lambda key: key[2] == "lock") if mutex else None)


def wall_profile(seconds: float, hz: int = 100, stop: threading.Event | None = None) -> dict:
    return ThreadSampler(hz, wall=True).run(seconds, stop).wall_raw()


def block_profile(seconds: float, hz: int = 100, mutex: bool = False,
                  stop: threading.Event | None = None) -> dict:
    return ThreadSampler(hz, block=True).run(seconds, stop).block_raw(mutex)
