"""The /debug/pprof tree as ``go tool pprof`` users meet it (issue 15): the token in the URL (HTTP Basic),
``pid`` as a numeric label for ``-tagfocus``, the worker's pid on every kind's samples, a missing worker
named in the profile's comments, ``allocs``, the ``debug=1`` texts, ``cmdline``, ``symbol``, and a leak
made before a heap profile (tracemalloc at boot) shown with its line.

One gunicorn (2 sync workers, ``require_auth``, ``heap_tracemalloc_at_boot``) serves every test here;
the one that kills a worker runs last.
"""
from __future__ import annotations

import base64
import gzip
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from rockstar_mp import profiling
from tests.helpers import http_get, load, poll, raw_get
from tests.test_pprof import BURN, Server, go_binary, pprof, saved_profile

TOKEN = "pprof-tree-t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LEAK_APP = "tests.apps.pprof_leak_app:app"
LEAK_SOURCE = Path(__file__).parent / "apps" / "pprof_leak_app.py"
LEAK_LINE = next(n for n, text in enumerate(LEAK_SOURCE.read_text().splitlines(), 1) if "# LEAK SITE" in text)


@pytest.fixture(scope="module")
def gotmp(tmp_path_factory):
    return tmp_path_factory.mktemp("go")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("pprof-tree"), ROCKSTAR_REQUIRE_AUTH="1", ROCKSTAR_AUTH_TOKEN=TOKEN,
               ROCKSTAR_HEAP_TRACEMALLOC_AT_BOOT="1", ROCKSTAR_PPROF_HEAP_FRAMES="1")  # 1: the cheapest boot
    s.g.app = LEAK_APP
    try:
        s.start()
        # the workers attach (and count as live) before they import the app: wait until both serve
        poll(lambda: load(s.g.port, 8, "/", concurrency=4) == {200: 8}, timeout=30, message="serving")
        yield s
    finally:
        if s.g.proc is not None and s.g.proc.poll() is None:
            s.g.signal(signal.SIGQUIT)  # quick shutdown: the worker respawned last may still be booting
        s.g.stop()
    log = s.g.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def with_token(server: Server, path: str, token: str = TOKEN) -> str:
    """The URL ``go tool pprof`` is given: the token as the password of the URL's user info."""
    return f"http://x:{token}@127.0.0.1:{server.pprof_port}/debug/pprof{path}"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Load:
    """Requests on ``path`` from ``concurrency`` threads from entry until exit (a profile's window
    inside), each thread one request at a time; entry returns once the first one was answered."""

    def __init__(self, server: Server, path: str, concurrency: int = 2) -> None:
        self.server, self.path, self.concurrency = server, path, concurrency
        self.done = threading.Event()
        self.answered = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        while not self.done.is_set():
            raw_get(self.server.g.port, self.path)
            self.answered.set()

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        poll(self.answered.is_set, timeout=20, interval=0.02, message="the load under way")
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()


def raw_samples(output: str) -> list[set[int]]:
    """The pid labels of each sample of ``go tool pprof -raw`` output (string and numeric forms)."""
    section = output.split("Samples:", 1)[1].split("Locations", 1)[0]
    samples: list[set[int]] = []
    for line in section.splitlines():
        if re.match(r"^\s+\d+(\s+\d+)*:", line):
            samples.append(set())
        elif samples:
            samples[-1].update(int(p) for p in re.findall(r"pid:\[(\d+)\]", line))
    return samples


# -- the token as HTTP Basic auth's password ------------------------------------------------------------
def test_go_tool_pprof_takes_the_token_in_the_url(server, gotmp):
    with Load(server, "/work?ms=5"):
        out = pprof(gotmp, "-top", with_token(server, "/profile?seconds=3"))
    assert "Type: cpu" in out and BURN in out, out
    failures = server.g.metrics()["system"]["pprof_auth_failures"]
    code, headers, _ = http_get(server.url("/goroutine"), basic("x", TOKEN + "x"))
    assert code == 401 and 'Basic realm="rockstar-mp pprof"' in headers["WWW-Authenticate"]
    assert http_get(server.url("/goroutine?debug=1"), basic("anyone", TOKEN))[0] == 200
    assert server.g.metrics()["system"]["pprof_auth_failures"] == failures + 1


