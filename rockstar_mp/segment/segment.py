"""The segment file: create or attach, the slab table, and the masters sharing it.

Slab-table changes (claim, retire, free) and master registration happen under an exclusive ``flock``
on a fresh file description, so masters (two after a gunicorn USR2), workers and the aggregator never
race on them. Nothing here runs on a request's hot path.
"""
from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from typing import Iterator

import psutil

from .catalogue import reset_body
from .errors import LayoutMismatch, NoFreeSlab
from .layout import FREE, HEADER_SIZE, LIVE, RETIRED, SLOT_ENTRY, Geometry, Header, Slot

SEGMENT_PREFIX = "rockstar-mp-"
AGGREGATOR_LOCK_SUFFIX = ".agg"  # beside the segment: held by the one aggregator serving it


@dataclass(frozen=True)
class SlotInfo:
    """One slab-table entry as read at one moment."""

    slab: int
    state: int
    generation: int
    pid: int
    age: int
    assigned_at: float
    master_pid: int
    proc_start: float


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if os.path.exists("/proc/self/stat") else 0
_BOOT_TIME: float | None = None  # psutil's, read once (psutil caches it too)


def process_start(pid: int) -> float:
    """The create time of ``pid`` (0.0 if there is no such process)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return 0.0


def _proc_stat(pid: int) -> tuple[bytes, float] | None:
    """``(state letter, create time)`` from ``/proc/<pid>/stat``, computed as psutil computes its
    ``create_time`` (start ticks / CLK_TCK + boot time); None if there is no such process. About 4x
    cheaper than a ``psutil.Process``: the aggregator asks for every live worker on every tick."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = psutil.boot_time()
    return fields[0], int(fields[19]) / _CLOCK_TICKS + _BOOT_TIME


