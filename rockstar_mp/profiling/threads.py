"""Threads, the goroutine analog: stacks now (``goroutine``) and where live threads were started
(``threadcreate``).

``thread_dump()`` gives a JSON-able list, one entry per thread: pid, tid, name, daemon, state
(running / lock / io / sleep, from the call the thread is in) and its stack, leaf first.
The renderings (shared by the worker API and the aggregator, which merges several processes' dumps):
``goroutine_raw`` (proto: goroutine/count per distinct stack, thread and pid labels),
``goroutine_text(debug=1)`` (grouped, like Go's debug=1) and ``goroutine_text(debug=2)`` (one block per
thread, like Go's debug=2).

``install_threadcreate_hook()`` wraps ``threading.Thread.start`` to remember the starting stack of each
thread (a few microseconds per thread start); threads started before it show as started "before
profiling was set up".
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import weakref

from . import frames as _frames
from .proto import new_raw
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
        tid, name = ids.get(thread.ident, (None, thread.name))
        out.append({"pid": pid, "tid": tid or 0, "name": name, "stack": stack})
    return out


# -- renderings ---------------------------------------------------------------------------------------
def _stack_raw(dump: list[dict], sample_type: tuple, comment: str) -> dict:
    raw = new_raw([sample_type], sample_type, 1, 0, [comment])
    table = _frames.FrameTable(raw["frames"])
    groups: dict = {}
    for t in dump:
        key = (tuple(tuple(f) for f in t["stack"]), t["pid"], t["name"])
        groups[key] = groups.get(key, 0) + 1
    for (stack, pid, name), n in groups.items():
        ids = [table.named(fn, filename, line) for fn, filename, line in stack]
        raw["samples"].append([ids, [n], {"pid": str(pid), "thread": name}])
    return raw


def goroutine_raw(dump: list[dict]) -> dict:
    return _stack_raw(dump, ("goroutine", "count"), "threads of the process(es), one per distinct stack")


def threadcreate_raw(dump: list[dict]) -> dict:
    return _stack_raw(dump, ("threadcreate", "count"), "where each live thread was started")


def _addr(frame: list) -> int:
    return 0x1000 + (hash(tuple(frame)) & 0xFFFFFFF) * 16


def goroutine_text(dump: list[dict], debug: int = 1) -> str:
    """Go's ``debug=1`` (grouped) or ``debug=2`` (one block per thread) text."""
    lines: list[str] = []
    if debug >= 2:
        for t in dump:
            lines.append(f"goroutine {t['tid']} [{t['state']}]: pid={t['pid']} "
                         f"thread={json.dumps(t['name'])}{' daemon' if t['daemon'] else ''}")
            for fn, filename, line in t["stack"]:
                lines.append(f"{fn}(...)")
                lines.append(f"\t{filename}:{line}")
            lines.append("")
        return "\n".join(lines) + "\n"
    groups: dict = {}
    for t in dump:
        key = (t["pid"], tuple(tuple(f) for f in t["stack"]))
        groups.setdefault(key, []).append(t)
    lines.append(f"goroutine profile: total {len(dump)}")
    for (pid, stack), members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][0])):
        lines.append(f"{len(members)} @ " + " ".join(f"{_addr(list(f)):#x}" for f in stack))
        labels = {"pid": str(pid), "thread": ", ".join(sorted(m["name"] for m in members)),
                  "state": ", ".join(sorted({m["state"] for m in members}))}
        lines.append("# labels: " + json.dumps(labels))
        for fn, filename, line in stack:
            lines.append(f"#\t{_addr([fn, filename, line]):#x}\t{fn}+0x0\t{filename}:{line}")
        lines.append("")
    return "\n".join(lines) + "\n"


def threadcreate_text(dump: list[dict]) -> str:
    groups: dict = {}
    for t in dump:
        groups.setdefault((t["pid"], tuple(tuple(f) for f in t["stack"])), []).append(t)
    lines = [f"threadcreate profile: total {len(dump)}"]
    for (pid, stack), members in groups.items():
        lines.append(f"{len(members)} @ " + " ".join(f"{_addr(list(f)):#x}" for f in stack))
        lines.append("# labels: " + json.dumps({"pid": str(pid),
                                               "thread": ", ".join(m["name"] for m in members)}))
        for fn, filename, line in stack:
            lines.append(f"#\t{_addr([fn, filename, line]):#x}\t{fn}+0x0\t{filename}:{line}")
        lines.append("")
    return "\n".join(lines) + "\n"


def now_ns() -> int:
    return time.time_ns()
