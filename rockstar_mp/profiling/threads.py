"""Threads and greenlets, the goroutine analog: stacks now (``goroutine``) and where live threads were
started (``threadcreate``).

``thread_dump()`` gives a JSON-able list, one entry per thread: pid, tid, name, daemon, state
(running / lock / io / sleep, from the call the thread is in) and its stack, leaf first; then, where
greenlets exist (gevent workers), one entry per suspended greenlet with its stack (``greenlet``: its
name, ``goid``: its ``id()``, ``thread``: the thread whose hub runs it). A running greenlet is the
stack of the thread running it. ``rendering.py`` turns dumps (of one process or several) into proto
or Go's text.

Finding the greenlets: there is no registry of them, so ``greenlet_dump`` makes one pass over
``gc.get_objects()`` (greenlets are tracked by the collector), as ``gevent.util`` does, keeping at most
``MAX_GREENLETS``. The pass is linear in the process's tracked objects (70-160 ms per million on the
2-core test machine, under load; the gevent test app with gunicorn loaded tracks ~37,000) plus ~5 us per greenlet
listed, holds the GIL meanwhile (the worker pauses), and runs only when a goroutine profile is asked
for. Cheaper ways were rejected: gevent keeps no registry, and tracking every spawn
(``greenlet.settrace``) would cost every switch on the request path.

``install_threadcreate_hook()`` wraps ``threading.Thread.start`` to remember the starting stack of each
thread (a few microseconds per thread start); threads started before it show as started "before
profiling was set up".
"""
from __future__ import annotations

import gc
import os
import sys
import threading
import types
import weakref
from typing import Any

from . import frames as _frames
from . import native
from .samplers import internal_idents, native_ids

MAX_GREENLETS = 10_000  # listed in one dump; the rest are counted in one entry

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


def thread_dump(internal: bool = False) -> list[dict]:
    """Every thread of this process with its state and stack (leaf first); rockstar-mp's own
    threads only with ``internal``."""
    pid = os.getpid()
    ids = native_ids()
    threads = {t.ident: t for t in threading.enumerate()}
    me = native.get_ident()
    hidden = set() if internal else internal_idents()
    out = []
    frame: types.FrameType | None
    for ident, frame in sys._current_frames().items():
        if ident in hidden:
            continue
        tid, name = ids.get(ident, (None, f"thread-{ident}"))
        thread = threads.get(ident)
        state = "running" if ident == me else (_frames.wait_kind(frame) or "running")
        out.append({"pid": pid, "tid": tid or 0, "ident": ident, "name": name,
                    "daemon": bool(thread.daemon) if thread is not None else True, "state": state,
                    "stack": _frames.text_frames(_frames.capture(frame))})
    frame = None
    out.sort(key=lambda t: (t["tid"] != pid, t["tid"]))
    return out + greenlet_dump(ids)


def _greenlet_name(g) -> str:
    name = getattr(g, "name", None)  # gevent's Greenlet-N ('' for its Hub)
    if not name or not isinstance(name, str):
        name = type(g).__name__
    return name if g.parent is not None else f"{name} (main)"


def _greenlet_thread(g, roots: dict, ids: dict) -> str:
    """The name of the thread ``g`` belongs to: the thread of the first gevent hub among ``g`` and its
    parents, or, for a thread's main greenlet (no parent), of the hub whose parent it is (``roots``);
    '' if no hub says."""
    while g is not None:
        ident = getattr(g, "thread_ident", None)  # gevent's Hub
        if not isinstance(ident, int) and g.parent is None:
            ident = roots.get(id(g))
        if isinstance(ident, int):
            return ids.get(ident, (None, f"thread-{ident}"))[1]
        g = g.parent
    return ""


_KIND_OF_FUNCTION = {**{name: "sleep" for name in _frames.SLEEP_CALLS},
                     **{name: "io" for name in _frames.IO_CALLS},
                     **{name: "lock" for name in _frames.LOCK_CALLS}}


def _greenlet_state(frame: types.FrameType | None) -> str:
    """What a suspended greenlet waits on, from its leaf up: gevent's cooperative versions carry the
    names of the calls they replace (``gevent.hub.sleep``, ``socket.recv``, ``Event.wait``), so the
    first frame named like a wait, or calling one, says; else ``waiting`` (switched to its hub for a
    reason we cannot name)."""
    depth = 0
    while frame is not None and depth < 8:
        kind = _KIND_OF_FUNCTION.get(frame.f_code.co_name) or _frames.wait_kind(frame)
        if kind is not None:
            return kind
        frame, depth = frame.f_back, depth + 1
    return "waiting"


def greenlet_dump(ids: dict | None = None) -> list[dict]:
    """Every suspended greenlet of this process (none unless ``greenlet`` is loaded), see the module doc."""
    module = sys.modules.get("greenlet")
    kind = getattr(module, "greenlet", None)
    if not isinstance(kind, type):
        return []
    # type(o), not isinstance: isinstance reads o.__class__, which a lazy proxy (Django's LazyObject)
    # answers by setting itself up, and that may raise
    greenlets: list[Any] = [o for o in gc.get_objects() if issubclass(type(o), kind)]
    found = [g for g in greenlets if g and g.gr_frame is not None]  # started, not dead, not running
    roots = {id(g.parent): g.thread_ident for g in greenlets
             if isinstance(getattr(g, "thread_ident", None), int) and g.parent is not None}
    greenlets.clear()
    pid = os.getpid()
    ids = ids if ids is not None else native_ids()
    out = []
    for g in found[:MAX_GREENLETS]:
        frame = g.gr_frame
        name = _greenlet_name(g)
        out.append({"pid": pid, "tid": 0, "goid": id(g), "name": name, "greenlet": name,
                    "thread": _greenlet_thread(g, roots, ids), "daemon": False,
                    "state": _greenlet_state(frame), "stack": _frames.text_frames(_frames.capture(frame))})
    frame = None
    if len(found) > MAX_GREENLETS:
        more = len(found) - MAX_GREENLETS
        out.append({"pid": pid, "tid": 0, "goid": 0, "name": f"{more} more greenlets",
                    "greenlet": f"{more} more greenlets", "thread": "", "daemon": False, "state": "waiting",
                    "stack": [[f"python.<{more} more greenlets not listed>", "", 0]]})
    found.clear()
    return out


def threadcreate_dump() -> list[dict]:
    """Every live thread and the stack that started it (leaf first)."""
    pid = os.getpid()
    ids = native_ids()
    out = []
    for raw_tid, raw_name, created in native.raw_threads().values():
        out.append({"pid": pid, "tid": raw_tid, "name": raw_name, "stack": _frames.text_frames(created)})
    main = threading.main_thread()
    # with threading patched by gevent, greenlets pose as threads: no real thread has their idents
    real = set(sys._current_frames()) if native.patched("threading") else None
    for thread in threading.enumerate():
        ident: int | None = native.main_ident() if thread is main else thread.ident
        if real is not None and thread is not main and ident not in real:
            continue
        if thread is main:
            stack = [["python.main", "", 0]]
        else:
            captured = _CREATED.get(thread)
            stack = (_frames.text_frames(captured) if captured
                     else [["python.<started before profiling was set up>", "", 0]])
        tid, name = ids.get(ident, (None, thread.name)) if ident is not None else (None, thread.name)
        out.append({"pid": pid, "tid": tid or 0, "name": name, "stack": stack})
    return out
