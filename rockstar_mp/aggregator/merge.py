"""The merge: every live worker's slab plus the retired totals, into one ``Snapshot``.

Incremental: each slab's catalogue is parsed once per tenancy (only new entries after that; a tenancy
whose catalogue is byte-identical to one parsed before reuses that parse), and each series gets fixed
cells in one flat accumulator. Each slab's values are gathered into accumulator order by a prebuilt
``itemgetter`` and all slabs are summed column-wise in C (``map(sum, zip_longest(...))``), so no Python
loop runs per value. The cost follows live workers x live series, never how many workers have come and
gone.

Dead workers: a retired slab's counters and histograms are *folded* into the retired totals, which live
in the aggregator's region of the segment as two copies (write the inactive one, then flip), each naming
the last (slab, generation) it folded. A fold interrupted at any point is neither lost nor done twice.
Gauges are live-only: a dead worker's gauge is dropped.

Names across workers: workers may run different code, and a name may come declared two ways (``clash.a``
a counter here, ``clash_a`` a gauge there; one name with two types or two label sets; ``dup`` and
``dup_total``). ``FamilyNames`` gives each Prometheus name one owner: the first declaration this
aggregator sees. A later declaration whose names meet it is not exposed (JSON, both text formats, a
worker's own view alike), counted in ``name_conflicts`` and logged once. A (re)started aggregator meets
the live workers' declarations first, oldest worker first (gunicorn's age), then the retired totals, and
new workers oldest first: so the owner survives a restart unless a younger worker declared the name first
(a lazy declaration) or the owner's workers are all dead. Declarations differing only in
documentation, buckets or gauge mode (old and new code after a HUP) are one family, not a conflict.
Names reserved for rockstar-mp (``series.is_reserved``: its ``rockstar_*`` names, the aggregator's own
families among them, and its http families) are exposed only as rockstar-mp declares them
(``series.OWN_FAMILIES``): the worker registry refuses them to user code, and a worker of another
version that did not is counted as a conflict too.
"""
from __future__ import annotations

import functools
import logging
import time
from collections import deque
from dataclasses import dataclass
from itertools import zip_longest
from operator import add, itemgetter
from typing import Callable

from ..segment import (
    LIVE,
    RETIRED,
    CatalogueFull,
    CatalogueWriter,
    Segment,
    SlotInfo,
    catalogue_bytes,
    no_such_process,
    process_alive,
    published_count,
    read_entries,
    reset_body,
)
from ..segment.layout import Body, Geometry, Header
from ..segment.segment import liveness_unknown
from ..series import COUNTER, GAUGE, HIDDEN_PREFIX, HISTOGRAM, OWN_FAMILIES, SeriesKey, exposed_names, is_reserved

RECENT_FOLDS = 50  # folded workers remembered for /workers (oldest forgotten)
log = logging.getLogger("rockstar_mp.aggregator")


MEMO_SIZE = 16
UNBOUND_SLAB_SECONDS = 60.0  # a slab assigned before a fork that never happened is reclaimed
SPARSE = 4  # a slab whose cells span more than SPARSE x its values is added value by value instead


@dataclass
class SeriesInfo:
    """A series known to the aggregator: its key and, for summed kinds, its first accumulator cell."""

    raw: bytes
    key: SeriesKey
    cell: int  # -1 for gauges (merged by mode, not summed)
    n: int
    exposed: bool = True  # False: its family lost its Prometheus name to another declaration


@dataclass
class SlabCache:
    """What has been parsed of one slab tenancy. The tuples are shared between slabs of equal layout."""

    generation: int
    base: int  # segment-wide float64 index of the slab's first value
    parsed: int = 0
    n_local: int = 0  # values covered by the parsed entries
    summed: tuple = ()  # (accumulator cell, local offset)
    gauges: tuple = ()  # (series id, local offset)
    series: tuple = ()  # (series id, local offset), every entry
    gather: Callable | None = None  # values (+ a trailing 0.0) -> summed values in cell order from 0


@dataclass
class WorkerSeries:
    """One live worker's slab as merged: its slot, parsed catalogue and the values read."""

    slot: SlotInfo
    cache: SlabCache
    values: list
    heartbeat: float
    catalogue_full: int


