"""``rockstar-mp``: read a running server's aggregator from the shell.

    rockstar-mp metrics [--url http://127.0.0.1:9090/metrics] [--token T] [--json]
    rockstar-mp workers [--url ...] [--token T] [--json]

The token can also come from $ROCKSTAR_AUTH_TOKEN (never put it on a shared command line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9090/metrics"


def fetch_json(url: str, token: str | None) -> dict:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _print_metrics(data: dict) -> None:
    for section in ("counters", "gauges"):
        for name, value in sorted(data.get(section, {}).items()):
            print(f"{section[:-1]:8} {name} {value}")
    for name, hist in sorted(data.get("histograms", {}).items()):
        print(f"histogram {name} count={hist['count']} sum={hist['sum']}")
    for name, value in sorted(data.get("system", {}).items()):
        print(f"system   {name} {value}")


def _print_workers(data: dict) -> None:
    print(f"{'PID':>8} {'AGE':>5} {'SLAB':>4} {'RSS MiB':>8} {'CPU%':>6} {'THREADS':>7}")
    for w in data.get("workers", []):
        rss = (w.get("rss") or 0) / 2 ** 20
        print(f"{w['pid']:>8} {w['age']:>5} {w['slab']:>4} {rss:>8.1f} {w.get('cpu_percent') or 0:>6.1f} "
              f"{w.get('threads') or 0:>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rockstar-mp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("metrics", "workers"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--url", default=os.environ.get("ROCKSTAR_URL", DEFAULT_URL))
        cmd.add_argument("--token", default=os.environ.get("ROCKSTAR_AUTH_TOKEN"))
        cmd.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    try:
        data = fetch_json(args.url, args.token)
    except urllib.error.HTTPError as exc:
        print(f"rockstar-mp: {args.url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rockstar-mp: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(data if args.command == "metrics" else data.get("workers", []), sys.stdout, indent=2)
        print()
    elif args.command == "metrics":
        _print_metrics(data)
    else:
        _print_workers(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
