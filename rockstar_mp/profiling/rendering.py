"""Turning profile results into what a client reads: profile.proto, Go's text dumps, a trace document.

This is the side of profiling the aggregator runs (it merges several workers' results); it imports no
sampler. The renderings of thread dumps: ``goroutine_raw`` (proto: goroutine/count per distinct stack,
thread and pid labels), ``goroutine_text(debug=1)`` (grouped, like Go's debug=1) and
``goroutine_text(debug=2)`` (one block per thread, like Go's debug=2); ``threadcreate_raw`` and
``threadcreate_text`` likewise. A greenlet (gevent workers) is labelled ``greenlet`` (its name) and
``thread`` (the thread running its hub) where a thread is labelled ``thread``; its debug=2 block is
``goroutine <id> [state]: pid=P greenlet="Greenlet-3" thread="MainThread"``.
"""
from __future__ import annotations

import json

from .frames import FrameTable
from .proto import encode, merge_raw, new_raw

KINDS = ("profile", "wall", "heap", "goroutine", "threadcreate", "block", "mutex", "trace")
TIMED = ("profile", "wall", "heap", "block", "mutex", "trace")  # take ?seconds=N
DEFAULT_SECONDS = {"profile": 30.0, "wall": 30.0, "heap": 1.0, "block": 5.0, "mutex": 5.0, "trace": 1.0}
PROTO = "application/octet-stream"


def render(kind: str, results: list[dict], debug: int = 0) -> tuple[str, bytes]:
    """``(content type, body)`` for the results of one or more processes, merged."""
    if kind in ("goroutine", "threadcreate"):
        dump = [t for r in results for t in r["threads"]]
        if debug > 0:
            text = goroutine_text(dump, debug) if kind == "goroutine" else threadcreate_text(dump)
            return "text/plain; charset=utf-8", text.encode()
        raw = goroutine_raw(dump) if kind == "goroutine" else threadcreate_raw(dump)
        return PROTO, encode(raw)
    if kind == "trace":
        events = [e for r in results for e in r["events"]]
        return "application/json", json.dumps(trace_document(events)).encode()
    return PROTO, encode(merge_raw([r["raw"] for r in results]))


def trace_document(events: list[dict]) -> dict:
    """The Chrome trace-event JSON document holding ``events``."""
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _labels(t: dict) -> tuple:
    """A dump entry's labels, as sorted pairs: pid and thread, or pid, greenlet and its thread."""
    if t.get("greenlet") is not None:
        return (("greenlet", t["greenlet"]), ("pid", str(t["pid"])), ("thread", t.get("thread") or ""))
    return (("pid", str(t["pid"])), ("thread", t["name"]))


def _stack_raw(dump: list[dict], sample_type: tuple, comment: str) -> dict:
    raw = new_raw([sample_type], sample_type, 1, 0, [comment])
    table = FrameTable(raw["frames"])
    groups: dict = {}
    for t in dump:
        key = (tuple(tuple(f) for f in t["stack"]), _labels(t))
        groups[key] = groups.get(key, 0) + 1
    for (stack, labels), n in groups.items():
        ids = [table.named(fn, filename, line) for fn, filename, line in stack]
        raw["samples"].append([ids, [n], dict(labels)])
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
            if t.get("greenlet") is not None:
                lines.append(f"goroutine {t['goid']} [{t['state']}]: pid={t['pid']} "
                             f"greenlet={json.dumps(t['greenlet'])} thread={json.dumps(t.get('thread') or '')}")
            else:
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
        threads = sorted(m["name"] for m in members if m.get("greenlet") is None)
        greenlets = sorted(m["greenlet"] for m in members if m.get("greenlet") is not None)
        labels = {"pid": str(pid)}
        if threads:
            labels["thread"] = ", ".join(threads)
        if greenlets:
            labels["greenlet"] = ", ".join(greenlets)
        labels["state"] = ", ".join(sorted({m["state"] for m in members}))
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