@dataclass
class Snapshot:
    """One merge: everything the aggregator serves is rendered from one of these."""

    taken: float
    series: list  # SeriesInfo by series id
    totals: list  # the accumulator: retired + every live worker, by cell
    gauges: dict  # series id -> [(pid, value, stamp)]
    workers: list  # WorkerSeries of live workers
    workers_folded: int
    retired_overflow: int
    claim_failures: int
    name_conflicts: int = 0

    def worker(self, pid: int) -> WorkerSeries | None:
        return next((w for w in self.workers if w.slot.pid == pid), None)


@functools.lru_cache(maxsize=None)
def slab_base(geometry: Geometry, slab: int) -> int:
    """``geometry.slab_offset(slab)``, computed once: the layout's properties recompute it from the
    sizes on every call, and the aggregator asks for every slab on every tick."""
    return geometry.slab_offset(slab)


class SlotTable:
    """The segment's slot table, decoded again only when its bytes changed: decoding 64 entries costs
    about a hundred microseconds, comparing them one ``memcmp``, and the aggregator reads the table
    several times a tick while it rarely changes. The list returned is shared: read it, never change it."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        start = segment.geometry.table_entry(0)
        self._span = slice(start, segment.geometry.table_entry(segment.geometry.n_slabs))
        self._raw = b""
        self._slots: list[SlotInfo] = []

    def read(self) -> list[SlotInfo]:
        raw = self.segment.buf[self._span].tobytes()
        if raw != self._raw:
            # read before decoding: if the table changes in between, the next read decodes again
            self._raw, self._slots = raw, self.segment.slots()
        return self._slots


def _oldest_first(slot: SlotInfo) -> tuple:
    """New series are met in this order, so the oldest worker's declaration of a name owns it."""
    return slot.age, slot.slab


def _gatherer(summed: list) -> Callable | None:
    """An ``itemgetter`` taking a slab's values (with 0.0 appended) to its summed cells, in cell order
    from cell 0 (-1, the appended 0.0, where the slab lacks a cell); None for an empty or sparse slab."""
    if not summed:
        return None
    local_of = dict(summed)
    top = max(local_of) + 1
    if top > SPARSE * len(local_of):
        return None
    getter = itemgetter(*(local_of.get(cell, -1) for cell in range(top)))
    return getter if top > 1 else lambda values: (getter(values),)


class FamilyNames:
    """Which declaration owns each Prometheus name: the first seen. A family is ``(kind, declared name,
    label names)``; its names are ``series.exposed_names`` (prometheus_client's suffix rules)."""

    def __init__(self) -> None:
        self._owners: dict[str, tuple] = {}  # Prometheus name -> the family owning it
        self._verdicts: dict[tuple, bool] = {}  # family -> exposed?
        self.conflicts = 0

    def admit(self, key: SeriesKey) -> bool:
        """Is this series exposed? Decided once per family, when its first series is seen."""
        family = (key.kind, key.name, key.labelnames)
        verdict = self._verdicts.get(family)
        if verdict is None:
            verdict = self._verdicts[family] = self._decide(family)
        return verdict

    def _decide(self, family: tuple) -> bool:
        kind, name, _ = family
        if name.startswith(HIDDEN_PREFIX):
            return True  # never rendered as a family
        names = exposed_names(kind, name)
        if (name, kind) not in OWN_FAMILIES and any(is_reserved(n) for n in names):
            self.conflicts += 1
            log.warning("rockstar-mp aggregator: metric %r (%s) of a worker is not exposed: its Prometheus "
                        "names are reserved for rockstar-mp's own metrics (a worker running another "
                        "version of rockstar-mp?): rename it", name, kind)
            return False
        owner = next((self._owners[n] for n in sorted(names) if n in self._owners), None)
        if owner is None:
            self._owners.update(dict.fromkeys(names, family))
            return True
        self.conflicts += 1
        log.warning("rockstar-mp aggregator: metric %r (%s, labels %s) of a worker is not exposed: its "
                    "Prometheus names meet those of %r (%s, labels %s), seen first. Workers run code "
                    "declaring the name two ways: rename one of them", name, kind, list(family[2]),
                    owner[1], owner[0], list(owner[2]))
        return False


