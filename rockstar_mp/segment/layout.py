"""The byte layout of the shared segment: every offset and format is defined here, and only here.

A segment file is::

    [ header (4 KiB) | slab table | retired copy A | retired copy B | slab 0 | slab 1 | ... ]

The header names the geometry, so a reader computes every offset from the file itself. A slab and a
retired copy share one *body* layout (a catalogue of series and their float64 values; slabs also carry
two rings, of workload records and of log records; a retired copy has rings of zero slots)::

    [ body header (512 B) | index: max_series x 16 B | key heap | values: max_values x 8 B
      | records: record_slots x 192 B | logs: log_slots x 512 B ]

A ring slot starts with its sequence number (the record's index + 1 once complete, 0 while written),
so a reader detects a slot overwritten while it read it.

Other modules ask this one for offsets and sizes (``Geometry``, ``BodyLayout``, the ``Field`` constants,
``SLOT_PAYLOAD``, the text widths ``RECORD_WIDTH`` and ``LOG_WIDTH``, ``cell_index``) and never add numbers
of their own; the C request path gets them through ``configure()`` and ``Slab()``. Section 2 of
``docs/architecture.md`` is generated from this module (``make docs``, ``layout_doc.py``).
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from functools import cached_property

MAGIC = b"RSTARMP\x00"
LAYOUT_VERSION = 3
PAGE = 4096
HEADER_SIZE = PAGE
TABLE_ENTRY_SIZE = 64
BODY_HEADER_SIZE = 512
INDEX_ENTRY = struct.Struct("<IIII")  # key offset in heap, key length, first value (float64 index), value count
VALUE = struct.Struct("<d")  # one value cell
CELL_BYTES = 8  # values, ring sequences and heads are 8-byte cells, stored through buf.cast("Q") / "d"
HEAP_BYTES_PER_SERIES = 128  # key-heap bytes given to each series a body may hold (geometry_for)
MAX_MASTERS = 8
CONTROL_BYTES = 2048
RECYCLE_SLOTS = 16  # the last memory recycles the header keeps (for the aggregator's notifications)
RECYCLE_BASE = 2568  # where they start: right after control_json
RECYCLE_ENTRY_SIZE = 32

# Slab states, stored in the slab table.
FREE, LIVE, RETIRED = 0, 1, 2
STATE_NAMES = {FREE: "free", LIVE: "live", RETIRED: "retired"}


def cell_index(offset: int) -> int:
    """The index of the cell at byte ``offset`` in a view of 8-byte cells (``buf.cast("Q")``/``"d"``);
    of a size, the cells it spans. Raises ``ValueError`` if ``offset`` is not a whole number of cells."""
    if offset % CELL_BYTES:
        raise ValueError(f"{offset} is not a multiple of the {CELL_BYTES}-byte cell")
    return offset // CELL_BYTES


def heap_bytes_for(max_series: int) -> int:
    """The key heap of a body that holds ``max_series`` series."""
    return max_series * HEAP_BYTES_PER_SERIES


class Field:
    """One fixed-size field at a fixed offset relative to a base (the file, a table entry or a body);
    ``doc`` says what it holds (``docs/architecture.md`` section 2 is generated from it)."""

    __slots__ = ("offset", "struct", "doc")

    def __init__(self, offset: int, fmt: str, doc: str = "") -> None:
        self.offset = offset
        self.struct = struct.Struct("<" + fmt)
        self.doc = doc

    def get(self, buf, base: int = 0):
        return self.struct.unpack_from(buf, base + self.offset)[0]

    def set(self, buf, value, base: int = 0) -> None:
        self.struct.pack_into(buf, base + self.offset, value)

    def word(self, base: int = 0) -> int:
        """The field's index in a view of 8-byte cells (``buf.cast("Q")``/``"d"``): hot paths store
        through it without packing. Only for 8-byte, 8-aligned fields."""
        at = base + self.offset
        if self.struct.size != CELL_BYTES or at % CELL_BYTES:
            raise ValueError(f"field at {at} ({self.struct.format}) is not an aligned 8-byte cell")
        return cell_index(at)


class Header:
    """Fields of the file header (base 0)."""

    magic = Field(0, "8s", f"`{MAGIC!r}`")
    version = Field(8, "I", f"`LAYOUT_VERSION` = {LAYOUT_VERSION}. `attach` refuses any other value "
                    "(`LayoutMismatch`).")
    total_size = Field(16, "Q", "file size; `attach` also checks it against the actual file size")
    n_slabs = Field(24, "I", "slabs in the file")
    slab_max_series = Field(28, "I", "the slab body geometry")
    slab_heap_bytes = Field(32, "I", "the slab body geometry")
    slab_max_values = Field(36, "I", "the slab body geometry")
    retired_max_series = Field(40, "I", "the retired body geometry")
    retired_heap_bytes = Field(44, "I", "the retired body geometry")
    retired_max_values = Field(48, "I", "the retired body geometry")
    record_slots = Field(52, "I", "workload-record slots per slab")
    log_slots = Field(128, "I", "log-record slots per slab")
    hook_failures = Field(136, "Q", "gunicorn hooks of ours that raised (caught, logged once per hook and "
                          "error, counted)")
    space_failures = Field(144, "Q", "claims refused because the slab's pages could not be reserved "
                           "(`segment_dir` had no room)")
    segment_unlinked = Field(152, "Q", "times the aggregator found the segment's path deleted or naming "
                             "another file")
    unattached_updates = Field(160, "Q", "updates made by forks of workers that found no slab to claim "
                               "(counted under the flock; their values are lost)")
    memory_recycles = Field(168, "Q", "workers that went over `max_worker_memory` and stopped to be replaced "
                            "(counted by the worker under the flock, after its `recycles` entry: stored last)")
    created = Field(56, "d", "`time.time()` at creation. Used for the stale-segment age and for "
                    "`uptime_seconds`.")
    next_age = Field(64, "Q", "the last age handed out by a claim made without an age (`assign_slab()` or "
                     "a self-claiming worker, which no pre-fork server numbered)")
    aggregator_pid = Field(72, "Q", "set by the aggregator after it takes the lock")
    aggregator_heartbeat = Field(80, "d", "`time.time()` at each tick (read by a forked helper: hurry_aggregator)")
    aggregator_starts = Field(88, "Q", "incremented by each aggregator that takes the lock")
    retired_active = Field(96, "Q", "which retired copy (0 or 1) is current")
    claim_failures = Field(104, "Q", "claims that found no free slab")
    records_dropped = Field(112, "Q", "workload records lost to ring overflow (written by the aggregator)")
    logs_dropped = Field(120, "Q", "log records lost likewise")
    masters = [Field(256 + 8 * i, "Q", f"pids of the masters sharing the file (`MAX_MASTERS` = {MAX_MASTERS}), "
                     "0 = empty") for i in range(MAX_MASTERS)]
    # Runtime control (which endpoints are on, at which paths): JSON written under the segment lock
    # by the master or the aggregator, its length last; read by the aggregator on every tick.
    control_length = Field(512, "I", "length of `control_json`; 0 while it is rewritten (or before any "
                           "override)")
    control_json = Field(520, f"{CONTROL_BYTES}s", f"the runtime overrides as JSON (`CONTROL_BYTES` = "
                         f"{CONTROL_BYTES}), section 6")
    # The last RECYCLE_SLOTS memory recycles, entry ``memory_recycles % RECYCLE_SLOTS`` written before the
    # count is raised: the aggregator notifies each one, however soon the worker exits.
    recycle_pid = [Field(RECYCLE_BASE + RECYCLE_ENTRY_SIZE * i, "Q", f"recycles[i], i < {RECYCLE_SLOTS}: the "
                         "worker's pid") for i in range(RECYCLE_SLOTS)]
    recycle_memory = [Field(RECYCLE_BASE + RECYCLE_ENTRY_SIZE * i + 8, "Q", "recycles[i]: its memory (bytes of "
                            "`max_worker_memory_kind`) when it decided") for i in range(RECYCLE_SLOTS)]
    recycle_limit = [Field(RECYCLE_BASE + RECYCLE_ENTRY_SIZE * i + 16, "Q", "recycles[i]: the limit, in bytes")
                     for i in range(RECYCLE_SLOTS)]
    recycle_time = [Field(RECYCLE_BASE + RECYCLE_ENTRY_SIZE * i + 24, "d", "recycles[i]: `time.time()` of the "
                          "decision") for i in range(RECYCLE_SLOTS)]


class Slot:
    """Fields of one slab-table entry (base: the entry's offset, from ``Geometry.table_entry``)."""

    state = Field(0, "Q", ", ".join(f"`{name}` {value}" for name, value in
                                    (("FREE", FREE), ("LIVE", LIVE), ("RETIRED", RETIRED))))
    generation = Field(8, "Q", "incremented at every claim; (slab, generation) names exactly one tenancy")
    pid = Field(16, "Q", "0 from the claim until the worker binds")
    age = Field(24, "Q", "gunicorn's `worker.age`, or `next_age`")
    assigned_at = Field(32, "d", "claim time; a slab still unbound 60 s after it is reclaimed (section 4)")
    master_pid = Field(40, "Q", "the claiming master (`getpid()` in `assign_slab`, `getppid()` when a worker "
                       "claims its own); the worker's PDEATHSIG check compares its parent with it")
    proc_start = Field(48, "d", "the worker's psutil create time, used to detect pid reuse")


SLOT_FIELDS = (Slot.state, Slot.generation, Slot.pid, Slot.age, Slot.assigned_at, Slot.master_pid, Slot.proc_start)
# A whole table entry in one struct (reading the table is one iter_unpack); the fields are contiguous.
SLOT_ENTRY = struct.Struct("<" + "".join(f.struct.format.lstrip("<") for f in SLOT_FIELDS)
                           + f"{TABLE_ENTRY_SIZE - sum(f.struct.size for f in SLOT_FIELDS)}x")
assert all(f.offset == sum(g.struct.size for g in SLOT_FIELDS[:i]) for i, f in enumerate(SLOT_FIELDS))


class Body:
    """Fields of a body header (base: the body's offset)."""

    n_series = Field(0, "Q", "the published entry count, stored last (after the entry it counts)")
    heap_used = Field(8, "Q", "key bytes used")
    values_used = Field(16, "Q", "float64 cells used")
    catalogue_full = Field(24, "Q", "declarations refused because the body was full")
    heartbeat = Field(32, "d", "slabs: the worker's last beat, `time.time()` (a live worker beating no "
                      "more is stuck)")
    folded_slab = Field(40, "Q", "retired copies: the last slab folded in")
    folded_generation = Field(48, "Q", "retired copies: that slab's generation")
    workers_folded = Field(56, "Q", "retired copies: the total number of tenancies folded")
    records_head = Field(64, "Q", "slabs: workload records ever written (the ring's next index)")
    logs_head = Field(72, "Q", "slabs: log records ever written")
    inflight_started = Field(80, "d", "slabs: `time.time()` the latest request began, 0.0 when idle")
    inflight_method = Field(88, "8s", "slabs: the latest request's method")
    inflight_path = Field(96, "64s", "slabs: the latest request's path")
    inflight_count = Field(160, "Q", "slabs: requests in progress (gthread workers serve several)")
    optimize_requested = Field(168, "Q", "slabs: optimization (GC) requests, raised by the master or the "
                               "aggregator under the flock — the one field of a slab with another writer "
                               "than its worker")
    optimize_count = Field(176, "Q", "slabs: optimizations done (SIGUSR1 ones included), stored last")
    optimize_last = Field(184, "d", "slabs: `time.time()` the last one finished")
    optimize_seconds = Field(192, "d", "slabs: how long its `gc.collect` calls took")
    optimize_rss_before = Field(200, "Q", "slabs: RSS around the last one")
    optimize_rss_after = Field(208, "Q", "slabs: RSS around the last one")
    optimize_uss_before = Field(216, "Q", "slabs: USS likewise (0 if unreadable)")
    optimize_uss_after = Field(224, "Q", "slabs: USS likewise (0 if unreadable)")
    optimize_collected = [Field(232 + 8 * i, "Q", "slabs: objects found by `gc.collect(i)` in the last one")
                          for i in range(3)]
    optimize_pss_before = Field(256, "Q", "slabs: PSS around the last one (0 if unreadable)")
    optimize_pss_after = Field(264, "Q", "slabs: PSS around the last one (0 if unreadable)")
    optimize_trimmed = Field(272, "Q", "slabs: RSS `malloc_trim(0)` gave back in the last one (bytes)")
    optimize_skipped = Field(280, "Q", "slabs: optimizations that skipped the collection: nothing was "
                             "allocated since the last one, so it could not pay off")
    recycle_memory = Field(288, "Q", "slabs: 0, or the worker's memory (bytes) when it went over "
                           "`max_worker_memory`: it finishes its requests and exits, to be replaced")
    recycle_at = Field(296, "d", "slabs: `time.time()` of that decision")


def packed(fields: dict[str, str]) -> struct.Struct:
    """A little-endian, unaligned struct of named fields (``{name: struct format}``, in order)."""
    return struct.Struct("<" + "".join(fields.values()))


def spans(fields: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``{name: (offset, width)}`` of the fields of ``packed(fields)``, in bytes: for code that writes
    them one by one (the C request path, ``rockstar_mp/_hotpath.c``)."""
    out, at = {}, 0
    for name, fmt in fields.items():
        width = struct.calcsize("<" + fmt)
        out[name] = (at, width)
        at += width
    return out


def widths(fields: dict[str, str]) -> dict[str, int]:
    """``{name: width in bytes}``: code that cuts a text to its field asks the width by name."""
    return {name: width for name, (_, width) in spans(fields).items()}


# Ring slots: the sequence number, then the payload.
SLOT_SEQ = Field(0, "Q", "the record's number + 1 once written, 0 while it is written")
SLOT_PAYLOAD = SLOT_SEQ.offset + SLOT_SEQ.struct.size  # where a slot's record starts
# A workload record (request id "" for none).
RECORD_FIELDS = {"start": "d", "duration": "d", "bytes": "Q", "pid": "I", "status": "H", "method": "8s",
                 "route": "64s", "request_id": "40s", "tenant": "32s"}
RECORD = packed(RECORD_FIELDS)
RECORD_SPANS = spans(RECORD_FIELDS)
RECORD_WIDTH = widths(RECORD_FIELDS)
RECORD_SLOT = 192
# A log record (texts UTF-8, cut on a character boundary to fit).
LOG_FIELDS = {"time": "d", "pid": "I", "level": "H", "logger": "48s", "message": "442s"}
LOG = packed(LOG_FIELDS)
LOG_WIDTH = widths(LOG_FIELDS)
LOG_SLOT = 512
LOG_MESSAGE_BYTES = LOG_WIDTH["message"]
assert SLOT_SEQ.offset == 0 and SLOT_SEQ.struct.size == CELL_BYTES and VALUE.size == CELL_BYTES
assert SLOT_PAYLOAD + RECORD.size <= RECORD_SLOT and SLOT_PAYLOAD + LOG.size <= LOG_SLOT
assert RECORD_SLOT % CELL_BYTES == 0 and LOG_SLOT % CELL_BYTES == 0  # every slot's sequence is a cell
assert sys.byteorder == "little"  # hot paths store 8-byte cells through native memoryview casts


def slot_struct(payload: struct.Struct, slot_size: int) -> struct.Struct:
    """One whole ring slot: the sequence, the payload, padding to the slot's size (so a run of slots
    unpacks in one ``iter_unpack``)."""
    pad = slot_size - SLOT_PAYLOAD - payload.size
    return struct.Struct(SLOT_SEQ.struct.format + payload.format.lstrip("<") + (f"{pad}x" if pad else ""))


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class BodyLayout:
    """Offsets inside one body, relative to the body's start (each computed once: a worker's catalogue
    asks for them at every series it declares)."""

    max_series: int
    heap_bytes: int
    max_values: int
    record_slots: int = 0
    log_slots: int = 0

    @cached_property
    def index_offset(self) -> int:
        return BODY_HEADER_SIZE

    @cached_property
    def heap_offset(self) -> int:
        return self.index_offset + self.max_series * INDEX_ENTRY.size

    @cached_property
    def values_offset(self) -> int:
        return round_up(self.heap_offset + self.heap_bytes, CELL_BYTES)

    @cached_property
    def records_offset(self) -> int:
        return self.value_offset(self.max_values)

    @cached_property
    def logs_offset(self) -> int:
        return self.records_offset + self.record_slots * RECORD_SLOT

    @cached_property
    def size(self) -> int:
        return round_up(self.logs_offset + self.log_slots * LOG_SLOT, PAGE)

    def entry_offset(self, i: int) -> int:
        return self.index_offset + i * INDEX_ENTRY.size

    def value_offset(self, i: int) -> int:
        """Offset of value cell ``i`` (counted from the body's first value)."""
        return self.values_offset + i * VALUE.size

    def first_cell(self, base: int) -> int:
        """The index of the first value cell of the body at ``base`` in the whole map cast to cells
        (``Segment.doubles``): an index entry's first value is relative to it."""
        return cell_index(base + self.values_offset)

    def record_slot(self, index: int) -> int:
        """Offset of the slot holding workload record number ``index`` (0, 1, 2, ... ever written)."""
        return self.records_offset + (index % self.record_slots) * RECORD_SLOT

    def log_slot(self, index: int) -> int:
        return self.logs_offset + (index % self.log_slots) * LOG_SLOT


@dataclass(frozen=True)
class Geometry:
    """The sizes a segment is created with; everything else follows from them (computed once: the
    bodies' layouts and the regions' offsets are asked for at every slab's offset)."""

    n_slabs: int = 64
    slab_max_series: int = 8192  # as MonitoringConfig's defaults (the master derives its geometry there)
    slab_heap_bytes: int = heap_bytes_for(8192)
    slab_max_values: int = 32768
    retired_max_series: int = 8192
    retired_heap_bytes: int = heap_bytes_for(8192)
    retired_max_values: int = 65536
    record_slots: int = 1024
    log_slots: int = 256

    @cached_property
    def slab(self) -> BodyLayout:
        return BodyLayout(self.slab_max_series, self.slab_heap_bytes, self.slab_max_values,
                          self.record_slots, self.log_slots)

    @cached_property
    def retired(self) -> BodyLayout:
        return BodyLayout(self.retired_max_series, self.retired_heap_bytes, self.retired_max_values)

    @property
    def table_offset(self) -> int:
        return HEADER_SIZE

    def table_entry(self, slab: int) -> int:
        return self.table_offset + slab * TABLE_ENTRY_SIZE

    @cached_property
    def retired_offset(self) -> int:
        return round_up(self.table_offset + self.n_slabs * TABLE_ENTRY_SIZE, PAGE)

    def retired_copy(self, which: int) -> int:
        return self.retired_offset + which * self.retired.size

    @cached_property
    def slabs_offset(self) -> int:
        return self.retired_copy(2)

    def slab_offset(self, slab: int) -> int:
        return self.slabs_offset + slab * self.slab.size

    @cached_property
    def total_size(self) -> int:
        return self.slab_offset(self.n_slabs)

    def write_header(self, buf) -> None:
        Header.magic.set(buf, MAGIC)
        Header.version.set(buf, LAYOUT_VERSION)
        Header.total_size.set(buf, self.total_size)
        for name in _GEOMETRY_FIELDS:
            getattr(Header, name).set(buf, getattr(self, name))

    @classmethod
    def read_header(cls, buf) -> "Geometry":
        """The geometry a segment was created with. Raises ``LayoutMismatch`` if it is not ours."""
        from .errors import LayoutMismatch

        magic = Header.magic.get(buf)
        if magic != MAGIC:
            raise LayoutMismatch(f"not a rockstar-mp segment (magic {magic!r})")
        version = Header.version.get(buf)
        if version != LAYOUT_VERSION:
            raise LayoutMismatch(
                f"segment layout version {version}, this rockstar-mp reads version {LAYOUT_VERSION}: "
                "restart the master so it creates a new segment")
        return cls(**{name: getattr(Header, name).get(buf) for name in _GEOMETRY_FIELDS})


_GEOMETRY_FIELDS = ("n_slabs", "slab_max_series", "slab_heap_bytes", "slab_max_values",
                    "retired_max_series", "retired_heap_bytes", "retired_max_values",
                    "record_slots", "log_slots")
