"""Listening sockets the aggregator binds itself, so a busy port is an error it can report.

Sockets bound before the aggregator drops root (``prebind``) are kept here: a server that asks for
the same address later gets a duplicate, so a privileged port (SNMP's 161) can be served, stopped and
served again at runtime by a process that could no longer bind it.
"""
from __future__ import annotations

import socket

_PREBOUND: dict[tuple[str, str, int], socket.socket] = {}


def prebind(kind: str, host: str, port: int, rcvbuf: int = 0) -> None:
    """Bind ``kind`` ("tcp" or "udp") ``host:port`` now, while privileged, for a later ``prebound``."""
    key = (kind, host, port)
    if key not in _PREBOUND:
        hold(kind, host, port, listen_tcp(host, port) if kind == "tcp" else bind_udp(host, port, rcvbuf))


def hold(kind: str, host: str, port: int, sock: socket.socket) -> None:
    """Keep ``sock``, already bound to ``host:port``, for a later ``prebound``."""
    _PREBOUND[(kind, host, port)] = sock


def prebound(kind: str, host: str, port: int) -> socket.socket | None:
    """A duplicate of the socket ``prebind`` bound for this address, or None."""
    sock = _PREBOUND.get((kind, host, port))
    return sock.dup() if sock is not None else None


def bind_udp(host: str, port: int, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking UDP socket on ``host:port`` (a pre-bound one if there is); raises OSError."""
    held = prebound("udp", host, port)
    if held is not None:
        return held
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port``; raises OSError when it cannot bind.

    ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on sockets that say so; without it Nagle and
    delayed ACKs stalled every keep-alive request by 40 ms.
    """
    held = prebound("tcp", host, port)
    if held is not None:
        return held
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
