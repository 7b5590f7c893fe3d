"""The segment file: create or attach, the slab table, and the masters sharing it.

Slab-table changes (claim, retire, free) and master registration happen under an exclusive ``flock``
on a fresh file description, so masters (two after a gunicorn USR2), workers and the aggregator never
race on them. Nothing here runs on a request's hot path.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import psutil

from .catalogue import reset_body
from .errors import LayoutMismatch, NoFreeSlab, NoSpace, UntrustedFile
from .layout import FREE, HEADER_SIZE, LIVE, RETIRED, SLOT_ENTRY, Geometry, Header, Slot

SEGMENT_PREFIX = "rockstar-mp-"


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


NO_SUCH_PROCESS = (errno.ENOENT, errno.ESRCH)
_liveness_unknown = 0  # answers process_alive could not know (see liveness_unknown)


def liveness_unknown() -> int:
    """How many times ``process_alive`` could not tell (out of descriptors, ``/proc`` unreadable) and
    answered "alive" in this process."""
    return _liveness_unknown


def _proc_stat(pid: int) -> tuple[bytes, float] | None:
    """``(state letter, create time)`` from ``/proc/<pid>/stat``, computed as psutil computes its
    ``create_time`` (start ticks / CLK_TCK + boot time); None if there is no such process. About 4x
    cheaper than a ``psutil.Process``: the aggregator asks for every live worker on every tick.
    Raises OSError when ``/proc`` cannot tell (EMFILE, EACCES, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError as exc:
        if exc.errno in NO_SUCH_PROCESS:
            return None
        raise
    fields = data[data.rfind(b")") + 2:].split()
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = psutil.boot_time()
    return fields[0], int(fields[19]) / _CLOCK_TICKS + _BOOT_TIME


def process_alive(pid: int, start: float = 0.0) -> bool:
    """Is ``pid`` running (not a zombie) and, when ``start`` is given, the same process as then?

    Only "no such process" (ENOENT, ESRCH) is an answer of death: when ``/proc`` cannot be read (the
    process is out of descriptors, EACCES, ...) the answer is True, counted (``liveness_unknown``),
    unless ``kill(pid, 0)``, which needs no descriptor, says there is no such process. A caller
    retiring a live worker's slab on a guess would lose its counts."""
    if pid <= 0:
        return False
    if _CLOCK_TICKS:
        try:
            seen = _proc_stat(pid)
        except (ValueError, IndexError):
            seen = (b"?", 0.0)  # an unexpected format: psutil decides below
        except OSError:
            return _exists_or_unknown(pid)
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
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return _exists_or_unknown(pid)


def no_such_process(pid: int) -> bool:
    """``kill(pid, 0)`` says there is no such process: a syscall, no descriptor and no /proc read."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists (another user's)
        return False
    return False


def _exists_or_unknown(pid: int) -> bool:
    """False if ``pid`` certainly does not exist; otherwise True, counted as an unknown answer."""
    global _liveness_unknown
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it exists, under another user
    _liveness_unknown += 1
    return True


class Segment:
    """A mapped segment file. ``Segment.create`` in the master, ``Segment.attach`` anywhere else.

    Once mapped, nothing depends on the file's path: the slab-table lock is taken on a description of
    the open file (``/proc/self/fd``), so a path deleted under us (systemd's ``RemoveIPC``, a tmp
    cleaner) or replaced by someone else's file changes nothing for the processes already mapping it.
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self._fd = fd
        self._mmap = mm
        self.buf = memoryview(mm)
        self.doubles = self.buf.cast("d")
        self._identity = _identity(os.fstat(fd))
        self._lock_fd = -1
        self._lock_pid = 0
        self._thread_lock = threading.Lock()
        self.open_lock()
        _MAPPED[path] = self

    @classmethod
    def create(cls, directory: str, geometry: Geometry | None = None) -> "Segment":
        """A new segment file in ``directory`` (0600, never an existing name), its shared regions
        reserved. Raises ``NoSpace`` when ``directory`` cannot hold them."""
        geometry = geometry or Geometry()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_space(directory, geometry)
        fd, path = _create_exclusive(directory)
        try:
            os.ftruncate(fd, geometry.total_size)
            _reserve(fd, 0, geometry.slabs_offset, path)
            mm = mmap.mmap(fd, geometry.total_size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        geometry.write_header(mm)
        Header.created.set(mm, time.time())
        return cls(path, fd, mm, geometry)

    @classmethod
    def attach(cls, path: str, fd: int | None = None) -> "Segment":
        """Map an existing segment, by path or by an inherited descriptor ``fd`` (the aggregator gets
        one, so a deleted path does not matter). Raises ``LayoutMismatch`` if it is not one this
        version reads, ``UntrustedFile`` if ``path`` is a symlink, not a regular file, or not ours."""
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            _check_ours(st, path)
            if st.st_size < HEADER_SIZE:
                raise LayoutMismatch(f"{path} is {st.st_size} bytes, too small to be a segment")
            with mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED) as head:
                geometry = Geometry.read_header(head)
            if st.st_size != geometry.total_size:
                raise LayoutMismatch(f"{path} is {st.st_size} bytes, its header says {geometry.total_size}")
            return cls(path, fd, mmap.mmap(fd, st.st_size, mmap.MAP_SHARED), geometry)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def inherited(cls, path: str) -> "Segment | None":
        """The segment this process mapped at ``path`` before it forked, if any (workers of a plain
        ``os.fork()`` parent use it, so they attach even after the path was deleted)."""
        return _MAPPED.get(path)

    def fileno(self) -> int:
        """The mapped file's descriptor (passed to the aggregator, which then needs no path)."""
        return self._fd

    def room_for_slabs(self) -> int:
        """How many more slabs the file system under the segment can reserve now."""
        st = os.fstatvfs(self._fd)
        return st.f_bavail * st.f_frsize // self.geometry.slab.size

    def path_intact(self) -> bool:
        """Does ``self.path`` still name the file we map? False once it was deleted or replaced (a
        path we may not look at, after dropping privileges, counts as intact)."""
        try:
            return _identity(os.stat(self.path)) == self._identity
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True

    # -- locking -------------------------------------------------------------------------------
    def open_lock(self) -> int:
        """This process's own description of the file, for ``flock``: a forked child must not share
        its parent's (a flock belongs to the description), so a child opens its own on first use.
        Opened through ``/proc/self/fd`` (no path needed), checked to be the same file. Workers call
        it while still privileged (before gunicorn's ``user`` switch): later opens may be refused."""
        if self._lock_pid == os.getpid():
            return self._lock_fd
        self._thread_lock = threading.Lock()  # a lock held by a thread of the parent is not ours
        fd = _reopen(self._fd, self.path, self._identity)
        self._lock_fd, self._lock_pid = fd, os.getpid()
        return fd

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on the slab table, between processes (flock) and threads (a mutex)."""
        fd = self.open_lock()
        with self._thread_lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def try_aggregator_lock(self) -> bool:
        """Take the one-aggregator-per-segment lock (an open-file-description lock on byte 0 of the
        segment itself: only processes that can open the 0600 file can hold it, and it goes with the
        process that took it). False while another aggregator holds it."""
        request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        try:
            fcntl.fcntl(self.open_lock(), fcntl.F_OFD_SETLK, request)
            return True
        except (BlockingIOError, PermissionError):
            return False

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

    def claim_slab(self, age: int | None = None, master_pid: int = 0, counted: bool = True) -> tuple[int, int]:
        """Take a free slab for a worker about to start: returns ``(slab, generation)``. Raises
        ``NoFreeSlab`` when every slab is taken, ``NoSpace`` when the slab's pages cannot be reserved
        (both counted in the header; a full table is not when ``counted`` is False: a try the caller
        makes again)."""
        buf = self.buf
        with self.locked():
            slab = next((i for i, s in enumerate(self.slots()) if s.state == FREE), None)
            if slab is None:
                if counted:
                    Header.claim_failures.set(buf, Header.claim_failures.get(buf) + 1)
                raise NoFreeSlab(f"all {self.geometry.n_slabs} slabs are in use: raise max_workers")
            if not self._reserve_slab(slab):
                Header.space_failures.set(buf, Header.space_failures.get(buf) + 1)
                raise NoSpace(f"{os.path.dirname(self.path)} has no room for another slab "
                              f"({self.geometry.slab.size} bytes): point segment_dir at a larger tmpfs, "
                              "or lower slab_max_series or max_workers")
            if age is None:
                age = Header.next_age.get(buf) + 1
                Header.next_age.set(buf, age)
            base = self.geometry.table_entry(slab)
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

    def _reserve_slab(self, slab: int) -> bool:
        """Reserve the slab's pages before anyone writes them (False if the file system is full)."""
        try:
            _reserve(self._fd, self.geometry.slab_offset(slab), self.geometry.slab.size, self.path)
            return True
        except NoSpace:
            return False

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
        if _MAPPED.get(self.path) is self:
            del _MAPPED[self.path]
        for fd in {self._fd, self._lock_fd if self._lock_pid == os.getpid() else -1} - {-1}:
            with contextlib.suppress(OSError):
                os.close(fd)


def stale_segments(directory: str, min_age: float = 60.0) -> list[str]:
    """Segment files in ``directory`` older than ``min_age`` s whose masters are all dead (a SIGKILLed master's)."""
    stale: list[str] = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(SEGMENT_PREFIX) and n.endswith(".seg")]
    except OSError:
        return stale
    for name in names:
        path = os.path.join(directory, name)
        try:
            seg = Segment.attach(path)
        except (OSError, LayoutMismatch, UntrustedFile):
            continue  # not ours to judge (another user's, a symlink), or not a segment
        try:
            old = time.time() - Header.created.get(seg.buf) > min_age
            if old and not any(process_alive(pid) for pid in seg.masters()):
                stale.append(path)
        finally:
            seg.close()
    return stale


