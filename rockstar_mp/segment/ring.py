"""Rings of fixed-size records in a slab: one writer (the worker), one reader (the aggregator).

The writer never waits for the reader: record ``i`` goes to slot ``i % slots``, so a slow reader loses
the oldest records, and it counts them. Each slot is written as: sequence 0, payload, sequence i + 1;
then the head. A reader accepts slot ``i`` only if it saw sequence ``i + 1`` before and after reading
the payload, so a record overwritten (or half-written by a worker killed mid-write) is counted as
dropped, never returned torn.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Callable

from .layout import LOG, RECORD, SLOT_SEQ, Body, BodyLayout, Field


@dataclass(frozen=True)
class RingSpec:
    """Where a ring lives in one body and how its slots are laid out."""

    head: Field  # the body-header field counting records ever written
    slot_offset: Callable[[int], int]  # body-relative offset of record number i
    slots: int
    payload: struct.Struct


class RingWriter:
    """The worker's end. Appends are serialised by a lock (gthread workers write from many threads).

    On the request path, so everything is computed once: the slots' base and size, and one struct
    writing the zero sequence and the payload in one call; the head is kept here (one writer).
    """

    def __init__(self, buf: memoryview, base: int, spec: RingSpec) -> None:
        self._buf = buf
        self._base = base
        self._spec = spec
        self._lock = threading.Lock()
        self._slots = spec.slots
        self._first = base + spec.slot_offset(0)
        self._size = spec.slot_offset(1) - spec.slot_offset(0) if spec.slots > 1 else 0
        self._seq_and_payload = struct.Struct(SLOT_SEQ.struct.format + spec.payload.format.lstrip("<"))
        self._seq = SLOT_SEQ.struct
        self._head = spec.head.struct
        self._head_at = base + spec.head.offset
        self._index = spec.head.get(buf, base)

    def append(self, *payload) -> None:
        if not self._slots:
            return
        with self._lock:
            index = self._index
            at = self._first + (index % self._slots) * self._size
            self._seq_and_payload.pack_into(self._buf, at, 0, *payload)  # sequence 0 while written
            self._seq.pack_into(self._buf, at, index + 1)
            self._index = index + 1
            self._head.pack_into(self._buf, self._head_at, index + 1)


def read_ring(buf: memoryview, base: int, spec: RingSpec, since: int) -> tuple[list, int, int]:
    """Records from number ``since`` on: ``(payload tuples, next index to read, records dropped)``."""
    head = spec.head.get(buf, base)
    if head < since:  # a new tenancy restarted the count
        since = 0
    start = max(since, head - spec.slots)
    dropped = start - since
    out = []
    seq_size = SLOT_SEQ.struct.size
    for index in range(start, head):
        at = base + spec.slot_offset(index)
        if SLOT_SEQ.get(buf, at) != index + 1:
            dropped += 1
            continue
        payload = spec.payload.unpack_from(buf, at + seq_size)
        if SLOT_SEQ.get(buf, at) != index + 1:
            dropped += 1
            continue
        out.append(payload)
    return out, head, dropped


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
    return RingSpec(Body.records_head, layout.record_slot, layout.record_slots, RECORD)


def log_ring(layout: BodyLayout) -> RingSpec:
    """The log-record ring of a slab."""
    return RingSpec(Body.logs_head, layout.log_slot, layout.log_slots, LOG)
