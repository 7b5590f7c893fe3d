"""Rings of fixed-size records in a slab: one writer (the worker), one reader (the aggregator).

The writer never waits for the reader: record ``i`` goes to slot ``i % slots``, so a slow reader loses
the oldest records, and it counts them. Each slot is written as: sequence 0, payload, sequence i + 1;
then the head. A reader accepts slot ``i`` only if its copy holds sequence ``i + 1`` and the writer
cannot have started on the slot again before the copy ended (or the sequence is unchanged after it),
so a record overwritten (or half-written by a worker killed mid-write) is counted as dropped, never
returned torn.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Callable

from .layout import (
    CELL_BYTES,
    LOG,
    LOG_SLOT,
    RECORD,
    RECORD_SLOT,
    SLOT_PAYLOAD,
    SLOT_SEQ,
    Body,
    BodyLayout,
    Field,
    cell_index,
    slot_struct,
)


@dataclass(frozen=True)
class RingSpec:
    """Where a ring lives in one body and how its slots are laid out."""

    head: Field  # the body-header field counting records ever written
    slot_offset: Callable[[int], int]  # body-relative offset of record number i
    slots: int
    payload: struct.Struct
    slot_size: int


class RingWriter:
    """The worker's end. Appends are serialised by a lock (gthread workers write from many threads).

    On the request path, so everything is computed once; the sequence and the head are stored as
    8-byte cells (no packing), the payload with one ``pack_into``; the head is kept here (one writer).
    """

    def __init__(self, buf: memoryview, base: int, spec: RingSpec) -> None:
        self._buf = buf
        self._words = buf.cast("Q")
        self._slots = spec.slots
        self._first = base + spec.slot_offset(0)
        self._size = spec.slot_size
        self._first_payload = self._first + SLOT_PAYLOAD
        self._first_seq = SLOT_SEQ.word(self._first)  # raise if a slot's sequence is not a whole cell
        self._slot_cells = cell_index(self._size)
        self._pack_payload = spec.payload.pack_into
        self._head_at = base + spec.head.offset
        self._head = spec.head.word(base)
        self._index = spec.head.get(buf, base)
        self._lock = threading.Lock()

    def geometry(self) -> tuple[int, int, int, int, int]:
        """``(first slot, slots, slot size, head, next index)``, byte offsets in the buffer: for a
        writer that takes over this ring (the C request path, ``rockstar_mp/_hotpath.c``)."""
        return self._first, self._slots, self._size, self._head_at, self._index

    def append(self, *payload) -> None:
        """Write one record: sequence 0, the payload, sequence index + 1, then the head."""
        if not self._slots:
            return
        with self._lock:
            index = self._index
            slot = index % self._slots
            seq = self._first_seq + slot * self._slot_cells
            words = self._words
            words[seq] = 0  # a reader that sees 0 (or another index) skips the slot
            self._pack_payload(self._buf, self._first_payload + slot * self._size, *payload)
            words[seq] = index + 1
            self._index = index + 1
            words[self._head] = index + 1


@dataclass(frozen=True)
class RingCopy:
    """Slots copied out of a ring and checked, not unpacked yet (``unpack``): ``runs`` of whole slots as
    ``(bytes, record number of the first)``, and ``skip``, the record numbers among them found torn or
    overwritten while copied. Unpacking is most of a read's cost, and most workload records are never
    looked at: the aggregator keeps copies and unpacks the ones it is asked for."""

    spec: RingSpec
    runs: tuple[tuple[bytes, int], ...]
    skip: frozenset[int]
    count: int  # records to unpack


def copy_ring(buf: memoryview, base: int, spec: RingSpec, since: int) -> tuple[RingCopy, int, int]:
    """Records from number ``since`` on, copied: ``(copy, next index to read, records dropped)``.

    The slots are copied in one pass (at most two runs, where the ring wraps) and checked after the
    copy: a slot whose sequence is not its record number + 1 was being written (or its writer died
    mid-write); one the writer may have reached again since (a record ``slots`` behind the head seen
    after the copy, or older) is kept only if its sequence is still the same after the copy. Both are
    counted as dropped, never returned torn.
    """
    head = spec.head.get(buf, base)
    if head < since:  # a new tenancy restarted the count
        since = 0
    start = max(since, head - spec.slots)
    dropped = start - since
    if start >= head:
        return RingCopy(spec, (), frozenset(), 0), head, dropped
    runs = []
    sequences: list[int] = []
    stride = spec.slot_size // CELL_BYTES
    index = start
    while index < head:
        run = min(head - index, spec.slots - index % spec.slots)
        at = base + spec.slot_offset(index)
        raw = buf[at:at + run * spec.slot_size].tobytes()
        runs.append((raw, index))
        sequences += memoryview(raw).cast("Q")[::stride].tolist()  # SLOT_SEQ is each slot's first cell
        index += run
    lapped = spec.head.get(buf, base) - spec.slots  # after the copy (x86-64 keeps loads in order)
    if lapped < start and sequences == list(range(start + 1, head + 1)):
        return RingCopy(spec, tuple(runs), frozenset(), head - start), head, dropped  # all whole, none reached again
    skip = set()
    for number, sequence in enumerate(sequences, start):
        if sequence != number + 1:
            skip.add(number)
        elif number <= lapped and SLOT_SEQ.get(buf, base + spec.slot_offset(number)) != number + 1:
            skip.add(number)  # overwritten while copied
    dropped += len(skip)
    return RingCopy(spec, tuple(runs), frozenset(skip), head - start - len(skip)), head, dropped


def unpack(copy: RingCopy) -> list[tuple]:
    """The copied records, in order: ``(sequence, *payload)`` each (its record number is sequence - 1)."""
    whole = slot_struct(copy.spec.payload, copy.spec.slot_size)
    out: list[tuple] = []
    for raw, first in copy.runs:
        if not copy.skip:
            out.extend(whole.iter_unpack(raw))
            continue
        out.extend(entry for number, entry in enumerate(whole.iter_unpack(raw), first) if number not in copy.skip)
    return out


def text(raw: bytes) -> str:
    """A fixed-width string field: NUL-padded UTF-8, possibly cut inside a character."""
    return raw.rstrip(b"\0").decode("utf-8", "ignore")


def fit(value: str, size: int) -> bytes:
    """UTF-8 of ``value``, cut to ``size`` bytes on a character boundary."""
    raw = value.encode("utf-8", "replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode("utf-8")


def record_ring(layout: BodyLayout) -> RingSpec:
    """The workload-record ring of a slab."""
    return RingSpec(Body.records_head, layout.record_slot, layout.record_slots, RECORD, RECORD_SLOT)


def log_ring(layout: BodyLayout) -> RingSpec:
    """The log-record ring of a slab."""
    return RingSpec(Body.logs_head, layout.log_slot, layout.log_slots, LOG, LOG_SLOT)
