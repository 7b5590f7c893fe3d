"""The ``/debug/pprof`` tree: Go-compatible profiles of every worker, served on ``pprof_port``.

Each profile targets one worker (``?pid=N``) or every live worker, merged (the default); every sample
has a ``pid`` label. The aggregator asks the workers over their control sockets
(``rockstar_mp.worker.control``) with asyncio clients and timeouts, so its loop never waits on a
worker; merging and encoding run in a thread. Errors are Go's: ``text/plain`` with ``X-Go-Pprof: 1``;
400 for a bad parameter (or ``seconds`` above ``pprof_max_seconds``), 404 for an unknown pid, 409 when
a CPU profile already runs on that worker, 503 when no (requested) worker answered.
A worker that dies mid-profile is left out of the merge (``X-Rockstar-Missing-Workers`` names it).
"""
from __future__ import annotations

import asyncio
import html
import logging
from typing import Any
from urllib.parse import urlencode

import falcon
import falcon.asgi

from ..profiling import DEFAULT_SECONDS, KINDS, TIMED, render
from ..profiling.channel import WorkerUnavailable, ask, socket_path
from . import params
from .admin import BodyDeadline, RateLimit
from .http import BearerAuth
from .net import listen_tcp, url_of
from .state import AggregatorState

log = logging.getLogger("rockstar_mp.aggregator.pprof")

IDLE_WAIT = 5.0  # seconds between looks at the config when no change woke the server task (a safety net)
ANSWER_GRACE = 15.0  # seconds a worker gets beyond the profile's window to answer

DESCRIPTIONS = {
    "profile": "CPU profile (cpu/nanoseconds, samples/count). Sync workers: SIGPROF every 10 ms of "
               "the main thread's CPU time (a POSIX CPU-clock timer), sampling the main thread; threaded workers "
               "(gthread): a thread sampler reading each thread's CPU time, biased toward GIL release points. "
               "?seconds=N (default 30).",
    "wall": "Wall-clock samples of every thread (wall/nanoseconds): where time goes, running or "
            "waiting. ?seconds=N (default 30).",
    "heap": "In-use memory by allocation site (inuse_space, inuse_objects) from tracemalloc, started "
            "for a ?seconds=N window (default 1 s; the worker runs 8-20x slower meanwhile) unless it "
            "runs since boot (then a snapshot, or a delta with ?seconds=N). ?gc=1 collects first.",
    "goroutine": "Stack traces of all current threads (goroutine/count per distinct stack, thread and "
                 "pid labels). ?debug=1: grouped text; ?debug=2: one block per thread with its state.",
    "threadcreate": "Where each live thread was started (threadcreate/count).",
    "block": "Off-CPU time by stack (delay/nanoseconds, contentions/count) over ?seconds=N (default "
             "5): wall time minus the thread's CPU time while it sits in a wait, labelled wait=lock, "
             "io or sleep. Unlike Go's (which records every blocking event since the program "
             "started, with sampling), this one samples the threads for a window and counts a "
             "'contention' per sample spent waiting; it includes idle threads.",
    "mutex": "The block profile's lock waits only (wait=lock). Unlike Go's, which charges contention "
             "to the holder that released the lock, this one charges the waiting stack.",
    "trace": "A timeline of the workers' threads as Chrome trace-event JSON (open it in "
             "https://ui.perfetto.dev), built from samples. ?seconds=N (default 1). Not Go's "
             "execution-trace format: go tool trace cannot read it.",
}


def _pprof_error(req, resp, exc: falcon.HTTPError) -> None:
    resp.content_type = "text/plain; charset=utf-8"
    resp.set_header("X-Go-Pprof", "1")
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.text = (exc.description or exc.title or str(exc.status)) + "\n"


def _go_error_body(title: str, description: str) -> tuple:
    return ("text/plain; charset=utf-8", (description + "\n").encode(),
            [("x-go-pprof", "1"), ("x-content-type-options", "nosniff")])


def _error(status, message: str) -> falcon.HTTPError:
    return falcon.HTTPError(status, title=str(status), description=message)


