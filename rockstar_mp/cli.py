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
import http.client
import json
import os
import select
import signal
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional

from .profiling.fetch import DEFAULT_PPROF_URL, ProfileFetchError, fetch_profile

DEFAULT_URL = "http://127.0.0.1:9090"
DEFAULT_METRICS_PATH = "/metrics"
TOP_ROUTES = 10
MiB = 2 ** 20

# ANSI: the alternate screen and hidden cursor while ``top`` runs; home + erase to redraw without flicker.
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


class FetchError(Exception):
    """A request to the aggregator failed; ``str()`` is the one-line message shown to the user and
    ``status`` the HTTP status, if an answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def fetch_json(url: str, token: str | None, timeout: float = 10.0, body: dict | None = None) -> dict:
    """GET ``url`` (or POST ``body`` as JSON) and decode the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"},
                                     method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _http_error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        body = ""
    try:
        detail = json.loads(body).get("description") or body
    except (ValueError, AttributeError):
        detail = body
    detail = " ".join(str(detail).split())[:300]
    return f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")


@dataclass
class Aggregator:
    """Where the aggregator is and how to ask it."""

    base: str
    metrics_path: str = DEFAULT_METRICS_PATH
    token: Optional[str] = None
    timeout: float = 10.0

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def metrics_url(self) -> str:
        return self.url(self.metrics_path)

    def get(self, path: str, body: dict | None = None) -> dict:
        """The JSON at ``path`` (POSTing ``body`` if given); ``FetchError`` with a readable message for
        every kind of failure."""
        url = self.url(path)
        try:
            data = fetch_json(url, self.token, self.timeout, body)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{url}: {_http_error_text(exc)}", exc.code) from None
        except urllib.error.URLError as exc:
            raise FetchError(f"cannot reach {url}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, truncated answers
            raise FetchError(f"cannot read {url}: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            raise FetchError(f"{url}: the answer is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise FetchError(f"{url}: expected a JSON object, got {type(data).__name__}")
        return data


def resolve(url: str, metrics_path: str | None = None) -> tuple[str, str]:
    """``(base, metrics path)`` from ``--url`` and ``--metrics-path`` (see the module docstring).

    >>> resolve("http://127.0.0.1:9090")
    ('http://127.0.0.1:9090', '/metrics')
    >>> resolve("127.0.0.1:9191/stats?pid=7")
    ('http://127.0.0.1:9191', '/stats?pid=7')
    """
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must look like http://HOST:PORT, got {url!r}")
    base = f"{parts.scheme}://{parts.netloc}"
    if metrics_path is None:
        path = parts.path.rstrip("/")
        if path:
            metrics_path = path + (f"?{parts.query}" if parts.query else "")
        else:
            metrics_path = os.environ.get("ROCKSTAR_METRICS_PATH") or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        metrics_path = "/" + metrics_path
    return base, metrics_path


# -- formatting -----------------------------------------------------------------------------------
def _num(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _mib(value) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def _msec(value) -> str:
    """Milliseconds with about three significant digits (sub-millisecond requests are common)."""
    if value is None:
        return "-"
    return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3}f}"


def _ms(value) -> str:
    return "-" if value is None else f"{_msec(value)} ms"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours:d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _in_flight(worker: dict) -> str:
    req = worker.get("in_flight_request")
    if not req:
        return "-"
    text = f"{req.get('method') or '?'} {req.get('path') or '?'} {_num(req.get('seconds'), '{:.2f}')}s"
    extra = (worker.get("in_flight") or 1) - 1
    return text + (f" (+{extra})" if extra > 0 else "")


@dataclass(frozen=True)
class Column:
    header: str
    width: int  # 0: the last column, left-aligned and unpadded
    value: Callable[[dict], str]


def _columns(rates: dict | None) -> list[Column]:
    cols = [Column("PID", 7, lambda w: str(w.get("pid", "?"))),
            Column("AGE", 4, lambda w: str(w.get("age", "-")))]
    if rates is None:  # the one-shot table: no rate, but where the worker sits
        cols += [Column("SLAB", 4, lambda w: str(w.get("slab", "-"))),
                 Column("STATE", 7, lambda w: str(w.get("state", "-")))]
    cols.append(Column("REQ", 8, lambda w: _num(w.get("requests"), "{:.0f}")))
    if rates is not None:
        cols.append(Column("REQ/S", 7, lambda w: _num(rates.get(w.get("pid")))))
    cols += [Column("RSS MiB", 8, lambda w: _mib(w.get("rss"))),
             Column("USS MiB", 8, lambda w: _mib(w.get("uss"))),
             Column("CPU%", 6, lambda w: _num(w.get("cpu_percent"))),
             Column("THREADS", 7, lambda w: _num(w.get("threads"), "{:.0f}")),
             Column("FDS", 5, lambda w: _num(w.get("open_fds"), "{:.0f}")),
             Column("HB", 6, lambda w: _num(w.get("heartbeat_age"), "{:.1f}s")),
             Column("IN-FLIGHT", 0, _in_flight)]
    return cols


def _row(cells: list[str], cols: list[Column]) -> str:
    return " ".join(c.rjust(col.width) if col.width else c for c, col in zip(cells, cols)).rstrip()


def worker_table(workers: list[dict], rates: dict | None = None) -> list[str]:
    """The header and one line per worker (sorted by pid); ``rates``: ``{pid: requests/s}`` adds REQ/S."""
    cols = _columns(rates)
    lines = [_row([c.header for c in cols], cols)]
    for w in sorted(workers, key=lambda w: w.get("pid", 0)):
        lines.append(_row([c.value(w) for c in cols], cols))
    return lines


def route_table(by_route: dict, limit: int = TOP_ROUTES) -> list[str]:
    routes = sorted(by_route.items(), key=lambda kv: (-(kv[1].get("requests") or 0), kv[0]))[:limit]
    width = max([5] + [len(r) for r, _ in routes])
    width = min(width, 40)
    lines = [f"{'ROUTE':<{width}} {'REQUESTS':>9} {'AVG ms':>8} {'P95 ms':>8}"]
    for route, figures in routes:
        name = route if len(route) <= width else route[:width - 1] + "~"
        lines.append(f"{name:<{width}} {figures.get('requests', 0):>9} "
                     f"{_msec(figures.get('avg_duration_ms')):>8} {_msec(figures.get('p95_ms')):>8}")
    return lines


# -- top ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One refresh's answers, with the monotonic times they were taken (for the rates)."""

    workload: dict
    workers: list
    metrics: dict
    workload_time: float
    workers_time: float
    wall: float = field(default_factory=time.time)


def take_sample(agg: Aggregator) -> Sample:
    t_workload = time.monotonic()
    workload = agg.get("/workload")
    t_workers = time.monotonic()
    workers = agg.get("/workers").get("workers", [])
    try:
        metrics = agg.get(agg.metrics_path)
    except FetchError as exc:
        if exc.status != 404:  # metrics off (enable_metrics=False): the views still work
            raise
        metrics = {}
    return Sample(workload, workers, metrics, t_workload, t_workers)


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0 or now < before:
        return None
    return (now - before) / seconds


def worker_rates(sample: Sample, previous: Sample | None) -> dict:
    if previous is None:
        return {}
    before = {w.get("pid"): w.get("requests") for w in previous.workers}
    seconds = sample.workers_time - previous.workers_time
    return {w.get("pid"): _rate(w.get("requests"), before.get(w.get("pid")), seconds) for w in sample.workers}


def _title(base: str, interval: float, wall: float | None = None) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(wall if wall is not None else time.time()))
    return f"rockstar-mp top  {base}  {clock}  (every {interval:g}s; q or Ctrl-C quits)"


