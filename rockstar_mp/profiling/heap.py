"""The heap profile: in-use memory by allocation site, from tracemalloc.

tracemalloc slows a process 8-20x while it traces, so by default it runs only for an on-demand
window: ``heap_profile(seconds=N)`` starts it, waits N s, snapshots what was allocated during the
window and is still alive, and stops it. If tracemalloc was started at boot (``heap_tracemalloc_at_boot``,
or by the user), ``seconds=0`` is a plain snapshot of everything traced and ``seconds=N`` a true delta
(what grew, or shrank, over the window). Sample types: inuse_objects/count, inuse_space/bytes.
"""
from __future__ import annotations

import gc
import json
import linecache
import os
import re
import threading
import time
import tracemalloc

from . import native
from .proto import new_raw

HEAP_LOCK = native.allocate_lock()
DEFAULT_FRAMES = 16
MAX_SITES = 5_000  # allocation sites (distinct tracebacks) kept in one profile
_HERE = os.path.dirname(os.path.abspath(__file__))


_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+(\w+)")


class _Functions:
    """(filename, line) -> ``(module.qualname, first line)`` of the function around that line.

    tracemalloc records no function names. One pass over each source file (by indentation, skipping
    the inside of triple-quoted strings) maps every line to its enclosing def/class, without
    compiling anything; the names match ``co_qualname`` for functions, methods and closures."""

    def __init__(self) -> None:
        self._files: dict[str, tuple] = {}

    def name(self, filename: str, line: int) -> tuple[str, int]:
        entry = self._files.get(filename)
        if entry is None:
            entry = self._files[filename] = self._scan(filename)
        module, scopes, by_line = entry
        scope = by_line[line - 1] if 0 < line <= len(by_line) else 0
        qualname, first = scopes[scope]
        return f"{module}.{qualname}", first

    @staticmethod
    def _scan(filename: str) -> tuple:
        from .frames import module_name
        scopes: list[tuple[str, int]] = [("<module>", 1)]
        by_line: list[int] = []
        stack: list[tuple[int, str, str, int]] = []  # (indent, kind, name, scope index)
        in_string: str | None = None
        for n, text in enumerate(linecache.getlines(filename), 1):
            stripped = text.strip()
            if in_string is None and stripped and not stripped.startswith(("#", ")", "]", "}")):
                indent = len(text) - len(text.lstrip())
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                m = _DEF.match(text)
                if m is not None:
                    names = []
                    for _, kind, name, _ in stack:
                        names.append(name)
                        if kind == "def":
                            names.append("<locals>")
                    names.append(m.group(3))
                    scopes.append((".".join(names), n))
                    stack.append((indent, m.group(2), m.group(3), len(scopes) - 1))
            by_line.append(stack[-1][3] if stack else 0)
            for quote in ('"""', "'''"):
                if text.count(quote) % 2 == 1 and in_string in (None, quote):
                    in_string = None if in_string == quote else quote
        return module_name(filename), scopes, by_line


def _ours(traceback) -> bool:
    """Allocated by tracemalloc's module or by this package (a previous snapshot, our own tables)."""
    filename = traceback[-1].filename if len(traceback) else ""
    return filename == tracemalloc.__file__ or filename.startswith(_HERE)


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
                before = tracemalloc.take_snapshot()
                _wait(seconds, stop)
        else:
            tracemalloc.start(max(1, int(nframes)))
            try:
                _wait(seconds, stop)
                if collect:
                    gc.collect()
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
        if at_boot:
            if collect:
                gc.collect()
            snapshot = tracemalloc.take_snapshot()
            # Reading the snapshot allocates a lot, and every allocation is traced here (8-20x slower):
            # do it in a forked child that stops tracing first (its copy of the snapshot stays).
            return _in_child(lambda: _process(snapshot, before, seconds, at_boot, started))
        return _process(snapshot, before, seconds, at_boot, started)
    finally:
        HEAP_LOCK.release()


def _process(snapshot, before, seconds: float, at_boot: bool, started: int) -> dict:
    if before is not None:
        stats = [(s.traceback, s.size_diff, s.count_diff)
                 for s in snapshot.compare_to(before, "traceback")
                 if (s.size_diff or s.count_diff) and not _ours(s.traceback)]
        how = f"delta over {seconds:g} s (tracemalloc running since boot)"
    else:
        stats = [(s.traceback, s.size, s.count) for s in snapshot.statistics("traceback")
                 if not _ours(s.traceback)]
        how = ("snapshot (tracemalloc running since boot)" if at_boot
               else f"allocated during a {seconds:g} s tracemalloc window and still alive")
    if len(stats) > MAX_SITES:  # the biggest sites only
        stats.sort(key=lambda s: -abs(s[1]))
        rest = stats[MAX_SITES:]
        stats = stats[:MAX_SITES]
        how += f"; {len(rest)} smaller sites ({sum(r[1] for r in rest)} bytes) left out"
    return _raw(stats, time.monotonic_ns() - started, how)


def _in_child(compute) -> dict:
    """``compute()`` in a forked child with tracemalloc off; its JSON comes back through a pipe.
    Falls back to computing here if fork fails."""
    try:
        r, w = os.pipe()
        pid = native.original("os", "fork")()  # gevent's would reinitialise its hub in the child
    except OSError:
        return compute()
    if pid == 0:  # the child: no atexit handlers, no cleanup of the parent's state (os._exit)
        status = 1
        try:
            os.close(r)
            tracemalloc.stop()
            data = json.dumps(compute(), separators=(",", ":")).encode()
            with os.fdopen(w, "wb") as f:
                f.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = native.original("os", "waitpid")(pid, 0)
    if status != 0 or not data:
        raise RuntimeError(f"the heap snapshot's child process failed (wait status {status})")
    return json.loads(data)


def _wait(seconds: float, stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        native.sleep(seconds)


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
