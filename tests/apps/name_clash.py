"""A test app whose workers run different code: each declares the same names its own way.

A worker of odd gunicorn age (the first one, age 1) declares side A at import. The others declare side B,
from a thread, once the file named by ``NAME_CLASH_GO`` exists (the test creates it after the
aggregator saw side A, so which side is seen first is known). Both sides also declare ``clash.shared``
the same way. Every request answers ``<pid> <side>``.
"""
import os
import threading

from rockstar_mp import Counter, Gauge, Histogram
from rockstar_mp.worker.attach import current
from tests.helpers import poll

GO_DEADLINE_SECONDS = 60.0


def side_a() -> None:
    Counter("clash.a", "Side A: a counter").inc(1)
    Counter("clash.dup", "Side A: dup").inc(2)
    Counter("clash.types", "Side A: a counter").inc(3)
    Counter("clash.labels", "Side A: labelled by a", ["a"]).labels("x").inc(4)
    Histogram("clash.latency.seconds", "Side A: a histogram", buckets=(0.1, 1)).observe(0.5)


def side_b() -> None:
    Gauge("clash_a", "Side B: a gauge").set(10)
    Counter("clash.dup_total", "Side B: dup_total").inc(20)
    Gauge("clash.types", "Side B: a gauge").set(30)
    Counter("clash.labels", "Side B: labelled by b", ["b"]).labels("y").inc(40)
    Gauge("clash.latency.seconds.count", "Side B: a gauge").set(50)


def _age() -> int:
    state = current()
    return state.segment.slot(state.slab).age if state is not None else 0


def _side_b_when_told() -> None:
    go = os.environ["NAME_CLASH_GO"]
    try:
        poll(lambda: os.path.exists(go), timeout=GO_DEADLINE_SECONDS, interval=0.02, message=go)
    except AssertionError:
        pass  # no word from the test within the deadline: declare anyway
    side_b()
    SHARED.inc()


SIDE = "a" if _age() % 2 else "b"
SHARED = Counter("clash.shared", "Both sides: one family")
if SIDE == "a":
    side_a()
    SHARED.inc()
else:
    threading.Thread(target=_side_b_when_told, name="side-b", daemon=True).start()


def app(environ, start_response):
    body = f"{os.getpid()} {SIDE}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
