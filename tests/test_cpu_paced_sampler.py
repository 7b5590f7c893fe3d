"""The CPU-only thread sampler is paced by CPU time (``samplers.CpuPacer``), in this process: one timer per
sampled thread on its CPU clock, each sending SIGPROF to the sampler thread alone, which keeps it
blocked (``/proc``'s SigBlk cannot show that: ``sigtimedwait`` unblocks the signal while it waits);
the timers follow the threads (an ended thread's is deleted mid-profile); an idle process wakes the
sampler only at the wall-time fallback; every timer is gone, no SIGPROF pending and the sampler
thread's signal mask restored once the profile ends; and the CPU is still charged exactly.

The timers are read from ``/proc/self/timers`` (one entry per POSIX timer: signal, whom it notifies,
clock id; a thread's CPU clock id is ``~tid << 3 | 6``).
"""
from __future__ import annotations

import re
import signal
import threading
import time

from rockstar_mp.profiling import samplers
from tests.helpers import poll, posix_timers

SIGPROF_BIT = 1 << (int(signal.SIGPROF) - 1)


def status_mask(path: str, field: str) -> int:
    with open(path) as f:
        return int(re.search(rf"^{field}:\s*([0-9a-f]+)", f.read(), re.M).group(1), 16)


class Burner(threading.Thread):
    """A thread that burns Python CPU between ``go`` and ``halt``, knows how much it burned, and ends at
    ``leave`` (a thread that ends takes the CPU it used since the sampler's last wake with it: its clock
    can no longer be read; at most one period, which the charge test must not count against us)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.go, self.halt, self.leave = threading.Event(), threading.Event(), threading.Event()
        self.burned_ns = 0

    def run(self) -> None:
        self.go.wait()
        start = time.thread_time_ns()
        x = 0
        while not self.halt.is_set():
            for i in range(2000):
                x += i
        self.burned_ns = time.thread_time_ns() - start
        self.leave.wait()

    def end(self) -> None:
        self.go.set()
        self.halt.set()
        self.leave.set()
        self.join()


def test_cpu_only_sampler_wakes_on_cpu_time_and_cleans_up():
    burner, short_lived = Burner(), Burner()
    burner.start()
    short_lived.start()
    sampler = samplers.ThreadSampler(100, cpu=True)
    stop_profile = threading.Event()
    masks_after: list[set] = []

    def profile() -> None:
        sampler.run(60, stop_profile)
        masks_after.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    runner = threading.Thread(target=profile, daemon=True)
    runner.start()
    try:
        # every other thread gets a timer on its own CPU clock, all sending SIGPROF to the sampler thread
        poll(lambda: {burner.native_id, short_lived.native_id} <= {tid for _, _, tid in posix_timers()},
             timeout=10, message="timers on the threads' CPU clocks")
        assert all(signo == signal.SIGPROF and notify == f"signal/tid.{runner.native_id}"
                   for signo, notify, _ in posix_timers()), posix_timers()

        # a thread that ends loses its timer while the profile goes on
        short_lived.end()
        poll(lambda: short_lived.native_id not in {tid for _, _, tid in posix_timers()}, timeout=10,
             message="the ended thread's timer deleted")

        # busy: the burner's timer wakes the sampler
        burner.go.set()
        expired = sampler.expirations
        poll(lambda: sampler.expirations >= expired + 5, timeout=30, message="wakes by the CPU-clock timers")

        # idle: only the wall-time fallback wakes it (a wall-paced sampler would wake 10 times as often);
        # the burner, idle, stays alive through these wakes, so all it burned is read from its clock
        burner.halt.set()
        poll(lambda: burner.burned_ns > 0, timeout=10, message="the burner stopped burning")
        wakes, expired, idle_since = sampler.wakes, sampler.expirations, time.monotonic()
        poll(lambda: sampler.wakes >= wakes + 5, timeout=30, interval=0.05, message="fallback wakes")
        woken, idle = sampler.wakes - wakes, time.monotonic() - idle_since
        assert sampler.expirations - expired <= 1, (woken, sampler.expirations - expired)
        assert woken <= idle / samplers.CpuPacer.FALLBACK + 2, (woken, idle)  # a busy machine only makes it fewer
    finally:
        burner.end()
        stop_profile.set()
        runner.join(timeout=30)

    assert not runner.is_alive()
    assert [t for t in posix_timers() if t[1] == f"signal/tid.{runner.native_id}"] == []
    assert masks_after == [set()], masks_after
    assert not status_mask("/proc/self/status", "ShdPnd") & SIGPROF_BIT
    assert "CPU time (timer_create)" in sampler.pacing, sampler.pacing
    charged = sum(ns for (ident, _), (_, ns) in sampler.cpu.items() if ident == burner.ident)
    assert abs(charged - burner.burned_ns) <= 0.05 * burner.burned_ns + 2_000_000, (charged, burner.burned_ns)
