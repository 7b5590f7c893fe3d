"""CPU profiles of sync and gthread workers, each thread sampled by itself.

Each thread is sampled at random moments of its own CPU time, 1/hz s of it apart on average (each gap
drawn from half a period to one and a half), by a C handler (``rockstar_mp/_threadprof.c``) that
records, on that thread and at that moment, its stack and the CPU time it used since its previous
sample. Two POSIX timers per thread send it SIGPROF (``SIGEV_THREAD_ID``): one on its CPU clock says
when an idle thread becomes busy, and is then swapped for one on the wall clock, set for when the thread
would reach its next CPU target were it to run all the while; a signal that finds it short of the
target (it waited for a core, or slept) sets it again for the CPU still to go, a period from now at the
least; for a thread that ran less than a quarter of the time over its last looks (blocked, not
waiting for a core), for when it would reach the target at that pace, four periods at most (a look
wakes a thread blocked in a lock or a poll, and gthread's request threads took ten looks a sample).
While the thread is idle the wall timer looks in less and less often (1 to 8 periods apart) with its
CPU timer armed beside it; after a second idle the CPU timer alone remains, which costs an idle thread
nothing. No other thread wakes per sample and no GIL changes hands, so a sample costs the signal's delivery and
a copy of the frame chain (figure 15 of ``make bench``). A thread in a long C call, holding the GIL or
not, is sampled in it, at the line that made the call.

Why not the CPU timer alone, as Go's profiler does: Linux checks a CPU timer at the scheduler's ticks,
on the thread that is running then. On a loaded machine a thread's slices end at a system call that
updates its CPU time as often as at a tick (a Python loop reading ``time.thread_time()``, say), and
those slices then never contain a tick: their CPU went to the next sample, in the C call that followed.
A split app read 22-27 % for a loop that used 34 % of the CPU, beside two busy processes (13-14 %
beside four); sampled on the CPU targets it reads 33-35 % in both. Why not sooner back on the CPU
timer: a request that starts with such a loop after a pause then went unseen until its C call.

This thread wakes every ``DRAIN_INTERVAL`` s (the GIL released in between) to arm timers on new threads,
forget ended ones, and drain the handlers' ring, naming each code object address a sample holds
(``CodeNames``). The C handler takes SIGPROF only while a profile runs, and only in place of
rockstar-mp's own Python handler (``samplers.install_signal_handler``, which ignores a stray SIGPROF
once it is given back); otherwise, where the C module is not built (``ROCKSTAR_PURE_PYTHON=1``, no
compiler) or not supported (CPython other than 3.11), and in gevent workers (``self_sampling``),
``samplers.cpu_profile`` chooses: SIGPROF in Python for the main thread, or the sampler thread.

A signal interrupts a system call the thread was in (the wall timer's, looking in on a sleeping
thread): the handler is installed with ``SA_RESTART``, and Python retries the calls that never
restart (``select``, ``poll``, ``sleep``: PEP 475), as C libraries must for any profiler that uses signals.

Example::

    from rockstar_mp.profiling import thread_signals
    raw = thread_signals.cpu_profile(3.0, hz=100)  # the threads sample themselves where they can
"""
from __future__ import annotations

import os
import signal
import threading
import time
import types

from . import frames as _frames
from . import native, samplers
from .samplers import ThreadSampler, signal_handler_installed, thread_cpu_clock

