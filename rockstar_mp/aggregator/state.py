"""What the aggregator knows at any moment: the latest merge, the workers' process figures and which
workers are stuck.

Everything the HTTP (and later SNMP) surfaces serve comes from here, already computed; a scrape only
re-merges when the last merge is older than ``snapshot_max_age`` (a merge takes milliseconds).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

import psutil

from .._linux import Memory, read_memory
from ..config import MonitoringConfig
from ..control import apply_overrides, read_overrides
from ..segment import LIVE, STATE_NAMES, Segment, process_alive
from ..segment.layout import Body, Header
from ..segment.segment import liveness_unknown
from .merge import Merger, Snapshot, slab_base
from .optimize import MemoryTrends, OptimizationSchedule, memory_rows
from .workload import RingDrain, Window, sketch_totals

if TYPE_CHECKING:
    from .history import HistoryWriter
    from .remote_write import RemoteWriter

GC_SERIES = "rockstar.gc.collections"
PATH_CHECK_SECONDS = 1.0
SECOND_WORK_SECONDS = 1.0
PROCESS_CHECK_SECONDS = 10.0  # a full /proc check of every live worker (see tick)
LONGEST_TICK = 1.0  # seconds between ticks at most (next_tick)
RING_SHARE = 0.5  # of a ring the busiest worker may fill between ticks (next_tick)

log = logging.getLogger("rockstar_mp.aggregator")


DETAIL_KEYS = ("uss", "pss", "open_fds")
# A worker's USS/PSS and open fds are re-read when older than DETAIL_MAX_AGE seconds if its RSS moved since
# (past the history's 10 s snapshots, which read the memory too, ``note_memory``: so a busy worker's smaps is
# not read twice), or when older than DETAIL_IDLE_MAX_AGE whatever the RSS did, for at most
# DETAIL_PER_REFRESH workers per refresh, the stalest first.
DETAIL_MAX_AGE = 15.0
DETAIL_IDLE_MAX_AGE = 120.0
DETAIL_PER_REFRESH = 2
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_stat(pid: int) -> dict | None:
    """A worker's basic figures from one read of ``/proc/<pid>/stat`` (the fields psutil's
    ``memory_info``, ``cpu_times`` and ``num_threads`` read from three files): rss and vms in bytes,
    CPU seconds, threads. None if the process is gone or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()  # from field 3 (state) on
        return {"rss": int(fields[21]) * _PAGE, "vms": int(fields[20]),
                "cpu_seconds": (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
                "threads": int(fields[17])}
    except (OSError, ValueError, IndexError):
        return None


class ProcessStats:
    """Figures per worker pid: refreshed every second by the aggregator's loop, and on a scrape only
    when a worker came or went since the last refresh (so a new worker never shows without them).

    The basic figures (RSS, VMS, CPU, threads) are one read of ``/proc/<pid>/stat`` per worker. USS/PSS
    (``smaps_rollup``: the kernel walks the page tables, over a millisecond a worker) and open fds are
    read for a new worker at once; then again after ``DETAIL_MAX_AGE`` if its RSS moved since (a worker
    at work), else after ``DETAIL_IDLE_MAX_AGE`` (an idle worker's memory holds still, but a sibling's
    exit can make shared pages its own), for at most ``DETAIL_PER_REFRESH`` workers a refresh, the
    stalest first: so their cost no longer grows with the number of workers."""

    def __init__(self) -> None:
        self.stats: dict[int, dict] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (CPU seconds, monotonic time) last read
        self._detail_at: dict[int, tuple[float, int]] = {}  # pid -> (monotonic time, RSS) at its detail read

    def refresh(self, pids: list[int], full: bool = False) -> None:
        """``full`` re-reads every worker's USS/PSS and open fds; otherwise the stalest few, when due."""
        now = time.monotonic()
        stats: dict[int, dict] = {}
        for pid in pids:
            basic = read_stat(pid)
            if basic is None:
                continue
            cpu = basic["cpu_seconds"]
            last = self._cpu.get(pid)
            self._cpu[pid] = (cpu, now)
            # psutil's cpu_percent(None): CPU time over wall time since the last call, 0.0 at the first
            basic["cpu_percent"] = round((cpu - last[0]) / (now - last[1]) * 100, 1) \
                if last is not None and now > last[1] else 0.0
            basic["cpu_seconds"] = round(cpu, 3)
            old = self.stats.get(pid)
            basic.update({k: old.get(k) for k in DETAIL_KEYS} if old else _memory_detail(pid))
            if not old:
                self._detail_at[pid] = (now, basic["rss"])
            stats[pid] = basic
        self.stats = stats
        for gone in set(self._cpu) - set(stats):
            del self._cpu[gone]
            self._detail_at.pop(gone, None)
        self._refresh_detail(now, full)

    def note_memory(self, pid: int, memory: Memory) -> None:
        """A reading of ``pid``'s memory made elsewhere (the history's, each snapshot): its USS/PSS stand
        for a detail read, which is then not due again before its age says so."""
        stats = self.stats.get(pid)
        fields = _memory_fields(memory)
        if stats is not None and fields:
            stats.update(fields)
            self._detail_at[pid] = (time.monotonic(), stats["rss"])

    def unmoved_memory(self, pid: int) -> Memory | None:
        """``pid``'s last USS/PSS reading if its RSS has not moved since, less than ``DETAIL_IDLE_MAX_AGE``
        ago (a worker at rest: its smaps is not read again), else None."""
        stats, detail = self.stats.get(pid), self._detail_at.get(pid)
        if not stats or detail is None or stats.get("uss") is None:
            return None
        at, rss = detail
        if stats["rss"] != rss or time.monotonic() - at >= DETAIL_IDLE_MAX_AGE:
            return None
        return Memory(stats["rss"], stats["uss"], stats.get("pss") or 0)

    def _refresh_detail(self, now: float, full: bool) -> None:
        due = sorted((at, pid) for pid, (at, rss) in self._detail_at.items()
                     if full or now - at >= DETAIL_IDLE_MAX_AGE
                     or now - at >= DETAIL_MAX_AGE and self.stats[pid]["rss"] != rss)
        for _, pid in due if full else due[:DETAIL_PER_REFRESH]:
            self.stats[pid].update(_memory_detail(pid))
            self._detail_at[pid] = (now, self.stats[pid]["rss"])


def _memory_detail(pid: int) -> dict:
    """USS, PSS (``_linux.read_memory``: ``smaps_rollup``) and open fds; None where unreadable."""
    detail: dict = dict.fromkeys(DETAIL_KEYS)
    detail.update(_memory_fields(read_memory(pid)))
    try:
        detail["open_fds"] = psutil.Process(pid).num_fds()
    except (psutil.Error, AttributeError):
        pass
    return detail


def _memory_fields(memory: Memory) -> dict:
    """``{"uss", "pss"}`` of a reading; none if ``smaps_rollup`` could not be read (all zero)."""
    return {"uss": memory.uss, "pss": memory.pss} if memory.rss else {}


class Liveness:
    """Which live workers are stuck: their pid runs but their heartbeat is older than ``stuck_after``.

    A worker's monitor thread beats every second, also while the main thread serves a long request (the
    thread releases the GIL between beats), so a slow request is not stuck. A stopped process (SIGSTOP,
    a debugger, a frozen cgroup) or one whose thread holds the GIL (a C extension looping without
    releasing it) does not beat, and is. The count of episodes (a worker becoming stuck) lives in the
    aggregator's memory: it starts again at 0 when the aggregator restarts.
    """

    def __init__(self) -> None:
        self.stuck: set[int] = set()  # pids
        self.episodes = 0

    def observe(self, segment: Segment, snap: Snapshot, stuck_after: float, now: float) -> None:
        """Re-read every live worker's heartbeat (fresher than the snapshot's) and update ``stuck``."""
        stuck = set()
        for worker in snap.workers:
            slot = worker.slot
            beat = Body.heartbeat.get(segment.buf, slab_base(segment.geometry, slot.slab))
            since = max(beat, slot.assigned_at)  # a worker claiming its slab has not beaten yet
            if now - since > stuck_after and process_alive(slot.pid):
                stuck.add(slot.pid)
        self.episodes += len(stuck - self.stuck)
        self.stuck = stuck


class AggregatorState:
    def __init__(self, segment: Segment, config: MonitoringConfig) -> None:
        self.segment = segment
        self.base_config = config  # what the master configured
        self.config = config  # with the runtime overrides (``apply_control``)
        self._overrides: dict = {}
        self.merger = Merger(segment)
        self.procs = ProcessStats()
        self.liveness = Liveness()
        self.rings = RingDrain(segment, config.recent_records, config.recent_logs)
        self.window = Window(config.window_seconds)
        self.optimization = OptimizationSchedule(segment)
        self.trends = MemoryTrends()  # each worker's memory at every history snapshot (leak hints)
        self._history: HistoryWriter | None = None  # when history is on (set by the aggregator's serve())
        self.remote_write: RemoteWriter | None = None  # when remote_write_url is set (likewise)
        self.snmp = None  # the SnmpAgent while SNMP is on (set by the aggregator's serve())
        # tells the master, in one status line, that pprof or SNMP now serves (set by the aggregator's serve())
        self.announce: Callable[[str], None] | None = None
        self.pprof_auth_failures = 0  # requests the pprof port refused for want of the token (401)
        self._snapshot: Snapshot | None = None
        self._path_intact = not Header.segment_unlinked.get(segment.buf)  # a restart does not tell again
        self._path_check_at = 0.0
        self._second_at = 0.0  # monotonic time of the tick's next once-a-second work
        self._thorough_at = 0.0  # monotonic time of the next full process check of the live workers
        self._optimization_counts: tuple = ()  # (slab, generation, optimize_count) of each live worker
        self._slots: list = []  # the slot table at the last tick (next_tick)
        self._slots_moved = True  # did it change at the last tick?
        self._drained_at = time.monotonic()
        self._since_drain = 0.0  # seconds between the last two ticks' drains
        self._fullest = 0.0  # the largest share of a ring drained in that time
        self._config_changed = asyncio.Event()  # set (and replaced) when runtime control changes the config

    def apply_control(self) -> None:
        """Apply the runtime overrides kept in the segment (``rockstar_mp.control``), if they changed."""
        overrides = read_overrides(self.segment)
        if overrides == self._overrides:
            return
        try:
            self.config = apply_overrides(self.base_config, overrides)
        except ValueError as exc:
            log.error("rockstar-mp aggregator: runtime control ignored: %s", exc)
        self._overrides = overrides
        changed, self._config_changed = self._config_changed, asyncio.Event()
        changed.set()  # wakes every task waiting in until_config_changes

    async def until_config_changes(self, stopping: asyncio.Event, timeout: float) -> None:
        """Return when runtime control changed the config, ``stopping`` is set, or after ``timeout``
        seconds. The tasks that follow the config (SNMP, pprof, the optimization schedule) wait here
        rather than polling it several times a second: each wake-up of the idle loop costs about 0.1 ms."""
        if stopping.is_set():
            return
        waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._config_changed.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def tick(self) -> None:
        """Apply runtime control, drain the rings, fold dead workers (after draining them), beat,
        refresh the merge. What is done for every worker but changes on a scale of seconds (checking
        that live workers' processes still run, their heartbeats) is done on one tick a second, and
        their optimizations are looked at only when a count moved: at 64 idle workers these were most
        of the aggregator's CPU."""
        Header.aggregator_heartbeat.set(self.segment.buf, time.time())
        self.apply_control()
        slots = self.merger.table.read()
        self._slots_moved, self._slots = slots is not self._slots, slots  # the table's list is kept while unchanged
        self.rings.drain(slots)
        now = time.monotonic()
        self._since_drain, self._drained_at = now - self._drained_at, now
        self._fullest = self.rings.take_fullest()
        each_second = now >= self._second_at
        if each_second:
            self._second_at = now + SECOND_WORK_SECONDS
        thorough = now >= self._thorough_at
        if thorough:
            self._thorough_at = now + PROCESS_CHECK_SECONDS
        # a worker that exits is retired by the master (child_exit) and folded on the next tick; the
        # process check is for the processes no master retires (a lost hook, a master killed mid-way):
        # kill(pid, 0) every second, /proc's state and start time (zombies, reused pids) less often; and
        # for the helpers workers fork (no master reaps them) kill(pid, 0) on every tick, so that a
        # helper forked per request frees its slab within a tick (a burst of them filled the table)
        if self.merger.collect_dead(check_processes=True, probe_only=not thorough,
                                    forks_only=not (each_second or thorough)):
            self._snapshot = None
        if self.window.due():  # a merge only when the window takes a sample (once a second)
            self.window.add(sketch_totals(self.snapshot()))
        self.watch_path()
        if self._optimizations_changed():
            self.optimization.observe()
        if each_second:
            self.liveness.observe(self.segment, self._snapshot or self.snapshot(), self.config.stuck_after,
                                  time.time())

    def next_tick(self) -> float:
        """Seconds to the next tick: ``tick_interval`` while the slot table moves (workers starting or
        exiting, helpers forked per request, whose slabs each tick frees), else as long as the busiest
        worker takes, at its last rate, to fill ``RING_SHARE`` of a ring, up to ``LONGEST_TICK``. An idle
        aggregator ticks once a second, a busy one as often as its rings need: each tick cost about
        0.4 ms of CPU, the loop's wake-up included, whatever it found (at 1,500 requests a second on 2
        workers: 1.4 ticks a second, against 4)."""
        shortest = self.config.tick_interval
        if self._slots_moved or shortest >= LONGEST_TICK:
            return shortest
        fullest = self._fullest
        if fullest <= 0:
            return LONGEST_TICK
        return min(LONGEST_TICK, max(shortest, self._since_drain * RING_SHARE / fullest))

    def fresh_rings(self) -> RingDrain:
        """The rings drained now, for a reader of the records or logs: between two ticks (up to a
        second apart when idle) they would be that old. A drain that found something new drops the
        cached snapshot, so that one taken after it holds the counts of every record read (a worker
        stores its count before its record): read the rings first, then the snapshot."""
        if self.rings.drain(self.merger.table.read()):
            self._snapshot = None
        return self.rings

    def _optimizations_changed(self) -> bool:
        """Did a live worker's optimization count move (or the live workers change) since the last
        look? One read a worker, where ``optimization.observe`` reads a dozen fields of each."""
        buf, geometry = self.segment.buf, self.segment.geometry
        counts = tuple((slot.slab, slot.generation, Body.optimize_count.get(buf, slab_base(geometry, slot.slab)))
                       for slot in self.merger.table.read() if slot.state == LIVE and slot.pid)
        if counts == self._optimization_counts:
            return False
        self._optimization_counts = counts
        return True

    def watch_path(self) -> None:
        """Tell the operator, once, when the segment's path is deleted or replaced (systemd's
        ``RemoveIPC=yes`` at logout, a tmp cleaner): every process keeps the open file, so counting
        goes on; counted in ``segment_unlinked``."""
        now = time.monotonic()
        if now < self._path_check_at:
            return
        self._path_check_at = now + PATH_CHECK_SECONDS
        intact = self.segment.path_intact()
        if intact == self._path_intact:
            return
        self._path_intact = intact
        if intact:
            return
        buf = self.segment.buf
        Header.segment_unlinked.set(buf, Header.segment_unlinked.get(buf) + 1)
        log.warning("rockstar-mp aggregator: the segment file %s was deleted or replaced (systemd's "
                    "RemoveIPC=yes, or a tmp cleaner?). Monitoring goes on: every process keeps the open "
                    "file, and restarts get it passed. Set RemoveIPC=no in logind.conf, or point "
                    "segment_dir at a directory no cleaner touches", self.segment.path)

    def refresh_processes(self, full: bool = False) -> None:
        snap = self._snapshot or self.snapshot()
        self.procs.refresh([w.slot.pid for w in snap.workers], full)

    @property
    def history(self) -> HistoryWriter | None:
        return self._history

    @history.setter
    def history(self, writer: HistoryWriter | None) -> None:
        """The history writer also stores the workers' memory, sampled for the leak hints at each snapshot."""
        self._history = writer
        if writer is not None:
            writer.extra_rows.append(AggregatorState.memory_rows)

    def memory_rows(self) -> dict:
        """Each live worker's memory read now (``smaps_rollup``), added to the trends (the leak hints),
        and the history's rows of it and of the optimizations (``optimize.memory_rows``)."""
        snap = self.snapshot()
        memory = self.sample_memory(snap.taken, snap)
        return memory_rows(memory, self.optimization.workers())

    def sample_memory(self, ts: float, snap: Snapshot) -> dict[int, Memory]:
        """Every live worker's memory into the trends; ``{pid: Memory}``. ``smaps_rollup`` walks the page
        tables (about 1.5 ms a worker: at 64 idle workers, 10 ms of CPU a second with the history's 10 s
        snapshots), so a worker whose RSS (read every second from ``/proc/<pid>/stat``) has not moved
        since its last read (here or ``ProcessStats``'), less than ``DETAIL_IDLE_MAX_AGE`` ago, keeps it."""
        memory = {w.slot.pid: self._memory_of(w.slot.pid) for w in snap.workers}
        kind = self.config.max_worker_memory_kind
        self.trends.add(ts, {pid: getattr(m, kind) for pid, m in memory.items() if getattr(m, kind)},
                        self.config.history_retention)
        return memory

    def _memory_of(self, pid: int) -> Memory:
        kept = self.procs.unmoved_memory(pid)
        if kept is not None:
            return kept
        reading = read_memory(pid)
        self.procs.note_memory(pid, reading)
        return reading

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None or time.time() - snap.taken > self.config.snapshot_max_age:
            snap = self._snapshot = self.merger.merge()
            if {w.slot.pid for w in snap.workers} != set(self.procs.stats):
                self.refresh_processes()  # a worker came or went: do not wait for the periodic refresh
        return snap

    # -- the JSON sections beside the metrics ---------------------------------------------------
    def workers_json(self, snap: Snapshot) -> list[dict]:
        out = []
        for w in snap.workers:
            slot = w.slot
            proc = self.procs.stats.get(slot.pid, {})
            out.append({"pid": slot.pid, "age": slot.age, "slab": slot.slab,
                        "state": STATE_NAMES[slot.state], "started": slot.proc_start,
                        "heartbeat": w.heartbeat, "stuck": slot.pid in self.liveness.stuck,
                        "rss": proc.get("rss"),
                        "cpu_percent": proc.get("cpu_percent"), "cpu_seconds": proc.get("cpu_seconds"),
                        "threads": proc.get("threads"), "series": w.cache.parsed,
                        "catalogue_full": w.catalogue_full})
        return out

    def system_json(self, snap: Snapshot) -> dict:
        procs = [self.procs.stats.get(w.slot.pid, {}) for w in snap.workers]
        rss = sum(p.get("rss", 0) for p in procs)
        machine = psutil.virtual_memory()
        num_gc = sum(snap.totals[info.cell] for info in snap.series if info.key.name == GC_SERIES)
        # requests recorded under "other" (or a neighbouring latency bucket) for want of room, by
        # dimension: rockstar_mp.worker.workload.OVERFLOW, which every worker declares at import
        overflow = dict.fromkeys(("route", "tenant", "status", "bucket"), 0)
        for info in snap.series:
            if info.key.name == "rockstar.workload.overflow" and info.cell >= 0 and info.key.labelvalues:
                dimension = info.key.labelvalues[0]
                overflow[dimension] = overflow.get(dimension, 0) + int(snap.totals[info.cell])
        return {
            "num_cpu": os.cpu_count(),
            "num_goroutine": sum(p.get("threads", 0) for p in procs),
            "memory_alloc": rss,
            "memory_rss": rss,
            "num_gc": int(num_gc),
            "workers_live": len(snap.workers),
            "workers_folded": snap.workers_folded,
            "workers_stuck": len(self.liveness.stuck),
            "workers_stuck_episodes": self.liveness.episodes,
            "cpu_percent": round(sum(p.get("cpu_percent", 0.0) for p in procs), 1),
            "machine_memory_total": machine.total,
            "machine_memory_available": machine.available,
            "load_average": list(os.getloadavg()),
            "uptime_seconds": round(time.time() - Header.created.get(self.segment.buf), 3),
            "aggregator_pid": os.getpid(),
            "aggregator_starts": Header.aggregator_starts.get(self.segment.buf),
            "catalogue_full": sum(w.catalogue_full for w in snap.workers),
            "dimension_overflow": overflow,
            "claim_failures": snap.claim_failures,
            "space_failures": Header.space_failures.get(self.segment.buf),
            "hook_failures": Header.hook_failures.get(self.segment.buf),
            "liveness_unknown": liveness_unknown(),  # workers kept when /proc could not tell (EMFILE)
            "segment_unlinked": Header.segment_unlinked.get(self.segment.buf),
            "unattached_updates": Header.unattached_updates.get(self.segment.buf),  # forks with no slab
            "memory_recycles": Header.memory_recycles.get(self.segment.buf),  # over max_worker_memory
            "retired_overflow": snap.retired_overflow,
            "name_conflicts": snap.name_conflicts,
            "records_dropped": self.rings.records_dropped,
            "logs_dropped": self.rings.logs_dropped,
            "pprof_auth_failures": self.pprof_auth_failures,
            **(self.history.stats() if self.history is not None else {"history_errors": 0}),
            "remote_write": self.remote_write.stats() if self.remote_write is not None else None,
        }
