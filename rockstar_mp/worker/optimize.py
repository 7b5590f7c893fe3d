"""Process optimization in the worker: a garbage collection that can only lower memory, measured, off the
request path; and recycling of a worker whose memory went over ``max_worker_memory``.

Asked three ways: the aggregator's schedule and ``POST /optimize`` (a request counter in the slab,
polled by the worker's monitor thread every 0.1 s), ``manager.optimize_now()`` (the same counter), and
``kill -USR1 <worker>`` or ``kill -USR1 <master>`` (gunicorn forwards it to every worker). The SIGUSR1
handler chains to the handler it replaced (gunicorn's: reopen the log files), so log rotation keeps
working; the scheduled path uses no signal at all, so it never reopens logs and never coalesces with
an operator's USR1.

When it runs: immediately if no request is in flight (the worker is idle, so nobody waits), else as
soon as the last in-flight request has been answered ("between requests"); after ``MAX_DEFER`` seconds
of continuous traffic (gthread workers may never be idle) it runs anyway.

Why it never makes memory worse: the objects a worker inherited from its master were frozen there
(``gc.freeze()`` before each fork, ``gc_freeze_before_fork``), so a collection here walks only the
worker's own objects and writes no shared page. One full collection (``gc.collect(2)`` collects the
younger generations too) runs only if the worker did something since the last optimization (served a
request, or allocated enough to set off a collection of its own); then, if glibc's
heap holds at least ``TRIM_MIN_FREE`` free bytes or the collection freed objects, ``malloc_trim(0)``
returns the free pages to the kernel (``optimization_trim``; skipped on other C libraries).
"""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import time
from collections.abc import Callable

from .._linux import Memory, read_memory
from ..profiling import native
from ..segment.layout import RECYCLE_SLOTS, Body, Header

MAX_DEFER = 1.0
# With max_worker_memory, the monitor thread reads the worker's RSS (/proc/self/statm: microseconds) on
# every poll; USS and PSS (smaps_rollup: a fraction of a millisecond) only when the RSS is over the limit
# (USS and PSS never exceed it), at most every MEMORY_CHECK_SECONDS.
MEMORY_CHECK_SECONDS = 0.5
_PAGE = os.sysconf("SC_PAGE_SIZE")
TRIM_MIN_FREE = 1 << 20  # free bytes in glibc's heap worth a malloc_trim(0) when the collection freed nothing
MiB = 1 << 20

log = logging.getLogger("rockstar_mp.worker")


def _on_glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS), or no confstr at all
        return False


class _Glibc:
    """glibc's ``malloc_trim`` and ``mallinfo2``, when this process runs on glibc (else unavailable)."""

    def __init__(self) -> None:
        self.trim: Callable[[int], int] | None = None
        self._mallinfo2 = None
        if _on_glibc():
            try:
                libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them (no ldconfig run)
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                self.trim = libc.malloc_trim
                if hasattr(libc, "mallinfo2"):  # glibc 2.33+
                    libc.mallinfo2.restype = _Mallinfo2
                    self._mallinfo2 = libc.mallinfo2
            except (OSError, AttributeError):
                self.trim = None

    def free_bytes(self) -> int | None:
        """Free bytes inside the heap's arenas (``fordblks``), None if glibc cannot tell."""
        return self._mallinfo2().fordblks if self._mallinfo2 is not None else None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


GLIBC = _Glibc()


def _activity(buf, base: int) -> tuple:
    """What changes when a worker does anything that can leave garbage: the requests it recorded and the
    collections its own allocations set off (the young generation's are left out: the monitor thread's
    few allocations set one off now and then)."""
    return Body.records_head.get(buf, base), tuple(s["collections"] for s in gc.get_stats()[1:])


