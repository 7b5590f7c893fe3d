"""Connection limits of the aggregator's HTTP ports (``aggregator/net.py``), with real gunicorn and real
sockets: idle and slowloris connections, heads too large, too many connections, running out of file
descriptors, and floods of requests without a valid token (``admin.RateLimit``)."""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rockstar_mp.aggregator.net import HeadScanner, HeadTooLarge, RepeatFilter
from rockstar_mp.segment import Segment
from rockstar_mp.segment.layout import Header
from tests.helpers import free_port, http_get, limit, poll

TOKEN = "flood-test-token"
HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(autouse=True, scope="module")
def enough_descriptors():
    """This process opens thousands of connections: its soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= 4096, f"the tests need 4096 open files (ulimit -Hn is {hard})"
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connect(port: int, n: int, send: bytes = b"") -> list[socket.socket]:
    """``n`` connections to ``port``, each having sent ``send``, left non-blocking."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if send:
            sock.sendall(send)
        sock.setblocking(False)
        socks.append(sock)
    return socks


class Peer:
    """What a client socket has received, and whether the server closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""
        self.closed = False

    def read(self) -> bool:
        """Read what is there; True once the server has closed (EOF or reset)."""
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            self.data += chunk
            self.closed = not chunk
        return self.closed


def all_closed(peers: list[Peer]) -> bool:
    return all([peer.read() for peer in peers])


def aggregator(server) -> psutil.Process:
    return psutil.Process(server.aggregator_pids()[0])


def held(proc: psutil.Process, peers: list[Peer]) -> int:
    """How many of ``peers``' connections ``proc`` holds open (its TCP connections from their ports): not a
    count against a baseline, which a connection of the server's start-up still closing could hold."""
    ports = {peer.sock.getsockname()[1] for peer in peers}
    return sum(1 for c in proc.net_connections("tcp") if c.raddr and c.raddr.port in ports)


def open_sockets(proc: psutil.Process) -> int:
    """How many sockets ``proc`` has open: its connections, not the files it opens lazily (the history
    database opens three on its first write, which may come after a test's first count)."""
    count = 0
    for fd in os.listdir(f"/proc/{proc.pid}/fd"):
        try:
            count += os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed since listed
            pass
    return count


def raw_request(port: int, data: bytes, timeout: float = 10.0, half_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection (then half-close it: uvicorn ends a connection at its EOF,
    even with pipelined requests pending); everything the server answers until it closes. A server that
    answered and reset the connection before the half-close (a 503 beyond ``max_connections``) leaves
    what it answered to read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            with contextlib.suppress(OSError):  # ENOTCONN: the server already ended the connection
                sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def many_headers(n: int, path: str = "/metrics") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"".join(b"X-Header-%d: value\r\n" % i for i in range(n)) + b"\r\n")


# -- idle connections, slowloris, keep-alive -------------------------------------------------------------
HEADER_TIMEOUT = limit(12.0)  # long enough to open 2,100 connections and scrape 200 times on a loaded machine
KEEPALIVE_TIMEOUT = 1.0
MARGIN = limit(4.0)  # beyond a timeout, for the close to reach us on a loaded machine


