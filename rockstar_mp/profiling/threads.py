"""Threads, the goroutine analog: stacks now (``goroutine``) and where live threads were started
(``threadcreate``).

``thread_dump()`` gives a JSON-able list, one entry per thread: pid, tid, name, daemon, state
(running / lock / io / sleep, from the call the thread is in) and its stack, leaf first.
``rendering.py`` turns dumps (of one process or several) into proto or Go's text.

``install_threadcreate_hook()`` wraps ``threading.Thread.start`` to remember the starting stack of each
thread (a few microseconds per thread start); threads started before it show as started "before
profiling was set up".
"""
from __future__ import annotations

import os
import sys
import threading
import types
import weakref

from . import frames as _frames
from .samplers import native_ids

_CREATED: "weakref.WeakKeyDictionary[threading.Thread, tuple]" = weakref.WeakKeyDictionary()
_ORIGINAL_START = None


def install_threadcreate_hook() -> None:
    global _ORIGINAL_START
    if _ORIGINAL_START is not None:
        return
    original = _ORIGINAL_START = threading.Thread.start

    def start(self, *args, **kwargs):
        try:
            _CREATED[self] = _frames.capture(sys._getframe(1), 32)
        except Exception:  # never fail a thread start for the profile's sake
            pass
        return original(self, *args, **kwargs)

    start.__wrapped__ = original  # type: ignore[attr-defined]
    threading.Thread.start = start  # type: ignore[method-assign]


def thread_dump() -> list[dict]:
    """Every thread of this process with its state and stack (leaf first)."""
    pid = os.getpid()
    ids = native_ids()
    threads = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    out = []
    frame: types.FrameType | None
    for ident, frame in sys._current_frames().items():
        tid, name = ids.get(ident, (None, f"thread-{ident}"))
        thread = threads.get(ident)
        state = "running" if ident == me else (_frames.wait_kind(frame) or "running")
        out.append({"pid": pid, "tid": tid or 0, "ident": ident, "name": name,
                    "daemon": bool(thread.daemon) if thread is not None else True, "state": state,
                    "stack": _frames.text_frames(_frames.capture(frame))})
    frame = None
    out.sort(key=lambda t: (t["tid"] != pid, t["tid"]))
    return out


def threadcreate_dump() -> list[dict]:
    """Every live thread and the stack that started it (leaf first)."""
    pid = os.getpid()
    ids = native_ids()
    out = []
    for thread in threading.enumerate():
        if thread is threading.main_thread():
            stack = [["python.main", "", 0]]
        else:
            captured = _CREATED.get(thread)
            stack = (_frames.text_frames(captured) if captured
                     else [["python.<started before profiling was set up>", "", 0]])
        tid, name = ids.get(thread.ident, (None, thread.name)) if thread.ident is not None else (None, thread.name)
        out.append({"pid": pid, "tid": tid or 0, "name": name, "stack": stack})
    return out