# -- pid as a numeric label -------------------------------------------------------------------------
def test_tagfocus_pid_selects_exactly_one_workers_samples(server, gotmp):
    everything = pprof(gotmp, "-raw", with_token(server, "/goroutine"))
    saved = saved_profile(everything)
    samples = raw_samples(everything)
    assert {pid for s in samples for pid in s} == set(server.pids()), everything
    for pid in server.pids():
        chosen = raw_samples(pprof(gotmp, "-raw", f"-tagfocus=pid={pid}", saved))
        assert chosen and all(s == {pid} for s in chosen), chosen
        assert len(chosen) == sum(1 for s in samples if s == {pid})
    # the string form still matches as a regular expression
    first = server.pids()[0]
    assert all(s == {first} for s in raw_samples(pprof(gotmp, "-raw", f"-tagfocus=pid=^{first}$", saved)))


# -- heap: a leak made before the profile, the worker's pid -----------------------------------------
def test_heap_at_boot_shows_an_earlier_leak_with_its_line_and_the_workers_pid(server, gotmp):
    assert load(server.g.port, 4, "/leak?kb=512", concurrency=2) == {200: 4}
    out = pprof(gotmp, "-raw", with_token(server, "/heap"))
    assert "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes" in out, out[:2000]
    assert {pid for s in raw_samples(out) for pid in s} == set(server.pids()), out[-3000:]
    lines = pprof(gotmp, "-top", "-lines", "-unit=bytes", "-focus=pprof_leak_app", saved_profile(out))
    row = next(line for line in lines.splitlines() if f"pprof_leak_app.py:{LEAK_LINE}" in line)
    assert int(row.split()[0].rstrip("B")) >= 4 * 512 * 1024, lines


def test_every_kind_labels_samples_with_the_workers_pid(server, gotmp, tmp_path):
    kinds = ["wall?seconds=1", "block?seconds=1", "mutex?seconds=1", "threadcreate", "goroutine"]
    with ThreadPoolExecutor(len(kinds)) as pool:
        answers = list(pool.map(lambda k: http_get(server.url("/" + k), BEARER, 30), kinds))
    for kind, (code, _, body) in zip(kinds, answers, strict=True):
        assert code == 200, (kind, body)
        path = tmp_path / kind.split("?")[0]
        path.write_bytes(body)
        pids = {pid for s in raw_samples(pprof(gotmp, "-raw", str(path))) for pid in s}
        assert pids and pids <= set(server.pids()), (kind, pids)


# -- allocs, the debug=1 texts, cmdline, symbol, the index -------------------------------------------
def test_allocs_names_what_a_window_allocated(server, gotmp):
    with Load(server, "/leak?kb=64"):
        out = pprof(gotmp, "-top", "-lines", with_token(server, "/allocs?seconds=1"))
    assert "Type: alloc_space" in out, out
    assert f"pprof_leak_app.py:{LEAK_LINE}" in out.split("flat%", 1)[1].splitlines()[1], out


def test_debug_texts_like_gos(server):
    """heap (allocs has the same text), block and mutex; each ``debug=1`` text at once."""
    assert raw_get(server.g.port, "/leak?kb=512") == 200  # a site the heap text must show
    paths = ["/heap?debug=1", "/block?debug=1&seconds=1", "/mutex?debug=1&seconds=1"]
    with ThreadPoolExecutor(len(paths)) as pool:
        heap, block, mutex = [body.decode() for code, _, body in
                              pool.map(lambda p: http_get(server.url(p), BEARER, 90), paths)]
    assert re.match(r"heap profile: \d+: \d+ \[\d+: \d+\] @ heap/1\n\d+: \d+ \[\d+: \d+\] @( 0x[0-9a-f]+)+\n",
                    heap), heap[:500]
    assert f"pprof_leak_app.py:{LEAK_LINE}" in heap
    for text in (block, mutex):
        assert text.startswith("--- contention:\ncycles/second=1000000000\n"), text[:500]
        assert re.search(r"^\d+ \d+ @( 0x[0-9a-f]+)+$", text, re.M), text[:2000]
    assert "sampling period=1" in mutex and "pprof_app.py" in mutex  # the thread blocked on a lock
    # symbol names the addresses the texts printed, as Go's does
    line = next(t for t in heap.splitlines() if t.startswith("#\t") and f"pprof_leak_app.py:{LEAK_LINE}" in t)
    address = line.split("\t")[1]
    assert http_get(server.url("/symbol"), BEARER)[2] == b"num_symbols: 1\n"
    code, _, named = _post(server, "/symbol", f"{address}+0x1".encode())
    assert code == 200 and named.decode() == f"num_symbols: 1\n{address} tests.apps.pprof_leak_app.leak " \
                                              f"{LEAK_SOURCE}:{LEAK_LINE}\n", named


