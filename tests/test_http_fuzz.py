"""Every bad request is a 4xx, never a 500 (issue 11): a property-based fuzz of every HTTP endpoint.

One real gunicorn (2 workers) with its aggregator per auth mode (open, and ``require_auth`` with a
reading and an admin token), pprof on. Hypothesis generates batches of requests, sent at once over raw
sockets to the metrics port and the pprof port: the real routes (read from the apps) and mutations of
them; mostly a method, token and parameters the route takes but for a value or two (unicode digits,
5,000-digit numbers, ``nan``, broken percent-encoding, a parameter given twice or unknown), now and
then anything (PUT, DELETE, OPTIONS, odd methods); headers with bytes past ASCII; JSON bodies with huge
numbers, ``NaN``, lone surrogates, deep nesting and wrong types, sent whole, chunked or cut short.

Every answer must be a complete HTTP response, never a 500; an error from our apps is JSON on the
metrics port and Go-style text on the pprof port; a HEAD answer has no body; and the server's log
never gets a traceback. A ``POST /control`` that was accepted is undone after each batch, so the next
batch meets the same server. Under ``CI=true`` Hypothesis derandomizes (its ``ci`` profile): CI sends
the same requests every run, a developer's run new ones.
"""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import falcon.asgi
import pytest
from falcon.inspect import inspect_app
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rockstar_mp.aggregator.admin import TOKEN_PARAMS, add_admin
from rockstar_mp.aggregator.dashboard import add_dashboard
from rockstar_mp.aggregator.history_view import PARAMS as HISTORY_PARAMS
from rockstar_mp.aggregator.history_view import HistoryResource, history_route
from rockstar_mp.aggregator.views import add_views
from rockstar_mp.config import MonitoringConfig
from rockstar_mp.control import CONTROLLABLE
from rockstar_mp.profiling import KINDS
from tests.helpers import Gunicorn, free_port, http_get, load, poll

READER, ADMIN = "reader-token", "admin-token"
PID = "\x00pid"  # stands for a live worker's pid in a generated value
REQUEST_TIMEOUT = 0.5  # the server's request_timeout: a body that stops short gets 408 this soon
ANSWER_TIMEOUT = 30.0
CONCURRENCY = 8
EXAMPLES = 50  # batches per auth mode
BATCH = 30  # requests per batch at most
LOG_SIGNS = ("Traceback", "Unhandled exception", "Exception in ASGI application")

# The parameters each route takes (the code's own lists where it has them).
METRICS_PARAMS = {"/metrics": ("format", "pid"), "/metrics/history": HISTORY_PARAMS,
                  "/workload": ("window", "route", "tenant", "status"), "/workers": (),
                  "/logs": ("level", "since", "limit"), "/snmp": ("limit",), "/optimize": ("pid",),
                  "/optimize/stats": (), "/control": (), "/dashboard": (), "/dashboard/app.js": (),
                  "/dashboard/app.css": (), "/dashboard/profile": ("seconds",)}
PPROF_PARAMS = ("seconds", "debug", "pid", "gc")


def metrics_routes() -> list[str]:
    """The metrics port's routes, read from the app as the aggregator builds it (the metrics path is a
    sink, added by hand)."""
    config = MonitoringConfig()
    app = falcon.asgi.App()
    app.add_route(history_route(config), HistoryResource(None))
    add_views(app, None)
    add_admin(app, None)
    add_dashboard(app, None)
    return sorted({route.path for route in inspect_app(app).routes} | {config.metrics_path})


def pprof_routes() -> list[str]:
    base = MonitoringConfig().pprof_path
    return [base, base + "/"] + [f"{base}/{kind}" for kind in KINDS]


def test_every_route_has_its_parameters_listed():
    assert set(metrics_routes()) == set(METRICS_PARAMS)


