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
from rockstar_mp.sketch import bucket_index
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


def _record_in_a_worker(segment: Segment, durations: list[float], pure_python: bool) -> dict[int, float]:
    slab, generation = segment.claim_slab()
    env = dict(os.environ, ROCKSTAR_PURE_PYTHON="1" if pure_python else "0")
    done = subprocess.run([sys.executable, "-c", CHILD, segment.path, str(slab), str(generation)], cwd=ROOT,
                          env=env, input=json.dumps(durations), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    used_c = json.loads(done.stdout.splitlines()[-1])
    if pure_python:
        assert not used_c
    elif os.environ.get("CI") == "true":
        assert used_c, "the C request path is not built"
    snap = Merger(segment).merge()
    sketch, _ = aggregates(snap, sketch_totals(snap), raw=True)["route"]["/r"]
    return sketch


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
    """The requests a worker's own slab holds in route "/r"'s latency buckets."""
    worker = snap.worker(pid)
    assert worker is not None, f"no slab of pid {pid} among {[w.slot.pid for w in snap.workers]}"
    return sum(worker.values[offset] for sid, offset in worker.cache.series
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
