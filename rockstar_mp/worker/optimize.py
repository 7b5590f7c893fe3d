"""Process optimization in the worker: a full garbage collection, measured, off the request path.

Asked three ways: the aggregator's schedule and ``POST /optimize`` (a request counter in the slab,
polled by the worker's monitor thread every 0.1 s), ``manager.optimize_now()`` (the same counter), and
``kill -USR1 <worker>`` or ``kill -USR1 <master>`` (gunicorn forwards it to every worker). The SIGUSR1
handler chains to the handler it replaced (gunicorn's: reopen the log files), so log rotation keeps
working; the scheduled path uses no signal at all, so it never reopens logs and never coalesces with
an operator's USR1.

When it runs: immediately if no request is in flight (the worker is idle, so nobody waits), else as
soon as the last in-flight request has been answered ("between requests"); after ``MAX_DEFER`` seconds
of continuous traffic (gthread workers may never be idle) it runs anyway.
"""
from __future__ import annotations

import gc
import signal
import time

import psutil

from ..profiling import native
from ..segment.layout import Body

MAX_DEFER = 1.0


class Optimizer:
    """One per attached worker; writes its results into the worker's slab."""

    def __init__(self, buf, base: int) -> None:
        self._buf = buf
        self._base = base
        self._handled = Body.optimize_requested.get(buf, base)
        self._pending_since = 0.0
        # real ones: the monitor is a real thread even in gevent workers (``profiling.native``)
        self._lock = native.allocate_lock()
        self._process = psutil.Process()
        self.wake = native.Event()  # set by the signal handler: the monitor thread looks at once

    # -- asking ---------------------------------------------------------------------------------
    def request(self) -> None:
        if not self._pending_since:
            self._pending_since = time.monotonic()
        self.wake.set()

    def poll(self) -> None:
        """Monitor thread: pick up requests from the slab, run a pending one if the worker is idle."""
        requested = Body.optimize_requested.get(self._buf, self._base)
        if requested != self._handled:
            self._handled = requested
            self.request()
        if self._pending_since and (self.idle() or time.monotonic() - self._pending_since > MAX_DEFER):
            self.run()

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
            rss_before, uss_before = self._memory()
            start = time.perf_counter()
            collected = [gc.collect(generation) for generation in range(3)]
            seconds = time.perf_counter() - start
            rss_after, uss_after = self._memory()
            buf, base = self._buf, self._base
            Body.optimize_seconds.set(buf, seconds, base)
            Body.optimize_rss_before.set(buf, rss_before, base)
            Body.optimize_rss_after.set(buf, rss_after, base)
            Body.optimize_uss_before.set(buf, uss_before, base)
            Body.optimize_uss_after.set(buf, uss_after, base)
            for field, count in zip(Body.optimize_collected, collected, strict=True):
                field.set(buf, count, base)
            Body.optimize_last.set(buf, time.time(), base)
            Body.optimize_count.set(buf, Body.optimize_count.get(buf, base) + 1, base)  # last
        finally:
            self._lock.release()

    def _memory(self) -> tuple[int, int]:
        try:
            info = self._process.memory_full_info()
            return info.rss, info.uss
        except (psutil.Error, AttributeError):
            rss = self._process.memory_info().rss
            return rss, 0


def install_usr1(optimizer: Optimizer) -> None:
    """SIGUSR1 asks for an optimization, then calls the handler it replaced (gunicorn reopens its log
    files there). Install it after the server's own handlers (gunicorn: ``post_worker_init``)."""
    previous = signal.getsignal(signal.SIGUSR1)

    def on_usr1(signum, frame):
        optimizer.request()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGUSR1, on_usr1)
