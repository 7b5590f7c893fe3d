"""Routes whose true profile is known by construction (issue 15), for comparing our profiles with py-spy's.

* ``/pure``: ``hot`` spins 120 ms of this thread's CPU in Python arithmetic (``_spin``), ``cold`` 30 ms: 80/20.
* ``/chash``: ``spin`` spins 20 ms in Python, then ``digest`` hashes a ``memoryview`` slice of a 64 MB
  buffer with ``hashlib.sha256`` (one long C call, without the GIL): about 65 % of the route's CPU.
* ``/waits``: ``nap`` sleeps 90 ms, ``poll_nothing`` waits 60 ms in ``select.select``, ``stuck`` waits
  150 ms for a lock nobody releases (``acquire(timeout=...)``): 30/20/50 of the route's wall time.
* ``/contend``: ``wait_for_app_lock`` takes ``APP_LOCK``, which a holder thread (started by the first
  ``/contend``, running for ``HOLD_SECONDS`` after the last one) keeps while it spins (200 ms of CPU at a time).
* ``/truth``: what each function above really took, by the app's own clocks (``time.thread_time`` for
  CPU, ``time.perf_counter`` for wall), since the worker started: ``{"cpu": {...}, "wall": {...}}``.
"""
import hashlib
import json
import select
import threading
import time

BUFFER = bytearray(64 * 1024 * 1024)
HASHED = 56 * 1024 * 1024  # bytes hashed by one digest(): ~38 ms here, as in the issue
APP_LOCK = threading.Lock()
NEVER_RELEASED = threading.Lock()
NEVER_RELEASED.acquire()
HOLD_SECONDS = 1.0

CPU: dict[str, float] = {}
WALL: dict[str, float] = {}
_holder_until = 0.0
_holder: threading.Thread | None = None


SPIN_STEP = 2000  # iterations of arithmetic between two reads of the thread's clock (~50 us)


def _spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU in Python arithmetic, reading the clock (a
    ``clock_gettime`` system call: thread CPU clocks have no vDSO path) only every ``SPIN_STEP``
    iterations, so the thread spends its time in the interpreter, not in the kernel."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(SPIN_STEP):
            x += i


def _timed(name: str, work, *args) -> None:
    cpu, wall = time.thread_time(), time.perf_counter()
    work(*args)
    CPU[name] = CPU.get(name, 0.0) + time.thread_time() - cpu
    WALL[name] = WALL.get(name, 0.0) + time.perf_counter() - wall


def hot() -> None:
    _spin(0.120)


def cold() -> None:
    _spin(0.030)


def spin() -> None:
    _spin(0.020)


def digest() -> None:
    offset = int(time.perf_counter_ns() % 1024) * 4096  # a different slice each time, as a real app
    hashlib.sha256(memoryview(BUFFER)[offset:offset + HASHED]).digest()


def nap() -> None:
    time.sleep(0.09)


def poll_nothing() -> None:
    select.select([], [], [], 0.06)


def stuck() -> None:
    NEVER_RELEASED.acquire(timeout=0.15)


def wait_for_app_lock() -> None:
    with APP_LOCK:
        pass


def _hold() -> None:
    while time.monotonic() < _holder_until:
        with APP_LOCK:
            _spin(0.2)  # long against a request's own waits (the client's reading, its closing)
        _spin(0.001)


def _start_holder() -> None:
    global _holder_until, _holder
    _holder_until = time.monotonic() + HOLD_SECONDS
    if _holder is None or not _holder.is_alive():
        _holder = threading.Thread(target=_hold, name="app-lock-holder", daemon=True)
        _holder.start()


def pure() -> None:
    _timed("hot", hot)
    _timed("cold", cold)


def chash() -> None:
    _timed("spin", spin)
    _timed("digest", digest)


def waits() -> None:
    _timed("nap", nap)
    _timed("poll_nothing", poll_nothing)
    _timed("stuck", stuck)


def contend() -> None:
    _start_holder()
    _timed("wait_for_app_lock", wait_for_app_lock)


ROUTES = {"/pure": pure, "/chash": chash, "/waits": waits, "/contend": contend}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    route = ROUTES.get(path)
    if route is not None:
        route()
        body = b"ok\n"
    elif path == "/truth":
        body = json.dumps({"cpu": CPU, "wall": WALL}).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
