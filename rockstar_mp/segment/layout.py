"""The byte layout of the shared segment: every offset and format is defined here, and only here.

A segment file is::

    [ header (4 KiB) | slab table | retired copy A | retired copy B | slab 0 | slab 1 | ... ]

The header names the geometry, so a reader computes every offset from the file itself. A slab and a
retired copy share one *body* layout (a catalogue of series and their float64 values; slabs also carry
two rings, of workload records and of log records; a retired copy has rings of zero slots)::

    [ body header (256 B) | index: max_series x 16 B | key heap | values: max_values x 8 B
      | records: record_slots x 192 B | logs: log_slots x 512 B ]

A ring slot starts with its sequence number (the record's index + 1 once complete, 0 while written),
so a reader detects a slot overwritten while it read it.

Other modules ask this one for offsets (``Geometry``, ``BodyLayout``, the ``Field`` constants) and never
add numbers of their own.
"""
from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass

MAGIC = b"RSTARMP\x00"
LAYOUT_VERSION = 2
PAGE = 4096
HEADER_SIZE = PAGE
TABLE_ENTRY_SIZE = 64
BODY_HEADER_SIZE = 256
INDEX_ENTRY = struct.Struct("<IIII")  # key offset in heap, key length, first value (float64 index), value count
MAX_MASTERS = 8
CONTROL_BYTES = 2048

# Slab states, stored in the slab table.
FREE, LIVE, RETIRED = 0, 1, 2
STATE_NAMES = {FREE: "free", LIVE: "live", RETIRED: "retired"}


class Field:
    """One fixed-size field at a fixed offset relative to a base (the file, a table entry or a body)."""

    __slots__ = ("offset", "struct")

    def __init__(self, offset: int, fmt: str) -> None:
        self.offset = offset
        self.struct = struct.Struct("<" + fmt)

    def get(self, buf, base: int = 0):
        return self.struct.unpack_from(buf, base + self.offset)[0]

    def set(self, buf, value, base: int = 0) -> None:
        self.struct.pack_into(buf, base + self.offset, value)

    def word(self, base: int = 0) -> int:
        """The field's index in a view of 8-byte cells (``buf.cast("Q")``/``"d"``): hot paths store
        through it without packing. Only for 8-byte, 8-aligned fields."""
        at = base + self.offset
        if self.struct.size != 8 or at % 8:
            raise ValueError(f"field at {at} ({self.struct.format}) is not an aligned 8-byte cell")
        return at // 8


class Header:
    """Fields of the file header (base 0)."""

    magic = Field(0, "8s")
    version = Field(8, "I")
    total_size = Field(16, "Q")
    n_slabs = Field(24, "I")
    slab_max_series = Field(28, "I")
    slab_heap_bytes = Field(32, "I")
    slab_max_values = Field(36, "I")
    retired_max_series = Field(40, "I")
    retired_heap_bytes = Field(44, "I")
    retired_max_values = Field(48, "I")
    record_slots = Field(52, "I")
    log_slots = Field(128, "I")
    hook_failures = Field(136, "Q")  # our server hooks that raised (caught, logged once, counted)
    space_failures = Field(144, "Q")  # slabs refused because segment_dir had no room to reserve them
    segment_unlinked = Field(152, "Q")  # times the segment's path was found deleted or replaced
    created = Field(56, "d")
    next_age = Field(64, "Q")  # ages for workers that no pre-fork server numbered
    aggregator_pid = Field(72, "Q")
    aggregator_heartbeat = Field(80, "d")
    aggregator_starts = Field(88, "Q")
    retired_active = Field(96, "Q")  # which retired copy (0 or 1) is current
    claim_failures = Field(104, "Q")  # workers that found no free slab
    records_dropped = Field(112, "Q")  # aggregator-owned: workload records lost to ring overflow
    logs_dropped = Field(120, "Q")  # aggregator-owned: log records lost to ring overflow
    masters = [Field(256 + 8 * i, "Q") for i in range(MAX_MASTERS)]  # pids of masters sharing the file
    # Runtime control (which endpoints are on, at which paths): JSON written under the segment lock
    # by the master or the aggregator, its length last; read by the aggregator on every tick.
    control_length = Field(512, "I")
    control_json = Field(520, f"{CONTROL_BYTES}s")


