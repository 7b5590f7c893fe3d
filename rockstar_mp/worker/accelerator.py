"""The optional C accelerator of the request path (``rockstar_mp/_hotpath.c``).

Built with the package when a C compiler is at hand (``pip install`` compiles it; a failed build
leaves it out). ``hotpath`` is the module, or ``None``: then the pure-Python path runs, with the same
behaviour and about 15 us more per request: some 17 us over a bare Falcon app against 2 us in C
(``make bench``, figure 6, with and without ``ROCKSTAR_PURE_PYTHON=1``). The ASGI middleware's
per-message work is there too (``AsgiMiddleware``, the base of ``worker.asgi.MetricsMiddleware``):
``python -m benchmarks.asgi_overhead`` compares it with its Python path. ``ROCKSTAR_PURE_PYTHON=1`` forces
the Python paths (the tests run both).

Example::

    from rockstar_mp.worker.accelerator import hotpath
    print("C request path" if hotpath else "pure Python")
"""
from __future__ import annotations

import os
import socket
import types

from ..metrics import CellCache
from ..segment.layout import RECORD_SPANS, SLOT_PAYLOAD, SLOT_SEQ
from ..sketch import BUCKET_SCALE, BUCKETS_PER_BLOCK, MIN_SECONDS
from .keys import DEFAULT_REQUEST_ID_KEY, REQUEST_ID_KEY, ROUTE_KEY, TENANT_KEY, UNMATCHED, WSGI_KEY

PURE_PYTHON_ENV = "ROCKSTAR_PURE_PYTHON"

hotpath: types.ModuleType | None = None
if os.environ.get(PURE_PYTHON_ENV, "").lower() not in ("1", "true", "yes"):
    try:
        from .. import _hotpath as hotpath  # type: ignore[no-redef]
    except ImportError:
        hotpath = None

if hotpath is not None:
    hotpath.configure(BUCKET_SCALE, MIN_SECONDS, BUCKETS_PER_BLOCK, SLOT_SEQ.offset, SLOT_PAYLOAD, RECORD_SPANS,
                      {"route": ROUTE_KEY, "tenant": TENANT_KEY, "request_id": REQUEST_ID_KEY,
                       "default_request_id": DEFAULT_REQUEST_ID_KEY, "wsgi": WSGI_KEY,
                       "unmatched": UNMATCHED})
    CellCache.on_clear.append(hotpath.forget_cells)  # the C path keeps the cached cells' addresses
    with socket.socket() as _probe:  # the hold reads a socket's descriptor from its struct, once checked here
        hotpath.trust_socket_layout(_probe)