def render_top(sample: Sample, previous: Sample | None, base: str = "", interval: float = 1.0,
               height: int | None = None) -> list[str]:
    """The screen's lines for one refresh. ``height`` (a terminal's rows) drops routes, then workers,
    so that the frame fits."""
    wl, system = sample.workload, sample.metrics.get("system", {})
    total = wl.get("total_requests")
    rps = _rate(total, previous.workload.get("total_requests") if previous else None,
                sample.workload_time - previous.workload_time if previous else 0.0)
    live = system.get("workers_live", len(sample.workers))
    head = [_title(base, interval, sample.wall),
            f"workers {live} live   requests {_num(total, '{:.0f}')} ({_num(rps)}/s)   "
            f"p50 {_ms(wl.get('p50_ms'))}  p95 {_ms(wl.get('p95_ms'))}  p99 {_ms(wl.get('p99_ms'))}   "
            f"dropped {_num(wl.get('records_dropped', system.get('records_dropped')), '{:.0f}')}   "
            f"uptime {_duration(system.get('uptime_seconds'))}",
            ""]
    workers = worker_table(sample.workers, worker_rates(sample, previous))
    routes = ["", *route_table(wl.get("by_route") or {})] if wl.get("by_route") else ["", "(no requests yet)"]
    if height is not None:
        room = max(height - len(head), 2)
        if len(workers) > room:
            hidden = len(workers) - (room - 1)
            workers = workers[:room - 1] + [f"... and {hidden} more workers"]
            routes = []
        elif room - len(workers) < 3:
            routes = []
        else:
            routes = routes[:room - len(workers)]
    return head + workers + routes


