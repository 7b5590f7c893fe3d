"""The example app plus ``/leak?mb=N``: N MiB of cyclic garbage that only a full collection frees.

The cycles are promoted to the oldest generation (collected while still referenced) before they
become garbage, so the worker's own automatic collections leave them until an optimization runs.
"""
import gc

from examples.app import MetricsMiddleware, create_app

_held: list = []


class Leak:
    def on_get(self, req, resp):
        mb = req.get_param_as_int("mb", default=50, min_value=1, max_value=500)
        for _ in range(mb):
            node = [bytearray(1 << 20)]
            node.append(node)  # a cycle: refcounting alone never frees it
            _held.append(node)
        gc.collect()  # promote them to generation 2 while they are still referenced
        _held.clear()  # now garbage, that only a full collection finds
        resp.media = {"leaked_mb": mb}


api = create_app()
api.add_route("/leak", Leak())
app = MetricsMiddleware(api, workload=True)
