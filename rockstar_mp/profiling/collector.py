"""Profiling this process: ``collect`` one profile (what a worker runs when the aggregator asks), write
one to a file, or sample the main thread around a block (``cpu_profile``)."""
from __future__ import annotations

import threading
import tracemalloc

from . import samplers, thread_signals
from .heap import heap_profile
from .proto import encode
from .rendering import DEFAULT_SECONDS, KINDS, render
from .samplers import block_profile, install_signal_handler, wall_profile
from .threads import thread_dump, threadcreate_dump
from .trace import trace_events


def collect(kind: str, seconds: float | None = None, hz: int = 100, gc: bool = False,
            mode: str = "auto", stop: threading.Event | None = None, internal: bool = False) -> dict:
    """Run one profile in this process (blocking for ``seconds`` where it takes a window).

    rockstar-mp's own threads (control, monitor, profile) are left out of the CPU, wall, block,
    mutex and goroutine profiles unless ``internal``.

    Returns a JSON-able result that ``render`` turns into bytes, alone or merged with other
    processes' results (a heap profile may carry its raw form as JSON text, ``raw_json``). Raises
    ``Busy`` if a CPU (or heap) profile is already running here.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown profile {kind!r}; one of {', '.join(KINDS)}")
    if seconds is None:
        # heap: with tracemalloc on since boot, no window means a plain snapshot
        seconds = 0.0 if kind == "heap" and tracemalloc.is_tracing() else DEFAULT_SECONDS.get(kind, 0.0)
    if kind == "profile":
        return {"kind": kind, "raw": thread_signals.cpu_profile(seconds, hz, mode, stop, internal)}
    if kind == "wall":
        return {"kind": kind, "raw": wall_profile(seconds, hz, stop, internal)}
    if kind in ("heap", "allocs"):
        raw = heap_profile(seconds, gc, stop=stop, allocs=kind == "allocs", packed=True)
        # packed (tracemalloc since boot): the JSON text as the snapshot's child wrote it, for render
        return {"kind": kind, "raw_json": raw} if isinstance(raw, str) else {"kind": kind, "raw": raw}
    if kind in ("block", "mutex"):
        return {"kind": kind, "raw": block_profile(seconds, hz, kind == "mutex", stop, internal)}
    if kind == "goroutine":
        return {"kind": kind, "threads": thread_dump(internal)}
    if kind == "threadcreate":
        return {"kind": kind, "threads": threadcreate_dump()}
    return {"kind": kind, "events": trace_events(seconds, hz, stop)}


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
        if not install_signal_handler():
            raise RuntimeError("cpu_profile needs the main thread (and SIGPROF free)")
        samplers.take_cpu_profile_slot()
        self._profile = samplers.SignalProfile(self.hz)
        self._profile.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.raw = self._profile.stop()
        finally:
            samplers.CPU_LOCK.release()
        if self.path:
            with open(self.path, "wb") as f:
                f.write(encode(self.raw))