class Slot:
    """Fields of one slab-table entry (base: the entry's offset, from ``Geometry.table_entry``)."""

    state = Field(0, "Q")
    generation = Field(8, "Q")  # bumped at every claim, so a fold names exactly one tenancy
    pid = Field(16, "Q")
    age = Field(24, "Q")
    assigned_at = Field(32, "d")
    master_pid = Field(40, "Q")
    proc_start = Field(48, "d")  # the worker's create time (pid-reuse check)


SLOT_FIELDS = (Slot.state, Slot.generation, Slot.pid, Slot.age, Slot.assigned_at, Slot.master_pid, Slot.proc_start)
# A whole table entry in one struct (reading the table is one iter_unpack); the fields are contiguous.
SLOT_ENTRY = struct.Struct("<" + "".join(f.struct.format.lstrip("<") for f in SLOT_FIELDS)
                           + f"{TABLE_ENTRY_SIZE - sum(f.struct.size for f in SLOT_FIELDS)}x")
assert all(f.offset == sum(g.struct.size for g in SLOT_FIELDS[:i]) for i, f in enumerate(SLOT_FIELDS))


class Body:
    """Fields of a body header (base: the body's offset)."""

    n_series = Field(0, "Q")  # published count: written last, after the entry it counts
    heap_used = Field(8, "Q")
    values_used = Field(16, "Q")
    catalogue_full = Field(24, "Q")  # declarations refused because the catalogue was full
    heartbeat = Field(32, "d")  # slabs: the worker's last heartbeat (time.time())
    folded_slab = Field(40, "Q")  # retired copies: the last (slab, generation) folded in
    folded_generation = Field(48, "Q")
    workers_folded = Field(56, "Q")
    records_head = Field(64, "Q")  # slabs: workload records ever written (the ring's next index)
    logs_head = Field(72, "Q")  # slabs: log records ever written
    inflight_started = Field(80, "d")  # slabs: time.time() the current request began, 0.0 when idle
    inflight_method = Field(88, "8s")
    inflight_path = Field(96, "64s")
    inflight_count = Field(160, "Q")  # requests in progress (gthread workers serve several)
    # Optimization (GC). Requests are written by the aggregator or the master (a counter only they
    # raise, the one field of a slab with another writer); everything after it by the worker.
    optimize_requested = Field(168, "Q")
    optimize_count = Field(176, "Q")  # optimizations done (also those asked by SIGUSR1)
    optimize_last = Field(184, "d")  # time.time() the last one finished
    optimize_seconds = Field(192, "d")  # how long gc.collect() took
    optimize_rss_before = Field(200, "Q")
    optimize_rss_after = Field(208, "Q")
    optimize_uss_before = Field(216, "Q")
    optimize_uss_after = Field(224, "Q")
    optimize_collected = [Field(232 + 8 * i, "Q") for i in range(3)]  # objects, by generation


# Ring slots: the sequence number, then the payload.
SLOT_SEQ = Field(0, "Q")
# A workload record: start, duration (s), response bytes, pid, status, method, route, request id, tenant.
RECORD = struct.Struct("<ddQIH8s64s40s32s")
RECORD_SLOT = 192
# A log record: time, pid, level number, logger name, message (UTF-8, truncated to fit).
LOG = struct.Struct("<dIH48s442s")
LOG_SLOT = 512
LOG_MESSAGE_BYTES = 442
assert 8 + RECORD.size <= RECORD_SLOT and 8 + LOG.size <= LOG_SLOT
assert sys.byteorder == "little"  # hot paths store 8-byte cells through native memoryview casts


