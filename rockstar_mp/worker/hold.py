"""The hold of a response until its count is stored: TCP_CORK (nothing the server writes is sent) and
SO_LINGER 0 (a process killed now resets the connection), on gunicorn's client socket.

Without it, a send wakes the client, and on a busy machine the scheduler may run the client (and a
killer) before the worker stores its count. With the cork alone, a worker preempted right after its last
write (a system call's return is where that happens) and killed there had its corked response flushed
at exit, uncounted: 2 runs of 45 of the kill test under load. With both, a worker killed before counting
sends nothing.

Per request, that is four system calls (``hold`` and ``release``; the C path makes them directly). In a
gunicorn sync worker the C path holds the listening sockets instead (``hold_listeners``): the connections
accepted afterwards inherit both options, and a request makes two (the release). Example::

    from rockstar_mp.worker import hold
    if hold.hold(sock):
        ...  # the response is written, then counted
        hold.release(sock)
"""
from __future__ import annotations

import socket
import struct

from .accelerator import hotpath

LINGER_RESET = struct.pack("ii", 1, 0)
LINGER_OFF = struct.pack("ii", 0, 0)
CORK = getattr(socket, "TCP_CORK", None)


def hold(sock) -> bool:
    """Cork ``sock`` and make it reset if the process dies; False if it cannot be (not a TCP socket)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
        return True
    except (OSError, AttributeError, TypeError):
        return False


def release(sock) -> None:
    """Undo ``hold``: the linger back to normal, then uncork (which sends what was held)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_OFF)
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)
    except OSError:
        pass


def hold_listeners(worker) -> bool:
    """In a gunicorn sync worker with the C request path: hold the listening sockets at the first held
    request (``_hotpath.c``'s ``hold_listeners``), so that every connection accepted afterwards starts
    held (TCP_CORK and SO_LINGER 0 are inherited from the listener) and a request costs two system calls
    (the release, once counted) instead of four. Only where every connection ends in gunicorn's
    ``close_graceful``, whose ``shutdown(SHUT_WR)`` sends what a cork holds (gunicorn >= 27's sync
    worker; a 400 gunicorn writes itself goes out that way): a keep-alive worker's next response would
    wait for the cork's 200 ms, and so would a TLS handshake (``certfile``: not armed). True if armed.

    Called by the gunicorn hooks (``post_fork``); ``release_listeners`` undoes it in the master."""
    try:
        from gunicorn import util
        from gunicorn.workers.sync import SyncWorker
    except ImportError:
        return False
    if (hotpath is None or CORK is None or not isinstance(worker, SyncWorker)
            or type(worker).handle is not SyncWorker.handle or not hasattr(util, "close_graceful")
            or getattr(worker.cfg, "is_ssl", True)):
        return False
    hotpath.hold_listeners(tuple(listener.fileno() for listener in worker.sockets))
    return True


def release_listeners(listeners) -> None:
    """Undo ``hold_listeners`` on the master's listening sockets (before a USR2 re-exec and at exit): a
    listener outlives us (a new master inherits it, systemd keeps it), and a server without rockstar-mp
    accepting held connections would see its keep-alive responses wait for the cork."""
    for listener in listeners:
        try:
            held = (listener.getsockopt(socket.IPPROTO_TCP, CORK) == 1
                    and listener.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == LINGER_RESET)
        except (OSError, AttributeError, TypeError):
            continue  # not a TCP socket, or closed
        if held:
            release(listener)
