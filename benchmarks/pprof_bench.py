"""What profiling costs the example app (issue 5): figures to report, not assertions.

    cd /work/main && .venv/bin/python -m benchmarks.pprof_bench [--seconds 5] [--rounds 3]

1. No profile running: throughput of ``/`` and ``/work?ms=10`` with pprof on vs off (2 sync workers).
2. During a CPU profile at 100 Hz: throughput of ``/work?ms=10`` in windows with and without a
   running ``/debug/pprof/profile``, alternated.
3. A 5 s heap window: throughput before, during and after ``/debug/pprof/heap?seconds=5``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import Gunicorn, free_port, http_get, raw_get  # noqa: E402


def throughput(port: int, path: str, seconds: float, concurrency: int = 4) -> float:
    """Requests per second completed (status 200) over ``seconds``."""
    done = [0] * concurrency
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < deadline:
            if raw_get(port, path) == 200:
                done[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def server(tmp: Path, pprof: bool) -> tuple[Gunicorn, int]:
    port = free_port()
    env = {"ROCKSTAR_ENABLE_PPROF": "1" if pprof else "0", "ROCKSTAR_PPROF_PORT": str(port),
           "ROCKSTAR_PPROF_MAX_SECONDS": "600"}
    g = Gunicorn(tmp, workers=2, env=env)
    g.start()
    return g, port


def while_fetching(url: str, action) -> tuple:
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", http_get(url, timeout=120)))
    t.start()
    time.sleep(0.3)
    value = action()
    t.join()
    return value, result["r"][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    s, rounds = args.seconds, args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        print("1. no profile running: pprof off vs on, both servers up, measured alternately "
              "(req/s, median of rounds)")
        servers = {}
        try:
            for pprof in (False, True):
                path = Path(tmp) / f"s{int(pprof)}"
                path.mkdir()
                servers[pprof] = server(path, pprof)[0]
            for route in ("/", "/work?ms=10"):
                runs: dict = {False: [], True: []}
                for i in range(rounds):
                    for pprof in ((False, True) if i % 2 == 0 else (True, False)):
                        runs[pprof].append(throughput(servers[pprof].port, route, s))
                off, on = statistics.median(runs[False]), statistics.median(runs[True])
                print(f"   {route:14s} off {off:8.1f}  on {on:8.1f}  ({(on / off - 1) * 100:+.1f}%)")
        finally:
            for g in servers.values():
                g.stop()

        path = Path(tmp) / "s2"
        path.mkdir()
        g, port = server(path, True)
        base = f"http://127.0.0.1:{port}/debug/pprof"
        try:
            print(f"2. during a CPU profile at 100 Hz, /work?ms=10 (req/s, {s:g} s windows, alternated)")
            without, with_ = [], []
            for _ in range(rounds):
                without.append(throughput(g.port, "/work?ms=10", s))
                value, status = while_fetching(f"{base}/profile?seconds={s + 0.6:g}",
                                               lambda: throughput(g.port, "/work?ms=10", s))
                assert status == 200, status
                with_.append(value)
            a, b = statistics.median(without), statistics.median(with_)
            print(f"   without {a:8.1f}  with {b:8.1f}  ({(b / a - 1) * 100:+.1f}%)")
            for route in ("/",):
                without = [throughput(g.port, route, s) for _ in range(rounds)]
                with_ = [while_fetching(f"{base}/profile?seconds={s + 0.6:g}",
                                        lambda route=route: throughput(g.port, route, s))[0] for _ in range(rounds)]
                a, b = statistics.median(without), statistics.median(with_)
                print(f"   {route:14s} without {a:8.1f}  with {b:8.1f}  ({(b / a - 1) * 100:+.1f}%)")

            print("3. a 5 s heap window, /work?ms=10 (req/s)")
            before = throughput(g.port, "/work?ms=10", 4.0)
            during, status = while_fetching(f"{base}/heap?seconds=5",
                                            lambda: throughput(g.port, "/work?ms=10", 4.4))
            time.sleep(0.5)
            after = throughput(g.port, "/work?ms=10", 4.0)
            print(f"   before {before:8.1f}  during {during:8.1f}  after {after:8.1f}  (heap: HTTP {status})")
        finally:
            g.stop()


if __name__ == "__main__":
    main()
