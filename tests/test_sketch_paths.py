"""The latency-bucket formula is written three times: ``sketch.bucket_index`` (the reference the quantile
property test checks), the Python request path (``WorkloadRecorder.record``, inlined for speed) and the C
path (``_hotpath.c``). Durations recorded through each path must land in ``bucket_index``'s buckets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from rockstar_mp.aggregator.merge import Merger
from rockstar_mp.aggregator.workload import aggregates, sketch_totals
from rockstar_mp.segment import Segment
from rockstar_mp.sketch import BUCKETS_PER_BLOCK, block_first, bucket_index
from tests.helpers import ROOT

CHILD = """
import json, sys
from rockstar_mp.segment import Segment
from rockstar_mp.worker import accelerator
from rockstar_mp.worker.attach import attach_worker
from rockstar_mp.worker.workload import RECORDER
path, slab, generation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
attach_worker(Segment.attach(path), slab, generation)
for seconds in json.load(sys.stdin):
    RECORDER.record("GET", "/r", 200, seconds, 0.0, 0, "", "t")
print(json.dumps(accelerator.hotpath is not None))
"""


def _record(segment: Segment, durations: list[float], pure_python: bool, environ: dict | None = None) -> None:
    """Record a request of each of ``durations`` in a worker process attached to ``segment``."""
    slab, generation = segment.claim_slab()
    env = dict(os.environ, ROCKSTAR_PURE_PYTHON="1" if pure_python else "0", **(environ or {}))
    done = subprocess.run([sys.executable, "-c", CHILD, segment.path, str(slab), str(generation)], cwd=ROOT,
                          env=env, input=json.dumps(durations), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    used_c = json.loads(done.stdout.splitlines()[-1])
    if pure_python:
        assert not used_c
    elif os.environ.get("CI") == "true":
        assert used_c, "the C request path is not built"


def _record_in_a_worker(segment: Segment, durations: list[float], pure_python: bool) -> dict[int, float]:
    """The sketch of the requests of ``durations`` recorded in a worker process (the same in each dimension)."""
    _record(segment, durations, pure_python)
    snap = Merger(segment).merge()
    by_dim = aggregates(snap, sketch_totals(snap), raw=True)
    sketches = [by_dim[dim][value][0] for dim, value in (("route", "/r"), ("status", "2xx"), ("tenant", "t"))]
    assert sketches[0] == sketches[1] == sketches[2], sketches  # each dimension counts every request alike
    return sketches[0]


@settings(max_examples=12, deadline=None)
@given(st.lists(st.floats(min_value=1e-7, max_value=1e4, allow_nan=False), min_size=1, max_size=40))
def test_both_request_paths_bucket_as_the_sketch_does(tmp_path_factory, durations):
    expected = Counter(bucket_index(seconds) for seconds in durations)
    for pure_python in (False, True):
        segment = Segment.create(str(tmp_path_factory.mktemp("seg")))
        try:
            sketch = _record_in_a_worker(segment, durations, pure_python)
        finally:
            segment.close()
        assert {index: int(count) for index, count in sketch.items()} == dict(expected), (
            "C path" if not pure_python else "Python path")


FORKING = """
import json, os, sys
from rockstar_mp.segment import Segment
from rockstar_mp.worker.attach import attach_worker
from rockstar_mp.worker.workload import RECORDER
path, slab, generation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
attach_worker(Segment.attach(path), slab, generation)
route, tenant = "/r", "t"  # the same objects on both sides of the fork, as a framework's template is
def record(n):
    for _ in range(n):
        RECORDER.record("GET", route, 200, 0.01, 0.0, 0, "", tenant)
record(3)
recorded, hold = os.pipe(), os.pipe()
child = os.fork()
if child == 0:
    record(2)
    os.write(recorded[1], b"1")
    os.read(hold[0], 1)  # alive (its slab live) until the parent is told to go
    os._exit(0)