def render_error(message: str, base: str, interval: float, attempt: int, last_ok: float | None) -> list[str]:
    since = "never" if last_ok is None else f"{time.monotonic() - last_ok:.0f}s ago"
    return [_title(base, interval), "", f"ERROR: {message}", "",
            f"retrying every {interval:g}s (failed refreshes in a row: {attempt}; last success: {since})"]


class Screen:
    """Draws frames: in place with ANSI escapes on a terminal (and reads ``q``), else plain frames."""

    def __init__(self, out, keys_from=None) -> None:
        self.out = out
        self.tty = out.isatty()
        self._keys = None
        self._saved = None
        if self.tty and keys_from is not None and _foreground_tty(keys_from):
            import termios
            import tty
            self._keys = keys_from.fileno()
            self._saved = termios.tcgetattr(self._keys)
            tty.setcbreak(self._keys)  # keys arrive unbuffered and unechoed; Ctrl-C still signals
        if self.tty:
            self.out.write(ENTER)
            self.out.flush()

    def size(self) -> tuple[int, int] | tuple[None, None]:
        if not self.tty:
            return None, None
        size = shutil.get_terminal_size()
        return size.columns, size.lines

    def draw(self, lines: list[str]) -> None:
        if not self.tty:
            self.out.write("\n".join(lines) + "\n\n")
        else:
            width, height = self.size()
            lines = [line[:width] for line in lines[:height]]
            self.out.write(HOME + (ERASE_LINE + "\r\n").join(lines) + ERASE_LINE + ERASE_BELOW)
        self.out.flush()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the user asked to quit."""
        if self._keys is None:
            time.sleep(max(seconds, 0.0))
            return False
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._keys], [], [], left)
            if ready:
                data = os.read(self._keys, 64)
                if not data or any(c in data for c in b"qQ\x03\x04"):
                    return True
        return False

    def close(self) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self._keys, termios.TCSADRAIN, self._saved)
            self._saved = None
        if self.tty:
            self.out.write(LEAVE)
            self.out.flush()
            self.tty = False


def _foreground_tty(stream) -> bool:
    try:
        fd = stream.fileno()
        if not os.isatty(fd):
            return False
    except (AttributeError, ValueError, OSError):
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()  # changing a terminal from the background stops us
    except OSError:
        return True  # not our controlling terminal: no job control to fear


def _quit(signum, frame):
    raise KeyboardInterrupt


def run_top(agg: Aggregator, interval: float, iterations: int | None, out=None, keys_from=None) -> int:
    out = out if out is not None else sys.stdout
    saved = {signum: signal.signal(signum, _quit)  # Ctrl-C quits even where the parent ignored SIGINT
             for signum in (signal.SIGINT, signal.SIGTERM)}
    screen = Screen(out, keys_from)
    previous: Sample | None = None
    failures, last_ok, done = 0, None, 0
    try:
        next_at = time.monotonic()
        while True:
            try:
                sample = take_sample(agg)
            except FetchError as exc:
                failures += 1
                screen.draw(render_error(str(exc), agg.base, interval, failures, last_ok))
            else:
                failures, last_ok = 0, time.monotonic()
                screen.draw(render_top(sample, previous, agg.base, interval, screen.size()[1]))
                previous = sample
            done += 1
            if iterations is not None and done >= iterations:
                return 1 if failures else 0
            next_at = max(next_at + interval, time.monotonic())
            if screen.wait(next_at - time.monotonic()):
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        screen.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)


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
    profile.add_argument("--kind", default="profile", choices=("profile", "wall", "heap", "goroutine",
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
            data = agg.get("/optimize" + (f"?pid={args.pid}" if args.pid else ""), body={})
            print(f"optimization requested for pid(s) {', '.join(map(str, data['requested'])) or 'none'}")
            return 0
        body = dict(_setting(s) for s in args.settings) if args.settings else None
        data = agg.get("/control", body=body)
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
                data = agg.get(agg.metrics_path)
            else:
                data = agg.get("/workers").get("workers", [])
        except FetchError as exc:
            print(f"rockstar-mp: {exc}", file=sys.stderr)
            return 1
        if args.json:
            json.dump(data, sys.stdout, indent=2)
            print()
        elif args.command == "metrics":
            _print_metrics(data)
        else:
            _print_workers(data)
        sys.stdout.flush()
    except BrokenPipeError:  # `rockstar-mp ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