try:
    if os.environ.get("ROCKSTAR_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
        raise ImportError("ROCKSTAR_PURE_PYTHON")
    from .. import _threadprof
except ImportError:
    _threadprof = None

SIGNAL = signal.SIGPROF
# s: new threads are sampled from the next drain, and the ring holds what comes meanwhile. A wake cost a gthread
# worker about 200 us of CPU (the GIL's hand-over): 0.2 s took 6.0-6.9 ms of a 5.8-s profile, 0.5 s 2.9-3.8 ms
DRAIN_INTERVAL = 0.5
RING_CAPACITY = 2048  # samples between drains (1,000 Hz on 4 busy cores: 2,000); more are counted as lost
MAX_THREADS = 1024  # threads sampled at once; more are counted, not sampled


def available() -> bool:
    """Can a CPU profile here be sampled by the threads themselves? (The C module is built for this
    interpreter, and SIGPROF is rockstar-mp's: its Python handler is installed.)"""
    return _threadprof is not None and bool(_threadprof.SUPPORTED) and signal_handler_installed()


class CodeNames:
    """Code objects by address, for the addresses the handlers recorded.

    The handlers cannot take a reference, so an address is named at the drain after its sample (within
    ``DRAIN_INTERVAL``) by ``_threadprof.code_at``, which reads the object's head without trusting it and
    takes it only if it is a live code object. Named codes are kept for the profile, so their addresses
    cannot be reused meanwhile. An address that holds no code object any more was one freed before its
    drain; its frame is left out and counted (``unnamed``). Why not search the heap: ``gc.get_objects()``
    misses what ``gc.freeze()`` froze, which is every function of a preloaded app."""

    def __init__(self) -> None:
        self.by_address: dict[int, types.CodeType] = {}
        self.unnamed = 0

    def codes(self, key: tuple) -> tuple:
        """The code objects of the raw key's frames (``None`` for an address not named)."""
        assert _threadprof is not None
        found = []
        for address in key[::2]:
            code = self.by_address.get(address)
            if code is None:
                code = _threadprof.code_at(address)
                if code is None:
                    self.unnamed += 1
                else:
                    self.by_address[address] = code
            found.append(code)
        return tuple(found)


class SignalThreadSampler(ThreadSampler):
    """``ThreadSampler``'s CPU profile (same cells, labels and raw form), sampled by the threads'
    own SIGPROF handlers (the module's docstring)."""

    def __init__(self, hz: int = 100, internal: bool = False) -> None:
        super().__init__(hz, cpu=True, internal=internal)
        self.pacing = (f"each thread sampled in a SIGPROF handler at random moments of its CPU time, 1/{self.hz} "
                       "s of it apart on average")
        self.names_of_codes = CodeNames()
        self.counts: dict[str, int] = {}
        self.unarmed: set[int] = set()  # threads the table or a timer could not take (not tried again)

    def _run_cpu(self, deadline: float, stop: threading.Event | None, last_cpu: dict[int, int]) -> None:
        assert _threadprof is not None
        me = native.get_ident()
        armed: set[int] = set()  # the tids the C module samples (it holds their timers)
        _threadprof.start(int(SIGNAL), RING_CAPACITY, _frames.MAX_DEPTH, MAX_THREADS, 1_000_000_000 // self.hz)
        try:
            while True:
                self._arm(armed, {tid for _, tid in self._sampled(me)})
                self._settle(_threadprof.drain())
                self.wakes += 1
                now = time.monotonic()
                if now >= deadline or (stop is not None and stop.is_set()):
                    break
                samplers._sleep(min(DRAIN_INTERVAL, deadline - now), stop)
        finally:
            self._settle(_threadprof.stop())  # deletes the timers
            self.counts = _threadprof.counters()

    def _arm(self, armed: set[int], tids: set[int]) -> None:
        """Exactly ``tids`` sampled: ``track`` makes a thread's two timers (its CPU clock's, and the wall
        clock's), each sending SIGPROF to the thread itself; ``untrack`` deletes them."""
        for tid in armed - tids:
            armed.discard(tid)
            _threadprof.untrack(tid)
        for tid in tids - armed - self.unarmed:
            if _threadprof.track(tid, thread_cpu_clock(tid)):
                armed.add(tid)
            else:  # the table is full, or the timers could not be made
                self.unarmed.add(tid)

    def _settle(self, rows: list) -> None:
        """Charge each drained sample's CPU to its stack, keyed as ``frames.capture_key`` keys it."""
        ident_of = {tid: ident for ident, (tid, _) in self.names.items() if tid}
        for tid, cpu_ns, raw_key in rows:
            key = self._named(raw_key)
            ident = ident_of.get(tid, tid)
            cell = self.cpu.setdefault((ident, key), [0, 0])
            cell[0] += 1
            cell[1] += cpu_ns

    def _named(self, raw_key: tuple) -> tuple:
        """The key without the frames whose code could not be named (its codes now in ``_codes``)."""
        if raw_key in self._codes:
            return raw_key
        codes = self.names_of_codes.codes(raw_key)
        if None in codes:
            kept = [i for i, code in enumerate(codes) if code is not None]
            raw_key = tuple(value for i in kept for value in raw_key[2 * i:2 * i + 2])
            codes = tuple(codes[i] for i in kept)
        self._codes[raw_key] = codes
        return raw_key

    def cpu_raw(self) -> dict:
        counts = self.counts
        lost = (f"; lost: {counts.get('ring_full', 0)} samples ({counts.get('lost_ns', 0) / 1e6:.1f} ms) to a "
                f"full ring, {len(self.unarmed)} threads not sampled, {self.names_of_codes.unnamed} frames of code "
                f"freed before they were named, {counts.get('cut_chains', 0)} stacks cut at a frame that could "
                "not be read")
        return self._raw(self.cpu, [("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"),
                         f"clock: per-thread CPU time, {self.pacing}, weighted by the thread's CPU since its "
                         f"previous sample; {counts.get('samples', 0)} samples ({counts.get('wall_starts', 0)} busy "
                         f"spells, {counts.get('looks', 0)} looks), their handlers "
                         f"{counts.get('handler_ns', 0) / 1e6:.1f} ms in all; the drain: {self.wakes} wakes, "
                         f"{self.own_cpu_ns / 1e6:.1f} ms of its own CPU" + lost)


def self_sampling(mode: str) -> bool:
    """Do the threads sample themselves for a CPU profile asked for in ``mode``? ``auto``: in sync and
    gthread workers where ``available()``; a gevent worker keeps SIGPROF in Python (``samplers``): its
    greenlets swap the main thread's frames and data stack, which a handler must not catch half done.
    ``thread``: wherever available. ``signal`` and ``sampler``: never."""
    if mode == "auto":
        return available() and not native.patched("threading")
    return mode == "thread" and available()


def cpu_profile(seconds: float, hz: int = 100, mode: str = "auto", stop: threading.Event | None = None,
                internal: bool = False) -> dict:
    """A CPU profile of this process over ``seconds`` (raw form): by the threads themselves where
    ``self_sampling(mode)``, else as ``samplers.cpu_profile`` chooses (also if the handler cannot start)."""
    if self_sampling(mode):
        samplers.take_cpu_profile_slot()
        try:
            return SignalThreadSampler(hz, internal=internal).run(seconds, stop).cpu_raw()
        except OSError:
            pass  # start() refused (see _threadprof.c): the samplers below run
        finally:
            samplers.CPU_LOCK.release()
    return samplers.cpu_profile(seconds, hz, mode, stop, internal)
