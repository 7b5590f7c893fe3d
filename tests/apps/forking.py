"""A test app whose every request forks a helper, and both sides count: ``/?how=H&n=N``.

The worker increments ``test.forked{side="worker"}`` N times; its helper increments ``{side="helper"}`` N
times, then exits as ``how`` says:

- ``fork``: ``os.fork()``, then ``os._exit`` (no atexit), the worker reaping it;
- ``atexit``: ``os.fork()``, then the interpreter's exit functions run, as at a normal exit;
- ``mp``: a ``multiprocessing`` process with the fork start method;
- ``nested``: the helper forks a helper of its own, which counts ``{side="grandchild"}`` N times;
- ``kill``: the helper counts, tells the worker, and is killed with SIGKILL (its counts must stay);
- ``locked``: a thread of the worker holds the segment's lock (its flock and thread lock) across the fork,
  and lets go only after it; the helper's claim must wait for it, not deadlock on the copy it inherited;
- ``request``: the helper serves N requests through both request paths (``MetricsMiddleware``, in C when
  built, and ``PythonMetricsMiddleware``), answering ``299``, so ``http.requests{status="299"}`` is 2N.
"""
import atexit
import multiprocessing
import os
import signal
import threading
from urllib.parse import parse_qs

from rockstar_mp import Counter
from rockstar_mp.worker.attach import current
from rockstar_mp.worker.wsgi import MetricsMiddleware, PythonMetricsMiddleware

FORKED = Counter("test.forked", "Increments by workers and the helpers they fork", ["side"])


def _helper_app(environ, start_response):
    start_response("299 Helper", [("Content-Length", "2")])
    return [b"ok"]


HELPER_PATHS = (MetricsMiddleware(_helper_app, workload=True), PythonMetricsMiddleware(_helper_app, workload=True))


def count(side: str, n: int) -> None:
    series = FORKED.labels(side)
    for _ in range(n):
        series.inc()


def serve_in_helper(n: int) -> None:
    for path in HELPER_PATHS:
        for _ in range(n):
            body = path({"REQUEST_METHOD": "GET", "PATH_INFO": "/helper"}, lambda *a: None)
            list(body)
            body.close()


def in_helper(how: str, n: int) -> None:
    """The helper's whole life (it never returns)."""
    code = 0
    try:
        if how == "request":
            serve_in_helper(n)
        else:
            count("helper", n)
        if how == "nested":
            grandchild = os.fork()
            if grandchild == 0:
                count("grandchild", n)
                os._exit(0)
            os.waitpid(grandchild, 0)
        if how == "atexit":
            atexit._run_exitfuncs()  # what a normal interpreter exit runs
    except BaseException:  # noqa: BLE001 - a helper must never return into the worker's loop
        code = 1
    os._exit(code)


def hold_segment_lock(held: threading.Event, release: threading.Event) -> None:
    state = current()
    assert state is not None, "the worker is attached"
    with state.segment.locked():
        held.set()
        release.wait()


def fork_helper(how: str, n: int) -> None:
    if how == "mp":
        helper = multiprocessing.get_context("fork").Process(target=count, args=("helper", n))
        helper.start()
        count("worker", n)
        helper.join()
        return
    ready_r, ready_w = os.pipe()
    held, release = threading.Event(), threading.Event()
    if how == "locked":
        threading.Thread(target=hold_segment_lock, args=(held, release)).start()
        held.wait()
    pid = os.fork()
    release.set()
    if pid == 0:
        os.close(ready_r)
        if how == "kill":
            count("helper", n)
            os.write(ready_w, b"x")
            signal.pause()  # until the worker's SIGKILL
        in_helper(how, n)
    os.close(ready_w)
    count("worker", n)
    if how == "kill":
        os.read(ready_r, 1)
        os.kill(pid, signal.SIGKILL)
    os.close(ready_r)
    os.waitpid(pid, 0)


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    fork_helper(query.get("how", ["fork"])[0], int(query.get("n", ["1000"])[0]))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
