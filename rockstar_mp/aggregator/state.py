"""What the aggregator knows at any moment: the latest merge, the workers' process figures and which
workers are stuck.

Everything the HTTP (and later SNMP) surfaces serve comes from here, already computed; a scrape only
re-merges when the last merge is older than ``snapshot_max_age`` (a merge takes milliseconds).
"""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Callable

import psutil

from ..config import MonitoringConfig
from ..control import apply_overrides, read_overrides
from ..segment import STATE_NAMES, Segment, process_alive
from ..segment.layout import Body, Header
from ..segment.segment import liveness_unknown
from .merge import Merger, Snapshot
from .optimize import OptimizationSchedule
from .workload import RingDrain, Window, sketch_totals

if TYPE_CHECKING:
    from .history import HistoryWriter

GC_SERIES = "rockstar.gc.collections"
PATH_CHECK_SECONDS = 1.0

log = logging.getLogger("rockstar_mp.aggregator")


DETAIL_KEYS = ("uss", "pss", "open_fds")


class ProcessStats:
    """psutil figures per worker pid: refreshed on the aggregator's tick, and on a scrape only when a
    worker came or went since the last refresh (so a new worker never shows without them)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self.stats: dict[int, dict] = {}

    def refresh(self, pids: list[int], full: bool = False) -> None:
        """``full`` also reads USS/PSS (smaps, a few ms a worker) and open fds; otherwise those are
        kept from the last full refresh."""
        stats: dict[int, dict] = {}
        for pid in pids:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only starts the measurement
                with proc.oneshot():
                    mem = proc.memory_info()
                    cpu = proc.cpu_times()
                    stats[pid] = {"rss": mem.rss, "vms": mem.vms, "cpu_percent": proc.cpu_percent(None),
                                  "cpu_seconds": round(cpu.user + cpu.system, 3),
                                  "threads": proc.num_threads()}
                if full or pid not in self.stats:
                    stats[pid].update(self._memory_detail(proc))
                else:
                    stats[pid].update({k: self.stats[pid].get(k) for k in DETAIL_KEYS})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._procs.pop(pid, None)
        for gone in set(self._procs) - set(pids):
            del self._procs[gone]
        self.stats = stats

    @staticmethod
    def _memory_detail(proc: psutil.Process) -> dict:
        try:
            full = proc.memory_full_info()
            detail = {"uss": full.uss, "pss": getattr(full, "pss", None)}
        except (psutil.AccessDenied, AttributeError):
            detail = {"uss": None, "pss": None}
        try:
            detail["open_fds"] = proc.num_fds()
        except (psutil.AccessDenied, AttributeError):
            detail["open_fds"] = None
        return detail


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
            beat = Body.heartbeat.get(segment.buf, segment.geometry.slab_offset(slot.slab))
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
        self.history: HistoryWriter | None = None  # when history is on (set by the aggregator's serve())
        self.snmp = None  # the SnmpAgent while SNMP is on (set by the aggregator's serve())
        # tells the master, in one status line, that pprof or SNMP now serves (set by the aggregator's serve())
        self.announce: Callable[[str], None] | None = None
        self._snapshot: Snapshot | None = None
        self._path_intact = not Header.segment_unlinked.get(segment.buf)  # a restart does not tell again
        self._path_check_at = 0.0

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

    def tick(self) -> None:
        """Apply runtime control, drain the rings, fold dead workers (after draining them), beat,
        refresh the merge."""
        Header.aggregator_heartbeat.set(self.segment.buf, time.time())
        self.apply_control()
        self.rings.drain()
        if self.merger.collect_dead():
            self._snapshot = None
        if self.window.due():  # a merge only when the window takes a sample (once a second)
            self.window.add(sketch_totals(self.snapshot()))
        self.optimization.observe()
        self.watch_path()
        self.liveness.observe(self.segment, self._snapshot or self.snapshot(), self.config.stuck_after, time.time())

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
            "retired_overflow": snap.retired_overflow,
            "name_conflicts": snap.name_conflicts,
            "records_dropped": self.rings.records_dropped,
            "logs_dropped": self.rings.logs_dropped,
            **(self.history.stats() if self.history is not None else {"history_errors": 0}),
        }
