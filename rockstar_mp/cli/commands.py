"""``rockstar-mp``: read a running server's aggregator from the shell.

    rockstar-mp top     [--url URL] [--token T] [--interval 1.0] [--iterations N]
    rockstar-mp metrics [--url URL] [--token T] [--json]
    rockstar-mp workers [--url URL] [--token T] [--json]
    rockstar-mp optimize [--pid N]            (admin: $ROCKSTAR_ADMIN_TOKEN, else --token)
    rockstar-mp control [NAME=VALUE ...]      (admin: show, or change, the runtime settings)
    rockstar-mp profile [--kind K] [--seconds N] [--pid N] [--out FILE] [--pprof-url URL]

Every command takes the same connection options:

``--url`` (default ``$ROCKSTAR_URL``, else ``http://127.0.0.1:9090``)
    The aggregator's base URL, ``scheme://host:port`` (``http://`` is assumed when left out). The JSON
    views are read from the root of that address (``/workers``, ``/workload``) and the metrics from
    ``--metrics-path``. The older form, the full metrics URL (``http://127.0.0.1:9090/metrics``), still
    works: a path given in ``--url`` is taken as the metrics path.
``--metrics-path`` (default: the path in ``--url``, else ``$ROCKSTAR_METRICS_PATH``, else ``/metrics``)
    Where the aggregator serves the metrics (the server's ``metrics_path``).
``--token`` (default ``$ROCKSTAR_AUTH_TOKEN``)
    Sent as ``Authorization: Bearer <token>``; prefer the environment variable to a token on a shared
    command line.

``top`` is a live view in the manner of ``uwsgitop``: a header (live workers, total requests and requests/s,
p50/p95/p99 latency, dropped workload records, aggregator uptime), one row per worker (requests and
requests/s, the request in flight, RSS/USS, CPU, threads, open fds, heartbeat age) and the busiest routes.
On a terminal it redraws in place every ``--interval`` seconds and quits on ``q`` or Ctrl-C (exit 0);
piped, it prints one plain frame per refresh. A failed refresh (server unreachable, HTTP error) is shown
in place of the figures and retried on the next refresh. With ``--iterations N`` it stops after N
refreshes: exit 0, or 1 if the last one failed.

``metrics`` and ``workers`` print one snapshot (``--json``: the metrics object of ``GET {metrics-path}``,
the list of ``GET /workers``); on any error they print it to stderr and exit 1.

``optimize`` asks every live worker (or ``--pid``) to collect garbage now (``POST /optimize``);
``control`` prints the runtime settings (``GET /control``) or changes them (``POST /control``), e.g.
``rockstar-mp control enable_metrics=false`` (values are read as JSON when they parse, else as strings).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..profiling.fetch import DEFAULT_PPROF_URL, ProfileFetchError, fetch_profile
from .client import DEFAULT_METRICS_PATH, DEFAULT_URL, Aggregator, FetchError, resolve
from .top import run_top, worker_table


# -- one-shot commands ----------------------------------------------------------------------------
def _print_metrics(data: dict) -> None:
    for section in ("counters", "gauges"):
        for name, value in sorted(data.get(section, {}).items()):
            print(f"{section[:-1]:8} {name} {value}")
    for name, hist in sorted(data.get("histograms", {}).items()):
        print(f"histogram {name} count={hist['count']} sum={hist['sum']}")
    for name, value in sorted(data.get("system", {}).items()):
        print(f"system   {name} {value}")


def _print_workers(workers: list[dict]) -> None:
    print("\n".join(worker_table(workers)))


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ROCKSTAR_URL", DEFAULT_URL),
                        help="the aggregator's base URL, scheme://host:port (default: $ROCKSTAR_URL or "
                             f"{DEFAULT_URL}); a path in it is taken as the metrics path")
    common.add_argument("--metrics-path", default=None,
                        help="the aggregator's metrics path (default: the path in --url, else "
                             f"$ROCKSTAR_METRICS_PATH, else {DEFAULT_METRICS_PATH})")
    common.add_argument("--token", default=os.environ.get("ROCKSTAR_AUTH_TOKEN"),
                        help="bearer token (default: $ROCKSTAR_AUTH_TOKEN)")
    parser = argparse.ArgumentParser(prog="rockstar-mp", description=__doc__.splitlines()[0],
                                     epilog="See `rockstar-mp COMMAND --help`.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("metrics", "print the merged metrics once"),
                       ("workers", "print the live workers once (GET /workers)")):
        cmd = sub.add_parser(name, parents=[common], help=text, description=text)
        cmd.add_argument("--json", action="store_true", help="print the raw JSON")
    top = sub.add_parser("top", parents=[common], help="a live view of workers, load and routes",
                         description="A live view of workers, load and routes; q or Ctrl-C quits.")
    top.add_argument("--interval", type=_positive(float), default=1.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=_positive(int), default=None,
                     help="stop after this many refreshes (exit 1 if the last one failed)")
    admin = argparse.ArgumentParser(add_help=False, parents=[common])
    admin.set_defaults(admin=True)
    optimize = sub.add_parser("optimize", parents=[admin], help="garbage-collect every worker (or one) now",
                              description="POST /optimize: every live worker (or --pid) collects garbage now. "
                                          "Needs the admin token ($ROCKSTAR_ADMIN_TOKEN, else --token).")
    optimize.add_argument("--pid", type=_positive(int), default=None)
    control = sub.add_parser("control", parents=[admin], help="show or change runtime settings",
                             description="Without arguments: the runtime settings in force (GET /control). "
                                         "With NAME=VALUE pairs (e.g. enable_pprof=true pprof_path=/pp): "
                                         "change them (POST /control). Needs the admin token.")
    control.add_argument("settings", nargs="*", metavar="NAME=VALUE")
    profile = sub.add_parser("profile", parents=[common], help="fetch a profile (pprof) from the workers",
                             description="Fetch a profile from the /debug/pprof tree (every live worker "
                                         "merged, or --pid) and write it to --out; read it with go tool "
                                         "pprof. The token is --token / $ROCKSTAR_AUTH_TOKEN.")
    profile.add_argument("--kind", default="profile", choices=("profile", "wall", "heap", "allocs", "goroutine",
                                                               "threadcreate", "block", "mutex", "trace"))
    profile.add_argument("--seconds", type=_positive(float), default=None, help="the profile's window")
    profile.add_argument("--pid", type=_positive(int), default=None, help="one worker (default: all)")
    profile.add_argument("--debug", type=int, choices=(0, 1, 2), default=0,
                         help="goroutine/threadcreate as text (1: grouped, 2: one block per thread)")
    profile.add_argument("--out", default=None, help="the file to write (default: <kind>.pb.gz)")
    profile.add_argument("--pprof-url", default=os.environ.get("ROCKSTAR_PPROF_URL", DEFAULT_PPROF_URL),
                         help=f"the pprof tree (default: $ROCKSTAR_PPROF_URL or {DEFAULT_PPROF_URL})")
    return parser


def run_profile(args) -> int:
    out = args.out or {"trace": "trace.json"}.get(args.kind, f"{args.kind}.txt" if args.debug
                                                    else f"{args.kind}.pb.gz")
    try:
        size = fetch_profile(args.pprof_url, out, args.kind, args.seconds, args.pid, args.token, args.debug)
    except ProfileFetchError as exc:
        print(f"rockstar-mp: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {size} bytes to {out}")
    return 0


def _setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with VALUE read as JSON when it is (true, 5, 0.5), else as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def run_admin(agg: Aggregator, args) -> int:
    try:
        if args.command == "optimize":
            data = agg.post("/optimize" + (f"?pid={args.pid}" if args.pid else ""), {})
            print(f"optimization requested for pid(s) {', '.join(map(str, data['requested'])) or 'none'}")
            return 0
        if args.settings:
            data = agg.post("/control", dict(_setting(s) for s in args.settings))
        else:
            data = agg.get("/control")
    except ValueError as exc:
        print(f"rockstar-mp: {exc}", file=sys.stderr)
        return 2
    except FetchError as exc:
        print(f"rockstar-mp: {exc}", file=sys.stderr)
        return 1
    for name, value in data.items():
        print(f"{name} = {json.dumps(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base, metrics_path = resolve(args.url, args.metrics_path)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "profile":
        return run_profile(args)
    agg = Aggregator(base, metrics_path, args.token)
    if getattr(args, "admin", False):
        agg.token = os.environ.get("ROCKSTAR_ADMIN_TOKEN") or args.token
        return run_admin(agg, args)
    try:
        if args.command == "top":
            agg.timeout = min(10.0, max(2.0, 2 * args.interval))
            return run_top(agg, args.interval, args.iterations, keys_from=sys.stdin)
        try:
            if args.command == "metrics":
                data: dict | list[dict] = agg.get(agg.metrics_path)
            else:
                data = agg.get("/workers").get("workers", [])
        except FetchError as exc:
            print(f"rockstar-mp: {exc}", file=sys.stderr)
            return 1
        if args.json:
            json.dump(data, sys.stdout, indent=2)
            print()
        elif isinstance(data, dict):  # metrics
            _print_metrics(data)
        else:
            _print_workers(data)
        sys.stdout.flush()
    except BrokenPipeError:  # `rockstar-mp ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