class Pprof:
    def __init__(self, state: AggregatorState, run_dir: str) -> None:
        self.state = state
        self.run_dir = run_dir
        self._cpu_running: set[int] = set()

    @property
    def config(self):
        return self.state.config  # with the runtime overrides (enable_pprof, pprof_path)

    @property
    def base(self) -> str:
        return self.config.pprof_path.rstrip("/")

    # -- parameters ----------------------------------------------------------------------------------
    def _seconds(self, req, kind: str) -> float | None:
        if kind not in TIMED:
            return None
        # heap: seconds=0 asks for a snapshot; every other kind needs a window
        seconds = params.number(req, "seconds", minimum=0.0, above=None if kind == "heap" else 0.0)
        if seconds is None:
            if kind == "heap" and DEFAULT_SECONDS[kind] <= self.config.pprof_max_seconds:
                return None  # the worker chooses: a window, or a snapshot if tracemalloc runs since boot
            return min(DEFAULT_SECONDS[kind], self.config.pprof_max_seconds)
        if seconds > self.config.pprof_max_seconds:
            raise _error(falcon.HTTP_400, f"profile duration {seconds:g}s exceeds the server's maximum "
                                          f"(pprof_max_seconds={self.config.pprof_max_seconds:g})")
        return seconds

    @staticmethod
    def _debug(req, kind: str) -> int:
        debug = params.integer(req, "debug", 0)
        if debug and kind not in ("goroutine", "threadcreate"):
            raise _error(falcon.HTTP_400, f"debug={debug} is not supported for {kind}; "
                                          "read the profile with go tool pprof")
        return min(debug, 2)

    def _pids(self, req) -> tuple[list[int], bool]:
        live = self.live_pids()
        pid = params.integer(req, "pid", minimum=1)
        if pid is None:
            if not live:
                raise _error(falcon.HTTP_503, "no live workers to profile")
            return live, False
        if pid not in live:
            raise _error(falcon.HTTP_404, f"no live worker with pid {pid}")
        return [pid], True

    # -- one profile ---------------------------------------------------------------------------------
    async def serve(self, kind: str, req, resp) -> None:
        seconds = self._seconds(req, kind)
        debug = self._debug(req, kind)
        gc = params.text(req, "gc") not in (None, "", "0", "false")
        pids, single = self._pids(req)
        results, missing = await self.collect(kind, seconds, pids, single, gc)
        content_type, body = await asyncio.to_thread(render, kind, results, debug)
        resp.content_type = content_type
        resp.set_header("X-Content-Type-Options", "nosniff")
        if missing:
            resp.set_header("X-Rockstar-Missing-Workers", ",".join(map(str, missing)))
        if content_type == "application/octet-stream":
            resp.set_header("Content-Disposition", f'attachment; filename="{kind}"')
        resp.data = body

    async def collect(self, kind: str, seconds: float | None, pids: list[int], single: bool = False,
                      gc: bool = False) -> tuple[list[dict], list[int]]:
        """Ask ``pids`` for a ``kind`` profile over ``seconds``: (the results of those that answered,
        the pids that did not). Raises the Go-style errors: 409 when a CPU profile already runs there,
        a worker's own error when ``single``, 503 when none answered."""
        if kind == "profile":
            busy = self._cpu_running.intersection(pids)
            if busy:
                raise _error(falcon.HTTP_409, "a CPU profile is already running on worker(s) "
                                              f"{sorted(busy)}")
            self._cpu_running.update(pids)
        try:
            request = {"cmd": "profile", "kind": kind, "seconds": seconds, "gc": gc}
            timeout = (DEFAULT_SECONDS[kind] if seconds is None and kind in TIMED else seconds or 0) + ANSWER_GRACE
            answers = await asyncio.gather(*(self._ask(pid, request, timeout) for pid in pids))
        finally:
            if kind == "profile":
                self._cpu_running.difference_update(pids)
        results, missing, statuses = [], [], []
        for pid, answer in zip(pids, answers, strict=True):
            if answer is None:
                missing.append(pid)
            elif answer.get("ok"):
                results.append(answer["result"])
            else:
                missing.append(pid)
                statuses.append((int(answer.get("status", 500)), f"worker {pid}: {answer.get('error')}"))
        for status, message in statuses:
            if status == 409 or single:
                raise _error(falcon.code_to_http_status(status), message)
        if not results:
            detail = "; ".join(m for _, m in statuses) or "did not answer (gone, or not serving profiles)"
            raise _error(falcon.HTTP_503, f"no profile from worker(s) {missing}: {detail}")
        return results, missing

    def live_pids(self) -> list[int]:
        return [w.slot.pid for w in self.state.snapshot().workers]

    async def _ask(self, pid: int, request: dict, timeout: float) -> dict | None:
        try:
            return await ask(socket_path(self.run_dir, pid), request, timeout)
        except WorkerUnavailable as exc:
            log.warning("rockstar-mp: worker %d did not answer the %s profile request: %s", pid,
                        request.get("kind"), exc)
            return None

    # -- the index ------------------------------------------------------------------------------------
    def index_html(self) -> str:
        snap = self.state.snapshot()
        pids = [w.slot.pid for w in snap.workers]
        threads = sum((self.state.procs.stats.get(pid) or {}).get("threads") or 0 for pid in pids)
        rows, items = [], []
        for kind in KINDS:
            href = html.escape(f"{self.base}/{kind}" + ("?debug=1" if kind in ("goroutine", "threadcreate")
                                                         else ""))
            count = str(threads) if kind == "goroutine" else ""
            per_worker = " ".join(
                f'<a href="{html.escape(self._link(kind, pid))}">{pid}</a>' for pid in pids)
            rows.append(f"<tr><td align=right>{count}</td><td><a href=\"{href}\">{kind}</a></td>"
                        f"<td>{per_worker}</td></tr>")
            items.append(f"<li><div class=profile-name>{kind}: </div>{html.escape(DESCRIPTIONS[kind])}</li>")
        return ("<html>\n<head>\n<title>{base}/</title>\n<style>.profile-name{{display:inline-block; "
                "width:6rem;}}</style>\n</head>\n<body>\n{base}/<br>\n<p>Set debug=1 as a query parameter "
                "to export in legacy text format (goroutine, threadcreate); ?pid=N profiles one worker, "
                "the default merges every live worker ({n}: {pids}) with a pid label on each sample.</p>\n"
                "<br>\nTypes of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td>"
                "<td>Per worker</td></thead>\n{rows}\n</table>\n"
                "<a href=\"{base}/goroutine?debug=2\">full goroutine stack dump</a>\n<br>\n<p>\nProfile "
                "Descriptions:\n<ul>\n{items}\n</ul>\n</p>\n<p>Read them with <code>go tool pprof "
                "http://HOST:PORT{base}/profile?seconds=30</code>.</p>\n</body>\n</html>\n").format(
            base=html.escape(self.base), n=len(pids), pids=", ".join(map(str, pids)) or "none",
            rows="\n".join(rows), items="\n".join(items))

    def _link(self, kind: str, pid: int) -> str:
        params = {"pid": pid}
        if kind in ("goroutine", "threadcreate"):
            params["debug"] = 1
        return f"{self.base}/{kind}?{urlencode(params)}"


