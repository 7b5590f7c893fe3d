"""The heap profile: in-use memory by allocation site, from tracemalloc.

tracemalloc slows a process 8-20x while it traces, so by default it runs only for an on-demand
window: ``heap_profile(seconds=N)`` starts it, looks at the traced blocks every ``LOOK_SECONDS`` to count
what each site allocates (``alloc_*``), snapshots what was allocated during the window and is still alive
(``inuse_*``), and stops it. If tracemalloc was started at boot (``heap_tracemalloc_at_boot``, or by the
user), ``seconds=0`` is a plain snapshot of everything traced (a leak made any time before shows, with
its line) and ``seconds=N`` a true delta (what grew, or shrank, over the window). Sample types, Go's:
alloc_objects/count, alloc_space/bytes, inuse_objects/count, inuse_space/bytes; ``allocs=True`` (Go's
``allocs`` profile) only makes ``alloc_space`` the default.
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
LOOK_SECONDS = 0.1  # how often a window looks at the traced blocks to count what was allocated
SAMPLE_TYPES = (("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"),
                ("inuse_space", "bytes"))  # Go's heap profile's, in Go's order
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
            # a snapshot names thousands of frames in hundreds of files: cheap tests first
            body = text.lstrip() if in_string is None else ""
            if body and body[0] not in "#)]}":
                indent = len(text) - len(body)
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                m = _DEF.match(text) if body.startswith(("def", "class", "async")) else None
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
            if '"""' in text or "'''" in text:
                for quote in ('"""', "'''"):
                    if text.count(quote) % 2 == 1 and in_string in (None, quote):
                        in_string = None if in_string == quote else quote
        return module_name(filename), scopes, by_line


def _ours(frames: tuple) -> bool:
    """Allocated by tracemalloc's module or by this package (a previous snapshot, our own tables)."""
    filename = frames[0][0] if frames else ""
    return filename == tracemalloc.__file__ or filename.startswith(_HERE)


def _sites(snapshot) -> dict:
    """``{frames: [size, count]}`` per allocation site, ``frames`` a tuple of ``(filename, line)``,
    the most recent first. Grouped from the snapshot's raw traces, as tracemalloc returns them: its
    ``statistics()`` builds an object per frame and takes 5x longer (seconds for a big heap)."""
    traces = getattr(snapshot.traces, "_traces", None)
    sites: dict = {}
    if not isinstance(traces, list) or (traces and not _raw_trace(traces[0])):
        for stat in snapshot.statistics("traceback"):  # another Python's layout: the public way
            frames = tuple((f.filename, f.lineno) for f in reversed(stat.traceback))
            sites[frames] = [stat.size, stat.count]
        return sites
    for trace in traces:
        site = sites.get(trace[2])
        if site is None:
            sites[trace[2]] = [trace[1], 1]
        else:
            site[0] += trace[1]
            site[1] += 1
    return sites


def _raw_trace(trace) -> bool:
    """Is ``trace`` tracemalloc's ``(domain, size, ((filename, line), ...) most recent first, ...)``?"""
    return (isinstance(trace, tuple) and len(trace) >= 3 and isinstance(trace[1], int)
            and isinstance(trace[2], tuple) and all(isinstance(f, tuple) and len(f) == 2 for f in trace[2]))


def heap_profile(seconds: float = 1.0, collect: bool = False, nframes: int = DEFAULT_FRAMES,
                 stop: threading.Event | None = None, allocs: bool = False, packed: bool = False) -> dict | str:
    """Memory by allocation site (raw form): ``alloc_objects``, ``alloc_space``, ``inuse_objects``,
    ``inuse_space``, the default ``inuse_space`` (``alloc_space`` when ``allocs``: Go's ``allocs``).

    ``packed``: with tracemalloc running since boot, return the raw profile as the JSON text the
    snapshot's child wrote, undecoded: decoding it here, where every allocation is traced, costs a
    second of CPU for a big heap, and the aggregator decodes it anyway.

    >>> heap_profile(0.5)["sample_types"][1]
    ['alloc_space', 'bytes']
    """
    from .samplers import Busy
    if not HEAP_LOCK.acquire(blocking=False):
        raise Busy("a heap profile is already running in this process")
    try:
        started = time.monotonic_ns()
        pid = os.getpid()  # the worker's: the snapshot is read in a forked child
        if tracemalloc.is_tracing():
            before = _since_boot(seconds, collect, stop)
            # Taking and reading a snapshot allocates a lot, and every allocation is traced here (8-20x
            # slower): that runs in a forked child, which stops tracing once it holds the snapshot.
            text = _in_child(lambda: _raw(*_boot_stats(_final_snapshot(), before, seconds),
                                          time.monotonic_ns() - started, pid, allocs))
            return text if packed else json.loads(text)
        stats, how = _window(seconds, collect, nframes, stop)
        return _raw(stats, how, time.monotonic_ns() - started, pid, allocs)
    finally:
        HEAP_LOCK.release()