def field_offsets(packed: struct.Struct) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(offsets, sizes)`` of the fields of a little-endian, unaligned struct (each ``Ns`` one field),
    for code that writes them one by one (the C request path, ``rockstar_mp/_hotpath.c``)."""
    offsets, sizes, at = [], [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", packed.format.lstrip("<")):
        fields = [count + code] if code == "s" else [code] * int(count or 1)
        for field in fields:
            size = struct.calcsize("<" + field)
            offsets.append(at)
            sizes.append(size)
            at += size
    return tuple(offsets), tuple(sizes)


def slot_struct(payload: struct.Struct, slot_size: int) -> struct.Struct:
    """One whole ring slot: the sequence, the payload, padding to the slot's size (so a run of slots
    unpacks in one ``iter_unpack``)."""
    pad = slot_size - SLOT_SEQ.struct.size - payload.size
    return struct.Struct(SLOT_SEQ.struct.format + payload.format.lstrip("<") + (f"{pad}x" if pad else ""))


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class BodyLayout:
    """Offsets inside one body, relative to the body's start."""

    max_series: int
    heap_bytes: int
    max_values: int
    record_slots: int = 0
    log_slots: int = 0

    @property
    def index_offset(self) -> int:
        return BODY_HEADER_SIZE

    @property
    def heap_offset(self) -> int:
        return self.index_offset + self.max_series * INDEX_ENTRY.size

    @property
    def values_offset(self) -> int:
        return _round_up(self.heap_offset + self.heap_bytes, 8)

    @property
    def records_offset(self) -> int:
        return self.values_offset + self.max_values * 8

    @property
    def logs_offset(self) -> int:
        return self.records_offset + self.record_slots * RECORD_SLOT

    @property
    def size(self) -> int:
        return _round_up(self.logs_offset + self.log_slots * LOG_SLOT, PAGE)

    def entry_offset(self, i: int) -> int:
        return self.index_offset + i * INDEX_ENTRY.size

    def record_slot(self, index: int) -> int:
        """Offset of the slot holding workload record number ``index`` (0, 1, 2, ... ever written)."""
        return self.records_offset + (index % self.record_slots) * RECORD_SLOT

    def log_slot(self, index: int) -> int:
        return self.logs_offset + (index % self.log_slots) * LOG_SLOT


@dataclass(frozen=True)
class Geometry:
    """The sizes a segment is created with; everything else follows from them."""

    n_slabs: int = 64
    slab_max_series: int = 8192  # as MonitoringConfig's defaults (the master derives its geometry there)
    slab_heap_bytes: int = 1024 * 1024
    slab_max_values: int = 32768
    retired_max_series: int = 8192
    retired_heap_bytes: int = 1024 * 1024
    retired_max_values: int = 65536
    record_slots: int = 1024
    log_slots: int = 256

    @property
    def slab(self) -> BodyLayout:
        return BodyLayout(self.slab_max_series, self.slab_heap_bytes, self.slab_max_values,
                          self.record_slots, self.log_slots)

    @property
    def retired(self) -> BodyLayout:
        return BodyLayout(self.retired_max_series, self.retired_heap_bytes, self.retired_max_values)

    @property
    def table_offset(self) -> int:
        return HEADER_SIZE

    def table_entry(self, slab: int) -> int:
        return self.table_offset + slab * TABLE_ENTRY_SIZE

    @property
    def retired_offset(self) -> int:
        return _round_up(self.table_offset + self.n_slabs * TABLE_ENTRY_SIZE, PAGE)

    def retired_copy(self, which: int) -> int:
        return self.retired_offset + which * self.retired.size

    @property
    def slabs_offset(self) -> int:
        return self.retired_copy(2)

    def slab_offset(self, slab: int) -> int:
        return self.slabs_offset + slab * self.slab.size

    @property
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
