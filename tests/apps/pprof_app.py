"""The example app plus what the pprof tests look for: ``/alloc`` allocates (and keeps, for a while)
32 KiB at a known site, and one thread per worker sits blocked on a lock for ever."""
import collections
import threading

from examples.app import create_app
from rockstar_mp.worker.wsgi import MetricsMiddleware

RETAINED: collections.deque = collections.deque(maxlen=1000)
_HELD = threading.Lock()
_HELD.acquire()


def allocation_site(size: int) -> None:
    RETAINED.append(bytearray(size))


def blocked_on_lock() -> None:
    _HELD.acquire()


class Alloc:
    def on_get(self, req, resp):
        allocation_site(32 * 1024)
        resp.media = {"retained": len(RETAINED)}


threading.Thread(target=blocked_on_lock, name="pprof-test-blocked", daemon=True).start()
api = create_app()
api.add_route("/alloc", Alloc())
app = MetricsMiddleware(api, workload=True)
