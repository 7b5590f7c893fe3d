"""The C request path (rockstar_mp/_hotpath.c) refuses misuse with a Python exception instead of crashing.

Each case runs in a fresh interpreter: a segfault then shows as a negative return code instead of killing
pytest. Each script ends by raising the exception the misuse must give; the test checks that it is the
last line of the traceback and that the interpreter exited normally (1, not killed by a signal). Buffers
are anonymous mmaps, so a write through a stale or wild pointer lands on an unmapped page and crashes
rather than corrupting memory quietly.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT, require_hotpath

PRELUDE = textwrap.dedent("""
    import mmap
    import sys

    from rockstar_mp.segment.layout import RECORD, RECORD_SPANS, SLOT_PAYLOAD, SLOT_SEQ
    from rockstar_mp.worker.accelerator import hotpath

    assert hotpath is not None, "rockstar_mp._hotpath is not built"
    Slab, Middleware = hotpath.Slab, hotpath.Middleware

    SLOT = (SLOT_PAYLOAD + RECORD.size + 7) // 8 * 8  # sequence word + record, whole words
    BUF = mmap.mmap(-1, mmap.PAGESIZE)
    COUNT_AT = 1040
    GEOMETRY = {"first": 0, "slots": 4, "slot_size": SLOT, "head_at": 1024, "index": 0, "started_at": 1032,
                "count_at": COUNT_AT, "text_at": 1048, "method_size": 8, "path_size": 64, "pid": 1}


    def slab_args(buf=BUF, **changes):
        return (buf, *{**GEOMETRY, **changes}.values())


    def in_flight():
        return int.from_bytes(BUF[COUNT_AT:COUNT_AT + 8], sys.byteorder)


    def doubles():
        \"\"\"An anonymous page, its memoryview and that view cast to float64 cells.\"\"\"
        pages = mmap.mmap(-1, mmap.PAGESIZE)
        whole = memoryview(pages)
        return pages, whole, whole.cast("d")


    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]


    def middleware(statuses, workload=False, cls=Middleware, wrapped=app):
        # its route cache knows "/", the path serve() asks for: no slow path to call back into
        return cls(wrapped, statuses, {"/": "/"}, frozenset({"GET"}), "HTTP_X_TENANT_ID", workload, False)


    def serve(mw):
        body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda status, headers, exc_info=None: None)
        for _chunk in body:
            pass
        body.close()


    class Recorder:
        \"\"\"The slow paths record() calls back into (WorkloadRecorder's): no sketch cells.\"\"\"

        def _combination_tuple(self, route, status_class, tenant):
            return None


    class SketchRecorder:
        \"\"\"Slow paths giving every record one sketch cell (vals[0]) and one sum cell (vals[1]).\"\"\"

        def __init__(self, vals):
            self.vals = vals

        def _combination_tuple(self, route, status_class, tenant):
            return ({}, (self.vals, 1), b"/", b"")

        def _bucket_cells(self, combination, index):
            return ((), (self.vals, 0))  # (cells moved by the bucket's offset in its block, cells as they are)