class _ParseMemo:
    """The last ``MEMO_SIZE`` parses by catalogue bytes. Looked up by length first, then compared byte
    for byte (a memcmp), so a slab's ~60 KB catalogue is never hashed: 64 slabs' worth of hashing cost
    more than a cold merge's parse of its one distinct catalogue."""

    def __init__(self) -> None:
        self._by_length: dict[int, list[tuple[bytes, tuple]]] = {}
        self._order: list[bytes] = []

    def get(self, catalogue: bytes) -> tuple | None:
        for known, parse in self._by_length.get(len(catalogue), ()):
            if known == catalogue:
                return parse
        return None

    def put(self, catalogue: bytes, parse: tuple) -> None:
        if len(self._order) >= MEMO_SIZE:
            oldest = self._order.pop(0)
            same = self._by_length[len(oldest)]
            same[:] = [entry for entry in same if entry[0] is not oldest]
        self._by_length.setdefault(len(catalogue), []).append((catalogue, parse))
        self._order.append(catalogue)


class Merger:
    """Owns the retired totals and merges the segment. One per aggregator, used from its one loop."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.geometry = segment.geometry
        self.series: list[SeriesInfo] = []
        self._ids: dict[bytes, int] = {}
        self._n_cells = 0
        self.retired: list[float] = []  # retired totals by accumulator cell
        self._retired_ids: list[int] = []  # series present in the retired totals, in order
        self._slabs: dict[int, SlabCache] = {}
        self._memo = _ParseMemo()  # catalogue bytes -> a parse of them
        self.names = FamilyNames()
        self.workers_folded = 0
        self.recently_folded: deque[dict] = deque(maxlen=RECENT_FOLDS)  # the dashboard's dead workers
        self.retired_overflow = 0
        self._folded_marker = (0, 0)
        self.table = SlotTable(segment)
        self._admit_live_names()
        self._load_retired()

    # -- series ---------------------------------------------------------------------------------
    def _series_id(self, raw: bytes) -> int:
        sid = self._ids.get(raw)
        if sid is None:
            key = SeriesKey.decode(raw)
            n = key.n_values
            exposed = self.names.admit(key)
            cell = -1
            if key.kind in (COUNTER, HISTOGRAM):
                cell = self._n_cells
                self._n_cells += n
                self.retired.extend([0.0] * n)
            sid = len(self.series)
            self.series.append(SeriesInfo(raw, key, cell, n, exposed))
            self._ids[raw] = sid
        return sid

    def _sync(self, slot: SlotInfo) -> SlabCache:
        """Parse the entries the slab's worker appended since the last look."""
        buf, layout = self.segment.buf, self.geometry.slab
        body = slab_base(self.geometry, slot.slab)
        cache = self._slabs.get(slot.slab)
        if cache is None or cache.generation != slot.generation:
            cache = self._slabs[slot.slab] = SlabCache(slot.generation, layout.first_cell(body))
        n = published_count(buf, layout, body)
        if n <= cache.parsed:
            return cache
        catalogue = catalogue_bytes(buf, layout, body, n) if cache.parsed == 0 else None
        parse = self._memo.get(catalogue) if catalogue is not None else None
        if parse is None:
            parse = self._parse(read_entries(buf, layout, body, cache.parsed, n), cache)
            if catalogue is not None:
                self._memo.put(catalogue, parse)
        cache.parsed, cache.n_local, cache.series, cache.summed, cache.gauges, cache.gather = parse
        return cache

    def _parse(self, entries: list, cache: SlabCache) -> tuple:
        """New entries appended to ``cache``'s: ``(parsed, n_local, series, summed, gauges, gather)``."""
        series, summed, gauges = list(cache.series), list(cache.summed), list(cache.gauges)
        parsed, n_local = cache.parsed, cache.n_local
        ids, known, base = self._ids, self.series, cache.base
        for raw, first, n in entries:
            parsed += 1
            local = first - base
            if local + n > n_local:
                n_local = local + n
            sid = ids.get(raw)
            if sid is None:
                try:
                    sid = self._series_id(raw)
                except Exception:  # a key we cannot decode: skip it, never stop merging
                    log.warning("rockstar-mp: undecodable series key in a slab")
                    continue
            info = known[sid]
            series.append((sid, local))
            cell = info.cell
            if cell >= 0:
                if n == 1:  # a counter (every series has at least one value)
                    summed.append((cell, local))
                else:
                    summed.extend((cell + i, local + i) for i in range(min(n, info.n)))
            elif info.key.kind == GAUGE:
                gauges.append((sid, local))
        return parsed, n_local, tuple(series), tuple(summed), tuple(gauges), _gatherer(summed)

    def _read(self, cache: SlabCache) -> list:
        return self.segment.doubles[cache.base:cache.base + cache.n_local].tolist()

    # -- dead workers ---------------------------------------------------------------------------
    def collect_dead(self, check_processes: bool = True, probe_only: bool = False, forks_only: bool = False) -> int:
        """Retire live slabs whose worker died unseen (when ``check_processes``: a look at each live
        worker's process; with ``probe_only``, ``kill(pid, 0)`` first and /proc only for a pid it
        says is gone, so a zombie or a reused pid waits for a full check; with ``forks_only``, only
        the processes a worker forked: those whose claiming parent holds a live slab too, which no
        master retires), and fold every retired slab. Returns folds.

        Only "no such process" retires a slab: a worker whose liveness cannot be read (the aggregator
        out of descriptors, ``/proc`` unreadable) keeps it, and is counted (``liveness_unknown``)."""
        folded = 0
        now = time.time()
        unknown = liveness_unknown()
        slots = self.table.read()
        forks = None
        if forks_only:
            live = {slot.pid for slot in slots if slot.state == LIVE and slot.pid}
            forks = {slot.slab for slot in slots if slot.state == LIVE and slot.master_pid in live}
        for slot in slots:
            if check_processes and slot.state == LIVE and (forks is None or slot.slab in forks) and (
                    slot.pid and (not probe_only or no_such_process(slot.pid))
                    and not process_alive(slot.pid, slot.proc_start)
                    or not slot.pid and now - slot.assigned_at > UNBOUND_SLAB_SECONDS):
                if self.segment.retire_slab(slot.slab, slot.generation):
                    slot = self.segment.slot(slot.slab)
            if slot.state == RETIRED:
                self._fold(slot)
                folded += 1
        if liveness_unknown() > unknown:
            log.warning("rockstar-mp aggregator: could not tell whether %d worker(s) are alive (out of file "
                        "descriptors?): their slabs are kept", liveness_unknown() - unknown,
                        extra={"repeated": True})  # once per interval with a count (net.RepeatFilter)
        return folded

    def _fold(self, slot: SlotInfo) -> None:
        if (slot.slab, slot.generation) != self._folded_marker:
            cache = self._sync(slot)
            values = self._read(cache)
            retired = self.retired
            for cell, local in cache.summed:
                retired[cell] += values[local]
            known = set(self._retired_ids)
            self._retired_ids.extend(sid for sid, _ in cache.series
                                     if self.series[sid].cell >= 0 and sid not in known)
            # (a series seen twice in one slab cannot happen: a worker appends each key once)
            self.workers_folded += 1
            self.recently_folded.append({"pid": slot.pid, "age": slot.age, "started": slot.proc_start,
                                         "folded_at": time.time()})
            self._folded_marker = (slot.slab, slot.generation)
            self._write_retired()
        self._slabs.pop(slot.slab, None)
        reset_body(self.segment.buf, self.geometry.slab_offset(slot.slab))
        self.segment.free_slab(slot.slab, slot.generation)

    def _write_retired(self) -> None:
        """Write the totals into the inactive retired copy, then make it the active one."""
        buf, doubles = self.segment.buf, self.segment.doubles
        inactive = 1 - Header.retired_active.get(buf)
        base = self.geometry.retired_copy(inactive)
        reset_body(buf, base)
        writer = CatalogueWriter(buf, self.geometry.retired, base)
        overflow = 0
        for sid in self._retired_ids:
            info = self.series[sid]
            try:
                first = writer.append(info.raw, info.n)
            except CatalogueFull:
                overflow += 1  # kept in memory; lost only if the aggregator restarts
                continue
            for i in range(info.n):
                doubles[first + i] = self.retired[info.cell + i]
        if overflow and overflow != self.retired_overflow:
            log.error("rockstar-mp: %d retired series do not fit the retired region: raise "
                      "retired_max_series/retired_max_values", overflow)
        self.retired_overflow = overflow
        Body.folded_slab.set(buf, self._folded_marker[0], base)
        Body.folded_generation.set(buf, self._folded_marker[1], base)
        Body.workers_folded.set(buf, self.workers_folded, base)
        Header.retired_active.set(buf, inactive)  # the flip: one aligned store

    def _admit_live_names(self) -> None:
        """At start, give Prometheus names to the live workers' declarations (oldest first) before the
        retired totals': a dead worker's conflicting declaration does not take a name from a live one."""
        buf, layout = self.segment.buf, self.geometry.slab
        for slot in sorted((s for s in self.segment.slots() if s.state == LIVE and s.pid), key=_oldest_first):
            for raw, _, _ in read_entries(buf, layout, self.geometry.slab_offset(slot.slab)):
                try:
                    self.names.admit(SeriesKey.decode(raw))
                except Exception:  # undecodable: skipped here as in the merge
                    continue

    def _load_retired(self) -> None:
        """Start from the active retired copy (an aggregator restart loses nothing)."""
        buf = self.segment.buf
        base = self.geometry.retired_copy(Header.retired_active.get(buf))
        layout = self.geometry.retired
        for raw, first, n in read_entries(buf, layout, base):
            try:
                sid = self._series_id(raw)
            except Exception:  # a corrupt key must not stop every respawned aggregator
                log.warning("rockstar-mp: undecodable series key in the retired totals")
                continue
            info = self.series[sid]
            if info.cell < 0:
                continue
            for i in range(min(n, info.n)):
                self.retired[info.cell + i] = self.segment.doubles[first + i]
            self._retired_ids.append(sid)
        self.workers_folded = Body.workers_folded.get(buf, base)
        self._folded_marker = (Body.folded_slab.get(buf, base), Body.folded_generation.get(buf, base))
        self._finish_interrupted_fold()

    def _finish_interrupted_fold(self) -> None:
        """A previous aggregator died after the flip but before freeing the slab: free it now, before
        any other fold moves the marker (which would make that slab look unfolded)."""
        slab, generation = self._folded_marker
        if slab < self.geometry.n_slabs:
            slot = self.segment.slot(slab)
            if slot.state == RETIRED and slot.generation == generation:
                reset_body(self.segment.buf, self.geometry.slab_offset(slab))
                self.segment.free_slab(slab, generation)

    # -- the merge ------------------------------------------------------------------------------
    def merge(self) -> Snapshot:
        """One consistent view: retired totals plus every live (and not yet folded) slab."""
        buf = self.segment.buf
        slots = [s for s in self.table.read() if s.state == LIVE or
                 s.state == RETIRED and (s.slab, s.generation) != self._folded_marker]
        parsed = {slot.slab: self._sync(slot) for slot in sorted(slots, key=_oldest_first)}
        caches = [(slot, parsed[slot.slab]) for slot in slots]
        totals = self.retired.copy()
        columns = []
        gauges: dict[int, list] = {}
        workers = []
        for slot, cache in caches:
            values = self._read(cache)
            if cache.gather is not None:
                values.append(0.0)  # what the gatherer reads for cells this slab lacks
                columns.append(cache.gather(values))
                values.pop()
            else:
                for cell, local in cache.summed:
                    totals[cell] += values[local]
            if slot.state != LIVE or not slot.pid:
                continue  # retired, or assigned to a worker that has not started yet
            for sid, local in cache.gauges:
                gauges.setdefault(sid, []).append((slot.pid, values[local], values[local + 1]))
            body = slab_base(self.geometry, slot.slab)
            workers.append(WorkerSeries(slot, cache, values, Body.heartbeat.get(buf, body),
                                        Body.catalogue_full.get(buf, body)))
        if columns:
            sums = list(map(sum, zip_longest(*columns, fillvalue=0.0)))
            totals[:len(sums)] = map(add, totals[:len(sums)], sums)
        return Snapshot(time.time(), self.series, totals, gauges, workers, self.workers_folded,
                        self.retired_overflow, Header.claim_failures.get(buf), self.names.conflicts)