def process_alive(pid: int, start: float = 0.0) -> bool:
    """Is ``pid`` running (not a zombie) and, when ``start`` is given, the same process as then?"""
    if pid <= 0:
        return False
    if _CLOCK_TICKS:
        try:
            seen = _proc_stat(pid)
        except (ValueError, IndexError):
            seen = (b"?", 0.0)  # an unexpected format: psutil decides below
        if seen is None or seen[0] == b"Z":
            return False
        if not start or abs(seen[1] - start) < 0.01:
            return True
        # a different start time means pid reuse; psutil confirms before a live slab is retired
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not start or abs(proc.create_time() - start) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class Segment:
    """A mapped segment file. ``Segment.create`` in the master, ``Segment.attach`` anywhere else."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self._fd = fd
        self._mmap = mm
        self.buf = memoryview(mm)
        self.doubles = self.buf.cast("d")

    @classmethod
    def create(cls, directory: str, geometry: Geometry | None = None) -> "Segment":
        geometry = geometry or Geometry()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.seg")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, geometry.total_size)
        mm = mmap.mmap(fd, geometry.total_size, mmap.MAP_SHARED)
        geometry.write_header(mm)
        Header.created.set(mm, time.time())
        return cls(path, fd, mm, geometry)

    @classmethod
    def attach(cls, path: str) -> "Segment":
        """Map an existing segment. Raises ``LayoutMismatch`` if it is not one this version reads."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise LayoutMismatch(f"{path} is {size} bytes, too small to be a segment")
            with mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED) as head:
                geometry = Geometry.read_header(head)
            if size != geometry.total_size:
                raise LayoutMismatch(f"{path} is {size} bytes, its header says {geometry.total_size}")
            return cls(path, fd, mmap.mmap(fd, size, mmap.MAP_SHARED), geometry)
        except BaseException:
            os.close(fd)
            raise

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on the slab table (a fresh description, so forked processes exclude too)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- the slab table --------------------------------------------------------------------------
    def slot(self, slab: int) -> SlotInfo:
        base = self.geometry.table_entry(slab)
        buf = self.buf
        return SlotInfo(slab, Slot.state.get(buf, base), Slot.generation.get(buf, base),
                        Slot.pid.get(buf, base), Slot.age.get(buf, base),
                        Slot.assigned_at.get(buf, base), Slot.master_pid.get(buf, base),
                        Slot.proc_start.get(buf, base))

    def slots(self) -> list[SlotInfo]:
        start = self.geometry.table_entry(0)
        table = self.buf[start:start + self.geometry.n_slabs * SLOT_ENTRY.size].tobytes()
        return [SlotInfo(i, *entry) for i, entry in enumerate(SLOT_ENTRY.iter_unpack(table))]

    def claim_slab(self, age: int | None = None, master_pid: int = 0) -> tuple[int, int]:
        """Take a free slab for a worker about to start: returns ``(slab, generation)``."""
        buf = self.buf
        with self.locked():
            for slab in range(self.geometry.n_slabs):
                base = self.geometry.table_entry(slab)
                if Slot.state.get(buf, base) != FREE:
                    continue
                if age is None:
                    age = Header.next_age.get(buf) + 1
                    Header.next_age.set(buf, age)
                generation = Slot.generation.get(buf, base) + 1
                reset_body(buf, self.geometry.slab_offset(slab))
                Slot.generation.set(buf, generation, base)
                Slot.pid.set(buf, 0, base)
                Slot.proc_start.set(buf, 0.0, base)
                Slot.age.set(buf, age, base)
                Slot.assigned_at.set(buf, time.time(), base)
                Slot.master_pid.set(buf, master_pid, base)
                Slot.state.set(buf, LIVE, base)
                return slab, generation
            Header.claim_failures.set(buf, Header.claim_failures.get(buf) + 1)
        raise NoFreeSlab(f"all {self.geometry.n_slabs} slabs are in use: raise max_workers")

    def bind_slab(self, slab: int, pid: int, proc_start: float) -> None:
        """The worker names itself in the slab it was given (before it writes anything)."""
        base = self.geometry.table_entry(slab)
        Slot.proc_start.set(self.buf, proc_start, base)
        Slot.pid.set(self.buf, pid, base)

    def retire_slab(self, slab: int, generation: int) -> bool:
        """Mark a live slab retired (its worker is gone). False if that tenancy already ended."""
        return self._transition(slab, generation, LIVE, RETIRED)

    def free_slab(self, slab: int, generation: int) -> bool:
        """Return a retired slab, already folded, to the free list."""
        return self._transition(slab, generation, RETIRED, FREE)

    def _transition(self, slab: int, generation: int, old: int, new: int) -> bool:
        base = self.geometry.table_entry(slab)
        with self.locked():
            if Slot.state.get(self.buf, base) != old or Slot.generation.get(self.buf, base) != generation:
                return False
            Slot.state.set(self.buf, new, base)
            return True

    # -- masters sharing the file ----------------------------------------------------------------
    def register_master(self, pid: int) -> None:
        with self.locked():
            fields = Header.masters
            if any(f.get(self.buf) == pid for f in fields):
                return
            for field in fields:
                other = field.get(self.buf)
                if other == 0 or not process_alive(other):
                    field.set(self.buf, pid)
                    return

    def unregister_master(self, pid: int) -> list[int]:
        """Forget ``pid``; returns the masters still alive and registered."""
        with self.locked():
            alive = []
            for field in Header.masters:
                other = field.get(self.buf)
                if other == pid:
                    field.set(self.buf, 0)
                elif other and process_alive(other):
                    alive.append(other)
            return alive

    def masters(self) -> list[int]:
        return [p for p in (f.get(self.buf) for f in Header.masters) if p]

    def close(self) -> None:
        try:
            self.doubles.release()
            self.buf.release()
            self._mmap.close()
        except (BufferError, ValueError):
            pass  # a view is still exported somewhere; the mapping goes with the process
        with contextlib.suppress(OSError):
            os.close(self._fd)


def stale_segments(directory: str, min_age: float = 60.0) -> list[str]:
    """Segment files in ``directory`` older than ``min_age`` s whose masters are all dead (a SIGKILLed master's)."""
    stale = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(SEGMENT_PREFIX) and n.endswith(".seg")]
    except OSError:
        return stale
    for name in names:
        path = os.path.join(directory, name)
        try:
            seg = Segment.attach(path)
        except (OSError, LayoutMismatch):
            continue
        try:
            old = time.time() - Header.created.get(seg.buf) > min_age
            if old and not any(process_alive(pid) for pid in seg.masters()):
                stale.append(path)
        finally:
            seg.close()
    return stale
