"""The heap profile: in-use memory by allocation site, from tracemalloc.

tracemalloc slows a process 8-20x while it traces, so by default it runs only for an on-demand
window: ``heap_profile(seconds=N)`` starts it, waits N s, snapshots what was allocated during the
window and is still alive, and stops it. If tracemalloc was started at boot (``heap_tracemalloc_at_boot``,
or by the user), ``seconds=0`` is a plain snapshot of everything traced and ``seconds=N`` a true delta
(what grew, or shrank, over the window). Sample types: inuse_objects/count, inuse_space/bytes.
"""
from __future__ import annotations

import gc
import linecache
import os
import re
import threading
import time
import tracemalloc

from .proto import new_raw

HEAP_LOCK = threading.Lock()
DEFAULT_FRAMES = 16
MAX_SITES = 20_000  # allocation sites (distinct tracebacks) kept in one profile
_HERE = os.path.dirname(os.path.abspath(__file__))


_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+(\w+)")


class _Functions:
    """(filename, line) -> ``(module.qualname, first line)`` of the function around that line.

    tracemalloc records no function names; reading the source upward (by indentation) is cheap and
    needs no compilation: the name matches ``co_qualname`` for functions, classes and closures."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple] = {}

    def name(self, filename: str, line: int) -> tuple[str, int]:
        key = (filename, line)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._lookup(filename, line)
        return found

    @staticmethod
    def _lookup(filename: str, line: int) -> tuple[str, int]:
        from .frames import module_name
        module = module_name(filename)
        lines = linecache.getlines(filename)
        if not lines or not 0 < line <= len(lines):
            return f"{module}.<module>", 1
        text = lines[line - 1]
        indent = len(text) - len(text.lstrip()) if text.strip() else 1 << 30
        parts: list[tuple[str, str]] = []
        first = 0
        for n in range(line - 1, -1, -1):
            m = _DEF.match(lines[n])
            if m is None:
                stripped = lines[n].strip()
                if stripped and not stripped.startswith(("#", ")", "]", "}", "@")) and \
                        len(lines[n]) - len(lines[n].lstrip()) == 0 and n != line - 1:
                    if not parts:
                        break  # top-level code above us: module level
                continue
            depth = len(m.group(1))
            if depth < indent or (n == line - 1 and not parts):
                parts.append((m.group(2), m.group(3)))
                if not first:
                    first = n + 1
                indent = depth
                if depth == 0:
                    break
        if not parts:
            return f"{module}.<module>", 1
        names = []
        for i, (kind, name) in enumerate(reversed(parts)):
            names.append(name)
            if kind == "def" and i < len(parts) - 1:
                names.append("<locals>")
        return f"{module}.{'.'.join(names)}", first


def _filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                   tracemalloc.Filter(False, os.path.join(_HERE, "*"))])


def heap_profile(seconds: float = 1.0, collect: bool = False, nframes: int = DEFAULT_FRAMES,
                 stop: threading.Event | None = None) -> dict:
    """In-use memory by allocation site (raw form)."""
    from .samplers import Busy
    if not HEAP_LOCK.acquire(blocking=False):
        raise Busy("a heap profile is already running in this process")
    try:
        started = time.monotonic_ns()
        at_boot = tracemalloc.is_tracing()
        before = None
        if at_boot:
            if seconds > 0:
                before = _filtered(tracemalloc.take_snapshot())
                _wait(seconds, stop)
        else:
            tracemalloc.start(max(1, int(nframes)))
            try:
                _wait(seconds, stop)
                if collect:
                    gc.collect()
                snapshot = _filtered(tracemalloc.take_snapshot())
            finally:
                tracemalloc.stop()
        if at_boot:
            if collect:
                gc.collect()
            snapshot = _filtered(tracemalloc.take_snapshot())
        if before is not None:
            stats = [(s.traceback, s.size_diff, s.count_diff)
                     for s in snapshot.compare_to(before, "traceback") if s.size_diff or s.count_diff]
            how = f"delta over {seconds:g} s (tracemalloc running since boot)"
        else:
            stats = [(s.traceback, s.size, s.count) for s in snapshot.statistics("traceback")]
            how = ("snapshot (tracemalloc running since boot)" if at_boot
                   else f"allocated during a {seconds:g} s tracemalloc window and still alive")
        if len(stats) > MAX_SITES:  # the biggest sites; the rest is one summary sample
            stats.sort(key=lambda s: -abs(s[1]))
            rest = stats[MAX_SITES:]
            stats = stats[:MAX_SITES]
            how += f"; {len(rest)} smaller sites ({sum(r[1] for r in rest)} bytes) left out"
        return _raw(stats, time.monotonic_ns() - started, how)
    finally:
        HEAP_LOCK.release()


def _wait(seconds: float, stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        time.sleep(seconds)


def _raw(stats, duration_ns: int, how: str) -> dict:
    raw = new_raw([("inuse_objects", "count"), ("inuse_space", "bytes")], ("space", "bytes"), 1,
                  duration_ns, [f"heap: {how}; clock: none (tracemalloc)"])
    raw["default_sample_type"] = "inuse_space"
    names = _Functions()
    index: dict = {}
    labels = {"pid": str(os.getpid())}
    for traceback, size, count in stats:
        stack = []
        for fr in reversed(list(traceback)):  # tracemalloc lists the oldest frame first
            key = (fr.filename, fr.lineno)
            i = index.get(key)
            if i is None:
                name, start = names.name(fr.filename, fr.lineno)
                i = index[key] = len(raw["frames"])
                raw["frames"].append([name, fr.filename, fr.lineno, start])
            stack.append(i)
        raw["samples"].append([stack, [count, size], labels])
    return raw
