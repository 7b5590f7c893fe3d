"""A Chrome trace-event timeline (JSON; opens in Perfetto or chrome://tracing), built from samples.

The thread sampler records every thread's stack every 1/hz s; consecutive samples that share a
prefix of the stack extend the same slices, so a function that ran for 30 ms across three samples is
one 30 ms slice. It costs what the wall sampler costs, nothing more (no tracing hooks). Timestamps are
wall-clock microseconds, so several processes' events line up in one file.
"""
from __future__ import annotations

import os
import threading

from . import frames as _frames
from .samplers import ThreadSampler


def trace_events(seconds: float, hz: int = 100, stop: threading.Event | None = None) -> list[dict]:
    sampler = ThreadSampler(hz, trace=True).run(seconds, stop)
    return events_from_samples(sampler.trace, sampler.names, 1_000_000 // sampler.hz)


def events_from_samples(samples: list, names: dict, interval_us: int) -> list[dict]:
    pid = os.getpid()
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": f"worker {pid}"}}]
    open_stacks: dict[int, list] = {}
    last_ts: dict[int, int] = {}
    named: dict = {}

    def name_of(code) -> str:
        n = named.get(code)
        if n is None:
            n = named[code] = _frames.function_name(code)
        return n

    def tid_of(ident: int) -> int:
        return names.get(ident, (None, ""))[0] or ident & 0x7FFFFFFF

    for ts, ident, stack in samples:
        tid = tid_of(ident)
        if ident not in open_stacks:
            open_stacks[ident] = []
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": names.get(ident, (None, f"thread-{ident}"))[1]}})
        current = open_stacks[ident]
        new = [name_of(code) for code, _ in reversed(stack)]  # root first
        common = 0
        while common < len(current) and common < len(new) and current[common] == new[common]:
            common += 1
        for name in reversed(current[common:]):
            events.append({"ph": "E", "name": name, "pid": pid, "tid": tid, "ts": ts})
        for name in new[common:]:
            events.append({"ph": "B", "name": name, "cat": "python", "pid": pid, "tid": tid, "ts": ts})
        open_stacks[ident] = new
        last_ts[ident] = ts
    for ident, current in open_stacks.items():
        end = last_ts[ident] + interval_us
        for name in reversed(current):
            events.append({"ph": "E", "name": name, "pid": pid, "tid": tid_of(ident), "ts": end})
    return events
