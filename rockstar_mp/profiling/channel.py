"""The per-worker control channel's address and wire format, and its clients.

Each worker listens on ``<run_dir>/control/<pid>.sock`` (directory 0700, socket 0600, peer checked
with SO_PEERCRED). One request per connection: the client sends one JSON object and a newline; the
worker answers one JSON object and closes. Answers: ``{"ok": true, "result": ...}`` or
``{"ok": false, "status": 409, "error": "..."}`` (the HTTP status the aggregator should give).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket

from ..errors import WorkerUnavailable

CONTROL_DIR = "control"
MAX_REQUEST = 64 * 1024
MAX_ANSWER = 512 * 1024 * 1024


def control_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CONTROL_DIR)


def socket_path(run_dir: str, pid: int) -> str:
    return os.path.join(control_dir(run_dir), f"{pid}.sock")


async def ask(path: str, request: dict, timeout: float, connect_timeout: float = 2.0) -> dict:
    """Send ``request`` to the worker at ``path`` and return its answer; never blocks the loop, and
    raises ``WorkerUnavailable`` after ``timeout`` s (or ``connect_timeout`` to connect)."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=MAX_ANSWER),
                                                connect_timeout)
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
        if not data:
            raise WorkerUnavailable("the worker closed the connection without answering")
        if len(data) < 65536:
            return json.loads(data)
        return await asyncio.to_thread(json.loads, data)  # a big answer: decode off the loop
    except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        raise WorkerUnavailable(f"{type(exc).__name__}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()


def ask_sync(path: str, request: dict, timeout: float) -> dict:
    """The blocking client (tests, tools)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        return json.loads(b"".join(chunks))
    except (OSError, ValueError) as exc:
        raise WorkerUnavailable(f"{type(exc).__name__}: {exc}") from None