class _Tree:
    """Every path goes through here, so ``enable_pprof`` and ``pprof_path`` changed at runtime
    (``rockstar-mp control``) take effect at once: off, or outside the tree, is a 404."""

    def __init__(self, pprof: Pprof) -> None:
        self.pprof = pprof

    async def handle(self, req, resp, **_) -> None:
        pprof = self.pprof
        if not pprof.config.enable_pprof:
            raise _error(falcon.HTTP_404, "profiling is off (enable_pprof)")
        base, path = pprof.base, req.path
        if path in (base, base + "/") or (not base and path == "/"):
            kind = None
        elif path.startswith(base + "/") and path[len(base) + 1:] in KINDS:
            kind = path[len(base) + 1:]
        else:
            raise _error(falcon.HTTP_404, f"404 page not found: {path} (the profiles are under {base or '/'}/)")
        if req.method not in ("GET", "HEAD"):
            raise _error(falcon.HTTP_405, f"{req.method} is not allowed; use GET")
        if kind is None:
            resp.content_type = "text/html; charset=utf-8"
            resp.text = pprof.index_html()
        else:
            await pprof.serve(kind, req, resp)


def create_pprof_app(state: AggregatorState, run_dir: str) -> BodyDeadline:
    """The pprof app served on ``pprof_port`` (behind the bearer token when ``require_auth``)."""
    middleware: list[Any] = [RateLimit(state), BearerAuth(state.config)]
    app = falcon.asgi.App(middleware=middleware)
    app.set_error_serializer(_pprof_error)
    app.add_sink(_Tree(Pprof(state, run_dir)).handle, prefix="/")
    return BodyDeadline(app, state, _go_error_body)


async def run_pprof_server(state: AggregatorState, run_dir: str, make_server, stopping: asyncio.Event,
                           poll: float = 0.25) -> None:
    """Serve the pprof app on ``pprof_port`` while the aggregator runs, from the moment
    ``enable_pprof`` is on (at start, or later at runtime); the port stays bound once opened (the
    app answers 404 while pprof is off). ``make_server(app, sock)`` is the aggregator's HttpServer.
    Binding never blocks the loop: a busy port is retried on the next poll (and logged once)."""
    server = None
    task: asyncio.Task | None = None
    logged = False
    try:
        while not stopping.is_set():
            if server is None and state.config.enable_pprof:
                try:
                    sock = listen_tcp(state.config.host, state.config.pprof_port)
                except OSError as exc:
                    if not logged:
                        log.error("rockstar-mp: cannot listen on %s:%d for pprof (retrying): %s",
                                  state.config.host, state.config.pprof_port, exc)
                        logged = True
                else:
                    server = make_server(create_pprof_app(state, run_dir), sock)
                    task = asyncio.create_task(server.run())
                    if state.announce is not None:
                        state.announce(f"serving-pprof {url_of(sock, state.config.pprof_path + '/')}")
            # a port that could not be bound is retried every ``poll``; else only a config change matters
            await state.until_config_changes(stopping, poll if server is None and state.config.enable_pprof
                                             else IDLE_WAIT)
    finally:
        if server is not None:
            server.stop()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