# -- the server -----------------------------------------------------------------------------------
class Server:
    """A gunicorn with its aggregator, rate limit off (the fuzz is one client), pprof on."""

    def __init__(self, tmp, auth: bool) -> None:
        self.auth = auth
        self.pprof_port = free_port()
        env = {"ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(self.pprof_port),
               "ROCKSTAR_PPROF_MAX_SECONDS": "0.05", "ROCKSTAR_RATE_LIMIT": "0",
               "ROCKSTAR_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT), "ROCKSTAR_HISTORY_INTERVAL": "0.5",
               "ROCKSTAR_ADMIN_TOKEN": ADMIN}
        if auth:
            env.update(ROCKSTAR_REQUIRE_AUTH="1", ROCKSTAR_AUTH_TOKEN=READER)
        self.g = Gunicorn(tmp, workers=2, env=env)
        self.log_offset = 0
        self.statuses: dict[int, int] = {}  # answers counted by status, for the record

    def start(self) -> "Server":
        self.g.start()
        poll(lambda: http_get(f"http://127.0.0.1:{self.pprof_port}/debug/pprof/")[0] in (200, 401),
             timeout=15, message="the pprof port")
        for path in ("/", "/users/ann", "/error", "/nosuch"):  # something in /workload and /logs
            load(self.g.port, 4, path, concurrency=2)
        self.pids = self.g.worker_pids()
        self.baseline = self.send(Request("GET", "/control", headers=(("Authorization", f"Bearer {ADMIN}"),)))
        assert self.baseline.status == 200, self.baseline
        self.log_offset = self.g.log_path.stat().st_size
        return self

    def port(self, request: "Request") -> int:
        return self.pprof_port if request.pprof else self.g.metrics_port

    def send(self, request: "Request") -> "Answer":
        return send(self.port(request), request.wire(self.pids[0]))

    def restore_control(self) -> None:
        """Undo whatever an accepted ``POST /control`` changed."""
        answer = self.send(Request("POST", "/control", body=self.baseline.body,
                                   headers=(("Authorization", f"Bearer {ADMIN}"),)))
        assert answer.status == 200, answer

    def new_log(self) -> str:
        """What the server logged since the last call."""
        with open(self.g.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode(errors="replace")


@pytest.fixture(scope="module", params=["open", "auth"])
def server(request, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp(request.param), auth=request.param == "auth").start()
    yield s
    s.g.stop()
    log = s.g.log_text()
    for sign in LOG_SIGNS:
        assert sign not in log, log[max(0, log.find(sign) - 300):][:4000]


# -- requests on the wire -------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: tuple = ()  # (raw key, raw value) pairs, percent-encoded here unless raw_query
    raw_query: str = ""  # appended as is: broken percent-encoding and the like
    headers: tuple = ()  # (name, str or bytes)
    body: bytes | None = None
    framing: str = "length"  # how the body is sent: see FRAMINGS
    pprof: bool = False

    def wire(self, pid: int) -> bytes:
        def encode(text: str) -> str:
            return quote(text.replace(PID, str(pid)), safe="")
        pairs = "&".join(f"{encode(k)}={encode(v)}" for k, v in self.query)
        query = "&".join(p for p in (pairs, self.raw_query) if p)
        target = quote(self.path, safe="/%") + (f"?{query}" if query else "")
        lines = [f"{self.method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
        for name, value in self.headers:
            value = value.replace(PID, str(pid)) if isinstance(value, str) else value
            lines.append(name.encode() + b": " + (value.encode("latin-1") if isinstance(value, str) else value))
        if self.body is None and self.method not in ("POST", "PUT"):
            return b"\r\n".join(lines) + b"\r\n\r\n"
        framing, body = FRAMINGS[self.framing](self.body or b"")
        return b"\r\n".join(lines + framing) + b"\r\n\r\n" + body


FRAMINGS = {  # body -> (header lines, what is sent)
    "length": lambda body: ([b"Content-Length: %d" % len(body)], body),
    # one byte announced and never sent: the server must give up after request_timeout (408)
    "short": lambda body: ([b"Content-Length: %d" % (len(body) + 1)], body),
    "chunked": lambda body: ([b"Transfer-Encoding: chunked"],
                             (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"),
    "chunked-unfinished": lambda body: ([b"Transfer-Encoding: chunked"], b"%x\r\n%s" % (len(body) + 1, body)),
    "bogus-length": lambda body: ([b"Content-Length: -1"], body),
}


@dataclass
class Answer:
    status: int  # 0: no complete response
    headers: dict = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    raw: bytes = b""


def send(port: int, data: bytes) -> Answer:
    """One request on a fresh connection, read to the server's close."""
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as s:
            s.sendall(data)
            while chunk := s.recv(65536):
                received += chunk
    except OSError:
        return Answer(0, raw=received)
    return parse(received)


def parse(received: bytes) -> Answer:
    head, sep, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not sep or not lines[0].startswith(b"HTTP/1.1 "):
        return Answer(0, raw=received)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return Answer(int(lines[0].split()[1]), headers, body, received)


# -- what to send ---------------------------------------------------------------------------------
@st.composite
def often(draw, strategy: st.SearchStrategy, otherwise: st.SearchStrategy, tenths: int = 8):
    """``strategy`` ``tenths`` times out of ten, else ``otherwise`` (``st.one_of`` picks its branches
    with no weights)."""
    return draw(strategy if draw(st.integers(0, 9)) < tenths else otherwise)


UNICODE_DIGITS = ["²", "٣", "১২", "１２", "⑦", "𝟗", "߁", "໒", "³⁴"]  # int() takes some, not ² or ⑦
HUGE = ["9" * 5000, "1" + "0" * 400, "-" + "9" * 5000, "9" * 4301, "1e400", "-1e400", "1e-400", "1e308",
        "4294967296", "2147483648", "18446744073709551617", "0." + "0" * 400 + "1"]
ODD_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "0x10", "1_000", " 1", "1 ", "+1", "-1", "-0", "0",
               "1.5", ".", "e5", "1e", "0.0", "00", "", "1,2", "٣.٥", "1e-7", "5e-324"]
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
NASTY = often(st.sampled_from(UNICODE_DIGITS + HUGE + ODD_NUMBERS),
              st.one_of(TEXT, st.integers(-2 ** 70, 2 ** 70).map(str), st.floats().map(repr)), 7)

# A value each parameter takes (PID: a live worker's pid).
GOOD = {"pid": [PID], "format": ["json", "prometheus", "openmetrics"], "name": ["http.requests", "x.y"],
        "since": ["0", "1.5"], "until": ["1e12"], "step": ["1", "0.001"], "window": ["1", "30"],
        "route": ["/", "/users/{name}"], "tenant": ["acme"], "status": ["2xx", "5xx"],
        "level": ["warning", "ERROR", "30"], "limit": ["1", "10000"], "seconds": ["0.01", "0.05", "0"],
        "debug": ["0", "1", "2"], "gc": ["1", "0"]}
METHODS = {"/optimize": ["POST"], "/control": ["GET", "HEAD", "POST"]}  # the others: GET and HEAD
ANY_METHOD = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"])
RAW_QUERIES = ["%", "%zz", "pid=%ff", "pid=%ED%A0%80", "limit=%00", "=", "&&", "a", "pid", "pid=1=2",
               "%C2%B2=1", "seconds=%E2%91%A6", "debug=%EF%BC%91", "pid=%C2%B2", "debug=%E2%91%A6"]


def mutated(path: str) -> st.SearchStrategy[str]:
    return often(st.just(path), st.sampled_from([
        path + "/", path.upper(), "/" + path, path + "/x", path + "%00", path + "/..", path.replace("/", "//"),
        path + "%2F", path + "%ff", path + "²", path[:-1], path + "/../metrics"]), 9)


def parameter(name: str) -> st.SearchStrategy[tuple]:
    """``(name, value)``: a good value half the time, a nasty one otherwise."""
    return st.tuples(st.just(name), often(st.sampled_from(GOOD[name]), NASTY, 5))


def queries(names: tuple) -> st.SearchStrategy[tuple]:
    """Each of the route's parameters, or not; now and then another one, or one given twice."""
    others = st.tuples(st.one_of(st.sampled_from(TOKEN_PARAMS + tuple(GOOD)), TEXT), NASTY)
    taken = st.tuples(*(often(parameter(name).map(lambda p: (p,)), st.just(()), 5) for name in names))
    extra = often(st.just(()), st.lists(st.one_of(others, *map(parameter, names)) if names else others,
                                        min_size=1, max_size=2).map(tuple), 8)
    return st.tuples(taken, extra).map(lambda t: sum(t[0], ()) + t[1])


def odd_bytes(max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Header values: any byte but CR and LF."""
    return st.binary(max_size=max_size).map(lambda b: b.replace(b"\r", b" ").replace(b"\n", b" "))


def authorization(auth: bool) -> st.SearchStrategy[tuple]:
    """Mostly a token that lets the request in (the admin one, or with auth on the reading one too)."""
    good = [f"Bearer {ADMIN}"] + ([f"Bearer {READER}"] if auth else [])
    bad = st.one_of(st.sampled_from(["Bearer", "Bearer ", "Bearer wrong", "Basic YTpi", "bearer " + ADMIN,
                                     f"Bearer {ADMIN} extra", "Bearer \u00ff\u00fe"]),
                    odd_bytes().map(lambda b: b"Bearer " + b))
    return often(st.sampled_from(good).map(lambda v: (("Authorization", v),)),
                 st.one_of(st.just(()), bad.map(lambda v: (("Authorization", v),))), 9)


ACCEPTS = ["application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
           "text/plain", "text/plain;version=9", "application/json", "*/*", "text/*;q=0.5", "image/png",
           "text/plain;q=" + "9" * 5000, "text/plain;q=nan", ";;;,,,", '"', "a/b;version=\"", "\u00ff/\u00fe"]


def headers(auth: bool) -> st.SearchStrategy[tuple]:
    one = st.one_of(
        st.tuples(st.just("Accept"), st.one_of(st.sampled_from(ACCEPTS), odd_bytes(200))),
        st.tuples(st.just("X-SNMP-Community"), often(st.just("public"), st.one_of(
            st.sampled_from(["wrong", ""]), odd_bytes()), 6)),
        st.tuples(st.sampled_from(["Content-Type", "X-Tenant-ID", "Expect", "Range"]), odd_bytes()),
    )
    return st.tuples(authorization(auth), st.lists(one, max_size=3)).map(lambda t: t[0] + tuple(t[1]))


def json_text(depth: int = 2) -> st.SearchStrategy[str]:
    """JSON (and not quite JSON) values as text: huge and non-finite numbers, lone surrogates."""
    scalars = st.one_of(
        st.sampled_from(["true", "false", "null", "0", "-1", "1e999", "-1e999", "NaN", "Infinity",
                         "-Infinity", "9" * 5000, "1" + "0" * 400, "1e-400", "5e-324", "1.5", "65536",
                         '"\\ud800"', '"\\udfff x"', '"/"', '""', '"/x\\u0000"', '"public"', '"/debug/pprof"',
                         '"/metrics"', "300", "0.5"]),
        st.integers(-2 ** 70, 2 ** 70).map(str), st.floats().map(repr),
        TEXT.map(json.dumps))
    if depth == 0:
        return scalars
    inner = json_text(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
                     st.dictionaries(TEXT, inner, max_size=2).map(
                         lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"))


def bodies() -> st.SearchStrategy[bytes]:
    changes = st.dictionaries(often(st.sampled_from(CONTROLLABLE), TEXT, 8), json_text(), max_size=3).map(
        lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}")
    raw = st.sampled_from([b"", b"{", b"[" * 5000, b"{\"a\":" * 3000, b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}",
                           b"null", b"[]", b"1", b'"x"', b"{}", b"{\"a\":1}garbage", b"\x00" * 10])
    return often(changes.map(str.encode), st.one_of(json_text().map(str.encode), raw, st.binary(max_size=100)), 6)


PATHS = {route: mutated(route) for route in metrics_routes() + pprof_routes()}
QUERIES = {route: queries(names) for route, names in METRICS_PARAMS.items()} | {"pprof": queries(PPROF_PARAMS)}
HEADERS = {auth: headers(auth) for auth in (False, True)}
BODIES = bodies()
SOMETIMES_BODY = often(st.none(), BODIES, 9)
FRAMING = often(st.just("length"), st.sampled_from(sorted(FRAMINGS)), 9)
RAW_QUERY = often(st.just(""), st.sampled_from(RAW_QUERIES), 9)


@st.composite
def requests(draw, auth: bool) -> Request:
    """Mostly a request the route takes, but for a value or two; now and then anything."""
    pprof = draw(st.booleans())
    route = draw(st.sampled_from(pprof_routes() if pprof else sorted(METRICS_PARAMS)))
    method = draw(often(st.sampled_from(METHODS.get(route, ["GET", "HEAD"])), ANY_METHOD, 8))
    body = draw(BODIES if method in ("POST", "PUT") else SOMETIMES_BODY)
    return Request(method, draw(PATHS[route]), draw(QUERIES["pprof" if pprof else route]), draw(RAW_QUERY),
                   draw(HEADERS[auth]), body, draw(FRAMING), pprof)


# -- the properties ---------------------------------------------------------------------------------
def problems(request: Request, answer: Answer) -> list[str]:
    """What is wrong with this answer to this request (nothing, for a good one)."""
    length = answer.headers.get("content-length")
    if answer.status == 0 or (request.method != "HEAD" and length and int(length) != len(answer.body)):
        return [f"no complete response: {answer.raw[:300]!r}"]
    if uvicorns_own(answer):
        return []
    found = []
    if answer.status == 500:
        found.append(f"500: {answer.body[:300]!r}")
    if request.method == "HEAD" and answer.body:
        found.append(f"a body in the answer to HEAD: {answer.body[:100]!r}")
    if 400 <= answer.status < 600 and request.method != "HEAD":
        found += error_format(request, answer)
    return found


def uvicorns_own(answer: Answer) -> bool:
    """A request too malformed to reach the app (a NUL in a header): uvicorn answers it itself, in plain
    text, with a body even to HEAD (it could not read the method)."""
    return answer.status == 400 and answer.body == b"Invalid HTTP request received."


def error_format(request: Request, answer: Answer) -> list[str]:
    content_type = answer.headers.get("content-type", "")
    if request.pprof:
        if not content_type.startswith("text/plain") or answer.headers.get("x-go-pprof") != "1":
            return [f"not a Go-style error: {content_type} {answer.body[:200]!r}"]
        return [] if answer.body.strip() else ["an empty error"]
    try:
        error = json.loads(answer.body)
    except ValueError:
        return [f"not a JSON error: {content_type} {answer.body[:200]!r}"]
    if content_type != "application/json" or not error.get("title"):
        return [f"not a JSON error: {content_type} {answer.body[:200]!r}"]
    return []


def fuzz(server: Server, batch: list[Request], pool: ThreadPoolExecutor) -> None:
    """Send ``batch`` at once; fail on any problem with an answer, or anything alarming in the log."""
    answers = list(pool.map(server.send, batch))
    for a in answers:
        server.statuses[a.status] = server.statuses.get(a.status, 0) + 1
    if any(r.method == "POST" and not r.pprof and a.status == 200 for r, a in zip(batch, answers, strict=True)):
        server.restore_control()
    failures = [f"{r} -> {a.status}: {p}" for r, a in zip(batch, answers, strict=True) for p in problems(r, a)]
    log = server.new_log()
    for sign in LOG_SIGNS:
        if sign in log:
            failures.append(f"the server logged {sign!r}:\n{log[max(0, log.find(sign) - 300):][:3000]}")
    assert not failures, "\n".join(failures[:10])


def test_no_request_gets_a_500_or_a_traceback(server):
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(requests(server.auth), min_size=BATCH // 2, max_size=BATCH))
    def run(batch):
        fuzz(server, batch, pool)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        run()
    print(f"fuzz ({'auth' if server.auth else 'open'}): {sum(server.statuses.values())} requests in "
          f"{time.monotonic() - started:.1f} s; statuses {dict(sorted(server.statuses.items()))}")


# -- the 500s found before, one by one ----------------------------------------------------------------
NINES = "9" * 5000
KNOWN = [  # (port, method, path, body): before issue 11 each answered 500 with a traceback, or (the last
    # two) was accepted and broke something later: /snmp answered 500; the optimization schedule logged a
    # traceback every 0.25 s
    ("metrics", "GET", "/metrics?pid=%C2%B2", None), ("metrics", "GET", f"/metrics?pid={NINES}", None),
    ("metrics", "GET", "/logs?level=%C2%B2", None), ("metrics", "GET", f"/logs?level={NINES}", None),
    ("metrics", "POST", "/optimize?pid=%C2%B2", None), ("metrics", "POST", f"/optimize?pid={NINES}", None),
    ("pprof", "GET", "/debug/pprof/goroutine?debug=%C2%B2", None),
    ("pprof", "GET", f"/debug/pprof/goroutine?debug={NINES}", None),
    ("pprof", "GET", "/debug/pprof/goroutine?pid=%C2%B2", None),
    ("pprof", "GET", f"/debug/pprof/goroutine?pid={NINES}", None),
    ("metrics", "POST", "/control", b"[" * 5000),  # RecursionError
    ("metrics", "POST", "/control", b'{"snmp_community": "\\ud800"}'),
    ("metrics", "POST", "/control", b'{"enable_optimization": true, "optimization_interval": 5e-324}'),
]


@pytest.mark.parametrize("where, method, target, body", KNOWN, ids=lambda v: str(v)[:40])
def test_known_bad_requests_are_400(server, where, method, target, body):
    data = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {ADMIN}\r\nContent-Length: {len(body or b'')}\r\n\r\n").encode()
    answer = send(server.pprof_port if where == "pprof" else server.g.metrics_port, data + (body or b""))
    assert answer.status == 400, answer
    request = Request(method, target, pprof=where == "pprof")
    assert not error_format(request, answer), answer
    snmp = send(server.g.metrics_port, b"GET /snmp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"X-SNMP-Community: public\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n\r\n")
    assert snmp.status == 200, snmp
    assert not [sign for sign in LOG_SIGNS if sign in server.new_log()]


# -- HEAD -------------------------------------------------------------------------------------------------
HEAD_TARGETS = [("metrics", "/metrics"), ("metrics", "/metrics?format=prometheus"),
                ("metrics", "/metrics?format=openmetrics"), ("metrics", "/metrics/history?name=http.requests"),
                ("metrics", "/workload"), ("metrics", "/workers"), ("metrics", "/logs"), ("metrics", "/snmp"),
                ("metrics", "/optimize/stats"), ("metrics", "/control"), ("metrics", "/logs?limit=0"),
                ("metrics", "/metrics?pid=x"), ("metrics", "/nosuch"), ("pprof", "/debug/pprof/"),
                ("pprof", "/debug/pprof/goroutine?debug=1"), ("pprof", "/debug/pprof/heap?debug=1"),
                ("pprof", "/debug/pprof/nosuch")]


@pytest.mark.parametrize("where, target", HEAD_TARGETS)
def test_head_answers_as_get_does_without_a_body(server, where, target):
    port = server.pprof_port if where == "pprof" else server.g.metrics_port

    def ask(method: str) -> Answer:
        return send(port, (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                           f"Authorization: Bearer {ADMIN}\r\nX-SNMP-Community: public\r\n\r\n").encode())
    get, head = ask("GET"), ask("HEAD")
    assert head.status == get.status and head.status != 405, (get, head)
    assert head.body == b"" and get.body, (get, head)
    assert set(head.headers) - {"date"} == set(get.headers) - {"date"}, (get.headers, head.headers)
    assert head.headers["content-type"] == get.headers["content-type"]
    if get.status >= 400:  # errors are the same every time: the length must match too
        assert int(head.headers["content-length"]) == len(get.body), (get, head)


# -- a body that never comes ----------------------------------------------------------------------------
@pytest.mark.parametrize("where, head, sent", [
    ("metrics", "POST /control", b"{"),  # begun, then nothing: read_json_body's deadline
    ("metrics", "POST /control", b""),  # never begun: Falcon would wait for it before routing at all
    ("metrics", "GET /workers", b""),
    ("pprof", "GET /debug/pprof/", b""),
])
def test_a_body_that_does_not_arrive_gets_408(server, where, head, sent):
    port = server.pprof_port if where == "pprof" else server.g.metrics_port
    answer = send(port, (f"{head} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n"
                         f"Content-Length: 10\r\n\r\n").encode() + sent)
    assert answer.status == 408, answer
    assert not error_format(Request("POST", "/", pprof=where == "pprof"), answer), answer
