"""Figure 14: rockstar_mp.prometheus (prometheus_client's classes) against the native API it is built on.

    .venv/bin/python -m benchmarks.run --only 14

``Counter.inc()``, ``.labels(a, b).inc()`` on an existing child and ``Histogram.observe()`` (default
buckets), each through the shim and through ``rockstar_mp.metrics``, bound to a slab of a real segment as in
a worker. One fresh interpreter measures both sides in pairs of short runs (``CHUNK`` calls each, the side
going first alternating), timed with the process's CPU time (``time.process_time``): on a shared machine
the speed drifts between runs seconds apart, not between the two halves of a pair, so each pair gives a
ratio and the figure is the median ratio (with each side's median cost). Every run is printed. Target: the
shim within 10 % of native.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

from .settings import ROOT

FIGURE = "14"
TARGET = 1.10  # shim / native, per call
PAIRS = 41  # pairs of runs per operation
CHUNK = 20_000  # calls per run
OPERATIONS = (("counter", "Counter.inc()", "c.inc()"),
              ("labels", ".labels(a, b).inc()", "lab.labels('GET', '200').inc()"),
              ("histogram", "Histogram.observe()", "h.observe(0.3)"))


def _metrics(module, registry):
    if module.__name__ == "rockstar_mp.prometheus":
        return (module.Counter("bench_c", "doc", registry=registry),
                module.Counter("bench_l", "doc", ["method", "status"], registry=registry),
                module.Histogram("bench_h", "doc", registry=registry))
    return (module.Counter("bench.c", "doc", registry=registry),
            module.Counter("bench.l", "doc", ["method", "status"], registry=registry),
            module.Histogram("bench.h", "doc", registry=registry))


def measure(directory: str) -> dict:
    """Both sides' per-call CPU seconds, every repeat, in this process (the child)."""
    from rockstar_mp import metrics, prometheus
    from rockstar_mp.segment import Geometry, Segment, process_start
    from rockstar_mp.worker.attach import SlabStore

    seg = Segment.create(directory, Geometry())
    try:
        slab, _ = seg.claim_slab()
        seg.bind_slab(slab, os.getpid(), process_start(os.getpid()))
        native_registry = metrics.Registry()
        shim_registry = prometheus.CollectorRegistry()
        sides = {"native": _metrics(metrics, native_registry), "shim": _metrics(prometheus, shim_registry)}
        for _, labelled, _ in sides.values():
            labelled.labels("GET", "200")  # the child exists before timing
        store = SlabStore(seg, slab)
        native_registry.bind(store)
        shim_registry._native.bind(store)
        for counter, _, _ in sides.values():
            assert counter._vals.obj is seg.doubles.obj, "a counter is not in the slab"
        runs: dict = {op: {side: [] for side in sides} for op, _, _ in OPERATIONS}
        for op, _, stmt in OPERATIONS:
            timers = {side: timeit.Timer(stmt, globals=dict(zip("c lab h".split(), sides[side], strict=True)),
                                         timer=time.process_time) for side in sides}
            for timer in timers.values():
                timer.timeit(CHUNK)  # warm-up
            for pair in range(PAIRS):
                for side in ("native", "shim") if pair % 2 == 0 else ("shim", "native"):
                    runs[op][side].append(timers[side].timeit(CHUNK) / CHUNK)
        return runs
    finally:
        seg.close()
        os.unlink(seg.path)


def run_figure(notes: list[str]) -> None:
    """Run the child, print every run and the verdicts."""
    with tempfile.TemporaryDirectory(prefix="rockstar-bench-shim-") as tmp:
        done = subprocess.run([sys.executable, "-m", "benchmarks.prometheus_shim", tmp], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        notes.append(f"figure 14 failed: {done.stderr.strip()[-2000:]}")
        return
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    print()
    print(f"rockstar_mp.prometheus against the native API (figure 14; CPU time per call, {PAIRS} pairs of "
          f"{CHUNK:,}-call runs, medians; load average {load})")
    print(f"{'#':>3}  {'operation':<22}{'native':>10}{'shim':>10}{'ratio':>8}{'target':>9}  verdict")
    for op, title, _ in OPERATIONS:
        native, shim = runs[op]["native"], runs[op]["shim"]
        ratio = statistics.median(s / n for s, n in zip(shim, native, strict=True))
        print(f"{FIGURE:>3}  {title:<22}{statistics.median(native) * 1e9:>8.1f}ns"
              f"{statistics.median(shim) * 1e9:>8.1f}ns{ratio:>8.3f}{'<= ' + str(TARGET):>9}  "
              f"{'PASS' if ratio <= TARGET else 'FAIL'}")
    for op, title, _ in OPERATIONS:
        for side in ("native", "shim"):
            print(f"     {title} {side}, every run (ns): " + ", ".join(f"{v * 1e9:.0f}" for v in runs[op][side]))


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
