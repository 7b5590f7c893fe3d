"""The ``/debug/pprof`` tree: Go-compatible profiles of every worker, served on ``pprof_port``.

Each profile targets one worker (``?pid=N``) or every live worker, merged (the default); every sample
has a ``pid`` label. The aggregator asks the workers over their control sockets
(``rockstar_mp.worker.control``) with asyncio clients and timeouts, so its loop never waits on a
worker; merging and encoding run in a thread. Errors are Go's: ``text/plain`` with ``X-Go-Pprof: 1``;
400 for a bad parameter (or ``seconds`` above ``pprof_max_seconds``), 404 for an unknown pid, 409 when
a CPU profile already runs on that worker, 503 when no (requested) worker answered.
A worker that dies mid-profile is left out of the merge, and named in the profile's comments
(``go tool pprof -comments``) and in ``X-Rockstar-Missing-Workers``.

Besides the profiles: ``cmdline`` (the master's command line, NUL-separated like Go's, or a worker's
with ``?pid=N``) and ``symbol`` (Go's: names the addresses the ``debug=1`` texts print). With
``require_auth`` the token goes in ``Authorization: Bearer <token>`` or as the password of HTTP Basic
auth, which is what ``go tool pprof http://x:TOKEN@host:6060/debug/pprof/profile`` sends.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import html
import logging
import os
from typing import Any
from urllib.parse import urlencode

import falcon
import falcon.asgi

from ..profiling import DEFAULT_SECONDS, KINDS, TIMED, render
from ..profiling.channel import WorkerUnavailable, ask, socket_path
from ..profiling.rendering import TEXT_KINDS, symbolize
from . import params
from .admin import BodyDeadline, RateLimit, bearer_token, refuse_token_in_query, token_matches
from .net import listen_tcp, url_of
from .state import AggregatorState

log = logging.getLogger("rockstar_mp.aggregator.pprof")

IDLE_WAIT = 5.0  # seconds between looks at the config when no change woke the server task (a safety net)
ANSWER_GRACE = 15.0  # seconds a worker gets beyond the profile's window to answer
# heap and allocs: reading a snapshot of everything traced since boot takes seconds in a big worker
HEAP_ANSWER_GRACE = 60.0
MAX_SYMBOL_REQUEST = 1 << 20  # bytes of addresses a ``symbol`` POST may send
EXTRAS = ("cmdline", "symbol")  # paths of the tree that are not profiles

DESCRIPTIONS = {
    "profile": "CPU profile (cpu/nanoseconds, samples/count). Sync workers: SIGPROF every 10 ms of "
               "the main thread's CPU time (a POSIX CPU-clock timer), sampling the main thread, each sample weighted "
               "by the timer expirations it stands for (long C calls included); threaded workers (gthread): a "
               "thread sampler charging each thread's CPU time since its last sample to the stack it ran. "
               "?seconds=N (default 30).",
    "wall": "Wall-clock samples of every thread (wall/nanoseconds): where time goes, running or "
            "waiting. ?seconds=N (default 30).",
    "heap": "Memory by allocation site (inuse_space, inuse_objects, alloc_space, alloc_objects) from "
            "tracemalloc, started for a ?seconds=N window (default 1 s; the worker runs 8-20x slower "
            "meanwhile) unless it runs since boot (heap_tracemalloc_at_boot: then a snapshot of everything "
            "alive, a leak made any time before included, or a delta with ?seconds=N). ?gc=1 collects first.",
    "allocs": "The heap profile with alloc_space as its default: what each site allocated over a "
              "?seconds=N window (default 1 s), counted by looking at the traced blocks every 0.1 s (a "
              "lower bound: a block allocated and freed between two looks is missed).",
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
    "cmdline": "The master's command line, arguments separated by NUL bytes (?pid=N: that worker's).",
    "symbol": "Names the addresses the debug=1 texts print: POST (or GET ?0x1a2b+0x3c4d) addresses "
              "separated by '+'.",
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
        if debug and kind not in TEXT_KINDS:
            raise _error(falcon.HTTP_400, f"debug={debug} is not supported for {kind}; "
                                          "read the profile with go tool pprof")
        return min(debug, 2 if kind == "goroutine" else 1)

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
        internal = params.text(req, "internal") not in (None, "", "0", "false")
        pids, single = self._pids(req)
        results, missing, comments = await self.collect(kind, seconds, pids, single, gc, internal)
        content_type, body = await asyncio.to_thread(render, kind, results, debug, comments)
        resp.content_type = content_type
        resp.set_header("X-Content-Type-Options", "nosniff")
        if missing:
            resp.set_header("X-Rockstar-Missing-Workers", ",".join(map(str, missing)))
        if content_type == "application/octet-stream":
            resp.set_header("Content-Disposition", f'attachment; filename="{kind}"')
        resp.data = body

    async def collect(self, kind: str, seconds: float | None, pids: list[int], single: bool = False,
                      gc: bool = False, internal: bool = False) -> tuple[list[dict], list[int], tuple[str, ...]]:
        """Ask ``pids`` for a ``kind`` profile over ``seconds`` (our own threads in it if ``internal``):
        (the results of those that answered, the pids that did not, a comment naming each of those).
        Raises the Go-style errors: 409 when a CPU profile already runs there,
        a worker's own error when ``single``, 503 when none answered."""
        if kind == "profile":
            busy = self._cpu_running.intersection(pids)
            if busy:
                raise _error(falcon.HTTP_409, "a CPU profile is already running on worker(s) "
                                              f"{sorted(busy)}")
            self._cpu_running.update(pids)
        try:
            request = {"cmd": "profile", "kind": kind, "seconds": seconds, "gc": gc, "internal": internal}
            timeout = (DEFAULT_SECONDS[kind] if seconds is None and kind in TIMED else seconds or 0) + \
                (HEAP_ANSWER_GRACE if kind in ("heap", "allocs") else ANSWER_GRACE)
            answers = await asyncio.gather(*(self._ask(pid, request, timeout) for pid in pids))
        finally:
            if kind == "profile":
                self._cpu_running.difference_update(pids)
        results, missing, statuses, comments = [], [], [], []
        for pid, answer in zip(pids, answers, strict=True):
            if isinstance(answer, str):
                missing.append(pid)
                comments.append(f"worker {pid} is missing from this profile: it did not answer ({answer})")
            elif answer.get("ok"):
                results.append(answer["result"])
            else:
                missing.append(pid)
                statuses.append((int(answer.get("status", 500)), f"worker {pid}: {answer.get('error')}"))
                comments.append(f"worker {pid} is missing from this profile: {answer.get('error')}")
        for status, message in statuses:
            if status == 409 or single:
                raise _error(falcon.code_to_http_status(status), message)
        if not results:
            detail = "; ".join(m for _, m in statuses) or "did not answer (gone, or not serving profiles)"
            raise _error(falcon.HTTP_503, f"no profile from worker(s) {missing}: {detail}")
        return results, missing, tuple(comments)

    def live_pids(self) -> list[int]:
        return [w.slot.pid for w in self.state.snapshot().workers]

    async def _ask(self, pid: int, request: dict, timeout: float) -> dict | str:
        """The worker's answer, or why there is none."""
        try:
            return await ask(socket_path(self.run_dir, pid), request, timeout)
        except WorkerUnavailable as exc:
            log.warning("rockstar-mp: worker %d did not answer the %s profile request: %s", pid,
                        request.get("kind"), exc)
            return str(exc) or type(exc).__name__

    # -- cmdline and symbol -----------------------------------------------------------------------------
    def cmdline(self, req, resp) -> None:
        """The master's command line (the aggregator's parent), or the ``?pid=N`` worker's."""
        pid = self._pids(req)[0][0] if params.text(req, "pid") is not None else os.getppid()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _error(falcon.HTTP_503, f"cannot read the command line of process {pid}: {exc}") from None
        resp.content_type = "text/plain; charset=utf-8"
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.data = data.rstrip(b"\0")  # Go's: the arguments joined by NUL, none after the last

    async def symbol(self, req, resp) -> None:
        """Go's ``symbol``: ``num_symbols: 1``, then ``address name`` for each address asked (POST body,
        or the GET query) that a ``debug=1`` text printed."""
        if req.method == "POST":
            data = await req.stream.read(MAX_SYMBOL_REQUEST + 1)
            if len(data) > MAX_SYMBOL_REQUEST:
                raise _error(falcon.HTTP_413, f"at most {MAX_SYMBOL_REQUEST} bytes of addresses")
            words = data.decode("ascii", "replace")
        else:
            words = req.query_string
        addresses = []
        for word in words.replace("%2B", "+").replace("%2b", "+").split("+"):
            try:
                addresses.append(int(word.strip(), 0))
            except ValueError:
                continue  # Go skips what is not a number
        resp.content_type = "text/plain; charset=utf-8"
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.text = symbolize(addresses)

    # -- the index ------------------------------------------------------------------------------------
    def index_html(self) -> str:
        snap = self.state.snapshot()
        pids = [w.slot.pid for w in snap.workers]
        threads = sum((self.state.procs.stats.get(pid) or {}).get("threads") or 0 for pid in pids)
        rows, items = [], []
        for kind in sorted(KINDS + EXTRAS):
            href = html.escape(f"{self.base}/{kind}" + ("?debug=1" if kind in TEXT_KINDS else ""))
            count = str(threads) if kind in ("goroutine", "threadcreate") else ""
            per_worker = " ".join(
                f'<a href="{html.escape(self._link(kind, pid))}">{pid}</a>' for pid in pids)
            rows.append(f"<tr><td align=right>{count}</td><td><a href=\"{href}\">{kind}</a></td>"
                        f"<td>{per_worker}</td></tr>")
            items.append(f"<li><div class=profile-name>{kind}: </div>{html.escape(DESCRIPTIONS[kind])}</li>")
        return ("<html>\n<head>\n<title>{base}/</title>\n<style>.profile-name{{display:inline-block; "
                "width:6rem;}}</style>\n</head>\n<body>\n{base}/<br>\n<p>Set debug=1 as a query parameter "
                "to export in legacy text format (heap, allocs, block, mutex, goroutine, threadcreate); "
                "?pid=N profiles one worker, "
                "the default merges every live worker ({n}: {pids}) with a pid label on each sample.</p>\n"
                "<br>\nTypes of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td>"
                "<td>Per worker</td></thead>\n{rows}\n</table>\n"
                "<a href=\"{base}/goroutine?debug=2\">full goroutine stack dump</a>\n<br>\n<p>\nProfile "
                "Descriptions:\n<ul>\n{items}\n</ul>\n</p>\n<p>Read them with <code>go tool pprof "
                "http://HOST:PORT{base}/profile?seconds=30</code>.</p>\n</body>\n</html>\n").format(
            base=html.escape(self.base), n=len(pids), pids=", ".join(map(str, pids)) or "none",
            rows="\n".join(rows), items="\n".join(items))

    def _link(self, kind: str, pid: int) -> str:
        query: dict = {"pid": pid}
        if kind in TEXT_KINDS:
            query["debug"] = 1
        return f"{self.base}/{kind}?{urlencode(query)}"


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
        elif path.startswith(base + "/") and path[len(base) + 1:] in KINDS + EXTRAS:
            kind = path[len(base) + 1:]
        else:
            raise _error(falcon.HTTP_404, f"404 page not found: {path} (the profiles are under {base or '/'}/)")
        allowed = ("GET", "HEAD", "POST") if kind == "symbol" else ("GET", "HEAD")
        if req.method not in allowed:
            raise _error(falcon.HTTP_405, f"{req.method} is not allowed; use {' or '.join(allowed[::2])}")
        if kind is None:
            resp.content_type = "text/html; charset=utf-8"
            resp.text = pprof.index_html()
        elif kind == "cmdline":
            pprof.cmdline(req, resp)
        elif kind == "symbol":
            await pprof.symbol(req, resp)
        else:
            await pprof.serve(kind, req, resp)


