"""Go-compatible profiles of Python processes (``go tool pprof`` reads them), from inside any process.

Profiles (the names of Go's ``/debug/pprof`` paths) and their sample types:

=============  ========================================  ==================================================
``profile``    samples/count, cpu/nanoseconds            CPU: SIGPROF in the main thread, or a thread sampler
``wall``       samples/count, wall/nanoseconds           wall clock, every thread (thread sampler)
``heap``       inuse_objects/count, inuse_space/bytes    tracemalloc window (or snapshot/delta if at boot)
``goroutine``  goroutine/count                           thread stacks now (debug=1/2: text)
``threadcreate`` threadcreate/count                      where each live thread was started
``block``      contentions/count, delay/nanoseconds      off-CPU time in waits, wait=lock|io|sleep label
``mutex``      contentions/count, delay/nanoseconds      the same, lock waits only
``trace``      Chrome trace-event JSON                   a sampled timeline (Perfetto)
=============  ========================================  ==================================================

Every sample has a ``pid`` label (and ``thread`` where it is per thread), so profiles of several
processes merge into one. In-process use::

    from rockstar_mp import profiling
    profiling.write_profile("cpu.pb.gz", "profile", seconds=5)      # samples the other threads
    with profiling.cpu_profile("cpu.pb.gz"):                         # main thread: SIGPROF
        work()
    profiling.write_profile("heap.pb.gz", "heap", seconds=2)
"""
from __future__ import annotations

import json
import threading
import time
import tracemalloc

from .heap import heap_profile
from .proto import encode, merge_raw, new_raw
from .samplers import cpu_profile as cpu_raw
from .samplers import (Busy, ThreadSampler, block_profile, choose_cpu_mode,
                       install_signal_handler, wall_profile)
from .threads import (goroutine_raw, goroutine_text, install_threadcreate_hook, thread_dump,
                      threadcreate_dump, threadcreate_raw, threadcreate_text)
from .trace import trace_document, trace_events

__all__ = ["KINDS", "Busy", "collect", "render", "write_profile", "cpu_profile", "encode", "merge_raw",
           "install_signal_handler", "install_threadcreate_hook", "DEFAULT_SECONDS", "TIMED"]

KINDS = ("profile", "wall", "heap", "goroutine", "threadcreate", "block", "mutex", "trace")
TIMED = ("profile", "wall", "heap", "block", "mutex", "trace")  # take ?seconds=N
DEFAULT_SECONDS = {"profile": 30.0, "wall": 30.0, "heap": 1.0, "block": 5.0, "mutex": 5.0, "trace": 1.0}
PROTO = "application/octet-stream"


def collect(kind: str, seconds: float | None = None, hz: int = 100, gc: bool = False,
            mode: str = "auto", stop: threading.Event | None = None) -> dict:
    """Run one profile in this process (blocking for ``seconds`` where it takes a window).

    Returns a JSON-able result that ``render`` turns into bytes, alone or merged with other
    processes' results. Raises ``Busy`` if a CPU (or heap) profile is already running here.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown profile {kind!r}; one of {', '.join(KINDS)}")
    if seconds is None:
        # heap: with tracemalloc on since boot, no window means a plain snapshot
        seconds = 0.0 if kind == "heap" and tracemalloc.is_tracing() else DEFAULT_SECONDS.get(kind, 0.0)
    if kind == "profile":
        return {"kind": kind, "raw": cpu_raw(seconds, hz, mode, stop)}
    if kind == "wall":
        return {"kind": kind, "raw": wall_profile(seconds, hz, stop)}
    if kind == "heap":
        return {"kind": kind, "raw": heap_profile(seconds, gc, stop=stop)}
    if kind in ("block", "mutex"):
        return {"kind": kind, "raw": block_profile(seconds, hz, kind == "mutex", stop)}
    if kind == "goroutine":
        return {"kind": kind, "threads": thread_dump()}
    if kind == "threadcreate":
        return {"kind": kind, "threads": threadcreate_dump()}
    return {"kind": kind, "events": trace_events(seconds, hz, stop)}


def render(kind: str, results: list[dict], debug: int = 0) -> tuple[str, bytes]:
    """``(content type, body)`` for the results of one or more processes, merged."""
    if kind in ("goroutine", "threadcreate"):
        dump = [t for r in results for t in r["threads"]]
        if debug > 0:
            text = goroutine_text(dump, debug) if kind == "goroutine" else threadcreate_text(dump)
            return "text/plain; charset=utf-8", text.encode()
        raw = goroutine_raw(dump) if kind == "goroutine" else threadcreate_raw(dump)
        return PROTO, encode(raw)
    if kind == "trace":
        events = [e for r in results for e in r["events"]]
        return "application/json", json.dumps(trace_document(events)).encode()
    return PROTO, encode(merge_raw([r["raw"] for r in results]))


def write_profile(path: str, kind: str = "profile", seconds: float | None = None, debug: int = 0,
                  **options) -> str:
    """Collect ``kind`` in this process and write it to ``path`` (profile.proto.gz, text or JSON).

    From the main thread a CPU profile samples the *other* threads (the main thread is the one
    waiting here); to profile the main thread's own work, use ``cpu_profile`` around it.
    """
    if kind == "profile" and threading.current_thread() is threading.main_thread():
        options.setdefault("mode", "thread")
    _, body = render(kind, [collect(kind, seconds, **options)], debug)
    with open(path, "wb") as f:
        f.write(body)
    return path


class cpu_profile:
    """``with cpu_profile("cpu.pb.gz"): work()``: SIGPROF sampling of the main thread around a block
    (main thread only; elsewhere the other threads are sampled by a thread sampler instead)."""

    def __init__(self, path: str | None = None, hz: int = 100) -> None:
        self.path, self.hz = path, max(1, min(int(hz), 1000))
        self.raw: dict | None = None

    def __enter__(self) -> "cpu_profile":
        from . import samplers
        if not install_signal_handler():
            raise RuntimeError("cpu_profile needs the main thread (and SIGPROF free)")
        if not samplers.CPU_LOCK.acquire(blocking=False):
            raise Busy("a CPU profile is already running in this process")
        self._counts: dict = {}
        self._started = time.monotonic_ns()
        samplers._SIG_COUNTS = self._counts
        self._timer = samplers._Timer(self.hz)
        return self

    def __exit__(self, *exc) -> None:
        from . import frames, samplers
        self._timer.disarm()
        samplers._SIG_COUNTS = None
        samplers.CPU_LOCK.release()
        period = 1_000_000_000 // self.hz
        raw = new_raw([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), period,
                      time.monotonic_ns() - self._started, [f"clock: {self._timer.clock}, SIGPROF at {self.hz} Hz"])
        table = frames.FrameTable(raw["frames"])
        import os
        labels = {"pid": str(os.getpid()), "thread": threading.main_thread().name}
        for stack, n in self._counts.items():
            raw["samples"].append([table.stack(stack), [n, n * period], labels])
        self.raw = raw
        if self.path:
            with open(self.path, "wb") as f:
                f.write(encode(raw))


# keep the names importable for callers that want the pieces
_ = (ThreadSampler, choose_cpu_mode, new_raw)
