"""The ASGI MetricsMiddleware's cost per request, in-process: a bare ASGI app against the same app
wrapped (workload on and off; with the C path and with the Python one, ``PythonMetricsMiddleware``),
driven by a loop that awaits each request like a server does, in a worker attached to a real slab.
``python -m benchmarks.asgi_overhead [--requests N]``; prints JSON."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
         "path": "/items/42", "raw_path": b"/items/42", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), (b"accept", b"*/*"),
                     (b"x-tenant-id", b"acme"), (b"x-request-id", b"r-1")],
         "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY = {"type": "http.response.body", "body": b"hello"}


async def bare_app(scope, receive, send) -> None:
    await receive()
    await send(START)
    await send(BODY)


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message) -> None:
    pass


async def _serve(app, n: int) -> tuple[float, float]:
    """Seconds of ``n`` requests: wall clock, and this thread's CPU time (which a loaded machine's other
    processes do not add to)."""
    scope = SCOPE
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        await app(dict(scope), _receive, _send)
    return time.perf_counter() - start, time.thread_time() - cpu


def _figures(seconds: dict[str, list[float]]) -> dict:
    """Minima, medians, overheads over the bare app and median ratios, in us per request."""
    best = {name: min(ts) * 1e6 for name, ts in seconds.items()}
    medians = {name: statistics.median(ts) * 1e6 for name, ts in seconds.items()}
    return {"us_per_request_min": best, "us_per_request_median": medians,
            "overhead_us_min": {n: best[n] - best["bare"] for n in best if n != "bare"},
            "overhead_us_median": {n: medians[n] - medians["bare"] for n in medians if n != "bare"},
            "ratio_median": {n: medians[n] / medians["bare"] for n in medians if n != "bare"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from rockstar_mp.segment import Geometry, Segment
    from rockstar_mp.worker.accelerator import hotpath
    from rockstar_mp.worker.asgi import MetricsMiddleware, PythonMetricsMiddleware
    from rockstar_mp.worker.attach import attach_worker

    with tempfile.TemporaryDirectory() as tmp:
        seg = Segment.create(tmp, Geometry(n_slabs=2))
        slab, generation = seg.claim_slab()
        state = attach_worker(seg, slab, generation)
        try:
            apps = {"bare": bare_app, "workload": MetricsMiddleware(bare_app),
                    "counters_only": MetricsMiddleware(bare_app, workload=False),
                    "python_workload": PythonMetricsMiddleware(bare_app),
                    "python_counters_only": PythonMetricsMiddleware(bare_app, workload=False)}
            times: dict[str, list[float]] = {name: [] for name in apps}
            cpu: dict[str, list[float]] = {name: [] for name in apps}
            loop = asyncio.new_event_loop()
            for app in apps.values():
                loop.run_until_complete(_serve(app, 2000))
            for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every app
                for name, app in apps.items():
                    wall, thread = loop.run_until_complete(_serve(app, args.requests))
                    times[name].append(wall / args.requests)
                    cpu[name].append(thread / args.requests)
            print(json.dumps({**_figures(times), "cpu": _figures(cpu), "accelerated": hotpath is not None}, indent=1))
        finally:
            state.detach()


if __name__ == "__main__":
    main()