def _post(server: Server, path: str, body: bytes):
    import urllib.error
    import urllib.request
    request = urllib.request.Request(server.url(path), data=body, headers=BEARER, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_cmdline_and_the_index(server):
    code, _, master = http_get(server.url("/cmdline"), BEARER)
    assert code == 200 and master.split(b"\0") == [a.encode() for a in psutil.Process(server.g.pid).cmdline()]
    worker = server.pids()[0]
    assert http_get(server.url(f"/cmdline?pid={worker}"), BEARER)[2].split(b"\0") == \
        [a.encode() for a in psutil.Process(worker).cmdline()]
    assert http_get(server.url("/cmdline?pid=1"), BEARER)[0] == 404
    index = http_get(server.url("/"), BEARER)[2].decode()
    for kind in ("allocs", "block", "heap", "mutex"):
        assert f'<a href="/debug/pprof/{kind}?debug=1">{kind}</a>' in index
    for extra in ("cmdline", "symbol"):
        assert f'<a href="/debug/pprof/{extra}">{extra}</a>' in index

    def counts_are_the_threads() -> bool:
        """The counts come from the aggregator's once-a-second look at /proc: poll until it agrees."""
        html = http_get(server.url("/"), BEARER)[2].decode()
        rows = {kind: int(n) for n, kind in re.findall(r"<td align=right>(\d+)</td><td><a href=\"[^\"]*\">(\w+)</a>",
                                                        html)}
        threads = sum(psutil.Process(pid).num_threads() for pid in server.pids())
        return rows == {"goroutine": threads, "threadcreate": threads}

    poll(counts_are_the_threads, timeout=10, message="the index's counts")


# -- a worker killed mid-profile is named in the profile (last: the server respawns it) ---------------
def test_a_missing_worker_is_named_in_the_profile(server, gotmp, tmp_path):
    victim, survivor = server.pids()
    threads = psutil.Process(victim).num_threads()
    answer: list = []
    fetch = threading.Thread(target=lambda: answer.append(http_get(server.url("/wall?seconds=2"), BEARER, 30)))
    fetch.start()
    # the worker starts a thread to serve the profile: the window has begun
    poll(lambda: psutil.Process(victim).num_threads() > threads, timeout=10, interval=0.01,
         message="the victim profiling")
    os.kill(victim, signal.SIGKILL)
    fetch.join()
    code, headers, body = answer[0]
    assert code == 200 and headers["X-Rockstar-Missing-Workers"] == str(victim), body
    path = tmp_path / "wall.pb.gz"
    path.write_bytes(body)
    comments = pprof(gotmp, "-comments", str(path))
    assert f"worker {victim} is missing from this profile: it did not answer" in comments, comments
    assert {pid for s in raw_samples(pprof(gotmp, "-raw", str(path))) for pid in s} == {survivor}
    assert gzip.decompress(body)  # a whole profile, not an error text


def test_the_python_api_counts_allocations_over_a_window():
    """``allocs`` without tracemalloc at boot: the window's looks count what a site allocated."""
    kept: list = []
    stop = threading.Event()

    def keep_allocating():
        while not stop.wait(0.002):
            kept.append(bytearray(4096))

    thread = threading.Thread(target=keep_allocating)
    thread.start()
    try:
        result = profiling.collect("allocs", 0.5)
    finally:
        stop.set()
        thread.join()
    raw = result["raw"]
    assert raw["default_sample_type"] == "alloc_space"
    alloc_space = [t[0] for t in raw["sample_types"]].index("alloc_space")
    top = max(raw["samples"], key=lambda s: s[1][alloc_space])
    assert raw["frames"][top[0][0]][0].endswith("keep_allocating"), top
    assert top[1][alloc_space] >= 4096 * 10
    assert top[2] == {"pid": str(os.getpid())}
    go_binary()  # under CI=true go must be there (the tests above need it)