def test_idle_and_slowloris_connections_are_closed_while_metrics_stay_fast(gunicorn_factory):
    server = gunicorn_factory(workers=2, env={
        "ROCKSTAR_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "ROCKSTAR_KEEPALIVE_TIMEOUT": str(KEEPALIVE_TIMEOUT),
        "ROCKSTAR_MAX_CONNECTIONS": "4096", "ROCKSTAR_RATE_LIMIT": "0"})
    agg = aggregator(server)
    sockets = open_sockets(agg)
    opened = time.monotonic()
    idle = [Peer(s) for s in connect(server.metrics_port, 2000)]
    slow = [Peer(s) for s in connect(server.metrics_port, 100, HEAD)]
    poll(lambda: held(agg, idle + slow) == 2100,
         message=lambda: f"the aggregator holding every connection ({held(agg, idle + slow)} held)")

    latencies = []
    for i in range(200):
        if i % 20 == 0:
            for peer in slow:
                peer.sock.send(b"X-Slow-%d: still coming\r\n" % i)
        started = time.perf_counter()
        status, _, _ = http_get(server.url)
        latencies.append(time.perf_counter() - started)
        assert status == 200
    assert held(agg, idle + slow) == 2100, "the attackers were closed before the scrapes ended"
    keepalive = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
    keepalive.request("GET", "/metrics")
    assert keepalive.getresponse().read()
    answered = time.monotonic()

    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    assert p99 < limit(0.1), f"/metrics p99 {p99 * 1000:.0f} ms with 2,100 connections waiting"
    keepalive_peer = Peer(keepalive.sock)
    keepalive.sock.setblocking(False)
    poll(keepalive_peer.read, timeout=answered + KEEPALIVE_TIMEOUT + MARGIN - time.monotonic(),
         message="the idle keep-alive connection closed within keepalive_timeout")
    poll(lambda: all_closed(idle + slow), timeout=opened + HEADER_TIMEOUT + MARGIN - time.monotonic(),
         message="every idle and slowloris connection closed within header_timeout")
    assert all(peer.data == b"" for peer in idle)  # nothing came: nothing to answer
    assert all(peer.data.startswith(b"HTTP/1.1 408 ") for peer in slow)
    poll(lambda: open_sockets(agg) <= sockets, message="the aggregator's sockets back")


STUCK = b"POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"


def stuck_requests(port: int, n: int) -> list[socket.socket]:
    """``n`` requests in progress for as long as they stay open: a body announced and never sent. Each
    is known to have reached the app once it says "100 Continue" (the app asked for the body)."""
    socks = connect(port, n, STUCK)
    peers = [Peer(sock) for sock in socks]
    poll(lambda: all([peer.read() or b"100 Continue" in peer.data for peer in peers]),
         message="every request in progress")
    return socks