os.read(recorded[0], 1)
record(1)
print(json.dumps([os.getpid(), child]), flush=True)
sys.stdin.read()  # the test has merged
os.write(hold[1], b"1")
os.waitpid(child, 0)
"""


def _route_requests(snap, pid: int) -> float:
    """The requests a worker's own slab holds in route "/r"'s latency buckets (blocks of buckets)."""
    worker = snap.worker(pid)
    assert worker is not None, f"no slab of pid {pid} among {[w.slot.pid for w in snap.workers]}"
    return sum(sum(worker.values[offset:offset + snap.series[sid].n]) for sid, offset in worker.cache.series
               if snap.series[sid].key.name == "rockstar.workload.bucket"
               and snap.series[sid].key.labelvalues[:2] == ("route", "/r"))


def test_a_forked_child_records_in_its_own_slab(tmp_path):
    """The C path keeps the last combination it used: a child forked after it must not write its
    parent's cells with it (it failed when the fork's rebinding left that cache in place)."""
    for pure_python in (False, True):
        segment = Segment.create(str(tmp_path / ("py" if pure_python else "c")))
        try:
            slab, generation = segment.claim_slab()
            env = dict(os.environ, ROCKSTAR_PURE_PYTHON="1" if pure_python else "0")
            worker = subprocess.Popen([sys.executable, "-c", FORKING, segment.path, str(slab), str(generation)],
                                      cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                parent, child = json.loads(worker.stdout.readline() or "null")
                snap = Merger(segment).merge()
            finally:
                worker.communicate("", timeout=60)
            assert worker.returncode == 0
            assert (_route_requests(snap, parent), _route_requests(snap, child)) == (4, 2), (
                "Python path" if pure_python else "C path")
        finally:
            segment.close()


TIGHT_CELLS = 180  # 60 a dimension: room for route "/r" and tenant "t" to hold two blocks, none for "2xx" but its own


def _nearest(index: int, firsts: set[int]) -> int:
    """The bucket a request of bucket ``index`` is counted in by a value holding blocks at ``firsts``: its
    own, else the nearest one held (the lower on a tie)."""
    cells = [first + k for first in firsts for k in range(BUCKETS_PER_BLOCK)]
    return min(cells, key=lambda cell: (abs(cell - index), cell))


def _held_blocks(snap) -> dict[tuple[str, str], set[int]]:
    held: dict[tuple[str, str], set[int]] = {}
    for info in snap.series:
        if info.key.name == "rockstar.workload.bucket":
            dim, value, first = info.key.labelvalues
            held.setdefault((dim, value), set()).add(int(first))
    return held


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=100.0, allow_nan=False), min_size=1, max_size=60))
def test_a_value_without_room_for_a_block_counts_each_request_in_its_nearest_bucket(tmp_path_factory, durations):
    """With the sketches' cells nearly gone, each dimension still counts every request once: in its own
    bucket while the value holds that bucket's block, else in the nearest bucket it holds, the request
    counted in ``rockstar.workload.overflow{dimension="bucket"}`` once. The same on both request paths."""
    indices = [bucket_index(seconds) for seconds in durations]
    for pure_python in (False, True):
        segment = Segment.create(str(tmp_path_factory.mktemp("seg")))
        try:
            _record(segment, durations, pure_python, {"ROCKSTAR_WORKLOAD_MAX_CELLS": str(TIGHT_CELLS)})
            snap = Merger(segment).merge()
        finally:
            segment.close()
        held = _held_blocks(snap)
        by_dim = aggregates(snap, sketch_totals(snap), raw=True)
        for dim, value in (("route", "/r"), ("status", "2xx"), ("tenant", "t")):
            expected = Counter(_nearest(index, held[(dim, value)]) for index in indices)
            sketch, _ = by_dim[dim][value]
            assert {k: int(v) for k, v in sketch.items()} == dict(expected), (dim, "Python" if pure_python else "C")
        moved = sum(any(block_first(index) not in held[key] for key in held if key[1] in ("/r", "2xx", "t"))
                    for index in indices)
        overflow = next(snap.totals[info.cell] for info in snap.series
                        if info.key.name == "rockstar.workload.overflow" and info.key.labelvalues == ("bucket",))
        assert overflow == moved
        assert len(held[("status", "2xx")]) == 1 and len(held[("route", "/r")]) <= 2
