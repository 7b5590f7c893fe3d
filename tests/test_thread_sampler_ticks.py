"""The CPU-only thread sampler's tick (issue 15), in C (``hotpath.cpu_wake``) and in Python (the fallback,
``ROCKSTAR_PURE_PYTHON=1``): each thread's CPU is all charged, whichever thread's timer woke the sampler
(up to the CPU since the last wake), and the C tick keys a stack exactly as ``frames.capture_key`` does.

Each mode runs in a fresh interpreter (the accelerator is chosen at import), two threads burning CPU side
by side for a second (Python arithmetic, and sha256 without the GIL) under a 100 Hz profile.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import hashlib, json, signal, sys, threading, time
from rockstar_mp.profiling import frames, samplers
from tests.helpers import poll

# 64 MiB: a hash long enough (some 35 ms with SHA-NI) that the hashing thread takes the GIL back a few
# dozen times a second; with 8 MiB (4 ms a hash on such a CPU) it won the GIL from the woken sampler
# nearly every time, which then woke 17-20 times a second instead of 100 (the sampler's own accounting was
# right; CPython's GIL handoff on two busy CPUs was what the test measured)
BUFFER = bytes(64 << 20)

class Burner(threading.Thread):
    # burns CPU in Python arithmetic, or hashing (the GIL released): the two run side by side
    def __init__(self, hashing):
        super().__init__(daemon=True)
        self.halt, self.burned_ns, self.hashing = threading.Event(), 0, hashing
    def run(self):
        start, x = time.thread_time_ns(), 0
        while not self.halt.is_set():
            if self.hashing:
                hashlib.sha256(BUFFER).digest()
            else:
                for i in range(2000):
                    x += i
        self.burned_ns = time.thread_time_ns() - start

samplers.cpu_wake()  # the accelerator imported now, not by the sampler's thread once the burners run
burners = [Burner(False), Burner(True)]
sampler = samplers.ThreadSampler(100, cpu=True)
done = threading.Event()
runner = threading.Thread(target=lambda: (sampler.run(30, done), None))
runner.start()
poll(lambda: sampler.wakes, timeout=10, interval=0.001, message="the sampler's loop started")
for b in burners:
    b.start()
time.sleep(1.0)  # the load under the profile, not a synchronisation
for b in burners:
    b.halt.set()
    b.join()
done.set()
runner.join()
out = {"accelerated": sampler.accelerated, "wakes": sampler.wakes, "period": 10_000_000, "threads": []}
for b in burners:
    cells = [cell for (ident, _), cell in sampler.cpu.items() if ident == b.ident]
    out["threads"].append({"samples": sum(c[0] for c in cells), "charged": sum(c[1] for c in cells),
                           "burned": b.burned_ns})

# the C tick's stack key of a thread parked in a known place, against frames.capture_key
wake = samplers.cpu_wake()
if wake is not None:
    parked = threading.Event()
    def park_here():
        parked.wait()
    def in_park_here(ident):
        frame = sys._current_frames().get(ident)
        while frame is not None and frame.f_code is not park_here.__code__:
            frame = frame.f_back
        return frame is not None
    t = threading.Thread(target=park_here, daemon=True)
    t.start()
    poll(lambda: in_park_here(t.ident), timeout=10, interval=0.001, message="the thread parked")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF})
    clock = samplers.thread_cpu_clock(t.native_id)
    _, stacks = wake(int(signal.SIGPROF), 0.0, [(t.ident, clock)], {}, {}, frames.MAX_DEPTH)
    expected = frames.capture_key(sys._current_frames()[t.ident])
    out["keys"] = [list(stacks[0][2]), list(expected)]
    parked.set()
print("RESULT " + json.dumps(out))
"""


@functools.cache
def probe(pure_python: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ROCKSTAR_PURE_PYTHON", None)
    if pure_python:
        env["ROCKSTAR_PURE_PYTHON"] = "1"
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("pure_python", [False, True], ids=["C", "Python"])
def test_each_threads_cpu_charged(pure_python):
    result = probe(pure_python)
    assert result["accelerated"] is not pure_python, result
    period = result["period"]
    for thread in result["threads"]:
        assert thread["samples"] > thread["burned"] / period / 2, (thread, result["wakes"])
        # all its CPU charged, but the part since the last wake (a period, or two if the profile stopped
        # before the wake for the last one), give or take the microseconds it ran before its clock was
        # first read
        assert thread["burned"] - 2 * period <= thread["charged"] <= thread["burned"] + 1_000_000, thread


def test_c_tick_keys_stacks_as_capture_key():
    result = probe(False)
    ours, expected = result["keys"]
    assert ours == expected
