"""The example app plus two ways to use memory badly, for the memory tests and benchmarks.

- ``/fragment?mb=N``: allocates N MB of small (1 KB) objects, then one that stays, then frees the N MB:
  glibc cannot give the freed pages back by itself (the survivor sits above them in the heap), so the
  worker's RSS stays up until ``malloc_trim``.
- ``/grow?kb=N``: keeps N KiB for good (a leak), ``/grown`` says how much so far.
"""
from examples.app import MetricsMiddleware, create_app

CHUNK = 1000  # bytes: above pymalloc's 512-byte limit, so glibc's malloc serves them
_kept: list = []


class Fragment:
    def on_get(self, req, resp):
        mb = req.get_param_as_int("mb", default=200, min_value=1, max_value=1000)
        chunks = [bytes(CHUNK) for _ in range(mb * 1_000_000 // CHUNK)]
        _kept.append(bytes(CHUNK))  # above the chunks in the heap: the heap's top cannot shrink past it
        del chunks
        resp.media = {"fragmented_mb": mb}


class Grow:
    def on_get(self, req, resp):
        kb = req.get_param_as_int("kb", default=1024, min_value=1, max_value=100_000)
        _kept.append(bytearray(b"x" * (kb * 1024)))  # written: resident, and private to this worker
        resp.media = {"kept_kb": sum(len(k) for k in _kept) // 1024}


api = create_app()
api.add_route("/fragment", Fragment())
api.add_route("/grow", Grow())
app = MetricsMiddleware(api, workload=True)
