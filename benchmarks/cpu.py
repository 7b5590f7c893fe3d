"""The CPU time a gunicorn server spent, by role, read from /proc: what the cost figures (11, 12) count.

A server is its master and the master's children: the workers and, when rockstar-mp is on, the
aggregator (``python -m rockstar_mp.aggregator``, spawned by the master). Each process's CPU is read
from its process CPU clock (``clock_gettime`` on the clock Linux derives from a pid, as
``clock_getcpuclockid`` does: every thread, also the ended ones, in nanoseconds; ``/proc``'s ``utime +
stime`` count 10 ms ticks, which is 2.2 us a request over a 3 s round at 1,500 req/s) plus its ``cutime
+ cstime`` from ``/proc/<pid>/stat`` (the children it reaped): so a worker that exits during a
measurement is still counted, in the master's ``cutime`` once reaped.
Standard library only.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

ROLES = ("workers", "master", "aggregator")
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcCpu:
    ppid: int
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime, seconds
    aggregator: bool


def read_proc(pid: int) -> ProcCpu | None:
    """One process's CPU seconds from /proc/<pid>/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # from field 3 (state) on
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    try:
        own = time.clock_gettime(process_cpu_clock(pid))
    except OSError:
        return None
    return ProcCpu(int(fields[1]), own, (cutime + cstime) * TICK, b"rockstar_mp.aggregator" in cmdline)


def process_cpu_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU clock (``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``)."""
    return ((~pid) << 3) | 2


@dataclass
class ServerCpu:
    """A server's CPU seconds at one moment: by role, and which pids each live role had."""

    by_role: dict[str, float] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.by_role.values())

    def since(self, before: ServerCpu) -> dict[str, float]:
        """CPU seconds spent by each role between ``before`` and this (a worker that exited in between
        moved from the live workers' sum to the master's reaped time, which counts as "workers")."""
        return {role: self.by_role[role] - before.by_role[role] for role in ROLES}


def server_cpu(master: int) -> ServerCpu:
    """The CPU seconds of ``master`` and its children, by role. Reaped children count as workers."""
    snap = ServerCpu(dict.fromkeys(ROLES, 0.0), {role: [] for role in ROLES})
    top = read_proc(master)
    if top is None:
        raise RuntimeError(f"gunicorn master {master} is gone")
    snap.by_role["master"] = top.own
    snap.by_role["workers"] = top.reaped  # workers (rarely the aggregator) that exited and were reaped
    snap.pids["master"].append(master)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        proc = read_proc(int(name))
        if proc is None or proc.ppid != master:
            continue
        role = "aggregator" if proc.aggregator else "workers"
        snap.by_role[role] += proc.own + proc.reaped
        snap.pids[role].append(int(name))
    return snap
