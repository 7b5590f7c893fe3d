"""gunicorn ``-k gevent`` workers (issue 13): profiles, the goroutine dump, the optimizer and the counts,
against one real gunicorn with two gevent workers and the real ``go tool pprof``.

gevent patches threading, socket and time.sleep in each worker after ``post_fork``: the control
channel, the profiles and the monitor must run on real threads (``rockstar_mp.profiling.native``).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import ROOT, http_get, load, poll, raw_get, requests_with
from tests.test_optimize import http_post
from tests.test_pprof import Server, go_binary, pprof, top_rows

APP = "tests.apps.gevent_app:app"
HOT = "tests.apps.gevent_app.hot_loop"
PARKED = "tests.apps.gevent_app.parked"
ADMIN = "gevent-admin"


@pytest.fixture(scope="module")
def gotmp(tmp_path_factory):
    return tmp_path_factory.mktemp("go")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("gevent"), ROCKSTAR_ADMIN_TOKEN=ADMIN)
    s.g.app = APP
    s.g.args = ("--worker-class", "gevent")
    s.start()
    yield s
    s.g.stop()
    log = s.g.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


class Loader:
    """``with Loader(port, path):`` clients sending ``path`` back to back, one request each at a time,
    from the first answer (awaited on entry) to the end of the block."""

    def __init__(self, port: int, path: str, clients: int = 4) -> None:
        self.port, self.path, self.clients = port, path, clients
        self.stop, self.answered = threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop.is_set():
            if raw_get(self.port, self.path, timeout=20) == 200:
                self.answered.set()

    def __enter__(self) -> "Loader":
        for thread in self.threads:
            thread.start()
        poll(self.answered.is_set, timeout=20, interval=0.02, message=f"answers to {self.path}")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def tagged_pids(gotmp, profile: str) -> set[int]:
    """The ``pid`` label values of a saved profile, as ``go tool pprof -tags`` reads them."""
    out = pprof(gotmp, "-tags", profile)
    section = out.split("pid:", 1)[1].split("\n\n", 1)[0] if "pid:" in out else ""
    return {int(pid) for pid in re.findall(r"\(\s*[\d.]+%\):\s*(\d+)", section)}


def test_cpu_profile_of_loaded_gevent_workers_has_the_hot_function_on_top(server, gotmp, tmp_path):
    go_binary()
    with Loader(server.g.port, "/hot?ms=10"):
        out = pprof(gotmp, "-top", "-nodecount=20", server.url("/profile?seconds=1.5"))
    rows = top_rows(out)
    assert rows and rows[0][2] == HOT, out  # flat: the loop itself burns the CPU
    assert "main-thread CPU time" in out or "SIGPROF" in out, out  # sampled by SIGPROF, greenlets included
    saved = re.search(r"Saved profile in (\S+)", out).group(1)
    assert tagged_pids(gotmp, saved) == set(server.pids())


def test_wall_and_heap_answer_from_both_workers(server, gotmp, tmp_path):
    go_binary()
    with Loader(server.g.port, "/alloc"), ThreadPoolExecutor(2) as pool:
        wall = pool.submit(http_get, server.url("/wall?seconds=1"), None, 20)
        heap = pool.submit(http_get, server.url("/heap?seconds=1"), None, 20)
        answers = {"wall": wall.result(), "heap": heap.result()}
    for kind, (status, headers, body) in answers.items():
        assert status == 200, (kind, body)
        assert "X-Rockstar-Missing-Workers" not in headers, kind
        path = tmp_path / f"{kind}.pb.gz"
        path.write_bytes(body)
        assert tagged_pids(gotmp, str(path)) == set(server.pids()), kind


def test_goroutine_lists_the_greenlets_of_both_workers(server, gotmp):
    go_binary()

    def dump_with_parked_greenlets() -> str:
        text = http_get(server.url("/goroutine?debug=2&internal=1"))[2].decode()  # our threads too
        blocks = text.split("\n\n")
        for pid in server.pids():
            parked = [b for b in blocks if re.match(rf'goroutine \d+ \[sleep\]: pid={pid} greenlet="Greenlet-\d+" '
                                                    r'thread="MainThread"', b) and f"{PARKED}(" in b]
            if not parked:
                return ""
        return text

    with Loader(server.g.port, "/park?ms=300", clients=8):
        text = poll(dump_with_parked_greenlets, timeout=10, interval=0.1, message="parked greenlets in both workers")
        grouped = http_get(server.url("/goroutine?debug=1"))[2].decode()
        tags = pprof(gotmp, "-tags", server.url("/goroutine"))
    for pid in server.pids():
        for thread in ("MainThread", "rockstar-control", "rockstar-monitor"):  # the real threads too
            assert re.search(rf'^goroutine \d+ \[\w+\]: pid={pid} thread="{thread}"', text, re.M), (pid, thread)
    assert grouped.startswith("goroutine profile: total ")
    assert re.search(r'# labels: \{"pid": "\d+", "greenlet": "[^"]*Greenlet-\d+', grouped), grouped
    assert "greenlet:" in tags and "Greenlet-" in tags, tags


def test_optimize_runs_in_every_gevent_worker_under_load(server):
    base = f"http://127.0.0.1:{server.g.metrics_port}"

    def counts() -> dict:
        stats = json.loads(http_get(f"{base}/optimize/stats")[2])
        return {w["pid"]: w["optimization_count"] for w in stats["workers"]}

    before = counts()
    assert set(before) == set(server.pids())
    with Loader(server.g.port, "/hot?ms=10"):  # CPU-bound greenlets, yielding only between requests
        status, _, body = http_post(f"{base}/optimize", {}, {"Authorization": f"Bearer {ADMIN}"})
        assert status in (200, 202), body
        poll(lambda: all(counts()[pid] > before[pid] for pid in before), timeout=10, interval=0.05,
             message="every gevent worker optimized")


def test_counts_are_exact(server):
    # 404s, which no other test of this module asks for: the merged total of 200s can still be catching up
    # with an earlier test's last responses when this one starts
    def not_found() -> int:
        return requests_with(server.g.metrics()["counters"], 'status="404"')

    before = not_found()
    assert load(server.g.port, 300, "/no-such-page", concurrency=8) == {404: 300}
    poll(lambda: not_found() == before + 300, timeout=10, message="300 more 404s counted")
    assert not_found() == before + 300


# -- a process that patched everything before it started our threads (a config file's patch_all) -----
NATIVE_CHECK = r"""
from gevent import monkey
monkey.patch_all()
import json, os, threading, time
from rockstar_mp.profiling import native
from rockstar_mp.profiling.threads import thread_dump
ran, event = {}, native.Event()
def work():
    ran["tid"] = threading.get_native_id()
    event.wait(5)  # a real wait: the main greenlet below never yields
    ran["woke"] = True
