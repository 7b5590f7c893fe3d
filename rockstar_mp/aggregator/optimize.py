"""Scheduled optimization (GC) of the workers, and what the workers report about it.

With optimization on, every live worker is asked once per ``optimization_interval``, the workers'
turns spread over ``interval * optimization_spread``. With the spread on, a worker is only asked once the
previous one has finished and ``MIN_GAP`` has passed, so no two workers pause together even when a
loaded machine delays a worker's answer. A request is a counter raised in the worker's slab (no signal: see
``rockstar_mp.worker.optimize``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ..control import WorkerOptimization, read_worker, request_optimization
from ..segment import LIVE, Segment

RECENT_EVENTS = 1000
RECHECK = 0.25  # with optimization on, the schedule looks at least this often for new workers
IDLE_WAIT = 5.0  # with it off, a config change wakes the schedule; this is a safety net
MIN_GAP = 0.15  # with the spread on: seconds between one worker's optimization ending and the next ask
WAIT = 0.02  # how soon to look again while another worker is optimizing
OUTSTANDING_TIMEOUT = 2.0  # a worker that has not answered a request by then is not waited for

log = logging.getLogger("rockstar_mp.aggregator")


class OptimizationSchedule:
    """The aggregator's side: the schedule, and the events seen (one per optimization done)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.events: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self._seen: dict[tuple, int] = {}  # (slab, generation) -> optimize_count last seen
        self._next_due: dict[int, float] = {}  # pid -> time.monotonic() of its next request
        self._outstanding: dict[int, tuple] = {}  # pid -> (its count when asked, when asked)

    def live(self) -> list:
        return sorted((s for s in self.segment.slots() if s.state == LIVE and s.pid), key=lambda s: s.slab)

    def workers(self) -> list[WorkerOptimization]:
        return [read_worker(self.segment, s.slab, s.pid) for s in self.live()]

    def observe(self) -> None:
        """Record an event for every optimization finished since the last look (called on the tick)."""
        current = {}
        for slot in self.live():
            stats = read_worker(self.segment, slot.slab, slot.pid)
            key = (slot.slab, slot.generation)
            current[key] = stats.optimization_count
            if stats.optimization_count > self._seen.get(key, 0):
                event = stats.to_json()
                event["time"] = event.pop("last_optimization")
                self.events.append(event)
        self._seen = current

    def next_delay(self, interval: float, spread: float, now: float | None = None) -> float:
        """Ask the workers that are due; return the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        live = self.live()
        pids = [s.pid for s in live]
        for gone in set(self._next_due) - set(pids):
            del self._next_due[gone]
        for pid in pids:
            if pid not in self._next_due:  # a new worker takes the middle of the widest gap
                self._next_due[pid] = self._place(now, interval, spread)
        due = sorted((at, pid) for pid, at in self._next_due.items() if at <= now)
        if due and spread > 0:
            if self._busy(live, now):
                return WAIT  # one worker at a time, MIN_GAP apart: the spread holds under load too
            due = due[:1]
        if due:
            asked = request_optimization(self.segment, {pid for _, pid in due})
            for pid in asked:
                stats = next(read_worker(self.segment, s.slab, s.pid) for s in live if s.pid == pid)
                self._outstanding[pid] = (stats.optimization_count, now)
            for _, pid in due:
                self._next_due[pid] += interval * max(1, int((now - self._next_due[pid]) // interval) + 1)
        return max(0.01, min(self._next_due.values(), default=now + interval) - now)

    def _busy(self, live: list, now: float) -> bool:
        """Is a requested optimization still running, or did the last one end under MIN_GAP ago?"""
        counts = {s.pid: read_worker(self.segment, s.slab, s.pid) for s in live}
        for pid, (count, asked_at) in list(self._outstanding.items()):
            stats = counts.get(pid)
            if stats is None or stats.optimization_count > count or now - asked_at > OUTSTANDING_TIMEOUT:
                del self._outstanding[pid]
        if self._outstanding:
            return True
        last = max((s.last_optimization for s in counts.values()), default=0.0)
        return time.time() - last < MIN_GAP

    def _place(self, now: float, interval: float, spread: float) -> float:
        span = interval * min(max(spread, 0.0), 1.0)
        if not self._next_due or span <= 0:
            return now + interval
        phases = sorted((at - now) % span for at in self._next_due.values())
        gaps = [(b - a, a) for a, b in zip(phases, phases[1:] + [phases[0] + span], strict=True)]
        width, start = max(gaps)
        return now + (start + width / 2) % span + (interval - span)


async def run_schedule(state, stopping: asyncio.Event) -> None:
    """The aggregator's schedule task: asks due workers, sleeping exactly until the next is due (a
    tick-driven schedule would bunch requests into the same tick). Follows runtime control."""
    schedule = state.optimization
    while not stopping.is_set():
        config = state.config
        delay = IDLE_WAIT  # off: only a config change can give work
        if config.enable_optimization:
            delay = RECHECK
            try:
                delay = min(RECHECK, schedule.next_delay(config.optimization_interval,
                                                         config.optimization_spread))
            except Exception:  # never let the schedule die
                log.exception("rockstar-mp aggregator: optimization schedule")
        await state.until_config_changes(stopping, delay)
