"""Real OS threads, locks, sleeps and sockets, whether or not gevent monkey-patched the standard library.

A gevent worker (``gunicorn -k gevent``) patches ``threading``, ``_thread``, ``socket``, ``time.sleep``
and ``select`` in the worker, after our ``post_fork`` code ran (or in the master, when a config file
patches early). From then on ``threading.Thread(...).start()`` makes a greenlet, ``time.sleep`` and
``threading.Event.wait`` switch to a hub, and ``threading.get_ident`` names greenlets. Our control and
monitor threads block in real system calls (``accept``, ``sleep``), so anything of theirs that became a
greenlet never runs (a profile request was left waiting for ever, holding the CPU profile's lock) and a
CPU-bound greenlet would starve it anyway. Everything here takes the originals
(``gevent.monkey.get_original``) when gevent patched them; gevent is imported only when it is already
loaded, so it is never a dependency.

``start_thread`` starts a real daemon thread, always a raw ``_thread`` one registered here under its real
ident, so ``thread_ids()`` names it beside ``threading.enumerate()``. Not a ``threading.Thread`` even
before anything is patched: gunicorn's gevent worker patches after ``post_fork`` started our monitor
thread, and a ``threading.Thread`` that ends after the patch is looked up under gevent's ident by
``threading._delete``, which printed a ``KeyError`` traceback at about one worker exit in six.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

_ORIGINALS: dict[tuple[str, str], Any] = {}


def original(module: str, name: str) -> Any:
    """``module.name`` as the standard library defines it, even if gevent replaced it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_object_patched(module, name):
        found = _ORIGINALS.get((module, name))
        if found is None:
            found = _ORIGINALS[(module, name)] = monkey.get_original(module, name)
        return found
    return getattr(importlib.import_module(module), name)


def patched(module: str) -> bool:
    """Did gevent replace (parts of) ``module`` with cooperative versions?"""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched(module))


def sleep(seconds: float) -> None:
    """Block this OS thread (gevent's ``time.sleep`` would switch to a hub that may never run it again)."""
    original("time", "sleep")(seconds)


def get_ident() -> int:
    """The real thread ident (the keys of ``sys._current_frames()``), not a greenlet's."""
    return original("_thread", "get_ident")()


def allocate_lock() -> Any:
    """A real lock; safe to share between OS threads whatever gevent patched."""
    return original("_thread", "allocate_lock")()


def socket_class() -> type:
    return original("socket", "socket")


def accept(sock: socket.socket) -> tuple[socket.socket, object]:
    """``sock.accept()`` giving a real socket (the standard ``accept`` wraps the new descriptor in
    whatever ``socket.socket`` is now: gevent's, once patched)."""
    fd, address = sock._accept()  # type: ignore[attr-defined]
    return socket_class()(sock.family, sock.type, sock.proto, fileno=fd), address


class Event:
    """``threading.Event`` on a real lock (``set``, ``clear``, ``is_set``, ``wait``), so an OS thread can
    wait on it while gevent runs the main thread. ``set`` never blocks, so a signal handler may call
    it. The flag is the truth; the gate (held while the flag is down) only wakes waiters, and a waiter
    that finds it open with the flag down closes it again. A ``set`` racing a ``clear`` may be seen
    only at the waiter's timeout."""

    def __init__(self) -> None:
        self._flag = False
        self._gate = allocate_lock()
        self._gate.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            with contextlib.suppress(RuntimeError):  # already open
                self._gate.release()

    def clear(self) -> None:
        if self._flag:
            self._flag = False
            self._gate.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag:
            remaining = -1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and remaining <= 0:
                return False
            if self._gate.acquire(True, remaining) and self._flag:
                with contextlib.suppress(RuntimeError):
                    self._gate.release()  # let the other waiters through
                return True
        return True


class Slots:
    """At most ``n`` holders at a time, never blocking (a real lock and a count)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._lock = allocate_lock()

    def take(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._free += 1


# -- threads -------------------------------------------------------------------------------------------
_MAIN_IDENT: int | None = None
# real ident -> (native thread id, name, the stack that started it: see threads.threadcreate_dump)
_RAW_THREADS: dict[int, tuple[int, str, tuple]] = {}


def _remember_main_thread() -> None:
    global _MAIN_IDENT
    _MAIN_IDENT = get_ident()


def remember_main_thread() -> None:
    """Call from the main thread (``start_control`` does): gevent renumbers ``main_thread().ident``
    to a greenlet's when it patches, and the SIGPROF timer and the dumps need the real one."""
    if threading.current_thread() is threading.main_thread():
        _remember_main_thread()


def main_ident() -> int | None:
    return _MAIN_IDENT if _MAIN_IDENT is not None else threading.main_thread().ident


if threading.current_thread() is threading.main_thread():
    _remember_main_thread()
os.register_at_fork(after_in_child=_remember_main_thread)  # the forking thread is the child's main one


def start_thread(target: Callable[..., object], name: str, args: tuple = ()) -> None:
    """Run ``target(*args)`` in a new real daemon thread named ``name`` (see the module's docstring)."""
    created: list[tuple[types.CodeType, int | None]] = []  # the starting stack, leaf first (threadcreate)
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and len(created) < 32:
        created.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back

    def run() -> None:
        ident = get_ident()
        _RAW_THREADS[ident] = (threading.get_native_id(), name, tuple(created))
        try:
            target(*args)
        finally:
            _RAW_THREADS.pop(ident, None)

    original("_thread", "start_new_thread")(run, ())


def raw_threads() -> dict[int, tuple[int, str, tuple]]:
    """The threads ``start_thread`` started raw (threading patched): ``{ident: (tid, name, created)}``."""
    return dict(_RAW_THREADS)


def thread_ids() -> dict[int, tuple[int | None, str]]:
    """``{real ident: (native thread id, name)}`` of every thread we can name: ``threading``'s (a
    patched ``threading`` also lists greenlets, under idents no real thread has: harmless), the raw
    ones, and the main thread under its real ident with the pid as its tid (``native_id`` can be
    stale after fork in 3.11)."""
    main = threading.main_thread()
    out: dict[int, tuple[int | None, str]] = {}
    for t in threading.enumerate():
        if t.ident is not None and t is not main:
            out[t.ident] = (getattr(t, "native_id", None), t.name)
    for ident, (tid, name, _) in list(_RAW_THREADS.items()):
        out[ident] = (tid, name)
    main_id = main_ident()
    if main_id is not None:
        out[main_id] = (os.getpid(), main.name)
    return out
