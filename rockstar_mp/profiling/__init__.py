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

The names load on first use: the aggregator, which only renders and merges, never loads a sampler.
``collector.py`` profiles this process; ``rendering.py`` renders results (the aggregator's side);
``channel.py`` is the control channel between the two.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# The public names, and the module each one lives in.
_EXPORTS = {
    "KINDS": "rendering", "TIMED": "rendering", "DEFAULT_SECONDS": "rendering", "render": "rendering",
    "collect": "collector", "write_profile": "collector", "cpu_profile": "collector",
    "Busy": "samplers", "install_signal_handler": "samplers",
    "install_threadcreate_hook": "threads",
    "encode": "proto", "merge_raw": "proto",
}

__all__ = ["KINDS", "Busy", "collect", "render", "write_profile", "cpu_profile", "encode", "merge_raw",
           "install_signal_handler", "install_threadcreate_hook", "DEFAULT_SECONDS", "TIMED"]

if TYPE_CHECKING:
    from .collector import collect, cpu_profile, write_profile
    from .proto import encode, merge_raw
    from .rendering import DEFAULT_SECONDS, KINDS, TIMED, render
    from .samplers import Busy, install_signal_handler
    from .threads import install_threadcreate_hook


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
