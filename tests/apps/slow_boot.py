"""The example app, slow to load (2 s at import, as apps that build caches or connect at import are): a USR1
sent meanwhile must optimize too, not only reopen the logs (tests/test_memory_optimization.py)."""
import time

time.sleep(2.0)

from examples.app import app  # noqa: E402,F401  (served as is, once loaded)
