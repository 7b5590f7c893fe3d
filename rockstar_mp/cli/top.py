"""``rockstar-mp top``: a live view of the workers, the load and the busiest routes, redrawn in place on
a terminal (plain frames when piped); and the worker table the ``workers`` command prints too."""
from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .client import Aggregator, FetchError

TOP_ROUTES = 10
MiB = 2 ** 20

# ANSI: the alternate screen and hidden cursor while ``top`` runs; home + erase to redraw without flicker.
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


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


def _heartbeat(worker: dict) -> str:
    """The heartbeat's age, with ``STUCK`` when the aggregator finds the worker stuck (its pid runs but
    its heartbeat is older than ``stuck_after``: stopped, or holding the GIL), or ``RECYCLE`` when it went
    over ``max_worker_memory``."""
    age = _num(worker.get("heartbeat_age"), "{:.1f}s")
    if worker.get("recycling"):  # over max_worker_memory: it exits after its requests in progress
        return f"RECYCLE {age}"
    return f"STUCK {age}" if worker.get("stuck") else age


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
             Column("MiB/h", 7, lambda w: _num(w.get("memory_slope_mib_per_hour"))),
             Column("CPU%", 6, lambda w: _num(w.get("cpu_percent"))),
             Column("THREADS", 7, lambda w: _num(w.get("threads"), "{:.0f}")),
             Column("FDS", 5, lambda w: _num(w.get("open_fds"), "{:.0f}")),
             Column("HB", 12, _heartbeat),
             Column("IN-FLIGHT", 0, _in_flight)]
    return cols


def _row(cells: list[str], cols: list[Column]) -> str:
    return " ".join(c.rjust(col.width) if col.width else c for c, col in zip(cells, cols, strict=True)).rstrip()


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
    stuck = system.get("workers_stuck", sum(1 for w in sample.workers if w.get("stuck")))
    head = [_title(base, interval, sample.wall),
            f"workers {live} live{f' ({stuck} STUCK)' if stuck else ''}   "
            f"requests {_num(total, '{:.0f}')} ({_num(rps)}/s)   "
            f"p50 {_ms(wl.get('p50_ms'))}  p95 {_ms(wl.get('p95_ms'))}  p99 {_ms(wl.get('p99_ms'))}   "
            f"dropped {_num(wl.get('records_dropped', system.get('records_dropped')), '{:.0f}')}   "
            f"{_recycled(system)}"
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


def _recycled(system: dict) -> str:
    """Workers replaced for going over max_worker_memory, when any were."""
    count = system.get("memory_recycles")
    return f"recycled {count} (memory)   " if count else ""


def render_error(message: str, base: str, interval: float, attempt: int, last_ok: float | None) -> list[str]:
    since = "never" if last_ok is None else f"{time.monotonic() - last_ok:.0f}s ago"
    return [_title(base, interval), "", f"ERROR: {message}", "",
            f"retrying every {interval:g}s (failed refreshes in a row: {attempt}; last success: {since})"]


class Screen:
    """Draws frames: in place with ANSI escapes on a terminal (and reads ``q``), else plain frames."""

    def __init__(self, out, keys_from=None) -> None:
        self.out = out
        self.tty = out.isatty()
        self._keys: int | None = None
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
        if self._saved is not None and self._keys is not None:
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