native.start_thread(work, "native-check")
deadline = time.monotonic() + 2
while "tid" not in ran and time.monotonic() < deadline:
    pass  # spin without yielding: a greenlet would never run
names = [t["name"] for t in thread_dump(internal=True) if "greenlet" not in t]
event.set()
deadline = time.monotonic() + 2
while "woke" not in ran and time.monotonic() < deadline:
    pass
print(json.dumps({"main": os.getpid(), "tid": ran.get("tid"), "woke": ran.get("woke"), "names": names}))
"""


def test_native_threads_are_real_when_gevent_patched_first():
    out = subprocess.run([sys.executable, "-c", NATIVE_CHECK], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tid"] and result["tid"] != result["main"], result  # its own OS thread
    assert result["woke"], result
    assert "native-check" in result["names"] and "MainThread" in result["names"], result


# -- a thread started before gevent patched, ending after (our monitor thread under gunicorn -k gevent) --
PATCHED_AFTER_START = r"""
import sys, time
from rockstar_mp.profiling import native
ended, event = [], native.Event()
def monitor():
    event.wait(5)
    ended.append(True)
native.start_thread(monitor, "rockstar-monitor")  # in post_fork: nothing patched yet
from gevent import monkey
monkey.patch_all()  # what gunicorn's gevent worker does next
event.set()
deadline = time.monotonic() + 5
while not ended and time.monotonic() < deadline:
    pass  # spin: the thread is a real one, it ends without this greenlet yielding
while len(sys._current_frames()) > 1 and time.monotonic() < deadline:
    pass  # until the thread is gone: its exit is where the traceback was printed
print("ended" if ended and len(sys._current_frames()) == 1 else "still running")
"""


def test_a_thread_started_before_the_patch_ends_without_a_traceback():
    out = subprocess.run([sys.executable, "-c", PATCHED_AFTER_START], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ended"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


def test_the_greenlet_dump_touches_no_object_it_does_not_list():
    """The goroutine dump looks for greenlets among every object, by their type: an object whose
    ``__class__`` runs code (Django's lazy settings proxies set themselves up, and may raise) is not asked
    (pytest once failed here when a Django test had left such a proxy behind)."""
    import greenlet

    from rockstar_mp.profiling.threads import greenlet_dump

    class LazyProxy:
        touched = 0

        @property
        def __class__(self):
            LazyProxy.touched += 1
            raise RuntimeError("set up on first touch, and that failed")

    proxy = LazyProxy()
    waiting = greenlet.greenlet(lambda: greenlet.getcurrent().parent.switch())
    waiting.switch()  # started and suspended: a greenlet the dump lists
    dump = greenlet_dump()
    assert LazyProxy.touched == 0 and proxy is not None
    assert len(dump) >= 1
