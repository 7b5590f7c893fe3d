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
import zlib

from .frames import FrameTable
from .proto import encode, merge_raw, new_raw

KINDS = ("profile", "wall", "heap", "allocs", "goroutine", "threadcreate", "block", "mutex", "trace")
TIMED = ("profile", "wall", "heap", "allocs", "block", "mutex", "trace")  # take ?seconds=N
DEFAULT_SECONDS = {"profile": 30.0, "wall": 30.0, "heap": 1.0, "allocs": 1.0, "block": 5.0, "mutex": 5.0,
                   "trace": 1.0}
TEXT_KINDS = ("heap", "allocs", "goroutine", "threadcreate", "block", "mutex")  # have a ?debug=1 text form
PROTO = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
CYCLES_PER_SECOND = 1_000_000_000  # the block/mutex texts count delay in "cycles" of 1 ns
MAX_SYMBOLS = 100_000  # addresses the text forms handed out that ``symbol`` can name


def render(kind: str, results: list[dict], debug: int = 0, comments: tuple = ()) -> tuple[str, bytes]:
    """``(content type, body)`` for the results of one or more processes, merged; ``comments`` (a
    missing worker, say) go into the profile's ``comment`` strings (``go tool pprof -comments``), or
    as ``#`` lines at the end of a text form.

    Example::

        content_type, body = render("heap", [collect("heap", 0.5)], debug=1)  # Go's heap text
    """
    if kind in ("goroutine", "threadcreate"):
        dump = [t for r in results for t in r["threads"]]
        if debug > 0:
            text = goroutine_text(dump, debug) if kind == "goroutine" else threadcreate_text(dump)
            return TEXT, _with_comments(text, comments).encode()
        raw = goroutine_raw(dump) if kind == "goroutine" else threadcreate_raw(dump)
    elif kind == "trace":
        events = [e for r in results for e in r["events"]]
        return "application/json", json.dumps(trace_document(events, comments)).encode()
    else:
        raw = merge_raw([r["raw"] if "raw" in r else json.loads(r["raw_json"]) for r in results])
        if debug > 0:
            text = heap_text(raw) if kind in ("heap", "allocs") else contention_text(raw, kind)
            return TEXT, _with_comments(text, comments).encode()
    raw["comments"] = list(raw.get("comments", ())) + list(comments)
    return PROTO, encode(raw)


def _with_comments(text: str, comments: tuple) -> str:
    return text + "".join(f"# {c}\n" for c in comments)


def trace_document(events: list[dict], comments: tuple = ()) -> dict:
    """The Chrome trace-event JSON document holding ``events`` (``comments`` in its ``otherData``)."""
    document: dict = {"traceEvents": events, "displayTimeUnit": "ms"}
    if comments:
        document["otherData"] = {"comments": list(comments)}
    return document


# -- Go's debug=1 texts of heap, allocs, block and mutex -------------------------------------------------
def _values(raw: dict, *names: str) -> list[int]:
    """The positions of the sample types ``names`` in ``raw``."""
    types = [t[0] for t in raw["sample_types"]]
    return [types.index(n) for n in names]


def _records(raw: dict, order: int) -> list[tuple]:
    """``(values, frames leaf first, pid)`` per distinct (stack, pid), biggest ``values[order]`` first."""
    groups: dict = {}
    for stack, values, labels in raw["samples"]:
        key = (tuple(stack), str(labels.get("pid", "")))
        total = groups.setdefault(key, [0] * len(values))
        for i, v in enumerate(values):
            total[i] += int(v)
    records = [(values, [raw["frames"][i] for i in stack], pid) for (stack, pid), values in groups.items()]
    records.sort(key=lambda r: -r[0][order])
    return records


def _stack_lines(frames: list, pid: str) -> list[str]:
    lines = ["# labels: " + json.dumps({"pid": pid})] if pid else []
    for fn, filename, line, *_ in frames:
        lines.append(f"#\t{_addr([fn, filename, line]):#x}\t{fn}+0x0\t{filename}:{line}")
    return lines


def heap_text(raw: dict) -> str:
    """Go's ``heap?debug=1``: ``inuse objects: inuse bytes [alloc objects: alloc bytes] @ addresses``
    per site and pid, the totals first (tracemalloc records every allocation: the rate is 1)."""
    ao, asz, io, isz = _values(raw, "alloc_objects", "alloc_space", "inuse_objects", "inuse_space")
    records = _records(raw, isz)
    total = [sum(r[0][i] for r in records) for i in (io, isz, ao, asz)]
    lines = [f"heap profile: {total[0]}: {total[1]} [{total[2]}: {total[3]}] @ heap/1"]
    for values, frames, pid in records:
        lines.append(f"{values[io]}: {values[isz]} [{values[ao]}: {values[asz]}] @ "
                     + " ".join(f"{_addr(f[:3]):#x}" for f in frames))
        lines.extend(_stack_lines(frames, pid))
        lines.append("")
    lines.extend(f"# {c}" for c in raw.get("comments", ()))
    return "\n".join(lines) + "\n"


def contention_text(raw: dict, kind: str) -> str:
    """Go's ``block?debug=1`` / ``mutex?debug=1``: ``--- contention:``, then ``cycles count @ addresses``
    per stack and pid (a cycle is 1 ns here)."""
    count, delay = _values(raw, "contentions", "delay")
    lines = ["--- contention:", f"cycles/second={CYCLES_PER_SECOND}"]
    if kind == "mutex":
        lines.append("sampling period=1")
    for values, frames, pid in _records(raw, delay):
        lines.append(f"{values[delay]} {values[count]} @ " + " ".join(f"{_addr(f[:3]):#x}" for f in frames))
        lines.extend(_stack_lines(frames, pid))
        lines.append("")
    lines.extend(f"# {c}" for c in raw.get("comments", ()))
    return "\n".join(lines) + "\n"


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


SYMBOLS: dict[int, str] = {}  # address -> "function file:line", of every frame a text form printed


def _addr(frame: list) -> int:
    """A made-up address for a frame of a text form, the same in every process and run (CRC-32 of the
    frame), remembered so that ``symbol`` can name it."""
    fn, filename, line = frame
    address = 0x1000 + zlib.crc32(f"{fn}\0{filename}\0{line}".encode("utf-8", "replace")) * 16
    if address not in SYMBOLS:
        if len(SYMBOLS) >= MAX_SYMBOLS:
            SYMBOLS.pop(next(iter(SYMBOLS)))  # the oldest
        SYMBOLS[address] = f"{fn} {filename}:{line}"
    return address


def symbolize(addresses: list[int]) -> str:
    """Go's ``symbol`` answer: ``num_symbols: 1``, then ``address name`` for each address a text form
    printed (the others are left out, as Go leaves out what it cannot name)."""
    lines = ["num_symbols: 1"]
    lines.extend(f"{a:#x} {SYMBOLS[a]}" for a in addresses if a in SYMBOLS)
    return "\n".join(lines) + "\n"


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