_MAPPED: dict[str, Segment] = {}  # segments mapped by this process (and inherited by its forks), by path


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _check_ours(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(f"{path} is not a regular file: not attaching it")
    if st.st_uid != os.geteuid():
        raise UntrustedFile(f"{path} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()}): "
                            "not attaching it; remove it or use another segment_dir")


def _create_exclusive(directory: str, tries: int = 16) -> tuple[int, str]:
    """A new 0600 file with an unpredictable name: never an existing file, never through a symlink."""
    for _ in range(tries):
        path = os.path.join(directory, f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.seg")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue  # someone took the name first
    raise FileExistsError(f"could not create a segment file in {directory} in {tries} tries")


def _reserve(fd: int, offset: int, length: int, path: str) -> None:
    """Allocate the file's pages now, so writing them later can never fail with SIGBUS."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise NoSpace(f"{os.path.dirname(path) or '.'} has no room for {length} bytes of the segment: "
                          "point segment_dir at a larger tmpfs, or lower max_workers or slab_max_series") from exc
        raise


def check_space(directory: str, geometry: Geometry) -> None:
    """Refuse to start when ``directory`` cannot hold the segment's shared regions (header, slab
    table, retired totals) and one slab, saying what to change."""
    needed = geometry.slabs_offset + geometry.slab.size
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise NoSpace(f"segment_dir {directory} has {free / 2**20:.1f} MiB free; the segment needs "
                      f"{needed / 2**20:.1f} MiB for its shared regions and one slab ({geometry.slab.size / 2**20:.2f} "
                      "MiB a worker): point segment_dir at a larger tmpfs, or lower max_workers, "
                      "slab_max_series or retired_max_series")


def _reopen(fd: int, path: str, identity: tuple[int, int]) -> int:
    """A new description of the file open as ``fd``: through ``/proc/self/fd`` (works after the path
    was deleted), else through ``path`` if it still names the same file."""
    for name in (f"/proc/self/fd/{fd}", path):
        try:
            new = os.open(name, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        if _identity(os.fstat(new)) == identity:
            return new
        os.close(new)
    raise OSError(errno.ENOENT, f"cannot open another description of {path} (deleted, replaced, "
                                "or privileges dropped)")
