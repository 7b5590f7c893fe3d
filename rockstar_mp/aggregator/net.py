"""Listening sockets the aggregator binds itself, so a busy port is an error it can report."""
from __future__ import annotations

import socket


def listen_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port``; raises OSError when it cannot bind.

    ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on sockets that say so; without it Nagle and
    delayed ACKs stalled every keep-alive request by 40 ms.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
