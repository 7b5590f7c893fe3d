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
    """The worker's end. Appends are serialised by a lock (gthread workers write from many threads)."""

    def __init__(self, buf: memoryview, base: int, spec: RingSpec) -> None:
        self._buf = buf
        self._base = base
        self._spec = spec
        self._lock = threading.Lock()

    def append(self, *payload) -> None:
        spec, buf, base = self._spec, self._buf, self._base
        if not spec.slots:
            return
        with self._lock:
            index = spec.head.get(buf, base)
            at = base + spec.slot_offset(index)
            SLOT_SEQ.set(buf, 0, at)
            spec.payload.pack_into(buf, at + SLOT_SEQ.struct.size, *payload)
            SLOT_SEQ.set(buf, index + 1, at)
            spec.head.set(buf, index + 1, base)


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
