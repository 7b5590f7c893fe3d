"""Linux process helpers shared by the worker and the aggregator."""
from __future__ import annotations

import ctypes
from typing import NamedTuple

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` when our parent exits (even by SIGKILL). False if unsupported.

    The caller must then check ``os.getppid()``: a parent that died before this call is not signalled.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Memory(NamedTuple):
    """A process's memory in bytes: resident, unique (private pages) and proportional (shared pages
    divided among their sharers); 0 where unreadable."""

    rss: int = 0
    uss: int = 0
    pss: int = 0


def read_memory(pid: int | str = "self") -> Memory:
    """RSS, USS and PSS from one read of ``/proc/<pid>/smaps_rollup`` (Linux 4.14+; the kernel sums
    ``smaps`` itself, so this costs well under a millisecond for a worker). ``Memory()`` elsewhere."""
    fields: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == b"kB":
                    fields[name] = int(parts[0]) * 1024
    except (OSError, ValueError):
        return Memory()
    uss = sum(fields.get(name, 0) for name in (b"Private_Clean", b"Private_Dirty", b"Private_Hugetlb"))  # as psutil
    return Memory(fields.get(b"Rss", 0), uss, fields.get(b"Pss", 0))