""")


@pytest.fixture(autouse=True)
def _the_extension():
    require_hotpath()


def assert_refused(script: str, exception: str) -> None:
    """Run PRELUDE + script in a fresh interpreter; it must end with ``exception``, not a crash."""
    env = {k: v for k, v in os.environ.items() if k != "ROCKSTAR_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", PRELUDE + textwrap.dedent(script)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode >= 0, f"killed by signal {-out.returncode}:\n{out.stderr}"
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and lines and lines[-1].startswith(exception + ":"), out.stderr


@pytest.mark.parametrize("changes, exception", [
    ("count_at=1 << 40", "ValueError"),  # an offset outside the buffer
    ("buf=bytes(mmap.PAGESIZE)", "BufferError"),  # a buffer it cannot write
], ids=["offset-outside", "read-only-buffer"])
def test_a_refused_reinit_keeps_the_slab_as_it_was(changes, exception):
    assert_refused(f"""
        slab = Slab(*slab_args())
        hotpath.bind(slab, None, None, None)
        try:
            slab.__init__(*slab_args({changes}))
        except {exception} as e:
            refused = e
        else:
            raise AssertionError("Slab.__init__ took it")
        try:
            BUF.close()  # still the slab's buffer: refused while the slab holds it
        except BufferError:
            pass
        slab.begin("GET", "/")
        assert in_flight() == 1, in_flight()
        assert slab.end() is True and in_flight() == 0
        raise refused
    """, exception)


@pytest.mark.parametrize("changes", ["method_size=-8, path_size=72", "method_size=72, path_size=-8",
                                     "slots=1 << 62"],  # slots * slot_size wraps to 0
                         ids=["negative-method-size", "negative-path-size", "slots-overflowing"])
def test_negative_or_overflowing_sizes_are_refused(changes):
    assert_refused(f"""
        slab = Slab(*slab_args({changes}))
        hotpath.bind(slab, {{}}, Recorder(), None)
        slab.begin("GET", "/" * 100)
        for _ in range(1000):
            hotpath.record("GET", "/", 200, 0.001, 0.0, 2, "", "")
        raise AssertionError("used a slab of that geometry")
    """, "ValueError")


def test_bind_refuses_an_uninitialised_slab():
    assert_refused("""
        hotpath.bind(Slab.__new__(Slab), None, None, None)
        serve(middleware({}, workload=True))
    """, "TypeError")


def test_an_uninitialised_slab_refuses_begin_and_end():
    assert_refused("""
        slab = Slab.__new__(Slab)
        try:
            slab.end()
        except TypeError:
            pass
        else:
            raise AssertionError("end() ran")
        slab.begin("GET", "/")
    """, "TypeError")


def test_configure_validates_before_it_stores():
    """A refused configure() stores nothing, negative sizes are refused, and the record layout the slabs
    were checked against cannot change under them."""
    assert_refused("""
        keys = {"route": "r", "tenant": "t", "request_id": "i", "default_request_id": "d", "wsgi": "w"}
        at, width = RECORD_SPANS["tenant"]
        negative = {**RECORD_SPANS, "tenant": (at, -width)}
        for keys_given in ({**keys, "wsgi": None}, keys):
            try:
                hotpath.configure(1.0, 1e-6, 16, SLOT_SEQ.offset, SLOT_PAYLOAD, negative, keys_given)
            except (KeyError, ValueError):
                pass
            else:
                raise AssertionError("configure() took a negative size")
        slab = Slab(*slab_args())
        hotpath.bind(slab, {}, Recorder(), None)
        hotpath.record("GET", "/", 200, 0.001, 0.0, 2, "", "")  # with the layout of the first configure()
        moved = {**RECORD_SPANS, "tenant": (at + 8, width)}
        hotpath.configure(1.0, 1e-6, 16, SLOT_SEQ.offset, SLOT_PAYLOAD, moved, keys)
    """, "ValueError")


SLOT = "SLOT_SEQ.offset, SLOT_PAYLOAD"  # configure()'s ring slot layout, as rockstar_mp.worker.accelerator passes it


@pytest.mark.parametrize("args, exception, why", [
    ("RECORD_SPANS", "TypeError", "exactly 7 arguments"),  # the old form: no ring slot layout
    (f"{SLOT}, dict(zip(RECORD_SPANS, range(9)))", "TypeError", "(offset, size)"),  # offsets without sizes
    ("SLOT_SEQ.offset + 4, SLOT_PAYLOAD + 4, RECORD_SPANS", "ValueError", "sequence_at must be a multiple of 8"),
    ("SLOT_SEQ.offset, SLOT_PAYLOAD - 4, RECORD_SPANS", "ValueError", "the sequence word and the record overlap"),
    ("SLOT_SEQ.offset, -SLOT_PAYLOAD, RECORD_SPANS", "ValueError", "payload_at >= 0"),
    (f"{SLOT}, {{k: v for k, v in RECORD_SPANS.items() if k != 'route'}}", "ValueError", "fields changed"),
    (f"{SLOT}, {{**RECORD_SPANS, 'region': (0, 4)}}", "ValueError", "fields changed"),
    (f"{SLOT}, {{**{{k: v for k, v in RECORD_SPANS.items() if k != 'route'}}, 'path': (0, 4)}}", "KeyError",
     "no field route"),
    (f"{SLOT}, {{**RECORD_SPANS, 'pid': (RECORD_SPANS['pid'][0], 8)}}", "ValueError", "field pid changed size"),
], ids=["without-the-slot", "offsets-without-sizes", "unaligned-sequence", "overlapping", "negative-payload",
        "a-field-missing", "a-field-more", "a-field-renamed", "a-numeric-field-resized"])
def test_configure_refuses_a_slot_or_record_layout_it_cannot_write(args, exception, why):
    """The C path has no layout of its own: without the ring slot's and the record's layout from Python, or
    with one it cannot write, configure() refuses (for that reason, not only because the layout differs
    from the accelerator's), and stores nothing (the first configure() stays)."""
    assert_refused(f"""
        KEYS = {{"route": "r", "tenant": "t", "request_id": "i", "default_request_id": "d", "wsgi": "w",
                "unmatched": "u"}}
        try:
            hotpath.configure(1.0, 1e-6, 16, {args}, KEYS)
        except {exception} as e:
            refused = e
        else:
            raise AssertionError("configure() took it")
        assert {why!r} in str(refused), refused
        slab = Slab(*slab_args())
        hotpath.bind(slab, {{}}, Recorder(), None)
        hotpath.record("GET", "/r", 200, 0.001, 0.0, 2, "", "t")
        from rockstar_mp.segment.layout import Field
        from rockstar_mp.segment.ring import RingSpec, copy_ring, text, unpack

        spec = RingSpec(Field(GEOMETRY["head_at"], "Q"), lambda i: (i % 4) * SLOT, 4, RECORD, SLOT)
        entries = unpack(copy_ring(memoryview(BUF), 0, spec, 0)[0])  # written with the accelerator's configure()
        assert [(text(e[7]), text(e[9])) for e in entries] == [("/r", "t")], entries
        raise refused
    """, exception)


@pytest.mark.parametrize("path", ["request-count", "workload-sketch"])
def test_a_released_view_is_refused(path):
    count = """
        mw = middleware({("GET", "200 OK", "/"): (vals, 0, vals, 1, (0.5, 1.0), 3, 200)})
        release()
        serve(mw)
    """
    sketch = """
        hotpath.bind(None, {}, SketchRecorder(vals), None)
        release()
        hotpath.record("GET", "/", 200, 0.001, 0.0, 2, "", "")
    """
    assert_refused("""
        pages, whole, vals = doubles()

        def release():  # the views are gone, and the pages with them
            vals.release()
            whole.release()
            pages.close()
    """ + (count if path == "request-count" else sketch), "ValueError")


def test_a_view_with_negative_strides_is_refused():
    """A reversed view's items run downwards from its buffer pointer: counting upwards from it writes past them."""
    assert_refused("""
        pages, whole, vals = doubles()
        backwards = vals[::-1]
        serve(middleware({("GET", "200 OK", "/"): (backwards, len(backwards) - 1, vals, 1, (0.5, 1.0), 3, 200)}))
    """, "ValueError")


@pytest.mark.parametrize("cls", ["Middleware", "MetricsMiddleware"])
def test_an_uninitialised_middleware_refuses_calls(cls):
    assert_refused(f"""
        from rockstar_mp.worker.wsgi import MetricsMiddleware

        mw = {cls}.__new__({cls})
        serve(mw)
    """, "TypeError")


def test_bounds_that_are_not_numbers_raise_before_the_histogram_is_touched():
    assert_refused("""
        pages, whole, vals = doubles()
        try:
            serve(middleware({("GET", "200 OK", "/"): (vals, 0, vals, 1, ("0.5", "1.0"), 3, 200)}))
        except TypeError as e:
            refused = e
        else:
            raise AssertionError("bounds of str were taken")
        assert vals[0] == 1.0 and list(vals[1:5]) == [0.0] * 4, list(vals[:5])  # counted, as the Python path
        raise refused
    """, "TypeError")


@pytest.mark.parametrize("code", ["'200'", "Code()"], ids=["str", "after-an-error"])
def test_the_status_code_conversion_propagates_its_error(code):
    """A status code that is no int raises; and after an error in the histogram (bounds of None), the
    code is not converted at all (its __index__ would run with the error pending)."""
    bounds = "(0.5, 1.0)" if code == "'200'" else "None"
    assert_refused(f"""
        class Code:
            def __index__(self):
                return 200

        pages, whole, vals = doubles()
        slab = Slab(*slab_args())
        hotpath.bind(slab, {{}}, Recorder(), None)
        try:
            serve(middleware({{("GET", "200 OK", "/"): (vals, 0, vals, 1, {bounds}, 3, {code})}}, workload=True))
        except TypeError as e:
            refused = e
        else:
            raise AssertionError("served")
        assert in_flight() == 0, in_flight()  # the request ended all the same
        assert int.from_bytes(BUF[1024:1032], sys.byteorder) == 0  # and left no record
        raise refused
    """, "TypeError")


@pytest.mark.parametrize("returned, exception", [("its own", "TypeError"), ("the outer", "RecursionError")])
def test_an_app_returning_a_start_response_as_its_body_raises(returned, exception):
    """Its own start_response is the body it would iterate; the outer request's, through a middleware in
    a middleware, makes two bodies iterate each other."""
    assert_refused(f"""
        outer_start_response = []

        def inner_app(environ, start_response):
            start_response("200 OK", [])
            return start_response if "{returned}" == "its own" else outer_start_response[0]

        inner = middleware({{}}, wrapped=inner_app)

        def outer_app(environ, start_response):
            outer_start_response.append(start_response)
            return inner(environ, start_response)

        serve(middleware({{}}, wrapped=outer_app))
    """, exception)


def test_an_infinite_duration_raises_overflow_error():
    """As math.ceil does in the Python path, instead of an undefined float-to-long cast."""
    assert_refused("""
        pages, whole, vals = doubles()
        hotpath.bind(None, {}, SketchRecorder(vals), None)
        hotpath.record("GET", "/", 200, float("inf"), 0.0, 2, "", "")
    """, "OverflowError")


def test_a_route_that_cannot_be_computed_is_counted_under_other():
    """No ``_route`` to call back into (a bare Middleware, an empty route cache): the response is still
    counted, under the route ``other``, and the error goes no further (the Python path's ``_route_of``)."""
    assert_refused("""
        pages, whole, vals = doubles()
        mw = Middleware(app, {("GET", "200 OK", "other"): (vals, 0, vals, 1, (0.5, 1.0), 3, 200)}, {},
                        frozenset({"GET"}), "HTTP_X_TENANT_ID", False, False)
        serve(mw)
        assert vals[0] == 1.0 and vals[1] == 1.0, list(vals[:5])
        raise LookupError("counted under other")  # the end this test expects
    """, "LookupError")


def test_the_socket_layout_is_trusted_only_as_checked():
    """The hold reads a standard socket's descriptor from its struct only once that was checked on an open
    socket; an object that merely looks like a socket, or a closed one, is refused."""
    require_hotpath()
    from rockstar_mp.worker.accelerator import hotpath

    with socket.socket() as sock:
        assert hotpath.trust_socket_layout(sock) is True

    class Lookalike:
        def fileno(self):
            return 0

    assert hotpath.trust_socket_layout(Lookalike()) is False
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError):
        hotpath.trust_socket_layout(closed)  # fileno() of a closed socket is -1


@pytest.mark.parametrize("fds, exception", [("not fds", TypeError), ([3, "4"], TypeError), ([-1], ValueError),
                                            ([2 ** 40], (ValueError, OverflowError)), (7, TypeError)])
def test_hold_listeners_refuses_what_is_not_descriptors_and_keeps_none(fds, exception):
    """A refused call arms nothing: no listener is held at the next held request."""
    require_hotpath()
    from rockstar_mp.worker.accelerator import hotpath

    hotpath.hold_listeners(())
    with pytest.raises(exception):
        hotpath.hold_listeners(fds)
    assert hotpath.listeners_held() is False
