"""A real worker process for the merge property test (``tests/test_merge_property.py``).

The test starts it (from a forkserver, so it holds nothing of the test process) with a slab it claimed;
the worker attaches to that slab with ``attach_worker``, as a gunicorn worker does, then carries out the
test's commands one at a time over a pipe: declare and update metrics in the process registry, record
requests with the workload recorder (its ring and latency sketches), fill its catalogue. Each command
is answered ``("ok", result)``, ``("full", None)`` when a new series did not fit the slab's catalogue, or
``("error", traceback)``.
"""
from __future__ import annotations

import os
import time
import traceback

from rockstar_mp.environment import RUN_DIR_ENV
from rockstar_mp.metrics import REGISTRY, Counter, Gauge, Histogram
from rockstar_mp.segment import CatalogueFull
from rockstar_mp.worker.attach import attach_worker
from rockstar_mp.worker.workload import RECORDER

FLOOD = "c.flood"  # the counter whose children ``flood`` adds until the catalogue refuses one


class Worker:
    def __init__(self) -> None:
        self.families: dict = {}
        self.flooded = 0

    def declare(self, name: str, kind: str, labelnames: tuple, extra) -> None:
        doc = f"doc of {name}"
        if kind == "counter":
            family = Counter(name, doc, labelnames)
        elif kind == "gauge":
            family = Gauge(name, doc, labelnames, mode=extra)
        else:
            family = Histogram(name, doc, labelnames, buckets=extra)
        self.families[name] = family

    def series(self, name: str, labelvalues: tuple):
        family = self.families[name]
        return family.labels(*labelvalues) if labelvalues else family

    def touch(self, name: str, labelvalues: tuple) -> None:
        self.series(name, labelvalues)

    def inc(self, name: str, labelvalues: tuple, amount: float) -> None:
        self.series(name, labelvalues).inc(amount)

    def gauge(self, name: str, labelvalues: tuple, how: str, value: float, after: float | None) -> float | None:
        """Set, inc or dec a gauge. ``after``: a "last" gauge's previous stamp; wait until the clock has
        passed it, so every update of the test has a stamp newer than the one before (two updates in one
        clock tick would tie). Returns the stamp this update wrote."""
        series = self.series(name, labelvalues)
        if after is not None:
            deadline = time.monotonic() + 1.0
            while time.time() <= after and time.monotonic() < deadline:
                pass
        getattr(series, how)(value)
        return series._vals[series._idx + 1] if after is not None else None

    def observe(self, name: str, labelvalues: tuple, amount: float) -> None:
        self.series(name, labelvalues).observe(amount)

    def record(self, requests: list) -> None:
        for route, status, seconds, start, tenant in requests:
            RECORDER.record("GET", route, status, seconds, start, 100, "", tenant)

    def flood(self) -> int:
        """Add (and count once) children of ``FLOOD`` until the catalogue refuses one; how many fitted."""
        if FLOOD not in self.families:
            self.families[FLOOD] = Counter(FLOOD, f"doc of {FLOOD}", ("i",))
        added = 0
        while True:
            try:
                self.families[FLOOD].labels(str(self.flooded)).inc()
            except CatalogueFull:
                return added
            self.flooded += 1
            added += 1


def serve(conn, segment_path: str, slab: int, generation: int, run_dir: str) -> None:
    """The worker's life: attach, answer commands until ``exit``."""
    os.environ[RUN_DIR_ENV] = run_dir  # its control socket goes there
    attach_worker(segment_path, slab, generation)
    worker = Worker()
    conn.send(("ok", sorted(f.name for f in REGISTRY.families())))
    while True:
        command, args = conn.recv()
        if command == "exit":
            conn.send(("ok", None))
            return  # no detach: the test retires the slab, as gunicorn's master does
        try:
            conn.send(("ok", getattr(worker, command)(*args)))
        except CatalogueFull:
            conn.send(("full", None))
        except Exception:  # noqa: BLE001 - the test shows it
            conn.send(("error", traceback.format_exc()))