class _Allocated:
    """What each allocation site allocated over a window, from looks at the traced blocks: each look
    adds what every site grew by since the previous one. A block allocated and freed between two
    looks is missed (tracemalloc keeps no freed block), so the figures are lower bounds."""

    def __init__(self) -> None:
        self.previous: dict = {}  # frames -> [size, count] at the previous look
        self.total: dict = {}  # frames -> [size, count] allocated so far

    def look(self, snapshot) -> dict:
        now = _sites(snapshot)
        for traceback, (size, count) in now.items():
            old_size, old_count = self.previous.get(traceback, (0, 0))
            if size > old_size or count > old_count:
                total = self.total.setdefault(traceback, [0, 0])
                total[0] += max(0, size - old_size)
                total[1] += max(0, count - old_count)
        self.previous = now
        return now


def _window(seconds: float, collect: bool, nframes: int, stop: threading.Event | None) -> tuple[list, str]:
    """tracemalloc for ``seconds``: what was allocated meanwhile (looks every ``LOOK_SECONDS``), and
    what of it is still alive at the end."""
    allocated = _Allocated()
    tracemalloc.start(max(1, int(nframes)))
    try:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
            _wait(min(LOOK_SECONDS, remaining), stop)
            if deadline - time.monotonic() > LOOK_SECONDS / 2:  # the last look is the final snapshot
                allocated.look(tracemalloc.take_snapshot())
        if collect:
            gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    inuse = allocated.look(snapshot)
    stats = [(tb, size, count, *allocated.total.get(tb, (0, 0)))
             for tb, (size, count) in inuse.items()]
    stats += [(tb, 0, 0, size, count) for tb, (size, count) in allocated.total.items() if tb not in inuse]
    return stats, (f"allocated during a {seconds:g} s tracemalloc window (alloc_*: seen by looks every "
                   f"{LOOK_SECONDS:g} s, a lower bound) and still alive at its end (inuse_*)")


def _since_boot(seconds: float, collect: bool, stop: threading.Event | None):
    """tracemalloc running since boot: the snapshot at the start of the ``seconds`` window (None when
    0: a snapshot of everything alive), once the window has passed."""
    before = None
    if seconds > 0:
        before = tracemalloc.take_snapshot()
        _wait(seconds, stop)
    if collect:
        gc.collect()
    return before


def _final_snapshot():
    """The snapshot, taken in the child, which then stops tracing (its own allocations need none)."""
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return snapshot


def _boot_stats(snapshot, before, seconds: float) -> tuple[list, str]:
    """The rows and the description of a since-boot profile: everything alive, or the change over
    the window (inuse_* the difference, alloc_* what grew)."""
    after = _sites(snapshot)
    if before is None:
        rows = [(frames, size, count, size, count) for frames, (size, count) in after.items()]
        return rows, ("snapshot of everything alive (tracemalloc running since boot; alloc_* = inuse_*: "
                      "freed blocks are not kept)")
    earlier = _sites(before)
    rows = []
    for frames in after.keys() | earlier.keys():
        size, count = after.get(frames, (0, 0))
        old_size, old_count = earlier.get(frames, (0, 0))
        if size != old_size or count != old_count:
            rows.append((frames, size - old_size, count - old_count, max(0, size - old_size),
                         max(0, count - old_count)))
    return rows, f"delta over {seconds:g} s (tracemalloc running since boot; alloc_*: the sites' growth)"


def _in_child(compute) -> str:
    """``compute()`` in a forked child; its JSON text comes back through a pipe. Falls back to
    computing here if fork fails."""
    try:
        r, w = os.pipe()
        pid = native.original("os", "fork")()  # gevent's would reinitialise its hub in the child
    except OSError:
        return json.dumps(compute(), separators=(",", ":"))
    if pid == 0:  # the child: no atexit handlers, no cleanup of the parent's state (os._exit)
        status = 1
        try:
            os.close(r)
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
    return data.decode()


def _wait(seconds: float, stop: threading.Event | None) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        native.sleep(seconds)


def _raw(stats, how: str, duration_ns: int, pid: int, allocs: bool) -> dict:
    """``stats``: ``(frames, inuse size, inuse count, alloc size, alloc count)`` rows, ``frames`` as
    ``_sites`` gives them."""
    stats = [row for row in stats if not _ours(row[0])]
    if len(stats) > MAX_SITES:  # the biggest sites only
        stats.sort(key=lambda row: -max(abs(row[1]), row[3]))
        rest = stats[MAX_SITES:]
        stats = stats[:MAX_SITES]
        how += f"; {len(rest)} smaller sites ({sum(r[1] for r in rest)} bytes in use) left out"
    raw = new_raw(SAMPLE_TYPES, ("space", "bytes"), 1, duration_ns,
                  [f"{'allocs' if allocs else 'heap'}: {how}; clock: none (tracemalloc)"])
    raw["default_sample_type"] = "alloc_space" if allocs else "inuse_space"
    names = _Functions()
    index: dict = {}
    labels = {"pid": str(pid)}
    for frames, size, count, alloc_size, alloc_count in stats:
        stack = []
        for key in frames:  # (filename, line), the most recent first: pprof's order
            i = index.get(key)
            if i is None:
                name, start = names.name(*key)
                i = index[key] = len(raw["frames"])
                raw["frames"].append([name, key[0], key[1], start])
            stack.append(i)
        raw["samples"].append([stack, [alloc_count, alloc_size, count, size], labels])
    return raw
