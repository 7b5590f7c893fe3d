"""The C request path (rockstar_mp/_hotpath.c) against the Python one: same counts, sketches and records.

Both run ``tests/apps/paths.py`` (a fixed mix of requests through ``MetricsMiddleware``: statuses,
routes, tenants, request ids, an app that raises, a streamed body, HEAD, an unknown method) in a fresh
process attached to a fresh segment; the Python one with ``ROCKSTAR_PURE_PYTHON=1``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from rockstar_mp.worker.accelerator import hotpath
from tests.helpers import ROOT

IN_CI = os.environ.get("CI", "").lower() == "true"


def test_the_c_request_path_is_built():
    if hotpath is None and not IN_CI:
        pytest.skip("rockstar_mp._hotpath is not built (no C compiler?): the Python path runs")
    assert hotpath is not None, "CI must build rockstar_mp._hotpath (pip install compiles it)"


def _paths(tmp_path, pure: bool, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ROCKSTAR_PURE_PYTHON"}
    if pure:
        env["ROCKSTAR_PURE_PYTHON"] = "1"
    directory = tmp_path / ("pure" if pure else "c")
    directory.mkdir()
    out = subprocess.run([sys.executable, "-m", "tests.apps.paths", str(directory), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for record in result["records"]:  # generated ids name the worker's pid: the two runs differ in it
        record[4] = re.sub(r"^[0-9a-f]+-(?=[0-9a-f]+$)", "<pid>-", record[4])
    return result


@pytest.mark.parametrize("app", ["wsgi", "falcon"])
def test_c_and_python_paths_write_the_same(tmp_path, app):
    if hotpath is None and not IN_CI:
        pytest.skip("rockstar_mp._hotpath is not built")
    args = ("falcon",) if app == "falcon" else ()
    c, pure = _paths(tmp_path, False, *args), _paths(tmp_path, True, *args)
    assert c.pop("c") is True and pure.pop("c") is False
    assert c == pure
    assert c["inflight"] == 0 and c["dropped"] == 0
    if app == "wsgi":
        assert c["statuses"] == ["201 Created", "201 Created", "404 Not Found", "200 OK", "201 Created", "raised",
                                 "200 OK", "201 Created"]
        assert c["series"]["http.requests['GET', '500', '/raise']"] == 1  # the app that raised
        assert c["series"]["http.requests['other', '201', '/']"] == 1  # BREW
        routes = [r[1] for r in c["records"]]
        assert routes == ["/users/{id}", "/users/{id}", "<unmatched>", "/stream", "/", "/raise", "/stream",
                          "/orders/{id}"]
        labelled = {k.split("', '")[-1][:-2] for k, v in c["series"].items() if k.startswith("http.requests[") and v}
        assert labelled == set(routes)  # the records' routes, and no raw path
        assert [r[3] for r in c["records"]] == [11, 11, 11, 5, 11, 0, 5, 11]  # bytes sent (HEAD: the body's)
        assert c["records"][2][4] == "req-" + "x" * 36  # cut to the record's 40 bytes
        assert c["records"][0][4] == "<pid>-1" and c["records"][1][5] == "acme"
        assert c["records"][4][5] == "é" * 16  # 32 bytes of UTF-8, cut on a character boundary
    else:
        assert [r[1] for r in c["records"]] == ["/items/{item_id}", "/items/{item_id}", "/fail", "<unmatched>"]
        assert [r[2] for r in c["records"]] == [200, 200, 500, 404]
        assert c["records"][3][4] == "abc"
        assert {k: v for k, v in c["series"].items() if k.startswith("http.requests[") and v} == {
            "http.requests['GET', '200', '/items/{item_id}']": 2, "http.requests['GET', '500', '/fail']": 1,
            "http.requests['GET', '404', '<unmatched>']": 1}


def test_moved_series_are_not_written_through_addresses_resolved_before(tmp_path):
    """The C path keeps the cells' addresses of the responses it counted; once the series move (a forked
    child's go to private memory), a request must count where they are now, never in the old slab."""
    if hotpath is None and not IN_CI:
        pytest.skip("rockstar_mp._hotpath is not built")
    c, pure = _paths(tmp_path, False, "moved"), _paths(tmp_path, True, "moved")
    assert c.pop("c") is True and pure.pop("c") is False
    assert c == pure
    assert len(c["statuses"]) == 2 * 8
    counted = sum(v for k, v in c["series"].items() if k.startswith("http.requests["))
    assert counted == 8  # the first round; the second went to private memory


@pytest.mark.parametrize("path", ["c", "python"])
def test_the_response_stays_corked_until_it_is_counted(path):
    """The hold on a real loopback connection: corked while the app runs and while the server writes;
    the count is stored, then the socket uncorked, when the server takes the end of the body."""
    import socket
    import struct

    from rockstar_mp.worker.wsgi import REQUESTS, MetricsMiddleware, PythonMetricsMiddleware

    if path == "c" and hotpath is None:
        pytest.skip("rockstar_mp._hotpath is not built")
    middleware = MetricsMiddleware if path == "c" else PythonMetricsMiddleware
    seen = {}

    def app(environ, start_response):
        seen["corked in the app"] = corked(environ["gunicorn.socket"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def corked(sock) -> int:
        """1 while held: corked, and set to reset the connection if the process dies (SO_LINGER 0)."""
        cork = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
        linger = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        assert linger == ((1, 0) if cork else (0, 0)), (cork, linger)
        return cork

    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        conn, _ = server.accept()
        with conn:
            before = REQUESTS.labels("PUT", "200", "/").get()
            body = middleware(app)({"REQUEST_METHOD": "PUT", "PATH_INFO": "/", "gunicorn.socket": conn},
                                   lambda status, headers, exc_info=None: None)
            chunks = iter(body)
            conn.sendall(next(chunks))  # the server writes the last chunk: it stays in the kernel
            assert corked(conn) == 1 and REQUESTS.labels("PUT", "200", "/").get() == before
            with pytest.raises(BlockingIOError):
                client.recv(10, socket.MSG_DONTWAIT)  # nothing reached the client yet
            assert next(chunks, None) is None  # the server asks for more: counted, then uncorked
            assert REQUESTS.labels("PUT", "200", "/").get() == before + 1 and corked(conn) == 0
            client.settimeout(10)
            assert client.recv(10) == b"ok"
            body.close()
            assert REQUESTS.labels("PUT", "200", "/").get() == before + 1  # close() does not count twice
    assert seen["corked in the app"] == 1