def basic_password(req) -> str | None:
    """The password of an ``Authorization: Basic`` header (whatever the user name), else None."""
    scheme, _, encoded = (req.get_header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


class TokenAuth:
    """Falcon middleware of the pprof port: with ``require_auth``, every request needs the token
    (``auth_token`` or ``admin_token``) as ``Authorization: Bearer <token>`` or as the password of HTTP
    Basic auth, any user name: ``go tool pprof`` has no header flag, but sends the user info of its URL,
    ``http://x:TOKEN@host:6060/debug/pprof/heap``. The comparison is constant-time (``token_matches``,
    against every token: no short cut); each refusal is counted in ``system.pprof_auth_failures``."""

    def __init__(self, state: AggregatorState) -> None:
        self._state = state
        self._required = state.config.require_auth
        self._tokens = [t for t in (state.config.auth_token, state.config.admin_token) if t]

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self._required:
            return
        refuse_token_in_query(req)
        given = bearer_token(req)
        if given is None:
            given = basic_password(req)
        if not any([token_matches(given, expected) for expected in self._tokens]):  # no short cut
            self._state.pprof_auth_failures += 1
            raise falcon.HTTPUnauthorized(
                title="401 Unauthorized",
                description="send the token as 'Authorization: Bearer <token>', or as the password of "
                            "HTTP Basic auth: go tool pprof http://x:TOKEN@HOST:PORT/debug/pprof/profile",
                challenges=['Basic realm="rockstar-mp pprof"', 'Bearer realm="rockstar-mp"'])


def create_pprof_app(state: AggregatorState, run_dir: str) -> BodyDeadline:
    """The pprof app served on ``pprof_port`` (behind the token when ``require_auth``: ``TokenAuth``)."""
    middleware: list[Any] = [RateLimit(state), TokenAuth(state)]
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
