"""Scheduled optimization (GC) of the workers, and what the workers report about it.

With optimization on, every live worker is asked once per ``optimization_interval``, the workers'
turns spread over ``interval * optimization_spread``. With the spread on, a worker is only asked once the
previous one has finished and ``MIN_GAP`` has passed, so no two workers pause together even when a
loaded machine delays a worker's answer. A request is a counter raised in the worker's slab (no signal: see
``rockstar_mp.worker.optimize``).

Low-traffic scheduling: with ``optimization_defer_rate`` > 0, a worker that is due is not asked while the
server serves more requests a second than that (measured over the last ``RATE_WINDOW`` seconds); once it has
waited ``optimization_max_deferral`` seconds it is asked whatever the traffic.

Leak hints (``MemoryTrends``): each worker's memory sampled at every history snapshot, and its slope in
MiB an hour by least squares over the samples the history keeps.
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
RATE_WINDOW = 1.0  # seconds of request counts the deferral's rate is measured over
DEFER_RECHECK = 0.25  # how soon a deferred schedule looks at the rate again
TREND_MIN_POINTS = 3  # samples before a worker's memory slope is given
TREND_MAX_POINTS = 8640  # samples kept per worker (a day of 10 s snapshots)
HOUR = 3600.0
MiB = 1 << 20

log = logging.getLogger("rockstar_mp.aggregator")


class OptimizationSchedule:
    """The aggregator's side: the schedule, and the events seen (one per optimization done)."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.events: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self._seen: dict[tuple, int] = {}  # (slab, generation) -> optimize_count last seen
        self._next_due: dict[int, float] = {}  # pid -> time.monotonic() of its next request
        self._outstanding: dict[int, tuple] = {}  # pid -> (its count when asked, when asked)
        self.rate = RequestRate()
        self.deferral = Deferral()

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

    def next_delay(self, interval: float, spread: float, now: float | None = None, defer_rate: float = 0.0,
                   max_deferral: float = 60.0) -> float:
        """Ask the workers that are due; return the seconds until the next one is. With ``defer_rate``,
        due workers wait while the request rate is above it, for up to ``max_deferral`` seconds."""
        now = time.monotonic() if now is None else now
        live = self.live()
        pids = [s.pid for s in live]
        for gone in set(self._next_due) - set(pids):
            del self._next_due[gone]
        for pid in pids:
            if pid not in self._next_due:  # a new worker takes the middle of the widest gap
                self._next_due[pid] = self._place(now, interval, spread)
        due = sorted((at, pid) for pid, at in self._next_due.items() if at <= now)
        if due and self.deferral.holds(self.rate.per_second(), defer_rate, now - due[0][0], max_deferral):
            return DEFER_RECHECK
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


class RequestRate:
    """The server's requests a second over the last ``RATE_WINDOW`` seconds, from totals fed in."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, total: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def per_second(self) -> float | None:
        """None until two samples span a quarter of the window."""
        if len(self._samples) < 2:
            return None
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.window / 4:
            return None
        return max(0.0, last - first) / (t1 - t0)


class Deferral:
    """Whether a due optimization waits for lower traffic, and what it did (for ``/optimize/stats``)."""

    def __init__(self) -> None:
        self.deferring = False
        self.episodes = 0  # times due workers started waiting
        self.forced = 0  # times the maximum deferral ran out under traffic
        self.last_waited = 0.0  # seconds the last deferral lasted
        self.rate: float | None = None

    def holds(self, rate: float | None, threshold: float, waited: float, max_deferral: float) -> bool:
        self.rate = rate
        busy = bool(threshold) and rate is not None and rate > threshold
        if busy and waited < max_deferral:
            if not self.deferring:
                self.deferring = True
                self.episodes += 1
            return True
        if self.deferring:
            self.deferring = False
            self.last_waited = waited
            self.forced += busy
        return False

    def to_json(self) -> dict:
        return {"deferring": self.deferring, "episodes": self.episodes, "forced": self.forced,
                "last_waited_seconds": round(self.last_waited, 3),
                "request_rate": None if self.rate is None else round(self.rate, 3)}


class MemoryTrends:
    """Each live worker's memory over the history's snapshots, and its slope (MiB an hour)."""

    def __init__(self, max_points: int = TREND_MAX_POINTS) -> None:
        self.max_points = max_points
        self._points: dict[int, deque[tuple[float, float]]] = {}

    def add(self, ts: float, memory: dict[int, int], retention: float = float("inf")) -> None:
        """One snapshot: ``{pid: bytes}`` of the live workers at ``ts`` (unix seconds); workers not in it
        are forgotten, points older than ``retention`` seconds dropped."""
        for gone in set(self._points) - set(memory):
            del self._points[gone]
        for pid, value in memory.items():
            points = self._points.setdefault(pid, deque(maxlen=self.max_points))
            points.append((ts, float(value)))
            while points and points[0][0] < ts - retention:
                points.popleft()

    def slope(self, pid: int) -> float | None:
        """MiB an hour by least squares, None before ``TREND_MIN_POINTS`` samples."""
        points = self._points.get(pid)
        if not points or len(points) < TREND_MIN_POINTS:
            return None
        t0 = points[0][0]
        n = len(points)
        mean_t = sum(t - t0 for t, _ in points) / n
        mean_v = sum(v for _, v in points) / n
        var = sum((t - t0 - mean_t) ** 2 for t, _ in points)
        if var <= 0:
            return None
        cov = sum((t - t0 - mean_t) * (v - mean_v) for t, v in points)
        return cov / var * HOUR / MiB

    def slopes(self) -> dict[int, float]:
        return {pid: slope for pid in self._points if (slope := self.slope(pid)) is not None}


def memory_rows(memory: dict, optimized: list) -> dict:
    """Gauges beside the metrics: each live worker's RSS, USS and PSS now
    (``rockstar.worker.memory.uss{pid="N"}``), and the optimization figures summed over the live workers
    (``rockstar.optimization.pss_before``...)."""
    rows: dict = {}
    for pid, figures in memory.items():
        for kind in ("rss", "uss", "pss"):
            if getattr(figures, kind):
                rows[f'rockstar.worker.memory.{kind}{{pid="{pid}"}}'] = ("gauge", float(getattr(figures, kind)))
    if optimized:
        for name in ("memory_before", "memory_after", "uss_before", "uss_after", "pss_before", "pss_after"):
            label = name.replace("memory_", "rss_")
            rows[f"rockstar.optimization.{label}"] = ("gauge", float(sum(getattr(w, name) for w in optimized)))
        rows["rockstar.optimization.count"] = ("counter", float(sum(w.optimization_count for w in optimized)))
    return rows


def requests_total(snap) -> float:
    """Requests the server answered (``http.requests`` over every label set, dead workers included)."""
    return sum(snap.totals[info.cell] for info in snap.series if info.key.name == "http.requests" and info.cell >= 0)


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
                if config.optimization_defer_rate:
                    schedule.rate.add(requests_total(state.snapshot()))
                delay = min(RECHECK, schedule.next_delay(config.optimization_interval, config.optimization_spread,
                                                         defer_rate=config.optimization_defer_rate,
                                                         max_deferral=config.optimization_max_deferral))
            except Exception:  # never let the schedule die
                log.exception("rockstar-mp aggregator: optimization schedule")
        await state.until_config_changes(stopping, delay)