def _resident() -> int:
    """This process's RSS in bytes (``/proc/self/statm``), 0 if unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def terminate_gracefully() -> None:
    """The default recycle: SIGTERM to this process, the graceful stop of gunicorn's workers (the
    request in progress is finished, then the worker exits and the arbiter starts another)."""
    os.kill(os.getpid(), signal.SIGTERM)


class MemoryLimit:
    """``max_worker_memory``: in MiB of USS or PSS (``kind``); 0 is off."""

    def __init__(self, mib: float = 0.0, kind: str = "uss") -> None:
        self.bytes = int(mib * MiB)
        self.kind = kind

    def of(self, memory: Memory) -> int:
        return memory.pss if self.kind == "pss" else memory.uss


class Optimizer:
    """One per attached worker; writes its results into the worker's slab.

    ``segment`` (optional): for counting a memory recycle in the header under the flock. ``limit``:
    the worker's ``max_worker_memory``. ``trim``: ``malloc_trim(0)`` after a collection that can pay
    off. ``recycle``: what stops the worker gracefully (default: SIGTERM to itself).
    """

    def __init__(self, buf, base: int, segment=None, limit: MemoryLimit | None = None, trim: bool = True,
                 recycle: Callable[[], None] = terminate_gracefully) -> None:
        self._buf = buf
        self._base = base
        self._segment = segment
        self.limit = limit or MemoryLimit()
        self.trim = trim
        self.recycle = recycle
        self.log = log  # gunicorn's hooks put the worker's own logger here (its error log)
        self._handled = Body.optimize_requested.get(buf, base)
        self._pending_since = 0.0
        # real ones: the monitor is a real thread even in gevent workers (``profiling.native``)
        self._lock = native.allocate_lock()
        self.wake = native.Event()  # set by the signal handler: the monitor thread looks at once
        self._next_memory_check = 0.0
        self._activity_after: tuple | None = None  # ``_activity`` when the last optimization ended
        self._was_under_limit = False
        self.recycling = False
        # set by the worker's attach: hands the request path on_idle while a run is pending, None after it,
        # so that an idle-again request costs no call into Python when there is nothing to run
        self.idle_hook: Callable[[Callable[[], None] | None], None] | None = None

    # -- asking ---------------------------------------------------------------------------------
    def request(self) -> None:
        if not self._pending_since:
            self._pending_since = time.monotonic()
            if self.idle_hook is not None:
                self.idle_hook(self.on_idle)
        self.wake.set()

    @property
    def pending(self) -> bool:
        """Is a run asked for and not done yet?"""
        return bool(self._pending_since)

    def poll(self) -> None:
        """Monitor thread: pick up requests from the slab, run a pending one if the worker is idle, and
        compare the worker's memory with ``max_worker_memory``."""
        requested = Body.optimize_requested.get(self._buf, self._base)
        if requested != self._handled:
            self._handled = requested
            self.request()
        if self._pending_since and (self.idle() or time.monotonic() - self._pending_since > MAX_DEFER):
            self.run()
        if self.limit.bytes and not self.recycling:
            self._watch_memory()

    def _watch_memory(self) -> None:
        if _resident() <= self.limit.bytes:
            self._was_under_limit = True  # its RSS is, so its USS and PSS are too
        elif time.monotonic() >= self._next_memory_check:
            self._next_memory_check = time.monotonic() + MEMORY_CHECK_SECONDS
            self.check_memory()

    def idle(self) -> bool:
        return Body.inflight_count.get(self._buf, self._base) == 0

    def on_idle(self) -> None:
        """Called when the last in-flight request was answered."""
        if self._pending_since:
            self.run()

    # -- doing ----------------------------------------------------------------------------------
    def run(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is collecting right now
        try:
            self._pending_since = 0.0
            if self.idle_hook is not None:
                self.idle_hook(None)
            self._run()
        finally:
            self._lock.release()

    def _run(self) -> None:
        before = read_memory()
        start = time.perf_counter()
        collected, skipped = [0, 0, 0], _activity(self._buf, self._base) == self._activity_after
        if not skipped:
            collected[2] = gc.collect(2)  # a full collection collects generations 0 and 1 as well
        seconds = time.perf_counter() - start
        trimmed = self._trim(collected[2]) if not skipped else 0
        after = read_memory()
        buf, base = self._buf, self._base
        self._activity_after = _activity(buf, base)
        Body.optimize_seconds.set(buf, seconds, base)
        for field, value in ((Body.optimize_rss_before, before.rss), (Body.optimize_rss_after, after.rss),
                             (Body.optimize_uss_before, before.uss), (Body.optimize_uss_after, after.uss),
                             (Body.optimize_pss_before, before.pss), (Body.optimize_pss_after, after.pss),
                             (Body.optimize_trimmed, trimmed)):
            field.set(buf, value, base)
        if skipped:
            Body.optimize_skipped.set(buf, Body.optimize_skipped.get(buf, base) + 1, base)
        for field, count in zip(Body.optimize_collected, collected, strict=True):
            field.set(buf, count, base)
        Body.optimize_last.set(buf, time.time(), base)
        Body.optimize_count.set(buf, Body.optimize_count.get(buf, base) + 1, base)  # last

    def _trim(self, collected: int) -> int:
        """``malloc_trim(0)`` when it can give pages back; the RSS it gave back (bytes)."""
        if not self.trim or GLIBC.trim is None:
            return 0
        free = GLIBC.free_bytes()
        if not collected and free is not None and free < TRIM_MIN_FREE:
            return 0
        rss = read_memory().rss
        GLIBC.trim(0)
        return max(0, rss - read_memory().rss)

    # -- recycling ------------------------------------------------------------------------------
    def check_memory(self) -> bool:
        """Recycle the worker if its memory crossed the limit; True if it did. A worker already over
        the limit at its first check is not recycled (its replacement would be too: a loop), but
        warned about once."""
        memory = self.limit.of(read_memory())
        if not memory:
            return False
        if memory <= self.limit.bytes:
            self._was_under_limit = True
            return False
        if not self._was_under_limit:
            self.log.warning("rockstar-mp: worker %d starts at %.1f MiB of %s, above max_worker_memory (%.1f MiB): "
                             "it is not recycled, since its replacement would be too; raise max_worker_memory",
                             os.getpid(), memory / MiB, self.limit.kind.upper(), self.limit.bytes / MiB)
            self._was_under_limit = True  # warned once; from now on it recycles like the others
            return False
        self._recycle(memory)
        return True

    def _recycle(self, memory: int) -> None:
        self.recycling = True
        buf, base = self._buf, self._base
        Body.recycle_at.set(buf, time.time(), base)
        Body.recycle_memory.set(buf, memory, base)
        if self._segment is not None:
            self._count_recycle(memory)
        self.log.warning("rockstar-mp: worker %d uses %.1f MiB of %s, over max_worker_memory (%.1f MiB): it stops "
                         "after its requests in progress, and the master starts another", os.getpid(),
                         memory / MiB, self.limit.kind.upper(), self.limit.bytes / MiB)
        self.recycle()

    def _count_recycle(self, memory: int) -> None:
        """The header's entry for this recycle, then the count (the aggregator notifies from both)."""
        segment = self._segment
        try:
            with segment.locked():
                count = Header.memory_recycles.get(segment.buf)
                i = count % RECYCLE_SLOTS
                Header.recycle_pid[i].set(segment.buf, os.getpid())
                Header.recycle_memory[i].set(segment.buf, memory)
                Header.recycle_limit[i].set(segment.buf, self.limit.bytes)
                Header.recycle_time[i].set(segment.buf, time.time())
                Header.memory_recycles.set(segment.buf, count + 1)
        except OSError:  # no lock in this process: the recycle still happens, uncounted
            log.debug("rockstar-mp: memory recycle not counted", exc_info=True)


def optimizing(optimizer: Optimizer, previous: Callable | None) -> Callable:
    """A SIGUSR1 handler that asks ``optimizer`` for an optimization, then calls ``previous`` (gunicorn's:
    reopen the log files)."""
    def on_usr1(signum, frame):
        optimizer.request()
        if callable(previous):
            previous(signum, frame)

    on_usr1.rockstar_optimizes = True  # type: ignore[attr-defined]
    return on_usr1


def install_usr1(optimizer: Optimizer) -> None:
    """SIGUSR1 asks for an optimization, then calls the handler it replaced (gunicorn reopens its log
    files there). Install it after the server's own handlers (gunicorn: ``post_worker_init``); does
    nothing if the handler in place already optimizes."""
    previous = signal.getsignal(signal.SIGUSR1)
    if getattr(previous, "rockstar_optimizes", False):
        return
    signal.signal(signal.SIGUSR1, optimizing(optimizer, previous if callable(previous) else None))