def test_beyond_max_connections_the_longest_waiting_goes_then_503(gunicorn_factory):
    server = gunicorn_factory(workers=1, env={
        "ROCKSTAR_MAX_CONNECTIONS": "20", "ROCKSTAR_RATE_LIMIT": "0", "ROCKSTAR_REQUEST_TIMEOUT": "120",
        "ROCKSTAR_HEADER_TIMEOUT": "120"})
    port = server.metrics_port
    idle = [Peer(s) for s in connect(port, 40)]
    try:
        assert http_get(server.url)[0] == 200  # a new client gets in: an idle one makes room
        poll(lambda: sum([peer.read() for peer in idle]) >= 21, message="the longest-idle connections closed")
        assert all(peer.read() for peer in idle[:20])  # oldest first
    finally:
        for peer in idle:
            peer.sock.close()

    busy = stuck_requests(port, 20)  # nobody to close for a new one
    try:
        answer = raw_request(port, HEAD + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in head.lower()
        assert json.loads(body)["title"] == "503 Service Unavailable"
        busy.pop().close()
        poll(lambda: http_get(server.url)[0] == 200, message="a place again once one request ended")
    finally:
        for sock in busy:
            sock.close()


# -- heads too large ----------------------------------------------------------------------------------
def test_ten_thousand_headers_cost_no_memory(gunicorn_factory):
    server = gunicorn_factory(workers=2)
    agg = aggregator(server)
    before = agg.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch_memory() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], agg.memory_info().rss)
            done.wait(0.01)

    watcher = threading.Thread(target=watch_memory)
    watcher.start()
    request = many_headers(10_000)
    statuses: list[bytes | str] = []

    def send() -> None:
        try:
            statuses.append(raw_request(server.metrics_port, request)[:12])
        except OSError as exc:
            statuses.append(type(exc).__name__)

    try:
        for _ in range(5):
            threads = [threading.Thread(target=send) for _ in range(200)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        done.set()
        watcher.join()
    assert statuses == [b"HTTP/1.1 431"] * 1000
    growth = (max(peak[0], agg.memory_info().rss) - before) / 2 ** 20
    assert growth < 50, f"the aggregator grew {growth:.0f} MB"

    answer = raw_request(server.metrics_port, HEAD + b"X-Big: " + b"x" * 20_000 + b"\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and "16384 bytes" in json.loads(body)["description"]
    # pipelined behind a request within the limits, so parsed before the guard could see it
    answer = raw_request(server.metrics_port, HEAD + b"\r\n" + many_headers(150), half_close=False)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 431 ") == 1
    assert http_get(server.url, {f"X-Header-{i}": "v" for i in range(90)})[0] == 200  # within the limit


# -- out of file descriptors --------------------------------------------------------------------------
def test_out_of_descriptors_never_retires_a_live_worker(gunicorn_factory):
    server = gunicorn_factory(workers=2, env={"ROCKSTAR_RATE_LIMIT": "0", "ROCKSTAR_REQUEST_TIMEOUT": "300"})
    sent = sum(status == 200 for status, _, _ in (http_get(f"http://127.0.0.1:{server.port}/")
                                                 for _ in range(100)))
    server.wait_total(sent)
    agg = aggregator(server)
    fds = agg.num_fds() + 32
    agg.rlimit(psutil.RLIMIT_NOFILE, (fds, fds))  # as `prlimit --nofile`: a low ulimit -n
    segment = Segment.attach(str(server.segment_files()[0]))

    # requests that never end (a body announced, never sent): no connection the aggregator can close
    busy = connect(server.metrics_port, 100, STUCK)
    try:
        poll(lambda: agg.num_fds() >= fds - 1, message="the aggregator out of descriptors")
        exhausted = time.time()
        for _ in range(100):  # the workers count on meanwhile
            sent += http_get(f"http://127.0.0.1:{server.port}/")[0] == 200
        poll(lambda: Header.aggregator_heartbeat.get(segment.buf) > exhausted + 3, timeout=20,
             message="a dozen ticks out of descriptors")
        # the ticks probe live pids with kill(pid, 0), which needs no descriptor; /proc is read in full
        # every 10 s, and that read is the one that meets EMFILE
        poll(lambda: "could not tell whether" in server.log_text(), timeout=limit(15),
             message="a thorough liveness check out of descriptors")
        assert agg.num_fds() >= fds - 1, "the descriptors were not exhausted all along"
    finally:
        for sock in busy:
            sock.close()

    server.wait_total(sent)  # exact: no live worker's slab retired
    system = server.metrics()["system"]
    assert system["workers_live"] == 2 and system["workers_folded"] == 0
    assert system["liveness_unknown"] > 0  # the ticks did meet EMFILE, and kept the workers
    log = server.log_text()
    assert log.count("out of file descriptors accepting") <= 3, "a line per failed accept"
    assert log.count("could not tell whether") <= 3


def test_process_alive_out_of_descriptors():
    """In a child process with every descriptor taken: a live process is alive (counted as unknown),
    a reaped one is dead, whatever /proc could not say."""
    code = """if True:
        import os, resource, subprocess, sys
        from rockstar_mp.segment.segment import liveness_unknown, process_alive
        gone = subprocess.Popen([sys.executable, "-c", "pass"]); gone.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == 24, exc
        alive, dead = process_alive(os.getppid()), process_alive(gone.pid)
        print(alive, dead, liveness_unknown())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "1"]


# -- floods without a valid token ------------------------------------------------------------------------
@pytest.mark.parametrize("port_kind", ["metrics", "pprof"])
def test_an_authenticated_scraper_keeps_its_budget_under_a_flood(gunicorn_factory, port_kind):
    pprof_port = free_port()
    server = gunicorn_factory(workers=2, env={
        "ROCKSTAR_REQUIRE_AUTH": "1", "ROCKSTAR_AUTH_TOKEN": TOKEN, "ROCKSTAR_ENABLE_PPROF": "1",
        "ROCKSTAR_PPROF_PORT": str(pprof_port)})
    port, path = (server.metrics_port, "/metrics") if port_kind == "metrics" else (pprof_port, "/debug/pprof/")
    url = f"http://127.0.0.1:{port}{path}"
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    poll(lambda: http_get(url, authorized)[0] == 200, message=f"the {port_kind} port")

    stop = threading.Event()
    flood: dict[int, int] = {}

    def flooder(headers: dict) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            flood[response.status] = flood.get(response.status, 0) + 1

    threads = [threading.Thread(target=flooder, args=({"Authorization": "Bearer wrong"} if i % 2 else {},))
               for i in range(8)]
    for t in threads:
        t.start()
    try:
        poll(lambda: flood.get(429, 0) > 100, message="the flood rate limited")
        statuses = [http_get(url, authorized, timeout=10)[0] for _ in range(50)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses.count(200) >= 48, statuses  # 95 %
    assert set(flood) == {401, 429}, flood


# -- the pieces ----------------------------------------------------------------------------------------
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=12), st.sampled_from([b"\r\n", b"\n"]),
       st.integers(min_value=0, max_value=3))
def test_head_scanner_finds_the_end_however_the_head_is_split(cuts, eol, blank_lines):
    head = eol * blank_lines + eol.join([b"GET / HTTP/1.1", b"Host: x", b"X-A: 1", b""]) + eol
    data = head + b"BODY"
    scanner = HeadScanner(1000, 10)
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(data[at:at + cut])
        at += cut
    pieces.append(data[at:])
    seen, end = 0, -1
    for piece in pieces:
        if piece:
            found = scanner.feed(piece)
            if found >= 0:
                end = seen + found
                break
            seen += len(piece)
    assert end == len(head)


def test_head_scanner_limits():
    with pytest.raises(HeadTooLarge, match="more than 2 request headers"):
        HeadScanner(1000, 2).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n")
    assert HeadScanner(1000, 2).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n") > 0
    scanner = HeadScanner(100, 100)
    scanner.feed(b"GET / HTTP/1.1\r\nA: " + b"x" * 80)
    with pytest.raises(HeadTooLarge, match="more than 100 bytes"):
        scanner.feed(b"x" * 20)


def test_repeat_filter_writes_a_repeated_message_once_with_its_count():
    logger = logging.getLogger("tests.repeats")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger.addHandler(Keep())
    logger.propagate = False
    repeats = RepeatFilter(interval=0.2, loggers=("tests.repeats",))
    logger.addFilter(repeats)
    for i in range(1000):
        logger.warning("accept failed: %d", i)
    logger.warning("another message")
    assert records == ["accept failed: 0", "another message"]
    poll(lambda: (repeats.flush(), len(records) == 3)[1], message="the count of the repeats")
    assert records[2] == "accept failed: 999 (999 more like this in the last 0.2 s)"
    logger.warning("accept failed: %d", 1000)  # a new window
    logger.warning("accept failed: %d", 1001)
    assert records[3] == "accept failed: 1000"
    poll(lambda: (logger.warning("accept failed: %d", 1002), len(records) == 5)[1],
         message="the first line after the window, carrying its count")
    assert records[4].startswith("accept failed: 1002 (") and records[4].endswith(" more like this in the last 0.2 s)")

    other = logging.getLogger("tests.repeats.other")  # not one of its loggers: only what says "repeated"
    other.addHandler(Keep())
    other.propagate = False
    other.addFilter(repeats)
    for name in ("a", "b", "a"):
        other.warning("conflict on %s", name)
        other.warning("out of descriptors", extra={"repeated": True})
    assert records[5:] == ["conflict on a", "out of descriptors", "conflict on b", "conflict on a"]
