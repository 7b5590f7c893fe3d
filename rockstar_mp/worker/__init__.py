"""What runs inside a worker process: attaching to its slab, the heartbeat, the WSGI middleware."""
from .attach import attach_worker, current

__all__ = ["attach_worker", "current"]
