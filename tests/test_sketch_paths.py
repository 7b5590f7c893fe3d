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
