"""The example app plus ~40 MB of long-lived objects built at import (with ``--preload``, in the master),
for measuring what ``gc_freeze_before_fork`` keeps shared between workers."""
from examples.app import app  # noqa: F401  (served as is)

TABLE = [{"id": i, "name": f"item-{i}", "tags": [i, i + 1]} for i in range(150_000)]
